"""What `splitrelay bench calls` is asked to run: the two configurations and the run's settings.

A configuration is ``KEY=VALUE[,KEY=VALUE]`` (or the shorthand ``sfu`` / ``direct``), so an A/B test
names only what differs: ``--a silence=300 --b silence=500``. Everything is checked here, before a
stack starts, and every error names the option, the key and the limit: a 20-minute run must not die
on a typo at minute 19.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from splitrelay.devtools.netem import NetemSpec
from splitrelay.devtools.stack import MODES
from splitrelay.relay.media.impair import Impairment

LABELS: Final = ("a", "b")
DEFAULT_MODE: Final = "sfu"
DEFAULT_SILENCE_MS: Final = 500
SILENCE_RANGE: Final = (20, 10_000)  # the echo agent's own bounds (scripts/devtools/stack.py StackConfig)
MAX_SPEC_CHARS: Final = 200
SFU_SOCKETS: Final = ("shared", "per-session")
"""The emulator's socket shape (StackConfig.shared_sfu_socket): every session on one UDP socket, as
Cloudflare's anycast SFU may be (the relay's demultiplexer then serializes set-ups: its turns), or a
socket per session."""
DEFAULT_SFU_SOCKET: Final = "shared"
KEYS: Final = {
    "mode": f"attach mode: {' or '.join(MODES)}",
    "silence": f"the echo agent's end-of-speech silence, ms ({SILENCE_RANGE[0]}..{SILENCE_RANGE[1]})",
    "sfu_socket": f"the SFU emulator's UDP sockets, mode=sfu only: {' or '.join(SFU_SOCKETS)}",
}
SHORTHANDS: Final = {mode: {"mode": mode} for mode in MODES}
MAX_CALLS: Final = 100_000
MAX_CONCURRENCY: Final = 64
MAX_WARMUP: Final = 10
PLOT_SUFFIXES: Final = (".png", ".svg")


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: what its stack and its calls differ in."""

    label: str
    """``a`` or ``b``."""
    mode: str = DEFAULT_MODE
    silence_ms: int = DEFAULT_SILENCE_MS
    sfu_socket: str = DEFAULT_SFU_SOCKET
    """``shared``: the emulator serves every session on one UDP socket; ``per-session``: one each.
    Means something in SFU mode only (direct mode has no SFU)."""

    def __post_init__(self) -> None:
        if self.sfu_socket not in SFU_SOCKETS:
            raise ValueError(f"sfu_socket: must be one of {SFU_SOCKETS}, got {self.sfu_socket!r}")

    @property
    def shared_sfu_socket(self) -> bool:
        """What the stack is given (StackConfig.shared_sfu_socket)."""
        return self.sfu_socket == "shared"

    @property
    def spec(self) -> str:
        """The canonical ``KEY=VALUE`` form (every key the mode uses), as tables and JSON show it."""
        spec = f"mode={self.mode},silence={self.silence_ms}"
        return spec + (f",sfu_socket={self.sfu_socket}" if self.mode == "sfu" else "")

    def to_json(self) -> dict[str, str | int | None]:
        return {
            "label": self.label,
            "spec": self.spec,
            "mode": self.mode,
            "silence_ms": self.silence_ms,
            "sfu_socket": self.sfu_socket if self.mode == "sfu" else None,
        }


def parse_variant(text: str, label: str) -> Variant:
    """``sfu``, ``direct`` or ``KEY=VALUE[,KEY=VALUE]`` (keys: :data:`KEYS`); ValueError names the problem."""
    option = f"--{label}"
    if label not in LABELS:
        raise ValueError(f"label: must be one of {LABELS}, got {label!r}")
    text = text.strip()
    if not text:
        raise ValueError(
            f"{option}: empty; use sfu, direct or KEY=VALUE[,KEY=VALUE] (keys: {', '.join(KEYS)})"
        )
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"{option}: at most {MAX_SPEC_CHARS} characters, got {len(text)}")
    values: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if item in SHORTHANDS:
            pairs = SHORTHANDS[item].items()
        else:
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep or not key or not value:
                raise ValueError(
                    f"{option}: expected KEY=VALUE (or {' / '.join(SHORTHANDS)}), got {item[:40]!r}"
                )
            pairs = {key: value}.items()
        for key, value in pairs:
            if key not in KEYS:
                known = "; ".join(f"{k}: {v}" for k, v in KEYS.items())
                raise ValueError(f"{option}: unknown key {key[:40]!r} (known keys: {known})")
            if key in values:
                raise ValueError(f"{option}: {key} given twice")
            values[key] = value
    mode = values.get("mode", DEFAULT_MODE).lower()
    if mode not in MODES:
        raise ValueError(f"{option}: mode must be one of {', '.join(MODES)}, got {mode[:40]!r}")
    silence = DEFAULT_SILENCE_MS
    if "silence" in values:
        raw = values["silence"].lower().removesuffix("ms")
        try:
            silence = int(raw)
        except ValueError:
            raise ValueError(
                f"{option}: silence must be a whole number of ms, got {values['silence'][:40]!r}"
            ) from None
        low, high = SILENCE_RANGE
        if not low <= silence <= high:
            raise ValueError(f"{option}: silence must be {low}..{high} ms, got {silence}")
    sfu_socket = DEFAULT_SFU_SOCKET
    if "sfu_socket" in values:
        sfu_socket = values["sfu_socket"].lower()
        if sfu_socket not in SFU_SOCKETS:
            allowed = ", ".join(SFU_SOCKETS)
            raise ValueError(
                f"{option}: sfu_socket must be one of {allowed}, got {values['sfu_socket'][:40]!r}"
            )
        if mode != "sfu":
            raise ValueError(f"{option}: sfu_socket applies to mode=sfu only (mode={mode} has no SFU)")
    return Variant(label=label, mode=mode, silence_ms=silence, sfu_socket=sfu_socket)


@dataclass(frozen=True)
class BenchCallsConfig:
    """The whole run. ``calls`` is per configuration; each call is ``turns`` turns of the utterance."""

    a: Variant
    b: Variant
    calls: int = 1000
    concurrency: int = 8
    block: int = 100
    """Calls per block: the run alternates blocks A B B A A B ... (see scripts/bench/calls.py)."""
    warmup: int = 1
    """Calls per configuration before the measured ones: made, checked, kept apart from the numbers."""
    turns: int = 1
    reply_timeout_s: float = 10.0
    settle_timeout_s: float = 60.0
    """After the calls, how long the stacks get to close everything (the emulator ends a session 30 s
    after its peer went away: Cloudflare's reconnect window)."""
    netem: NetemSpec | None = None
    impair: Impairment | None = None
    """Userspace impairment of configuration A's caller legs (B stays clean: the baseline in the same
    run). For kernels without netem; relay/media/impair.py."""
    impair_relay: Impairment | None = None
    """Userspace impairment of configuration A's relay leg (SFU↔relay, both ways; `relay serve --impair`)."""
    netns: bool = False
    """Run stacks and callers in a fresh network namespace (implied by ``netem``)."""
    out_dir: Path | None = None
    plot: Path | None = None

    def __post_init__(self) -> None:
        from splitrelay.devtools.call import MAX_TURNS  # here, not at import: keeps `splitrelay --help` light

        if (self.a.label, self.b.label) != LABELS:
            raise ValueError("a, b: the variants must be labelled 'a' and 'b'")
        for name, value, low, high in (
            ("calls", self.calls, 1, MAX_CALLS),
            ("concurrency", self.concurrency, 1, MAX_CONCURRENCY),
            ("block", self.block, 1, MAX_CALLS),
            ("warmup", self.warmup, 0, MAX_WARMUP),
            ("turns", self.turns, 1, MAX_TURNS),
        ):
            if isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name}: must be {low}..{high}, got {value}")
        if self.block < min(self.concurrency, self.calls):
            raise ValueError(
                f"block: must be at least the concurrency ({self.concurrency}) or the calls "
                f"({self.calls}), got {self.block}: a smaller block never reaches the concurrency"
            )
        if not 1.0 <= self.reply_timeout_s <= 120.0:
            raise ValueError(f"reply_timeout_s: must be 1..120 s, got {self.reply_timeout_s}")
        if not 1.0 <= self.settle_timeout_s <= 600.0:
            raise ValueError(f"settle_timeout_s: must be 1..600 s, got {self.settle_timeout_s}")
        if self.impair_relay is not None and self.netem is not None:
            raise ValueError(
                "--impair-relay: give --netem or --impair-relay, not both (netem impairs every hop)"
            )
        if self.impair is not None and self.netem is not None:
            raise ValueError("--impair: give --netem or --impair, not both (netem impairs every hop)")
        if self.plot is not None and self.plot.suffix.lower() not in PLOT_SUFFIXES:
            raise ValueError(
                f"plot: the file must end in {' or '.join(PLOT_SUFFIXES)}, got {self.plot.name!r}"
            )

    @property
    def in_namespace(self) -> bool:
        return self.netns or self.netem is not None

    @property
    def variants(self) -> tuple[Variant, Variant]:
        return self.a, self.b

    def schedule(self) -> list[tuple[str, int]]:
        """The blocks in run order as (label, calls): A B B A A B ..., each side ``calls`` in all.

        Alternating the order within each pair means neither side always runs right after the other
        (a stack that is still cleaning up after its block would otherwise always slow the same side).
        """
        blocks: list[tuple[str, int]] = []
        left = {label: self.calls for label in LABELS}
        for pair in range(MAX_CALLS):  # bounded: each pair takes at least one call from each side
            order = LABELS if pair % 2 == 0 else LABELS[::-1]
            for label in order:
                size = min(self.block, left[label])
                if size:
                    blocks.append((label, size))
                    left[label] -= size
            if not any(left.values()):
                break
        return blocks
