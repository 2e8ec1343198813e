"""`splitrelay bench churn`: what the relay's garbage collector costs its callers while calls come and go.

A full (generation 2) collection stops every call of a relay process for as long as it walks the heap.
`bench relay` hides it (its calls are all set up before the window and none ends); production does not:
CPython runs a full collection whenever the objects promoted since the last one exceed a quarter of the
long-lived ones, i.e. about every N/4 call set-ups at N live calls. This bench shows it:

1. a real relay (`relay serve` on the shared media port, pinned to ``--relay-core``) and the echo inference;
2. ``--calls`` real aiortc callers (scripts/bench/load.py ``Caller``, each on its own loopback socket, in
   this process, on the other cores) attached through the relay's signed control API: the **ramp**;
3. an **idle** window: no call starts or ends and no media moves (the calls are connected and idle: ICE
   consent, RTCP and the relay <-> agent keep-alives run); the relay's CPU over it, per call;
4. a **churn** window: ``--churn-per-s`` times a second the oldest call hangs up (DELETE through the API,
   then the caller closes) and a new one is set up, so ``--calls`` stay live.

The relay reports every collection's pause on /metrics (relay/gc_pauses.py; histogram by generation);
this bench reads it before and after each phase, with the relay's RSS and threads from /proc and the
tracked objects a full collection would scan (``SPLITRELAY_GC_COUNT_OBJECTS=1``: counted at each scrape,
outside the windows). ``--ab`` runs the relay twice back to back: calls frozen (relay/gc_freeze.py, the
default) and not (``SPLITRELAY_FREEZE_CALLS=0``, the behaviour before).

Pause quantiles are histogram estimates (interpolated within a bucket, as Prometheus does); the longest
pause of a phase is exact when it set the relay's record (``splitrelay_gc_pause_max_seconds``), else the
upper bound of its bucket (printed with ``<=``).
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from splitrelay.bench.load import Caller, noise_frames
from splitrelay.bench.relay import Buckets, bucket_delta, free_udp_port, histogram_quantile
from splitrelay.bench.support import (
    BenchError,
    Child,
    machine_info,
    machine_line,
    process_cpu_seconds,
    split_cores,
    stop_all,
)
from splitrelay.inference.wire_auth import WIRE_KEY_ENV, generate_text
from splitrelay.relay.child import cli_command
from splitrelay.relay.gc_freeze import FREEZE_ENV
from splitrelay.relay.gc_pauses import COUNT_OBJECTS_ENV

SIGNING_KEY_ENV = "SPLITRELAY_RELAY_SIGNING_KEY"
VARIANTS: dict[str, dict[str, str]] = {"frozen": {}, "not frozen": {FREEZE_ENV: "0"}}
"""The relay's two garbage-collection policies (``--ab`` runs both, the default one first)."""
GENERATIONS = (0, 1, 2)
SETTLE_S = 3.0
CHURN_IN_FLIGHT = 32  # hang-ups and set-ups of the churn in flight at once; more are counted as late
SCRAPE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ChurnConfig:
    calls: int = 1000
    churn_per_s: float = 10.0
    duration: float = 60.0
    idle: float = 10.0
    relay_core: int = 0
    setup_concurrency: int = 16
    setup_timeout: float = 30.0
    ab: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.calls <= 5000:
            raise ValueError(f"--calls: must be 1..5000, got {self.calls}")
        if not 0 <= self.churn_per_s <= 100:
            raise ValueError(f"--churn-per-s: must be 0..100, got {self.churn_per_s:g}")
        if not 1 <= self.duration <= 3600:
            raise ValueError(f"--duration: must be 1..3600 seconds, got {self.duration:g}")
        if not 1 <= self.idle <= 600:
            raise ValueError(f"--idle: must be 1..600 seconds, got {self.idle:g}")
        if not 1 <= self.setup_concurrency <= 64:
            raise ValueError(f"--setup-concurrency: must be 1..64, got {self.setup_concurrency}")
        if not 1 <= self.setup_timeout <= 300:
            raise ValueError(f"--setup-timeout: must be 1..300 seconds, got {self.setup_timeout:g}")

    def command(self) -> str:
        ab = " --ab" if self.ab else ""
        return (
            f"splitrelay bench churn --calls {self.calls} --churn-per-s {self.churn_per_s:g} "
            f"--duration {self.duration:g} --idle {self.idle:g}{ab}"
        )


# --- what the relay reports -------------------------------------------------------------------------


@dataclass(frozen=True)
class GcSnapshot:
    """The relay's collector figures at one scrape (summed over its ``process`` label)."""

    pauses: dict[int, Buckets]
    """Per generation: (upper bound in seconds, cumulative count), +Inf last."""
    pause_sum_s: dict[int, float]
    pause_max_s: dict[int, float]
    frozen: float
    tracked: float | None
    live_calls: float


def parse_gc_metrics(text: str) -> GcSnapshot:
    """The collector families of a relay's /metrics text (relay/gc_pauses.py) and its live calls."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[int, dict[float, float]] = {g: {} for g in GENERATIONS}
    sums = dict.fromkeys(GENERATIONS, 0.0)
    longest = dict.fromkeys(GENERATIONS, 0.0)
    frozen = 0.0
    tracked: float | None = None
    live = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "splitrelay_gc_pause_seconds":
                generation = int(sample.labels["generation"])
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[generation][le] = buckets[generation].get(le, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    sums[generation] += sample.value
            elif family.name == "splitrelay_gc_pause_max_seconds":
                generation = int(sample.labels["generation"])
                longest[generation] = max(longest[generation], sample.value)
            elif family.name == "splitrelay_gc_frozen_objects":
                frozen += sample.value
            elif family.name == "splitrelay_gc_tracked_objects":
                tracked = (tracked or 0.0) + sample.value
            elif family.name == "splitrelay_calls_live":
                live += sample.value
    if not buckets[2]:
        raise BenchError("relay /metrics has no splitrelay_gc_pause_seconds histogram (relay/gc_pauses.py)")
    return GcSnapshot(
        {g: sorted(b.items()) for g, b in buckets.items()}, sums, longest, frozen, tracked, live
    )


def pause_summary(start: GcSnapshot, end: GcSnapshot, generation: int) -> dict[str, Any]:
    """Collections of ``generation`` between two scrapes: count, p50/p99 (histogram estimates), the longest
    (exact if it set the relay's record meanwhile, else its bucket's upper bound), and their total."""
    window = bucket_delta(start.pauses[generation], end.pauses[generation])
    count = round(window[-1][1]) if window else 0
    out: dict[str, Any] = {
        "count": count,
        "total_ms": round(1000 * (end.pause_sum_s[generation] - start.pause_sum_s[generation]), 3),
    }
    if count == 0:
        return out | {"p50_ms": None, "p99_ms": None, "max_ms": None, "max_exact": True}
    p50, _ = histogram_quantile(0.5, window)
    p99, _ = histogram_quantile(0.99, window)
    longest: float | None = end.pause_max_s[generation]
    exact = end.pause_max_s[generation] > start.pause_max_s[generation]
    if not exact:
        longest = _top_bound(window)
    return out | {
        "p50_ms": _ms(p50),
        "p99_ms": _ms(p99),
        "max_ms": _ms(longest),
        "max_exact": exact,
    }


def _top_bound(window: Buckets) -> float | None:
    """The upper bound of the highest bucket with an observation (None when it is +Inf)."""
    top = 0.0
    previous = 0.0
    for le, cumulative in window:
        if cumulative > previous:
            top = le
        previous = cumulative
    return None if top == float("inf") else top


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass(frozen=True)
class ProcSample:
    """The relay process from /proc: CPU seconds so far, resident memory, OS threads."""

    cpu_s: float
    rss_kb: int
    threads: int


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS in kB, Threads) from /proc/<pid>/status text."""
    rss = threads = -1
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "VmRSS":
            rss = int(value.split()[0])
        elif name == "Threads":
            threads = int(value.split()[0])
    if rss < 0 or threads < 0:
        raise ValueError("/proc status: no VmRSS or Threads line")
    return rss, threads


def read_proc(pid: int) -> ProcSample:
    try:
        rss, threads = parse_status(Path(f"/proc/{pid}/status").read_text(encoding="utf-8"))
    except OSError:
        raise BenchError(f"process {pid} is gone: cannot read its status") from None
    return ProcSample(process_cpu_seconds(pid), rss, threads)


def per_call(before: float | None, after: float | None, calls: int) -> float | None:
    """What each of ``calls`` calls added between two readings (None when a reading is missing)."""
    if before is None or after is None or calls <= 0:
        return None
    return (after - before) / calls


def cpu_us_per_call_s(start: ProcSample, end: ProcSample, wall_s: float, calls: int) -> float | None:
    """The relay's CPU over a window, in microseconds per call per second."""
    if wall_s <= 0 or calls <= 0:
        return None
    return 1e6 * (end.cpu_s - start.cpu_s) / wall_s / calls


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """One relay process, its echo inference and this process's callers."""

    url: str
    key: str = field(repr=False)
    relay_pid: int
    setup_timeout: float
    callers: dict[str, Caller] = field(default_factory=dict)
    """Live callers by call id, oldest first."""
    made: int = 0
    failed_setups: int = 0
    failed_hangups: int = 0
    late: int = 0
    ended: int = 0
    first_error: str | None = None

    async def attach(self, http: Any, frames: list[tuple[bytes, int]], rtts: array.array[int]) -> None:
        call_id = f"churn-{self.made}"
        self.made += 1
        caller = Caller(frames, rtts)
        try:
            async with asyncio.timeout(self.setup_timeout):
                await caller.attach(http, self.key.encode(), call_id, self.setup_timeout)
        except Exception as exc:  # counted, the first one kept: a bench reports failures, it does not stop
            self.failed_setups += 1
            self.first_error = self.first_error or f"set-up {call_id}: {type(exc).__name__}: {exc}"
            await caller.close()
            return
        self.callers[call_id] = caller

    def oldest(self) -> tuple[str, Caller]:
        """Take the oldest live call out of the live set (its hang-up follows)."""
        call_id = next(iter(self.callers))
        return call_id, self.callers.pop(call_id)

    async def hang_up(self, http: Any, call_id: str, caller: Caller) -> None:
        from splitrelay.contract.signing import sign_headers

        path = f"/v1/calls/{call_id}"
        try:
            response = await http.delete(path, headers=sign_headers(self.key.encode(), "DELETE", path, b""))
            if response.status_code != 200:
                self.failed_hangups += 1
                self.first_error = self.first_error or f"hang-up {call_id}: HTTP {response.status_code}"
        except Exception as exc:  # counted, as a set-up's
            self.failed_hangups += 1
            self.first_error = self.first_error or f"hang-up {call_id}: {type(exc).__name__}: {exc}"
        finally:
            await caller.close()
        self.ended += 1


async def _scrape(http: Any) -> GcSnapshot:
    response = await http.get("/metrics", timeout=SCRAPE_TIMEOUT_S)
    if response.status_code != 200:
        raise BenchError(f"relay GET /metrics: HTTP {response.status_code}")
    return parse_gc_metrics(response.text)


async def _reading(http: Any, pid: int) -> tuple[GcSnapshot, ProcSample, float]:
    snapshot = await _scrape(http)
    return snapshot, read_proc(pid), time.monotonic()


async def _ramp(run: Run, http: Any, calls: int, concurrency: int) -> float:
    frames, rtts = noise_frames(), array.array("q")
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one() -> None:
        async with gate:
            await run.attach(http, frames, rtts)

    async with asyncio.TaskGroup() as group:
        for _ in range(calls):
            group.create_task(one())
    if len(run.callers) < calls:
        raise BenchError(f"ramp: {len(run.callers)} of {calls} calls set up ({run.failed_setups} failed)")
    return time.monotonic() - started


async def _churn(run: Run, http: Any, rate: float, duration: float) -> float:
    """Every 1/rate s the oldest call hangs up and a new one is set up; → the window's length."""
    frames, rtts = noise_frames(), array.array("q")
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    if rate <= 0:
        await asyncio.sleep(duration)
        return time.monotonic() - started
    ticks = int(duration * rate)

    async def turn(call_id: str, caller: Caller) -> None:
        await run.hang_up(http, call_id, caller)
        await run.attach(http, frames, rtts)

    for k in range(ticks):  # bounded: duration x rate turns
        delay = started + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= CHURN_IN_FLIGHT or not run.callers:
            run.late += 1
            continue
        task = asyncio.get_running_loop().create_task(turn(*run.oldest()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    rest = started + duration - time.monotonic()
    if rest > 0:
        await asyncio.sleep(rest)
    if tasks:
        await asyncio.wait(set(tasks), timeout=run.setup_timeout + 10)
    return time.monotonic() - started


async def run_variant(
    config: ChurnConfig, name: str, env: Mapping[str, str], workdir: Path, cores: tuple[frozenset[int], ...]
) -> dict[str, Any]:
    """One relay with the ``env`` policy through ramp, idle and churn; the figures of each phase."""
    import httpx

    relay_cores, load_cores = cores
    key = secrets.token_urlsafe(32)
    plain = {k: v for k, v in os.environ.items() if not k.startswith("SPLITRELAY_")}
    plain[WIRE_KEY_ENV] = generate_text()
    children: list[Child] = []
    run: Run | None = None
    try:
        echo = await Child.spawn(
            f"echo-inference-{len(name)}",
            cli_command(
                "bench", "serve-echo", "echo-inference", "--listen", "127.0.0.1:0",
                "--max-calls", str(config.calls + CHURN_IN_FLIGHT + 16),
            ),
            cores=load_cores, workdir=workdir, env=plain, stdin=True,
        )  # fmt: skip
        children.append(echo)
        port = int((await echo.wait_for("ready", 30))["port"])
        relay = await Child.spawn(
            f"relay-{name.replace(' ', '-')}",
            cli_command(
                "relay", "serve", "--json", "--host", "127.0.0.1", "--port", "0",
                "--candidate-address", "127.0.0.1", "--inference", f"127.0.0.1:{port}",
                "--max-calls", str(config.calls + CHURN_IN_FLIGHT),
                "--media-port", str(free_udp_port("127.0.0.1")),
            ),
            cores=relay_cores, workdir=workdir,
            env={**plain, SIGNING_KEY_ENV: key, COUNT_OBJECTS_ENV: "1", **env},
        )  # fmt: skip
        children.append(relay)
        url = str((await relay.wait_for("ready", 60))["url"])
        run = Run(url, key, relay.pid, config.setup_timeout)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=config.setup_timeout, limits=limits) as http:
            await asyncio.sleep(1.0)
            empty = await _reading(http, relay.pid)
            ramp_s = await _ramp(run, http, config.calls, config.setup_concurrency)
            await asyncio.sleep(SETTLE_S)
            idle_start = await _reading(http, relay.pid)
            await asyncio.sleep(config.idle)
            idle_end = await _reading(http, relay.pid)
            churn_s = await _churn(run, http, config.churn_per_s, config.duration)
            churn_end = await _reading(http, relay.pid)
        return _variant_result(config, name, run, empty, idle_start, idle_end, churn_end, ramp_s, churn_s)
    finally:
        if run is not None:
            await asyncio.gather(*(c.close() for c in run.callers.values()), return_exceptions=True)
        await stop_all(children)


Reading = tuple[GcSnapshot, ProcSample, float]


def _variant_result(
    config: ChurnConfig,
    name: str,
    run: Run,
    empty: Reading,
    idle_start: Reading,
    idle_end: Reading,
    churn_end: Reading,
    ramp_s: float,
    churn_s: float,
) -> dict[str, Any]:
    n = config.calls
    (g0, p0, _), (g1, p1, t1), (g2, p2, t2), (g3, p3, _) = empty, idle_start, idle_end, churn_end

    def phase(a: GcSnapshot, b: GcSnapshot) -> dict[str, Any]:
        return {f"gen{g}": pause_summary(a, b, g) for g in GENERATIONS}

    tracked = per_call(g0.tracked, g1.tracked, n)
    frozen = per_call(g0.frozen, g1.frozen, n)
    return {
        "variant": name,
        "calls": n,
        "ramp": {"seconds": round(ramp_s, 2), "set_ups_per_s": round(n / ramp_s, 1)} | phase(g0, g1),
        "idle": {"seconds": round(t2 - t1, 2)} | phase(g1, g2),
        "churn": {
            "seconds": round(churn_s, 2),
            "hang_ups": run.ended,
            "set_ups": run.made - n,
            "late_turns": run.late,
            "failed_set_ups": run.failed_setups,
            "failed_hang_ups": run.failed_hangups,
            "first_error": run.first_error,
            "live_calls_after": g3.live_calls,
        }
        | phase(g2, g3),
        "per_call": {
            "tracked_objects": None if tracked is None else round(tracked, 1),
            "frozen_objects": None if frozen is None else round(frozen, 1),
            "threads": per_call(p0.threads, p1.threads, n),
            "rss_kb": round(per_call(p0.rss_kb, p1.rss_kb, n) or 0.0, 1),
            "idle_cpu_us_per_s": _round(cpu_us_per_call_s(p1, p2, t2 - t1, n), 2),
        },
        "relay": {
            "tracked_objects": {"empty": g0.tracked, "live": g1.tracked, "after_churn": g3.tracked},
            "frozen_objects": {"empty": g0.frozen, "live": g1.frozen, "after_churn": g3.frozen},
            "rss_kb": {
                "empty": p0.rss_kb,
                "live": p1.rss_kb,
                "after_idle": p2.rss_kb,
                "after_churn": p3.rss_kb,
            },
            "threads": {"empty": p0.threads, "live": p1.threads, "after_churn": p3.threads},
        },
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --- tables -----------------------------------------------------------------------------------------


def _pause_cell(summary: Mapping[str, Any]) -> str:
    if not summary["count"]:
        return "0"
    longest = summary["max_ms"]
    top = "-" if longest is None else f"{'' if summary['max_exact'] else '<='}{longest:.1f}"
    return f"{summary['count']}: {summary['p50_ms']:.2f} / {summary['p99_ms']:.2f} / {top}"


def pause_table(results: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="Collection pauses by phase: count: p50 / p99 / max ms (relay /metrics)")
    for column in ("relay", "phase", "seconds", "full (gen 2)", "gen 1", "gen 0", "full: total ms"):
        table.add_column(column, justify="left" if column in ("relay", "phase") else "right")
    for result in results:
        for phase in ("ramp", "idle", "churn"):
            p = result[phase]
            label = phase
            if phase == "churn":
                label = f"churn ({p['hang_ups']} ended, {p['set_ups']} set up)"
            table.add_row(
                result["variant"], label, f"{p['seconds']:.1f}", _pause_cell(p["gen2"]),
                _pause_cell(p["gen1"]), _pause_cell(p["gen0"]), f"{p['gen2']['total_ms']:.1f}",
            )  # fmt: skip
    return table


def per_call_table(results: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="What each live call costs the relay (idle calls, no media)")
    for column in (
        "relay",
        "calls",
        "tracked objects",
        "frozen objects",
        "threads",
        "RSS kB",
        "idle CPU us/s",
    ):
        table.add_column(column, justify="left" if column == "relay" else "right")
    for result in results:
        c = result["per_call"]
        table.add_row(
            result["variant"], str(result["calls"]), _num(c["tracked_objects"]), _num(c["frozen_objects"]),
            _num(c["threads"], 2), _num(c["rss_kb"]), _num(c["idle_cpu_us_per_s"]),
        )  # fmt: skip
    return table


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# --- entry points -----------------------------------------------------------------------------------


async def run_async(config: ChurnConfig, console: Console) -> dict[str, Any]:
    relay_cores, load_cores = split_cores(config.relay_core)
    info = machine_info(event_loop="uvloop (relay, echo inference); asyncio (the bench and its callers)")
    console.print(f"[bold]machine[/]: {machine_line(info)}")
    console.print(
        f"relay pinned to core(s) {sorted(relay_cores)}; callers (this process) and the echo inference on "
        f"core(s) {sorted(load_cores)}"
    )
    names = list(VARIANTS) if config.ab else [next(iter(VARIANTS))]
    results: list[dict[str, Any]] = []
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, load_cores)
    try:
        with tempfile.TemporaryDirectory(prefix="splitrelay-churn-") as tmp:
            for name in names:
                console.print(f"[bold]{name}[/]: {config.calls} calls, then {config.idle:g} s idle, then "
                              f"{config.duration:g} s of churn at {config.churn_per_s:g}/s")  # fmt: skip
                results.append(
                    await run_variant(config, name, VARIANTS[name], Path(tmp), (relay_cores, load_cores))
                )
    finally:
        os.sched_setaffinity(0, original)
    console.print(pause_table(results))
    console.print(per_call_table(results))
    return {
        "command": config.command(),
        "machine": info,
        "config": asdict(config) | {"relay_cores": sorted(relay_cores), "load_cores": sorted(load_cores)},
        "results": results,
    }


def run(config: ChurnConfig, *, json_output: bool = False) -> int:
    """0 when every variant ran; 1 when one could not (the error is printed)."""
    console = Console(stderr=json_output)
    if not console.is_terminal:
        console.width = 160
    try:
        result = asyncio.run(run_async(config, console))
    except BenchError as exc:
        console.print(f"[red]error[/]: {exc}")
        return 1
    if json_output:
        print(json.dumps(result, indent=2))
    return 0


def churn_command(
    calls: Annotated[int, typer.Option(help="Live calls kept through the run (1..5000).")] = 1000,
    churn_per_s: Annotated[
        float, typer.Option(help="Calls ended and new ones set up per second in the churn window (0..100).")
    ] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds of churn (1..3600).")] = 60.0,
    idle: Annotated[float, typer.Option(help="Seconds of the idle window before the churn (1..600).")] = 10.0,
    relay_core: Annotated[int, typer.Option(help="Core the relay is pinned to.")] = 0,
    setup_concurrency: Annotated[
        int, typer.Option(help="Set-ups in flight at once in the ramp (1..64).")
    ] = 16,
    setup_timeout: Annotated[float, typer.Option(help="Seconds one call may take to connect.")] = 30.0,
    ab: Annotated[
        bool, typer.Option("--ab", help="Run the relay twice, back to back: calls frozen, then not frozen.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON on stdout (tables go to stderr).")
    ] = False,
) -> None:
    """The relay's garbage-collection pauses, objects, threads and memory per call while calls come and go."""
    try:
        config = ChurnConfig(
            calls, churn_per_s, duration, idle, relay_core, setup_concurrency, setup_timeout, ab
        )
        split_cores(relay_core)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run(config, json_output=json_output))
