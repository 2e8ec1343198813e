"""Keep the relay's calls out of full garbage collections: release ended calls, freeze live ones.

A full (generation 2) collection walks every tracked object of the process while every call waits: about
400 per live call, so ~250 ms at 1,000 calls. CPython runs one whenever the objects promoted since the
last one exceed a quarter of the long-lived ones, i.e. about every N/4 call set-ups at N live calls:
with churn, a quarter-second freeze of every call every minute or so.

The policy here (``SPLITRELAY_FREEZE_CALLS``, on unless ``0``):

- **Ended calls are released** (``Call.release``, a moment after their close): the reference cycles
  aiortc and the call form are cleared, so reference counting frees an ended call at once instead of
  leaving it to the collector.
- **Live calls are frozen**: once no call is being set up or torn down (so no half-built or
  half-dismantled call is caught in the act; at most ``MAX_WAIT_S`` after it was asked for), a full
  collection of what is not frozen yet (only what
  changed since the last freeze: a few milliseconds) and ``gc.freeze()`` move every live object into the
  permanent generation, which no collection scans. At most one freeze per ``interval_s``.
- **A bound on what freezing could leak**: anything frozen that later becomes cyclic garbage stays until
  the next ``gc.unfreeze()``. If the frozen heap outgrows the start-up heap plus ``budget_per_call``
  objects per live call, the relay unfreezes and collects everything once (one long pause, logged and
  counted), then freezes again.

With the switch off, nothing here runs: calls are neither released nor frozen (the behaviour before). It
is on by default only in a process that is a relay and nothing else (``mark_relay_process``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("splitrelay.relay.gc_freeze")

FREEZE_ENV = "SPLITRELAY_FREEZE_CALLS"
RELEASE_DELAY_S = 1.0
"""How long after its close a call is released: the late callbacks of its close (aiortc's transport
tasks, aioice's protocol close) have run by then."""
FREEZE_INTERVAL_S = 1.0
QUIET_RETRY_S = 0.25
MAX_WAIT_S = 0.5
"""The longest a freeze waits for a quiet moment: a ramp of back-to-back set-ups is never quiet, and
without a freeze its full collections walk every call (150-225 ms each at 1,000 calls). What an
in-flight set-up or close has alive then and leaves as cyclic garbage later stays frozen (bounded by
the budget below)."""
BUDGET_PER_CALL = 2_000
"""Frozen objects per live call above which the relay assumes a leak and collects everything once
(a live call holds ~400)."""
BUDGET_SLACK = 50_000
BUDGET_CHECK_S = 30.0
"""How often the budget is checked: counting the frozen heap walks it (about a millisecond per 100,000
objects), so not at every freeze."""


@dataclass(frozen=True)
class GcOps:
    """The collector operations the policy uses (tests pass fakes: freezing a test process is not theirs
    to do)."""

    collect: Callable[[], int] = gc.collect
    freeze: Callable[[], None] = gc.freeze
    unfreeze: Callable[[], None] = gc.unfreeze
    frozen: Callable[[], int] = gc.get_freeze_count


_relay_process = [False]


def mark_relay_process() -> None:
    """This process is a relay and nothing else (``relay serve``, a worker): its start-up heap was just
    frozen (relay/server.py freeze_startup_heap). Only then do calls get frozen by default: a process that
    embeds a relay (tests, tools) keeps its collector to itself unless it turns the freezer on."""
    _relay_process[0] = True


def freezing_enabled(environ: dict[str, str] | None = None) -> bool:
    """``SPLITRELAY_FREEZE_CALLS``: anything but ``0`` (or unset) means on."""
    value = (os.environ if environ is None else environ).get(FREEZE_ENV, "1").strip()
    return value != "0"


class CallFreezer:
    """The policy of the module docstring for one process's call manager.

    ``quiet`` says whether no call is being set up or torn down; ``live_calls`` how many calls are live.
    The manager tells it ``call_live()`` after each set-up and ``call_ended(release)`` after each close.
    """

    def __init__(
        self,
        quiet: Callable[[], bool],
        live_calls: Callable[[], int],
        *,
        enabled: bool | None = None,
        interval_s: float = FREEZE_INTERVAL_S,
        release_delay_s: float = RELEASE_DELAY_S,
        budget_per_call: int = BUDGET_PER_CALL,
        budget_slack: int = BUDGET_SLACK,
        max_wait_s: float = MAX_WAIT_S,
        ops: GcOps | None = None,
    ) -> None:
        self._gc = ops or GcOps()
        self._switch = freezing_enabled()
        self._enabled = enabled
        self._quiet = quiet
        self._live_calls = live_calls
        self.interval_s = interval_s
        self.release_delay_s = release_delay_s
        self.budget_per_call = budget_per_call
        self.budget_slack = budget_slack
        self.max_wait_s = max_wait_s
        self._waiting_since: float | None = None
        self.forced_freezes = 0
        """Freezes that waited ``max_wait_s`` without a quiet moment."""
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._base: tuple[int, int] | None = None
        """(frozen objects, live calls) after the first freeze here (the start-up heap, frozen by
        relay/server.py freeze_startup_heap, and the first calls): what the budget adds to."""
        self._releases: dict[int, asyncio.TimerHandle] = {}
        self._next_token = 0
        self.freezes = 0
        self.released = 0
        self.release_failures = 0
        self.unfreezes = 0
        self.last_freeze_ms = 0.0
        self.freeze_s_total = 0.0
        self.freeze_s_max = 0.0
        self._checked = -BUDGET_CHECK_S
        self.frozen_objects = 0
        """The permanent generation's size when last counted (after the first freeze, at budget checks)."""

    @property
    def enabled(self) -> bool:
        """As set, else the switch in a relay-only process (read when asked: the process is marked
        after the server started)."""
        return self._switch and _relay_process[0] if self._enabled is None else self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value

    def call_live(self) -> None:
        """A call was set up: freeze soon (coalesced, at most one freeze per ``interval_s``)."""
        if not self.enabled or self._timer is not None:
            return
        wait = max(0.0, self._last + self.interval_s - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(wait, self._freeze_when_quiet)

    def call_ended(self, release: Callable[[], int]) -> None:
        """A call closed: release it after ``release_delay_s``, then freeze what changed."""
        if not self.enabled:
            return
        token = self._next_token = self._next_token + 1
        self._releases[token] = asyncio.get_running_loop().call_later(
            self.release_delay_s, self._release, token, release
        )

    def _release(self, token: int, release: Callable[[], int]) -> None:
        self._releases.pop(token, None)
        try:
            release()
            self.released += 1
        except Exception:  # a release that fails leaves the call to the collector, as before
            self.release_failures += 1
            log.exception("releasing an ended call failed")
        self.call_live()

    def _freeze_when_quiet(self) -> None:
        self._timer = None
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if not self._quiet():
            if now - self._waiting_since < self.max_wait_s:
                self._timer = asyncio.get_running_loop().call_later(QUIET_RETRY_S, self._freeze_when_quiet)
                return
            self.forced_freezes += 1
        self._waiting_since = None
        self.freeze_now()

    def freeze_now(self) -> None:
        """Collect what is not frozen, freeze everything alive; unfreeze once first if over budget."""
        started = time.perf_counter()
        self._last = time.monotonic()
        live = self._live_calls()
        if self._base is not None and self._last - self._checked >= BUDGET_CHECK_S:
            self._checked = self._last
            frozen = self.frozen_objects = self._gc.frozen()
            base, base_live = self._base
            budget = base + self.budget_slack + self.budget_per_call * max(0, live - base_live)
            if frozen > budget:
                self.unfreezes += 1
                log.warning(
                    "frozen heap %d objects over its budget %d (%d live calls): collecting everything once",
                    frozen,
                    budget,
                    live,
                )
                self._gc.unfreeze()
        self._gc.collect()
        self._gc.freeze()
        if self._base is None:
            self.frozen_objects = self._gc.frozen()
            self._base = (self.frozen_objects, live)
            self._checked = self._last
        self.freezes += 1
        took = time.perf_counter() - started
        self.last_freeze_ms = took * 1000
        self.freeze_s_total += took
        self.freeze_s_max = max(self.freeze_s_max, took)

    def close(self) -> None:
        """Cancel what is pending (the process is stopping); releases not run leave calls to the collector."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for handle in self._releases.values():
            handle.cancel()
        self._releases.clear()


class FreezerCollector(Collector):
    """/metrics for the policy: freezes (and how long they stopped the process), releases, unfreezes."""

    def __init__(self, freezer: CallFreezer, process: str = "0") -> None:
        self.freezer = freezer
        self._process = process

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        f = self.freezer
        key = [self._process]
        for name, help_text, value in (
            ("gc_freezes", "Freezes of the live calls (collect what is not frozen, gc.freeze)", f.freezes),
            ("gc_freeze_seconds", "Time the freezes stopped the process (the collection included)",
             f.freeze_s_total),
            ("gc_calls_released", "Ended calls whose reference cycles were cleared", f.released),
            ("gc_release_failures", "Ended calls whose release failed (left to the collector)",
             f.release_failures),
            ("gc_unfreezes", "Times the frozen heap outgrew its budget and everything was collected once",
             f.unfreezes),
            ("gc_forced_freezes", "Freezes that found no quiet moment within their wait", f.forced_freezes),
        ):  # fmt: skip
            family = CounterMetricFamily(f"splitrelay_{name}", help_text, labels=["process"])
            family.add_metric(key, float(value))
            yield family
        longest = GaugeMetricFamily(
            "splitrelay_gc_freeze_max_seconds", "The longest freeze so far", labels=["process"]
        )
        longest.add_metric(key, f.freeze_s_max)
        yield longest
        on = GaugeMetricFamily(
            "splitrelay_gc_freezing",
            "1 when ended calls are released and live calls frozen",
            labels=["process"],
        )
        on.add_metric(key, 1.0 if f.enabled else 0.0)
        yield on
