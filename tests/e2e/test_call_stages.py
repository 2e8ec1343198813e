"""Stage timings end to end: an agent on the SDK reports agent.stage marks through a real relay, and the
headless caller's budget splits inference by them (relay/inference/stages.py, scripts/devtools/budget.py).

In-process, like tests/e2e/test_call_harness.py: a real relay in direct mode, the agent below on loopback,
``run_direct_call``. The agent ends a turn on 500 ms of silence (relay/inference/speech.py, as the echo
agent), sends ``agent.reply`` (so the budget has response and inference), then "thinks" in three stages of
STAGE_S each and waits AFTER_S more before echoing the utterance back: the budget must find the three
stages in order, and they must fit in inference with room for the wait after the last one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from splitrelay.devtools.call import RelayAccess, run_direct_call
from splitrelay.devtools.utterance import load_utterance
from splitrelay.inference.sdk import AudioFrame, InferenceCall, InferenceServer
from splitrelay.inference.speech import EndOfSpeech, SpeechDetector, SpeechEnded, SpeechStarted
from splitrelay.inference.stages import LLM_FIRST_TOKEN, STT_FINAL, TTS_FIRST_BYTE, StageMarks
from splitrelay.inference.wire import PTIME_MS, u32_diff
from splitrelay.integrations import pipecat_parrot
from splitrelay.integrations.pipecat import PipecatAgent
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.server import RelayServer, RelaySettings

pytestmark = pytest.mark.e2e

KEY = "call-stages-relay-signing-key-0123456789"
STAGES = (STT_FINAL, LLM_FIRST_TOKEN, TTS_FIRST_BYTE)
STAGE_S = 0.040  # each stage's own time in the agent
AFTER_S = 0.030  # after the last mark, before the first audio: the budget's "after last stage"
LEAD_FRAMES = 10  # the reply is sent this far ahead of real time (the relay paces playout)


class StagedEcho:
    """A tiny agent: echoes each utterance after 500 ms of silence, marking three stages on the way."""

    def __init__(self) -> None:
        self.turns: list[int] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def __call__(self, call: InferenceCall) -> None:
        marks = StageMarks(call)
        detector = SpeechDetector(channels=call.info.channels)
        tracker = EndOfSpeech(500)
        utterance: list[AudioFrame] = []
        async for frame in call.frames():  # the caller sends a frame every 20 ms: ends with the call
            speaking = detector.is_speech(frame.payload, frame.audio_level, frame.voice)
            event = tracker.update(frame.timestamp, speaking)
            if isinstance(event, SpeechStarted):
                utterance = []
            if tracker.speaking or isinstance(event, SpeechStarted):
                utterance.append(frame)
            if isinstance(event, SpeechEnded):
                frames = [f.payload for f in utterance if u32_diff(f.timestamp, event.last_speech_end) < 0]
                self.tasks.append(asyncio.create_task(self._reply(call, marks, event, frames)))
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _reply(
        self, call: InferenceCall, marks: StageMarks, ended: SpeechEnded, frames: list[bytes]
    ) -> None:
        self.turns.append(marks.turn_started(ended.detected_at))
        call.send_event(
            {
                "type": "agent.reply",
                "utterance_ms": len(frames) * PTIME_MS,
                "end_of_speech_at": ended.last_speech_end,
                "detected_at": ended.detected_at,
                "reply_seq": call.next_audio_seq,
            }
        )
        for name in STAGES:
            await asyncio.sleep(STAGE_S)
            assert marks.mark(name)
        await asyncio.sleep(AFTER_S)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, payload in enumerate(frames):
            delay = start + (i - LEAD_FRAMES) * PTIME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not call.send_audio(payload, marker=i == 0):
                return


@asynccontextmanager
async def relay_with(agent: StagedEcho | PipecatAgent) -> AsyncIterator[RelayServer]:
    async with InferenceServer(agent, "127.0.0.1", 0) as inference:
        assert inference.address is not None
        settings = RelaySettings(
            signing_keys={"default": KEY.encode()}, inference=inference.address, port=0, candidates=LOOPBACK
        )
        async with RelayServer(settings) as relay:
            yield relay


async def test_the_budget_splits_inference_into_the_agents_stages() -> None:
    agent = StagedEcho()
    async with relay_with(agent) as relay:
        report = await run_direct_call(RelayAccess(relay.url, KEY.encode()), load_utterance(), turns=2)
    assert report.ok, report.errors
    assert agent.turns == [1, 2]
    assert report.relay is not None and [s.turn for s in report.relay.stages] == [1, 2]
    assert report.stage_names() == list(STAGES)
    for turn in report.turns:
        assert [s.name for s in turn.stages] == list(STAGES), turn
        assert turn.endpointing_ms == 500.0 and turn.inference_ms is not None
        # Each stage took at least its sleep; the marks are cumulative on the agent's clock.
        assert all(s.ms >= STAGE_S * 1000 for s in turn.stages), turn.stages
        assert [s.at_ms for s in turn.stages] == sorted(s.at_ms for s in turn.stages)
        assert sum(s.ms for s in turn.stages) == pytest.approx(turn.stages[-1].at_ms)
        # The stages sum to at most inference; what is left holds the agent's wait after the last mark
        # (AFTER_S, less the loopback's noise in RTT and dwell, a few ms at most).
        assert turn.after_last_stage_ms is not None
        assert turn.stages[-1].at_ms <= turn.inference_ms
        assert turn.after_last_stage_ms == pytest.approx(turn.inference_ms - turn.stages[-1].at_ms)
        assert AFTER_S * 1000 - 10 <= turn.after_last_stage_ms <= AFTER_S * 1000 + 100, turn
    doc = report.to_json()
    assert [s["name"] for s in doc["turns"][0]["stages"]] == list(STAGES)
    assert list(doc["stage_summary"]["stages"]) == list(STAGES)


async def test_a_pipecat_pipeline_reports_its_stages_with_no_code_of_its_own() -> None:
    """The documented parrot (Silero VAD, then TTSStartedFrame and TTSAudioRawFrame) sends no agent.reply:
    its stage marks alone give the budget the decision, so response and inference are known and split."""
    async with relay_with(PipecatAgent(pipecat_parrot.factory)) as relay:
        report = await run_direct_call(RelayAccess(relay.url, KEY.encode()), load_utterance(), turns=2)
    # The parrot re-encodes what it heard, so its reply is not a run of the sent frames: that error only.
    assert all("not a run of the sent frames" in error for error in report.errors), report.errors
    assert report.relay is not None and report.relay.replies == ()
    assert [s.turn for s in report.relay.stages] == [1, 2]
    assert report.headline().endswith("(endpointing n/a: the agent sent no agent.reply event)")
    for turn in report.turns:
        assert [s.name for s in turn.stages] == ["tts_started", "tts_first_byte"], turn
        assert turn.endpointing_ms is None  # needs agent.reply's end of speech
        assert turn.response_ms is not None and turn.response_ms >= 0
        assert turn.voice_to_voice_ms is not None and turn.voice_to_voice_ms >= turn.response_ms
        assert turn.inference_ms is not None and turn.after_last_stage_ms is not None
        assert turn.after_last_stage_ms == pytest.approx(turn.inference_ms - turn.stages[-1].at_ms)
