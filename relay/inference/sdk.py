"""Inference SDK: what a GPU service imports to take calls from splitrelay relays.

A service writes one ``async def handler(call: InferenceCall)``; the server binds a UDP socket,
demultiplexes datagrams by (relay address, call id), ACKs and de-duplicates control messages, and
runs the handler once per call. The handler reads ``call.frames()`` (Opus as it came from the
caller, one frame per item) and ``call.events()`` (barge-in, reached marks, events), and answers
with ``send_audio`` / ``send_event`` / ``send_mark`` / ``clear`` / ``hangup``. Returning from the
handler ends the call. Run the service under uvloop (``run(main())``): plain asyncio UDP costs
about five times more CPU per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from splitrelay.inference import wire
from splitrelay.inference.audio import (
    AgentAudioEncoder,
    CallerAudioDecoder,
    EncoderSettings,
    PcmChunk,
    SampleType,
)
from splitrelay.inference.endpoint import (
    DEFAULT_ATTEMPTS,
    DEFAULT_RTO,
    CallState,
    LinkError,
    Peer,
    WireEndpoint,
    call_end_message,
)
from splitrelay.inference.wire import (
    FLAG_LEVEL_PRESENT,
    FLAG_MARKER,
    FLAG_VOICE,
    LEVEL_MASK,
    LEVEL_SHIFT,
    BargeIn,
    BargeVerdict,
    CallStart,
    Continuation,
    Message,
    MsgType,
)
from splitrelay.inference.wire_auth import CALL_START_WINDOW_S, CallStartGuard, WireKey, WireKeyring

__all__ = [
    "AudioFrame",
    "BargeCandidateNotice",
    "BargeConfirmer",
    "BargeInNotice",
    "CallEvent",
    "InferenceCall",
    "InferenceServer",
    "LinkError",
    "MarkReached",
    "PcmChunk",
    "PcmOutput",
    "RelayEvent",
    "WireKey",
    "WireKeyring",
    "run",
]

logger = logging.getLogger("splitrelay.inference")

T = TypeVar("T")
Handler = Callable[["InferenceCall"], Awaitable[None]]

FRAME_QUEUE: Final = 250  # 5 s of audio: past this a handler is too slow and the oldest frames go
EVENT_QUEUE: Final = 256
CLEARED_EVENT: Final = "relay.cleared"  # the relay's answer to CLEAR: {"heard_samples", "dropped_frames"}
IDLE_TIMEOUT: Final = 15.0  # seconds without any datagram from the relay before a call is dropped
KEEPALIVE_TICK_S: Final = 0.05  # how often the server looks for calls that owe their relay a KEEPALIVE
RELAY_TIMEOUT: Final = 3.0
"""Seconds without any datagram from a relay that sends keep-alives before its call is dropped (relay_lost):
such a relay is never quiet for long while it lives, so its death need not wait for ``idle_timeout``."""


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One caller frame: the Opus payload exactly as it came in RTP."""

    payload: bytes
    seq: int
    timestamp: int  # 48 kHz units
    marker: bool  # start of a talk spurt (RTP marker)
    audio_level: int | None  # RFC 6464 level in -dBov (0 loudest, 127 silence) when the relay had one
    voice: bool  # RFC 6464 V bit


@dataclass(frozen=True, slots=True)
class BargeInNotice:
    """The caller started speaking over the assistant; the relay already flushed its queue."""

    barge_in: BargeIn  # how much of the response the caller heard
    timestamp: int  # AUDIO_IN timestamp at which the caller's speech was detected


@dataclass(frozen=True, slots=True)
class BargeCandidateNotice:
    """The relay paused playout on a voiced packet and asks: is the caller really speaking?

    The call's confirmer (``InferenceCall.confirmer``) answers on its own; without one, the agent may
    answer with ``InferenceCall.answer_barge_in``, or leave it to the relay's default policy (its window).
    """

    candidate: int
    played_samples: int  # 48 kHz samples of the response the caller heard when playout paused
    timestamp: int  # AUDIO_IN timestamp of the onset


class BargeConfirmer(Protocol):
    """Decides barge-in candidates from the caller's audio (relay/inference/vad.py is the default).

    Called on the socket callback, so it must be quick. Each method returns True (confirm), False
    (reject) or None (not decided yet); the SDK sends the first decision as BARGE_VERDICT.
    """

    def on_audio(self, seq: int, timestamp: int, payload: bytes) -> bool | None: ...

    def on_candidate(self, onset_timestamp: int) -> bool | None: ...


ConfirmerFactory = Callable[["InferenceCall"], BargeConfirmer | None]


@dataclass(frozen=True, slots=True)
class MarkReached:
    """Playout reached a mark this side sent with ``send_mark``."""

    name: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """A JSON event from the relay (or from the client, passed through by it)."""

    data: dict[str, Any]


CallEvent = BargeInNotice | BargeCandidateNotice | MarkReached | RelayEvent


class _Channel(Generic[T]):
    """Single-consumer bounded queue that drops the oldest item when full and can be closed.

    Dropping the oldest keeps a slow consumer near real time instead of ever further behind.
    """

    __slots__ = ("_closed", "_items", "_maxlen", "_waiter")

    def __init__(self, maxlen: int) -> None:
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def put(self, item: T) -> bool:
        """Queue ``item``; False when the oldest item had to be dropped for it."""
        kept = True
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            kept = False
        self._items.append(item)
        self._wake()
        return kept

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> _Channel[T]:
        return self

    async def __anext__(self) -> T:
        """Next item; StopAsyncIteration once closed and drained.

        A plain method rather than an async generator, so a consumer may wrap it in
        ``asyncio.wait_for``: a timeout cancels only the wait and the channel stays usable.
        """
        while True:  # one pass per wake-up; ends on an item or on close
            if self._items:
                return self._items.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class InferenceCall:
    """One call as the inference service sees it. Created by the server; handed to the handler."""

    def __init__(self, server: InferenceServer, state: CallState, info: CallStart) -> None:
        self._server = server
        self._state = state
        self.info = info
        self._frames: _Channel[AudioFrame] = _Channel(server.frame_queue)
        self._events: _Channel[CallEvent] = _Channel(EVENT_QUEUE)
        self._out_seq = 0
        self._out_ts = 0
        self._after_barge_in = False
        self._rx = 0  # datagrams received, for the idle sweep
        # Keep-alives (docs/wire-protocol.md): only when the relay asked in CALL_START (keepalive_ms).
        self._keepalive_s = None if info.keepalive_ms is None else info.keepalive_ms / 1000
        self._sent = False  # something went to the relay since the server's last keep-alive tick
        self._sent_at = 0.0
        self.keepalives_sent = 0
        self._relay_keeps_alive = False  # the relay sent a KEEPALIVE: its silence is its death
        self._done = asyncio.Event()
        self.end_reason: str | None = None
        self._candidate: int | None = None  # the open barge-in candidate, until answered
        self.confirmer: BargeConfirmer | None = server.confirmer(self) if server.confirmer else None
        """Answers barge-in candidates; a handler may replace it, or set None to answer itself."""
        self.confirmer_failed = False

    @property
    def call_id(self) -> int:
        return self._state.call_id

    @property
    def relay(self) -> Peer:
        return self._state.peer

    @property
    def continues(self) -> Continuation | None:
        """Set when this call continues one that was on another relay or another agent: the same
        ``info.call`` (the edge's call id), so an agent keyed by it keeps its conversation instead of
        greeting again. ``continues.reason`` is "relay_lost", "drain" or "agent_lost"."""
        return self.info.continues

    @property
    def ended(self) -> bool:
        return self._state.ended

    @property
    def next_audio_seq(self) -> int:
        """Seq the next ``send_audio`` frame will carry (what BARGE_IN's response_seq refers to)."""
        return self._out_seq

    @property
    def out_timestamp(self) -> int:
        """Position of the next AUDIO_OUT frame, in 48 kHz samples since the call started."""
        return self._out_ts

    def frames(self) -> AsyncIterator[AudioFrame]:
        """The caller's frames in arrival order; ends when the call ends. One consumer only.

        Safe under ``asyncio.wait_for(anext(it), timeout)``: a timeout loses no frame.
        """
        return self._frames

    def events(self) -> AsyncIterator[CallEvent]:
        """Barge-in notices, reached marks and relay events; ends when the call ends. One consumer."""
        return self._events

    def pcm(self, rate: int = 16_000, sample_type: SampleType = "int16") -> AsyncIterator[PcmChunk]:
        """The caller's audio as PCM at ``rate``, 20 ms a chunk: decoded, lost frames concealed or rebuilt
        from in-band FEC (relay/inference/audio.py; needs ``splitrelay[audio]``). It reads ``frames()``:
        a handler uses one or the other."""
        return _decoded(self._frames, CallerAudioDecoder(rate, sample_type, self.info.channels))

    def pcm_output(self, input_rate: int, settings: EncoderSettings | None = None) -> PcmOutput:
        """Send the agent's int16 PCM at ``input_rate`` (a TTS stream's 16, 22.05, 24 kHz...) as 20 ms
        Opus frames as they fill; needs ``splitrelay[audio]``."""
        return PcmOutput(self, AgentAudioEncoder(input_rate, settings, self.info.channels))

    async def wait_ended(self) -> str | None:
        await self._done.wait()
        return self.end_reason

    def send_audio(self, payload: bytes, *, marker: bool = False) -> bool:
        """Send one 20 ms Opus frame; ``marker`` on the first frame of a response.

        Returns False (and sends nothing) when the call has ended. The relay paces playout, so a
        service may send ahead of real time, within the relay's outbound queue limit. The first frame
        sent after a BARGE_IN always carries the marker: it starts a new response, and the relay drops
        frames of the interrupted response until it sees one. Frames sent in one loop turn (a TTS
        burst) leave in one ``sendmmsg`` (relay/inference/udp_batch.py); events and marks never overtake them.
        """
        if self._state.ended:
            return False
        if self._after_barge_in:
            marker = True
            self._after_barge_in = False
        data = wire.encode_audio(
            MsgType.AUDIO_OUT,
            self._state.call_id,
            self._out_seq,
            self._out_ts,
            payload,
            FLAG_MARKER if marker else 0,
        )
        if not self._server.send_batched(data, self._state.peer):
            raise LinkError("endpoint: the socket is not open")
        self._sent = True
        self._out_seq = (self._out_seq + 1) & wire.U32
        self._out_ts = (self._out_ts + wire.FRAME_SAMPLES) & wire.U32
        return True

    def send_event(self, event: dict[str, Any], *, reliable: bool = False) -> asyncio.Future[bool] | None:
        """Pass a JSON event (transcript, tool-call status...) to the relay; it must have a "type"."""
        return self._send_control(MsgType.EVENT, wire.pack_event(event), reliable=reliable)

    def send_mark(self, name: str) -> asyncio.Future[bool] | None:
        """Place a mark after the audio sent so far; a MarkReached comes back when it plays out."""
        return self._send_control(MsgType.MARK, wire.pack_mark(name), reliable=True)

    def clear(self) -> asyncio.Future[bool] | None:
        """Interrupt the assistant: the relay drops every frame sent before this call.

        The CLEAR carries the current AUDIO_OUT position, so frames sent afterwards (the next
        response) survive even if the CLEAR is retransmitted and arrives after them.
        """
        return self._send_control(MsgType.CLEAR, b"", reliable=True)

    def answer_barge_in(self, candidate: int, confirm: bool) -> asyncio.Future[bool] | None:
        """Confirm (the relay flushes and sends BARGE_IN) or reject (playout resumes) a candidate.
        An answer after the relay's window is ignored there (its default policy already decided)."""
        if self._candidate == candidate:
            self._candidate = None
        payload = BargeVerdict(candidate, confirm).pack()
        return self._send_control(MsgType.BARGE_VERDICT, payload, reliable=True)

    def _confirmer_says(self, verdict: bool | None) -> None:
        if verdict is not None and self._candidate is not None:
            self.answer_barge_in(self._candidate, verdict)

    def _run_confirmer(self, step: Callable[[BargeConfirmer], bool | None]) -> None:
        confirmer = self.confirmer
        if confirmer is None:
            return
        try:
            self._confirmer_says(step(confirmer))
        except Exception:  # a confirmer bug must not take the socket down: the relay's window decides
            self._server.stats.callback_errors += 1
            if not self.confirmer_failed:
                self.confirmer_failed = True
                logger.exception(
                    "barge-in confirmer failed for call %x; further errors only counted", self.call_id
                )

    def _keepalive_due(self, now: float) -> None:
        """The server's tick: send a KEEPALIVE when nothing went to the relay for the asked interval."""
        interval = self._keepalive_s
        if interval is None or self._state.ended:
            return
        if self._sent:
            self._sent = False
            self._sent_at = now
        elif now - self._sent_at >= interval - KEEPALIVE_TICK_S / 2:
            self.send_keepalive()
            self._sent_at = now

    def send_keepalive(self) -> None:
        """Tell the relay this agent is alive (the server does it on its own for calls that asked)."""
        if self._state.ended or self._keepalive_s is None:
            return  # never to a relay that did not ask: an older one would count it as garbage
        msg = Message(MsgType.KEEPALIVE, self.call_id, self._state.next_control_seq(), self._out_ts)
        with contextlib.suppress(LinkError):
            self._server.send_control(msg, self._state.peer, self._state.key_id)
            self.keepalives_sent += 1

    async def hangup(self, reason: str = "agent_hangup") -> bool:
        """End the call and tell the relay; True when the relay acknowledged."""
        wire.pack_call_end(reason)  # a bad reason raises before anything changes
        future = self._end(reason, notify=True)
        return False if future is None else await future

    def _send_control(self, mtype: MsgType, payload: bytes, *, reliable: bool) -> asyncio.Future[bool] | None:
        if self._state.ended:
            return None
        msg = Message(mtype, self.call_id, self._state.next_control_seq(), self._out_ts, payload=payload)
        self._sent = True
        if reliable:
            return self._server.send_reliable(msg, self._state.peer, self._state.key_id)
        self._server.send_control(msg, self._state.peer, self._state.key_id)
        return None

    # -- driven by the server --------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        mtype = msg.type
        if mtype is MsgType.AUDIO_IN:
            if not self._state.audio_in_order(msg.seq):
                self._server.stats.audio_late += 1
                return
            flags = msg.flags
            frame = AudioFrame(
                msg.payload,
                msg.seq,
                msg.timestamp,
                bool(flags & FLAG_MARKER),
                (flags & LEVEL_MASK) >> LEVEL_SHIFT if flags & FLAG_LEVEL_PRESENT else None,
                bool(flags & FLAG_VOICE),
            )
            if not self._frames.put(frame):
                self._server.stats.frames_dropped += 1
            if self.confirmer is not None:
                self._run_confirmer(lambda c: c.on_audio(msg.seq, msg.timestamp, msg.payload))
            return
        if not self._server.accept_control(msg, self._state):
            return
        if mtype is MsgType.BARGE_CANDIDATE:
            candidate = msg.barge_candidate()
            self._candidate = candidate.candidate
            self._events.put(
                BargeCandidateNotice(candidate.candidate, candidate.played_samples, msg.timestamp)
            )
            self._run_confirmer(lambda c: c.on_candidate(msg.timestamp))
        elif mtype is MsgType.BARGE_IN:
            self._candidate = None
            self._after_barge_in = True
            self._events.put(BargeInNotice(msg.barge_in(), msg.timestamp))
        elif mtype is MsgType.MARK:
            self._events.put(MarkReached(msg.mark_name(), msg.timestamp))
        elif mtype is MsgType.EVENT:
            self._events.put(RelayEvent(msg.json()))
        elif mtype is MsgType.CALL_END:
            self._end(msg.reason(), notify=False)
        elif mtype is MsgType.KEEPALIVE:
            self._relay_keeps_alive = True  # (the server counted the datagram for the idle sweep)
        else:  # CALL_START retransmitted with a new seq, or a relay-bound type sent the wrong way
            self._server.stats.garbage += 1

    def _end(self, reason: str, *, notify: bool = False) -> asyncio.Future[bool] | None:
        """Mark the call over (once); with ``notify`` also send CALL_END and return its ACK future."""
        if self._state.ended:
            return None
        future = None
        if notify:
            future = self._server.send_reliable(
                call_end_message(self._state, reason), self._state.peer, self._state.key_id
            )
        self._state.ended = True
        self.end_reason = reason
        self._frames.close()
        self._events.close()
        self._done.set()
        self._server.abandon_call(self._state.peer, self._state.call_id)
        self._server._forget(self)
        return future


async def _decoded(frames: AsyncIterator[AudioFrame], decoder: CallerAudioDecoder) -> AsyncIterator[PcmChunk]:
    async for frame in frames:
        for chunk in decoder.push(frame.seq, frame.payload):
            yield chunk


class PcmOutput:
    """One call's outbound PCM: each response streams as it is produced (:meth:`send`) and ends with
    :meth:`end`; its first frame carries the marker that starts a response at the relay."""

    def __init__(self, call: InferenceCall, encoder: AgentAudioEncoder) -> None:
        self._call = call
        self.encoder = encoder
        self._starting = True
        self._cleared_ms = 0

    def send(self, pcm: bytes) -> int:
        """Encode and send every full 20 ms now available; returns the frames sent (False-y: none yet)."""
        return self._send(self.encoder.push(pcm))

    def end(self) -> int:
        """The response is complete: send the rest (the last frame padded); the next send starts anew."""
        sent = self._send(self.encoder.flush())
        self._starting = True
        return sent

    def interrupted(self, notice: BargeInNotice) -> int:
        """After a barge-in: drop what was not framed yet, and return how many ms of the agent's own audio
        in this response the caller heard (to truncate an LLM context, like ``audio_end_ms``)."""
        heard = self.encoder.heard_ms(notice.barge_in.played_samples)
        self.encoder.clear()
        self._starting = True
        return heard

    def clear(self) -> asyncio.Future[bool] | None:
        """The agent interrupts itself (its LLM changed its mind, a tool result came in): drop what was
        not framed yet, tell the relay to drop every frame sent so far (CLEAR), and start the next
        ``send`` as a new response. Returns the CLEAR's ACK future (None once the call ended)."""
        self._cleared_ms = self.encoder.input_samples * 1000 // self.encoder.input_rate
        self.encoder.clear()
        self._starting = True
        return self._call.clear()

    def cleared(self, event: RelayEvent) -> int | None:
        """The relay's answer to ``clear`` (a ``relay.cleared`` event): how many ms of the cleared
        response the caller heard, never more than the agent gave; None for any other event."""
        if event.data.get("type") != CLEARED_EVENT:
            return None
        heard = event.data.get("heard_samples")
        if type(heard) is not int or heard < 0:
            return None
        return max(0, min(heard * 1000 // wire.SAMPLE_RATE, self._cleared_ms))

    def _send(self, frames: list[bytes]) -> int:
        for frame in frames:
            if not self._call.send_audio(frame, marker=self._starting):
                break
            self._starting = False
        return len(frames)


class InferenceServer(WireEndpoint):
    """UDP server taking calls from any number of relays; one handler task per call.

    ``key`` is the wire key shared with the relays (``WireKey.parse(text)``, or a ``WireKeyring``
    during a rotation); None reads SPLITRELAY_WIRE_KEY from the environment and raises
    ``WireKeyError`` naming it when unset. Only a CALL_START sealed with it, sent within
    ``call_start_window`` seconds of this host's clock and never seen before, opens a call.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: WireKey | WireKeyring | None = None,
        max_calls: int = 1000,
        idle_timeout: float = IDLE_TIMEOUT,
        frame_queue: int = FRAME_QUEUE,
        rto: float = DEFAULT_RTO,
        attempts: int = DEFAULT_ATTEMPTS,
        call_start_window: float = CALL_START_WINDOW_S,
        confirmer: ConfirmerFactory | None = None,
        relay_timeout: float = RELAY_TIMEOUT,
    ) -> None:
        """``confirmer`` makes each call's barge-in confirmer (e.g. ``lambda call: VadConfirmer()``,
        relay/inference/vad.py); None leaves candidates to the handler or the relay's default policy."""
        super().__init__(key=key, role="inference", rto=rto, attempts=attempts)
        self.confirmer = confirmer
        self.call_start_guard = CallStartGuard(call_start_window)
        if not 0 <= port <= 65535:
            raise ValueError(f"port: must be 0..65535, got {port}")
        if not 1 <= max_calls <= 100_000:
            raise ValueError(f"max_calls: must be 1..100000, got {max_calls}")
        if not 0.1 <= idle_timeout <= 3600:
            raise ValueError(f"idle_timeout: must be 0.1..3600 seconds, got {idle_timeout}")
        if relay_timeout and not 0.5 <= relay_timeout <= 3600:
            raise ValueError(f"relay_timeout: must be 0 (off) or 0.5..3600 seconds, got {relay_timeout}")
        if not 1 <= frame_queue <= 50_000:
            raise ValueError(f"frame_queue: must be 1..50000 frames, got {frame_queue}")
        self._handler = handler
        self._local: Peer = (host, port)
        self.max_calls = max_calls
        self.idle_timeout = idle_timeout
        self.relay_timeout = relay_timeout
        self.frame_queue = frame_queue
        self.address: Peer | None = None
        self._calls: dict[tuple[Peer, int], InferenceCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    @property
    def calls(self) -> list[InferenceCall]:
        return list(self._calls.values())

    async def start(self) -> Peer:
        """Bind the socket; returns the bound (host, port) (useful with port 0)."""
        self.address = await self._open(self._local)
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="inference-idle-sweep")
        self._keepalive_task = asyncio.create_task(self._keepalives(), name="inference-keepalives")
        return self.address

    async def close(self, grace: float = 1.0) -> None:
        """End every call (telling its relay), let handlers finish for ``grace`` s, then cancel them."""
        for background in (self._sweeper, self._keepalive_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self._sweeper = self._keepalive_task = None
        waiting: set[asyncio.Future[Any]] = set(self._tasks)
        for call in list(self._calls.values()):
            future = call._end("server_closing", notify=True)
            if future is not None:
                waiting.add(future)
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=grace)
            for task in pending & self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=grace)
        await self._close_socket()

    async def __aenter__(self) -> InferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- receive path ----------------------------------------------------------------------------

    def handle(self, msg: Message, peer: Peer, size: int, key_id: int | None) -> None:
        # Keyed by (address, call id): audio from any other address than the authenticated
        # CALL_START's finds no call and goes the unknown-call way (counted, reply limited).
        call = self._calls.get((peer, msg.call_id))
        if call is not None:
            call._rx += 1
            call._on_message(msg)
        elif msg.type is MsgType.CALL_START:
            self._start_call(msg, peer, size, key_id)
        else:
            self.handle_unknown(msg, peer, size, key_id)

    def _start_call(self, msg: Message, peer: Peer, size: int, key_id: int | None) -> None:
        if (peer, msg.call_id) in self._recent:  # a late retransmit of a call already over
            self.handle_unknown(msg, peer, size, key_id)
            return
        info = msg.call_start()
        state = CallState(msg.call_id, peer, key_id)
        refused = self.call_start_guard.admit(msg.call_id, info.sent_at_ms)
        if refused is not None:
            # A recorded CALL_START replayed, or a relay whose clock is off: one reply, limited.
            self.stats.call_start_refused += 1
            self.remember_ended(peer, msg.call_id)
            end = call_end_message(state, f"call_start_{refused}")
            if self.reply_unknown(self.seal(end, key_id), peer, size):
                logger.warning(
                    "refusing CALL_START from %s:%d: %s (sent_at_ms %d; window %g s, check NTP)",
                    peer[0],
                    peer[1],
                    refused,
                    info.sent_at_ms,
                    self.call_start_guard.window_s,
                )
            return
        if len(self._calls) >= self.max_calls:
            # No ACK: the CALL_END answers the CALL_START, so the relay's start_call fails at once.
            logger.warning(
                "refusing call from %s:%d: %d calls is the limit", peer[0], peer[1], self.max_calls
            )
            self.remember_ended(peer, msg.call_id)
            self.send_reliable(call_end_message(state, "capacity"), peer, key_id)
            return
        self.accept_control(msg, state)
        call = InferenceCall(self, state, info)
        self._calls[(peer, msg.call_id)] = call
        call.send_keepalive()  # at once: the relay watches this call's liveness from its first one
        call._sent_at = asyncio.get_running_loop().time()
        task = asyncio.get_running_loop().create_task(self._run(call), name=f"inference-call-{msg.call_id:x}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call: InferenceCall) -> None:
        reason = "agent_done"
        try:
            await self._handler(call)
        except asyncio.CancelledError:
            reason = "agent_cancelled"
            raise
        except Exception:
            reason = "agent_error"
            logger.exception("handler failed for call %s (%x)", call.info.call, call.call_id)
        finally:
            call._end(reason, notify=True)

    def _forget(self, call: InferenceCall) -> None:
        key = (call.relay, call.call_id)
        if self._calls.get(key) is call:
            del self._calls[key]
        self.remember_ended(call.relay, call.call_id)

    def on_unacked(self, call_id: int, msg_type: MsgType, peer: Peer) -> None:
        if msg_type is MsgType.BARGE_VERDICT:
            return  # a v2 relay without candidates never ACKs one: the call goes on (docs/wire-protocol.md)
        call = self._calls.get((peer, call_id))
        if call is not None:
            call._end("relay_unreachable")

    async def _keepalives(self) -> None:
        """Every KEEPALIVE_TICK_S: a KEEPALIVE for each call that asked and sent nothing for its interval
        (a call that streams audio sends none). Bounded by the server's lifetime: close() cancels it."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEPALIVE_TICK_S)
            now = loop.time()
            for call in list(self._calls.values()):
                call._keepalive_due(now)

    async def _sweep_idle(self) -> None:
        """End calls whose relay went silent (crashed or partitioned) without a CALL_END: after
        ``idle_timeout``, or ``relay_timeout`` for a relay that sends keep-alives (``relay_lost``)."""
        period = min(1.0, self.idle_timeout / 4, (self.relay_timeout or 4.0) / 4)
        seen: dict[InferenceCall, tuple[int, float]] = {}
        loop = asyncio.get_running_loop()
        while True:  # bounded by the server's lifetime: close() cancels it
            await asyncio.sleep(period)
            now = loop.time()
            live = set(self._calls.values())
            for call in live:
                last = seen.get(call)
                if last is None or last[0] != call._rx:
                    seen[call] = (call._rx, now)
                elif self.relay_timeout and call._relay_keeps_alive and now - last[1] >= self.relay_timeout:
                    call._end("relay_lost", notify=True)
                elif now - last[1] >= self.idle_timeout:
                    call._end("idle_timeout", notify=True)
            for call in set(seen) - live:
                del seen[call]


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (it is a dependency), else on plain asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
