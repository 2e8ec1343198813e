"""Outbound playout for one call: paces inference's audio onto the caller's RTP timeline.

Inference may send a reply faster than real time (TTS bursts). The relay keeps a timeline clock: a
frame is sent as soon as the timeline is no more than `lead` ahead of the wall clock, so frames that
arrive in real time leave at once (no added latency) and bursts are spread at 20 ms per frame. What
is still queued can be dropped at once on barge-in; what was already sent is at most `lead` ahead.
This is pacing, not a jitter buffer: nothing waits for late frames, nothing is reordered.

Late frames catch up: when the timeline fell behind the wall clock (the relay or inference stalled) and
the next frame continues the stream (the next position, no MARKER), the timeline is kept, so what piled
up during the stall leaves at once with contiguous RTP timestamps, and the caller's jitter buffer
absorbs the burst. Resetting the timeline there would push the rest of the response later by the
stall, for as long as it lasts. A new response, a gap in positions, or a stall longer than `catch_up`
starts a new talk spurt at the wall clock instead.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from splitrelay.inference.wire import u32_diff

FRAME_NS = 20_000_000
SAMPLES_PER_FRAME = 960  # 20 ms at 48 kHz
CLOCK_RATE = 48_000
DEFAULT_LEAD_MS = 60
DEFAULT_TAIL_MS = 120
DEFAULT_CATCH_UP_MS = 200
MAX_QUEUE_FRAMES = 3_000  # one minute of audio: inference cannot grow the queue without bound
PLAYING_ALWAYS = 1 << 62  # playing_until_ns() while frames wait or playout is paused

logger = logging.getLogger("splitrelay.relay.playout")

SendFrame = Callable[[bytes, int, bool], object]
"""(payload, rtp_timestamp, marker) -> sent on the fast path."""
MarkReached = Callable[[str, int], object]
"""(mark name, rtp timestamp) -> inference is told playout reached the mark."""


class HeldFrames(Protocol):
    """Frames the outbound C path holds for this playout and paces itself (relay/media/native
    ``OutboundEntry``): the front of the queue while it holds frames only, taken back before Python queues."""

    def held(self) -> int: ...

    def take_held(self) -> list[tuple[bytes, int, int, int, bool, bool]]: ...


@dataclass(slots=True)
class _Frame:
    payload: bytes
    seq: int
    timestamp: int  # inference's AUDIO_OUT timestamp (48 kHz), for CLEAR
    arrival_ns: int
    continues: bool  # the next position after the frame before it, and no MARKER: may catch up
    starts_response: bool = False
    """The frame had the MARKER: reaching the head of the queue resets the played counter (a response
    boundary is a flag on its first frame, not a queue item, so a queue of frames is only frames)."""


@dataclass(slots=True)
class _Mark:
    name: str  # "" (an unnamed MARK): a response boundary, as a frame's ``starts_response``
    timestamp: int  # position in inference's outbound stream


@dataclass(frozen=True, slots=True)
class BargeInReport:
    """What the caller actually heard of the current response when they spoke over it."""

    played_samples: int
    dropped_frames: int
    response_seq: int


class _State:
    """The playout fields the outbound C path also uses, in Python (``sr_playout``'s fields, by name).

    With the outbound C path on, the playout keeps them in a C ``sr_playout`` instead (relay/media/native
    ``playout_state``): one copy, which C and this module both read and write."""

    __slots__ = (
        "catch_up_ns",
        "clear_before",
        "closed",
        "frames_caught_up",
        "frames_sent",
        "has_clear_before",
        "has_next_position",
        "interrupted",
        "lead_ns",
        "new_spurt",
        "next_position",
        "paused",
        "queued",
        "response_frames",
        "response_seq",
        "t0",
        "tail_ns",
        "timeline_ns",
        "timer_pending",
        "ts0",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class Playout:
    """The pacing queue and RTP timeline of one outbound stream (see the module docstring).

    The timeline and the counters live in ``state`` (``_State``, or the C ``sr_playout`` the outbound C
    path shares: relay/media/native ``playout_state``); the queue of waiting frames stays here, and
    ``state.queued`` says how many items it holds.
    """

    def __init__(
        self,
        send: SendFrame,
        mark_reached: MarkReached,
        schedule: Callable[[float, Callable[[], None]], object],
        *,
        lead_ms: int = DEFAULT_LEAD_MS,
        tail_ms: int = DEFAULT_TAIL_MS,
        catch_up_ms: int = DEFAULT_CATCH_UP_MS,
        rtp_timestamp_base: int = 0,
        clock: Callable[[], int] = time.perf_counter_ns,
        observe_dwell_ns: Callable[[int], object] = lambda _ns: None,
        state: Any = None,
    ) -> None:
        if not 0 <= lead_ms <= 1000:
            raise ValueError(f"playout lead must be 0..1000 ms, got {lead_ms}")
        if not 0 <= catch_up_ms <= 1000:
            raise ValueError(f"playout catch_up must be 0..1000 ms, got {catch_up_ms}")
        self._send = send
        self._mark_reached = mark_reached
        self._schedule = schedule
        self._clock = clock
        self._observe = observe_dwell_ns
        st: Any = _State() if state is None else state
        self.state: Any = st
        st.lead_ns = lead_ms * 1_000_000
        st.tail_ns = tail_ms * 1_000_000
        st.catch_up_ns = catch_up_ms * 1_000_000
        self._queue: deque[_Frame | _Mark] = deque()
        self._queued_frames = 0
        st.t0 = clock()
        st.ts0 = rtp_timestamp_base & 0xFFFFFFFF
        st.timeline_ns = st.t0  # wall time at which the next frame would play
        st.timer_pending = 0
        st.new_spurt = 1
        st.interrupted = 0
        st.has_next_position = 0  # next_position: the inference position the next frame continues from
        st.next_position = 0
        st.response_frames = 0
        st.response_seq = 0
        st.frames_sent = 0
        st.frames_caught_up = 0
        st.has_clear_before = 0
        st.clear_before = 0
        st.paused = 0  # a barge-in candidate holds playout until confirmed (flush) or rejected
        st.closed = 0
        st.queued = 0
        self.frames_dropped_full = 0
        self.frames_dropped_interrupted = 0
        self.frames_dropped_cleared = 0
        self.pauses = 0
        self.publish: Callable[[int], object] | None = None
        """Told ``playing_until_ns()`` whenever it may have changed (the call's per-batch C slot)."""
        self.held: HeldFrames | None = None
        """Where C holds (and paces) frames of this playout that wait for their slot, or None."""

    def take_back(self) -> None:
        """C's held frames join the queue, in order, as if Python had queued them (their wake-up set),
        before anything else reads or changes the queue. C holds frames only while Python holds nothing."""
        held = self.held
        if held is None or not held.held():
            return
        queue = self._queue
        for payload, seq, timestamp, arrival, continues, starts in held.take_held():
            queue.append(_Frame(payload, seq, timestamp, arrival, continues, starts))
            self._queued_frames += 1
        st = self.state
        st.queued = len(queue)
        if queue and not st.timer_pending and not st.paused and not st.closed:
            st.timer_pending = 1
            self._schedule(max(0, st.timeline_ns - st.lead_ns - self._clock()) / 1e9, self._on_timer)

    def _held(self) -> int:
        held = self.held
        return 0 if held is None else held.held()

    @property
    def native_state(self) -> Any:
        """The C ``sr_playout`` holding the timeline (for the outbound C path), or None (Python's)."""
        return None if isinstance(self.state, _State) else self.state

    # The fields the outbound C path shares, as the attributes they were.

    @property
    def lead_ns(self) -> int:
        return int(self.state.lead_ns)

    @lead_ns.setter
    def lead_ns(self, value: int) -> None:
        self.state.lead_ns = value

    @property
    def tail_ns(self) -> int:
        return int(self.state.tail_ns)

    @tail_ns.setter
    def tail_ns(self, value: int) -> None:
        self.state.tail_ns = value

    @property
    def catch_up_ns(self) -> int:
        return int(self.state.catch_up_ns)

    @catch_up_ns.setter
    def catch_up_ns(self, value: int) -> None:
        self.state.catch_up_ns = value

    @property
    def response_frames(self) -> int:
        return int(self.state.response_frames)

    @property
    def response_seq(self) -> int:
        return int(self.state.response_seq)

    @property
    def frames_sent(self) -> int:
        return int(self.state.frames_sent)

    @property
    def frames_caught_up(self) -> int:
        return int(self.state.frames_caught_up)

    @property
    def paused(self) -> bool:
        return bool(self.state.paused)

    @property
    def closed(self) -> bool:
        return bool(self.state.closed)

    def playing_until_ns(self) -> int:
        """``playing(t)`` is True exactly for t before this (0: never; ``PLAYING_ALWAYS``: whatever t)."""
        st = self.state
        if st.interrupted:
            return 0
        if self._queued_frames or st.paused or self._held():
            return PLAYING_ALWAYS
        return int(st.timeline_ns + st.tail_ns)

    def _changed(self) -> None:
        publish = self.publish
        if publish is not None:
            publish(self.playing_until_ns())

    # -- input from inference --------------------------------------------------------------------

    def push_frame(self, payload: bytes, seq: int, marker: bool, timestamp: int = 0) -> None:
        """Queue one frame; a marker starts a new response (its played position counts from zero)."""
        self._push_frame(payload, seq, marker, timestamp)
        if self.publish is not None:
            self._changed()

    def _push_frame(self, payload: bytes, seq: int, marker: bool, timestamp: int) -> None:
        st = self.state
        if st.closed:
            return
        self.take_back()
        if st.has_clear_before:
            if u32_diff(timestamp, st.clear_before) < 0:  # arrived late for a CLEAR: never play it
                self.frames_dropped_cleared += 1
                return
            st.has_clear_before = 0
        if st.interrupted:
            if not marker:  # late frames of the response the caller interrupted: never play them
                self.frames_dropped_interrupted += 1
                return
            st.interrupted = 0  # a new response starts
        continues = not marker and st.has_next_position and timestamp == st.next_position
        now = self._clock()
        if not self._queue and not st.timer_pending and not st.paused:
            # The common case, real-time audio: nothing waits, so send on arrival without queueing.
            if st.timeline_ns < now:
                self._fell_behind(now, continues)
            if st.timeline_ns - now <= st.lead_ns:
                if marker:
                    st.response_frames = 0
                st.next_position = (timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF
                st.has_next_position = 1
                self._send_now(payload, seq, now)
                return
        if self._queued_frames >= MAX_QUEUE_FRAMES:
            self.frames_dropped_full += 1
            return
        st.next_position = (timestamp + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        st.has_next_position = 1
        self._queue.append(_Frame(payload, seq, timestamp, now, bool(continues), marker))
        self._queued_frames += 1
        st.queued = len(self._queue)
        self.pump()

    def push_mark(self, name: str, timestamp: int = 0) -> None:
        """Queue a mark: inference is told when playout reaches this point."""
        st = self.state
        if st.closed:
            return
        self.take_back()
        self._queue.append(_Mark(name, timestamp))
        st.queued = len(self._queue)
        self.pump()

    # -- pacing ----------------------------------------------------------------------------------

    def pump(self) -> None:
        """Send every queued frame whose timeline slot is within `lead` of now; schedule the rest."""
        st = self.state
        if st.timer_pending or st.closed or st.paused:
            return
        now = self._clock()
        queue = self._queue
        try:
            while queue:
                item = queue[0]
                if isinstance(item, _Mark):
                    queue.popleft()
                    if item.name:
                        self._mark_reached(item.name, self._timestamp_at(st.timeline_ns))
                    else:
                        st.response_frames = 0
                    continue
                if item.starts_response:  # at the head, as a boundary item was (idempotent while it waits)
                    st.response_frames = 0
                if st.timeline_ns < now:
                    self._fell_behind(now, item.continues)
                if st.timeline_ns - now > st.lead_ns:
                    st.timer_pending = 1
                    self._schedule((st.timeline_ns - st.lead_ns - now) / 1e9, self._on_timer)
                    break
                queue.popleft()
                self._queued_frames -= 1
                self._send_now(item.payload, item.seq, item.arrival_ns)
        finally:
            st.queued = len(queue)
        if self.publish is not None:
            self._changed()

    def _fell_behind(self, now: int, continues: bool) -> None:
        """The timeline is behind the wall clock: catch up (see the module docstring) or restart it."""
        st = self.state
        if continues and now - st.timeline_ns <= st.catch_up_ns:
            st.frames_caught_up += 1
            return
        st.timeline_ns = now  # the stream went idle (or stalled too long): a new talk spurt
        st.new_spurt = 1

    def _send_now(self, payload: bytes, seq: int, arrival_ns: int) -> None:
        """Send the frame in the timeline's next slot and advance it; dwell counts from when it was due."""
        st = self.state
        timeline = st.timeline_ns
        due = timeline - st.lead_ns
        self._send(payload, self._timestamp_at(timeline), bool(st.new_spurt))
        self._observe(self._clock() - max(arrival_ns, due))
        st.new_spurt = 0
        st.timeline_ns = timeline + FRAME_NS
        st.frames_sent += 1
        st.response_frames += 1
        st.response_seq = seq

    def _on_timer(self) -> None:
        self.state.timer_pending = 0
        self.pump()

    def _timestamp_at(self, t_ns: int) -> int:
        st = self.state
        return int((st.ts0 + (t_ns - st.t0) * CLOCK_RATE // 1_000_000_000) & 0xFFFFFFFF)

    # -- state for barge-in ----------------------------------------------------------------------

    @property
    def queued_frames(self) -> int:
        return self._queued_frames + self._held()

    def playing(self, now_ns: int | None = None) -> bool:
        """True while the caller may still be hearing assistant audio (queued, or sent and not yet played).

        False right after a barge-in until the next response starts (a frame with the marker): one
        interruption is reported once, not again for every speech packet while the tail fades.
        """
        st = self.state
        if st.interrupted:
            return False
        if self._queued_frames or st.paused or self._held():
            return True
        return bool(st.timeline_ns + st.tail_ns > (self._clock() if now_ns is None else now_ns))

    def pause(self) -> None:
        """Hold every frame not yet sent (a barge-in candidate): nothing more leaves until ``resume``
        or ``barge_in``. What already left is at most `lead` ahead of the caller's ear."""
        st = self.state
        if st.paused or st.closed:
            return
        st.paused = 1
        self.pauses += 1
        self._changed()

    def resume(self) -> None:
        """The candidate was rejected: play on from the first held frame, nothing lost or repeated.

        The held frames start a new talk spurt at the wall clock (RTP marker, timestamps moved on by
        the pause), so the caller's jitter buffer plays the pause as a gap, not as lateness.
        """
        st = self.state
        if not st.paused:
            return
        self.take_back()
        st.paused = 0
        now = self._clock()
        if st.timeline_ns < now:
            st.timeline_ns = now
            st.new_spurt = 1
        for item in self._queue:  # a held frame never catches up over the pause
            if isinstance(item, _Frame):
                item.continues = False
        self.pump()
        self._changed()

    def flush(self) -> int:
        """Drop everything queued (marks in it are never echoed); return the frames dropped."""
        self.take_back()
        dropped = self._queued_frames
        self._queue.clear()
        self._queued_frames = 0
        st = self.state
        st.queued = 0
        st.has_next_position = 0  # what follows a flush never catches up over the hole
        self._changed()
        return dropped

    def new_source(self) -> int:
        """Another agent takes the call over (relay/call.py): drop what the old one queued and forget its
        stream positions (a CLEAR, an interrupted response), keeping the caller's RTP timeline; the next
        frame starts a new talk spurt. Returns the frames dropped."""
        dropped = self.flush()
        st = self.state
        st.has_clear_before = 0
        st.interrupted = 0
        st.paused = 0
        st.new_spurt = 1
        self._changed()
        return dropped

    def clear_before(self, timestamp: int) -> int:
        """CLEAR: drop queued frames (and marks among them) before `timestamp`, and such frames that
        arrive later; frames from `timestamp` on stay. Returns the frames dropped now."""
        self.take_back()
        before = [i for i in self._queue if u32_diff(i.timestamp, timestamp) < 0]
        dropped = sum(1 for i in before if isinstance(i, _Frame))
        self._queue = deque(i for i in self._queue if u32_diff(i.timestamp, timestamp) >= 0)
        self._queued_frames -= dropped
        self.frames_dropped_cleared += dropped
        st = self.state
        st.queued = len(self._queue)
        st.has_clear_before = 1
        st.clear_before = timestamp & 0xFFFFFFFF
        st.has_next_position = 0
        self._changed()
        return dropped

    def heard(self, lag_ns: int = 0) -> int:
        """48 kHz samples of the current response the caller has heard by now: what left, less what left
        ahead of real time, less ``lag_ns`` (what was still on its way to the caller or in its jitter
        buffer when the caller started to speak: see ``CallConfig.heard_lag_ms``)."""
        st = self.state
        behind_ns = max(0, st.timeline_ns - self._clock()) + max(0, lag_ns)
        return int(max(0, st.response_frames * SAMPLES_PER_FRAME - behind_ns * CLOCK_RATE // 1_000_000_000))

    def barge_in(self, lag_ns: int = 0) -> BargeInReport:
        """Flush and report how much of the current response the caller heard (``heard``).

        Until inference starts a new response (an AUDIO_OUT with the marker), frames still in flight
        from the interrupted one are dropped on arrival.
        """
        played = self.heard(lag_ns)
        dropped = self.flush()
        st = self.state
        st.interrupted = 1
        st.paused = 0
        self._changed()
        return BargeInReport(played, dropped, int(st.response_seq))

    def close(self) -> None:
        self.take_back()
        self._queue.clear()
        self._queued_frames = 0
        st = self.state
        st.closed = 1
        st.queued = 0
        self._changed()


class SharedPacer:
    """One event-loop timer for the paced playout of every call in a process.

    A call whose playout is ahead of real time (a TTS burst) needs a wake-up every 20 ms; with a loop
    timer per call per frame, hundreds of such calls cost a timer object and a libuv timer each time.
    Here wake-ups wait in one heap behind one loop timer, and each firing runs every wake-up due within
    ``early`` of now: a frame may leave up to ``early`` before its slot (harmless: it is already up to
    `lead` ahead), never later than the loop allows. ``schedule`` has ``loop.call_later``'s shape.
    """

    def __init__(self, *, early_ms: float = 0.5) -> None:
        if not 0 <= early_ms <= 5:
            raise ValueError(f"pacer early must be 0..5 ms, got {early_ms}")
        self._early = early_ms / 1000
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties fire in scheduling order, and functions are never compared
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0
        self._firing = False
        self.fired = 0  # loop timers that fired
        self.ran = 0  # wake-ups run
        self.failed = 0  # wake-ups that raised (logged once)

    @property
    def pending(self) -> int:
        return len(self._heap)

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` once, ``delay`` seconds from now (or up to ``early`` sooner)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, delay)
        heapq.heappush(self._heap, (due, next(self._order), fn))
        if not self._firing and (self._timer is None or due < self._armed_for):
            self._arm(loop, due)  # while firing, the end of _fire arms for the earliest

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = due
        self._timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.fired += 1
        loop = asyncio.get_running_loop()
        heap = self._heap
        limit = loop.time() + self._early
        self._firing = True
        try:
            for _ in range(len(heap)):  # bounded by what was scheduled before this turn
                if not heap or heap[0][0] > limit:
                    break
                fn = heapq.heappop(heap)[2]
                self.ran += 1
                try:
                    fn()
                except Exception:  # one call's bug must not stall every other call's playout
                    self.failed += 1
                    if self.failed == 1:
                        logger.exception("a paced playout wake-up failed (further failures only counted)")
        finally:
            self._firing = False
        if heap:
            self._arm(loop, heap[0][0])

    def close(self) -> None:
        """Forget every wake-up (the calls are closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
