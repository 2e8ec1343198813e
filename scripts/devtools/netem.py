"""Network impairment for the local stack: a fresh network namespace, netem on its loopback.

The whole stack and its callers talk over 127.0.0.1, so the simplest faithful impairment is to move
the benchmark process (and with it every child it starts) into a new network namespace, bring its
``lo`` up and put a netem qdisc on it: no routable address, no veth, nothing outside the namespace
touched. The namespace has no name: the kernel removes it, qdisc included, when the last process in
it exits, so even a SIGKILL leaves nothing behind.

Each hop over ``lo`` is impaired once, so a path of several hops (caller → SFU → relay → agent and
back is six) compounds the delay and the loss. Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), the
``ip`` and ``tc`` tools (iproute2) and the kernel's sch_netem; where any is missing
:class:`NetemUnavailable` says which, in one line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Final

CLONE_NEWNET: Final = 0x40000000
TOOL_TIMEOUT_S: Final = 10.0
MAX_TOKENS: Final = 32
MAX_SPEC_CHARS: Final = 200
MAX_DELAY_MS: Final = 10_000.0
DISTRIBUTIONS: Final = ("uniform", "normal", "pareto", "paretonormal")
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$")
_COUNT = re.compile(r"^[1-9]\d{0,5}$|^1000000$")
_UNIT_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class NetemUnavailable(Exception):
    """Impairment cannot be applied here; the message is one line naming the step and the cause."""


@dataclass(frozen=True)
class NetemSpec:
    """A validated netem argument list (a subset of tc-netem(8)), as given and as passed to tc."""

    text: str
    args: tuple[str, ...]


def _time_ms(token: str, what: str) -> float:
    match = _TIME.match(token)
    if match is None:
        raise ValueError(f"netem: {what} must be a time such as 40ms, 500us or 1s, got {token[:20]!r}")
    value = float(match.group(1)) * _UNIT_MS[match.group(2)]
    if value > MAX_DELAY_MS:
        raise ValueError(f"netem: {what} must be at most {MAX_DELAY_MS:g} ms, got {token}")
    return value


def _percent(token: str, what: str) -> float:
    match = _PERCENT.match(token)
    if match is None:
        raise ValueError(f"netem: {what} must be a percentage such as 2% or 0.5%, got {token[:20]!r}")
    value = float(match.group(1))
    if value > 100.0:
        raise ValueError(f"netem: {what} must be 0..100%, got {token}")
    return value


class _Words:
    """The spec's words with a read position: ``take`` the next one if it is of the kind asked for."""

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.i = 0

    def more(self) -> bool:
        return self.i < len(self.words)

    def peek(self) -> str | None:
        return self.words[self.i] if self.more() else None

    def next(self) -> str:
        word = self.words[self.i]
        self.i += 1
        return word

    def take(self, pattern: re.Pattern[str]) -> str | None:
        word = self.peek()
        if word is None or pattern.match(word) is None:
            return None
        return self.next()

    def need(self, pattern: re.Pattern[str], what: str, example: str) -> str:
        word = self.peek()
        if word is None or pattern.match(word) is None:
            raise ValueError(f"netem: {what} must be {example}, got {(word or 'nothing')[:20]!r}")
        return self.next()


def parse_netem(text: str) -> NetemSpec:
    """Check ``text`` against the netem options we allow; ValueError names the option and the limit.

    Allowed: ``delay TIME [JITTER [CORR%]] [distribution NAME]``, ``loss [random] P% [CORR%]``,
    ``duplicate P% [CORR%]``, ``reorder P% [CORR%]`` (needs a delay), ``corrupt P% [CORR%]``,
    ``rate RATE`` (e.g. 10mbit), ``limit PACKETS``; each at most once. The arguments go to tc as a
    list (never through a shell).
    """
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError(f"netem: at most {MAX_SPEC_CHARS} characters, got {len(text)}")
    words = text.lower().split()
    if not words:
        raise ValueError("netem: empty; e.g. 'loss 2% delay 40ms 10ms'")
    if len(words) > MAX_TOKENS:
        raise ValueError(f"netem: at most {MAX_TOKENS} words, got {len(words)}")
    cursor = _Words(words)
    seen: set[str] = set()
    out: list[str] = []
    time_ex, pct_ex = "a time such as 40ms, 500us or 1s", "a percentage such as 2% or 0.5%"
    for _ in range(MAX_TOKENS):  # bounded: each pass consumes at least one word
        if not cursor.more():
            break
        option = cursor.next()
        if option in seen:
            raise ValueError(f"netem: {option} given twice")
        seen.add(option)
        args: list[str] = []
        if option == "delay":
            args.append(cursor.need(_TIME, "delay", time_ex))
            jitter = cursor.take(_TIME)
            if jitter is not None:
                args.append(jitter)
                correlation = cursor.take(_PERCENT)
                if correlation is not None:
                    args.append(correlation)
            if cursor.peek() == "distribution":
                cursor.next()
                name = cursor.peek() or "nothing"
                if name not in DISTRIBUTIONS:
                    raise ValueError(
                        f"netem: distribution must be one of {', '.join(DISTRIBUTIONS)}, got {name[:20]!r}"
                    )
                if jitter is None:
                    raise ValueError(
                        "netem: distribution needs a delay jitter (delay 40ms 10ms distribution normal)"
                    )
                args += ["distribution", cursor.next()]
            for word in args:
                if _TIME.match(word):
                    _time_ms(word, "delay")
        elif option in ("loss", "duplicate", "reorder", "corrupt"):
            if option == "loss" and cursor.peek() == "random":
                args.append(cursor.next())
            args.append(cursor.need(_PERCENT, option, pct_ex))
            correlation = cursor.take(_PERCENT)
            if correlation is not None:
                args.append(correlation)
        elif option == "rate":
            args.append(cursor.need(_RATE, "rate", "a rate such as 10mbit or 500kbit"))
        elif option == "limit":
            args.append(cursor.need(_COUNT, "limit", "1..1000000 packets"))
        else:
            raise ValueError(
                f"netem: unknown option {option[:20]!r} (allowed: delay, loss, duplicate, reorder, "
                "corrupt, rate, limit)"
            )
        for word in args:
            if _PERCENT.match(word):
                _percent(word, option)
        out += [option, *args]
    if "reorder" in seen and "delay" not in seen:
        raise ValueError("netem: reorder needs a delay (tc reorders by sending some packets undelayed)")
    return NetemSpec(text=" ".join(words), args=tuple(out))


def _run(step: str, argv: list[str]) -> str:
    """Run an iproute2 command; NetemUnavailable with its first error line when it fails."""
    tool = shutil.which(argv[0])
    if tool is None:
        raise NetemUnavailable(f"{step}: `{argv[0]}` not found (install iproute2)")
    try:
        done = subprocess.run(
            [tool, *argv[1:]], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise NetemUnavailable(f"{step}: `{' '.join(argv)}` took over {TOOL_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise NetemUnavailable(
            f"{step}: `{' '.join(argv)}` failed: {message[0] if message else done.returncode}"
        )
    return done.stdout


def enter_namespace() -> None:
    """Move this process (and every child it starts from now on) into a new network namespace, ``lo`` up.

    Call it before starting threads or children. Irreversible for the process: it is meant for a
    benchmark process that exits when done.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        hint = " (needs root, or CAP_SYS_ADMIN)" if errno in (1, 13) else ""
        raise NetemUnavailable(f"network namespace: unshare(CLONE_NEWNET) failed: {os.strerror(errno)}{hint}")
    _run("network namespace", ["ip", "link", "set", "lo", "up"])


def apply_netem(spec: NetemSpec) -> str:
    """Put netem on this namespace's ``lo``; returns tc's description of the qdisc now in place."""
    try:
        _run("netem", ["tc", "qdisc", "add", "dev", "lo", "root", "netem", *spec.args])
    except NetemUnavailable as exc:
        if "unknown" in str(exc).lower():
            raise NetemUnavailable(
                f"{exc} (this kernel has no sch_netem: `modprobe sch_netem`, or a kernel built with "
                "CONFIG_NET_SCH_NETEM)"
            ) from None
        raise
    return loopback_qdisc()


def remove_netem() -> None:
    _run("netem", ["tc", "qdisc", "del", "dev", "lo", "root"])


def loopback_qdisc() -> str:
    return _run("netem", ["tc", "qdisc", "show", "dev", "lo"]).strip()
