"""The echo agent's VAD turn-taking (issue 18): with ``vad=True`` a loud non-speech sound neither starts
nor prolongs a turn, speech still does; the level path alone takes the noise for speech."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from splitrelay.inference.echo_agent import EchoConfig, _EchoCall
from splitrelay.inference.sdk import AudioFrame, InferenceCall
from tests.opus_fixtures import encode, rfc6464_levels

UTTERANCE = Path(__file__).resolve().parents[2] / "scripts" / "devtools" / "assets" / "utterance.wav"


class FakeCall:
    def __init__(self) -> None:
        self.info = SimpleNamespace(channels=1, call="c")
        self.events: list[dict[str, Any]] = []
        self.audio: list[bytes] = []
        self.next_audio_seq = 0

    def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def send_audio(self, payload: bytes, *, marker: bool = False) -> bool:
        self.audio.append(payload)
        return True


def signal(kind: str) -> np.ndarray[Any, Any]:
    silence = np.zeros(48 * 400, dtype=np.int16)
    if kind == "speech":
        with wave.open(str(UTTERANCE)) as file:
            body = np.frombuffer(file.readframes(file.getnframes()), dtype=np.int16)
    else:  # white noise at -20 dBFS: loud, not a voice
        body = (np.random.default_rng(4).standard_normal(48 * 1200) * 3277).astype(np.int16)
    pcm = np.concatenate((silence, body, silence, silence))
    return pcm[: pcm.size - pcm.size % 960]


async def replies(kind: str, *, vad: bool) -> list[dict[str, Any]]:
    call = FakeCall()
    session = _EchoCall(cast(InferenceCall, call), EchoConfig(vad=vad, silence_ms=300))
    pcm = signal(kind)
    for i, (payload, level) in enumerate(zip(encode(pcm), rfc6464_levels(pcm), strict=True)):
        session._on_frame(AudioFrame(payload, i, i * 960, False, level, False))
    await asyncio.sleep(0)
    if session.reply is not None:
        session.reply.cancel()
    return [e for e in call.events if e["type"] == "agent.reply"]


async def test_with_vad_noise_is_not_a_turn_and_speech_is() -> None:
    assert await replies("noise", vad=True) == []
    assert len(await replies("speech", vad=True)) >= 1


async def test_the_level_path_alone_takes_loud_noise_for_a_turn() -> None:
    assert len(await replies("noise", vad=False)) == 1  # what the VAD path fixes


def test_vad_threshold_is_checked() -> None:
    with pytest.raises(ValueError, match="vad_threshold"):
        EchoConfig(vad=True, vad_threshold=0.0)
