"""The Pipecat transport over the real wire: the relay's own link (RelayLink) on one side, a real Pipecat
pipeline behind InferenceServer + PipecatAgent on the other. Audio both ways, barge-in both ways, events
both ways, several calls at once in one process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputTransportMessageUrgentFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from splitrelay.inference import wire
from splitrelay.inference.audio import CallerAudioDecoder
from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.integrations.pipecat import PipecatAgent, RelayBargeInFrame, SplitRelayTransport
from splitrelay.relay.inference_link import RelayLink
from tests.opus_fixtures import clip
from tests.recording_sink import RecordingSink

F = 960
OUT_RATE = 24_000


def tone(ms: int, freq: float, rate: int = OUT_RATE) -> bytes:
    n = rate * ms // 1000
    return (np.sin(np.arange(n) * 2 * np.pi * freq / rate) * 8000).astype(np.int16).tobytes()


@dataclass
class Probe(FrameProcessor):
    """Records what reaches the middle of the pipeline; answers relay events with frames."""

    audio: list[InputAudioRawFrame] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    interruptions: int = 0
    barge_ins: list[RelayBargeInFrame] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.audio.append(frame)
        elif isinstance(frame, InterruptionFrame):
            self.interruptions += 1
        elif isinstance(frame, RelayBargeInFrame):
            self.barge_ins.append(frame)
        elif isinstance(frame, InputTransportMessageFrame):
            self.messages.append(frame.message)
            await self.on_message(frame.message)
        await self.push_frame(frame, direction)

    async def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "test.speak":  # a 2 s response at the pipeline's output rate
            await self.push_frame(TTSStartedFrame())
            await self.push_frame(TTSAudioRawFrame(tone(message["ms"], 300), OUT_RATE, 1))
            await self.push_frame(TTSStoppedFrame())
        elif kind == "test.interrupt":  # the pipeline interrupts itself (as its turn logic would)
            await self.broadcast_interruption()
        elif kind == "test.tools":
            await self.push_frame(
                TranscriptionFrame("what's the weather", "caller-1", "2026-12-05T00:00:00Z")
            )
            await self.push_frame(FunctionCallInProgressFrame("get_weather", "t1", {"city": "Lisbon"}))
            await self.push_frame(FunctionCallResultFrame("get_weather", "t1", {"city": "Lisbon"}, {"c": 18}))
            await self.push_frame(OutputTransportMessageUrgentFrame(message={"type": "app.note", "n": 1}))
            await self.push_frame(OutputTransportMessageUrgentFrame(message=["not", "an", "event"]))


@dataclass
class Harness:
    server: InferenceServer
    link: RelayLink
    agent: PipecatAgent
    probes: dict[int, Probe]


@asynccontextmanager
async def pipecat_pair() -> AsyncIterator[Harness]:
    probes: dict[int, Probe] = {}

    async def factory(transport: SplitRelayTransport, call: InferenceCall) -> Pipeline:
        probe = probes[call.call_id] = Probe()
        return Pipeline([transport.input(), probe, transport.output()])

    rates = PipelineParams(audio_in_sample_rate=16_000, audio_out_sample_rate=OUT_RATE)
    agent = PipecatAgent(factory, pipeline_params=rates)
    async with InferenceServer(agent, "127.0.0.1", 0) as server:
        assert server.address is not None
        async with RelayLink(server.address) as link:
            yield Harness(server, link, agent, probes)


async def wait_until(condition: Any, within: float = 10.0) -> None:
    """Poll ``condition`` (state spread over Pipecat's tasks, no single event to wait on); bounded."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - bounded by the timeout
            await asyncio.sleep(0.01)


def has_frames(sink: RecordingSink, count: int) -> bool:
    return len(sink.audio) >= count


def peak_hz(sink: RecordingSink, skip: int = 4800) -> float:
    decoder = CallerAudioDecoder(48_000)
    pcm = b"".join(c.pcm for o in sink.audio for c in decoder.push(o.seq, o.payload))
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)[skip:]
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum)) * 48_000 / len(samples)


async def test_caller_pcm_in_with_a_gap_and_pipeline_audio_out_as_one_marked_response() -> None:
    audio = clip((("tone", 400),))  # 20 frames
    sink = RecordingSink()
    async with pipecat_pair() as h:
        call_id = await h.link.start_call("pc-audio", sink)
        for i, frame in enumerate(audio.frames):
            if i == 7:
                continue  # lost upstream: the SDK conceals it, Pipecat sees contiguous 20 ms frames
            assert h.link.send_audio_in(call_id, i, i * F, frame, wire.audio_in_flags(marker=i == 0))
        await wait_until(lambda: call_id in h.probes and len(h.probes[call_id].audio) == 20)
        probe = h.probes[call_id]
        assert {(f.sample_rate, f.num_channels, len(f.audio)) for f in probe.audio} == {(16_000, 1, 640)}
        h.link.send_event(call_id, {"type": "test.speak", "ms": 400})
        await sink.wait_for(lambda: len(sink.audio) >= 20)
        await asyncio.sleep(0.5)  # the response's tail (encoder flush) and nothing after it
        transport = h.agent.transports[call_id]
        assert await h.link.end_call(call_id)
    # 400 ms at 24 kHz -> 20 frames of 20 ms, plus at most one frame of the resampler's padded tail.
    assert len(sink.audio) in (20, 21)
    assert [o.marker for o in sink.audio] == [True] + [False] * (len(sink.audio) - 1)
    assert [o.seq for o in sink.audio] == list(range(len(sink.audio)))
    assert abs(peak_hz(sink) - 300) < 10
    assert transport.stats.responses == 1 and transport.stats.clears_sent == 0


async def test_relay_barge_in_becomes_an_interruption_without_a_clear() -> None:
    sink = RecordingSink()
    async with pipecat_pair() as h:
        call_id = await h.link.start_call("pc-barge", sink)
        await wait_until(lambda: call_id in h.agent.transports)
        h.link.send_event(call_id, {"type": "test.speak", "ms": 3000})
        await sink.wait_for(lambda: len(sink.audio) >= 10)
        probe = h.probes[call_id]
        heard = sink.audio[-1].seq
        ack = h.link.send_barge_in(
            call_id, played_samples=(heard + 1) * F, dropped_frames=3, response_seq=heard
        )
        assert ack is not None and await ack
        await wait_until(lambda: bool(probe.barge_ins))
        stopped_at = len(sink.audio)
        await asyncio.sleep(0.4)  # a paced response would add 20 frames here if it were still going
        transport = h.agent.transports[call_id]
        assert len(sink.audio) <= stopped_at + 1
        (barge,) = probe.barge_ins
        assert barge.heard_ms == (heard + 1) * 20 and barge.dropped_frames == 3
        assert probe.interruptions == 1
        assert transport.stats.relay_barge_ins == 1 and transport.stats.clears_sent == 0
        assert sink.clears == []

        # The next response starts with a marker (the relay drops unmarked frames after a barge-in).
        before = len(sink.audio)
        h.link.send_event(call_id, {"type": "test.speak", "ms": 200})
        await sink.wait_for(lambda: len(sink.audio) >= before + 10)
        assert sink.audio[before].marker


async def test_pipeline_interruption_sends_clear_to_the_relay() -> None:
    sink = RecordingSink()
    async with pipecat_pair() as h:
        call_id = await h.link.start_call("pc-clear", sink)
        await wait_until(lambda: call_id in h.agent.transports)
        h.link.send_event(call_id, {"type": "test.speak", "ms": 3000})
        await sink.wait_for(lambda: len(sink.audio) >= 10)
        h.link.send_event(call_id, {"type": "test.interrupt"})
        await sink.wait_for(lambda: bool(sink.clears))
        transport = h.agent.transports[call_id]
        stopped_at = len(sink.audio)
        await asyncio.sleep(0.4)
        assert len(sink.audio) <= stopped_at + 1
        # The CLEAR's position is past every frame sent before it: the relay drops all it still holds.
        assert sink.clears[0] % F == 0 and sink.clears[0] > sink.audio[9].timestamp
        await wait_until(lambda: transport.stats.clears_acked == 1)
        assert transport.stats.pipeline_interruptions == 1 and transport.stats.relay_barge_ins == 0
        before = len(sink.audio)
        h.link.send_event(call_id, {"type": "test.speak", "ms": 200})
        await sink.wait_for(lambda: len(sink.audio) >= before + 10)
        assert sink.audio[before].marker
        assert all(o.timestamp >= sink.clears[0] for o in sink.audio[before:])


async def test_events_both_ways() -> None:
    sink = RecordingSink()
    async with pipecat_pair() as h:
        call_id = await h.link.start_call("pc-events", sink)
        await wait_until(lambda: call_id in h.agent.transports)
        h.link.send_event(call_id, {"type": "test.tools", "from": "client"})
        await sink.wait_for(lambda: len(sink.events) >= 5)
        await asyncio.sleep(0.1)
        assert h.probes[call_id].messages == [{"type": "test.tools", "from": "client"}]
    assert sink.events == [
        {
            "type": "transcript.final",
            "role": "user",
            "text": "what's the weather",
            "user_id": "caller-1",
            "timestamp": "2026-12-05T00:00:00Z",
        },
        {
            "type": "tool_call.started",
            "tool_call_id": "t1",
            "name": "get_weather",
            "arguments": {"city": "Lisbon"},
        },
        {"type": "tool_call.result", "tool_call_id": "t1", "name": "get_weather", "result": {"c": 18}},
        {"type": "app.note", "n": 1},
        {"type": "pipecat.message", "message": ["not", "an", "event"]},
    ]


async def test_one_pipeline_per_call_and_the_call_end_cancels_it() -> None:
    sinks = [RecordingSink() for _ in range(3)]
    async with pipecat_pair() as h:
        ids = [await h.link.start_call(f"pc-many-{i}", sink) for i, sink in enumerate(sinks)]
        await wait_until(lambda: all(i in h.agent.transports for i in ids))
        for n, call_id in enumerate(ids):
            h.link.send_event(call_id, {"type": "test.speak", "ms": 200 + 100 * n})
        for n, sink in enumerate(sinks):
            await sink.wait_for(partial(has_frames, sink, 10 + 5 * n))
        assert len({id(h.probes[i]) for i in ids}) == 3
        assert await h.link.end_call(ids[0])
        await wait_until(lambda: ids[0] not in h.agent.transports)  # its pipeline was cancelled
        assert all(i in h.agent.transports for i in ids[1:])
        assert len(h.server.calls) == 2


async def test_an_interruption_with_nothing_left_to_play_sends_no_clear() -> None:
    sink = RecordingSink()
    async with pipecat_pair() as h:
        call_id = await h.link.start_call("pc-idle-interrupt", sink)
        await wait_until(lambda: call_id in h.agent.transports)
        transport = h.agent.transports[call_id]
        h.link.send_event(call_id, {"type": "test.speak", "ms": 200})
        await sink.wait_for(lambda: len(sink.audio) >= 10)
        await asyncio.sleep(0.6)  # played out, well past the relay's lead
        h.link.send_event(call_id, {"type": "test.interrupt"})  # as Pipecat does at every user turn
        await wait_until(lambda: transport.stats.pipeline_interruptions == 1)
        await asyncio.sleep(0.2)
        assert transport.stats.clears_sent == 0 and sink.clears == []
