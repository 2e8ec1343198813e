"""`splitrelay bench failover`: kill, drain and restart relays and agents under live calls; what callers hear.

A local stack with two relays and metronome agents (bench/metronome.py: one tagged frame every 20 ms,
so silence is never a pause) carries ``--calls`` live WebRTC calls (devtools/live_caller.py). Faults are
applied one at a time, round-robin over ``--kinds``:

- ``relay-kill``: SIGKILL the relay holding the most calls; the edge moves its calls (heartbeats stop,
  another relay attaches, tracks/update switches the caller); the relay is then restarted.
- ``relay-drain``: `relay drain` on the relay holding the most calls: its calls are handed over
  make-before-break; then undrain.
- ``agent-kill``: SIGKILL the agent, then restart it on its port; the relay retries the call on the
  other agent, or ends it (a call lost).

Per fault and call on the faulted part, measured at the caller from the metronome's ticks: the gap (the
longest time between two frames from the fault until the call settles), the ticks lost and the ticks
heard twice (duplicated audio), and whether the call was lost. The baseline is the same measure over
the same calls in windows with no fault, in the same run: one before the first fault, and after each
fault the window that follows the judged one (as long, under the same load). At the end every call
hangs up and the stack is checked for leaks: calls on any relay, emulator sessions and tracks, and
sockets held by the processes (bench/calls_leaks.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Final

import typer

from splitrelay.bench.stats import percentile

KINDS: Final = ("relay-kill", "relay-drain", "agent-kill")
JUDGE_S: Final = 3.0
"""A fault is judged on the window from the fault to this many seconds after it (recovery takes ~1 s)."""
SETTLE_S: Final = 2 * JUDGE_S
"""The window after that, as long and under the same load, is a no-fault baseline window."""
BASELINE_S: Final = JUDGE_S
FRAME_MS: Final = 20.0


@dataclass
class CallTrace:
    """The metronome ticks one caller heard, with their arrival times (perf_counter ns)."""

    arrivals: list[tuple[int, int]] = field(default_factory=list)  # (arrival ns, tick)
    streams: list[int] = field(default_factory=list)  # the stream of each arrival
    agent_id: int | None = None  # the agent the latest frame came from

    def on_packet(self, packet: Any) -> None:
        from splitrelay.bench.metronome import read_tag

        tag = read_tag(packet.payload)
        if tag is not None:
            arrived = packet.arrival_ns or time.perf_counter_ns()
            self.arrivals.append((arrived, tag.tick))
            self.streams.append(tag.stream)
            self.agent_id = tag.agent_id

    def window(self, start_ns: int, end_ns: int) -> Window:
        """Gap, lost ticks and duplicated frames of what arrived in [start, end).

        Duplicated: a frame of an earlier stream after a later stream's first frame (the old leg still
        heard once the new one plays). A tick heard twice across a switch is not duplicated audio: two
        legs sent their own frame for the same 20 ms slot, and the caller hears one after the other."""
        inside_at = [i for i, (at, _) in enumerate(self.arrivals) if start_ns <= at < end_ns]
        before_at = [i for i, (at, _) in enumerate(self.arrivals) if at < start_ns][-1:]
        inside = [self.arrivals[i] for i in inside_at]
        frames = [self.arrivals[i] for i in before_at] + inside
        streams = [self.streams[i] for i in before_at + inside_at]
        gap = max(((b[0] - a[0]) / 1e6 for a, b in itertools.pairwise(frames)), default=None)
        if frames and end_ns - frames[-1][0] > (gap or 0) * 1e6:
            gap = (end_ns - frames[-1][0]) / 1e6  # silent to the end of the window
        ticks = [tick for _, tick in frames]  # the last one before the window anchors the count
        lost = (max(ticks) - min(ticks) + 1 - len(set(ticks))) if ticks else 0
        order: list[int] = []  # streams in the order they began
        duplicated = 0
        for stream in streams:
            if stream not in order:
                order.append(stream)
            elif stream != order[-1]:
                duplicated += 1
        return Window(gap_ms=gap, lost=lost, duplicated=duplicated, frames=len(inside))


@dataclass(frozen=True)
class Window:
    gap_ms: float | None
    lost: int
    duplicated: int
    frames: int


@dataclass
class KindResult:
    kind: str
    faults: int = 0
    calls_hit: int = 0
    calls_lost: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    lost_ticks: int = 0
    duplicated_frames: int = 0
    move_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "faults": self.faults,
            "calls_hit": self.calls_hit,
            "calls_lost": self.calls_lost,
            "gap_p50_ms": _round(percentile(self.gaps_ms, 50)),
            "gap_p99_ms": _round(percentile(self.gaps_ms, 99)),
            "gap_max_ms": _round(max(self.gaps_ms, default=None)),
            "lost_ticks": self.lost_ticks,
            "duplicated_frames": self.duplicated_frames,
            "edge_move_p50_s": _round(percentile(self.move_s, 50), 3),
            "notes": self.notes[:10],
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class FailoverReport:
    machine: dict[str, Any]
    calls: int
    baseline: dict[str, Any]
    kinds: list[dict[str, Any]]
    leaks: dict[str, Any]
    retired: int = 0
    """Calls hung up and replaced after 15 moves (the edge closes a call moved more than 16 times)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FailoverBench:
    """One run: a stack, live calls, the faults, the leak check."""

    def __init__(self, calls: int, faults: int, kinds: Sequence[str], progress: Any = None) -> None:
        self.calls_wanted = calls
        self.faults = faults
        self.kinds = list(kinds)
        self.progress = progress
        self.results = {kind: KindResult(kind) for kind in self.kinds}
        self.base_gaps: list[float] = []
        self.retired = 0  # calls hung up (and replaced) before reaching the edge's move limit

    async def run(self) -> FailoverReport:
        import httpx

        from splitrelay.bench.calls_leaks import StackWatch
        from splitrelay.bench.support import machine_info
        from splitrelay.devtools.stack import Stack, StackConfig

        config = StackConfig(
            relays=2,
            agent="metronome",
            agents=2 if "agent-kill" in self.kinds else 1,
            sfu_reconnect_window_s=1.0,
        )
        stack = Stack(config)
        info = await stack.start()
        self.stack, self.info = stack, info
        callers: dict[str, tuple[Any, CallTrace]] = {}
        leaks: dict[str, Any] = {}
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                self.http = http
                watch = StackWatch(info)
                watch.take_baseline()
                for _ in range(self.calls_wanted):
                    await self._dial(callers)
                await asyncio.sleep(1.0)
                base_start = time.perf_counter_ns()
                await asyncio.sleep(BASELINE_S)
                base_end = time.perf_counter_ns()
                baseline = [trace.window(base_start, base_end) for _, trace in callers.values()]
                self.base_gaps = [w.gap_ms for w in baseline if w.gap_ms is not None]
                for index in range(self.faults):
                    kind = self.kinds[index % len(self.kinds)]
                    await self._fault(kind, callers)
                    if self.progress is not None:
                        self.progress(index + 1, kind)
                    await self._retire_well_travelled(callers)
                    while len(callers) < self.calls_wanted:  # lost and retired calls are replaced
                        await self._dial(callers)
                for caller, _ in list(callers.values()):
                    await caller.close()
                callers.clear()
                leaks = await self._leaks(watch)
        finally:
            for caller, _ in callers.values():
                await caller.close()
            report = await stack.stop()
            leaks["leftover_processes"] = len(report.leftovers)
        return FailoverReport(
            machine=machine_info(),
            calls=self.calls_wanted,
            baseline={
                "windows": len(self.base_gaps),
                "gap_p50_ms": _round(percentile(self.base_gaps, 50)),
                "gap_p99_ms": _round(percentile(self.base_gaps, 99)),
            },
            kinds=[result.summary() for result in self.results.values()],
            leaks=leaks,
            retired=self.retired,
        )

    async def _retire_well_travelled(self, callers: dict[str, tuple[Any, CallTrace]]) -> None:
        """Hang up calls one move short of the edge's limit (MAX_CONTINUATIONS): a benchmark moves the
        same calls far more often than a deploy does, and a call past the limit is closed by design."""
        from splitrelay.contract.control import MAX_CONTINUATIONS

        for call_id, (caller, _) in list(callers.items()):
            if int((await caller.record()).get("moves", 0)) >= MAX_CONTINUATIONS - 1:
                await caller.close()
                del callers[call_id]
                self.retired += 1

    async def _dial(self, callers: dict[str, tuple[Any, CallTrace]]) -> None:
        from splitrelay.devtools.live_caller import dial

        trace = CallTrace()
        caller = await dial(self.http, self.info, subject="bench-failover", on_packet=trace.on_packet)
        callers[caller.call_id] = (caller, trace)

    async def _relays_of(self, callers: dict[str, tuple[Any, CallTrace]]) -> dict[str, str]:
        """call id → the relay id the edge's record names."""
        out: dict[str, str] = {}
        for call_id, (caller, _) in callers.items():
            record = await caller.record()
            if record["state"] == "connected":
                out[call_id] = str(record["relay"]["id"])
        return out

    async def _fault(self, kind: str, callers: dict[str, tuple[Any, CallTrace]]) -> None:
        result = self.results[kind]
        relays = await self._relays_of(callers)
        if kind == "agent-kill":  # the metronome agent most calls hear (its id is in every frame)
            heard = [callers[call_id][1].agent_id for call_id in relays]
            agent_id = max(sorted({a for a in heard if a is not None}), key=heard.count, default=0)
            victim_name = "agent" if agent_id == 0 else f"agent-{agent_id}"
            hit = [call_id for call_id in relays if callers[call_id][1].agent_id == agent_id]
        else:
            counts: dict[str, int] = {}
            for relay_id in relays.values():
                counts[relay_id] = counts.get(relay_id, 0) + 1
            victim_relay = max(sorted(counts), key=lambda r: counts[r]) if counts else "relay-0"
            victim_name = "relay" if victim_relay == "relay-0" else f"relay-{victim_relay.rsplit('-', 1)[1]}"
            hit = [call_id for call_id, relay_id in relays.items() if relay_id == victim_relay]
        component = next(c for c in self.stack.components if c.name == victim_name)
        started_ns = time.perf_counter_ns()
        if kind == "relay-drain":
            url = str(component.ready["url"])
            await self._signed(url, "POST", "/v1/drain")
        else:
            os.kill(component.process.pid, signal.SIGKILL)
        result.faults += 1
        result.calls_hit += len(hit)
        moves = await asyncio.gather(*(self._follow(callers[c][0], relays[c], kind) for c in hit))
        await asyncio.sleep(max(0.0, SETTLE_S - (time.perf_counter_ns() - started_ns) / 1e9))
        for call_id, moved in zip(hit, moves, strict=True):
            caller, trace = callers[call_id]
            record = await caller.record()
            if record["state"] != "connected":
                result.calls_lost += 1
                tried = "; ".join(record.get("relay_attempts") or [])
                result.notes.append(f"{call_id}: {record.get('close_reason')} [{tried}]")
                await caller.close()
                del callers[call_id]
                continue
            if caller.renegotiated:
                result.notes.append(f"{call_id}: the caller renegotiated")
            judged_ns = started_ns + int(JUDGE_S * 1e9)
            window = trace.window(started_ns, judged_ns)
            quiet = trace.window(judged_ns, judged_ns + int(JUDGE_S * 1e9))  # after recovery: baseline
            if quiet.gap_ms is not None:
                self.base_gaps.append(quiet.gap_ms)
            if window.gap_ms is not None:
                result.gaps_ms.append(window.gap_ms)
            result.lost_ticks += window.lost
            result.duplicated_frames += window.duplicated
            if moved is not None:
                result.move_s.append(moved)
        if kind == "relay-drain":
            await self._signed(str(component.ready["url"]), "POST", "/v1/undrain")
        else:
            await self.stack.restart(victim_name)
            await asyncio.sleep(1.0)  # the restarted relay's first beats reach the edge

    async def _follow(self, caller: Any, relay_id: str, kind: str) -> float | None:
        """Seconds until the edge's record shows the call on another relay (relay faults), or None."""
        if kind == "agent-kill":
            return None
        try:
            _, waited = await caller.wait_moved(relay_id, SETTLE_S)
        except Exception:  # closed, or not moved in time: judged from the record afterwards
            return None
        return float(waited)

    async def _signed(self, url: str, method: str, path: str) -> None:
        from splitrelay.devtools.call import RelayAccess, RelayInspector

        access = RelayAccess(url, self.info.relay_signing_key.encode())
        await RelayInspector(self.http, access).request(f"{method} {path}", method, path)

    async def _leaks(self, watch: Any) -> dict[str, Any]:
        from splitrelay.bench.calls_leaks import EMULATOR_KEYS, ProcessSockets
        from splitrelay.devtools.call import RelayAccess, RelayInspector

        # Restarted processes have new PIDs: their baseline is what they hold with no call, now.
        watch.processes = [ProcessSockets(c.name, c.process.pid) for c in self.stack.components]
        for process in watch.processes:
            process.take_baseline()
        report = await watch.settle(30.0)
        relay_calls = 0
        for url in self.info.relay_urls:
            response = await RelayInspector(
                self.http, RelayAccess(url, self.info.relay_signing_key.encode())
            ).request("GET relay /v1/calls", "GET", "/v1/calls")
            relay_calls += len(response.json()["calls"])
        emulator = report.emulator or {}
        return {
            "relay_calls": relay_calls,
            "emulator": {k: emulator.get(k) for k in EMULATOR_KEYS},
            "leaked_sockets": report.leaked_socket_count,
            "errors": report.errors,
            "settle_s": round(report.settle_s, 2),
        }


def markdown(report: FailoverReport) -> str:
    def ms(value: object) -> str:
        return "-" if value is None else f"{value}"

    lines = [
        f"{report.calls} live calls ({report.retired} retired and replaced after 15 moves); "
        "baseline (no fault, same calls, same run): longest gap per call "
        f"p50 {ms(report.baseline['gap_p50_ms'])} ms, p99 {ms(report.baseline['gap_p99_ms'])} ms",
        "",
        "| fault | faults | calls hit | calls lost | gap p50 / p99 / max ms | gap p50 / baseline p50 "
        "| ticks lost | frames duplicated | edge moved the call, p50 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = report.baseline["gap_p50_ms"]
    for k in report.kinds:
        ratio = f"{k['gap_p50_ms'] / base:.1f}x" if k["gap_p50_ms"] is not None and base else "-"
        lines.append(
            f"| {k['kind']} | {k['faults']} | {k['calls_hit']} | {k['calls_lost']} "
            f"| {ms(k['gap_p50_ms'])} / {ms(k['gap_p99_ms'])} / {ms(k['gap_max_ms'])} | {ratio} "
            f"| {k['lost_ticks']} | {k['duplicated_frames']} | {ms(k['edge_move_p50_s'])} |"
        )
    leaks = report.leaks
    lines += [
        "",
        f"Leaks after hang-up: relay calls {leaks.get('relay_calls')}, emulator {leaks.get('emulator')}, "
        f"sockets {leaks.get('leaked_sockets')}, leftover processes {leaks.get('leftover_processes')}"
        + (f", errors {leaks['errors']}" if leaks.get("errors") else ""),
    ]
    return "\n".join(lines)


def command(
    calls: Annotated[int, typer.Option(help="Live calls during the faults (1..50).")] = 4,
    faults: Annotated[int, typer.Option(help="Faults in all, round-robin over --kinds (1..500).")] = 6,
    kinds: Annotated[
        str, typer.Option(help=f"Comma-separated fault kinds: {', '.join(KINDS)}.")
    ] = "relay-kill,relay-drain",
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Kill, drain and restart relays (and agents) during live calls: the audio gap callers hear per
    fault kind (p50/p99 against a no-fault baseline in the same run), calls lost, and leaks."""
    from rich.progress import Progress

    from splitrelay.bench.support import machine_line

    if not 1 <= calls <= 50:
        raise typer.BadParameter("--calls: must be 1..50")
    if not 1 <= faults <= 500:
        raise typer.BadParameter("--faults: must be 1..500")
    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    if not chosen or any(k not in KINDS for k in chosen):
        raise typer.BadParameter(f"--kinds: comma-separated, each one of {', '.join(KINDS)}; got {kinds!r}")
    with Progress(transient=True, disable=json_output) as progress:
        task = progress.add_task("faults", total=faults)

        def step(done: int, kind: str) -> None:
            progress.update(task, completed=done, description=f"faults (last: {kind})")

        report = asyncio.run(FailoverBench(calls, faults, chosen, step).run())
    if json_output:
        typer.echo(json.dumps(report.to_json()))
        return
    typer.echo(machine_line(report.machine))
    typer.echo(markdown(report))
