"""A real Pipecat pipeline behind a real relay, called by a real WebRTC caller speaking real speech.

The pipeline is the documented example (splitrelay.integrations.pipecat_parrot): Silero VAD from
pipecat-ai (onnxruntime, the bundled model) and a parrot that says each utterance back. The caller is an
aiortc peer attached through the relay's signed control API; it speaks the espeak-ng recording
scripts/devtools/assets/utterance.wav, keeps sending silence like a browser, and speaks again while the
parrot is still talking. Interruption both ways:

- relay barge-in on: the relay hears the caller over the reply, flushes and sends BARGE_IN, the pipeline
  gets Pipecat's interruption and a RelayBargeInFrame;
- relay barge-in off: the pipeline's own VAD interrupts the parrot, and the transport's CLEAR reaches the
  relay (acknowledged) and cuts the reply short there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pipecat.processors.frame_processor import FrameProcessor

from splitrelay.devtools.utterance import DEFAULT_UTTERANCE, load_utterance, read_pcm
from splitrelay.inference.audio import CallerAudioDecoder
from splitrelay.inference.sdk import InferenceCall
from splitrelay.integrations import pipecat_parrot
from splitrelay.integrations.pipecat import PipecatAgent, RelayBargeInFrame, SplitRelayTransport
from splitrelay.relay.call import CallConfig
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from tests.integration.relay_harness import Caller, relay_stack

REPO = Path(__file__).resolve().parents[2]
F = 960
SILENCE_LEVEL = 127


@dataclass
class Seen:
    transports: list[SplitRelayTransport] = field(default_factory=list)
    parrots: list[pipecat_parrot.Parrot] = field(default_factory=list)
    barge_ins: list[RelayBargeInFrame] = field(default_factory=list)


def recording_factory(seen: Seen) -> Any:
    """The documented factory, with the test holding on to its transport and parrot."""

    async def factory(transport: SplitRelayTransport, call: InferenceCall) -> Any:
        worker = await pipecat_parrot.factory(transport, call)
        seen.transports.append(transport)
        processor: FrameProcessor | None = transport.input()
        for _ in range(10):  # input -> VAD -> parrot -> output
            if processor is None or isinstance(processor, pipecat_parrot.Parrot):
                break
            processor = processor.next
        assert isinstance(processor, pipecat_parrot.Parrot)
        seen.parrots.append(processor)

        async def on_barge_in(_transport: SplitRelayTransport, frame: RelayBargeInFrame) -> None:
            seen.barge_ins.append(frame)

        transport.add_event_handler("on_barge_in", on_barge_in)
        return worker

    return factory


def caller_script() -> tuple[list[bytes], list[int], int]:
    """Speech, 2 s of silence (the parrot starts replying), the speech again over the reply, 5 s silence.

    Returns frames, RFC 6464 levels, and the index of the second utterance's first frame.
    """
    utterance = load_utterance()
    speech, levels = list(utterance.frames), list(utterance.levels)

    def silence(ms: int) -> tuple[list[bytes], list[int]]:
        return [utterance.silence_frame] * (ms // 20), [SILENCE_LEVEL] * (ms // 20)

    gap, gap_levels = silence(2000)
    tail, tail_levels = silence(5000)
    frames = speech + gap + speech + tail
    return frames, levels + gap_levels + levels + tail_levels, len(speech) + len(gap)


def envelope(pcm: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """20 ms RMS envelope of 48 kHz PCM."""
    usable = pcm[: pcm.size // F * F].astype(np.float64).reshape(-1, F)
    rms: np.ndarray[Any, Any] = np.sqrt((usable**2).mean(axis=1))
    return rms


def best_match(haystack: np.ndarray[Any, Any], needle: np.ndarray[Any, Any]) -> float:
    """Highest Pearson correlation of ``needle`` against any window of ``haystack`` (envelopes)."""
    best = -1.0
    for start in range(0, max(1, haystack.size - needle.size + 1)):
        window = haystack[start : start + needle.size]
        if window.size == needle.size and window.std() > 0:
            best = max(best, float(np.corrcoef(window, needle)[0, 1]))
    return best


async def run_call(config: CallConfig, seen: Seen, name: str) -> tuple[Caller, dict[str, Any]]:
    frames, levels, _ = caller_script()
    agent = PipecatAgent(recording_factory(seen))
    async with relay_stack(agent, call=config) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, name)
            await caller.speak(frames, levels)
            response = await stack.request("GET", f"/v1/calls/{name}")
            assert response.status_code == 200, response.text
            summary: dict[str, Any] = response.json()
        finally:
            await caller.close()
    return caller, summary


def reply_frames(summary: dict[str, Any]) -> list[int]:
    """Each parrot reply's length in 20 ms frames, from the events the relay recorded."""
    events = [e["event"] for e in summary["events"] if e["event"]["type"] == "parrot.reply"]
    return [int(e["utterance_ms"]) // 20 for e in events]


def check_reply_is_the_caller_speaking(caller: Caller) -> None:
    """The audio that came back is the caller's own utterance: envelope correlation with the recording."""
    decoder = CallerAudioDecoder(48_000)
    pcm = b"".join(c.pcm for p in caller.received for c in decoder.push(p.sequence, p.payload))
    back = envelope(np.frombuffer(pcm, dtype=np.int16))
    spoken = envelope(read_pcm(DEFAULT_UTTERANCE))
    spoken = spoken[10:]  # the file's 200 ms lead-in silence
    assert best_match(back, spoken) > 0.8


async def test_caller_speech_over_the_reply_is_a_relay_barge_in_and_a_pipeline_interruption() -> None:
    seen = Seen()
    config = CallConfig(fast_path=FastPathConfig(rtcp_interval=0.2))  # relay barge-in on (default)
    caller, summary = await run_call(config, seen, "pipecat-e2e-barge")

    replies = reply_frames(summary)
    assert len(replies) == 2, summary["events"]
    assert summary["barge_ins"] >= 1
    (transport,), (parrot,) = seen.transports, seen.parrots
    assert transport.stats.relay_barge_ins >= 1 and seen.barge_ins
    first = seen.barge_ins[0]
    # The caller heard part of the first reply, not all of it (in the pipeline's own milliseconds).
    assert 200 <= first.heard_ms < replies[0] * 20 - 500, (first, replies)
    assert parrot.interruptions >= 1 and parrot.replies == 2
    # Audio both ways: Pipecat heard the caller (20 ms frames at 16 kHz), and the caller heard the parrot:
    # all of the second reply, part of the first.
    assert transport.stats.frames_in >= 2 * 160
    received = len(caller.received)
    assert replies[1] <= received <= sum(replies) - 25, (received, replies)
    check_reply_is_the_caller_speaking(caller)


async def test_the_pipelines_own_interruption_clears_the_relays_queue() -> None:
    seen = Seen()
    # The relay's barge-in is off (no level reaches 0 dBov): only Pipecat's VAD can interrupt.
    config = CallConfig(barge_in_threshold_dbov=0.0, fast_path=FastPathConfig(rtcp_interval=0.2))
    caller, summary = await run_call(config, seen, "pipecat-e2e-clear")

    replies = reply_frames(summary)
    assert len(replies) == 2, summary["events"]
    assert summary["barge_ins"] == 0
    (transport,), (parrot,) = seen.transports, seen.parrots
    assert transport.stats.relay_barge_ins == 0 and not seen.barge_ins
    assert transport.stats.pipeline_interruptions >= 1
    assert transport.stats.clears_acked >= 1  # the CLEAR reached the relay...
    assert summary["frames_dropped_cleared"] >= 1  # ...which dropped what it still held of the reply
    assert parrot.interruptions >= 1
    received = len(caller.received)
    assert replies[1] <= received <= sum(replies) - 25, (received, replies)
    check_reply_is_the_caller_speaking(caller)
