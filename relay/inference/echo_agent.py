"""Reference echo agent: plays each caller utterance back once the caller stops speaking.

It is the stand-in model for demos and latency measurement, built only on the public SDK
(``relay/inference/sdk.py``) and ``relay/inference/speech.py``: frames from speech start (plus a short
pre-roll,
because onset detection lags the first syllable) to the end of speech (plus a short tail) are sent
back byte for byte as AUDIO_OUT, the first with MARKER, paced ``lead_ms`` ahead of real time. An
``agent.reply`` EVENT carries the media timestamps a caller needs to measure the turn gap. A
BARGE_IN stops the reply being played.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from splitrelay.inference.sdk import AudioFrame, BargeInNotice, InferenceCall, InferenceServer
from splitrelay.inference.speech import (
    DEFAULT_SILENCE_MS,
    DEFAULT_THRESHOLD_DBOV,
    EndOfSpeech,
    SpeechDetector,
    SpeechEnded,
)
from splitrelay.inference.wire import FRAME_SAMPLES, PTIME_MS, SAMPLE_RATE, U32, u32_diff
from splitrelay.inference.wire_auth import WireKey, WireKeyring

if TYPE_CHECKING:
    from splitrelay.inference.vad import StreamingVad

logger = logging.getLogger("splitrelay.echo")

HISTORY_FRAMES = 128  # idle frames kept for the pre-roll (bounded whatever pre_roll_ms says)
CONTINUED_EVENT = "agent.continued"  # the echo agent's EVENT when its CALL_START carried ``continues``
JITTER_GRACE_S = 0.04  # extra wait before wall time stands in for media time (packets stopped)


@dataclass(frozen=True, slots=True)
class EchoConfig:
    silence_ms: int = DEFAULT_SILENCE_MS  # silence that ends an utterance
    threshold_dbov: float = DEFAULT_THRESHOLD_DBOV
    onset_ms: int = 20
    pre_roll_ms: int = 100  # kept before the detected start of speech
    tail_ms: int = 100  # kept after the last speech frame
    lead_ms: int = 200  # how far ahead of real time the reply is sent (the relay paces playout)
    max_utterance_ms: int = 30_000  # longer utterances are cut and replied to
    vad: bool = False
    """End turns on Silero VAD (relay/inference/vad.py, splitrelay[pipecat]) and the level together: a
    frame is speech only when both say so, so a loud noise neither starts nor prolongs a turn."""
    vad_threshold: float = 0.5

    def __post_init__(self) -> None:
        EndOfSpeech(self.silence_ms, onset_ms=self.onset_ms)  # range checks live there
        SpeechDetector(self.threshold_dbov)
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f"vad_threshold: must be in (0, 1), got {self.vad_threshold}")
        for name, low, high in (
            ("pre_roll_ms", 0, 1000),
            ("tail_ms", 0, 1000),
            ("lead_ms", 0, 2000),
            ("max_utterance_ms", 1000, 300_000),
        ):
            value = getattr(self, name)
            if not low <= value <= high or value % PTIME_MS:
                raise ValueError(f"{name}: must be a multiple of {PTIME_MS} in {low}..{high}, got {value}")


class EchoAgent:
    """The handler object: ``InferenceServer(EchoAgent(config))``."""

    def __init__(self, config: EchoConfig | None = None) -> None:
        self.config = config or EchoConfig()

    async def __call__(self, call: InferenceCall) -> None:
        logger.info("call %s started from %s:%d", call.info.call, *call.relay)
        continues = call.continues
        if continues is not None:
            # An echo has no conversation to keep; a real agent would look its context up by info.call.
            # Said on the wire too, so a relay's call record (and a test) shows which agent carried on.
            logger.info(
                "call %s continues (%s, attempt %d, previous relay %s)",
                call.info.call,
                continues.reason,
                continues.attempt,
                continues.previous_relay,
            )
            call.send_event({"type": CONTINUED_EVENT, **continues.to_json()}, reliable=True)
        session = _EchoCall(call, self.config)
        await session.run()
        logger.info("call %s ended (%s)", call.info.call, call.end_reason or "agent_done")


class _EchoCall:
    def __init__(self, call: InferenceCall, config: EchoConfig) -> None:
        self.call = call
        self.config = config
        self.detector = SpeechDetector(config.threshold_dbov, channels=call.info.channels)
        self.tracker = EndOfSpeech(config.silence_ms, onset_ms=config.onset_ms)
        self.history: deque[AudioFrame] = deque(maxlen=HISTORY_FRAMES)
        self.utterance: list[AudioFrame] = []
        self.reply: asyncio.Task[None] | None = None
        self.max_frames = config.max_utterance_ms // PTIME_MS
        self.vad: StreamingVad | None = None
        if config.vad:
            from splitrelay.inference.vad import StreamingVad

            self.vad = StreamingVad(threshold=config.vad_threshold, channels=call.info.channels)

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch_events())
        try:
            await self._collect()
        finally:
            for task in (self.reply, watcher):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (self.reply, watcher) if t is not None), return_exceptions=True)

    async def _collect(self) -> None:
        """Read frames until the call ends, cutting utterances; no frame for a while advances time."""
        frames = self.call.frames()
        loop = asyncio.get_running_loop()
        media_now = 0  # media time at the end of the latest frame
        arrived = loop.time()
        while True:  # bounded by the call: the frame iterator ends with it
            # Between packets (DTX, or a relay that forwards none) wall time stands in for media time.
            # The grace keeps ordinary packet jitter from ending an utterance on the wall clock
            # while packets still flow (their timestamps are the better clock).
            remaining = self.tracker.remaining(self._media_time(media_now, arrived))
            timeout = None if remaining is None else remaining / SAMPLE_RATE + JITTER_GRACE_S
            try:
                frame = await asyncio.wait_for(anext(frames), timeout)
            except StopAsyncIteration:
                return
            except TimeoutError:
                self._finish(self.tracker.tick(self._media_time(media_now, arrived)))
                continue
            arrived = loop.time()
            media_now = (frame.timestamp + FRAME_SAMPLES) & U32
            self._on_frame(frame)

    @staticmethod
    def _media_time(media_now: int, arrived: float) -> int:
        elapsed = math.ceil((asyncio.get_running_loop().time() - arrived) * SAMPLE_RATE)
        return (media_now + elapsed) & U32

    def _on_frame(self, frame: AudioFrame) -> None:
        speech = self.detector.is_speech(frame.payload, frame.audio_level, frame.voice)
        if self.vad is not None:  # fed every frame: the model keeps state across the stream
            speech = self.vad.is_speech(frame.seq, frame.payload) and speech
        if not self.tracker.speaking:
            self.history.append(frame)
        else:
            self.utterance.append(frame)
        event = self.tracker.update(frame.timestamp, speech)
        if isinstance(event, SpeechEnded):
            self._finish(event)
        elif event is not None:  # SpeechStarted: the onset frames and the pre-roll are in history
            first = (event.timestamp - self.config.pre_roll_ms * SAMPLE_RATE // 1000) & U32
            self.utterance = [f for f in self.history if u32_diff(f.timestamp, first) >= 0]
            self.history.clear()
        elif len(self.utterance) >= self.max_frames:
            self._finish(self.tracker.force_end((frame.timestamp + FRAME_SAMPLES) & U32))

    def _finish(self, ended: SpeechEnded | None) -> None:
        if ended is None:
            return
        stop = (ended.last_speech_end + self.config.tail_ms * SAMPLE_RATE // 1000) & U32
        frames = [f.payload for f in self.utterance if u32_diff(f.timestamp, stop) < 0]
        self.utterance = []
        if not frames:
            return
        if self.reply is not None:
            self.reply.cancel()  # a new utterance replaces a reply nobody barged into
        self.reply = asyncio.create_task(self._play(frames, ended))

    async def _play(self, frames: list[bytes], ended: SpeechEnded) -> None:
        call = self.call
        call.send_event(
            {
                "type": "agent.reply",
                "utterance_ms": len(frames) * PTIME_MS,
                "end_of_speech_at": ended.last_speech_end,  # AUDIO_IN timestamp, 48 kHz
                "detected_at": ended.detected_at,  # AUDIO_IN media time when silence_ms was reached
                "reply_seq": call.next_audio_seq,  # seq of the reply's first AUDIO_OUT frame
            }
        )
        loop = asyncio.get_running_loop()
        lead = self.config.lead_ms // PTIME_MS
        start = loop.time()
        for i, payload in enumerate(frames):
            delay = start + (i - lead) * PTIME_MS / 1000 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if not call.send_audio(payload, marker=i == 0):
                return

    async def _watch_events(self) -> None:
        async for event in self.call.events():
            if isinstance(event, BargeInNotice) and self.reply is not None and not self.reply.done():
                self.reply.cancel()
                self.call.send_event(
                    {
                        "type": "agent.interrupted",
                        "played_ms": event.barge_in.played_samples * 1000 // SAMPLE_RATE,
                        "dropped_frames": event.barge_in.dropped_frames,
                    }
                )


async def serve(
    config: EchoConfig,
    host: str,
    port: int,
    *,
    key: WireKey | WireKeyring,
    ready: Callable[[tuple[str, int]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run an echo agent server until ``stop`` is set (or forever); ``key`` is the wire key. With
    ``config.vad`` its calls also answer the relay's barge-in candidates with ``VadConfirmer``."""
    confirmer = None
    if config.vad:  # the same VAD answers the relay's barge-in candidates
        from splitrelay.inference.vad import VadConfirmer

        def confirmer(call: InferenceCall) -> VadConfirmer:
            return VadConfirmer(threshold=config.vad_threshold, channels=call.info.channels)

    async with InferenceServer(EchoAgent(config), host, port, key=key, confirmer=confirmer) as server:
        assert server.address is not None
        if ready is not None:
            ready(server.address)
        with contextlib.suppress(asyncio.CancelledError):
            await (stop or asyncio.Event()).wait()
