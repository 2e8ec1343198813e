"""The default barge-in confirmer: Silero VAD (the model pipecat-ai ships) on onnxruntime, on CPU.

Speech confirms, a level-loud non-speech sound (white noise, a tone) is rejected; the decision comes from
the onset frame on, including frames that arrived before the candidate did.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from splitrelay.inference.vad import WINDOW, SileroVad, VadConfirmer, silero_model_path
from tests.opus_fixtures import encode, tone

UTTERANCE = Path(__file__).resolve().parents[2] / "scripts" / "devtools" / "assets" / "utterance.wav"


def speech_frames() -> list[bytes]:
    """About 3.3 s of speech (espeak-ng, 48 kHz mono int16) as 20 ms Opus frames."""
    with wave.open(str(UTTERANCE)) as file:
        pcm = np.frombuffer(file.readframes(file.getnframes()), dtype=np.int16)
    return encode(pcm[: pcm.size - pcm.size % 960])


def noise(ms: int, dbfs: float = -20.0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(18)
    n = ms * 48
    return (rng.standard_normal(n) * 32767 * 10 ** (dbfs / 20)).clip(-32768, 32767).astype(np.int16)


def first_loud(frames: list[bytes]) -> int:
    """Index of the first frame that is not near-silence (the utterance's onset)."""
    from splitrelay.inference.speech import SpeechDetector

    detector = SpeechDetector(-45.0)
    return next(i for i, f in enumerate(frames) if detector.is_speech(f))


def judge(frames: list[bytes], onset: int, confirmer: VadConfirmer) -> tuple[bool | None, int]:
    """Feed frames up to the onset, open the candidate (as the relay would, one frame late), feed on."""
    verdict: bool | None = None
    for i, frame in enumerate(frames):
        verdict = confirmer.on_audio(i, i * 960, frame)
        if i == onset + 1:
            verdict = confirmer.on_candidate(onset * 960)
        if verdict is not None:
            return verdict, i - onset
    return verdict, len(frames)


def test_the_model_ships_with_an_installed_package_and_runs_on_cpu() -> None:
    assert silero_model_path().is_file()
    vad = SileroVad()
    assert vad.probability(np.zeros(WINDOW, dtype=np.float32)) < 0.5
    with pytest.raises(ValueError, match="window: must be 512"):
        vad.probability(np.zeros(100, dtype=np.float32))


def test_speech_is_confirmed_within_a_few_windows() -> None:
    frames = speech_frames()
    onset = first_loud(frames)
    verdict, after = judge(frames, onset, VadConfirmer())
    assert verdict is True
    assert after <= 13  # 8 windows of 32 ms at most (256 ms), in 20 ms frames


@pytest.mark.parametrize("kind", ["noise", "tone"])
def test_loud_non_speech_is_rejected(kind: str) -> None:
    signal = noise(600) if kind == "noise" else tone(600, freq=1000.0, peak_dbfs=-10.0)
    frames = encode(np.concatenate((np.zeros(4800, dtype=np.int16), signal)))
    onset = first_loud(frames)
    verdict, _ = judge(frames, onset, VadConfirmer())
    assert verdict is False


def test_nothing_is_decided_without_a_candidate() -> None:
    confirmer = VadConfirmer()
    assert all(confirmer.on_audio(i, i * 960, f) is None for i, f in enumerate(speech_frames()[:60]))
    assert confirmer.windows_run == 0  # no decoding or model run while no candidate is open


def test_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="threshold"):
        VadConfirmer(threshold=1.5, vad=SileroVad())
    with pytest.raises(ValueError, match="confirm_windows, max_windows"):
        VadConfirmer(confirm_windows=9, max_windows=8, vad=SileroVad())
