"""The caller's prepared utterance: a WAV file turned into what a browser would put on the wire.

A browser sends 20 ms Opus frames with an RFC 6464 level per packet and its VAD decision in the V bit;
the headless caller sends the same: the WAV is encoded once at start (PyAV's libopus, `voip`, 32 kbps,
as browsers do for speech), each frame's level is measured on its PCM, and a frame is speech when that
level reaches the threshold. The frames are reused for every turn, so the agent's echo can be checked
byte for byte against what was sent.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import av
import numpy as np

from splitrelay.inference.speech import DEFAULT_THRESHOLD_DBOV, dbov

SAMPLE_RATE: Final = 48_000
FRAME_SAMPLES: Final = 960  # 20 ms
FRAME_MS: Final = 20
OPUS_BITRATE: Final = 32_000
MIN_FRAMES: Final = 5  # 100 ms
MAX_FRAMES: Final = 3_000  # 60 s: a turn longer than that is not a latency test
SILENCE_LEVEL: Final = 127
DEFAULT_UTTERANCE: Final = Path(__file__).resolve().parent / "assets" / "utterance.wav"


class UtteranceError(ValueError):
    """The utterance file cannot be used; the message names the file, the property and the limit."""


@dataclass(frozen=True)
class Utterance:
    """One turn's audio as the caller sends it, plus the silence frame sent between turns."""

    name: str
    frames: tuple[bytes, ...]
    """One Opus packet per 20 ms frame."""
    levels: tuple[int, ...]
    """RFC 6464 level of each frame's PCM, 0..127 (-dBov)."""
    speech: tuple[bool, ...]
    """The caller's VAD per frame (level at or above the threshold): sent as the V bit."""
    silence_frame: bytes
    """Opus of 20 ms of digital silence, sent whenever the caller is not speaking."""
    threshold_dbov: float

    @property
    def last_speech_index(self) -> int:
        """Index of the utterance's last speech frame: voice-to-voice is measured from its send time."""
        for index in range(len(self.speech) - 1, -1, -1):
            if self.speech[index]:
                return index
        raise UtteranceError(f"{self.name}: no frame reaches the speech threshold {self.threshold_dbov} dBov")

    @property
    def duration_ms(self) -> int:
        return len(self.frames) * FRAME_MS


def frame_levels(pcm: np.ndarray[Any, Any]) -> list[int]:
    """RFC 6464 level of each 20 ms frame of int16 PCM (a partial last frame is measured as it is)."""
    levels = []
    for start in range(0, pcm.size, FRAME_SAMPLES):
        chunk = pcm[start : start + FRAME_SAMPLES].astype(np.float64) / 32768.0
        levels.append(min(SILENCE_LEVEL, round(-dbov(chunk))))
    return levels


def encode_opus(pcm: np.ndarray[Any, Any], bitrate: int = OPUS_BITRATE) -> list[bytes]:
    """Encode int16 mono PCM (a whole number of frames) into one Opus packet per 20 ms frame."""
    if pcm.size == 0 or pcm.size % FRAME_SAMPLES:
        raise UtteranceError(f"pcm: length must be a positive multiple of {FRAME_SAMPLES} samples")
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = SAMPLE_RATE
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bitrate
    encoder.options = {"application": "voip"}
    encoder.open()
    packets: list[bytes] = []
    for start in range(0, pcm.size, FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(
            pcm[None, start : start + FRAME_SAMPLES], format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        packets.extend(bytes(p) for p in encoder.encode(frame))
    expected = pcm.size // FRAME_SAMPLES
    if len(packets) != expected:  # libopus has no look-ahead delay in packets: one in, one out
        raise UtteranceError(f"libopus returned {len(packets)} packets for {expected} frames")
    return packets


def read_pcm(path: Path) -> np.ndarray[Any, Any]:
    """48 kHz mono 16-bit PCM from a WAV file, or an UtteranceError naming what does not fit."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width, count = (
                wav.getframerate(),
                wav.getnchannels(),
                wav.getsampwidth(),
                wav.getnframes(),
            )
            if rate != SAMPLE_RATE:
                raise UtteranceError(f"{path}: sample rate must be {SAMPLE_RATE} Hz, got {rate}")
            if channels != 1:
                raise UtteranceError(f"{path}: channels must be 1 (mono), got {channels}")
            if width != 2:
                raise UtteranceError(f"{path}: sample width must be 16 bits, got {width * 8}")
            if not MIN_FRAMES * FRAME_SAMPLES <= count <= MAX_FRAMES * FRAME_SAMPLES:
                raise UtteranceError(
                    f"{path}: duration must be {MIN_FRAMES * FRAME_MS} ms to "
                    f"{MAX_FRAMES * FRAME_MS // 1000} s, got {count * 1000 // SAMPLE_RATE} ms"
                )
            data = wav.readframes(count)
    except FileNotFoundError:
        raise UtteranceError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise UtteranceError(
            f"{path}: not a PCM WAV file ({str(exc) or 'too short for a WAV header'})"
        ) from None
    except OSError as exc:
        raise UtteranceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def load_utterance(
    path: Path = DEFAULT_UTTERANCE, *, threshold_dbov: float = DEFAULT_THRESHOLD_DBOV
) -> Utterance:
    """Read, pad to whole frames with silence, encode and classify an utterance WAV."""
    if not -127.0 <= threshold_dbov <= 0.0:
        raise UtteranceError(f"threshold_dbov: must be -127..0 dBov, got {threshold_dbov}")
    pcm = read_pcm(path)
    padding = -pcm.size % FRAME_SAMPLES
    if padding:
        pcm = np.concatenate([pcm, np.zeros(padding, dtype=np.int16)])
    levels = frame_levels(pcm)
    speech = tuple(-level >= threshold_dbov for level in levels)
    # A fresh encoder for silence, several frames in so the encoder's start-up is behind it.
    silence = encode_opus(np.zeros(FRAME_SAMPLES * 5, dtype=np.int16))[-1]
    utterance = Utterance(
        name=path.name,
        frames=tuple(encode_opus(pcm)),
        levels=tuple(levels),
        speech=speech,
        silence_frame=silence,
        threshold_dbov=threshold_dbov,
    )
    _ = utterance.last_speech_index  # refuse a file with no speech now, not mid-call
    return utterance
