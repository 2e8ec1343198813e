"""The relay's end of the wire protocol: one UDP socket per relay process, many calls over it.

The per-call pipeline (``relay/call.py``) starts a call with ``start_call`` and gets back the u64
call id it uses on the per-packet path; ``send_audio_in`` is one struct pack, one dict lookup and
a place in the socket's send batch (one ``sendmmsg`` per loop turn, relay/inference/udp_batch.py). Messages
from inference are handed to the call's ``CallSink`` synchronously on the socket's callback, so
sinks must be quick (queue the frame, set a flag) and must not raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from splitrelay.inference import udp_recv, wire
from splitrelay.inference.endpoint import (
    DEFAULT_ATTEMPTS,
    DEFAULT_RTO,
    SOCKET_BUFFER,
    CallState,
    LinkError,
    Peer,
    WireEndpoint,
    call_end_message,
)
from splitrelay.inference.udp_batch import ObserveNs
from splitrelay.inference.wire import BargeIn, CallStart, Continuation, Message, MsgType
from splitrelay.inference.wire_auth import WireKey, WireKeyring
from splitrelay.relay.media import native, srtp_fastpath
from splitrelay.relay.media.native import Drain
from splitrelay.relay.media.shared_port import (
    batching_enabled,
    native_batch_enabled,
)

__all__ = ["AGENT_LOST", "CallSink", "LinkError", "RelayLink"]

AGENT_LOST = "agent_lost"
"""The CALL_END reason (to inference, and to the sink) of a call whose agent went silent (see RelayLink)."""
DEFAULT_KEEPALIVE_MS = 200
"""What CALL_START asks of the agent: send something for the call at least this often."""
DEFAULT_AGENT_TIMEOUT_S = 0.8
"""A watched call is lost after this long with nothing from its agent: with the sweep's 100 ms, an agent
that dies is declared lost 0.5..0.9 s after its death, and three lost keep-alives in a row are tolerated."""
SWEEP_S = 0.1
SWEEP_SLICES = 10
"""The sweep visits every call once per SWEEP_S, a slice of the calls every SWEEP_S / SWEEP_SLICES: one pass
over 1,000 calls at once held the loop 3-13 ms (measured), and every datagram arriving meanwhile waited."""

_AUDIO_OUT: int = MsgType.AUDIO_OUT.value
_AUDIO_IN: int = MsgType.AUDIO_IN.value
_AUDIO_OUT_MIN = wire.HEADER_SIZE + 1  # a header and at least one byte of Opus
_HEADER_UNPACK = wire.HEADER.unpack_from

logger = logging.getLogger("splitrelay.inference_link")


class CallSink(Protocol):
    """What the relay's per-call pipeline receives from inference. Called on the socket callback."""

    def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None: ...

    def on_mark(self, name: str, timestamp: int) -> None: ...

    def on_event(self, event: dict[str, Any]) -> None: ...

    def on_clear(self, timestamp: int) -> None: ...

    def on_call_end(self, reason: str) -> None: ...


class NativeSent(Protocol):
    """A call's slot in the relay's per-batch C path (relay/media/native ``InboundSlot``): it says whether
    C sent the call's audio since it was last asked, for the liveness sweep."""

    def take_sent(self) -> bool: ...


class MediaSink(Protocol):
    """Where the outbound C path's protected RTP goes: the shared media port (relay/media/shared_port.py
    ``SharedUdpPort``), which flushes what the calls queued before C sends (per call, order holds)."""

    def native_media_fd(self) -> int: ...

    def native_media_send(self, data: bytes, addr: tuple[str, int]) -> None: ...

    def native_media_sent(self, count: int) -> None: ...


class _LinkCall(CallState):
    __slots__ = (
        "end_reason",
        "heard",
        "heard_at",
        "native",
        "out",
        "sent",
        "sent_at",
        "sink",
        "sink_failed",
        "starting",
        "watched",
    )

    def __init__(self, call_id: int, peer: Peer, sink: CallSink) -> None:
        super().__init__(call_id, peer)
        self.sink = sink
        self.starting = True
        self.sink_failed = False
        self.end_reason: str | None = None
        # Liveness (docs/wire-protocol.md, "Keep-alives"): plain flags on the per-datagram paths, looked
        # at by one sweep per link every SWEEP_S, so a datagram costs an attribute store, not a clock read.
        self.watched = False  # the agent sent a KEEPALIVE: it knows them, so silence means it is gone
        self.heard = False  # something valid came from the agent since the last sweep
        self.heard_at = 0.0  # loop time of the sweep that last saw ``heard``
        self.sent = False  # something went to the agent since the last sweep
        self.sent_at = 0.0
        self.native: NativeSent | None = None  # the per-batch C path's slot, which sends audio too
        self.out: native.OutboundEntry | None = None
        """The call's entry in the outbound C path: it holds the in-order state of AUDIO_OUT (one copy)."""

    def audio_in_order(self, seq: int) -> bool:
        out = self.out
        if out is not None:
            return out.audio_in_order(seq)
        return super().audio_in_order(seq)


async def resolve_numeric(host: str, port: int) -> tuple[Peer, socket.AddressFamily]:
    """Resolve once, up front: ``sendto`` with a host name would resolve on every packet."""
    if not 1 <= port <= 65535:
        raise LinkError(f"inference.port: must be 1..65535, got {port}")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise LinkError(f"inference.host: cannot resolve {host!r} ({exc.strerror or exc})") from None
    family, _, _, _, sockaddr = infos[0]
    return (str(sockaddr[0]), int(sockaddr[1])), socket.AddressFamily(family)


PACE_TICK_NS = 1_000_000
"""The shortest wait of the C pacing's wake-up: libuv's timers count whole milliseconds, so a wake-up for a
slot less than 1 ms away fires at once, finds nothing due, and asks again, a busy loop until the slot
(measured: the relay at 96% of its core at 250 bursty calls). A frame then leaves < 1 ms after its slot,
as the Python pacer's timers let it."""
PACE_ROUNDS = 64
"""sr_pace calls one wake-up makes at most (each sends up to a batch): frames beyond wait a wake-up."""


class _NativeLinkReader(udp_recv.RecvBatch):
    """The inference socket read with the native extension's ``recvmmsg`` (relay/media/native ``RecvBatch``)
    so a batch can go to the outbound C path (``RelayLink.native_out``) before Python sees what is left:
    the SDK's reader, with the same bounds and counters, and one C call per batch in front. The socket has
    kernel receive timestamps on (``native.rx_timestamps``) unless ``SPLITRELAY_RX_TIMESTAMPS=0``: the
    outbound dwell of what C finishes counts from each datagram's arrival in the host."""

    def __init__(self, sock: socket.socket, link: RelayLink, on_error: Any) -> None:
        super().__init__(sock, link.datagram_received, use_recvmmsg=False, on_error=on_error)
        stamps = native.rx_timestamps(sock.fileno())
        self._recv = native.RecvBatch(sock.fileno(), self.batch, timed=True, stamps=stamps)
        self._link = link

    @property
    def native(self) -> bool:
        return True

    def drain(self) -> int:
        if self._stopped:
            return 0
        out = self._link.native_out
        drain = None if out is None else self._link.native_drain
        delivered = self._drain_fused(drain) if drain is not None else self._drain_batches()
        self.datagrams += delivered
        if delivered > self.most_per_turn:
            self.most_per_turn = delivered
        return delivered

    def _drain_batches(self) -> int:
        recv, link, batch = self._recv, self._link, self.batch
        delivered = 0
        for _ in range(self.calls_per_turn):
            n = recv.receive()
            self.calls += 1
            if n <= 0:
                if n < 0 and self._error(-n):
                    continue  # an ICMP error took this call; datagrams may wait behind it
                break
            decisions = None
            out = link.native_out
            if out is not None:
                finished = link.run_native_out(recv, n)
                if finished == n:  # all of it finished in C (never a cut datagram): nothing for Python
                    delivered += n
                    if n < batch:
                        break
                    continue
                if finished:
                    decisions = out.decisions
            delivered += self._deliver_batch(n, decisions)
            if self._stopped:
                break
            if n < batch:
                break  # the socket is empty: no need for a call that says so
        return delivered

    def _drain_fused(self, drain: Drain) -> int:
        """``_drain_batches`` with the batch loop in C (``RelayLink.drain_native_out``): Python runs once per
        wake-up, and again only for a batch that has datagrams for it (then as ``_drain_batches`` does)."""
        delivered, calls = native.drain_wakeup(
            drain,
            self._link.drain_native_out,
            self.calls_per_turn,
            self.batch,
            self._error,
            self._python_batch,
            lambda: self._stopped,
        )
        self.calls += calls
        return delivered

    def _python_batch(self, n: int, c_sent: bool) -> int:
        """The last drained batch has datagrams for Python: deliver them as ``_drain_batches`` does."""
        out = self._link.native_out
        return self._deliver_batch(n, out.decisions if out is not None and c_sent else None)

    def _deliver_batch(self, n: int, decisions: memoryview | None) -> int:
        """Python's part of a batch of ``n``: every datagram C did not finish (``decisions[i]`` 0: finished;
        None: it finished none), in order, until the reader stops. Returns the datagrams counted."""
        recv, names, deliver = self._recv, self._names, self._deliver
        mem, names_mem, lengths, name_lengths = recv.mem, recv.names_mem, recv.lengths, recv.name_lengths
        slot, name_slot = native.RECV_SLOT, native.RECV_NAME_SLOT
        delivered = 0
        for i in range(n):
            if self._stopped:
                return delivered
            length = lengths[i]
            if length < 0:
                self.oversize += 1
                continue
            delivered += 1
            if decisions is not None and decisions[i] == 0:
                continue  # finished in C
            start = i * name_slot
            key = names_mem[start : start + name_lengths[i]]
            addr = names.get(key)
            if addr is None:
                try:
                    addr = udp_recv.sockaddr_address(key)
                except ValueError:
                    self.errors += 1
                    delivered -= 1
                    continue
                if len(names) >= 4096:
                    names.clear()
                names[key] = addr
            start = i * slot
            deliver(mem[start : start + length], addr)
        return delivered


def _new_call_id(taken: dict[int, Any]) -> int:
    """A random non-zero u64 not in use: unguessable, and unlikely to meet a stale call after a restart."""
    for _ in range(16):  # a collision among 2**64 ids is vanishingly rare; 16 misses means a bug
        call_id = secrets.randbits(64)
        if call_id and call_id not in taken:
            return call_id
    raise LinkError("call_id: no free random id after 16 draws")


class RelayLink(WireEndpoint):
    """The relay side: sends AUDIO_IN, BARGE_IN and control to inference; routes its replies by call id.

    ``key`` is the wire key shared with inference (a ``WireKeyring`` during a rotation); None reads
    SPLITRELAY_WIRE_KEY from the environment and raises ``WireKeyError`` naming it when unset.
    Inference's messages are taken only from the address a call's CALL_START went to.
    """

    def __init__(
        self,
        inference: tuple[str, int],
        *,
        key: WireKey | WireKeyring | None = None,
        local_host: str | None = None,
        rto: float = DEFAULT_RTO,
        attempts: int = DEFAULT_ATTEMPTS,
        keepalive_ms: int = DEFAULT_KEEPALIVE_MS,
        agent_timeout_s: float = DEFAULT_AGENT_TIMEOUT_S,
    ) -> None:
        """``keepalive_ms`` goes to the agent in CALL_START; a call whose agent sent a KEEPALIVE is ended
        with ``agent_lost`` after ``agent_timeout_s`` with nothing from it (0 turns the watch off)."""
        super().__init__(key=key, role="relay", rto=rto, attempts=attempts)
        if not wire.MIN_KEEPALIVE_MS <= keepalive_ms <= wire.MAX_KEEPALIVE_MS:
            raise ValueError(
                f"keepalive_ms: must be {wire.MIN_KEEPALIVE_MS}..{wire.MAX_KEEPALIVE_MS}, got {keepalive_ms}"
            )
        if agent_timeout_s and not 2 * keepalive_ms / 1000 <= agent_timeout_s <= 60:
            raise ValueError(
                f"agent_timeout_s: must be 0 (off) or 2 keep-alive intervals..60 s, got {agent_timeout_s}"
            )
        self.keepalive_ms = keepalive_ms
        self.agent_timeout_s = agent_timeout_s
        self._target = inference
        self._local_host = local_host
        self._inference: Peer | None = None
        self._family = socket.AF_INET
        self._calls: dict[int, _LinkCall] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.agents_lost = 0  # calls ended because their agent went silent
        self.keepalives_sent = 0
        self.address: Peer | None = None

    @property
    def family(self) -> socket.AddressFamily:
        """The socket's address family (known once started): every endpoint a call uses must share it."""
        return self._family

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    async def start(self) -> Peer:
        """Resolve the inference address and bind an ephemeral port of the same family."""
        self._inference, self._family = await resolve_numeric(*self._target)
        host = self._local_host or ("::" if self._family == socket.AF_INET6 else "0.0.0.0")
        self.address = await self._open((host, 0))
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="relay-link-liveness")
        return self.address

    batch_receive = False
    """Read the socket with ``recvmmsg`` (set before ``start``): the relay does with its shared media port."""

    async def _open(self, local: Peer) -> Peer:
        """Read the socket in batches (the SDK's ``recvmmsg`` reader, relay/inference/udp_recv.py:
        inference's datagrams as the shared media port reads callers') when ``batch_receive`` is set and
        the native per-batch path runs; else a uvloop datagram transport (one ``recvmsg`` per datagram)."""
        self.receive_batch = (
            self.batch_receive and native.available() and native_batch_enabled() and batching_enabled()
        )
        return await super()._open(local)

    def _open_batched(self, local: Peer, loop: asyncio.AbstractEventLoop) -> Peer:
        """The SDK's batched socket, read by ``_NativeLinkReader`` when the outbound C path may run."""
        if not native.native_out_enabled() or not udp_recv.available():
            return super()._open_batched(local, loop)
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(local)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # a smaller kernel limit is fine
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            reader = _NativeLinkReader(sock, self, self._receive_error)
            transport = udp_recv.SocketTransport(sock, loop, self, reader)
            transport.start_reading()
        except BaseException:
            sock.close()
            raise
        self._receiver = reader
        self.connection_made(transport)  # before the loop can run the reader: nothing is delivered yet
        bound = transport.get_extra_info("sockname")
        return (str(bound[0]), int(bound[1]))

    # -- the outbound C path (relay/media/native NativeOutbound) ---------------------------------------

    native_out: native.NativeOutbound | None = None
    """Finishes inference's AUDIO_OUT toward the callers in C, when the shared media port runs it."""
    _media: MediaSink | None = None
    clock: Any = staticmethod(time.perf_counter_ns)
    """The playout clock the C path uses for a batch (the calls' playouts use the same)."""

    def attach_media(self, media: MediaSink) -> bool:
        """The shared media port runs the per-batch inbound path (relay/media/shared_port.py calls this):
        finish AUDIO_OUT in C toward it from now on, when this socket is read by ``_NativeLinkReader`` and
        ``SPLITRELAY_NATIVE_OUT`` is not 0. Calls opened from now on may map themselves
        (``map_native_out``)."""
        if not isinstance(self._receiver, _NativeLinkReader) or not native.native_out_enabled():
            return False
        self._media = media
        out = self.native_out = native.NativeOutbound(self._receiver.batch)
        if self.clock is not time.perf_counter_ns or srtp_fastpath.send_clock is not time.perf_counter_ns:
            clock, send_clock = self.clock, srtp_fastpath.send_clock  # C reads them (tests: fake ones)
            fake = lambda event: int(send_clock() if event == native.CLOCK_SEND else clock())  # noqa: E731
            out.set_clock(fake)  # a datagram's arrival (CLOCK_RECEIVED) is then the batch's time
            self._receiver._recv.set_clock(fake)
        self.native_drain = out.drain_for(self._receiver._recv) if native.native_drain_enabled() else None
        return True

    native_drain: native.Drain | None = None
    """The inference socket drained batch after batch in one C call per wake-up (``drain_native_out``);
    None: one C call per batch (``run_native_out``, ``SPLITRELAY_NATIVE_DRAIN=0``)."""

    def map_native_out(self, call_id: int, entry: native.OutboundEntry) -> bool:
        """AUDIO_OUT of the live call ``call_id`` may be finished through ``entry``; the link call's in-order
        state moves into it. False when the call is not live (or has not been acknowledged) here."""
        out = self.native_out
        state = self._calls.get(call_id)
        if out is None or state is None or state.ended or state.starting:
            return False
        if state.out is not entry:
            entry.adopt_audio_seq(state._last_audio_seq)
            state.out = entry
        return out.map(entry, call_id, state.peer)

    def run_native_out(self, recv: native.RecvBatch, count: int) -> int:
        """C over one batch read from the socket: finishes what it can, sends it toward the callers, and
        accounts it; returns how many datagrams it finished (``native_out.decisions`` says which)."""
        out, media = self.native_out, self._media
        if out is None or media is None:
            return 0
        clock = self.clock
        nout, sent, finished = out.run(
            recv, count, clock(), srtp_fastpath.send_clock(), media.native_media_fd()
        )
        if finished:
            datagrams_in, late = out.take_link_counts()
            stats = self.stats
            stats.datagrams_in += datagrams_in
            stats.audio_late += late
        if nout:
            self._hand_over(out, media, sent, nout)
            media.native_media_sent(nout)
        self._arm_pace()
        return finished

    @staticmethod
    def _hand_over(out: native.NativeOutbound, media: MediaSink, start: int, nout: int) -> None:
        """Datagrams ``start``..``nout`` C made but could not send (the socket held data): Python sends
        them behind what it holds, in order."""
        entries, handles = out.entries, out.out_handles
        for k in range(start, nout):
            entry = entries[handles[k]]
            if entry is not None and entry.remote is not None:
                media.native_media_send(out.out(k), entry.remote)

    pace_schedule: Callable[[float, Callable[[], None]], object] | None = None
    """Arms the wake-up that sends the frames C holds for their slot (the process's ``SharedPacer``);
    None: C holds no frames (``OutboundEntry.pace_in_c`` is not asked)."""
    _pace_armed_for: int | None = None
    _pace_armed = 0  # the armed wake-up's number: an earlier one armed since supersedes it

    def _arm_pace(self) -> None:
        """One wake-up for every frame C holds: at the earliest slot (``NativeOutbound.pace_due``)."""
        out, schedule = self.native_out, self.pace_schedule
        if out is None or schedule is None:
            return
        due = out.pace_due
        armed = self._pace_armed_for
        if due is None or (armed is not None and armed <= due):
            return
        self._pace_armed_for = due
        self._pace_armed = number = self._pace_armed + 1
        delay = due - self.clock()
        if 0 < delay < PACE_TICK_NS:  # sooner than the loop's timers can wait: it would spin until then
            delay = PACE_TICK_NS
        schedule(max(0, delay) / 1e9, lambda: self._pace(number))

    def _pace(self, number: int) -> None:
        """The wake-up: C sends every held frame now within `lead` of its slot, in one sendmmsg. A
        superseded wake-up does nothing (the earlier one that replaced it ran and armed the next)."""
        if number != self._pace_armed:
            return
        self._pace_armed_for = None
        out, media = self.native_out, self._media
        if out is None or media is None:
            return
        now = self.clock()
        for _ in range(PACE_ROUNDS):  # a batch of datagrams per round, every due frame now
            nout, sent = out.pace(now, srtp_fastpath.send_clock(), media.native_media_fd())
            if nout:
                self._hand_over(out, media, sent, nout)
                media.native_media_sent(nout)
            if nout < out.batch:
                break
        self._arm_pace()

    def drain_native_out(self, drain: native.Drain, turns: int) -> int:
        """Up to ``turns`` batches read, finished and sent in C (``native.Drain``), then accounted as
        ``run_native_out`` accounts one: the ``Drain`` status (``DRAIN_PYTHON``: the last batch has
        datagrams for Python)."""
        out, media = self.native_out, self._media
        if out is None or media is None:
            raise RuntimeError("relay link: the outbound C path does not run")
        status = drain.run(turns, media.native_media_fd())
        d = drain.state
        out.batches += d.batches
        finished = d.finished
        if finished:
            out.finished += finished
            datagrams_in, late = out.take_link_counts()
            stats = self.stats
            stats.datagrams_in += datagrams_in
            stats.audio_late += late
        made = d.made
        if made:
            if status == native.DRAIN_PYTHON:  # of the last batch: the socket held data
                self._hand_over(out, media, d.sent[0], d.nout)
            media.native_media_sent(made)
        self._arm_pace()
        return status

    @property
    def receive_calls(self) -> int:
        """System calls that read the socket when it is read in batches (0 otherwise)."""
        receiver = self.receiver
        return 0 if receiver is None else receiver.calls

    async def close(self) -> None:
        """End every call (telling inference, without waiting long) and close the socket."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        ends = [
            self._end(state, "relay_closing", notify=True, tell_sink=True)
            for state in list(self._calls.values())
        ]
        waiting = {f for f in ends if f is not None}
        if waiting:
            await asyncio.wait(waiting, timeout=0.5)
        await self._close_socket()

    async def __aenter__(self) -> RelayLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calls ---------------------------------------------------------------------------------

    async def start_call(
        self,
        call: str,
        sink: CallSink,
        *,
        channels: int = 1,
        metadata: dict[str, Any] | None = None,
        inference: tuple[str, int] | None = None,
        continues: Continuation | None = None,
    ) -> int:
        """Open a call at inference and wait for its ACK; returns the u64 call id for this call.

        ``inference`` picks another endpoint than the link's (same address family); ``continues`` tells
        the agent which call this one continues (a relay failover, or another agent after one was lost).

        Raises WireError for bad call/channels/metadata (nothing sent) and LinkError when
        inference does not acknowledge or refuses the call (e.g. "capacity"). Otherwise the sink
        may get messages before this returns (an agent can greet at once), and gets exactly one
        ``on_call_end`` unless the relay itself ends the call with ``end_call``.
        """
        if self._inference is None:
            raise LinkError("relay link: start() it before start_call()")
        payload = CallStart(
            call=call,
            channels=channels,
            metadata=metadata or {},
            sent_at_ms=int(time.time() * 1000),
            continues=continues,
            keepalive_ms=self.keepalive_ms if self.agent_timeout_s else None,
        ).pack()
        peer = self._inference
        if inference is not None:
            peer, family = await resolve_numeric(*inference)
            if family != self._family:
                raise LinkError(f"inference: {peer[0]} is not of the link socket's address family")
        call_id = _new_call_id(self._calls)
        state = _LinkCall(call_id, peer, sink)
        self._calls[call_id] = state
        msg = Message(MsgType.CALL_START, call_id, state.next_control_seq(), payload=payload)
        try:
            acked = await self.send_reliable(msg, peer)
        except BaseException:
            self._end(state, "relay_cancelled", notify=True, tell_sink=False)
            raise
        if state.starting:  # no message from inference reached the sink yet
            if state.ended:  # refused right after the ACK (e.g. "capacity")
                raise LinkError(f"inference at {peer[0]}:{peer[1]} refused call {call!r}: {state.end_reason}")
            if not acked:
                self._end(state, "inference_unreachable", notify=False, tell_sink=False)
                raise LinkError(
                    f"inference at {peer[0]}:{peer[1]} did not acknowledge CALL_START for {call!r}"
                )
            state.starting = False
        return call_id

    def send_audio_in(
        self,
        call_id: int,
        seq: int,
        timestamp: int,
        payload: bytes,
        flags: int = 0,
        observe: ObserveNs | None = None,
        since_ns: int = 0,
    ) -> bool:
        """Forward one caller Opus frame; ``flags`` from ``wire.audio_in_flags``. False if the call is over.

        ``seq`` should follow the RTP sequence (extended, offset to the call start) so inference
        sees upstream loss as gaps; ``timestamp`` is the RTP timestamp offset likewise. The frame
        leaves in this loop turn's batch; ``observe`` gets its wait from ``since_ns`` until it left.
        """
        state = self._calls.get(call_id)
        if state is None:
            return False
        state.sent = True
        data = wire.encode_audio(_AUDIO_IN, call_id, seq, timestamp, payload, flags)
        return self.send_batched(data, state.peer, observe, since_ns)

    def call_peer(self, call_id: int) -> Peer | None:
        """The inference endpoint a live call's datagrams go to (None: the link does not have it)."""
        state = self._calls.get(call_id)
        return None if state is None else state.peer

    def watch_native(self, call_id: int, slot: NativeSent) -> None:
        """``slot`` sends this call's AUDIO_IN too: the liveness sweep counts what it sent."""
        state = self._calls.get(call_id)
        if state is not None:
            state.native = slot

    # The per-batch C path's sink (relay/media/shared_port.py InferenceSink): C sends AUDIO_IN on this
    # socket between Python's batches, so what Python queued leaves first (control never overtakes audio).

    def native_fd(self) -> int:
        """Flush this turn's queue; the socket's fd when it holds nothing unsent, else -1."""
        transport = self._transport
        batch = self._batch
        if transport is None or batch is None:
            return -1
        if batch.queued:
            batch.flush()
        if getattr(transport, "get_write_buffer_size", lambda: 0)():
            return -1
        return batch.fd

    def native_send(self, data: bytes, peer: Peer) -> None:
        """A datagram C made but could not send: through the transport, after what waits there."""
        transport = self._transport
        if transport is not None:
            transport.sendto(data, peer)

    def native_sent(self, count: int) -> None:
        self.stats.datagrams_out += count

    def send_barge_in(
        self, call_id: int, *, played_samples: int, dropped_frames: int, response_seq: int, timestamp: int = 0
    ) -> asyncio.Future[bool] | None:
        """Tell inference the caller spoke over the response (after flushing the outbound queue)."""
        payload = BargeIn(played_samples, dropped_frames, response_seq).pack()
        return self._control(call_id, MsgType.BARGE_IN, payload, timestamp, reliable=True)

    def send_barge_candidate(
        self, call_id: int, candidate: int, *, played_samples: int, timestamp: int = 0
    ) -> asyncio.Future[bool] | None:
        """Ask inference to confirm or reject a barge-in (playout is paused meanwhile)."""
        payload = wire.BargeCandidate(candidate, played_samples).pack()
        return self._control(call_id, MsgType.BARGE_CANDIDATE, payload, timestamp, reliable=True)

    def send_mark(self, call_id: int, name: str, timestamp: int) -> asyncio.Future[bool] | None:
        """Echo a MARK once playout reached it (``timestamp`` = the mark's AUDIO_OUT position)."""
        return self._control(call_id, MsgType.MARK, wire.pack_mark(name), timestamp, reliable=True)

    def send_event(
        self, call_id: int, event: dict[str, Any], *, reliable: bool = False
    ) -> asyncio.Future[bool] | None:
        """Pass a JSON event (from the client, or the relay's own) to inference."""
        return self._control(call_id, MsgType.EVENT, wire.pack_event(event), 0, reliable=reliable)

    async def end_call(self, call_id: int, reason: str = "caller_hangup") -> bool:
        """End the call and tell inference; True once acknowledged, False if unknown or unacked."""
        wire.pack_call_end(reason)  # a bad reason raises before anything changes
        state = self._calls.get(call_id)
        if state is None:
            return False
        future = self._end(state, reason, notify=True, tell_sink=False)
        return False if future is None else await future

    def _control(
        self, call_id: int, mtype: MsgType, payload: bytes, timestamp: int, *, reliable: bool
    ) -> asyncio.Future[bool] | None:
        state = self._calls.get(call_id)
        if state is None:
            return None
        msg = Message(mtype, call_id, state.next_control_seq(), timestamp, payload=payload)
        state.sent = True
        if reliable:
            return self.send_reliable(msg, state.peer)
        self.send_control(msg, state.peer)
        return None

    def _end(
        self, state: _LinkCall, reason: str, *, notify: bool, tell_sink: bool
    ) -> asyncio.Future[bool] | None:
        if state.ended:
            return None
        future = self.send_reliable(call_end_message(state, reason), state.peer) if notify else None
        state.ended = True
        state.end_reason = reason
        out = self.native_out
        if out is not None and state.out is not None and state.out.wire_id == state.call_id:
            out.unmap(state.out)  # C takes nothing more of it: what comes now is not a call's
        if self._calls.get(state.call_id) is state:
            del self._calls[state.call_id]
        self.abandon_call(state.peer, state.call_id)  # also wakes a start_call that was refused
        self.remember_ended(state.peer, state.call_id)
        if tell_sink and not state.starting:
            try:
                state.sink.on_call_end(reason)
            except Exception:
                self._sink_failed(state)
        return future

    def _sink_failed(self, state: _LinkCall) -> None:
        """Count a sink exception; log only the first of each call (never once per packet)."""
        self.stats.callback_errors += 1
        if not state.sink_failed:
            state.sink_failed = True
            logger.exception(
                "call sink failed for call %x; further errors of this call are only counted", state.call_id
            )

    # -- receive path ----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """AUDIO_OUT, the one message that flows 50 times a second per call, skips the generic decode.

        It is checked as `wire.decode` would (version, type, size, flags, payload) straight from the
        header, then handed to its call; anything else, or anything odd, takes the full path.
        """
        size = len(data)
        if _AUDIO_OUT_MIN <= size <= wire.MAX_DATAGRAM and data[0] == wire.VERSION and data[1] == _AUDIO_OUT:
            _, _, flags, call_id, seq, timestamp = _HEADER_UNPACK(data)
            state = self._calls.get(call_id)
            if state is not None and not flags & ~wire.FLAG_MARKER and state.peer == (addr[0], addr[1]):
                self.stats.datagrams_in += 1
                state.starting = False
                state.heard = True
                if not state.audio_in_order(seq):
                    self.stats.audio_late += 1
                    return
                try:
                    state.sink.on_audio_out(seq, timestamp, data[wire.HEADER_SIZE :], bool(flags))
                except Exception:  # a sink bug must not take the socket (and every other call) down
                    self._sink_failed(state)
                return
        super().datagram_received(data, addr)

    def handle(self, msg: Message, peer: Peer, size: int, key_id: int | None) -> None:
        state = self._calls.get(msg.call_id)
        if state is None or state.peer != peer:  # audio (or anything) from another address: not the call's
            self.handle_unknown(msg, peer, size, key_id)
            return
        try:
            self._dispatch(state, msg)
        except Exception:  # a sink bug must not take the socket (and every other call) down
            self._sink_failed(state)

    def _dispatch(self, state: _LinkCall, msg: Message) -> None:
        mtype = msg.type
        if mtype is MsgType.AUDIO_OUT:
            state.starting = False
            state.heard = True
            if state.audio_in_order(msg.seq):
                state.sink.on_audio_out(msg.seq, msg.timestamp, msg.payload, msg.marker)
            else:
                self.stats.audio_late += 1
            return
        if not self.accept_control(msg, state):
            return
        state.heard = True
        if mtype is MsgType.KEEPALIVE:
            if not state.watched and self.agent_timeout_s:
                state.watched = True  # the agent knows keep-alives: from now on its silence means loss
                state.heard_at = asyncio.get_running_loop().time()
            state.starting = False
            return
        if mtype is MsgType.CALL_END:
            # While starting, a CALL_END is a refusal: start_call raises and the sink hears nothing.
            self._end(state, msg.reason(), notify=False, tell_sink=True)
            return
        state.starting = False  # inference has the call, even if its ACK is still on the way
        if mtype is MsgType.MARK:
            state.sink.on_mark(msg.mark_name(), msg.timestamp)
        elif mtype is MsgType.EVENT:
            state.sink.on_event(msg.json())
        elif mtype is MsgType.CLEAR:
            state.sink.on_clear(msg.timestamp)
        elif mtype is MsgType.BARGE_VERDICT:
            verdict = msg.barge_verdict()
            on_verdict = getattr(state.sink, "on_barge_verdict", None)  # optional: older sinks lack it
            if on_verdict is not None:
                on_verdict(verdict.candidate, verdict.confirm)
        else:  # an inference-bound type sent the wrong way
            self.stats.garbage += 1

    async def _sweep(self) -> None:
        """Every SWEEP_S, for each call: end it when it is watched and its agent was silent for
        ``agent_timeout_s`` (``agent_lost``), and send a KEEPALIVE when this end sent it nothing for a
        keep-alive interval, so the agent's own idle timer holds on a quiet call. The calls are visited in
        SWEEP_SLICES slices, one every SWEEP_S / SWEEP_SLICES, so the loop is never held for all of them at
        once; a call is visited once per pass (those started meanwhile join the next pass).

        A slice that runs late (this process stalled: a collection, a busy core) declares nothing lost:
        the agent's datagrams may be waiting in the socket, and uvloop runs timers before reading it.
        """
        loop = asyncio.get_running_loop()
        tick = SWEEP_S / SWEEP_SLICES
        last = loop.time()
        pending: list[int] = []  # call ids left in this pass (ids, so an ended call is not kept alive)
        per_slice = 1
        for ticks in itertools.count():  # bounded by the link's life: close() cancels it
            await asyncio.sleep(tick)
            now = loop.time()
            late = now - last > tick + SWEEP_S
            last = now
            if ticks % SWEEP_SLICES == 0:  # a new pass: every call once per SWEEP_S
                pending = list(self._calls)
                per_slice = -(-len(pending) // SWEEP_SLICES)
            if pending:
                visit, pending = pending[:per_slice], pending[per_slice:]
                self._sweep_calls(visit, now, late)

    def _sweep_calls(self, call_ids: list[int], now: float, late: bool) -> None:
        """One slice of the liveness sweep (``_sweep``) over ``call_ids``, at loop time ``now``."""
        keepalive_s = self.keepalive_ms / 1000
        lost: list[_LinkCall] = []
        calls = self._calls
        for call_id in call_ids:
            state = calls.get(call_id)
            if state is None or not state.watched:
                continue
            if state.native is not None and state.native.take_sent():
                state.sent = True
            if state.out is not None and state.out.take_heard():
                state.heard = True
            if state.heard:
                state.heard = False
                state.heard_at = now
            elif not late and now - state.heard_at >= self.agent_timeout_s:
                lost.append(state)
                continue
            if state.sent:
                state.sent = False
                state.sent_at = now
            elif now - state.sent_at >= keepalive_s - SWEEP_S / 2:
                self._send_keepalive(state)
                state.sent_at = now
        for state in lost:
            self.agents_lost += 1
            logger.warning(
                "agent at %s:%d sent nothing for call %x in %.2f s: agent lost",
                state.peer[0],
                state.peer[1],
                state.call_id,
                now - state.heard_at,
            )
            self._end(state, AGENT_LOST, notify=True, tell_sink=True)

    def _send_keepalive(self, state: _LinkCall) -> None:
        msg = Message(MsgType.KEEPALIVE, state.call_id, state.next_control_seq())
        try:
            self.send_control(msg, state.peer)
        except LinkError:
            return
        self.keepalives_sent += 1

    def on_unacked(self, call_id: int, msg_type: MsgType, peer: Peer) -> None:
        state = self._calls.get(call_id)
        if msg_type is MsgType.BARGE_CANDIDATE:
            return  # a v2 peer without candidates never ACKs one; the window's default policy decides
        if state is not None and state.peer == peer and msg_type is not MsgType.CALL_START:
            self._end(state, "inference_unreachable", notify=False, tell_sink=True)
