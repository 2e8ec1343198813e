"""PCM for agents (relay/inference/audio.py): loss concealment and FEC measured against the lossless
decode, resampling, streaming 20 ms framing of the agent's audio, and the heard-position arithmetic."""

from __future__ import annotations

import random
import wave
from pathlib import Path

import numpy as np
import pytest

from splitrelay.inference.audio import AgentAudioEncoder, CallerAudioDecoder, EncoderSettings, PcmChunk

UTTERANCE = Path(__file__).resolve().parents[2] / "scripts" / "devtools" / "assets" / "utterance.wav"


def speech_pcm() -> bytes:
    """About 3.3 s of speech (espeak-ng, 48 kHz mono int16), said twice for more losses to measure."""
    with wave.open(str(UTTERANCE)) as file:
        assert (file.getframerate(), file.getnchannels(), file.getsampwidth()) == (48_000, 1, 2)
        pcm: bytes = file.readframes(file.getnframes())
    return pcm * 2


def opus_frames(*, fec: bool) -> list[bytes]:
    encoder = AgentAudioEncoder(48_000, EncoderSettings(bitrate=24_000, fec=fec, expected_loss_pct=10))
    return encoder.push(speech_pcm()) + encoder.flush()


def decode(frames: list[bytes], lost: set[int], *, zero_fill: bool = False) -> np.ndarray:
    """The stream at 16 kHz as the agent gets it; ``zero_fill``: skip lost frames and insert silence
    (what an agent without concealment hears)."""
    decoder = CallerAudioDecoder(16_000)
    out: list[PcmChunk] = []
    for seq, frame in enumerate(frames):
        if seq in lost:
            continue
        chunks = decoder.push(seq, frame)
        if zero_fill:
            chunks = [c if not c.concealed else PcmChunk(bytes(len(c.pcm)), c.rate, c.seq, True, False)
                      for c in chunks]  # fmt: skip
        out += chunks
    assert [c.seq for c in out] == list(range(len(frames)))
    return np.frombuffer(b"".join(c.pcm for c in out), dtype=np.int16).astype(np.float64)


def segmental_snr(reference: np.ndarray, test: np.ndarray, lost: set[int]) -> float:
    """Mean SNR in dB over the lost frames that carry speech, each clipped to [-10, 35] dB (the usual
    segmental SNR; frames that were received decode alike in every variant and would only dilute it)."""
    n = 320  # 20 ms at 16 kHz
    values = []
    for seq in sorted(lost):
        ref, got = reference[seq * n : (seq + 1) * n], test[seq * n : (seq + 1) * n]
        energy = float(np.dot(ref, ref))
        if energy < n * 100.0**2:  # below about -50 dBov: silence, no speech to conceal
            continue
        noise = float(np.dot(ref - got, ref - got)) or 1e-9
        values.append(min(35.0, max(-10.0, 10.0 * np.log10(energy / noise))))
    assert len(values) >= 5, "too few lost speech frames to measure"
    return float(np.mean(values))


def losses(count: int, rate: float, seed: int) -> set[int]:
    rng = random.Random(seed)
    return {i for i in range(1, count) if rng.random() < rate}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concealment_beats_zero_filled_gaps_at_5_percent_loss(seed: int) -> None:
    frames = opus_frames(fec=True)
    lost = losses(len(frames), 0.05, seed)
    reference = decode(frames, set())
    concealed = segmental_snr(reference, decode(frames, lost), lost)
    zero_filled = segmental_snr(reference, decode(frames, lost, zero_fill=True), lost)
    assert concealed > zero_filled + 3.0, (concealed, zero_filled)


def test_in_band_fec_recovers_more_than_concealment_alone() -> None:
    results = {}
    for fec in (True, False):
        frames = opus_frames(fec=fec)
        lost = losses(len(frames), 0.05, 7)
        results[fec] = segmental_snr(decode(frames, set()), decode(frames, lost), lost)
    assert results[True] > results[False] + 1.0, results


def test_gaps_late_and_duplicate_packets_keep_one_forward_timeline() -> None:
    frames = opus_frames(fec=True)[:8]
    decoder = CallerAudioDecoder(16_000)
    got = decoder.push(65_534, frames[0]) + decoder.push(65_535, frames[1])
    got += decoder.push(2, frames[2])  # 0 and 1 lost across the wrap: one concealed, one from FEC
    got += decoder.push(1, frames[3]) + decoder.push(2, frames[2])  # late, then duplicate: dropped
    got += decoder.push(100, frames[4])  # a gap over 200 ms is not concealed: a new talk spurt
    assert [(c.seq, c.concealed, c.recovered) for c in got] == [
        (65_534, False, False),
        (65_535, False, False),
        (0, True, False),
        (1, True, True),
        (2, False, False),
        (100, False, False),
    ]
    assert (decoder.concealed, decoder.recovered) == (1, 1)
    assert all(len(c.pcm) == 640 for c in got)  # 20 ms of 16 kHz int16


@pytest.mark.parametrize(("rate", "sample_type"), [(16_000, "int16"), (24_000, "float32"), (22_050, "int16")])
def test_caller_audio_at_the_rate_and_type_the_agent_asks_for(rate: int, sample_type: str) -> None:
    frames = opus_frames(fec=False)[:100]  # 2 s
    decoder = CallerAudioDecoder(rate, sample_type)  # type: ignore[arg-type]
    chunks = [c for seq, frame in enumerate(frames) for c in decoder.push(seq, frame)]
    if sample_type == "float32":
        samples = np.concatenate([c.pcm for c in chunks])
        assert samples.dtype == np.float32 and np.abs(samples).max() <= 1.0
    else:
        samples = np.frombuffer(b"".join(c.pcm for c in chunks), dtype=np.int16)
    # soxr's HQ filter holds back about 30 ms while streaming; never more samples than 2 s hold.
    assert rate * 2 - rate // 20 <= len(samples) <= rate * 2


def test_the_agents_tts_stream_plays_from_its_first_20_ms() -> None:
    rng = np.random.default_rng(5)
    tone = (np.sin(np.arange(22_050) * 2 * np.pi * 220 / 22_050) * 8000).astype(np.int16)  # 1 s
    encoder = AgentAudioEncoder(22_050)
    first: list[bytes] = []
    fed = 0
    while not first:  # uneven chunks, as a TTS engine yields them
        size = int(rng.integers(50, 300))
        first = encoder.push(tone[fed : fed + size].tobytes())
        fed += size
    assert fed < 22_050 * 0.05  # the first frame leaves within 20 ms of audio plus the resampler's delay
    rest = encoder.push(tone[fed:].tobytes()) + encoder.flush()
    assert len(first) + len(rest) in (50, 51)  # 1 s in 20 ms frames, the last one padded
    # The caller heard 200 ms of this response (BARGE_IN's played_samples at 48 kHz); never more than given.
    assert encoder.heard_ms(9_600) == 200 and encoder.heard_ms(10**6) == 1000 and encoder.heard_ms(0) == 0
    assert not encoder.push(tone[:100].tobytes())  # a new response after flush: its own counts
    assert encoder.input_samples == 100 and encoder.frames_out == 0
    encoder.clear()
    assert encoder.flush() == [] and encoder.heard_ms(9_600) == 0


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"rate: must be 8000\.\.48000 Hz, got 96000"):
        CallerAudioDecoder(96_000)
    with pytest.raises(ValueError, match="sample_type: must be int16 or float32"):
        CallerAudioDecoder(16_000, "int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"bitrate: must be 6000\.\.510000"):
        EncoderSettings(bitrate=1)
    with pytest.raises(ValueError, match=r"pcm: int16 samples of 1 channel\(s\), got 3 bytes"):
        AgentAudioEncoder(16_000).push(b"abc")
