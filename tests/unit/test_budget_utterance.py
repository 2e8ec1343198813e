"""What the budget is measured from: the prepared utterance as the caller sends it, and the reply check.

The caller's levels are checked against RFC 6464's definition computed here independently, and its
Opus frames by decoding them back.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from splitrelay.devtools.call import (
    CallOptions,
    RelayAccess,
    _Reply,
    check_turns,
    check_url,
    find_run,
    find_run_with_gaps,
    is_loopback,
)
from splitrelay.devtools.utterance import (
    DEFAULT_UTTERANCE,
    FRAME_SAMPLES,
    UtteranceError,
    load_utterance,
    read_pcm,
)
from splitrelay.inference.speech import SpeechDetector
from splitrelay.relay.media.rtp import RtpPacket

KEY = b"k" * 32


def write_wav(
    path: Path, samples: np.ndarray, *, rate: int = 48_000, channels: int = 1, width: int = 2
) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def test_the_prepared_utterance_is_sent_as_a_browser_would() -> None:
    utterance = load_utterance()
    pcm = read_pcm(DEFAULT_UTTERANCE)
    padded = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, dtype=np.int16)])
    assert len(utterance.frames) == padded.size // FRAME_SAMPLES == 163
    assert all(0 < len(frame) <= 1275 for frame in utterance.frames)  # one Opus packet each (RFC 6716)
    chunks = padded.reshape(-1, FRAME_SAMPLES).astype(np.float64) / 32768.0
    power = (chunks * chunks).mean(axis=1)
    expected = [127 if p <= 0 else min(127, round(-10 * np.log10(p))) for p in power]  # RFC 6464: -dBov
    assert list(utterance.levels) == expected
    detector = SpeechDetector()
    decoded = [detector.frame_dbov(frame) for frame in utterance.frames[:60]]
    steady = [i for i in range(1, 59) if max(expected[i - 1 : i + 2]) <= 35]  # speech, not a transition
    assert len(steady) >= 10
    assert all(abs(decoded[i] + expected[i]) <= 8 for i in steady)  # the frames decode to what was said
    assert list(utterance.speech) == [level <= 45 for level in utterance.levels]  # -45 dBov threshold
    # 200 ms of lead-in, speech, then the trailing silence espeak-ng left: the last speech frame is 145.
    assert utterance.speech.index(True) == 10
    assert utterance.last_speech_index == 145
    assert utterance.duration_ms == 3260


def test_the_silence_frame_decodes_to_silence() -> None:
    utterance = load_utterance()
    detector = SpeechDetector()
    assert detector.frame_dbov(utterance.silence_frame) < -90
    assert detector.frame_dbov(utterance.frames[12]) > -45  # a frame of speech, for contrast


def test_a_stricter_threshold_moves_the_last_speech_frame() -> None:
    strict = load_utterance(threshold_dbov=-20.0)
    assert strict.last_speech_index < 145
    assert all(level <= 20 for level, speech in zip(strict.levels, strict.speech, strict=True) if speech)


@pytest.mark.parametrize(
    ("kwargs", "samples", "message"),
    [
        ({"rate": 16_000}, 16_000, "sample rate must be 48000 Hz, got 16000"),
        ({"channels": 2}, 9_600, "channels must be 1"),
        ({"width": 1}, 9_600, "sample width must be 16 bits, got 8"),
        ({}, 960, "duration must be 100 ms to 60 s, got 20 ms"),
        ({}, 48_000 * 61, "duration must be 100 ms to 60 s, got 61000 ms"),
    ],
)
def test_unusable_wav_files_are_refused_by_name(
    tmp_path: Path, kwargs: dict[str, int], samples: int, message: str
) -> None:
    dtype = np.uint8 if kwargs.get("width") == 1 else np.int16
    path = write_wav(tmp_path / "bad.wav", np.zeros(samples, dtype=dtype), **kwargs)
    with pytest.raises(UtteranceError, match=message) as info:
        load_utterance(path)
    assert "bad.wav" in str(info.value)


def test_other_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(UtteranceError, match="no such file"):
        load_utterance(tmp_path / "missing.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(UtteranceError, match="not a PCM WAV file"):
        load_utterance(tmp_path / "text.wav")
    silent = write_wav(tmp_path / "silent.wav", np.zeros(48_000, dtype=np.int16))
    with pytest.raises(UtteranceError, match="no frame reaches the speech threshold"):
        load_utterance(silent)
    with pytest.raises(UtteranceError, match=r"threshold_dbov: must be -127\.\.0"):
        load_utterance(threshold_dbov=3.0)


def test_find_run_locates_a_byte_identical_run() -> None:
    frames = (b"a", b"b", b"c", b"b", b"c", b"d")
    assert find_run(frames, [b"b", b"c", b"d"]) == 3
    assert find_run(frames, [b"b", b"c"]) == 1
    assert find_run(frames, [b"a", b"c"]) is None  # not contiguous
    assert find_run(frames, []) is None
    assert find_run(frames, [*frames, b"e"]) is None


def test_on_an_impaired_leg_a_reply_may_miss_frames_but_never_change_or_reorder_them() -> None:
    frames = tuple(bytes([i]) for i in range(20))
    assert find_run_with_gaps(frames, [b"\x03", b"\x04", b"\x06", b"\x07"], 0.5) == 3  # frame 5 lost
    assert find_run_with_gaps(frames, [b"\x03", b"\x06", b"\x04"], 0.5) is None  # out of order
    assert find_run_with_gaps(frames, [b"\x03", b"\xff"], 0.5) is None  # never sent
    assert find_run_with_gaps(frames, [b"\x00", b"\x09"], 0.5) is None  # 8 of 10 missing: over the bound
    assert find_run_with_gaps(frames, [b"\x00", b"\x09"], 0.9) == 0
    assert find_run_with_gaps(frames, [], 0.5) is None


def test_a_reply_is_read_in_sequence_order_without_duplicates() -> None:
    reply = _Reply()
    for seq, payload in ((65534, b"a"), (0, b"c"), (65535, b"b"), (0, b"c"), (1, b"d")):  # wraps, reordered
        reply.add(RtpPacket(111, False, seq, 0, 1, payload), 1.0)
    assert reply.in_sequence_order() == [b"a", b"b", b"c", b"d"]
    assert reply.payloads == [b"a", b"c", b"b", b"c", b"d"]  # as they arrived


def test_caller_inputs_are_checked_by_name() -> None:
    assert check_turns(3) == 3
    with pytest.raises(ValueError, match=r"turns: must be 1\.\.50, got 0"):
        check_turns(0)
    with pytest.raises(ValueError, match=r"reply_gap_s: must be 0\.06\.\.5\.0 s, got 0\.01"):
        CallOptions(reply_gap_s=0.01)
    with pytest.raises(ValueError, match="edge url: expected an http"):
        check_url("ftp://x", "edge url")
    with pytest.raises(ValueError, match="relay signing key must be at least 32 bytes"):
        RelayAccess("http://127.0.0.1:1", b"short")
    access = RelayAccess("http://127.0.0.1:1", KEY)
    assert "kkkk" not in repr(access)
    assert (
        is_loopback("http://127.0.0.1:8787")
        and is_loopback("http://[::1]:1")
        and is_loopback("http://localhost")
    )
    assert not is_loopback("https://edge.example.com")
