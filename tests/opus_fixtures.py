"""Real Opus frames for tests: generated signals (tone bursts, silence) encoded with PyAV's libopus.

Tests that carry or classify audio use these instead of made-up bytes, so the speech detector
decodes what a browser would send: 48 kHz mono, 20 ms frames, one packet per frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from splitrelay.devtools.utterance import encode_opus, frame_levels

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960
FRAME_MS = 20

Segment = tuple[str, int]  # ("tone" | "silence", duration in ms, a multiple of 20)


def _samples(ms: int) -> int:
    if ms <= 0 or ms % FRAME_MS:
        raise ValueError(f"duration: must be a positive multiple of {FRAME_MS} ms, got {ms}")
    return ms * SAMPLE_RATE // 1000


def tone(ms: int, *, freq: float = 440.0, peak_dbfs: float = -12.0) -> np.ndarray[Any, Any]:
    """A sine of ``ms`` milliseconds as int16 PCM (RMS is 3 dB below the peak)."""
    t = np.arange(_samples(ms)) / SAMPLE_RATE
    amplitude = 32767 * 10 ** (peak_dbfs / 20)
    return (np.sin(2 * math.pi * freq * t) * amplitude).astype(np.int16)


def silence(ms: int) -> np.ndarray[Any, Any]:
    return np.zeros(_samples(ms), dtype=np.int16)


def encode(signal: np.ndarray[Any, Any], *, bitrate: int = 32_000) -> list[bytes]:
    """Encode int16 mono PCM into one Opus packet per 20 ms frame, as WebRTC sends them."""
    return encode_opus(signal, bitrate)


def rfc6464_levels(signal: np.ndarray[Any, Any]) -> list[int]:
    """Per-frame RFC 6464 audio level (0..127 -dBov) of int16 PCM, as a browser would send it."""
    return frame_levels(signal)


@dataclass(frozen=True)
class OpusClip:
    frames: list[bytes]  # one Opus packet per 20 ms
    levels: list[int]  # RFC 6464 level of each frame's source PCM
    speech: list[bool]  # whether each frame's source PCM is tone (True) or silence


@lru_cache(maxsize=16)
def clip(segments: Sequence[Segment], *, peak_dbfs: float = -12.0) -> OpusClip:
    """Encode a sequence of ("tone" | "silence", ms) segments; cached, segments must be a tuple."""
    parts = []
    speech: list[bool] = []
    for kind, ms in segments:
        if kind == "tone":
            parts.append(tone(ms, peak_dbfs=peak_dbfs))
        elif kind == "silence":
            parts.append(silence(ms))
        else:
            raise ValueError(f"segment kind: must be 'tone' or 'silence', got {kind!r}")
        speech.extend([kind == "tone"] * (ms // FRAME_MS))
    signal = np.concatenate(parts)
    return OpusClip(encode(signal), rfc6464_levels(signal), speech)


# The utterance most tests use: lead-in silence, two words with a short pause, then 600 ms of silence
# (beyond the echo agent's default 500 ms end-of-speech threshold).
UTTERANCE: tuple[Segment, ...] = (
    ("silence", 200),
    ("tone", 300),
    ("silence", 100),
    ("tone", 200),
    ("silence", 600),
)
