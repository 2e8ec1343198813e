"""Pipecat transport: any Pipecat pipeline behind a splitrelay relay, one pipeline per call.

``pip install 'splitrelay[pipecat]'`` (pipecat-ai pinned exactly, onnxruntime for Silero VAD; no torch).
Built only on the inference SDK's public API (relay/inference/sdk.py):

- **Input.** The caller's audio comes from ``call.pcm(rate)`` (Opus decoded, lost frames concealed or
  rebuilt from in-band FEC, resampled by the SDK) and is pushed as ``InputAudioRawFrame``s at the
  pipeline's input rate, 20 ms each.
- **Output.** ``write_audio_frame`` hands the pipeline's PCM to ``call.pcm_output(rate)``, which frames it
  into 20 ms Opus and sends each frame as it fills. Writes are paced a little ahead of real time
  (``send_ahead_ms``), like an audio device, so Pipecat's bot-speaking state follows what the caller
  hears; the relay paces the final playout. A response ends when Pipecat says the bot stopped speaking
  (or after ``response_gap_ms`` without audio); the next audio starts a new response (wire MARKER).
- **Barge-in.** The relay's BARGE_IN becomes Pipecat's interruption (``broadcast_interruption()``: an
  ``InterruptionFrame`` both ways) followed by a :class:`RelayBargeInFrame` saying how much of the
  response the caller heard, in ms of the pipeline's own audio (to truncate an LLM context). The relay
  already flushed its queue, so no CLEAR is sent for it. Any other ``InterruptionFrame`` reaching the
  output (Pipecat's VAD or turn logic interrupting the bot) drops what is not yet framed and sends CLEAR,
  so the relay drops what it still holds.
- **Events.** Relay events (the client's, passed through) arrive as ``InputTransportMessageFrame``
  (``frame.message`` is the event dict), as with Pipecat's WebSocket transports, and as the transport's
  ``on_relay_event`` handler. Transcripts and tool calls seen anywhere in the pipeline leave as wire
  EVENTs (:class:`RelayEventObserver`, added by :class:`PipecatAgent`); ``OutputTransportMessageFrame``
  / ``OutputTransportMessageUrgentFrame`` messages leave as EVENTs too.
- **Stage timings.** The same observer turns Pipecat's frames into ``agent.stage`` marks
  (relay/inference/stages.py): a turn starts when the user stopped speaking, then ``stt_final``,
  ``llm_first_token``, ``tts_started`` and ``tts_first_byte``; ``transport.stages.mark(name)`` adds any
  other stage. ``splitrelay call`` splits the budget's inference by them.

Event handlers on :class:`SplitRelayTransport`: ``on_client_connected(transport, call)``,
``on_client_disconnected(transport, call)``, ``on_barge_in(transport, frame)``,
``on_relay_event(transport, event)``, ``on_mark_reached(transport, name, timestamp)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

try:
    from pipecat.frames.frames import (
        AudioRawFrame,
        BotStoppedSpeakingFrame,
        CancelFrame,
        ClientConnectedFrame,
        EndFrame,
        Frame,
        FunctionCallCancelFrame,
        FunctionCallInProgressFrame,
        FunctionCallResultFrame,
        InputAudioRawFrame,
        InputTransportMessageFrame,
        InterimTranscriptionFrame,
        InterruptionFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        OutputAudioRawFrame,
        OutputTransportMessageFrame,
        OutputTransportMessageUrgentFrame,
        StartFrame,
        SystemFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSTextFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.observers.base_observer import BaseObserver, FramePushed
    from pipecat.pipeline.base_pipeline import BasePipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.transports.base_input import BaseInputTransport
    from pipecat.transports.base_output import BaseOutputTransport
    from pipecat.transports.base_transport import BaseTransport, TransportParams
    from pipecat.workers.runner import WorkerRunner
    from pydantic import Field
except ImportError as exc:  # pragma: no cover - exercised by the CLI test in a bare environment
    raise ModuleNotFoundError(
        f"splitrelay.integrations.pipecat needs Pipecat: pip install 'splitrelay[pipecat]' ({exc})"
    ) from None

from splitrelay.inference.audio import FRAME_MS, CallerAudioDecoder, EncoderSettings
from splitrelay.inference.sdk import BargeInNotice, InferenceCall, MarkReached, PcmOutput, RelayEvent
from splitrelay.inference.stages import (
    LLM_FIRST_TOKEN,
    STT_FINAL,
    TTS_FIRST_BYTE,
    TTS_STARTED,
    StageMarks,
)
from splitrelay.inference.wire import FRAME_SAMPLES, U32

__all__ = [
    "PipecatAgent",
    "PipecatStages",
    "PipelineFactory",
    "RelayBargeInFrame",
    "RelayEventObserver",
    "SplitRelayInputTransport",
    "SplitRelayOutputTransport",
    "SplitRelayParams",
    "SplitRelayTransport",
    "TransportStats",
]

logger = logging.getLogger("splitrelay.integrations.pipecat")

RELAY_INTERRUPTION_WINDOW_S: Final = 1.0
"""An InterruptionFrame reaching the output this soon after a relay barge-in is that barge-in's own."""
PLAYOUT_MARGIN_S: Final = 0.1
"""The relay may still hold audio this long after its position says it played (its own lead and jitter)."""


class SplitRelayParams(TransportParams):
    """Pipecat's transport parameters, with audio in and out on, plus the relay's own.

    ``audio_in_sample_rate`` / ``audio_out_sample_rate`` default to the pipeline's (``PipelineParams``);
    the channel counts follow the call's (``CALL_START``).
    """

    audio_in_enabled: bool = True
    audio_out_enabled: bool = True
    send_ahead_ms: int = Field(default=120, ge=FRAME_MS, le=2000)
    """How far ahead of real time audio is handed to the relay (it paces playout itself)."""
    response_gap_ms: int = Field(default=200, ge=FRAME_MS, le=10_000)
    """Silence after the audio sent so far has played out that ends a response, when Pipecat does not
    say the bot stopped speaking (plain ``OutputAudioRawFrame``s carry no speaking state)."""
    encoder: EncoderSettings | None = None
    """Outbound Opus (bitrate, FEC, DTX); the SDK's defaults when None."""
    interim_transcripts: bool = False
    """Also send ``InterimTranscriptionFrame``s as ``transcript.interim`` events."""
    assistant_transcripts: bool = True
    """Send the bot's spoken text (``TTSTextFrame``, as it plays) as ``transcript.final`` events."""


@dataclass
class RelayBargeInFrame(SystemFrame):
    """Pushed downstream right after the interruption a relay barge-in caused.

    ``heard_ms``: how much of the interrupted response the caller heard, in ms of the pipeline's own
    output audio (what an LLM context is truncated to, like OpenAI Realtime's ``audio_end_ms``).
    """

    heard_ms: int
    played_samples: int  # 48 kHz samples of the response the relay played out
    dropped_frames: int  # 20 ms frames the relay flushed from its queue
    response_seq: int  # AUDIO_OUT seq of the last frame the caller was sent


@dataclass
class TransportStats:
    """What one call's transport did (for tests, logs and benchmarks)."""

    frames_in: int = 0
    frames_out: int = 0
    relay_barge_ins: int = 0
    pipeline_interruptions: int = 0
    clears_sent: int = 0
    clears_acked: int = 0
    events_in: int = 0
    events_out: int = 0
    events_refused: int = 0
    responses: int = 0


PipelineFactory = Callable[["SplitRelayTransport", InferenceCall], Awaitable["BasePipeline | PipelineWorker"]]
"""``async def factory(transport, call) -> Pipeline | PipelineWorker``: builds one call's pipeline."""


class SplitRelayTransport(BaseTransport):
    """One call as a Pipecat transport: ``transport.input()`` / ``transport.output()`` in a pipeline."""

    def __init__(
        self,
        call: InferenceCall,
        params: SplitRelayParams | None = None,
        *,
        name: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        super().__init__(name=name, input_name=input_name, output_name=output_name)
        self.call = call
        channels = call.info.channels
        self.params = (params or SplitRelayParams()).model_copy(
            update={"audio_in_channels": channels, "audio_out_channels": channels}
        )
        self.stats = TransportStats()
        self.stages = StageMarks(call)
        """The call's stage marks: the observer marks Pipecat's stages; ``mark`` any stage of your own."""
        self.media_time: int | None = None
        """Media time (AUDIO_IN, 48 kHz) at the end of the latest caller frame handed to the pipeline."""
        self._relay_interrupted_at: float | None = None
        self._disconnected = False
        self._input = SplitRelayInputTransport(self, self.params, name=input_name)
        self._output = SplitRelayOutputTransport(self, self.params, name=output_name)
        for event in (
            "on_client_connected",
            "on_client_disconnected",
            "on_barge_in",
            "on_relay_event",
            "on_mark_reached",
        ):
            self._register_event_handler(event)

    def input(self) -> SplitRelayInputTransport:
        return self._input

    def output(self) -> SplitRelayOutputTransport:
        return self._output

    def send_event(self, event: dict[str, Any], *, reliable: bool = False) -> bool:
        """Send a JSON event to the relay (made JSON-safe first); False when refused (too big, call over)."""
        try:
            safe = json.loads(json.dumps(event, default=str))
            sent = self.call.send_event(safe, reliable=reliable)
        except ValueError as exc:  # wire.WireError: no "type", too large for a datagram
            self.stats.events_refused += 1
            logger.warning("call %s: event not sent (%s)", self.call.info.call, exc)
            return False
        if self.call.ended:
            return False
        self.stats.events_out += 1
        return sent is not None or not reliable

    async def _client_disconnected(self) -> None:
        if not self._disconnected:
            self._disconnected = True
            await self._call_event_handler("on_client_disconnected", self.call)


class SplitRelayInputTransport(BaseInputTransport):
    """Caller audio as ``InputAudioRawFrame``s; relay barge-ins, marks and events into the pipeline."""

    def __init__(self, transport: SplitRelayTransport, params: SplitRelayParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport
        self._call = transport.call
        self._readers: list[asyncio.Task[None]] = []
        self._connected = False

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        if not self._readers:
            self._readers = [
                self.create_task(self._read_audio(), "relay_audio"),
                self.create_task(self._read_events(), "relay_events"),
            ]
        if not self._connected:
            self._connected = True
            await self.push_frame(ClientConnectedFrame())
            await self._transport._call_event_handler("on_client_connected", self._call)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._stop_readers()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._stop_readers()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop_readers()

    async def _stop_readers(self) -> None:
        readers, self._readers = self._readers, []
        for task in readers:
            await self.cancel_task(task)

    async def _read_audio(self) -> None:
        """What ``call.pcm(rate)`` does (the SDK's decoder), keeping each frame's media time: a stage
        turn starts at the media time the pipeline had heard up to when it decided the user stopped."""
        transport = self._transport
        channels = self._call.info.channels
        stats = transport.stats
        decoder = CallerAudioDecoder(self.sample_rate, "int16", channels)
        async for frame in self._call.frames():  # ends with the call
            transport.media_time = (frame.timestamp + FRAME_SAMPLES) & U32
            for chunk in decoder.push(frame.seq, frame.payload):  # bounded: a gap over 200 ms is not filled
                stats.frames_in += 1
                await self.push_audio_frame(
                    InputAudioRawFrame(audio=chunk.pcm, sample_rate=chunk.rate, num_channels=channels)
                )
        await transport._client_disconnected()

    async def _read_events(self) -> None:
        transport = self._transport
        async for event in self._call.events():  # ends with the call
            if isinstance(event, BargeInNotice):
                await self._relay_barge_in(event)
            elif isinstance(event, RelayEvent):
                transport.stats.events_in += 1
                await self.broadcast_frame(InputTransportMessageFrame, message=event.data)
                await transport._call_event_handler("on_relay_event", event.data)
            elif isinstance(event, MarkReached):
                await transport._call_event_handler("on_mark_reached", event.name, event.timestamp)

    async def _relay_barge_in(self, notice: BargeInNotice) -> None:
        transport = self._transport
        transport.stats.relay_barge_ins += 1
        heard_ms = transport.output()._relay_barge_in(notice)
        transport._relay_interrupted_at = asyncio.get_running_loop().time()
        await self.broadcast_interruption()
        report = notice.barge_in
        frame = RelayBargeInFrame(
            heard_ms=heard_ms,
            played_samples=report.played_samples,
            dropped_frames=report.dropped_frames,
            response_seq=report.response_seq,
        )
        await self.push_frame(frame)
        await transport._call_event_handler("on_barge_in", frame)


class SplitRelayOutputTransport(BaseOutputTransport):
    """The pipeline's audio as 20 ms Opus frames to the relay; its interruptions as CLEAR."""

    def __init__(self, transport: SplitRelayTransport, params: SplitRelayParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport
        self._call = transport.call
        self._lead_s = params.send_ahead_ms / 1000
        self._gap_s = params.response_gap_ms / 1000
        self._encoder_settings = params.encoder
        self._speaker: PcmOutput | None = None
        self._generation = 0  # bumped by every interruption: a write waiting on the pace is dropped
        self._play_end = 0.0  # loop time at which the audio sent so far has played out
        self._end_timer: asyncio.TimerHandle | None = None
        self._in_response = False
        self._format_warned = False

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        if self._speaker is None:
            self._speaker = self._call.pcm_output(self.sample_rate, self._encoder_settings)
        await self.set_transport_ready(frame)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)  # the media sender has written everything queued before the EndFrame
        self._end_response()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        self._cancel_end_timer()

    async def cleanup(self) -> None:
        await super().cleanup()
        self._cancel_end_timer()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            self._interrupted()  # before the media sender flushes (and says the bot stopped speaking)
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        if isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            self._end_response()  # pushed by the media sender after the response's last write
        await super().push_frame(frame, direction)

    async def send_message(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> None:
        message = frame.message
        if isinstance(message, dict) and isinstance(message.get("type"), str) and message["type"]:
            event: dict[str, Any] = message
        else:
            event = {"type": "pipecat.message", "message": message}
        self._transport.send_event(event, reliable=True)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        speaker = self._speaker
        if speaker is None or self._call.ended:
            return False
        encoder = speaker.encoder
        if frame.sample_rate != encoder.input_rate or frame.num_channels != encoder.channels:
            if not self._format_warned:  # the media sender resamples to our rate: a misconfiguration
                self._format_warned = True
                logger.error(
                    "call %s: audio at %d Hz x%d, the transport sends %d Hz x%d: dropped",
                    self._call.info.call,
                    frame.sample_rate,
                    frame.num_channels,
                    encoder.input_rate,
                    encoder.channels,
                )
            return False
        generation = self._generation
        loop = asyncio.get_running_loop()
        wait = self._play_end - self._lead_s - loop.time()
        if wait > 0:  # like an audio device: block until this chunk is within the lead
            await asyncio.sleep(wait)
            if generation != self._generation:
                return False  # interrupted meanwhile: never played
        now = loop.time()
        self._cancel_end_timer()
        self._in_response = True
        sent = speaker.send(frame.audio)
        self._transport.stats.frames_out += sent
        self._play_end = max(self._play_end, now) + sent * FRAME_MS / 1000
        self._end_timer = loop.call_at(max(self._play_end, now) + self._gap_s, self._end_response)
        return True

    # -- interruptions and response boundaries ----------------------------------------------------

    def _relay_barge_in(self, notice: BargeInNotice) -> int:
        """The relay flushed its queue: drop what is not framed; the heard position in our own ms."""
        self._reset_pace()
        if self._speaker is None:
            return 0
        self._in_response = False
        return self._speaker.interrupted(notice)

    def _interrupted(self) -> None:
        transport = self._transport
        relay_at = transport._relay_interrupted_at
        if (
            relay_at is not None
            and asyncio.get_running_loop().time() - relay_at < RELAY_INTERRUPTION_WINDOW_S
        ):
            transport._relay_interrupted_at = None  # the relay's own barge-in: its queue is already flushed
            return
        # Pipecat interrupts at every user turn; only audio not yet played out is worth a CLEAR.
        playing = self._play_end + PLAYOUT_MARGIN_S > asyncio.get_running_loop().time()
        self._reset_pace()
        transport.stats.pipeline_interruptions += 1
        if self._speaker is not None:
            self._speaker.encoder.clear()  # PCM not yet framed is dropped...
            self._speaker.end()  # ...and the next audio starts a new response (nothing left to send)
        self._in_response = False
        if not playing:
            return
        future = self._call.clear()
        if future is None:
            return
        transport.stats.clears_sent += 1

        def acked(done: asyncio.Future[bool]) -> None:
            if not done.cancelled() and done.exception() is None and done.result():
                transport.stats.clears_acked += 1

        future.add_done_callback(acked)

    def _reset_pace(self) -> None:
        self._generation += 1
        self._play_end = 0.0
        self._cancel_end_timer()

    def _end_response(self) -> None:
        self._cancel_end_timer()
        if self._speaker is None or not self._in_response:
            return
        self._in_response = False
        self._transport.stats.responses += 1
        sent = self._speaker.end()  # the encoder's tail, the last frame padded
        self._transport.stats.frames_out += sent

    def _cancel_end_timer(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None


class RelayEventObserver(BaseObserver):
    """Transcripts and tool calls, wherever they are in the pipeline, as wire EVENTs.

    - ``TranscriptionFrame`` → ``{"type": "transcript.final", "role": "user", "text", "user_id",
      "timestamp", "language"}`` (reliable); ``InterimTranscriptionFrame`` → ``transcript.interim``
      when ``interim_transcripts`` is on.
    - ``TTSTextFrame`` as it is played → ``{"type": "transcript.final", "role": "assistant", "text"}``.
    - ``FunctionCallInProgressFrame`` → ``{"type": "tool_call.started", "tool_call_id", "name",
      "arguments"}``; ``FunctionCallResultFrame`` → ``tool_call.result`` (with ``result``);
      ``FunctionCallCancelFrame`` → ``tool_call.cancelled`` (all reliable).
    - Stage marks (``agent.stage``, through ``transport.stages``): see :class:`PipecatStages`.
    """

    def __init__(self, transport: SplitRelayTransport) -> None:
        super().__init__(observe_every_push=True)  # TTS text counts when the output pushes it (played)
        self._transport = transport
        self._params = transport.params
        self.stages = PipecatStages(transport)

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, AudioRawFrame):
            if isinstance(frame, TTSAudioRawFrame) and data.first_push:
                self.stages.on_frame(frame)
            return
        send = self._transport.send_event
        if isinstance(frame, TTSTextFrame):
            if data.source is self._transport.output() and self._params.assistant_transcripts:
                send({"type": "transcript.final", "role": "assistant", "text": frame.text})
            return
        if not data.first_push:
            return
        if frame.broadcast_sibling_id is not None and data.direction != FrameDirection.DOWNSTREAM:
            return
        self.stages.on_frame(frame)
        if isinstance(frame, TranscriptionFrame):
            send(_transcript("transcript.final", frame), reliable=True)
        elif isinstance(frame, InterimTranscriptionFrame) and self._params.interim_transcripts:
            send(_transcript("transcript.interim", frame))
        elif isinstance(frame, FunctionCallInProgressFrame):
            send(
                {
                    "type": "tool_call.started",
                    "tool_call_id": frame.tool_call_id,
                    "name": frame.function_name,
                    "arguments": frame.arguments,
                },
                reliable=True,
            )
        elif isinstance(frame, FunctionCallResultFrame):
            send(
                {
                    "type": "tool_call.result",
                    "tool_call_id": frame.tool_call_id,
                    "name": frame.function_name,
                    "result": frame.result,
                },
                reliable=True,
            )
        elif isinstance(frame, FunctionCallCancelFrame):
            send(
                {
                    "type": "tool_call.cancelled",
                    "tool_call_id": frame.tool_call_id,
                    "name": frame.function_name,
                },
                reliable=True,
            )


class PipecatStages:
    """Pipecat's own frames as stage marks, so any pipeline reports its stages with no code of its own.

    - A turn starts when the user stopped speaking: ``UserStoppedSpeakingFrame`` (Pipecat's user turn, after
      its turn analyzer), or ``VADUserStoppedSpeakingFrame`` in a pipeline that has no user turns (a VAD
      processor alone, like the parrot). Its ``detected_at`` is the transport's media time then.
    - ``stt_final``: the first ``TranscriptionFrame`` after that; one that came during the user's turn,
      before it ended, is marked as the turn starts (0 ms: the transcript was ready at the decision).
    - ``llm_first_token``: the first ``LLMTextFrame`` after an ``LLMFullResponseStartFrame``.
    - ``tts_started``: the first ``TTSStartedFrame`` (the TTS request); ``tts_first_byte``: the first
      ``TTSAudioRawFrame`` (its first audio).

    Each counts once per turn (StageMarks); anything before the first turn (a greeting) is not a stage.
    """

    def __init__(self, transport: SplitRelayTransport) -> None:
        self._transport = transport
        self.marks = transport.stages
        self._user_turns = False  # the pipeline has Pipecat user turns: VAD frames do not end turns
        self._listening = False  # the user is in a turn that has not ended yet
        self._final_heard = False  # a final transcript came during that turn
        self._llm_started = False

    def on_frame(self, frame: Frame) -> None:
        """One frame's first push (downstream for broadcast frames)."""
        marks = self.marks
        if isinstance(frame, UserStartedSpeakingFrame) or (
            isinstance(frame, VADUserStartedSpeakingFrame) and not self._user_turns
        ):
            self._user_turns = self._user_turns or isinstance(frame, UserStartedSpeakingFrame)
            self._listening, self._final_heard = True, False
        elif isinstance(frame, UserStoppedSpeakingFrame) or (
            isinstance(frame, VADUserStoppedSpeakingFrame) and not self._user_turns
        ):
            self._user_turns = self._user_turns or isinstance(frame, UserStoppedSpeakingFrame)
            marks.turn_started(self._transport.media_time)
            self._listening, self._llm_started = False, False
            if self._final_heard:
                self._final_heard = False
                marks.mark(STT_FINAL)
        elif isinstance(frame, TranscriptionFrame):
            if self._listening:
                self._final_heard = True
            elif STT_FINAL not in marks:
                marks.mark(STT_FINAL)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._llm_started = True
        elif isinstance(frame, LLMTextFrame):
            if self._llm_started and LLM_FIRST_TOKEN not in marks:
                marks.mark(LLM_FIRST_TOKEN)
        elif isinstance(frame, TTSStartedFrame):
            if TTS_STARTED not in marks:
                marks.mark(TTS_STARTED)
        elif isinstance(frame, TTSAudioRawFrame) and TTS_FIRST_BYTE not in marks:
            marks.mark(TTS_FIRST_BYTE)


def _transcript(kind: str, frame: TranscriptionFrame | InterimTranscriptionFrame) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "role": "user",
        "text": frame.text,
        "user_id": frame.user_id,
        "timestamp": frame.timestamp,
    }
    if frame.language is not None:
        event["language"] = str(getattr(frame.language, "value", frame.language))
    return event


class PipecatAgent:
    """An ``InferenceServer`` handler that runs one Pipecat pipeline per call.

    ``InferenceServer(PipecatAgent(factory), host, port)``: for each call the factory gets a fresh
    :class:`SplitRelayTransport` and the call and returns a ``Pipeline`` (run with ``pipeline_params``,
    RTVI off) or its own ``PipelineWorker``. Each call gets its own ``WorkerRunner``; the pipeline is
    cancelled when the call ends, and the call ends (``agent_done``) when the pipeline does.
    """

    def __init__(
        self,
        factory: PipelineFactory,
        *,
        params: SplitRelayParams | None = None,
        pipeline_params: PipelineParams | None = None,
        cancel_timeout: float = 5.0,
    ) -> None:
        if not 0.1 <= cancel_timeout <= 60:
            raise ValueError(f"cancel_timeout: must be 0.1..60 seconds, got {cancel_timeout}")
        self.factory = factory
        self.params = params or SplitRelayParams()
        self.pipeline_params = pipeline_params or PipelineParams()
        self.cancel_timeout = cancel_timeout
        self.transports: dict[int, SplitRelayTransport] = {}  # live calls, by wire call id

    async def __call__(self, call: InferenceCall) -> None:
        transport = SplitRelayTransport(call, self.params)
        built = await self.factory(transport, call)
        if isinstance(built, PipelineWorker):
            worker = built
        elif isinstance(built, BasePipeline):
            worker = PipelineWorker(built, params=self.pipeline_params, enable_rtvi=False)
        else:
            raise TypeError(f"pipeline factory: must return a Pipeline or PipelineWorker, got {built!r}")
        worker.add_observer(RelayEventObserver(transport))
        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(worker)
        self.transports[call.call_id] = transport
        logger.info("call %s: pipeline started", call.info.call)
        run = asyncio.create_task(runner.run(), name=f"pipecat-{call.call_id:x}")
        ended = asyncio.create_task(call.wait_ended())
        try:
            await asyncio.wait({run, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                await worker.cancel(reason=f"call ended ({call.end_reason})")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run), self.cancel_timeout)
            if run.done() and not run.cancelled():
                run.result()  # the pipeline's own failure ends the call as agent_error
        finally:
            self.transports.pop(call.call_id, None)
            for task in (run, ended):
                task.cancel()
            await asyncio.gather(run, ended, return_exceptions=True)
            logger.info("call %s: pipeline finished (%s)", call.info.call, transport.stats)
