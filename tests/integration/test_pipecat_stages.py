"""Pipecat's own frames as agent.stage marks (scripts/integrations/pipecat.py, PipecatStages), over the real
wire: the relay's link on one side, a real Pipecat pipeline behind InferenceServer + PipecatAgent on the
other. A scripted processor plays a turn's frames as an STT → LLM → TTS pipeline would push them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    Frame,
    InputTransportMessageFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from splitrelay.inference import wire
from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.integrations.pipecat import PipecatAgent, SplitRelayTransport
from splitrelay.relay.inference_link import RelayLink
from tests.opus_fixtures import clip
from tests.recording_sink import RecordingSink

F = 960
RATE = 16_000
STEP_S = 0.03  # each scripted stage's own time
SILENCE = bytes(RATE * 2 // 50)  # 20 ms


class Script(FrameProcessor):
    """Plays a turn's frames when the client's event asks: ``test.vad_turn`` (a VAD processor alone, like
    the parrot), ``test.user_turn`` (Pipecat user turns, the transcript before the turn ends), ``test.greet``
    (TTS before any turn)."""

    def __init__(self) -> None:
        super().__init__()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, InputTransportMessageFrame):
            kind = frame.message.get("type")
            if kind == "test.vad_turn":
                await self.push_frame(VADUserStartedSpeakingFrame())
                await self.push_frame(VADUserStoppedSpeakingFrame())
                await asyncio.sleep(STEP_S)
                await self.push_frame(TranscriptionFrame("hello", "caller", "t"))
                await self.respond()
            elif kind == "test.user_turn":
                await self.push_frame(VADUserStartedSpeakingFrame())
                await self.push_frame(UserStartedSpeakingFrame())
                await self.push_frame(TranscriptionFrame("hello again", "caller", "t"))
                await self.push_frame(VADUserStoppedSpeakingFrame())  # not the end: the turn analyzer decides
                await asyncio.sleep(STEP_S)
                await self.push_frame(UserStoppedSpeakingFrame())
                await self.push_frame(LLMTextFrame("stray"))  # no response started: not a first token
                await self.respond()
            elif kind == "test.greet":
                await self.push_frame(TTSStartedFrame())
                await self.push_frame(TTSAudioRawFrame(SILENCE, RATE, 1))
                await self.push_frame(TTSStoppedFrame())

    async def respond(self) -> None:
        await asyncio.sleep(STEP_S)
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame("Hi"))
        await self.push_frame(LLMTextFrame(" there"))
        await self.push_frame(LLMFullResponseEndFrame())
        await asyncio.sleep(STEP_S)
        await self.push_frame(TTSStartedFrame())
        await asyncio.sleep(STEP_S)
        for _ in range(3):
            await self.push_frame(TTSAudioRawFrame(SILENCE, RATE, 1))
        await self.push_frame(TTSStoppedFrame())


@dataclass
class Harness:
    link: RelayLink
    agent: PipecatAgent


@asynccontextmanager
async def scripted() -> AsyncIterator[Harness]:
    async def factory(transport: SplitRelayTransport, call: InferenceCall) -> Pipeline:
        return Pipeline([transport.input(), Script(), transport.output()])

    agent = PipecatAgent(
        factory, pipeline_params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
    )
    async with InferenceServer(agent, "127.0.0.1", 0) as server:
        assert server.address is not None
        async with RelayLink(server.address) as link:
            yield Harness(link, agent)


def stages(sink: RecordingSink) -> list[dict[str, Any]]:
    return [e for e in sink.events if e.get("type") == "agent.stage"]


async def test_a_pipelines_frames_become_stage_marks() -> None:
    sink = RecordingSink()
    audio = clip((("tone", 200),))  # 10 frames: the pipeline has heard up to media time 10 * 960
    async with scripted() as h:
        call_id = await h.link.start_call("pc-stages", sink)
        for i, frame in enumerate(audio.frames):
            assert h.link.send_audio_in(call_id, i, i * F, frame, wire.audio_in_flags(marker=i == 0))
        async with asyncio.timeout(10):
            while h.agent.transports.get(call_id) is None or h.agent.transports[call_id].stats.frames_in < 10:  # noqa: ASYNC110 - bounded by the timeout
                await asyncio.sleep(0.01)
        transport = h.agent.transports[call_id]
        assert transport.media_time == 10 * F

        h.link.send_event(call_id, {"type": "test.greet"})  # TTS before any turn: no stage
        await asyncio.sleep(0.3)
        assert stages(sink) == []

        h.link.send_event(call_id, {"type": "test.vad_turn"})
        await sink.wait_for(lambda: len(stages(sink)) >= 4)
        h.link.send_event(call_id, {"type": "test.user_turn"})
        await sink.wait_for(lambda: len(stages(sink)) >= 8)
        await asyncio.sleep(0.2)  # nothing more comes (the repeated TTS audio, the stray text)
        marks = stages(sink)
        assert await h.link.end_call(call_id)

    names = ["stt_final", "llm_first_token", "tts_started", "tts_first_byte"]
    assert [(m["turn"], m["name"]) for m in marks] == [(1, n) for n in names] + [(2, n) for n in names]
    assert {m["detected_at"] for m in marks} == {10 * F}
    first, second = [m["ms"] for m in marks[:4]], [m["ms"] for m in marks[4:]]
    step = STEP_S * 1000
    # VAD turn: STT final one step after the decision, then the LLM, TTS start, first audio a step apart.
    assert first[0] >= step and first[1] >= 2 * step and first[2] >= 3 * step and first[3] >= 4 * step
    assert first == sorted(first) and first[3] < 4 * step + 200
    # User turn: the transcript was final before the turn ended: 0 ms after the decision, not a step.
    assert second[0] < step and second[1] >= step and second[3] >= 3 * step
    assert second == sorted(second)
