"""The pacing contract of relay/playout.py, stated once so every pacer (today Python's ``Playout.pump``,
later a C-paced queue) can be held to it: with wake-ups that fire when asked, a frame leaves exactly when
its timeline slot comes within ``lead`` of now, or on arrival when that is later; never before, never
after. And the queue holds frames and named marks only: a response boundary rides on its first frame.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

import pytest

from splitrelay.relay.playout import FRAME_NS, SAMPLES_PER_FRAME, Playout

LEAD_MS = 60


class Paced:
    """A Playout on a fake clock whose wake-ups fire exactly when due; each send records its slot."""

    def __init__(self, lead_ms: int = LEAD_MS) -> None:
        self.now = 7_000_000_000
        self.heap: list[tuple[int, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.sent: list[tuple[int, int, int, bool]] = []
        """(seq, send time, timeline slot, RTP marker) of each frame that left."""
        self.arrival: dict[int, int] = {}
        self.seq = 0
        self.p = Playout(
            self._send,
            lambda _name, _ts: None,
            self._schedule,
            lead_ms=lead_ms,
            clock=lambda: self.now,
        )

    def _send(self, payload: bytes, _ts: int, marker: bool) -> None:
        seq = int.from_bytes(payload, "big")
        self.sent.append((seq, self.now, int(self.p.state.timeline_ns), marker))

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.heap, (self.now + round(delay * 1e9), next(self.order), fn))

    def push(self, marker: bool) -> None:
        self.seq += 1
        self.arrival[self.seq] = self.now
        self.p.push_frame(
            self.seq.to_bytes(4, "big"), self.seq, marker, (self.seq * SAMPLES_PER_FRAME) & 0xFFFFFFFF
        )

    def advance(self, ns: int) -> None:
        """Move the clock by ``ns``, firing each wake-up at its due time (bounded: 100,000 wake-ups)."""
        end = self.now + ns
        for _ in range(100_000):
            if not self.heap or self.heap[0][0] > end:
                break
            due, _, fn = heapq.heappop(self.heap)
            self.now = max(self.now, due)
            fn()
        self.now = end


def drive(rng: random.Random, paced: Paced, steps: int) -> None:
    """Real-time frames, bursts of a response at once, silences and stalls, in random order."""
    for _ in range(steps):
        kind = rng.random()
        if kind < 0.4:  # a real-time stretch
            for _ in range(rng.randrange(1, 20)):
                paced.push(marker=False)
                paced.advance(FRAME_NS + rng.randrange(-2_000_000, 2_000_000))
        elif kind < 0.8:  # a burst: a whole response at once, then time passes
            for i in range(rng.randrange(1, 80)):
                paced.push(marker=i == 0)
            paced.advance(rng.randrange(0, 3_000_000_000))
        else:  # silence or a stall
            paced.advance(rng.randrange(0, 400_000_000))
    paced.advance(120_000_000_000)  # everything queued leaves


@pytest.mark.parametrize("seed", range(12))
def test_every_frame_leaves_when_its_slot_comes_within_lead_never_before_never_after(seed: int) -> None:
    paced = Paced()
    drive(random.Random(seed), paced, 40)
    lead = LEAD_MS * 1_000_000
    assert [s[0] for s in paced.sent] == list(range(1, paced.seq + 1))  # all of them, in order
    for seq, at, slot, _marker in paced.sent:
        assert at >= slot - lead, f"frame {seq} left {slot - lead - at} ns early"
        assert at == max(paced.arrival[seq], slot - lead), f"frame {seq} left late"
    assert all(b[2] - a[2] >= FRAME_NS for a, b in itertools.pairwise(paced.sent))  # one slot each


def test_a_burst_with_response_markers_queues_only_frames() -> None:
    """The response boundary is a flag on its first frame: C can hold a queue of frames alone."""
    paced = Paced()
    for _ in range(3):
        for i in range(10):
            paced.push(marker=i == 0)
    assert paced.p.queued_frames == 30 - 4  # three left at once (within lead), the fourth's slot is 60 ms on
    assert paced.p.state.queued == paced.p.queued_frames  # no boundary items among them
    paced.p.push_mark("end", 0)
    assert paced.p.state.queued == paced.p.queued_frames + 1  # a named mark is an item


def test_the_played_counter_restarts_when_the_next_response_s_first_frame_reaches_the_head() -> None:
    paced = Paced()
    for i in range(10):
        paced.push(marker=i == 0)
    for i in range(5):
        paced.push(marker=i == 0)  # the next response, queued behind the first
    paced.advance(9 * FRAME_NS - LEAD_MS * 1_000_000 - 1)  # the first response's last frame waits
    assert (paced.p.response_frames, paced.p.response_seq) == (9, 9)
    paced.advance(1)  # it left, and the next response's first frame is at the head: a new response
    assert paced.p.response_frames == 0
    assert paced.p.response_seq == 10
    paced.advance(FRAME_NS)  # the second response's first frame left: the counter restarted
    assert paced.p.response_frames == 1
    assert paced.p.response_seq == 11
    paced.p.pause()
    paced.advance(10 * FRAME_NS)
    assert paced.p.response_frames == 1  # held: nothing played on


def test_a_frame_one_nanosecond_beyond_lead_waits_for_its_wake_up() -> None:
    paced = Paced()
    for _ in range(4):
        paced.push(marker=False)  # three leave at once, the fourth's slot is exactly lead ahead
    paced.advance(0)
    assert [s[0] for s in paced.sent] == [1, 2, 3, 4]
    paced.advance(FRAME_NS - 1)  # the fifth's slot is lead + 1 ns ahead: it must wait 1 ns
    paced.push(marker=False)
    assert len(paced.sent) == 4
    paced.advance(1)
    assert paced.sent[-1][:2] == (5, paced.now)


class FakeHeld:
    """Frames "C" holds for the playout (relay/media/native OutboundEntry's role), as plain tuples."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, int, int, int, bool, bool]] = []

    def held(self) -> int:
        return len(self.frames)

    def take_held(self) -> list[tuple[bytes, int, int, int, bool, bool]]:
        taken, self.frames = self.frames, []
        return taken


def test_frames_held_elsewhere_count_as_queued_and_come_back_in_order_on_their_slots() -> None:
    paced = Paced()
    for _ in range(4):
        paced.push(marker=False)  # four left within lead: the timeline is 80 ms on
    held = FakeHeld()
    paced.p.held = held
    for seq in range(5, 11):  # as C would hold them: waiting for their slots, in order
        paced.seq = seq
        paced.arrival[seq] = paced.now
        held.frames.append((seq.to_bytes(4, "big"), seq, seq * SAMPLES_PER_FRAME, paced.now, True, False))
    assert paced.p.queued_frames == 6 and paced.p.playing(paced.now + 10**12)
    assert paced.p.state.queued == 0
    paced.p.push_mark("after", 0)  # Python needs the queue: the held frames come back first
    assert held.held() == 0 and paced.p.queued_frames == 6
    assert paced.p.state.queued == 7 and paced.p.state.timer_pending
    paced.advance(10**9)
    assert [s[0] for s in paced.sent] == list(range(1, 11))
    lead = LEAD_MS * 1_000_000
    assert all(at == max(paced.arrival[seq], slot - lead) for seq, at, slot, _ in paced.sent)


def test_a_pause_keeps_held_frames_until_resume_and_a_flush_drops_them() -> None:
    paced = Paced()
    paced.push(marker=True)
    held = FakeHeld()
    paced.p.held = held
    held.frames.append((b"\x00\x00\x00\x02", 2, 960, paced.now, True, False))
    paced.p.pause()
    assert held.held() == 1  # a pause is a flag the holder reads: the frames may stay there
    paced.p.resume()
    assert held.held() == 0 and [s[0] for s in paced.sent] == [1, 2]
    held.frames.append((b"\x00\x00\x00\x03", 3, 1920, paced.now, True, False))
    assert paced.p.flush() == 1 and held.held() == 0 and paced.p.queued_frames == 0
