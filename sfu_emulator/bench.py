"""`splitrelay bench emulator`: forwarding throughput and dwell of the emulator, against a bare UDP forwarder.

The emulator runs as its own process (``splitrelay emulator serve --json``) so its CPU time is its own
(each forwarder process reports its ``time.process_time()``); publishers and subscribers are aiortc
participants in this process on loopback, 50 packets/s per publisher (20 ms Opus). Two shapes: one
publisher to N subscribers, and N one-to-one pairs. Dwell (arrival at the emulator to the subscriber's
send) comes from the emulator's own /_emulator/state. The baseline is a bare asyncio (uvloop) UDP
forwarder process, no SRTP and no WebRTC, fed the same packet sizes and rates in the same run: the
ratio says what SRTP, routing and WebRTC upkeep cost.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from splitrelay.bench.stats import percentile
from splitrelay.relay.child import ChildProcess, cli_command, json_ready

PACKET_INTERVAL_S = 0.02
OPUS_FRAME_BYTES = 80
RTP_HEADER = 12


@dataclass(frozen=True)
class Result:
    forwarder: str
    shape: str
    n: int
    seconds: float
    packets_forwarded: int
    cpu_s: float
    pps_per_core: float
    dwell_p50_ms: float | None
    dwell_p99_ms: float | None
    loss: float
    """Share of the packets that should have been forwarded and were not received."""


# --- the emulator under test -----------------------------------------------------------------------


class EmulatorProcess:
    """``splitrelay emulator serve --json --port 0`` with a throwaway app secret."""

    def __init__(self) -> None:
        self.secret = secrets.token_hex(16)
        self.app_id = "bench"
        self.process: ChildProcess | None = None
        self.base_url = ""
        self._dir = tempfile.TemporaryDirectory(prefix="splitrelay-bench-")

    async def start(self) -> None:
        config = Path(self._dir.name) / "emulator.toml"
        config.write_text(
            f'[apps]\n"{self.app_id}" = "{self.secret}"\n[timers]\ntrack_idle_timeout = 600\n'
            "unconnected_session_ttl = 600\n[limits]\napi_calls_per_second = 10000\n"
        )
        config.chmod(0o600)
        self.process = await ChildProcess.start(
            "emulator",
            cli_command("emulator", "serve", "--config", str(config), "--port", "0", "--json"),
        )
        self.base_url = str((await self.process.wait_ready(json_ready(None), within=30))["base_url"])

    async def state(self, *, reset: bool = False) -> dict[str, Any]:
        import httpx

        url = self.base_url.removesuffix("/v1") + "/_emulator/state" + ("?reset=true" if reset else "")
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.get(url, headers={"Authorization": f"Bearer {self.secret}"})
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        return doc

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop(grace=20)
        self._dir.cleanup()


async def _emulator_run(
    emulator: EmulatorProcess, shape: str, n: int, seconds: float, frame: bytes
) -> Result:
    from splitrelay.emulator.clients import Participant
    from splitrelay.relay.sfu_client import SfuClient

    assert emulator.process is not None
    async with SfuClient(emulator.base_url, emulator.app_id, emulator.secret) as sfu:
        participants: list[Participant] = []
        received = [0]

        def count(_packet: object) -> None:
            received[0] += 1

        def participant() -> Participant:
            p = Participant(sfu, on_packet=count)
            participants.append(p)
            return p

        try:
            publishers: list[tuple[Participant, str]] = []
            if shape == "fan-out":
                groups = [(participant(), [participant() for _ in range(n)])]
            else:
                groups = [(participant(), [participant()]) for _ in range(n)]
            for publisher, subscribers in groups:
                await publisher.open()
                mid = await publisher.publish("mic")
                publishers.append((publisher, mid))
                for subscriber in subscribers:
                    await subscriber.open()
                    await subscriber.pull(publisher.session_id, "mic")
            for p in participants:
                await p.wait_connected(within=30)
            for _ in range(500):
                if all(p.peer.fast_path is not None for p in participants):
                    break
                await asyncio.sleep(0.02)
            expected_per_send = sum(len(subs) for _, subs in groups)
            cpu0 = (await emulator.state(reset=True))["process_cpu_s"]
            received[0] = 0
            sends = await _paced([p.outbound(mid) for p, mid in publishers], frame, seconds)
            await asyncio.sleep(0.2)  # let the last packets land
            after = await emulator.state()
            cpu = after["process_cpu_s"] - cpu0
            forwarding = after["forwarding"]
        finally:
            for p in participants:
                await p.close()
    expected = sends * expected_per_send
    forwarded = int(forwarding["packets_forwarded"])
    return Result(
        forwarder="emulator",
        shape=shape,
        n=n,
        seconds=seconds,
        packets_forwarded=forwarded,
        cpu_s=cpu,
        pps_per_core=forwarded / cpu if cpu > 0 else float("inf"),
        dwell_p50_ms=forwarding["dwell_p50_ms"],
        dwell_p99_ms=forwarding["dwell_p99_ms"],
        loss=max(0.0, 1 - received[0] / expected) if expected else 0.0,
    )


async def _paced(streams: list[Any], frame: bytes, seconds: float) -> int:
    """Send one frame on every stream each 20 ms for ``seconds``; returns sends per stream."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    rounds = int(seconds / PACKET_INTERVAL_S)
    for i in range(rounds):
        for stream in streams:
            stream.send(frame, (960 * i) & 0xFFFFFFFF)
        await asyncio.sleep(max(0.0, start + (i + 1) * PACKET_INTERVAL_S - loop.time()))
    return rounds


# --- the baseline: a bare UDP forwarder -------------------------------------------------------------


def bare_forwarder_main() -> None:
    """Run in a child process: forward each datagram to the destinations its first byte selects.

    ``splitrelay bench bare-forwarder`` (hidden). Prints a JSON ready line with its port; then reads on
    stdin one JSON line ``{"routes": [[[host, port], ...], ...]}``, "reset", and on "report" (or EOF)
    prints a JSON line with what it forwarded, its CPU and dwell percentiles (scripts/bench/stats.py).
    ``routes[k]`` are the destinations of datagrams whose first payload byte is k (a stand-in for the
    emulator's SSRC lookup).
    """
    import uvloop

    uvloop.run(_bare_forwarder())


async def _bare_forwarder() -> None:
    loop = asyncio.get_running_loop()
    dwell: list[int] = []
    routes: list[list[tuple[str, int]]] = []

    class Forward(asyncio.DatagramProtocol):
        transport: asyncio.DatagramTransport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            arrival = time.perf_counter_ns()
            for destination in routes[data[RTP_HEADER] % len(routes)]:
                self.transport.sendto(data, destination)
                if len(dwell) < 1_000_000:
                    dwell.append(time.perf_counter_ns() - arrival)

    transport, _ = await loop.create_datagram_endpoint(Forward, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    sys.stdout.write(json.dumps({"event": "ready", "port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    routes.extend([tuple(d) for d in route] for route in json.loads(await reader.readline())["routes"])
    await reader.readline()  # "reset"
    dwell.clear()
    cpu0 = time.process_time()
    await reader.readline()  # EOF or "report"
    cpu = time.process_time() - cpu0
    p50, p99 = (None if p is None else p / 1e6 for p in (percentile(dwell, 50), percentile(dwell, 99)))
    sys.stdout.write(json.dumps({"forwarded": len(dwell), "cpu_s": cpu, "p50": p50, "p99": p99}) + "\n")
    sys.stdout.flush()
    transport.close()


async def _bare_run(shape: str, n: int, seconds: float, frame: bytes) -> Result:
    loop = asyncio.get_running_loop()
    received = [0]

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received[0] += 1

    publishers = 1 if shape == "fan-out" else n
    per_publisher = n if shape == "fan-out" else 1
    sinks = [
        await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        for _ in range(publishers * per_publisher)
    ]
    addresses = [t.get_extra_info("sockname")[:2] for t, _ in sinks]
    routes = [addresses[k * per_publisher : (k + 1) * per_publisher] for k in range(publishers)]
    child = await ChildProcess.start("bare forwarder", cli_command("bench", "bare-forwarder"), stdin=True)
    process = child.process
    assert process.stdin is not None
    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        port = int((await child.wait_ready(within=30))["port"])
        process.stdin.write((json.dumps({"routes": routes}) + "\n").encode())
        await process.stdin.drain()
        await asyncio.sleep(0.2)
        process.stdin.write(b"reset\n")
        await process.stdin.drain()
        await asyncio.sleep(0.05)
        packets = [
            bytes(RTP_HEADER) + bytes([k % 256]) + frame[1:] for k in range(publishers)
        ]  # header + payload, as big as the SRTP packet minus its tag

        class Stream:
            def __init__(self, packet: bytes) -> None:
                self.packet = packet

            def send(self, _frame: bytes, _timestamp: int) -> None:
                sender.sendto(self.packet, ("127.0.0.1", port))

        sends = await _paced([Stream(p) for p in packets], frame, seconds)
        await asyncio.sleep(0.2)
        process.stdin.write(b"report\n")
        await process.stdin.drain()
        report = json.loads(await child.read_line(30))
        cpu = float(report["cpu_s"])
    finally:
        sender.close()
        for transport, _ in sinks:
            transport.close()
        if child.alive:
            process.stdin.close()  # EOF: it reports (if it has not) and exits
            await child.wait(20)
        await child.stop(grace=5)
    expected = sends * publishers * per_publisher
    return Result(
        forwarder="bare UDP",
        shape=shape,
        n=n,
        seconds=seconds,
        packets_forwarded=int(report["forwarded"]),
        cpu_s=cpu,
        pps_per_core=report["forwarded"] / cpu if cpu > 0 else float("inf"),
        dwell_p50_ms=report["p50"],
        dwell_p99_ms=report["p99"],
        loss=max(0.0, 1 - received[0] / expected) if expected else 0.0,
    )


# --- the run and its report ------------------------------------------------------------------------


async def run(fanouts: list[int], pairs: list[int], seconds: float) -> list[Result]:
    # The forwarders never look inside the payload; 80 bytes is a 20 ms Opus frame at 32 kbit/s.
    frame = secrets.token_bytes(OPUS_FRAME_BYTES)
    results: list[Result] = []
    emulator = EmulatorProcess()
    await emulator.start()
    try:
        for shape, sizes in (("fan-out", fanouts), ("pairs", pairs)):
            for n in sizes:
                results.append(await _emulator_run(emulator, shape, n, seconds, frame))
                results.append(await _bare_run(shape, n, seconds, frame))
    finally:
        await emulator.stop()
    return results


def markdown(results: list[Result]) -> str:
    """The table for docs/benchmarks.md: each emulator row with its bare-forwarder baseline ratio."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "| shape | N | forwarder | packets/s forwarded | CPU s | packets/s per core "
        "| dwell p50 / p99 ms | loss | ratio to bare |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = {(r.shape, r.n): r for r in results if r.forwarder == "bare UDP"}
    for r in results:
        base = baseline.get((r.shape, r.n))
        ratio = (
            f"{r.pps_per_core / base.pps_per_core:.2f}"
            if r.forwarder == "emulator" and base is not None and base.pps_per_core not in (0, float("inf"))
            else ""
        )
        lines.append(
            f"| {r.shape} | {r.n} | {r.forwarder} | {r.packets_forwarded / r.seconds:,.0f} | {r.cpu_s:.2f} | "
            f"{r.pps_per_core:,.0f} | {ms(r.dwell_p50_ms)} / {ms(r.dwell_p99_ms)} | {r.loss:.1%} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The line that says where the numbers come from (the one machine block of every benchmark)."""
    from splitrelay.bench.support import machine_info, machine_line

    info = machine_info(packages=("aiortc", "aioice", "uvloop"), event_loop="uvloop (emulator and baseline)")
    return f"machine: {machine_line(info)}"


def _sizes(text: str, option: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option}: comma-separated integers, e.g. 1,10,50") from None
    if any(not 1 <= n <= 500 for n in sizes):
        raise typer.BadParameter(f"{option}: each size must be 1..500")
    return sizes


def command(
    fanout: Annotated[
        str, typer.Option(help="Subscriber counts for one publisher, e.g. 1,10,50.")
    ] = "1,10,50",
    pairs: Annotated[str, typer.Option(help="Numbers of one-to-one pairs, e.g. 10,50.")] = "10,50",
    seconds: Annotated[float, typer.Option(help="Measured seconds per scenario (1..120).")] = 5.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print results as JSON lines.")] = False,
) -> None:
    """Emulator forwarding: packets/s per core and dwell p50/p99, with a bare UDP forwarder as baseline."""
    if not 1.0 <= seconds <= 120.0:
        raise typer.BadParameter("--seconds: must be between 1 and 120")
    results = asyncio.run(run(_sizes(fanout, "--fanout"), _sizes(pairs, "--pairs"), seconds))
    if json_output:
        for result in results:
            typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(machine())
        typer.echo(markdown(results))
