"""Benchmark of the wire path: codec cost, speech detection cost, and a loopback echo under load.

Run: ``splitrelay bench wire [--calls 200 --seconds 3]``. Numbers depend on the
machine and its neighbours; rerun before relying on one. Both ends share one process (and core)
in the loopback part, so its CPU figure is relay + inference together.

The per-packet cost of audio against another checkout (e.g. the code before a wire change):
``python scripts/bench/wire.py --compare OTHER_PYTHON [--rounds 15]`` runs :func:`audio_costs` in
this interpreter and in OTHER_PYTHON (a venv with the other checkout installed), alternately, one
process per round, and prints median and p99 of each step side by side with their ratio.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from splitrelay.bench.stats import percentile
from splitrelay.inference import sdk as inference
from splitrelay.inference import wire
from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.inference.speech import SpeechDetector
from splitrelay.inference.wire import MsgType
from splitrelay.relay.inference_link import RelayLink


def per_op_us(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def bench_codec() -> None:
    payload = bytes(80)
    flags = wire.audio_in_flags(level=30, voice=True)
    data = wire.encode_audio(MsgType.AUDIO_IN, 1, 2, 3, payload, flags)
    encode_us = per_op_us(lambda: wire.encode_audio(3, 1, 2, 3, payload, flags), 200_000)
    print(f"encode_audio          {encode_us:6.2f} µs")
    print(f"decode (AUDIO_IN)     {per_op_us(lambda: wire.decode(data), 200_000):6.2f} µs")
    event = wire.encode(
        wire.Message(MsgType.EVENT, 1, 0, payload=wire.pack_event({"type": "t", "text": "x" * 60}))
    )
    print(f"decode (EVENT, JSON)  {per_op_us(lambda: wire.decode(event), 50_000):6.2f} µs")


def bench_speech() -> None:
    from tests.opus_fixtures import clip

    frames = clip((("tone", 1000),)).frames
    det = SpeechDetector()
    print(f"speech, RFC 6464 level {per_op_us(lambda: det.is_speech(b'x', 40, False), 200_000):6.2f} µs")
    it = iter(frames * 20)
    print(f"speech, Opus decode    {per_op_us(lambda: det.is_speech(next(it)), len(frames) * 20):6.2f} µs")


async def bench_loopback(calls: int, seconds: float) -> None:
    """``calls`` calls at 50 frames/s each; inference echoes every frame; RTT measured per frame."""

    async def echo(call: InferenceCall) -> None:
        async for frame in call.frames():
            call.send_audio(frame.payload)

    sent_at: dict[tuple[int, int], float] = {}
    rtts: list[float] = []

    class Sink:
        def __init__(self, call_index: int) -> None:
            self.i = call_index

        def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None:
            t = sent_at.pop((self.i, seq), None)
            if t is not None:
                rtts.append(time.perf_counter() - t)

        def on_mark(self, name: str, timestamp: int) -> None: ...
        def on_event(self, event: dict[str, Any]) -> None: ...
        def on_clear(self, timestamp: int) -> None: ...
        def on_call_end(self, reason: str) -> None: ...

    from splitrelay.inference.wire_auth import WireKey

    key = WireKey.generate()
    async with InferenceServer(echo, "127.0.0.1", 0, key=key, max_calls=calls) as server:
        assert server.address is not None
        async with RelayLink(server.address, key=key) as link:
            ids = [await link.start_call(f"bench-{i}", Sink(i)) for i in range(calls)]
            payload = bytes(80)
            frames = int(seconds * 50)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(frames):
                await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
                for i, call_id in enumerate(ids):
                    sent_at[(i, n)] = time.perf_counter()
                    link.send_audio_in(call_id, n, n * 960, payload)
            await asyncio.sleep(0.2)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    total = calls * frames
    print(
        f"loopback echo: {calls} calls x 50 frames/s for {seconds:g} s ({total * 2 / wall:,.0f} datagrams/s "
        f"through both ends), CPU {cpu / wall:.0%}, lost {total - len(rtts)}"
    )
    if rtts:
        p50, p99 = (percentile(rtts, 50) or 0.0) * 1e3, (percentile(rtts, 99) or 0.0) * 1e3
        print(f"round trip p50 {p50:.3f} ms, p99 {p99:.3f} ms, mean {statistics.fmean(rtts) * 1e3:.3f} ms")


def run(calls: int, seconds: float) -> None:
    """Codec and speech detection costs, then the loopback echo (`splitrelay bench wire`)."""
    from splitrelay.bench.support import machine_info, machine_line

    print(f"machine: {machine_line(machine_info(packages=('uvloop',), event_loop='uvloop'))}")
    bench_codec()
    bench_speech()
    inference.run(bench_loopback(calls, seconds))


# ---- per-packet cost of audio, comparable across checkouts ------------------------------------------


class _NullSink:
    def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None: ...
    def on_mark(self, name: str, timestamp: int) -> None: ...
    def on_event(self, event: dict[str, Any]) -> None: ...
    def on_clear(self, timestamp: int) -> None: ...
    def on_call_end(self, reason: str) -> None: ...


def _key_kw(cls: type) -> dict[str, Any]:
    """``key=`` for endpoints that take one (wire version 2), nothing for older checkouts."""
    if "key" not in inspect.signature(cls).parameters:
        return {}
    from splitrelay.inference.wire_auth import WireKey

    return {"key": WireKey(bytes(range(32)))}


async def _audio_cost_round(n: int) -> dict[str, float]:
    """One round: µs per audio packet for each step of the audio path, on a live loopback call.

    The receive steps call the endpoints' ``datagram_received`` directly with the datagram a socket
    would deliver, so they time exactly the code a wire change touches (no kernel, no scheduling).
    """
    frames: list[int] = []

    async def hold(call: InferenceCall) -> None:
        async for _ in call.frames():
            frames.append(1)

    server = InferenceServer(hold, "127.0.0.1", 0, max_calls=4, **_key_kw(InferenceServer))
    address = await server.start()
    link = RelayLink(address, **_key_kw(RelayLink))
    await link.start()
    try:
        call_id = await link.start_call("cost", _NullSink())
        assert link.address is not None
        relay_addr = ("127.0.0.1", link.address[1])
        payload = bytes(80)
        flags = wire.audio_in_flags(level=30, voice=True)
        audio_in = [
            wire.encode_audio(MsgType.AUDIO_IN, call_id, i, i * 960, payload, flags) for i in range(n)
        ]
        audio_out = [wire.encode_audio(MsgType.AUDIO_OUT, call_id, i, i * 960, payload) for i in range(n)]
        out: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(n):
            wire.encode_audio(3, call_id, i, i * 960, payload, flags)
        out["encode_audio"] = (time.perf_counter() - start) / n * 1e6
        start = time.perf_counter()
        for data in audio_in:
            wire.decode(data)
        out["decode AUDIO_IN"] = (time.perf_counter() - start) / n * 1e6
        received = server.datagram_received
        start = time.perf_counter()
        for data in audio_in:
            received(data, relay_addr)
        out["inference receive AUDIO_IN"] = (time.perf_counter() - start) / n * 1e6
        relay_received = link.datagram_received
        start = time.perf_counter()
        for data in audio_out:
            relay_received(data, address)
        out["relay receive AUDIO_OUT"] = (time.perf_counter() - start) / n * 1e6
        assert len(frames) <= n and server.stats.garbage == 0 and link.stats.garbage == 0
        return out
    finally:
        await link.close()
        await server.close(grace=0.2)


def audio_costs(rounds: int, n: int) -> list[dict[str, float]]:
    """``rounds`` rounds of ``n`` packets each, in this process (on uvloop, as deployed)."""
    return [inference.run(_audio_cost_round(n)) for _ in range(rounds)]


def compare_audio_costs(other_python: str, rounds: int, n: int) -> None:
    """Alternate one round here and one in ``other_python`` (the baseline), then print both side by side."""
    from splitrelay.bench.support import machine_info, machine_line

    def one(python: str) -> dict[str, float]:
        result = subprocess.run(
            [python, __file__, "--rounds", "1", "--packets", str(n)],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        value: dict[str, float] = json.loads(result.stdout.splitlines()[-1])[0]
        return value

    this: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    for _ in range(rounds):  # alternate, so drift on a shared machine hits both alike
        base.append(one(other_python))
        this.append(one(sys.executable))
    print(f"machine: {machine_line(machine_info(packages=('uvloop',), event_loop='uvloop'))}")
    print(f"{rounds} rounds x {n:,} packets, alternating; µs per packet; baseline: {other_python}")
    print(f"{'step':28} {'base p50':>9} {'base p99':>9} {'this p50':>9} {'this p99':>9} {'p50 ratio':>9}")
    for step in this[0]:
        b = [r[step] for r in base]
        t = [r[step] for r in this]
        b50, b99, t50, t99 = (percentile(x, q) or 0.0 for x, q in ((b, 50), (b, 99), (t, 50), (t, 99)))
        print(f"{step:28} {b50:9.3f} {b99:9.3f} {t50:9.3f} {t99:9.3f} {t50 / b50:9.3f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    opts = dict(zip(args[::2], args[1::2], strict=False))
    packets = int(opts.get("--packets", "100000"))
    if "--compare" in opts:
        compare_audio_costs(opts["--compare"], int(opts.get("--rounds", "15")), packets)
    else:
        print(json.dumps(audio_costs(int(opts.get("--rounds", "1")), packets)))
