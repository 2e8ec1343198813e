"""Barge-in that pauses at once and confirms before it cuts (issue 18).

Playout: a pause holds every frame not yet sent; a resume plays them on from the paused frame, nothing
lost or repeated; a confirm flushes and reports what was heard. Call: the first voiced packet during
playback pauses and sends BARGE_CANDIDATE; inference's verdict (or, without one, the window's default
policy) confirms (flush + BARGE_IN) or rejects (resume).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from splitrelay.relay.call import Call, CallConfig
from splitrelay.relay.inference_link import RelayLink
from splitrelay.relay.media.peer import VoicePeer
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.playout import FRAME_NS, SAMPLES_PER_FRAME
from tests.unit.test_playout import Harness

# ---- playout ---------------------------------------------------------------------------------


def _burst(h: Harness, n: int) -> None:
    for i in range(n):
        h.p.push_frame(bytes([i]), seq=i, marker=i == 0, timestamp=i * SAMPLES_PER_FRAME)


def test_a_pause_holds_frames_and_a_resume_plays_on_with_nothing_lost_or_repeated() -> None:
    h = Harness(lead_ms=60)
    _burst(h, 30)
    h.advance(5 * FRAME_NS)  # frames 0..8 left (lead: 3 slots ahead)
    sent_before = len(h.sent)
    h.p.pause()
    h.advance(10 * FRAME_NS)
    assert len(h.sent) == sent_before  # nothing leaves while paused, timers or not
    h.p.push_frame(bytes([30]), seq=30, marker=False, timestamp=30 * SAMPLES_PER_FRAME)  # arrives paused
    assert len(h.sent) == sent_before
    assert h.p.playing()
    h.p.resume()
    h.advance(40 * FRAME_NS)
    assert [s[0] for s in h.sent] == [bytes([i]) for i in range(31)]  # exact sequence at the caller
    first_after = h.sent[sent_before]
    assert first_after[2]  # a new talk spurt: the pause plays as a gap, not as lateness
    ts_gap = first_after[1] - h.sent[sent_before - 1][1]
    assert ts_gap > SAMPLES_PER_FRAME  # the RTP clock moved on by the pause


def test_a_confirm_while_paused_flushes_what_was_held_and_reports_what_was_heard() -> None:
    h = Harness(lead_ms=60)
    _burst(h, 30)
    h.advance(5 * FRAME_NS)
    sent = len(h.sent)
    h.p.pause()
    heard_at_pause = h.p.heard()
    assert heard_at_pause < sent * SAMPLES_PER_FRAME  # the lead's frames are still in flight
    h.advance(5 * FRAME_NS)  # the in-flight frames have played out by now
    report = h.p.barge_in()
    assert report.played_samples == sent * SAMPLES_PER_FRAME
    assert report.dropped_frames == 30 - sent
    assert not h.p.paused and not h.p.playing()
    h.advance(10 * FRAME_NS)
    assert len(h.sent) == sent


def test_resume_without_a_pause_changes_nothing() -> None:
    h = Harness()
    _burst(h, 3)
    before = list(h.sent)
    h.p.resume()
    assert h.sent == before


# ---- call ------------------------------------------------------------------------------------


class FakeLink:
    """Records what the call sends to inference."""

    def __init__(self) -> None:
        self.candidates: list[tuple[int, int, int]] = []
        self.barge_ins: list[dict[str, int]] = []
        self.events: list[dict[str, Any]] = []

    def send_audio_in(self, *_args: Any) -> bool:
        return True

    def send_barge_candidate(
        self, call_id: int, candidate: int, *, played_samples: int, timestamp: int
    ) -> None:
        self.candidates.append((candidate, played_samples, timestamp))

    def send_barge_in(self, call_id: int, **report: int) -> None:
        self.barge_ins.append(report)

    def send_event(self, call_id: int, event: dict[str, Any], *, reliable: bool = False) -> None:
        self.events.append(event)


class FakeFastPath:
    closed = False
    rtt_ms: float | None = None

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int, bool]] = []

    def send(self, payload: bytes, timestamp: int, *, marker: bool) -> bool:
        self.sent.append((payload, timestamp, marker))
        return True


def _call(
    confirm_ms: int, sustain_ms: int = 100, heard_lag_ms: int = 20, retry_ms: int = 0
) -> tuple[Call, FakeLink, FakeFastPath]:
    link = FakeLink()
    config = CallConfig(
        barge_in_confirm_ms=confirm_ms,
        barge_in_sustain_ms=sustain_ms,
        heard_lag_ms=heard_lag_ms,
        barge_in_retry_ms=retry_ms,
    )
    call = Call("c1", "agent", cast(VoicePeer, object()), cast(RelayLink, link), config=config)
    call.wire_id = 7
    fp = FakeFastPath()
    call.fast_path = cast(Any, fp)
    return call, link, fp


_seq = iter(range(1_000_000))


def _packet(loud: bool) -> RtpPacket:
    n = next(_seq)
    return RtpPacket(111, False, n & 0xFFFF, n * SAMPLES_PER_FRAME, 1, b"\x78" * 40, 20 if loud else 90)


def _speak_over_reply(call: Call, frames: int = 50) -> None:
    """A long reply arrives as a burst; the caller is silent once, then speaks."""
    for i in range(frames):
        call.on_audio_out(i, i * SAMPLES_PER_FRAME, bytes([i]), i == 0)
    call._on_rtp(_packet(loud=False))
    call._on_rtp(_packet(loud=True))  # the onset: pause at once, candidate out


async def test_the_first_voiced_packet_pauses_at_once_and_sends_a_candidate() -> None:
    call, link, fp = _call(confirm_ms=500)
    _speak_over_reply(call)
    assert call.playout.paused
    assert len(link.candidates) == 1 and link.candidates[0][0] == 1
    sent = len(fp.sent)
    await asyncio.sleep(0.1)
    assert len(fp.sent) == sent  # nothing more reached the caller while the candidate waits
    assert link.barge_ins == []
    call._drop_candidate()


async def test_a_confirm_verdict_flushes_and_sends_barge_in_with_the_heard_position() -> None:
    call, link, fp = _call(confirm_ms=500)
    _speak_over_reply(call)
    sent = len(fp.sent)
    call.on_barge_verdict(1, True)
    assert len(link.barge_ins) == 1
    report = link.barge_ins[0]
    assert report["dropped_frames"] == 50 - sent
    assert report["played_samples"] <= sent * SAMPLES_PER_FRAME
    assert not call.playout.paused and not call.playout.playing()
    call.on_barge_verdict(1, False)  # late duplicate: ignored
    assert not call.playout.paused and call.barge_rejected == 0


async def test_a_reject_verdict_resumes_from_the_paused_frame_with_nothing_lost_or_repeated() -> None:
    call, link, fp = _call(confirm_ms=500)
    _speak_over_reply(call, frames=20)
    call.on_barge_verdict(2, True)  # a verdict for another candidate changes nothing
    assert call.playout.paused and link.barge_ins == []
    call.on_barge_verdict(1, False)
    assert not call.playout.paused
    for _ in range(100):  # bounded: 20 frames at 20 ms need about 0.4 s
        if len(fp.sent) == 20:
            break
        await asyncio.sleep(0.02)
    assert [s[0] for s in fp.sent] == [bytes([i]) for i in range(20)]
    assert link.barge_ins == [] and call.barge_rejected == 1


@pytest.mark.parametrize(("loud_after", "confirmed"), [(6, True), (0, False)])
async def test_without_a_verdict_the_window_applies_the_default_policy(
    loud_after: int, confirmed: bool
) -> None:
    call, link, _fp = _call(confirm_ms=80, sustain_ms=100)
    _speak_over_reply(call)
    for _ in range(loud_after):  # sustained speech by level (6 + the onset = 140 ms >= 100 ms)
        call._on_rtp(_packet(loud=True))
    for _ in range(6):
        call._on_rtp(_packet(loud=False))
    for _ in range(50):  # bounded wait for the 80 ms window
        if call._candidate is None:
            break
        await asyncio.sleep(0.02)
    assert call._candidate is None
    assert call.barge_by_policy == 1
    assert len(link.barge_ins) == (1 if confirmed else 0)
    assert call.playout.paused is False
    assert call.barge_rejected == (0 if confirmed else 1)


async def test_window_zero_flushes_at_once_as_before() -> None:
    call, link, _fp = _call(confirm_ms=0)
    _speak_over_reply(call)
    assert link.candidates == [] and len(link.barge_ins) == 1
    assert not call.playout.paused


async def test_a_candidate_rises_at_the_candidate_level_below_the_flush_threshold() -> None:
    call, link, _fp = _call(confirm_ms=500)
    for i in range(20):
        call.on_audio_out(i, i * SAMPLES_PER_FRAME, bytes([i]), i == 0)
    call._on_rtp(_packet(loud=False))
    n = next(_seq)
    call._on_rtp(RtpPacket(111, False, n & 0xFFFF, n * SAMPLES_PER_FRAME, 1, b"\x78" * 40, 46))  # -46 dBov
    assert len(link.candidates) == 1 and call.playout.paused  # -46 is above -50, below the -40 flush
    call._drop_candidate()
    call0, link0, _ = _call(confirm_ms=0)
    for i in range(20):
        call0.on_audio_out(i, i * SAMPLES_PER_FRAME, bytes([i]), i == 0)
    call0._on_rtp(_packet(loud=False))
    n = next(_seq)
    call0._on_rtp(RtpPacket(111, False, n & 0xFFFF, n * SAMPLES_PER_FRAME, 1, b"\x78" * 40, 46))
    assert link0.barge_ins == []  # without a window the -40 dBov flush threshold applies


async def test_a_clear_is_answered_with_what_the_caller_heard() -> None:
    call, link, fp = _call(confirm_ms=0)
    for i in range(30):  # a burst: four frames leave at once (the lead), the rest wait
        call.on_audio_out(i, i * SAMPLES_PER_FRAME, bytes([i]), i == 0)
    sent = len(fp.sent)
    call.on_clear(30 * SAMPLES_PER_FRAME)
    (event,) = link.events
    assert event == {
        "type": "relay.cleared",
        "timestamp": 30 * SAMPLES_PER_FRAME,
        "heard_samples": sent * SAMPLES_PER_FRAME,
        "dropped_frames": 30 - sent,
    }


def test_config_names_the_field_and_limit() -> None:
    with pytest.raises(ValueError, match=r"barge_in_confirm_ms must be 0\.\.2000"):
        CallConfig(barge_in_confirm_ms=5000)
    with pytest.raises(ValueError, match=r"barge_in_sustain_ms must be 20\.\.2000"):
        CallConfig(barge_in_sustain_ms=0)
    with pytest.raises(ValueError, match="barge_in_candidate_dbov"):
        CallConfig(barge_in_candidate_dbov=3.0)


@pytest.mark.parametrize("confirm_ms", [0, 500], ids=["flush", "candidate"])
async def test_the_heard_position_leaves_out_the_round_trip_and_the_unmeasured_lag(confirm_ms: int) -> None:
    """At the onset the caller's ear was a round trip (reply down, onset up) plus the jitter buffer
    behind what the relay had sent: a barge-in reports that much less than the sent position."""
    reports: list[int] = []
    for rtt_ms, lag_ms in ((None, 0), (40.0, 20)):
        call, link, fp = _call(confirm_ms=confirm_ms, heard_lag_ms=lag_ms)
        fp.rtt_ms = rtt_ms
        for i in range(20):  # a real-time reply: one frame per 20 ms, so nothing is ahead of the clock
            call.on_audio_out(i, i * SAMPLES_PER_FRAME, bytes([i]), i == 0)
            await asyncio.sleep(0.02)
        call._on_rtp(_packet(loud=False))
        call._on_rtp(_packet(loud=True))
        if confirm_ms:
            assert call.playout.paused
            call.on_barge_verdict(1, True)
            (candidate,) = link.candidates
            assert candidate[1] == link.barge_ins[0]["played_samples"]  # paused: no more was heard
        reports.append(link.barge_ins[0]["played_samples"])
        call._drop_candidate()
    clean, lagged = reports
    assert clean > 60 * 48  # the onset came well into the reply
    assert abs((clean - lagged) - 60 * 48) <= SAMPLES_PER_FRAME  # 40 ms RTT + 20 ms lag, within a frame


def test_the_heard_lag_is_checked() -> None:
    with pytest.raises(ValueError, match=r"heard_lag_ms must be 0\.\.1000"):
        CallConfig(heard_lag_ms=-1)


@pytest.mark.parametrize(("retry_ms", "candidates"), [(0, 1), (200, 2)])
async def test_speech_that_goes_on_after_a_reject_is_judged_again_only_with_a_retry(
    retry_ms: int, candidates: int
) -> None:
    call, link, _fp = _call(confirm_ms=500, retry_ms=retry_ms)
    _speak_over_reply(call, frames=200)
    call.on_barge_verdict(1, False)  # a quiet, breathy start the confirmer rejected
    for _ in range(12):  # the caller talks on, 240 ms without a silent packet
        call._on_rtp(_packet(loud=True))
    assert len(link.candidates) == candidates
    assert call.playout.paused is (candidates == 2)
    call._drop_candidate()
    with pytest.raises(ValueError, match=r"barge_in_retry_ms must be 0 or 100\.\.5000"):
        CallConfig(barge_in_retry_ms=50)
