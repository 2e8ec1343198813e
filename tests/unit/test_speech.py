"""Speech detection per packet (RFC 6464 level, else a real Opus decode) and end-of-speech tracking."""

from __future__ import annotations

import numpy as np
import pytest

from splitrelay.inference.speech import EndOfSpeech, SpeechDetector, SpeechEnded, SpeechStarted, dbov
from tests.opus_fixtures import UTTERANCE, clip

F = 960  # samples per 20 ms frame


# ---- per-packet decision ----------------------------------------------------------------------


def test_level_path_uses_the_threshold_in_dbov() -> None:
    det = SpeechDetector(threshold_dbov=-40.0)
    assert det.is_speech(b"ignored", level=30)
    assert det.is_speech(b"ignored", level=40)
    assert not det.is_speech(b"ignored", level=41)
    assert not det.is_speech(b"ignored", level=127)
    assert det.decoded_frames == 0  # the level path never decodes


def test_the_level_decides_by_default_and_the_voice_bit_only_when_asked() -> None:
    # Chromium sets V=1 on every packet (even digital silence, level 127) unless DTX is negotiated,
    # so by default only the level counts; the V bit is opt-in for senders known to set it truthfully.
    assert not SpeechDetector(-40.0).is_speech(b"x", level=127, voice=True)
    assert not SpeechDetector(-40.0).is_speech(b"x", level=90, voice=True)
    assert SpeechDetector(-40.0).is_speech(b"x", level=20, voice=False)
    assert SpeechDetector(-40.0, use_voice_bit=True).is_speech(b"x", level=90, voice=True)


def test_opus_path_classifies_real_frames() -> None:
    audio = clip(UTTERANCE)
    det = SpeechDetector()
    decided = [det.is_speech(frame) for frame in audio.frames]
    assert det.decoded_frames == len(audio.frames)
    for i, (truth, got) in enumerate(zip(audio.speech, decided, strict=True)):
        if truth:
            assert got, f"tone frame {i} judged silent"
        elif i == 0 or not audio.speech[i - 1]:
            # The frame right after a burst still holds its tail (Opus look-ahead), so only
            # frames preceded by silence must be silent.
            assert not got, f"silent frame {i} judged speech"
    assert sum(decided) >= sum(audio.speech)


def test_opus_path_respects_the_threshold() -> None:
    quiet = clip((("silence", 100), ("tone", 200)), peak_dbfs=-60.0)
    loud_only = SpeechDetector(threshold_dbov=-45.0)
    sensitive = SpeechDetector(threshold_dbov=-75.0)
    assert not any(loud_only.is_speech(f) for f in quiet.frames)
    assert any(sensitive.is_speech(f) for f in quiet.frames[5:])


def test_frame_level_matches_the_source_level() -> None:
    audio = clip((("tone", 200),), peak_dbfs=-12.0)  # sine RMS is 3 dB under the peak: -15 dBov
    det = SpeechDetector()
    levels = [det.frame_dbov(f) for f in audio.frames]
    assert all(-17.0 < level < -13.0 for level in levels[3:])


def test_dtx_frames_are_silence_without_decoding() -> None:
    det = SpeechDetector()
    assert not det.is_speech(b"\xf8")
    assert not det.is_speech(b"\xf8\xff")
    assert det.decoded_frames == 0
    assert det._decoder is None  # created lazily, only when a frame needs decoding


def test_garbage_payload_is_silence_and_the_decoder_survives() -> None:
    det = SpeechDetector()
    assert not det.is_speech(b"\xff\xff\xff\xff")
    assert det.decode_errors == 1
    audio = clip((("tone", 200),))
    assert any(det.is_speech(f) for f in audio.frames)


def test_dbov() -> None:
    assert dbov(np.ones(960, dtype=np.float32)) == pytest.approx(0.0)
    sine = np.sin(np.linspace(0, 2 * np.pi * 20, 960, endpoint=False)).astype(np.float32)
    assert dbov(sine) == pytest.approx(-3.01, abs=0.01)
    assert dbov(np.zeros((2, 960), dtype=np.float32)) == -127.0
    assert dbov(np.zeros(0, dtype=np.float32)) == -127.0
    assert dbov(np.full(960, 1e-9, dtype=np.float32)) == -127.0


def test_detector_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"threshold_dbov: must be -127..0 dBov, got 3"):
        SpeechDetector(threshold_dbov=3)
    with pytest.raises(ValueError, match=r"channels: must be 1 or 2, got 6"):
        SpeechDetector(channels=6)


# ---- end of speech ----------------------------------------------------------------------------


def feed(tracker: EndOfSpeech, pattern: str, start_ts: int = 0) -> list[tuple[int, object]]:
    """Feed one frame per character ('S' speech, '.' silence); returns (frame index, event)."""
    events: list[tuple[int, object]] = []
    for i, ch in enumerate(pattern):
        event = tracker.update((start_ts + i * F) & 0xFFFFFFFF, ch == "S")
        if event is not None:
            events.append((i, event))
    return events


def test_start_on_first_speech_frame_and_end_after_the_silence_threshold() -> None:
    tracker = EndOfSpeech(silence_ms=500)
    pattern = "..." + "S" * 10 + "." * 25 + "..."
    events = feed(tracker, pattern)
    assert events == [
        (3, SpeechStarted(3 * F)),
        (37, SpeechEnded(started=3 * F, last_speech_end=13 * F, detected_at=38 * F)),
    ]
    assert not tracker.speaking


def test_pause_shorter_than_the_threshold_stays_in_the_utterance() -> None:
    tracker = EndOfSpeech(silence_ms=500)
    events = feed(tracker, "S" * 5 + "." * 24 + "S" * 5 + "." * 25)
    assert [type(e).__name__ for _, e in events] == ["SpeechStarted", "SpeechEnded"]
    assert events[1][1] == SpeechEnded(0, 34 * F, 59 * F)


def test_onset_needs_consecutive_speech() -> None:
    tracker = EndOfSpeech(silence_ms=200, onset_ms=60)
    events = feed(tracker, ".S.SS.SSS")
    assert events == [(8, SpeechStarted(6 * F))]


def test_dtx_gap_counts_as_silence_by_media_time() -> None:
    tracker = EndOfSpeech(silence_ms=500)
    assert tracker.update(0, True) == SpeechStarted(0)
    # DTX: the next packets arrive 400 ms apart; media time, not packet count, ends the utterance.
    assert tracker.update(20 * F, False) is None
    assert tracker.update(40 * F, False) == SpeechEnded(0, F, 41 * F)


def test_tick_and_remaining_end_speech_without_packets() -> None:
    tracker = EndOfSpeech(silence_ms=100)
    assert tracker.remaining(0) is None
    tracker.update(0, True)
    assert tracker.remaining(F) == 4800
    assert tracker.remaining(3 * F) == 4800 - 2 * F
    assert tracker.tick(5 * F) is None
    assert tracker.tick(6 * F) == SpeechEnded(0, F, 6 * F)
    assert tracker.tick(7 * F) is None


def test_late_frame_does_not_move_the_end_backwards() -> None:
    tracker = EndOfSpeech(silence_ms=100)
    tracker.update(10 * F, True)
    tracker.update(11 * F, True)
    tracker.update(5 * F, True)  # reordered, older
    assert tracker.remaining(12 * F) == 4800


def test_timestamps_wrap() -> None:
    tracker = EndOfSpeech(silence_ms=100)
    start = 2**32 - 2 * F
    events = feed(tracker, "SSSS" + "." * 5, start_ts=start)
    assert events == [(0, SpeechStarted(start)), (8, SpeechEnded(start, 2 * F, 7 * F))]


def test_force_end() -> None:
    tracker = EndOfSpeech()
    assert tracker.force_end(0) is None
    tracker.update(0, True)
    assert tracker.force_end(5 * F) == SpeechEnded(0, F, 5 * F)
    assert not tracker.speaking


def test_tracker_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"silence_ms: must be 20..10000, got 0"):
        EndOfSpeech(silence_ms=0)
    with pytest.raises(ValueError, match=r"onset_ms: must be 20..1000, got 5000"):
        EndOfSpeech(onset_ms=5000)
