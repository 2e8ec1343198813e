"""`splitrelay bench track-switch`: the audio gap at the caller when tracks/update moves it to another track.

Relay failover's SFU step, alone: the emulator runs as its own process; a caller (sendrecv mic) plays
relay 1's voice, and relay 2 also publishes one. Both relays send a 20 ms Opus-sized frame every 20 ms,
each payload tagged with its source. Every ``--interval`` seconds the benchmark sends the edge's own
tracks/update (``build_switch_track``, the contract's bytes) on the caller's session, alternating
between the two relays. Two modes:

- ``drain`` (make-before-break): both relays keep sending; the gap is the switch alone.
- ``kill``: the current relay falls silent first, then the update is sent; the gap is the update's
  round trip plus frame alignment (what failover adds after the edge has learnt of the death).

The gap is measured at the caller: arrival of the new source's first packet minus arrival of the old
source's last. The baseline, from the same packets, is the inter-arrival time of consecutive packets of
one source with no switch between them. Also counted: sequence numbers that do not step by one at a
switch, and duplicated audio (old-source packets after the new source's first).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from typing import Annotated

import typer

from splitrelay.bench.stats import percentile

FRAME_S = 0.02
FRAME_BYTES = 80
MODES = ("drain", "kill")


@dataclass(frozen=True)
class Result:
    mode: str
    switches: int
    gap_p50_ms: float | None
    gap_p99_ms: float | None
    gap_max_ms: float | None
    baseline_p50_ms: float | None
    baseline_p99_ms: float | None
    update_p50_ms: float | None
    update_p99_ms: float | None
    sequence_breaks: int
    duplicated: int
    missed: int
    """Switches whose new source never arrived before the next switch."""


@dataclass(frozen=True)
class Arrival:
    ns: int
    source: int
    sequence: int


def analyse(
    mode: str, arrivals: list[Arrival], switch_at: list[tuple[int, int]], update_ms: list[float]
) -> Result:
    """Gaps and counts from the caller's arrivals (in order) and the switches (send time, new source)."""
    gaps: list[float] = []
    baseline: list[float] = []
    breaks = duplicated = 0
    index = -1  # the last switch sent before the packet at hand
    expected = arrivals[0].source if arrivals else 0
    arrived_new = True
    last_old: Arrival | None = None
    previous: Arrival | None = None
    for packet in arrivals:
        while index + 1 < len(switch_at) and switch_at[index + 1][0] <= packet.ns:
            index += 1
            expected, arrived_new = switch_at[index][1], False
        if packet.source != expected:
            if arrived_new:
                duplicated += 1  # the old source after the new one's first packet
            last_old = packet
        elif not arrived_new:
            arrived_new = True
            if last_old is not None:
                gaps.append((packet.ns - last_old.ns) / 1e6)
                if (packet.sequence - last_old.sequence) & 0xFFFF != 1:
                    breaks += 1
        elif previous is not None and previous.source == packet.source:
            baseline.append((packet.ns - previous.ns) / 1e6)
        if packet.source == expected:
            last_old = packet  # the source a later switch leaves
        previous = packet
    return Result(
        mode=mode,
        switches=len(switch_at),
        gap_p50_ms=percentile(gaps, 50),
        gap_p99_ms=percentile(gaps, 99),
        gap_max_ms=max(gaps) if gaps else None,
        baseline_p50_ms=percentile(baseline, 50),
        baseline_p99_ms=percentile(baseline, 99),
        update_p50_ms=percentile(update_ms, 50),
        update_p99_ms=percentile(update_ms, 99),
        sequence_breaks=breaks,
        duplicated=duplicated,
        missed=len(switch_at) - len(gaps),
    )


async def run_mode(mode: str, switches: int, interval: float) -> Result:
    import httpx

    from splitrelay.contract.safety import Secret
    from splitrelay.contract.sfu_http import SfuApp, build_switch_track
    from splitrelay.emulator.bench import EmulatorProcess
    from splitrelay.emulator.clients import Participant
    from splitrelay.relay.media.rtp import RtpPacket
    from splitrelay.relay.sfu_client import SfuClient

    emulator = EmulatorProcess()
    await emulator.start()
    arrivals: list[Arrival] = []

    def arrived(packet: RtpPacket) -> None:
        arrivals.append(Arrival(time.perf_counter_ns(), packet.payload[0], packet.sequence))

    participants: list[Participant] = []
    try:
        async with SfuClient(emulator.base_url, emulator.app_id, emulator.secret) as sfu:
            caller = Participant(sfu, on_packet=arrived)
            relays = [Participant(sfu), Participant(sfu)]
            participants = [caller, *relays]
            for participant in participants:
                await participant.open()
            await caller.publish("mic", bidirectional=True)
            voices = [await relay.publish("agent-voice") for relay in relays]
            await caller.pull(relays[0].session_id, "agent-voice", mid="#mic")
            for participant in participants:
                await participant.wait_connected(within=30)
            for _ in range(500):
                if all(p.peer.fast_path is not None for p in participants):
                    break
                await asyncio.sleep(0.02)
            streams = [relay.outbound(mid) for relay, mid in zip(relays, voices, strict=True)]
            sending = [True, True]
            stop = asyncio.Event()

            async def paced() -> None:
                loop = asyncio.get_running_loop()
                start = loop.time()
                for i in range(int((switches + 2) * interval / FRAME_S) + 50):
                    if stop.is_set():
                        return
                    for k, stream in enumerate(streams):
                        if sending[k]:
                            frame = bytes([k + 1]) + i.to_bytes(4, "big") + bytes(FRAME_BYTES - 5)
                            stream.send(frame, (960 * i) & 0xFFFFFFFF)
                    await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_S - loop.time()))

            sender = asyncio.create_task(paced())
            app = SfuApp(emulator.app_id, Secret(emulator.secret))
            update_ms: list[float] = []
            switch_at: list[tuple[int, int]] = []
            try:
                await asyncio.sleep(interval)
                arrivals.clear()
                await asyncio.sleep(0.1)  # a few of relay 1's packets before the first switch
                async with httpx.AsyncClient(timeout=10.0) as http:
                    for n in range(switches):
                        old, new = n % 2, (n + 1) % 2
                        if mode == "kill":
                            sending[old] = False
                        request, parse = build_switch_track(
                            app,
                            caller.session_id,
                            mid="#mic",
                            to_session_id=relays[new].session_id,
                            to_track_name="agent-voice",
                        )
                        switch_at.append((time.perf_counter_ns(), new + 1))
                        started = time.perf_counter()
                        reply = await http.request(
                            request.method,
                            request.url(emulator.base_url),
                            headers=request.header_dict(),
                            content=request.body_bytes,
                        )
                        parse(reply.status_code, reply.content)
                        update_ms.append((time.perf_counter() - started) * 1000)
                        await asyncio.sleep(interval)
                        sending[old] = True
            finally:
                stop.set()
                await sender
            return analyse(mode, list(arrivals), switch_at, update_ms)
    finally:
        for participant in participants:
            await participant.close()
        await emulator.stop()


def markdown(results: list[Result]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        "| mode | switches | gap p50 / p99 / max ms | baseline inter-arrival p50 / p99 ms "
        "| gap p50 / baseline p50 | tracks/update p50 / p99 ms | sequence breaks | duplicated | missed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = (
            f"{r.gap_p50_ms / r.baseline_p50_ms:.2f}"
            if r.gap_p50_ms is not None and r.baseline_p50_ms
            else "-"
        )
        lines.append(
            f"| {r.mode} | {r.switches} | {ms(r.gap_p50_ms)} / {ms(r.gap_p99_ms)} / {ms(r.gap_max_ms)} "
            f"| {ms(r.baseline_p50_ms)} / {ms(r.baseline_p99_ms)} | {ratio} "
            f"| {ms(r.update_p50_ms)} / {ms(r.update_p99_ms)} | {r.sequence_breaks} | {r.duplicated} "
            f"| {r.missed} |"
        )
    return "\n".join(lines)


def command(
    switches: Annotated[int, typer.Option(help="Switches per mode (2..2000).")] = 100,
    interval: Annotated[float, typer.Option(help="Seconds between switches (0.1..5).")] = 0.3,
    modes: Annotated[str, typer.Option(help="Comma-separated: drain, kill.")] = "drain,kill",
    json_output: Annotated[bool, typer.Option("--json", help="Print results as JSON lines.")] = False,
) -> None:
    """Audio gap at the caller across a tracks/update switch (p50/p99), against one source's inter-arrival."""
    from splitrelay.emulator.bench import machine

    if not 2 <= switches <= 2000:
        raise typer.BadParameter("--switches: must be between 2 and 2000")
    if not 0.1 <= interval <= 5.0:
        raise typer.BadParameter("--interval: must be between 0.1 and 5 seconds")
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen or any(m not in MODES for m in chosen):
        raise typer.BadParameter(f"--modes: comma-separated, each one of {', '.join(MODES)}")
    results = [asyncio.run(run_mode(mode, switches, interval)) for mode in chosen]
    if json_output:
        for result in results:
            typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(machine())
        typer.echo(markdown(results))
