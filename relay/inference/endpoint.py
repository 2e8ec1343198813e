"""One end of the wire protocol: the UDP socket, acknowledged control messages, duplicate suppression.

Both ends (the inference SDK in ``relay/inference/sdk.py`` and the relay's ``relay/inference_link.py``)
need exactly the same reliability rules, so they live here once: a message sent with FLAG_RELIABLE
is retransmitted with exponential back-off until its ACK arrives or the attempts run out; a
receiver ACKs every reliable message (duplicates included, since the first ACK may be the one that
was lost) and acts on it only once. Audio is never retransmitted: a late frame is worse than a lost
one. Garbage datagrams are counted and dropped, never raised.
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict, deque
from dataclasses import dataclass, fields
from typing import Any, Final, cast

from splitrelay.inference import wire
from splitrelay.inference.udp_batch import ObserveNs, SendBatch
from splitrelay.inference.udp_batch import (
    Peer as Peer,  # numeric host and port: the demultiplexing key next to call_id
)
from splitrelay.inference.wire import FLAG_RELIABLE, Message, MsgType, WireError

DEFAULT_RTO: Final = 0.05  # seconds before the first retransmission; doubles each attempt
DEFAULT_ATTEMPTS: Final = 6  # 50+100+200+400+800 ms: the peer is declared gone after about 1.55 s
DEDUP_WINDOW: Final = 128  # reliable seqs remembered per call
RECENT_CALLS: Final = 4096  # ended calls remembered per endpoint, to ACK late retransmits quietly
SOCKET_BUFFER: Final = 1 << 21  # 2 MiB: several hundred calls' worth of bursts


class LinkError(RuntimeError):
    """Misuse of an endpoint (not open, unknown call); the text names what is wrong."""


@dataclass(slots=True)
class WireStats:
    """Counters of one endpoint; plain ints so the per-datagram cost is an attribute increment."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    garbage: int = 0  # datagrams that failed wire.decode
    unknown_call: int = 0  # well-formed datagrams for a call this end does not know
    duplicates: int = 0  # reliable messages seen before (ACKed again, not acted on)
    retransmits: int = 0
    ack_timeouts: int = 0  # reliable messages given up on
    send_errors: int = 0
    frames_dropped: int = 0  # audio frames dropped by a full per-call queue
    audio_late: int = 0  # audio frames dropped as duplicates or out of order
    callback_errors: int = 0  # exceptions raised by application callbacks (a relay's CallSink)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DedupWindow:
    """The last ``size`` reliable seqs of one call and direction, to act on each message once."""

    __slots__ = ("_order", "_seen")

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self._seen: set[int] = set()
        self._order: deque[int] = deque(maxlen=size)

    def is_duplicate(self, seq: int) -> bool:
        """True when ``seq`` was seen already; otherwise remembers it and returns False."""
        if seq in self._seen:
            return True
        if len(self._order) == self._order.maxlen:
            self._seen.discard(self._order[0])
        self._order.append(seq)
        self._seen.add(seq)
        return False


class CallState:
    """What both ends keep per call: the peer, the control sequence counter and the dedup window."""

    __slots__ = ("_control_seq", "_last_audio_seq", "call_id", "dedup", "ended", "peer")

    def __init__(self, call_id: int, peer: Peer) -> None:
        self.call_id = call_id
        self.peer = peer
        self.dedup = DedupWindow()
        self.ended = False
        self._control_seq = 0
        self._last_audio_seq: int | None = None

    def audio_in_order(self, seq: int) -> bool:
        """True for an audio frame newer than every one before; duplicates and late frames are not.

        A late frame is useless to a real-time consumer and confuses an Opus decoder; a gap
        (loss) is fine and left for the consumer to see in the seq numbers.
        """
        last = self._last_audio_seq
        if last is not None and wire.u32_diff(seq, last) <= 0:
            return False
        self._last_audio_seq = seq
        return True

    def next_control_seq(self) -> int:
        """Seq of the next non-audio message: its own space, so audio seq gaps still mean loss."""
        seq = self._control_seq
        self._control_seq = (seq + 1) & wire.U32
        return seq


@dataclass(slots=True)
class _Pending:
    data: bytes
    peer: Peer
    attempts: int
    future: asyncio.Future[bool]
    timer: asyncio.TimerHandle | None = None


_PendingKey = tuple[Peer, int, int, int]  # peer, call_id, type, seq


class WireEndpoint(asyncio.DatagramProtocol):
    """Socket plus reliability; subclasses implement ``handle`` and ``on_unacked``."""

    def __init__(self, *, rto: float = DEFAULT_RTO, attempts: int = DEFAULT_ATTEMPTS) -> None:
        if not 0.001 <= rto <= 5.0:
            raise ValueError(f"rto: must be 0.001..5.0 seconds, got {rto}")
        if not 1 <= attempts <= 20:
            raise ValueError(f"attempts: must be 1..20, got {attempts}")
        self.stats = WireStats()
        self._rto = rto
        self._attempts = attempts
        self._transport: asyncio.DatagramTransport | None = None
        self._batch: SendBatch | None = None
        self._pending: dict[_PendingKey, _Pending] = {}
        self._recent: OrderedDict[tuple[Peer, int], None] = OrderedDict()
        self._closed = asyncio.Event()

    # -- socket lifecycle ----------------------------------------------------------------------

    async def _open(self, local: Peer) -> Peer:
        """Bind the UDP socket; returns the bound (host, port)."""
        if self._transport is not None:
            raise LinkError("endpoint: already open")
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=local, family=family)
        sock = transport.get_extra_info("socket")
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:  # a smaller kernel limit is fine; the default still works
                pass
        bound = transport.get_extra_info("sockname")
        return (str(bound[0]), int(bound[1]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport is not a DatagramTransport subclass, so cast.
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._batch = SendBatch(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._batch = None
        self._closed.set()

    def error_received(self, exc: Exception) -> None:
        self.stats.send_errors += 1

    async def _close_socket(self) -> None:
        """Give up every pending retransmission and close the socket."""
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_result(False)
        self._pending.clear()
        transport = self._transport
        if transport is not None:
            if self._batch is not None:
                self._batch.flush()
            transport.close()
            await self._closed.wait()

    # -- receive -------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.stats.datagrams_in += 1
        try:
            msg = wire.decode(data)
        except WireError:
            self.stats.garbage += 1
            return
        peer: Peer = (addr[0], addr[1])
        if msg.type is MsgType.ACK:
            self._on_ack(msg, peer)
            return
        self.handle(msg, peer)

    def handle(self, msg: Message, peer: Peer) -> None:
        """Act on one decoded, non-ACK message. Must not raise."""
        raise NotImplementedError

    def accept_reliable(self, msg: Message, state: CallState) -> bool:
        """ACK ``msg`` if it asks for it; False when it is a duplicate that must not be acted on."""
        if not msg.flags & FLAG_RELIABLE:
            return True
        self._send_ack(msg, state.peer)
        if state.dedup.is_duplicate(msg.seq):
            self.stats.duplicates += 1
            return False
        return True

    def _send_ack(self, msg: Message, peer: Peer) -> None:
        self.send_raw(
            wire.encode(Message(MsgType.ACK, msg.call_id, msg.seq, payload=wire.pack_ack(msg.type))), peer
        )

    def _on_ack(self, msg: Message, peer: Peer) -> None:
        pending = self._pending.pop((peer, msg.call_id, int(msg.acked_type()), msg.seq), None)
        if pending is None:
            return  # a duplicate ACK, or one for a message already given up on
        if pending.timer is not None:
            pending.timer.cancel()
        if not pending.future.done():
            pending.future.set_result(True)

    def abandon_call(self, peer: Peer, call_id: int) -> None:
        """Stop retransmitting a call's messages (its futures resolve False), except its CALL_END."""
        for key in [
            k for k in self._pending if k[1] == call_id and k[0] == peer and k[2] != MsgType.CALL_END
        ]:
            pending = self._pending.pop(key)
            if pending.timer is not None:
                pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_result(False)

    # -- calls this end no longer (or never) knew ------------------------------------------------

    def remember_ended(self, peer: Peer, call_id: int) -> None:
        key = (peer, call_id)
        self._recent[key] = None
        self._recent.move_to_end(key)
        while len(self._recent) > RECENT_CALLS:
            self._recent.popitem(last=False)

    def handle_unknown(self, msg: Message, peer: Peer) -> None:
        """A message for a call not (or no longer) known here.

        A recently ended call gets its reliable messages ACKed so the peer stops retransmitting;
        a call never seen (the other end restarted, or this one did) gets one CALL_END
        "unknown_call", so the peer stops sending into the void instead of waiting for a timeout.
        """
        self.stats.unknown_call += 1
        key = (peer, msg.call_id)
        if key in self._recent:
            # Never ACK a late CALL_START: it would open, at the relay, a call this end has
            # already ended or refused (the CALL_END that says so is on its way or retransmitting).
            if msg.reliable and msg.type is not MsgType.CALL_START:
                self._send_ack(msg, peer)
            return
        if msg.type is MsgType.CALL_END:
            self._send_ack(msg, peer)
            self.remember_ended(peer, msg.call_id)
            return
        self.remember_ended(peer, msg.call_id)
        if msg.reliable:
            self._send_ack(msg, peer)
        # Sent once, not retransmitted: an unauthenticated sender must not get amplified replies.
        end = Message(
            MsgType.CALL_END, msg.call_id, 0, flags=FLAG_RELIABLE, payload=wire.pack_call_end("unknown_call")
        )
        self.send_raw(wire.encode(end), peer)

    # -- send ----------------------------------------------------------------------------------

    def send_raw(self, data: bytes, peer: Peer) -> None:
        """Send one datagram now, after anything batched (datagrams leave in the order they were made)."""
        transport = self._transport
        if transport is None:
            raise LinkError("endpoint: the socket is not open")
        batch = self._batch
        if batch is not None and batch.queued:
            batch.flush()
        transport.sendto(data, peer)
        self.stats.datagrams_out += 1

    def send_batched(
        self, data: bytes, peer: Peer, observe: ObserveNs | None = None, since_ns: int = 0
    ) -> bool:
        """Queue one datagram for this loop turn's batch (relay/inference/udp_batch.py); False if not open.

        ``observe`` gets the time from ``since_ns`` until the datagram left, for dwell telemetry.
        """
        batch = self._batch
        if batch is None:
            return False
        batch.add(data, peer, observe, since_ns)
        self.stats.datagrams_out += 1
        return True

    @property
    def batch(self) -> SendBatch | None:
        """The socket's send batch while it is open (its counters are part of the endpoint's stats)."""
        return self._batch

    def send_reliable(self, msg: Message, peer: Peer) -> asyncio.Future[bool]:
        """Send ``msg`` with FLAG_RELIABLE; the future resolves True on ACK, False on give-up.

        Encoding happens before anything is sent or registered, so an invalid message raises
        WireError and leaves no trace.
        """
        data = wire.encode(
            Message(msg.type, msg.call_id, msg.seq, msg.timestamp, msg.flags | FLAG_RELIABLE, msg.payload)
        )
        key: _PendingKey = (peer, msg.call_id, int(msg.type), msg.seq)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        old = self._pending.pop(key, None)
        if old is not None:  # same key re-sent: the old one is superseded
            if old.timer is not None:
                old.timer.cancel()
            old.future.set_result(False)
        pending = _Pending(data, peer, 0, future)
        self._pending[key] = pending
        self._transmit(key, pending)
        return future

    def _transmit(self, key: _PendingKey, pending: _Pending) -> None:
        if self._pending.get(key) is not pending:
            return
        if pending.attempts >= self._attempts:
            del self._pending[key]
            self.stats.ack_timeouts += 1
            pending.future.set_result(False)
            self.on_unacked(key[1], MsgType(key[2]), pending.peer)
            return
        if pending.attempts:
            self.stats.retransmits += 1
        delay = self._rto * (1 << pending.attempts)
        pending.attempts += 1
        try:
            self.send_raw(pending.data, pending.peer)
        except LinkError:
            self._pending.pop(key, None)
            pending.future.set_result(False)
            return
        pending.timer = asyncio.get_running_loop().call_later(delay, self._transmit, key, pending)

    def on_unacked(self, call_id: int, msg_type: MsgType, peer: Peer) -> None:
        """A reliable message ran out of attempts: the peer is unreachable for this call."""


def call_end_message(state: CallState, reason: str) -> Message:
    return Message(
        MsgType.CALL_END, state.call_id, state.next_control_seq(), payload=wire.pack_call_end(reason)
    )
