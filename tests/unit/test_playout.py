"""Outbound playout: real-time frames leave at once, bursts are paced, barge-in flushes and reports."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from splitrelay.relay.playout import FRAME_NS, MAX_QUEUE_FRAMES, SAMPLES_PER_FRAME, Playout


class Harness:
    """A Playout driven by a manual clock and a manual timer list."""

    def __init__(self, lead_ms: int = 60, tail_ms: int = 120) -> None:
        self.now = 1_000_000_000
        self.sent: list[tuple[bytes, int, bool, int]] = []
        self.marks: list[tuple[str, int]] = []
        self.timers: list[tuple[int, Callable[[], None]]] = []
        self.dwell: list[int] = []
        self.p = Playout(
            lambda payload, ts, marker: self.sent.append((payload, ts, marker, self.now)),
            lambda name, ts: self.marks.append((name, ts)),
            lambda delay, fn: self.timers.append((self.now + int(delay * 1e9), fn)),
            lead_ms=lead_ms,
            tail_ms=tail_ms,
            clock=lambda: self.now,
            observe_dwell_ns=self.dwell.append,
        )

    def advance(self, ns: int) -> None:
        """Move the clock, firing due timers in order (bounded: at most 10,000 timers)."""
        end = self.now + ns
        for _ in range(10_000):
            due = [t for t in self.timers if t[0] <= end]
            if not due:
                break
            first = min(due, key=lambda t: t[0])
            self.timers.remove(first)
            self.now = max(self.now, first[0])
            first[1]()
        self.now = end


def test_frames_arriving_in_real_time_leave_immediately_with_contiguous_timestamps() -> None:
    h = Harness()
    for i in range(10):
        h.p.push_frame(bytes([i]), seq=i, marker=i == 0)
        h.advance(FRAME_NS)
    assert [s[0] for s in h.sent] == [bytes([i]) for i in range(10)]
    assert [s[3] for s in h.sent] == [1_000_000_000 + i * FRAME_NS for i in range(10)]  # sent on arrival
    ts = [s[1] for s in h.sent]
    assert all(b - a == SAMPLES_PER_FRAME for a, b in itertools.pairwise(ts))
    assert [s[2] for s in h.sent] == [True] + [False] * 9  # marker only at the talk-spurt start
    assert max(h.dwell) == 0


def test_a_burst_is_paced_at_most_lead_ahead_of_real_time() -> None:
    h = Harness(lead_ms=60)
    for i in range(50):
        h.p.push_frame(bytes([i]), seq=i, marker=False)
    assert len(h.sent) == 4  # slots at 0, 20, 40, 60 ms are within the 60 ms lead
    assert h.p.queued_frames == 46
    h.advance(50 * FRAME_NS)
    assert len(h.sent) == 50
    for k, (_, _, _, at) in enumerate(h.sent):
        assert at >= 1_000_000_000 + k * FRAME_NS - 60_000_000  # never more than the lead early
    assert [s[0] for s in h.sent] == [bytes([i]) for i in range(50)]


def test_a_gap_starts_a_new_spurt_with_marker_and_timestamps_that_follow_wall_time() -> None:
    h = Harness()
    h.p.push_frame(b"a", seq=0, marker=False)
    h.advance(1_000_000_000)  # one second of silence
    h.p.push_frame(b"b", seq=1, marker=False)
    (_, ts_a, m_a, _), (_, ts_b, m_b, _) = h.sent
    assert m_a and m_b
    assert ts_b - ts_a == 48_000  # one second at 48 kHz


def test_barge_in_flushes_the_queue_and_reports_what_was_heard() -> None:
    h = Harness(lead_ms=60)
    for i in range(100):
        h.p.push_frame(b"x", seq=i, marker=i == 0)
    h.advance(500_000_000)  # half a second of the reply has been played
    assert h.p.playing()
    report = h.p.barge_in()
    sent = len(h.sent)
    assert report.dropped_frames == 100 - sent
    assert report.response_seq == sent - 1
    # Heard = sent minus what is still ahead of the wall clock (at most the lead plus the last frame).
    assert (sent * SAMPLES_PER_FRAME) - 80 * 48 <= report.played_samples <= sent * SAMPLES_PER_FRAME
    assert abs(report.played_samples - 500 * 48) <= SAMPLES_PER_FRAME
    h.advance(FRAME_NS * 10)
    assert len(h.sent) == sent  # nothing more goes out after the flush


def test_the_heard_position_takes_off_the_lag_and_never_goes_below_zero() -> None:
    h = Harness(lead_ms=0)
    for i in range(25):  # half a second in real time: nothing ahead of the clock
        h.p.push_frame(b"x", seq=i, marker=i == 0)
        h.advance(FRAME_NS)
    assert h.p.heard() == 25 * SAMPLES_PER_FRAME
    assert h.p.heard(lag_ns=70_000_000) == 25 * SAMPLES_PER_FRAME - 70 * 48
    assert h.p.heard(lag_ns=10 * 1_000_000_000) == 0
    assert h.p.barge_in(lag_ns=100_000_000).played_samples == 25 * SAMPLES_PER_FRAME - 100 * 48


def test_marks_are_reported_when_playout_reaches_them_and_never_when_flushed() -> None:
    h = Harness(lead_ms=0)
    h.p.push_frame(b"1", seq=0, marker=True)
    h.p.push_mark("after-1")
    h.p.push_frame(b"2", seq=1, marker=False)
    h.p.push_mark("after-2")
    assert [m[0] for m in h.marks] == ["after-1"]
    h.advance(FRAME_NS)
    assert [m[0] for m in h.marks] == ["after-1", "after-2"]
    h.p.push_frame(b"3", seq=2, marker=False)
    h.p.push_frame(b"4", seq=3, marker=False)
    h.p.push_mark("never")
    assert h.p.flush() == 2  # frames 3 and 4 were waiting for their 20 ms slots
    h.advance(FRAME_NS * 5)
    assert [m[0] for m in h.marks] == ["after-1", "after-2"]  # a flushed mark is never echoed


def test_clear_drops_queued_and_late_frames_before_its_timestamp_only() -> None:
    h = Harness(lead_ms=0)
    for i in range(5):  # timestamps 0, 960, ... 3840 (inference's outbound stream)
        h.p.push_frame(bytes([i]), seq=i, marker=i == 0, timestamp=i * 960)
    h.p.push_mark("at-4800", timestamp=4800)
    assert len(h.sent) == 1 and h.p.queued_frames == 4
    assert h.p.clear_before(2 * 960) == 1  # frame 1 dropped; 2, 3, 4 stay
    h.p.push_frame(b"late", seq=9, marker=False, timestamp=960)  # in flight before the CLEAR
    assert h.p.frames_dropped_cleared == 2
    h.p.push_frame(bytes([5]), seq=5, marker=False, timestamp=5 * 960)
    h.advance(FRAME_NS * 10)
    assert [s[0] for s in h.sent] == [bytes([i]) for i in (0, 2, 3, 4, 5)]
    assert [m[0] for m in h.marks] == ["at-4800"]


def test_the_marker_resets_the_played_counter_for_a_new_response() -> None:
    h = Harness(lead_ms=0)
    for i in range(5):
        h.p.push_frame(b"x", seq=i, marker=i == 0)
        h.advance(FRAME_NS)
    h.p.push_frame(b"y", seq=5, marker=True)
    assert h.p.response_frames == 1


def test_queue_is_bounded() -> None:
    h = Harness(lead_ms=0)
    for i in range(MAX_QUEUE_FRAMES + 10):
        h.p.push_frame(b"x", seq=i, marker=False)
    assert len(h.sent) == 1  # the first left at once; the queue then filled to its bound
    assert h.p.queued_frames == MAX_QUEUE_FRAMES
    assert h.p.frames_dropped_full == 9


def test_playing_ends_after_the_tail() -> None:
    h = Harness(tail_ms=120)
    h.p.push_frame(b"x", seq=0, marker=True)
    assert h.p.playing()
    h.advance(FRAME_NS + 121_000_000)
    assert not h.p.playing()


def test_lead_is_validated() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1000 ms"):
        Playout(lambda *a: None, lambda *a: None, lambda *a: None, lead_ms=5000)


def test_after_a_barge_in_nothing_is_playing_until_new_audio_goes_out() -> None:
    h = Harness(lead_ms=60, tail_ms=120)
    for i in range(20):
        h.p.push_frame(b"x", seq=i, marker=i == 0)
    h.advance(100_000_000)
    assert h.p.playing()
    h.p.barge_in()
    assert not h.p.playing()  # within the tail of what was sent, but already interrupted once
    h.p.push_frame(b"late", seq=20, marker=False)  # in flight from the interrupted response
    assert h.p.queued_frames == 0 and h.p.frames_dropped_interrupted == 1
    assert not h.p.playing()
    h.p.push_frame(b"y", seq=21, marker=True)  # the next response
    assert h.p.playing() and h.p.queued_frames + len([s for s in h.sent if s[0] == b"y"]) == 1


def _push_positions(h: Harness, first: int, count: int, *, marker_first: bool = False) -> None:
    for i in range(first, first + count):
        h.p.push_frame(bytes([i % 256]), seq=i, marker=marker_first and i == first, timestamp=i * 960)


def test_frames_held_up_by_a_stall_catch_up_at_once_on_the_same_timeline() -> None:
    h = Harness(lead_ms=60)
    for i in range(5):  # real time
        _push_positions(h, i, 1, marker_first=i == 0)
        h.advance(FRAME_NS)
    h.advance(130_000_000)  # the relay stalls: nothing is read for 130 ms (6.5 frames' worth)
    _push_positions(h, 5, 7)  # ... then what piled up arrives at once
    assert len(h.sent) == 12 and h.p.queued_frames == 0  # all of it left at once: nothing queued
    ts = [s[1] for s in h.sent]
    assert all(b - a == SAMPLES_PER_FRAME for a, b in itertools.pairwise(ts))  # one contiguous stream
    assert [s[2] for s in h.sent] == [True] + [False] * 11  # no new talk spurt
    assert h.p.frames_caught_up == 7  # every one of them left behind its slot
    h.advance(FRAME_NS)
    _push_positions(h, 12, 1)  # and the next real-time frame is not held behind a backlog
    assert len(h.sent) == 13 and h.p.queued_frames == 0


def test_a_stall_with_the_old_reset_would_have_left_a_lasting_queue() -> None:
    """The same stall without inference positions (timestamp 0 each): the timeline restarts at the
    wall clock, the burst is paced, and every later real-time frame waits behind it."""
    h = Harness(lead_ms=60)
    for i in range(5):
        h.p.push_frame(b"x", seq=i, marker=i == 0)
        h.advance(FRAME_NS)
    h.advance(130_000_000)
    for i in range(5, 12):
        h.p.push_frame(b"x", seq=i, marker=False)
    assert h.p.queued_frames == 3 and h.p.frames_caught_up == 0
    h.advance(FRAME_NS)
    h.p.push_frame(b"x", seq=12, marker=False)
    assert h.p.queued_frames == 3  # the backlog stays as long as the stream does


def test_a_stall_longer_than_catch_up_starts_a_new_spurt_at_the_wall_clock() -> None:
    h = Harness(lead_ms=60)
    h.p.catch_up_ns = 100_000_000
    _push_positions(h, 0, 1, marker_first=True)
    h.advance(FRAME_NS + 150_000_000)  # behind by more than catch_up
    _push_positions(h, 1, 1)
    (_, ts0, _, _), (_, ts1, m1, _) = h.sent
    assert m1 and ts1 - ts0 == (FRAME_NS + 150_000_000) * 48 // 1_000_000  # timestamps follow wall time
    assert h.p.frames_caught_up == 0


def test_a_new_response_or_a_gap_in_positions_never_catches_up() -> None:
    h = Harness(lead_ms=60)
    _push_positions(h, 0, 1, marker_first=True)
    h.advance(FRAME_NS * 3)
    _push_positions(h, 1, 1, marker_first=True)  # a new response (MARKER): a new spurt
    h.advance(FRAME_NS * 3)
    h.p.push_frame(b"gap", seq=2, marker=False, timestamp=10 * 960)  # positions jumped: a new spurt
    assert [s[2] for s in h.sent] == [True, True, True]
    assert h.p.frames_caught_up == 0


def test_frames_after_a_flush_do_not_catch_up_over_the_hole() -> None:
    h = Harness(lead_ms=0)
    _push_positions(h, 0, 5, marker_first=True)  # 1 sent, 4 queued
    assert h.p.flush() == 4
    h.advance(FRAME_NS * 5)
    _push_positions(h, 5, 1)  # continues the flushed positions, but after a hole
    assert h.sent[-1][2] and h.p.frames_caught_up == 0


def test_a_late_timer_sends_every_due_frame_without_restarting_the_timeline() -> None:
    h = Harness(lead_ms=0)
    _push_positions(h, 0, 10, marker_first=True)  # a burst: 1 sent, 9 paced
    h.now += 5 * FRAME_NS + 10_000_000  # the loop stalled past the next five slots
    h.advance(0)
    assert len(h.sent) == 6  # the slots at 20..100 ms were due: back to back, on one timeline
    ts = [s[1] for s in h.sent]
    assert all(b - a == SAMPLES_PER_FRAME for a, b in itertools.pairwise(ts))
    assert [s[2] for s in h.sent] == [True] + [False] * 5
