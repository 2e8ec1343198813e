"""What every `splitrelay bench` command shares: the machine line, CPU accounting, pinned child processes.

Benchmarks here run their subject in a child process pinned to its own core and measure it from the
outside (/proc), so the load generator's work never counts as the subject's. Children print JSON lines on
stdout (the first one with ``"event": "ready"``); they are started and stopped by PID, never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitrelay.relay.child import ChildError, ChildProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run as asked (a child failed, a set-up timed out); the text says which."""


# --- the machine ------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(
    packages: Sequence[str] = ("aiortc", "aioice", "uvloop", "av"), event_loop: str = "uvloop"
) -> dict[str, Any]:
    """CPU model, core counts, kernel, Python, the event loop(s) measured and package versions: what a
    reader needs to compare two runs. Every benchmark prints it (``machine_line``) above its table."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count() or 1,
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "event_loop": event_loop,
        "packages": {p: _version(p) for p in packages},
    }


def machine_line(info: Mapping[str, Any]) -> str:
    """``machine_info`` as the one line every benchmark table starts with."""
    packages = "".join(f", {k} {v}" for k, v in info["packages"].items())
    return (
        f"{info['cpu']}, {info['cores']} cores (usable {len(info['usable_cores'])}), "
        f"Linux {info['kernel']}, Python {info['python']}, event loop: {info['event_loop']}{packages}"
    )


def split_cores(
    subject_core: int, usable: Iterable[int] | None = None
) -> tuple[frozenset[int], frozenset[int]]:
    """(cores for the subject, cores for the load generator); they overlap only on a one-core machine."""
    cores = frozenset(os.sched_getaffinity(0) if usable is None else usable)
    if subject_core not in cores:
        raise ValueError(f"relay_core: core {subject_core} is not usable here (usable: {sorted(cores)})")
    rest = cores - {subject_core}
    return frozenset({subject_core}), (rest or frozenset({subject_core}))


# --- CPU from /proc ---------------------------------------------------------------------------------


def parse_proc_stat_cpu_seconds(stat_line: str) -> float:
    """utime + stime (all threads) of one /proc/<pid>/stat line, in seconds.

    The command name may contain spaces and parentheses, so fields are counted after the last ')'.
    """
    rest = stat_line.rpartition(")")[2].split()
    if len(rest) < 13:
        raise ValueError(f"/proc stat line: expected at least 15 fields, got {len(rest) + 2}")
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds a live process has used; raises BenchError when it is gone."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        raise BenchError(f"process {pid} is gone: cannot read its CPU time") from None
    return parse_proc_stat_cpu_seconds(line)


@dataclass(frozen=True, slots=True)
class CoreTimes:
    """Seconds one core spent since boot: busy (everything but idle, iowait, steal), of which in
    interrupts (irq + softirq: on loopback, delivering the datagrams this core's processes send), steal."""

    busy: float
    interrupts: float
    steal: float
    total: float


def parse_core_times(proc_stat: str) -> dict[int, CoreTimes]:
    """Per-core times from /proc/stat text."""
    out: dict[int, CoreTimes] = {}
    for line in proc_stat.splitlines():
        name, _, values = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        fields = [int(v) for v in values.split()]
        fields += [0] * (8 - len(fields))
        idle, iowait, irq, softirq, steal = fields[3], fields[4], fields[5], fields[6], fields[7]
        total = sum(fields[:8])
        out[int(name[3:])] = CoreTimes(
            (total - idle - iowait - steal) / CLOCK_TICKS,
            (irq + softirq) / CLOCK_TICKS,
            steal / CLOCK_TICKS,
            total / CLOCK_TICKS,
        )
    return out


def core_times() -> dict[int, CoreTimes]:
    return parse_core_times(Path("/proc/stat").read_text(encoding="utf-8"))


def parse_proc_stat_family_seconds(stat_line: str) -> float:
    """utime + stime + cutime + cstime: a process and the children it has reaped.

    Short-lived processes (a test suite's subprocesses) start and end between two snapshots; their
    CPU still shows, in their parent's cutime/cstime.
    """
    rest = stat_line.rpartition(")")[2].split()
    if len(rest) < 15:
        raise ValueError(f"/proc stat line: expected at least 17 fields, got {len(rest) + 2}")
    return (int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])) / CLOCK_TICKS


def all_process_times(limit: int = 100_000) -> dict[int, tuple[str, float]]:
    """(command name, CPU seconds of it and its reaped children) of every process readable in /proc."""
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if len(out) >= limit:
            break
        if not entry.name.isdigit():
            continue
        try:
            line = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        with contextlib.suppress(ValueError):
            name = line.partition("(")[2].rpartition(")")[0]
            out[int(entry.name)] = (name, parse_proc_stat_family_seconds(line))
    return out


def parse_udp_counters(snmp: str) -> dict[str, int]:
    """The Udp counters of /proc/net/snmp (InErrors, RcvbufErrors...): the kernel's own drop count."""
    rows = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        raise ValueError("/proc/net/snmp: no Udp header and value lines")
    header, values = rows[0][1:], rows[1][1:]
    return {name: int(value) for name, value in zip(header, values, strict=True)}


def udp_counters() -> dict[str, int]:
    try:
        return parse_udp_counters(Path("/proc/net/snmp").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of named processes, of every other process and of each core at one instant."""

    at: float
    processes: dict[str, float]
    cores: dict[int, CoreTimes]
    udp: dict[str, int]
    everyone: dict[int, tuple[str, float]]

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> CpuSnapshot:
        return cls(
            time.monotonic(),
            {name: process_cpu_seconds(pid) for name, pid in pids.items()},
            core_times(),
            udp_counters(),
            all_process_times(),
        )


@dataclass(frozen=True)
class CpuWindow:
    """What happened between two snapshots, as % of one core (100 = one core fully busy)."""

    seconds: float
    processes: dict[str, float]
    core_busy: dict[int, float]
    core_interrupts: dict[int, float]
    core_steal: dict[int, float]
    udp: dict[str, int]
    others: list[tuple[str, int, float]]
    """Processes not ours, alive at both ends, that with their reaped children used at least 1% of a
    core: (name, pid, %)."""
    started: int
    """Processes (not ours) that started during the window: short-lived work ``others`` cannot name."""

    @classmethod
    def between(cls, start: CpuSnapshot, end: CpuSnapshot, own_pids: Iterable[int] = ()) -> CpuWindow:
        wall = max(end.at - start.at, 1e-9)
        procs = {n: 100 * (end.processes[n] - start.processes[n]) / wall for n in start.processes}
        busy: dict[int, float] = {}
        interrupts: dict[int, float] = {}
        steal: dict[int, float] = {}
        for core, t0 in start.cores.items():
            t1 = end.cores.get(core, t0)
            span = max(t1.total - t0.total, 1e-9)
            busy[core] = 100 * (t1.busy - t0.busy) / span
            interrupts[core] = 100 * (t1.interrupts - t0.interrupts) / span
            steal[core] = 100 * (t1.steal - t0.steal) / span
        udp = {k: end.udp[k] - v for k, v in start.udp.items() if k in end.udp}
        own = set(own_pids)
        others = []
        started = 0
        for pid, (name, seconds) in end.everyone.items():
            before = start.everyone.get(pid)
            if pid in own:
                continue
            if before is None:
                started += 1
                continue
            pct = 100 * (seconds - before[1]) / wall
            if pct >= 1.0:
                others.append((name, pid, round(pct, 1)))
        others.sort(key=lambda o: -o[2])
        return cls(wall, procs, busy, interrupts, steal, udp, others, started)


# --- child processes --------------------------------------------------------------------------------


class Child:
    """One pinned child process (relay/child.py) speaking JSON lines on stdout (and optionally reading
    them on stdin); its stderr goes to a file shown when it fails."""

    def __init__(self, process: ChildProcess) -> None:
        self.process = process
        self.name = process.name
        self.pid = process.pid
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def spawn(
        cls,
        name: str,
        args: Sequence[str],
        *,
        cores: frozenset[int],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
    ) -> Child:
        """Start ``args`` pinned to ``cores``; its stderr goes to a file in ``workdir`` (shown on failure)."""
        try:
            process = await ChildProcess.start(
                name,
                args,
                env=dict(os.environ if env is None else env),
                stdin=stdin,
                stderr=workdir / f"{name}.stderr",
                cores=cores,
            )
        except ChildError as exc:
            raise BenchError(str(exc)) from None
        return cls(process)

    def stderr_tail(self, lines: int = 12) -> str:
        return self.process.stderr_tail(lines)

    def _failure(self, what: str) -> BenchError:
        tail = self.stderr_tail()
        ending = f"; its stderr ends:\n{tail}" if tail else ""
        return BenchError(f"{self.name} (pid {self.pid}) {what}{ending}")

    async def next_event(self, within: float) -> dict[str, Any]:
        """The next JSON line from the child; BenchError on exit, garbage, an error event or a timeout."""
        try:
            line = await self.process.read_line(within)
        except ChildError as exc:
            raise self._failure(str(exc).removeprefix(f"{self.name}: ")) from None
        if not line:
            code = await self.wait(5.0)
            raise self._failure(f"exited (code {code})")
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise self._failure(f"printed a line that is not JSON: {line[:120]!r}") from None
        if not isinstance(event, dict):
            raise self._failure(f"printed JSON that is not an object: {line[:120]!r}")
        self.events.append(event)
        if event.get("event") == "error":
            raise self._failure(f"failed: {event.get('message', '?')}")
        return event

    async def wait_for(self, kind: str, within: float) -> dict[str, Any]:
        """Skip events until one with ``"event": kind`` (bounded by ``within`` seconds overall)."""
        deadline = time.monotonic() + within
        for _ in range(100_000):  # bounded in count as well as time
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = await self.next_event(remaining)
            if event.get("event") == kind:
                return event
        raise self._failure(f"did not report {kind!r} within {within:g} s")

    async def remaining_events(self, within: float = 5.0) -> list[dict[str, Any]]:
        """JSON objects the child printed up to its exit (call after ``stop``); other lines are skipped."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + within
        for _ in range(10_000):  # bounded in count and time
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = await self.process.read_line(remaining)
            except ChildError:
                break
            if not line:
                break
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    async def send(self, message: Mapping[str, Any]) -> None:
        stdin = self.process.process.stdin
        if stdin is None:
            raise BenchError(f"{self.name}: started without a stdin pipe")
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise self._failure("closed its stdin") from None

    async def wait(self, within: float) -> int | None:
        return await self.process.wait(within)

    def alive(self) -> bool:
        return self.process.alive

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM by PID, then SIGKILL after ``grace`` s; closes its stdin. Idempotent."""
        return await self.process.stop(grace)


async def stop_all(children: Iterable[Child], grace: float = 10.0) -> None:
    """Stop children concurrently; never raises (it runs in ``finally`` blocks)."""
    alive = [c for c in children]
    if alive:
        await asyncio.gather(*(c.stop(grace) for c in alive), return_exceptions=True)
