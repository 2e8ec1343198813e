"""A userspace network impairment stage for media datagrams: loss (random or bursty), delay, jitter,
reordering and duplication, for kernels without netem (this project's machines have no sch_netem).

It sits where the SRTP fast path sends and receives (relay/media/srtp_fastpath.py), so it impairs the
media of one leg, in one direction, without touching ICE or DTLS. The model, per datagram:

1. **Loss.** With ``burst`` 1 (the default), each datagram is lost independently with probability
   ``loss``. With ``burst`` B > 1, a two-state Gilbert-Elliott chain: every datagram in the Bad state
   is lost, none in the Good state; Bad lasts B datagrams on average (leaves with probability
   r = 1/B) and is entered with probability p = loss·r / (1 - loss), so the long-run loss is ``loss``
   and losses come in runs of mean length B.
2. **Duplication.** A datagram that survives is delivered twice with probability ``duplicate``.
3. **Delay and jitter.** Each delivery waits ``delay`` plus a normal deviate of standard deviation
   ``jitter`` (never below zero). Order is kept, as in a FIFO queue: a datagram never leaves before
   the one sent before it, so jitter alone never reorders. The receiver's RFC 3550 jitter is then
   about 1.13 x ``jitter`` when datagrams are spaced wider than the jitter, and lower for denser
   streams, where datagrams wait for their predecessors (30 ms on a 20 ms voice stream gives about
   19 ms; tests/unit/test_impair.py measures both).
4. **Reordering.** With probability ``reorder`` a datagram is held and delivered right after the
   next one: the two arrive swapped (if no next one comes within 100 ms it is delivered alone).

A seeded generator makes a run repeatable (``seed``). tests/unit/test_impair.py pins the statistics
(observed loss, mean burst length, delay, RFC 3550 jitter, reorder and duplicate rates) against the
configured values.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

MAX_DELAY_MS: Final = 5000.0
MAX_BURST: Final = 1000.0
MAX_QUEUED: Final = 10_000
"""Datagrams waiting in one stage at most; beyond it a datagram is dropped and counted (overflow)."""
MAX_SPEC_CHARS: Final = 200
ORDER_EPSILON_S: Final = 1e-6
"""Successive deliveries are due at least this far apart: asyncio fires timers due at the same
instant in no guaranteed order."""
HOLD_LIMIT_S: Final = 0.1
"""A datagram held for reordering goes out alone if no other follows within this."""
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)$")


class ImpairmentError(ValueError):
    """A bad ``--impair`` value; the message names the key and its limit."""


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0
    """Long-run fraction of datagrams lost, 0..0.5."""
    burst: float = 1.0
    """Mean length of a run of losses, in datagrams (1: independent losses)."""
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    """Standard deviation of the added delay."""
    reorder: float = 0.0
    duplicate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, value, high in (
            ("loss", self.loss, 0.5),
            ("reorder", self.reorder, 0.5),
            ("duplicate", self.duplicate, 0.5),
        ):
            if not 0.0 <= value <= high:
                raise ImpairmentError(f"{name}: must be 0%..{high:.0%}, got {value:.4%}")
        if not 1.0 <= self.burst <= MAX_BURST:
            raise ImpairmentError(
                f"burst: mean run of losses must be 1..{MAX_BURST:g} datagrams, got {self.burst:g}"
            )
        for name, value in (("delay", self.delay_ms), ("jitter", self.jitter_ms)):
            if not 0.0 <= value <= MAX_DELAY_MS:
                raise ImpairmentError(f"{name}: must be 0..{MAX_DELAY_MS:g} ms, got {value:g} ms")

    @property
    def active(self) -> bool:
        return any((self.loss, self.delay_ms, self.jitter_ms, self.reorder, self.duplicate))

    def describe(self) -> str:
        """The spec in ``--impair`` syntax (what the run used, for reports)."""
        parts = [f"loss={self.loss * 100:.4g}%"]
        if self.burst != 1.0:
            parts.append(f"burst={self.burst:g}")
        parts += [f"delay={self.delay_ms:g}ms", f"jitter={self.jitter_ms:g}ms"]
        if self.reorder:
            parts.append(f"reorder={self.reorder * 100:.4g}%")
        if self.duplicate:
            parts.append(f"duplicate={self.duplicate * 100:.4g}%")
        return ",".join(parts)


def _percent(key: str, text: str) -> float:
    match = _PERCENT.match(text)
    if not match:
        raise ImpairmentError(f"{key}: expected a percentage such as 2%, got {text!r}")
    return float(match.group(1)) / 100


def _millis(key: str, text: str) -> float:
    match = _TIME.match(text)
    if not match:
        raise ImpairmentError(f"{key}: expected a time such as 30ms or 0.2s, got {text!r}")
    return float(match.group(1)) * (1000.0 if match.group(2) == "s" else 1.0)


def parse_impairment(spec: str) -> Impairment:
    """``loss=2%,burst=3,delay=40ms,jitter=30ms,reorder=1%,duplicate=0.5%,seed=7`` (any subset)."""
    if len(spec) > MAX_SPEC_CHARS:
        raise ImpairmentError(f"--impair: at most {MAX_SPEC_CHARS} characters, got {len(spec)}")
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, text = item.partition("=")
        if not sep:
            raise ImpairmentError(f"--impair: expected key=value, got {item!r}")
        if key in values:
            raise ImpairmentError(f"{key}: given twice")
        if key in ("loss", "reorder", "duplicate"):
            values[key] = _percent(key, text)
        elif key in ("delay", "jitter"):
            values[f"{key}_ms"] = _millis(key, text)
        elif key == "burst":
            try:
                values["burst"] = float(text)
            except ValueError:
                raise ImpairmentError(f"burst: expected a number of datagrams, got {text!r}") from None
        elif key == "seed":
            if not text.isdigit() or len(text) > 12:
                raise ImpairmentError(f"seed: expected a whole number of at most 12 digits, got {text!r}")
            values["seed"] = int(text)
        else:
            known = "loss, burst, delay, jitter, reorder, duplicate, seed"
            raise ImpairmentError(f"--impair: unknown key {key!r} (known: {known})")
    if not values:
        raise ImpairmentError("--impair: give at least one of loss, delay, jitter, reorder, duplicate")
    return Impairment(**values)


Scheduler = Callable[[float, Callable[[], None]], None]
"""``schedule(delay_s, callback)``: the event loop's call_later, or a test's clock."""


@dataclass
class ImpairStats:
    offered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    overflow: int = 0


class ImpairStage:
    """Applies an :class:`Impairment` to datagrams on their way to ``deliver``."""

    def __init__(
        self,
        config: Impairment,
        deliver: Callable[[bytes, Any], object],
        *,
        schedule: Scheduler | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._deliver = deliver
        if schedule is None or clock is None:
            loop = asyncio.get_running_loop()

            def call_later(delay: float, callback: Callable[[], None]) -> None:
                loop.call_later(delay, callback)

            schedule, clock = schedule or call_later, clock or loop.time
        self._schedule: Scheduler = schedule
        self._clock: Callable[[], float] = clock
        self._rng = random.Random(config.seed)
        self._bad = False
        r = 1.0 / config.burst
        self._enter_bad = config.loss * r / (1.0 - config.loss) if config.burst > 1.0 else 0.0
        self._leave_bad = r
        self._last_due = 0.0
        self._held: tuple[bytes, Any] | None = None
        self.queued = 0
        self.stats = ImpairStats()

    def __call__(self, data: bytes, addr: Any) -> None:
        self.stats.offered += 1
        if self._lost():
            self.stats.lost += 1
            return
        copies = 2 if self.config.duplicate and self._rng.random() < self.config.duplicate else 1
        if copies == 2:
            self.stats.duplicated += 1
        for _ in range(copies):
            self._send(data, addr)

    def _lost(self) -> bool:
        c = self.config
        if not c.loss:
            return False
        if c.burst <= 1.0:
            return self._rng.random() < c.loss
        if self._bad:
            self._bad = self._rng.random() >= self._leave_bad
        else:
            self._bad = self._rng.random() < self._enter_bad
        return self._bad

    def _send(self, data: bytes, addr: Any) -> None:
        c = self.config
        if c.reorder and self._held is None and self._rng.random() < c.reorder:
            held = self._held = (data, addr)  # goes out right after the next one
            self._schedule(HOLD_LIMIT_S, lambda: self._release_held(held))
            return
        if not (c.delay_ms or c.jitter_ms):
            self._deliver(data, addr)
            self._release_held(self._held, swapped=True)
            return
        if self.queued >= MAX_QUEUED:
            self.stats.overflow += 1
            return
        now = self._clock()
        wait = c.delay_ms / 1000.0
        if c.jitter_ms:
            wait = max(0.0, wait + self._rng.gauss(0.0, c.jitter_ms / 1000.0))
        due = max(now + wait, self._last_due + ORDER_EPSILON_S)
        self._last_due = due
        overtaken, self._held = self._held, None
        self.queued += 1
        self._schedule(due - now, lambda: self._release(data, addr))
        if overtaken is not None:
            self.stats.reordered += 1
            self.queued += 1
            self._schedule(due - now + ORDER_EPSILON_S / 2, lambda: self._release(*overtaken))

    def _release_held(self, held: tuple[bytes, Any] | None, swapped: bool = False) -> None:
        """Deliver the held datagram (after the one that overtook it, or alone once the hold expires)."""
        if held is None or self._held is not held:
            return
        self._held = None
        if swapped:
            self.stats.reordered += 1
        self._deliver(*held)

    def _release(self, data: bytes, addr: Any) -> None:
        self.queued -= 1
        self._deliver(data, addr)
