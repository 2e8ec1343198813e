"""One end of the wire protocol: the UDP socket, acknowledged control messages, duplicate suppression.

Both ends (the inference SDK in ``relay/inference/sdk.py`` and the relay's ``relay/inference_link.py``)
need exactly the same reliability rules, so they live here once: a message sent with FLAG_RELIABLE
is retransmitted with exponential back-off until its ACK arrives or the attempts run out; a
receiver ACKs every reliable message (duplicates included, since the first ACK may be the one that
was lost) and acts on it only once. Audio is never retransmitted: a late frame is worse than a lost
one. Garbage datagrams are counted and dropped, never raised.

Authentication (version 2) lives here too: every control datagram is sealed on the way out and must
open with the shared key on the way in (``wire_auth.py``); one that does not is dropped unanswered
and counted. Each call's control messages pass a replay window, and replies to calls this end does not
know are rate-limited and never larger than the datagram that caused them.
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Final, cast

from splitrelay.inference import udp_recv, wire
from splitrelay.inference.udp_batch import ObserveNs, SendBatch
from splitrelay.inference.udp_batch import (
    Peer as Peer,  # numeric host and port: the demultiplexing key next to call_id
)
from splitrelay.inference.wire import FLAG_RELIABLE, Message, MsgType, WireError
from splitrelay.inference.wire_auth import (
    ReplayWindow,
    ReplyLimiter,
    Role,
    Sealer,
    WireKey,
    WireKeyring,
    resolve_keyring,
)

DEFAULT_RTO: Final = 0.05  # seconds before the first retransmission; doubles each attempt
DEFAULT_ATTEMPTS: Final = 6  # 50+100+200+400+800 ms: the peer is declared gone after about 1.55 s
DEDUP_WINDOW: Final = 128  # control seqs per call in the replay window (wire_auth.REPLAY_WINDOW)
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
    bad_version: int = 0  # datagrams of another protocol version (an old peer), dropped
    auth_failed: int = 0  # control datagrams with a missing, bad or unknown-key tag, dropped unanswered
    call_start_refused: int = 0  # authenticated CALL_STARTs refused as stale or replayed
    replies_limited: int = 0  # replies to unknown calls not sent: over the rate limit
    replies_too_large: int = 0  # replies to unknown calls not sent: larger than their request
    unknown_call: int = 0  # well-formed datagrams for a call this end does not know
    duplicates: int = 0  # control messages seen before or older than the replay window (not acted on)
    retransmits: int = 0
    ack_timeouts: int = 0  # reliable messages given up on
    send_errors: int = 0
    frames_dropped: int = 0  # audio frames dropped by a full per-call queue
    audio_late: int = 0  # audio frames dropped as duplicates or out of order
    callback_errors: int = 0  # exceptions raised by application callbacks (a relay's CallSink)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class CallState:
    """What both ends keep per call: the peer, the key, the control sequence counter, the replay window."""

    __slots__ = ("_control_seq", "_last_audio_seq", "call_id", "ended", "key_id", "peer", "replay")

    def __init__(self, call_id: int, peer: Peer, key_id: int | None = None) -> None:
        self.call_id = call_id
        self.peer = peer  # the address of the authenticated CALL_START: audio is taken only from it
        self.key_id = key_id  # the key the call started with (None: the current one), kept through a rotation
        self.replay = ReplayWindow(DEDUP_WINDOW)
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


_AUDIO_TYPE_VALUES: Final = frozenset(int(t) for t in wire.AUDIO_TYPES)
_VERSION: Final = wire.VERSION
_HEADER_SIZE: Final = wire.HEADER_SIZE


class WireEndpoint(asyncio.DatagramProtocol):
    """Socket plus reliability and authentication; subclasses implement ``handle`` and ``on_unacked``.

    ``key`` is the shared wire key (a ``WireKey``, or a ``WireKeyring`` during a rotation); None reads
    SPLITRELAY_WIRE_KEY from the environment and raises ``WireKeyError`` naming it when it is not set.
    There is no unauthenticated mode.

    ``receive_batch`` reads the socket with ``recvmmsg`` (relay/inference/udp_recv.py: up to 32
    datagrams per system call and loop turn) instead of a datagram transport's one ``recvmsg`` each.
    None (the default) means on for the inference side (the SDK) unless SPLITRELAY_INFERENCE_RECV_BATCH=0,
    and off for the relay side, whose ``RelayLink`` decides by itself (``batch_receive``).
    """

    def __init__(
        self,
        *,
        key: WireKey | WireKeyring | None,
        role: Role,
        rto: float = DEFAULT_RTO,
        attempts: int = DEFAULT_ATTEMPTS,
        receive_batch: bool | None = None,
    ) -> None:
        self._sealer = Sealer(resolve_keyring(key), role)
        self.reply_limiter = ReplyLimiter()
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
        if receive_batch is None:
            receive_batch = role == "inference" and udp_recv.enabled()
        self.receive_batch = receive_batch
        """Read the socket in batches (see the class docstring); set before the socket opens."""
        self._receiver: udp_recv.RecvBatch | None = None

    # -- socket lifecycle ----------------------------------------------------------------------

    async def _open(self, local: Peer) -> Peer:
        """Bind the UDP socket; returns the bound (host, port)."""
        if self._transport is not None:
            raise LinkError("endpoint: already open")
        loop = asyncio.get_running_loop()
        if self.receive_batch:
            return self._open_batched(local, loop)
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

    def _open_batched(self, local: Peer, loop: asyncio.AbstractEventLoop) -> Peer:
        """The socket owned here, read with ``recvmmsg`` (or its ``recvfrom`` reference where libc has
        none); sends still go through ``SendBatch`` on its transport, in order."""
        transport = udp_recv.open_socket(
            local,
            loop,
            self,
            self.datagram_received,
            buffer_size=SOCKET_BUFFER,
            use_recvmmsg=udp_recv.available(),
            on_error=self._receive_error,
        )
        self._receiver = transport.reader
        self.connection_made(transport)  # before the loop can run the reader: nothing is delivered yet
        bound = transport.get_extra_info("sockname")
        return (str(bound[0]), int(bound[1]))

    def _receive_error(self, code: int) -> None:
        self.stats.send_errors += 1  # an ICMP error for an earlier send, as error_received counts it

    @property
    def receiver(self) -> udp_recv.RecvBatch | None:
        """The batched reader while the socket is read in batches (its counters: calls, oversize, errors)."""
        return self._receiver

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
        """Audio is decoded as it stands; anything else must open with the key first (before any JSON
        is parsed), else it is dropped unanswered and counted."""
        self.stats.datagrams_in += 1
        size = len(data)
        if size < _HEADER_SIZE:
            self.stats.garbage += 1
            return
        if data[0] != _VERSION:
            self.stats.bad_version += 1
            return
        key_id = None
        if data[1] in _AUDIO_TYPE_VALUES:
            body = data
        else:
            opened = self._sealer.open(data)
            if opened is None:
                self.stats.auth_failed += 1
                return
            body, key_id = opened
        try:
            msg = wire.decode(body)
        except WireError:
            self.stats.garbage += 1
            return
        peer: Peer = (addr[0], addr[1])
        if msg.type is MsgType.ACK:
            self._on_ack(msg, peer)
            return
        self.handle(msg, peer, size, key_id)

    def handle(self, msg: Message, peer: Peer, size: int, key_id: int | None) -> None:
        """Act on one decoded, non-ACK message. Must not raise.

        ``size`` is the datagram's length (a reply to an unknown call may not exceed it); ``key_id``
        the key a control message verified with (None for audio, which carries no tag).
        """
        raise NotImplementedError

    def accept_control(self, msg: Message, state: CallState) -> bool:
        """ACK ``msg`` if it asks for it; False when it must not be acted on (seen before, or too old).

        A CALL_END is acted on whatever its seq: it ends the call, so it cannot act twice, and a peer
        that restarted cannot know which seqs this end has seen (its "unknown_call" must still work).
        """
        if msg.flags & FLAG_RELIABLE:
            self._send_ack(msg, state.peer, state.key_id)
        if not state.replay.accept(msg.seq) and msg.type is not MsgType.CALL_END:
            self.stats.duplicates += 1
            return False
        return True

    accept_reliable = accept_control  # the name before version 2

    def seal(self, msg: Message, key_id: int | None = None) -> bytes:
        """The datagram of a control message: encoded, validated and authenticated."""
        return self._sealer.seal(wire.encode(msg), key_id)

    def _ack_datagram(self, msg: Message, key_id: int | None) -> bytes:
        return self.seal(Message(MsgType.ACK, msg.call_id, msg.seq, payload=wire.pack_ack(msg.type)), key_id)

    def _send_ack(self, msg: Message, peer: Peer, key_id: int | None) -> None:
        self.send_raw(self._ack_datagram(msg, key_id), peer)

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

    def handle_unknown(self, msg: Message, peer: Peer, size: int, key_id: int | None) -> None:
        """A message for a call not (or no longer) known here, or from another address than the call's.

        A recently ended call gets its reliable messages ACKed so the peer stops retransmitting;
        a call never seen (the other end restarted, or this one did) gets one compact CALL_END
        "unknown_call", so the peer stops sending into the void instead of waiting for a timeout.
        Either way at most one reply, through ``reply_unknown`` (rate-limited, never larger than
        the request): audio is unauthenticated and its source address may be forged.
        """
        self.stats.unknown_call += 1
        key = (peer, msg.call_id)
        if key in self._recent:
            # Never ACK a late CALL_START: it would open, at the relay, a call this end has
            # already ended or refused (the CALL_END that says so is on its way or retransmitting).
            if msg.reliable and msg.type is not MsgType.CALL_START:
                self.reply_unknown(self._ack_datagram(msg, key_id), peer, size)
            return
        self.remember_ended(peer, msg.call_id)
        if msg.type is MsgType.CALL_END:
            self.reply_unknown(self._ack_datagram(msg, key_id), peer, size)
            return
        # Sent once, not retransmitted, and not ACKed first: the CALL_END ends the call at the peer,
        # which then stops retransmitting by itself.
        end = Message(MsgType.CALL_END, msg.call_id, 0, flags=FLAG_RELIABLE)  # empty: "unknown_call"
        self.reply_unknown(self.seal(end, key_id), peer, size)

    def reply_unknown(self, data: bytes, peer: Peer, request_size: int) -> bool:
        """Send a reply to a datagram for an unknown call, unless larger than it or over the rate limit."""
        if len(data) > request_size:
            self.stats.replies_too_large += 1
            return False
        if not self.reply_limiter.allow(peer):
            self.stats.replies_limited += 1
            return False
        self.send_raw(data, peer)
        return True

    # -- send ----------------------------------------------------------------------------------

    def send_control(self, msg: Message, peer: Peer, key_id: int | None = None) -> None:
        """Send a control message once, sealed (an EVENT or MARK without RELIABLE)."""
        self.send_raw(self.seal(msg, key_id), peer)

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

    def send_reliable(self, msg: Message, peer: Peer, key_id: int | None = None) -> asyncio.Future[bool]:
        """Send ``msg`` with FLAG_RELIABLE, sealed with ``key_id``; the future resolves True on ACK,
        False on give-up.

        Encoding happens before anything is sent or registered, so an invalid message raises
        WireError and leaves no trace.
        """
        data = self.seal(
            Message(msg.type, msg.call_id, msg.seq, msg.timestamp, msg.flags | FLAG_RELIABLE, msg.payload),
            key_id,
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
        MsgType.CALL_END,
        state.call_id,
        state.next_control_seq(),
        flags=FLAG_RELIABLE,
        payload=wire.pack_call_end(reason),
    )
