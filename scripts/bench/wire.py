"""Benchmark of the wire path: codec cost, speech detection cost, and a loopback echo under load.

Run: ``splitrelay bench wire [--calls 200 --seconds 3]``. Numbers depend on the
machine and its neighbours; rerun before relying on one. Both ends share one process (and core)
in the loopback part, so its CPU figure is relay + inference together.
"""

from __future__ import annotations

import asyncio
import statistics
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

    async with InferenceServer(echo, "127.0.0.1", 0, max_calls=calls) as server:
        assert server.address is not None
        async with RelayLink(server.address) as link:
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
