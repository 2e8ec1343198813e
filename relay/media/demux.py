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


The socket that carries it (batched reads and sends) is relay/media/shared_port.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitrelay.relay.media.shared_port import VirtualTransport

logger = logging.getLogger(__name__)

Address = tuple[str, int]
SendTo = Callable[[bytes, Address], None]
MediaClaim = Callable[[bytes, Address], bool]
"""A call's SRTP fast path, offered an SRTP or SRTCP datagram: it takes the datagram and says whether it
authenticated under the call's keys. A datagram that fails leaves the call's SRTP state as it was (the
replay window moves only on success), so the demultiplexer can offer one datagram to several calls that
share a remote address and route its source by the one that took it."""

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

    __slots__ = ("flows", "key", "media_claim", "protocol", "transport", "ufrag")

    def __init__(self, ufrag: str, password: str, protocol: asyncio.DatagramProtocol) -> None:
        self.ufrag = ufrag
        self.key = password.encode()
        self.protocol = protocol
        self.flows: list[Address] = []
        self.transport: VirtualTransport | None = None
        self.media_claim: MediaClaim | None = None
        """Set by the call's SRTP fast path (``VirtualTransport.set_media_claim``)."""


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
