"""Outbound playout for one call: paces inference's audio onto the caller's RTP timeline.

Inference may send a reply faster than real time (TTS bursts). The relay keeps a timeline clock: a
frame is sent as soon as the timeline is no more than `lead` ahead of the wall clock, so frames that
arrive in real time leave at once (no added latency) and bursts are spread at 20 ms per frame. What
is still queued can be dropped at once on barge-in; what was already sent is at most `lead` ahead.
This is pacing, not a jitter buffer: nothing waits for late frames, nothing is reordered.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relay.wire import u32_diff

FRAME_NS = 20_000_000
SAMPLES_PER_FRAME = 960  # 20 ms at 48 kHz
CLOCK_RATE = 48_000
DEFAULT_LEAD_MS = 60
DEFAULT_TAIL_MS = 120
MAX_QUEUE_FRAMES = 3_000  # one minute of audio: inference cannot grow the queue without bound

SendFrame = Callable[[bytes, int, bool], object]
"""(payload, rtp_timestamp, marker) -> sent on the fast path."""
MarkReached = Callable[[str, int], object]
"""(mark name, rtp timestamp) -> inference is told playout reached the mark."""


@dataclass(slots=True)
class _Frame:
    payload: bytes
    seq: int
    timestamp: int  # inference's AUDIO_OUT timestamp (48 kHz), for CLEAR
    arrival_ns: int


@dataclass(slots=True)
class _Mark:
    name: str  # "" marks a response boundary (from an AUDIO_OUT marker)
    timestamp: int  # position in inference's outbound stream


@dataclass(frozen=True, slots=True)
class BargeInReport:
    """What the caller actually heard of the current response when they spoke over it."""

    played_samples: int
    dropped_frames: int
    response_seq: int


class Playout:
    """The pacing queue and RTP timeline of one outbound stream (see the module docstring)."""

    def __init__(
        self,
        send: SendFrame,
        mark_reached: MarkReached,
        schedule: Callable[[float, Callable[[], None]], object],
        *,
        lead_ms: int = DEFAULT_LEAD_MS,
        tail_ms: int = DEFAULT_TAIL_MS,
        rtp_timestamp_base: int = 0,
        clock: Callable[[], int] = time.perf_counter_ns,
        observe_dwell_ns: Callable[[int], object] = lambda _ns: None,
    ) -> None:
        if not 0 <= lead_ms <= 1000:
            raise ValueError(f"playout lead must be 0..1000 ms, got {lead_ms}")
        self._send = send
        self._mark_reached = mark_reached
        self._schedule = schedule
        self._clock = clock
        self._observe = observe_dwell_ns
        self.lead_ns = lead_ms * 1_000_000
        self.tail_ns = tail_ms * 1_000_000
        self._queue: deque[_Frame | _Mark] = deque()
        self._queued_frames = 0
        self._t0 = clock()
        self._ts0 = rtp_timestamp_base
        self._timeline_ns = self._t0  # wall time at which the next frame would play
        self._timer_pending = False
        self._new_spurt = True
        self._interrupted = False
        self.response_frames = 0
        self.response_seq = 0
        self.frames_sent = 0
        self.frames_dropped_full = 0
        self.frames_dropped_interrupted = 0
        self.frames_dropped_cleared = 0
        self._clear_before: int | None = None
        self.closed = False

    # -- input from inference --------------------------------------------------------------------

    def push_frame(self, payload: bytes, seq: int, marker: bool, timestamp: int = 0) -> None:
        """Queue one frame; a marker starts a new response (its played position counts from zero)."""
        if self.closed:
            return
        if self._clear_before is not None:
            if u32_diff(timestamp, self._clear_before) < 0:  # arrived late for a CLEAR: never play it
                self.frames_dropped_cleared += 1
                return
            self._clear_before = None
        if self._interrupted:
            if not marker:  # late frames of the response the caller interrupted: never play them
                self.frames_dropped_interrupted += 1
                return
            self._interrupted = False  # a new response starts
        now = self._clock()
        if not self._queue and not self._timer_pending:
            # The common case, real-time audio: nothing waits, so send on arrival without queueing.
            if self._timeline_ns < now:
                self._timeline_ns = now
                self._new_spurt = True
            if self._timeline_ns - now <= self.lead_ns:
                if marker:
                    self.response_frames = 0
                self._send_now(payload, seq, now)
                return
        if self._queued_frames >= MAX_QUEUE_FRAMES:
            self.frames_dropped_full += 1
            return
        if marker:
            self._queue.append(_Mark("", timestamp))  # response boundary: resets the played counter
        self._queue.append(_Frame(payload, seq, timestamp, now))
        self._queued_frames += 1
        self.pump()

    def push_mark(self, name: str, timestamp: int = 0) -> None:
        """Queue a mark: inference is told when playout reaches this point."""
        if self.closed:
            return
        self._queue.append(_Mark(name, timestamp))
        self.pump()

    # -- pacing ----------------------------------------------------------------------------------

    def pump(self) -> None:
        """Send every queued frame whose timeline slot is within `lead` of now; schedule the rest."""
        if self._timer_pending or self.closed:
            return
        now = self._clock()
        queue = self._queue
        while queue:
            item = queue[0]
            if isinstance(item, _Mark):
                queue.popleft()
                if item.name:
                    self._mark_reached(item.name, self._timestamp_at(self._timeline_ns))
                else:
                    self.response_frames = 0
                continue
            if self._timeline_ns < now:  # the stream went idle: a new talk spurt starts now
                self._timeline_ns = now
                self._new_spurt = True
            if self._timeline_ns - now > self.lead_ns:
                self._timer_pending = True
                self._schedule((self._timeline_ns - self.lead_ns - now) / 1e9, self._on_timer)
                return
            queue.popleft()
            self._queued_frames -= 1
            self._send_now(item.payload, item.seq, item.arrival_ns)

    def _send_now(self, payload: bytes, seq: int, arrival_ns: int) -> None:
        """Send the frame in the timeline's next slot and advance it; dwell counts from when it was due."""
        due = self._timeline_ns - self.lead_ns
        self._send(payload, self._timestamp_at(self._timeline_ns), self._new_spurt)
        self._observe(self._clock() - max(arrival_ns, due))
        self._new_spurt = False
        self._timeline_ns += FRAME_NS
        self.frames_sent += 1
        self.response_frames += 1
        self.response_seq = seq

    def _on_timer(self) -> None:
        self._timer_pending = False
        self.pump()

    def _timestamp_at(self, t_ns: int) -> int:
        return (self._ts0 + (t_ns - self._t0) * CLOCK_RATE // 1_000_000_000) & 0xFFFFFFFF

    # -- state for barge-in ----------------------------------------------------------------------

    @property
    def queued_frames(self) -> int:
        return self._queued_frames

    def playing(self) -> bool:
        """True while the caller may still be hearing assistant audio (queued, or sent and not yet played).

        False right after a barge-in until the next response starts (a frame with the marker): one
        interruption is reported once, not again for every speech packet while the tail fades.
        """
        if self._interrupted:
            return False
        return self._queued_frames > 0 or self._timeline_ns + self.tail_ns > self._clock()

    def flush(self) -> int:
        """Drop everything queued (marks in it are never echoed); return the frames dropped."""
        dropped = self._queued_frames
        self._queue.clear()
        self._queued_frames = 0
        return dropped

    def clear_before(self, timestamp: int) -> int:
        """CLEAR: drop queued frames (and marks among them) before `timestamp`, and such frames that
        arrive later; frames from `timestamp` on stay. Returns the frames dropped now."""
        before = [i for i in self._queue if u32_diff(i.timestamp, timestamp) < 0]
        dropped = sum(1 for i in before if isinstance(i, _Frame))
        self._queue = deque(i for i in self._queue if u32_diff(i.timestamp, timestamp) >= 0)
        self._queued_frames -= dropped
        self.frames_dropped_cleared += dropped
        self._clear_before = timestamp
        return dropped

    def barge_in(self) -> BargeInReport:
        """Flush and report how much of the current response the caller heard.

        Until inference starts a new response (an AUDIO_OUT with the marker), frames still in flight
        from the interrupted one are dropped on arrival.
        """
        now = self._clock()
        ahead_ns = max(0, self._timeline_ns - now)
        played = max(0, self.response_frames * SAMPLES_PER_FRAME - ahead_ns * CLOCK_RATE // 1_000_000_000)
        dropped = self.flush()
        self._interrupted = True
        return BargeInReport(played, dropped, self.response_seq)

    def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._queued_frames = 0
