"""One UDP port for every call of a relay process: the demultiplexer (issue 17).

Each call's ICE username fragment (ufrag) is minted here, so the first STUN packet of a flow says
which call it belongs to. STUN binding requests are routed by the local half of their USERNAME (and
only after their MESSAGE-INTEGRITY checks out with that call's ICE password), STUN responses by the
transaction id of the request the call sent, and everything else (DTLS, SRTP, SRTCP; RFC 7983 first
byte ranges) by the remote address a STUN packet of that call last came from. aioice and aiortc keep
doing ICE and DTLS: each call gets a ``VirtualTransport`` that sends through the shared socket and
receives what the demultiplexer hands its protocol. The state is soft (a lost or evicted flow is
learned again from the next STUN packet), every table is bounded, and a datagram that belongs to no
call is dropped and counted, never raised. docs/architecture.md, "One port per worker".

Batched (the default): the port reads its socket itself (``loop.add_reader``) and drains it with
``recvmmsg``, up to ``RECV_BATCH`` datagrams per system call and ``RECV_CALLS_PER_TURN`` calls per loop
turn (a busy port cannot starve the loop, nor the inference socket: the rest waits for the next turn);
the native extension (relay/media/native) does the system call, and without it (or with
``SPLITRELAY_NATIVE=0``) a ``recvfrom`` loop with the same bounds delivers the same datagrams in the
same order. What the calls send
goes through one queue: the relay hands it a batch (``batch_sends``: relay/inference/udp_batch.py's
``SendBatch``, one ``sendmmsg`` per loop turn), so order is the order of ``sendto``, per call and across
calls. ``SPLITRELAY_MEDIA_BATCH=0`` keeps the socket in a uvloop datagram transport instead (one
``recvfrom`` per datagram, one ``sendto`` per packet): the A/B of ``splitrelay bench relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import string
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from splitrelay.relay.media import native

logger = logging.getLogger(__name__)

Address = tuple[str, int]
SendTo = Callable[[bytes, Address], None]

_STUN_COOKIE = b"\x21\x12\xa4\x42"
_STUN_USERNAME = 0x0006
_STUN_INTEGRITY = 0x0008
_STUN_BINDING = 0x0001
_STUN_HEADER = 20
_INTEGRITY_LEN = 20
_MAX_USERNAME = 513  # RFC 8489 section 14.3
_UFRAG_ALPHABET = string.ascii_letters + string.digits
_UFRAG_TOKEN_LEN = 16  # 16 base62 characters: 95 bits, not guessable by an off-path sender
_MAX_LABEL = 24
_SOCKET_BUFFER = 4 * 1024 * 1024

BATCH_ENV = "SPLITRELAY_MEDIA_BATCH"
"""Set to 0 (or off/false/no) for the unbatched shared port (a uvloop datagram transport)."""
RECV_BATCH = 32
"""Datagrams one ``recvmmsg`` takes at most: libuv's budget per socket and poll (uv__udp_recvmsg reads up
to 32), so when the process is short of CPU the shared port and the inference socket (a uvloop transport)
are read alike. At 64 x 4 per turn the media side took eight times the inference side's share and the
echoes from inference were the datagrams the kernel dropped (measured: 91% lost at 500 calls on half a
core, all of them at the inference socket)."""
RECV_CALLS_PER_TURN = 1
"""``recvmmsg`` calls per readable event: at most RECV_BATCH x this many datagrams per loop turn."""
SEND_BATCH = 64
"""Datagrams per ``sendmmsg`` (``batch_sends``'s default)."""
MAX_QUEUED_BYTES = 4 * 1024 * 1024
"""Bytes waiting for the socket to take them (after EAGAIN); more is dropped and counted."""
_NAME_CACHE = 65536  # source sockaddr -> (host, port); cleared when full
_ICMP_ERRORS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})

_received_ns = 0  # while a batch is delivered: when recvmmsg (or recvfrom) returned it


def arrival_ns() -> int:
    """When the datagram being delivered left the socket: its batch's time on the batched shared port,
    else now. The fast path stamps arrivals with it, so dwell covers the wait behind earlier datagrams
    of the same batch."""
    return _received_ns or time.perf_counter_ns()


class BatchSender(Protocol):
    """What ``batch_sends`` takes: relay/inference/udp_batch.py's ``SendBatch`` (media may not import it)."""

    def add(self, data: bytes, peer: Address) -> None: ...

    def flush(self) -> int: ...


def batching_enabled() -> bool:
    return os.environ.get(BATCH_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


@dataclass(frozen=True)
class DemuxLimits:
    """Bounds of every table the demultiplexer keeps (memory is bounded whatever arrives)."""

    max_calls: int = 4096
    """Calls registered at once; the next call gathers no candidate (a clear error at offer time)."""
    max_flows_per_call: int = 8
    """Remote addresses remembered per call (a caller's host, srflx and relay candidates); oldest goes."""
    max_flows: int = 32768
    """Remote addresses remembered in all; the oldest is forgotten (and relearned from its next STUN)."""
    max_transactions: int = 16384
    """Outstanding STUN requests the calls sent, to route their responses; the oldest is forgotten."""
    flow_hold_s: float = 30.0
    """A remote address stays with its call while that call's STUN refreshed it this recently: another
    call's check from the same address is refused (a spoofed source address cannot take a live flow).
    30 s is RFC 7675's consent expiry: a caller that sent no STUN for that long is gone."""

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_calls", 1, 1_000_000),
            ("max_flows_per_call", 1, 64),
            ("max_flows", 1, 10_000_000),
            ("max_transactions", 1, 10_000_000),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"DemuxLimits.{name} must be {low}..{high}, got {value}")
        if not 0 <= self.flow_hold_s <= 3600:
            raise ValueError(f"DemuxLimits.flow_hold_s must be 0..3600 seconds, got {self.flow_hold_s}")


@dataclass(frozen=True, slots=True)
class DemuxStats:
    """A snapshot of the demultiplexer's tables and counters."""

    calls: int
    flows: int
    transactions: int
    datagrams_in: int
    routed_by_ufrag: int
    """STUN requests routed by their USERNAME."""
    routed_by_transaction: int
    """STUN responses routed by the request a call sent."""
    routed_by_flow: int
    """DTLS, SRTP, SRTCP (and STUN indications) routed by the learned remote address."""
    unknown: int
    """Dropped: no call has that ufrag, transaction or remote address."""
    forged: int
    """Dropped: a STUN request for a known ufrag whose MESSAGE-INTEGRITY did not check out."""
    malformed: int
    """Dropped: not a well-formed STUN message, or outside every RFC 7983 range we carry."""
    foreign_worker: int
    """Dropped: a STUN request whose ufrag another worker minted (the caller reached the wrong port)."""
    flows_learned: int
    flows_moved: int
    """A remote address taken over by another call after its old call's STUN went quiet."""
    flow_conflicts: int
    """Dropped: another call's STUN from an address a live call holds (spoofing, or an SFU that reaches
    two calls from one address and port)."""
    flows_evicted: int
    transactions_evicted: int
    delivery_errors: int
    """Exceptions raised by a call's protocol while handling its datagram (counted, never propagated)."""
    sent: int
    send_after_close: int
    receive_calls: int = 0
    """System calls that read the socket (batched port: recvmmsg or recvfrom, empty reads included)."""
    oversize: int = 0
    """Dropped: longer than native.RECV_SLOT (batched port)."""
    send_queue_drops: int = 0
    """Dropped: the socket was full and MAX_QUEUED_BYTES already waited."""


class _Call:
    """One registered call: its ufrag, ICE password, protocol and the remote addresses learned for it."""

    __slots__ = ("flows", "key", "protocol", "transport", "ufrag")

    def __init__(self, ufrag: str, password: str, protocol: asyncio.DatagramProtocol) -> None:
        self.ufrag = ufrag
        self.key = password.encode()
        self.protocol = protocol
        self.flows: list[Address] = []
        self.transport: VirtualTransport | None = None


def stun_username_and_integrity(data: bytes) -> tuple[bytes | None, int | None]:
    """USERNAME and the offset of MESSAGE-INTEGRITY of a STUN message (header already checked).

    Attributes after MESSAGE-INTEGRITY are not authenticated (RFC 8489 section 14.5), so a USERNAME
    that follows it is treated as absent.
    """
    username: bytes | None = None
    end = len(data)
    pos = _STUN_HEADER
    for _ in range(end // 4):  # each attribute takes at least 4 bytes: bounded by the length
        if pos + 4 > end:
            break
        kind = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        if pos + 4 + length > end:
            return username, None  # truncated attribute: not a message we take
        if kind == _STUN_USERNAME and length <= _MAX_USERNAME:
            username = data[pos + 4 : pos + 4 + length]
        elif kind == _STUN_INTEGRITY:
            return username, (pos if length == _INTEGRITY_LEN else None)
        pos += 4 + length + (-length % 4)
    return username, None


def stun_integrity_ok(data: bytes, offset: int, key: bytes) -> bool:
    """RFC 8489 section 14.5: HMAC-SHA1 over the message up to MESSAGE-INTEGRITY, length adjusted."""
    length = offset - _STUN_HEADER + 4 + _INTEGRITY_LEN
    signed = data[:2] + length.to_bytes(2, "big") + data[4:offset]
    expected = hmac.new(key, signed, hashlib.sha1).digest()
    return hmac.compare_digest(expected, data[offset + 4 : offset + 4 + _INTEGRITY_LEN])


def _stun_header_ok(data: bytes) -> bool:
    size = len(data)
    return (
        size >= _STUN_HEADER
        and data[4:8] == _STUN_COOKIE
        and ((data[2] << 8) | data[3]) == size - _STUN_HEADER
        and size % 4 == 0
    )


class Demux:
    """The routing tables and rules, without a socket (``SharedUdpPort`` gives it one)."""

    def __init__(
        self,
        send: SendTo,
        *,
        worker: int = 0,
        limits: DemuxLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= worker <= 9999:
            raise ValueError(f"worker must be 0..9999, got {worker}")
        self.limits = limits or DemuxLimits()
        self.send = send
        self.worker = worker
        self.prefix = f"w{worker}+"
        self._calls: dict[str, _Call] = {}
        self._flows: dict[Address, _Call] = {}
        self._refreshed: dict[Address, float] = {}  # same keys as _flows: when its call's STUN last came
        self._clock = clock
        self._transactions: dict[bytes, tuple[_Call, Address, bool]] = {}
        self.datagrams_in = 0
        self.routed_by_ufrag = 0
        self.routed_by_transaction = 0
        self.routed_by_flow = 0
        self.unknown = 0
        self.forged = 0
        self.malformed = 0
        self.foreign_worker = 0
        self.flows_learned = 0
        self.flows_moved = 0
        self.flow_conflicts = 0
        self.flows_evicted = 0
        self.transactions_evicted = 0
        self.delivery_errors = 0
        self.sent = 0
        self.send_after_close = 0

    # --- calls ---------------------------------------------------------------------------------

    def mint_ufrag(self, label: str = "") -> str:
        """A fresh ICE ufrag that names this worker and (optionally) the call: ``w<worker>+[label+]<token>``.

        ``label`` (a call id, say) is reduced to letters and digits and cut to 24 characters; it is for
        people reading captures and logs. The random token is what makes the ufrag unguessable.
        """
        clean = "".join(c for c in label if c in _UFRAG_ALPHABET)[:_MAX_LABEL]
        for _ in range(8):  # a collision of 95 random bits does not happen; bounded all the same
            token = "".join(secrets.choice(_UFRAG_ALPHABET) for _ in range(_UFRAG_TOKEN_LEN))
            ufrag = f"{self.prefix}{clean}+{token}" if clean else f"{self.prefix}{token}"
            if ufrag not in self._calls:
                return ufrag
        raise RuntimeError("could not mint an unused ufrag in 8 tries")

    def register(self, ufrag: str, password: str, protocol: asyncio.DatagramProtocol) -> _Call:
        """Give ``ufrag``'s STUN and flows to ``protocol``; OSError (aioice skips the address) if refused."""
        if not ufrag.startswith(self.prefix):
            raise OSError(
                f"ICE ufrag {ufrag!r} was not minted by this shared port (worker {self.worker}): "
                "build the peer with CandidatePolicy(shared_port=...) so VoicePeer mints it"
            )
        if ufrag in self._calls:
            raise OSError(f"ICE ufrag {ufrag!r} already has a candidate on this shared port")
        if len(self._calls) >= self.limits.max_calls:
            raise OSError(f"shared port full: {self.limits.max_calls} calls (DemuxLimits.max_calls)")
        call = self._calls[ufrag] = _Call(ufrag, password, protocol)
        return call

    def unregister(self, call: _Call) -> None:
        """Forget a call and its flows (its outstanding transactions age out of their bounded table)."""
        if self._calls.get(call.ufrag) is call:
            del self._calls[call.ufrag]
        for addr in call.flows:
            if self._flows.get(addr) is call:
                del self._flows[addr]
                del self._refreshed[addr]
        call.flows.clear()

    def flow_owner(self, addr: Address) -> str | None:
        """The ufrag of the call ``addr``'s DTLS and media go to, if any."""
        call = self._flows.get(addr)
        return call.ufrag if call is not None else None

    # --- inbound -------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Route one datagram of the shared socket to its call, or drop and count it."""
        self.datagrams_in += 1
        first = data[0] if data else 255
        if 127 < first < 192 or 19 < first < 64:  # SRTP/SRTCP, DTLS: by the learned flow
            call = self._flows.get(addr)
            if call is None:
                self.unknown += 1
                return
            self.routed_by_flow += 1
            self._deliver(call, data, addr)
        elif first < 4:
            self._stun_received(data, addr)
        else:  # ZRTP, TURN channels, QUIC, empty: nothing we carry
            self.malformed += 1

    def _stun_received(self, data: bytes, addr: Address) -> None:
        if not _stun_header_ok(data):
            self.malformed += 1
            return
        kind = (data[0] << 8) | data[1]
        klass = kind & 0x0110
        if klass == 0x0000:  # request
            self._stun_request(data, addr, kind)
        elif klass == 0x0010:  # indication (keep-alive): by the flow, like media
            call = self._flows.get(addr)
            if call is None:
                self.unknown += 1
                return
            self.routed_by_flow += 1
            self._deliver(call, data, addr)
        else:  # success or error response: by the request a call sent
            txid = data[8:20]
            pending = self._transactions.get(txid)
            if pending is None or pending[1] != addr:  # only the address asked may answer
                self.unknown += 1
                return
            del self._transactions[txid]
            if self._calls.get(pending[0].ufrag) is not pending[0]:  # the call has gone meanwhile
                self.unknown += 1
                return
            call, _, is_check = pending
            if is_check and not self._learn(call, addr):
                return
            self.routed_by_transaction += 1
            self._deliver(call, data, addr)

    def _stun_request(self, data: bytes, addr: Address, kind: int) -> None:
        username, integrity = stun_username_and_integrity(data)
        if username is None:
            self.unknown += 1
            return
        local, colon, _ = username.partition(b":")
        try:
            ufrag = local.decode("ascii")
        except UnicodeDecodeError:
            self.malformed += 1
            return
        call = self._calls.get(ufrag)
        if call is None:
            if ufrag.startswith("w") and "+" in ufrag and not ufrag.startswith(self.prefix):
                self.foreign_worker += 1
            else:
                self.unknown += 1
            return
        if not colon or integrity is None or not stun_integrity_ok(data, integrity, call.key):
            self.forged += 1
            return
        if kind == _STUN_BINDING and not self._learn(call, addr):
            return
        self.routed_by_ufrag += 1
        self._deliver(call, data, addr)

    def _learn(self, call: _Call, addr: Address) -> bool:
        """``addr``'s DTLS and media go to ``call`` from now on; False (counted) if a live call holds it.

        Each authenticated STUN refreshes its flow and moves it to the young end of the table, so the
        global bound forgets the flow refreshed longest ago.
        """
        now = self._clock()
        flows = self._flows
        owner = flows.get(addr)
        if owner is not None:
            if owner is not call and now - self._refreshed[addr] < self.limits.flow_hold_s:
                self.flow_conflicts += 1
                return False
            del flows[addr]
            del self._refreshed[addr]
            if owner is call:
                flows[addr] = call
                self._refreshed[addr] = now
                return True
            owner.flows.remove(addr)
            self.flows_moved += 1
        if len(call.flows) >= self.limits.max_flows_per_call:
            oldest = call.flows.pop(0)
            del flows[oldest]
            del self._refreshed[oldest]
            self.flows_evicted += 1
        if len(flows) >= self.limits.max_flows:
            oldest_addr = next(iter(flows))
            flows.pop(oldest_addr).flows.remove(oldest_addr)
            del self._refreshed[oldest_addr]
            self.flows_evicted += 1
        flows[addr] = call
        self._refreshed[addr] = now
        call.flows.append(addr)
        self.flows_learned += 1
        return True

    def _deliver(self, call: _Call, data: bytes, addr: Address) -> None:
        try:
            call.protocol.datagram_received(data, addr)  # looked up per datagram: the fast path hooks it
        except Exception:
            self.delivery_errors += 1
            if self.delivery_errors == 1:
                logger.exception("shared port: a call's protocol raised on a datagram (further only counted)")

    # --- outbound ------------------------------------------------------------------------------

    def send_from(self, call: _Call, data: bytes, addr: Address) -> None:
        """Send for ``call``; a STUN request is remembered so its response finds the call again."""
        if data and data[0] < 2 and len(data) >= _STUN_HEADER and ((data[0] << 8) | data[1]) & 0x0110 == 0:
            transactions = self._transactions
            if len(transactions) >= self.limits.max_transactions:
                del transactions[next(iter(transactions))]
                self.transactions_evicted += 1
            username, _ = stun_username_and_integrity(data)
            transactions[data[8:20]] = (call, addr, username is not None)
        self.sent += 1
        self.send(data, addr)

    def stats(self) -> DemuxStats:
        return DemuxStats(
            calls=len(self._calls),
            flows=len(self._flows),
            transactions=len(self._transactions),
            datagrams_in=self.datagrams_in,
            routed_by_ufrag=self.routed_by_ufrag,
            routed_by_transaction=self.routed_by_transaction,
            routed_by_flow=self.routed_by_flow,
            unknown=self.unknown,
            forged=self.forged,
            malformed=self.malformed,
            foreign_worker=self.foreign_worker,
            flows_learned=self.flows_learned,
            flows_moved=self.flows_moved,
            flow_conflicts=self.flow_conflicts,
            flows_evicted=self.flows_evicted,
            transactions_evicted=self.transactions_evicted,
            delivery_errors=self.delivery_errors,
            sent=self.sent,
            send_after_close=self.send_after_close,
        )


class VirtualTransport(asyncio.DatagramTransport):
    """What one call's aioice protocol holds instead of a socket: sends through the shared one."""

    def __init__(self, port: SharedUdpPort, call: _Call, sockname: Address) -> None:
        super().__init__()
        self._port = port
        self._demux = port.demux
        self._call = call
        self._sockname = sockname
        self._closing = False
        call.transport = self

    @property
    def ufrag(self) -> str:
        return self._call.ufrag

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing or addr is None:
            self._demux.send_after_close += 1
            return
        self._demux.send_from(self._call, bytes(data), (addr[0], addr[1]))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Unregister the call and tell its protocol, as a socket's close would (on the next loop turn)."""
        if self._closing:
            return
        self._closing = True
        self._demux.unregister(self._call)
        self._port._transports.discard(self)
        asyncio.get_running_loop().call_soon(self._call.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sockname
        if name == "peername":
            return None
        # No "socket": aioice would set buffer sizes on the shared socket for each call.
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._call.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("a shared-port call keeps its protocol")

    def __repr__(self) -> str:
        return f"<VirtualTransport ufrag={self._call.ufrag} closing={self._closing}>"


class _SharedProtocol(asyncio.DatagramProtocol):
    def __init__(self, port: SharedUdpPort) -> None:
        self._port = port

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._port.demux.datagram_received(data, addr if len(addr) == 2 else (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self._port.socket_errors += 1  # ICMP unreachable for one peer: not a reason to stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._port._lost()


def sockaddr_address(name: bytes) -> Address:
    """A raw ``sockaddr_in``/``sockaddr_in6`` (as recvmmsg fills it) to the (host, port) a socket gives."""
    family = int.from_bytes(name[0:2], sys.byteorder)
    port = int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET and len(name) >= 8:
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port
    if family == socket.AF_INET6 and len(name) >= 24:
        host = socket.inet_ntop(socket.AF_INET6, name[8:24])
        scope = int.from_bytes(name[24:28], sys.byteorder) if len(name) >= 28 else 0
        if scope:  # link-local: as Python's socket module names it
            try:
                host = f"{host}%{socket.if_indextoname(scope)}"
            except OSError:
                host = f"{host}%{scope}"
        return host, port
    raise ValueError(f"not an IPv4 or IPv6 socket address (family {family}, {len(name)} bytes)")


class BatchReader:
    """Drains a non-blocking UDP socket into ``deliver(data, addr)``, bounded per call (module docstring).

    ``native=True`` reads with ``recvmmsg`` (relay/media/native ``RecvBatch``); else with ``recvfrom``,
    one datagram per call: the reference, which delivers the same datagrams in the same order.
    """

    def __init__(
        self,
        sock: socket.socket,
        deliver: Callable[[bytes, Address], object],
        *,
        native_path: bool,
        batch: int = RECV_BATCH,
        calls_per_turn: int = RECV_CALLS_PER_TURN,
    ) -> None:
        if not 1 <= batch <= native.RECV_BATCH_MAX:
            raise ValueError(f"batch must be 1..{native.RECV_BATCH_MAX}, got {batch}")
        if not 1 <= calls_per_turn <= 64:
            raise ValueError(f"calls_per_turn must be 1..64, got {calls_per_turn}")
        self._sock = sock
        self._deliver = deliver
        self.batch = batch
        self.calls_per_turn = calls_per_turn
        # recvmmsg is Linux's (fastpath.c returns ENOSYS elsewhere): other systems read with recvfrom.
        native_path = native_path and sys.platform.startswith("linux")
        self._recv = native.RecvBatch(sock.fileno(), batch) if native_path else None
        self._names: dict[bytes, Address] = {}
        self.calls = 0
        """Receive system calls made (empty reads included)."""
        self.datagrams = 0
        self.oversize = 0
        self.errors = 0
        """ICMP errors queued on the socket (a peer's port unreachable) and other receive errors."""

    @property
    def native(self) -> bool:
        return self._recv is not None

    def drain(self) -> int:
        """Read what is there, within this turn's bound; returns how many datagrams were delivered."""
        global _received_ns
        try:
            return self._drain_native() if self._recv is not None else self._drain_python()
        finally:
            _received_ns = 0

    def _drain_native(self) -> int:
        global _received_ns
        recv = self._recv
        assert recv is not None
        deliver, names, batch = self._deliver, self._names, self.batch
        mem, names_mem, lengths, name_lengths = recv.mem, recv.names_mem, recv.lengths, recv.name_lengths
        slot, name_slot = native.RECV_SLOT, native.RECV_NAME_SLOT
        delivered = 0
        for _ in range(self.calls_per_turn):
            n = recv.receive()
            self.calls += 1
            if n <= 0:
                if n < 0 and self._error(-n):
                    continue  # an ICMP error took this call; datagrams may wait behind it
                break
            _received_ns = time.perf_counter_ns()
            for i in range(n):
                length = lengths[i]
                if length < 0:
                    self.oversize += 1
                    continue
                delivered += 1
                start = i * slot
                data = mem[start : start + length]
                start = i * name_slot
                key = names_mem[start : start + name_lengths[i]]
                addr = names.get(key)
                if addr is None:
                    try:
                        addr = sockaddr_address(key)
                    except ValueError:
                        self.errors += 1
                        continue
                    if len(names) >= _NAME_CACHE:
                        names.clear()
                    names[key] = addr
                deliver(data, addr)
            if n < batch:
                break  # the socket is empty: no need for a call that says so
        self.datagrams += delivered
        return delivered

    def _drain_python(self) -> int:
        global _received_ns
        sock, deliver = self._sock, self._deliver
        limit = native.RECV_SLOT
        delivered = 0
        for _ in range(self.calls_per_turn * self.batch):
            try:
                data, addr = sock.recvfrom(limit + 1)
            except (BlockingIOError, InterruptedError):
                self.calls += 1
                break
            except OSError as exc:
                self.calls += 1
                if self._error(exc.errno or 0):
                    continue
                break
            self.calls += 1
            _received_ns = time.perf_counter_ns()
            if len(data) > limit:
                self.oversize += 1
                continue
            delivered += 1
            deliver(data, addr if len(addr) == 2 else (addr[0], addr[1]))
        self.datagrams += delivered
        return delivered

    def _error(self, code: int) -> bool:
        """Count a receive error; True when reading may go on (an ICMP error for one peer)."""
        self.errors += 1
        if code not in _ICMP_ERRORS and self.errors == 1:
            logger.warning("shared port: receive failed: %s", os.strerror(code))
        return code in _ICMP_ERRORS


class SocketSender(asyncio.DatagramTransport):
    """The batched shared port's sending side: ``sendto`` now, or after what waits, in order.

    What the socket cannot take yet (EAGAIN) waits in a bounded queue drained when it is writable (as a
    uvloop transport does), so ``SendBatch`` can fall back to ``sendto`` without reordering anything.
    """

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._sock = sock
        self._loop = loop
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._queued = 0
        self._closing = False
        self.errors = 0
        """Datagrams the kernel refused (ICMP errors, EMSGSIZE): counted and skipped."""
        self.drops = 0
        """Datagrams dropped: the queue was full, or the socket closed."""

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            self.drops += 1
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._sock.fileno(), self._write_ready)
            except OSError:
                self.errors += 1
                return
        if self._queued + len(data) > MAX_QUEUED_BYTES:
            self.drops += 1
            return
        self._queue.append((bytes(data), addr))
        self._queued += len(data)

    def _write_ready(self) -> None:
        queue, sock = self._queue, self._sock
        for _ in range(len(queue)):  # bounded by what waits
            data, addr = queue[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
            queue.popleft()
            self._queued -= len(data)
        self._loop.remove_writer(sock.fileno())

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.drops += len(self._queue)
        self._queue.clear()
        self._queued = 0
        with contextlib.suppress(ValueError, OSError):  # the fd may be gone already
            self._loop.remove_writer(self._sock.fileno())

    def abort(self) -> None:
        self.close()


class SharedUdpPort:
    """One UDP socket that carries every call of a process. Build it with ``await SharedUdpPort.open``."""

    def __init__(self, worker: int = 0, limits: DemuxLimits | None = None) -> None:
        self.demux = Demux(self._send_unopened, worker=worker, limits=limits)
        self._transport: asyncio.DatagramTransport | None = None
        self._transports: set[VirtualTransport] = set()
        self._sock: socket.socket | None = None
        self._reader: BatchReader | None = None
        self._batch: BatchSender | None = None
        self.address: Address = ("", 0)
        self.socket_errors = 0
        self.closed = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int = 0,
        *,
        worker: int = 0,
        limits: DemuxLimits | None = None,
        batched: bool | None = None,
    ) -> SharedUdpPort:
        """Bind ``host:port`` (0: any free port); ``host`` is an address literal, best not a wildcard.

        ``batched`` (default: unless ``SPLITRELAY_MEDIA_BATCH=0``) reads with ``recvmmsg`` (module
        docstring); the native extension decides how, ``native.available()``.
        """
        address = ipaddress.ip_address(host)  # raises ValueError for a name
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self = cls(worker, limits)
        loop = asyncio.get_running_loop()
        if batching_enabled() if batched is None else batched:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            self._open_batched(loop, socket.socket(family, socket.SOCK_DGRAM), host, port)
            return self
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _SharedProtocol(self), local_addr=(host, port)
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # the kernel caps it at rmem_max/wmem_max
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        self._transport = transport
        self.demux.send = transport.sendto
        name = transport.get_extra_info("sockname")
        self.address = (str(name[0]), int(name[1]))
        if len(name) == 2:  # IPv4: addresses arrive as (host, port), so skip a call frame per datagram
            setattr(protocol, "datagram_received", self.demux.datagram_received)  # noqa: B010
        return self

    def _open_batched(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, host: str, port: int
    ) -> None:
        try:
            sock.setblocking(False)
            sock.bind((host, port))
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # the kernel caps it at rmem_max/wmem_max
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            self._reader = BatchReader(sock, self.demux.datagram_received, native_path=native.available())
            sender = SocketSender(sock, loop)
            loop.add_reader(sock.fileno(), self._reader.drain)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._transport = sender
        self.demux.send = sender.sendto
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))

    @property
    def batched(self) -> bool:
        """True when the port reads its socket itself in batches (``recvmmsg`` when ``native``)."""
        return self._reader is not None

    @property
    def native(self) -> bool:
        """True when the batched reads use ``recvmmsg`` (the native extension)."""
        return self._reader is not None and self._reader.native

    def batch_sends(self, factory: Callable[[asyncio.DatagramTransport], BatchSender]) -> bool:
        """Send through ``factory(transport)`` (``SendBatch``: one ``sendmmsg`` per loop turn) from now on.

        Only on the batched port (False otherwise: the uvloop transport keeps sending one by one). Every
        datagram goes through the one queue, so nothing overtakes anything sent before it.
        """
        if self._reader is None or self._transport is None or self.closed:
            return False
        self._batch = factory(self._transport)
        self.demux.send = self._batch.add
        return True

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    def candidate_host(self, host: str) -> bool:
        """Whether a host candidate on ``host`` can use this port (same address, or family on a wildcard)."""
        try:
            want = ipaddress.ip_address(host)
        except ValueError:
            return False
        mine = ipaddress.ip_address(self.host)
        return want == mine or (mine.is_unspecified and want.version == mine.version)

    def mint_ufrag(self, label: str = "") -> str:
        return self.demux.mint_ufrag(label)

    def attach(
        self, ufrag: str, password: str, protocol: asyncio.DatagramProtocol, host: str
    ) -> VirtualTransport:
        """A call's transport for a host candidate on ``host``; OSError (aioice skips it) when refused.

        One candidate per call: on a wildcard port a second address of the same call is refused, since
        the shared socket cannot tell which local address a datagram came to.
        """
        if self.closed or self._transport is None:
            raise OSError(f"shared port {self.address} is closed")
        if not self.candidate_host(host):
            raise OSError(f"shared port {self.address} does not serve host candidates on {host}")
        call = self.demux.register(ufrag, password, protocol)
        transport = VirtualTransport(self, call, (host, self.port))
        self._transports.add(transport)
        return transport

    def stats(self) -> DemuxStats:
        stats = self.demux.stats()
        reader, sender = self._reader, self._transport
        if reader is None or not isinstance(sender, SocketSender):
            return stats
        return dataclasses.replace(
            stats, receive_calls=reader.calls, oversize=reader.oversize, send_queue_drops=sender.drops
        )

    def _send_unopened(self, data: bytes, addr: Address) -> None:
        raise RuntimeError("SharedUdpPort: use `await SharedUdpPort.open(...)`")

    def _lost(self) -> None:
        self.closed = True
        for transport in list(self._transports):  # bounded by DemuxLimits.max_calls
            transport.close()

    def _close_batched(self, sock: socket.socket) -> None:
        """Flush what the calls sent, stop reading, close the socket; the calls' transports close next."""
        if self._batch is not None:
            self._batch.flush()
        assert self._transport is not None
        self._transport.close()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        self._sock = None
        self._lost()

    async def close(self) -> None:
        """Close the socket; every call's transport closes with it (aioice then ends its connection)."""
        if self._transport is None or self.closed:
            self.closed = True
            return
        if self._sock is not None:
            self._close_batched(self._sock)
            return
        self._transport.close()
        for _ in range(100):  # connection_lost arrives on the next turns
            if self.closed:
                break
            await asyncio.sleep(0)
        self._lost()
