"""Speech or silence, one packet at a time; and when an utterance has ended.

Barge-in has to react within one packet, so the detector answers per frame: from the RFC 6464
audio level when the client negotiated it (free: it is in the RTP header), otherwise by decoding
just that Opus frame (about 50 µs with PyAV) and measuring its RMS level. DTX frames (1-2 bytes)
are silence without decoding. ``EndOfSpeech`` turns per-frame decisions into utterance start/end
on the media clock, so DTX gaps (one packet per 400 ms) still count as elapsed silence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from splitrelay.inference.wire import FRAME_SAMPLES, SAMPLE_RATE, U32, u32_diff

if TYPE_CHECKING:
    import numpy as np

DEFAULT_THRESHOLD_DBOV: Final = -45.0  # speech at WebRTC levels sits near -20..-35 dBov; rooms below -55
DEFAULT_SILENCE_MS: Final = 500
DTX_MAX_BYTES: Final = 2  # an Opus packet this short carries no audio (TOC only, or DTX)
SILENCE_DBOV: Final = -127.0


_codec_modules: tuple[Any, Any] | None = None


def codec_modules() -> tuple[Any, Any]:
    """PyAV and numpy, imported on first need: only frames without an RFC 6464 level are decoded, and
    the SDK's base install (splitrelay[audio] brings both) must import without them."""
    global _codec_modules
    if _codec_modules is None:
        try:
            import av
            import numpy
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"decoding Opus frames that carry no audio level needs {exc.name}: "
                "pip install 'splitrelay[audio]'",
                name=exc.name,
            ) from None
        _codec_modules = (av, numpy)
    return _codec_modules


def dbov(samples: np.ndarray[Any, Any]) -> float:
    """RMS level of float samples in [-1, 1] as dBov, floored at -127 (the RFC 6464 range)."""
    flat = samples.reshape(-1)
    if flat.size == 0:
        return SILENCE_DBOV
    mean_square = float(codec_modules()[1].dot(flat, flat)) / flat.size
    if not mean_square > 0.0 or not math.isfinite(mean_square):
        return SILENCE_DBOV
    return max(SILENCE_DBOV, 10.0 * math.log10(mean_square))


class SpeechDetector:
    """Per-call speech/silence decision; owns the call's Opus decoder, created on first need."""

    __slots__ = (
        "_channels",
        "_decoder",
        "decode_errors",
        "decoded_frames",
        "threshold_dbov",
        "use_voice_bit",
    )

    def __init__(
        self,
        threshold_dbov: float = DEFAULT_THRESHOLD_DBOV,
        *,
        use_voice_bit: bool = False,
        channels: int = 1,
    ) -> None:
        if not -127.0 <= threshold_dbov <= 0.0:
            raise ValueError(f"threshold_dbov: must be -127..0 dBov, got {threshold_dbov}")
        if channels not in (1, 2):
            raise ValueError(f"channels: must be 1 or 2, got {channels}")
        self.threshold_dbov = threshold_dbov
        self.use_voice_bit = use_voice_bit
        self._channels = channels
        self._decoder: Any = None
        self.decoded_frames = 0
        self.decode_errors = 0

    def is_speech(self, payload: bytes, level: int | None = None, voice: bool = False) -> bool:
        """Decide one frame. ``level`` is the RFC 6464 level (0..127 -dBov) or None if absent."""
        if level is not None:
            if voice and self.use_voice_bit:
                return True
            return -level >= self.threshold_dbov
        return self.frame_dbov(payload) >= self.threshold_dbov

    def frame_dbov(self, payload: bytes) -> float:
        """Level of one Opus frame, decoding it; undecodable frames count as silence."""
        if len(payload) <= DTX_MAX_BYTES:
            return SILENCE_DBOV
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = self._new_decoder()
        av, np = codec_modules()
        try:
            frames = decoder.decode(av.Packet(payload))
        except (av.error.FFmpegError, ValueError, OSError):
            self.decode_errors += 1
            return SILENCE_DBOV
        self.decoded_frames += 1
        if not frames:
            return SILENCE_DBOV
        if len(frames) == 1:
            return dbov(frames[0].to_ndarray())
        return dbov(np.concatenate([f.to_ndarray().reshape(-1) for f in frames]))

    def _new_decoder(self) -> Any:
        decoder = codec_modules()[0].CodecContext.create("opus", "r")
        decoder.sample_rate = SAMPLE_RATE
        decoder.layout = "mono" if self._channels == 1 else "stereo"
        return decoder


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    timestamp: int  # media timestamp (48 kHz) of the first frame of the onset


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    started: int  # media timestamp of the first speech frame
    last_speech_end: int  # media timestamp just after the last speech frame
    detected_at: int  # media time at which the silence threshold was reached


class EndOfSpeech:
    """Utterance boundaries from per-frame decisions, on the 48 kHz media clock (u32, wrap-safe).

    Speech starts after ``onset_ms`` of consecutive speech frames (20 ms: the first speech frame)
    and ends once ``silence_ms`` of media time passed since the end of the last speech frame;
    shorter pauses stay inside the utterance. ``tick`` advances time when no frame arrives.
    """

    __slots__ = ("_last_speech_end", "_onset", "_run_start", "_silence", "_started", "speaking")

    def __init__(self, silence_ms: int = DEFAULT_SILENCE_MS, *, onset_ms: int = 20) -> None:
        if not 20 <= silence_ms <= 10_000:
            raise ValueError(f"silence_ms: must be 20..10000, got {silence_ms}")
        if not 20 <= onset_ms <= 1_000:
            raise ValueError(f"onset_ms: must be 20..1000, got {onset_ms}")
        self._silence = silence_ms * SAMPLE_RATE // 1000
        self._onset = onset_ms * SAMPLE_RATE // 1000
        self.speaking = False
        self._run_start: int | None = None
        self._started = 0
        self._last_speech_end = 0

    def update(self, timestamp: int, is_speech: bool) -> SpeechStarted | SpeechEnded | None:
        """Feed one frame (its timestamp and decision); returns a boundary when one is crossed."""
        end = (timestamp + FRAME_SAMPLES) & U32
        if not self.speaking:
            if not is_speech:
                self._run_start = None
                return None
            if self._run_start is None:
                self._run_start = timestamp
            if u32_diff(end, self._run_start) < self._onset:
                return None
            self.speaking = True
            self._started = self._run_start
            self._last_speech_end = end
            self._run_start = None
            return SpeechStarted(self._started)
        if is_speech:
            if u32_diff(end, self._last_speech_end) > 0:
                self._last_speech_end = end
            return None
        return self.tick(end)

    def tick(self, now: int) -> SpeechEnded | None:
        """Media time ``now`` reached without speech: ends the utterance once the silence is long enough."""
        if not self.speaking or u32_diff(now, self._last_speech_end) < self._silence:
            return None
        self.speaking = False
        return SpeechEnded(self._started, self._last_speech_end, now)

    def remaining(self, now: int) -> int | None:
        """Samples of silence still needed at media time ``now`` to end the utterance (None when idle)."""
        if not self.speaking:
            return None
        return max(0, self._silence - u32_diff(now, self._last_speech_end))

    def force_end(self, now: int) -> SpeechEnded | None:
        """End the current utterance now (e.g. it hit a length limit)."""
        if not self.speaking:
            return None
        self.speaking = False
        return SpeechEnded(self._started, self._last_speech_end, now)
