"""A Pipecat "parrot" behind the relay: it says back what the caller said, once Silero VAD hears them stop.

Run it with ``splitrelay agent pipecat splitrelay.integrations.pipecat_parrot:factory``. This file is the
example in docs/agents.md (a test checks they are the same).
"""

from __future__ import annotations

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputTransportMessageUrgentFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from splitrelay.inference.sdk import InferenceCall
from splitrelay.integrations.pipecat import SplitRelayTransport

RATE = 16_000  # Silero VAD runs at 8 or 16 kHz
PRE_ROLL_S = 0.4  # VAD confirms speech start_secs late: keep what came just before
MAX_UTTERANCE_S = 20.0


class Parrot(FrameProcessor):
    """Collects the caller's speech between VAD start and stop, then speaks it back as TTS audio.

    Speech that starts while the parrot is talking interrupts it: Pipecat's own interruption, which the
    transport turns into a CLEAR for the relay.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pre_roll = bytearray()
        self.utterance = bytearray()
        self.listening = False
        self.bot_speaking = False
        self.replies = 0
        self.interruptions = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            if self.listening and len(self.utterance) < MAX_UTTERANCE_S * RATE * 2:
                self.utterance += frame.audio
            else:
                self.pre_roll = (self.pre_roll + frame.audio)[-int(PRE_ROLL_S * RATE) * 2 :]
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self.listening = True
            self.utterance = bytearray(self.pre_roll)
            if self.bot_speaking:  # the caller talks over the parrot: stop it
                self.interruptions += 1
                await self.broadcast_interruption()
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self.listening:
            self.listening = False
            await self.reply(bytes(self.utterance))
        elif isinstance(frame, BotStartedSpeakingFrame):
            self.bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.bot_speaking = False
        elif isinstance(frame, InterruptionFrame):  # from upstream: the relay's barge-in
            self.interruptions += 1
        await self.push_frame(frame, direction)

    async def reply(self, audio: bytes) -> None:
        self.replies += 1
        utterance_ms = len(audio) * 1000 // (RATE * 2)
        # An application message leaves as a wire EVENT (the relay keeps it in the call's record).
        message = {"type": "parrot.reply", "reply": self.replies, "utterance_ms": utterance_ms}
        await self.push_frame(OutputTransportMessageUrgentFrame(message=message))
        await self.push_frame(TTSStartedFrame())
        await self.push_frame(TTSAudioRawFrame(audio=audio, sample_rate=RATE, num_channels=1))
        await self.push_frame(TTSStoppedFrame())


async def factory(transport: SplitRelayTransport, call: InferenceCall) -> PipelineWorker:
    """One pipeline per call: the caller's audio, Silero VAD (ONNX, bundled with pipecat-ai), the parrot."""
    vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=0.5)))
    pipeline = Pipeline([transport.input(), vad, Parrot(), transport.output()])
    params = PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
    return PipelineWorker(pipeline, params=params, enable_rtvi=False, idle_timeout_secs=None)
