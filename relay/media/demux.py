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

Several calls may share one remote address (an anycast SFU reaches every session from one address and
port). Then SRTP/SRTCP goes by (address, SSRC), learned from the call whose keys authenticated it (its
fast path's ``MediaClaim``); DTLS goes to the one call whose turn it is at that address: a call that has
not finished its handshake holds its STUN and DTLS toward an address while another call's ICE and DTLS
set-up there is open, so the remote can start only one handshake from that address at a time ("turns").
A turn ends when both Finished messages have passed, whatever the call's DTLS role. A call whose last
flight was lost (a DTLS 1.2 server's ChangeCipherSpec and Finished) gets its remote's retransmitted flight
by that flight's content (its key exchange), never the next set-up: another handshake's records break
one in progress.


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
from collections import deque
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
_STUN_ICE_CONTROLLED = 0x8029
_STUN_BINDING = 0x0001
_STUN_HEADER = 20
_INTEGRITY_LEN = 20
_MAX_USERNAME = 513  # RFC 8489 section 14.3
_UFRAG_ALPHABET = string.ascii_letters + string.digits
_UFRAG_TOKEN_LEN = 16  # 16 base62 characters: 95 bits, not guessable by an off-path sender
_MAX_LABEL = 24
_MAX_SSRCS_PER_CALL = 16  # (address, SSRC) hints a call keeps: its remote's sources and RTCP reporters
_MAX_FLIGHT = 16  # handshake records of its remote's flights a call remembers (a final flight has 3-6)
_CLIENT_HELLO = 1
_FRESH = frozenset((2, 12, 15, 16))
"""Handshake messages whose first fragment no other handshake repeats: ServerHello (its random),
ServerKeyExchange, CertificateVerify (signatures), ClientKeyExchange (an ephemeral public key)."""


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
    30 s is RFC 7675's consent expiry: a caller that sent no STUN for that long is gone. A check from an
    address a live call holds makes the address shared (both calls keep it), never moves it."""
    max_calls_per_remote: int = 4096
    """Calls that may share one remote address (an anycast SFU reaches every session from one); the
    next call's check from it is refused (``flow_conflicts``)."""
    max_ssrcs_per_remote: int = 16384
    """(address, SSRC) -> call hints kept per shared address; the oldest is forgotten (and relearned)."""
    max_claim_trials: int = 64
    """Calls one SRTP/SRTCP datagram with an unknown SSRC from a shared address is offered to; the next
    such datagram goes on with the next calls, newest first."""
    claim_trials_per_s: float = 20000.0
    """Trial decryptions per second per shared address (a spoofed flood of new SSRCs costs at most
    this); beyond it the datagram is dropped (``claims_limited``)."""
    turn_hold_s: float = 5.0
    """Longest one call's ICE and DTLS set-up may keep a remote address to itself before the next
    call's turn (a remote that went quiet mid-handshake)."""
    turn_settle_s: float = 4.0
    """How long after its handshake a call still gets its remote's retransmitted last flight (as DTLS 1.2
    server: sent when our ChangeCipherSpec and Finished were lost; OpenSSL's client retransmits after 1 s,
    then 3 s). Its turn does not wait for this: it ends when both Finished messages have passed."""
    max_settling: int = 64
    """Calls per remote address kept for ``turn_settle_s`` after their handshake (the oldest goes first)."""
    max_held: int = 8
    """Datagrams a call waiting for its turn keeps; the oldest goes (``held_dropped``)."""

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_calls", 1, 1_000_000),
            ("max_flows_per_call", 1, 64),
            ("max_flows", 1, 10_000_000),
            ("max_transactions", 1, 10_000_000),
            ("max_calls_per_remote", 1, 1_000_000),
            ("max_ssrcs_per_remote", 1, 10_000_000),
            ("max_claim_trials", 1, 4096),
            ("max_held", 1, 256),
            ("max_settling", 1, 4096),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"DemuxLimits.{name} must be {low}..{high}, got {value}")
        if not 0 <= self.flow_hold_s <= 3600:
            raise ValueError(f"DemuxLimits.flow_hold_s must be 0..3600 seconds, got {self.flow_hold_s}")
        for name in ("turn_hold_s", "turn_settle_s"):
            value = getattr(self, name)
            if not 0 <= value <= 600:
                raise ValueError(f"DemuxLimits.{name} must be 0..600 seconds, got {value}")
        if not 1 <= self.claim_trials_per_s <= 10_000_000:
            raise ValueError(
                f"DemuxLimits.claim_trials_per_s must be 1..10000000, got {self.claim_trials_per_s}"
            )


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
    """Dropped: a check from an address already shared by ``max_calls_per_remote`` live calls."""
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
    flows_shared: int = 0
    """Checks that made a call join a remote address other live calls hold (an SFU's one address)."""
    routed_by_ssrc: int = 0
    """SRTP/SRTCP from a shared address taken by the call its (address, SSRC) was learned for."""
    routed_by_claim: int = 0
    """SRTP/SRTCP from a shared address with a new SSRC, taken by the call whose keys authenticated it."""
    early_media: int = 0
    """SRTP from a shared address no fast path took, handed to the calls there whose handshake has just
    ended (within ``turn_settle_s``) and to the call whose turn it is, those whose fast path has not
    attached yet (aioice queues it; a fast path authenticates it when it takes over, drops the others)."""
    unclaimed: int = 0
    """Dropped: SRTP/SRTCP from a shared address no call's keys authenticate (forged, or stale)."""
    claims_limited: int = 0
    """Dropped: SRTP/SRTCP with an unknown SSRC past ``claim_trials_per_s`` for its address."""
    dtls_ambiguous: int = 0
    """Dropped: DTLS from a shared address while no call that learned it has its turn there."""
    dtls_to_sharers: int = 0
    """Encrypted DTLS alerts or application records from a shared address handed to every call there
    whose handshake is over (each drops what does not authenticate under its keys)."""
    held: int = 0
    """STUN/DTLS a call sent toward an address while another call's set-up held it (sent at its turn)."""
    held_dropped: int = 0
    """Held datagrams dropped: over ``max_held``, or the call finished or closed before its turn."""
    turns_expired: int = 0
    """Turns that ended after ``turn_hold_s`` without the holder's handshake finishing."""
    dtls_retransmits: int = 0
    """Handshake flights from a shared address handed to the calls whose handshake ended there within
    ``turn_settle_s``, not to the call whose turn it is: a flight whose key exchange one of them already
    received (its remote retransmitted it), or one the holder cannot be waiting for (it has begun no
    handshake: no ClientHello yet)."""


class _Call:
    """One registered call: its ufrag, ICE password, protocol and the remote addresses learned for it."""

    __slots__ = (
        "_claim",
        "claim_since",
        "demux",
        "dtls_client",
        "dtls_enc",
        "enc_since",
        "flight",
        "flight_seq",
        "flows",
        "held",
        "hello",
        "key",
        "protocol",
        "settled",
        "settling_at",
        "ssrcs",
        "transport",
        "turns",
        "ufrag",
    )

    def __init__(
        self, ufrag: str, password: str, protocol: asyncio.DatagramProtocol, demux: Demux | None = None
    ) -> None:
        self.ufrag = ufrag
        self.key = password.encode()
        self.protocol = protocol
        self.flows: list[Address] = []
        self.transport: VirtualTransport | None = None
        self.demux = demux
        self._claim: MediaClaim | None = None
        self.claim_since: float | None = None
        self.settled = False
        """Its handshake is over: it needs no turn at any remote address again."""
        self.dtls_client = False
        """It sent a ClientHello: once both Finished messages passed, the remote has finished too."""
        self.dtls_enc = 0
        """Encrypted (epoch >= 1) DTLS records seen: 1 sent, 2 received (3: both Finished passed)."""
        self.enc_since: float | None = None
        self.hello = False
        """It sent or got a ClientHello: its handshake has begun, so the remote's other handshake records
        from its address may be its own."""
        self.flight: list[bytes] = []
        """Digests of the epoch-0 handshake records (no ClientHello) it got from its remote: as DTLS 1.2
        server, its client's final flight. A retransmission repeats them (with new record numbers)."""
        self.flight_seq = -1
        """The highest epoch-0 record sequence number among them."""
        self.settling_at: Address | None = None
        """Where its handshake ended, while it is in that address's ``Demux._settling``."""
        self.turns: list[Address] = []
        """Remote addresses where it is this call's turn (its set-up holds them)."""
        self.held: list[tuple[bytes, Address]] = []
        """What it sent toward addresses where another call has the turn, in order (sent at its turn)."""
        self.ssrcs: list[tuple[Address, int]] = []
        """(shared address, SSRC) hints learned for it, oldest first."""

    @property
    def media_claim(self) -> MediaClaim | None:
        """Set by the call's SRTP fast path (``VirtualTransport.set_media_claim``)."""
        return self._claim

    @media_claim.setter
    def media_claim(self, claim: MediaClaim | None) -> None:
        self._claim = claim
        if self.demux is not None:
            self.demux._claim_changed(self)


class _Shared:
    """A remote address several live calls learned: its calls (by last refresh) and (SSRC -> call) hints."""

    __slots__ = ("calls", "cursor", "joined", "ssrcs", "tokens", "tokens_at")

    def __init__(self, now: float, rate: float) -> None:
        self.calls: dict[_Call, float] = {}
        self.joined: list[_Call] = []
        """The same calls in the order they joined (trial decryption tries the newest first)."""
        self.ssrcs: dict[int, _Call] = {}
        self.cursor = 0
        self.tokens = rate
        self.tokens_at = now


class _Turn:
    """Whose ICE and DTLS set-up holds a remote address, since when, and who waits (in order)."""

    __slots__ = ("holder", "since", "waiters")

    def __init__(self, holder: _Call, since: float) -> None:
        self.holder = holder
        self.since = since
        self.waiters: deque[_Call] = deque()


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


def stun_has_attribute(data: bytes, wanted: int) -> bool:
    """Whether a STUN message (header already checked) carries an attribute of type ``wanted``."""
    end = len(data)
    pos = _STUN_HEADER
    for _ in range(end // 4):  # bounded by the length
        if pos + 4 > end:
            return False
        if ((data[pos] << 8) | data[pos + 1]) == wanted:
            return True
        length = (data[pos + 2] << 8) | data[pos + 3]
        pos += 4 + length + (-length % 4)
    return False


def dtls_records(data: bytes) -> tuple[bool, bool]:
    """(carries an encrypted record, carries handshake material) for one DTLS datagram, every record.

    A flight coalesces records (CCS and the encrypted Finished in one datagram), so each record header
    is read: epoch >= 1 is encrypted; epoch 0, ChangeCipherSpec (20) and handshake (22) records are the
    handshake's. A DTLS 1.3 unified header (first byte 32-63) hides both: taken as both, so it goes to the
    handshake's call, never to every call (misrouting a handshake breaks it; an alert only waits).
    """
    encrypted = handshake = False
    pos, end = 0, len(data)
    for _ in range(64):  # a datagram of at most 64 records is read; the rest is taken as handshake
        if pos >= end:
            return encrypted, handshake
        first = data[pos]
        if 31 < first < 64 or pos + 13 > end:
            return True, True
        epoch = (data[pos + 3] << 8) | data[pos + 4]
        if epoch:
            encrypted = True
        if not epoch or first in (20, 22):
            handshake = True
        pos += 13 + ((data[pos + 11] << 8) | data[pos + 12])
    return encrypted, True


def is_client_hello(data: bytes) -> bool:
    """Whether a DTLS datagram opens with a ClientHello (epoch 0): the one record that begins a handshake."""
    return len(data) > 13 and data[0] == 22 and data[3] == 0 and data[4] == 0 and data[13] == _CLIENT_HELLO


def handshake_records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(record sequence number, handshake type, digest of the body) of each epoch-0 handshake record; the
    type is -1 for a fragment that does not start its message (only a first fragment is fresh).

    A retransmitted flight repeats its handshake messages under new record sequence numbers (RFC 6347
    4.1: numbers are per record sent), so equal bodies with a higher number are the same flight again.
    The digest (BLAKE2b, 128 bits) keeps what a call remembers small and fixed.
    """
    found: list[tuple[int, int, bytes]] = []
    pos, end = 0, len(data)
    for _ in range(64):  # bounded like dtls_records
        if pos + 13 > end:
            break
        length = (data[pos + 11] << 8) | data[pos + 12]
        body = data[pos + 13 : pos + 13 + length]
        if data[pos] == 22 and data[pos + 3] == 0 and data[pos + 4] == 0 and body:
            seq = int.from_bytes(data[pos + 5 : pos + 11], "big")
            kind = body[0] if body[6:9] == b"\x00\x00\x00" else -1
            found.append((seq, kind, hashlib.blake2b(body, digest_size=16).digest()))
        pos += 13 + length
    return found


def retransmitted_by(calls: list[_Call], data: bytes) -> list[_Call]:
    """The calls whose remote's last flight ``data`` repeats.

    A datagram with a fresh message (a key exchange, a signature, a ServerHello's random: no other
    handshake carries the same) is the one call's that got that message. One without (a certificate alone,
    say, which one SFU certificate makes equal across sessions) repeats a call's flight if it carries a
    record whose body that call got, under a higher record number than it saw (a new record carrying an
    old message): every such call gets it (each has finished, and drops what is not its own).
    """
    records = handshake_records(data)
    fresh = [digest for _, kind, digest in records if kind in _FRESH]
    if fresh:
        return [call for call in calls if any(digest in call.flight for digest in fresh)][:1]
    return [
        call
        for call in calls
        if any(digest in call.flight and seq > call.flight_seq for seq, _, digest in records)
    ]


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
        self._flows: dict[Address, _Call] = {}  # addresses exactly one call holds: the hot path
        self._refreshed: dict[Address, float] = {}  # same keys as _flows: when its call's STUN last came
        self._shared: dict[Address, _Shared] = {}  # addresses several calls hold
        self._shared_flows = 0  # memberships of _shared, counted against max_flows with _flows
        self._turns: dict[Address, _Turn] = {}
        self._settling: dict[Address, deque[_Call]] = {}
        """Calls whose handshake there ended within ``turn_settle_s`` (with a flight to recognise), oldest
        first."""
        self.on_shared: Callable[[Address], None] | None = None
        """Told each address that becomes shared: a path that routes media by address alone (a native
        per-batch one) must hand that address's datagrams back to ``datagram_received``."""
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
        self.flows_shared = 0
        self.routed_by_ssrc = 0
        self.routed_by_claim = 0
        self.early_media = 0
        self.unclaimed = 0
        self.claims_limited = 0
        self.dtls_ambiguous = 0
        self.dtls_to_sharers = 0
        self.held = 0
        self.held_dropped = 0
        self.turns_expired = 0
        self.dtls_retransmits = 0

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
        call = self._calls[ufrag] = _Call(ufrag, password, protocol, self)
        return call

    def unregister(self, call: _Call) -> None:
        """Forget a call, its flows and turns (its outstanding transactions age out of their table)."""
        if self._calls.get(call.ufrag) is call:
            del self._calls[call.ufrag]
        for addr in list(call.flows):  # at most max_flows_per_call
            self._forget(call, addr)
        call.flows.clear()
        call.settled = True
        call.flight.clear()
        self._unsettle(call)
        self._end_turns(call, self._clock())
        call.demux = None

    def flow_owner(self, addr: Address) -> str | None:
        """The ufrag of the one call ``addr``'s DTLS and media go to, if one call alone holds it."""
        call = self._flows.get(addr)
        return call.ufrag if call is not None else None

    def flow_calls(self, addr: Address) -> list[str]:
        """The ufrags of every call that holds ``addr`` (one, or several when the remote is shared)."""
        call = self._flows.get(addr)
        if call is not None:
            return [call.ufrag]
        shared = self._shared.get(addr)
        return [c.ufrag for c in shared.joined] if shared is not None else []

    def is_shared(self, addr: Address) -> bool:
        """Whether several live calls hold ``addr`` (its media then goes by keys, not by address)."""
        return addr in self._shared

    def turn_holder(self, addr: Address) -> str | None:
        """The ufrag of the call whose set-up holds ``addr`` now, if any."""
        turn = self._turn(addr, self._clock())
        return turn.holder.ufrag if turn is not None else None

    # --- inbound -------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Route one datagram of the shared socket to its call, or drop and count it."""
        self.datagrams_in += 1
        first = data[0] if data else 255
        if 127 < first < 192 or 19 < first < 64:  # SRTP/SRTCP, DTLS: by the learned flow
            call = self._flows.get(addr)
            if call is None:
                self._shared_received(data, addr, first)
                return
            if first < 64 and not call.settled:
                self._note_flight(call, data)
            if call.turns:  # its set-up holds a turn: watch for its handshake's end
                if first > 63:
                    if call._claim is not None:
                        self._media_seen(call, addr)
                else:
                    self._dtls_seen(call, data, 2, addr)
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
                shared = self._shared.get(addr)
                turn = self._turn(addr, self._clock()) if shared is not None else None
                if turn is None or shared is None or turn.holder not in shared.calls:
                    self.unknown += 1
                    return
                call = turn.holder
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

    # --- flows ---------------------------------------------------------------------------------

    def _learn(self, call: _Call, addr: Address) -> bool:
        """``addr``'s DTLS and media may go to ``call`` from now on (an authenticated STUN came).

        An address a live call holds becomes shared by both (its media then goes by the keys that
        authenticate it, its DTLS by turns); one whose calls went quiet for ``flow_hold_s`` moves. False
        (counted) when ``max_calls_per_remote`` calls share it already. Each authenticated STUN refreshes
        its flow and moves it to the young end of the table, so the global bound forgets the flow
        refreshed longest ago.
        """
        now = self._clock()
        if addr in call.flows:  # refresh
            single = self._flows.get(addr)
            if single is call:
                del self._flows[addr]
                del self._refreshed[addr]
                self._flows[addr] = call
                self._refreshed[addr] = now
            else:
                shared = self._shared.get(addr)
                if shared is not None and shared.calls.pop(call, None) is not None:
                    shared.calls[call] = now
            return True
        shared = self._shared.get(addr)
        if shared is not None and len(shared.calls) >= self.limits.max_calls_per_remote:
            oldest, seen = next(iter(shared.calls.items()))
            if now - seen < self.limits.flow_hold_s:
                self.flow_conflicts += 1
                return False
            self._forget(oldest, addr)
            self.flows_moved += 1
        self._make_room(call)
        for _ in range(3):  # evictions above may have reshaped the address's entry: read it again
            shared = self._shared.get(addr)
            if shared is not None:
                shared.calls[call] = now
                shared.joined.append(call)
                self._shared_flows += 1
                self.flows_shared += 1
                break
            owner = self._flows.get(addr)
            if owner is None:
                self._flows[addr] = call
                self._refreshed[addr] = now
                break
            if now - self._refreshed[addr] >= self.limits.flow_hold_s:
                self._forget(owner, addr)
                self.flows_moved += 1
                continue
            if self.limits.max_calls_per_remote < 2:
                self.flow_conflicts += 1
                return False
            shared = self._shared[addr] = _Shared(now, self.limits.claim_trials_per_s)
            shared.calls[owner] = self._refreshed.pop(addr)
            shared.joined.append(owner)
            del self._flows[addr]
            self._shared_flows += 1
            if self.on_shared is not None:
                self.on_shared(addr)
        else:  # pragma: no cover - each branch above ends the loop by its second pass
            return False
        call.flows.append(addr)
        self.flows_learned += 1
        return True

    def _make_room(self, call: _Call) -> None:
        """Forget flows so one more fits: the call's oldest past its bound, the oldest of all past ours."""
        if len(call.flows) >= self.limits.max_flows_per_call:
            self._forget(call, call.flows[0])
            self.flows_evicted += 1
        if len(self._flows) + self._shared_flows >= self.limits.max_flows:
            if self._flows:
                addr = next(iter(self._flows))
                self._forget(self._flows[addr], addr)
            else:
                addr = next(iter(self._shared))
                self._forget(next(iter(self._shared[addr].calls)), addr)
            self.flows_evicted += 1

    def _forget(self, call: _Call, addr: Address) -> None:
        """``call`` no longer holds ``addr``; a shared address left with one call is that call's alone."""
        if addr in call.flows:
            call.flows.remove(addr)
        if self._flows.get(addr) is call:
            del self._flows[addr]
            del self._refreshed[addr]
            return
        shared = self._shared.get(addr)
        if shared is None or shared.calls.pop(call, None) is None:
            return
        shared.joined.remove(call)
        self._shared_flows -= 1
        for ssrc_addr, ssrc in call.ssrcs:
            if ssrc_addr == addr and shared.ssrcs.get(ssrc) is call:
                del shared.ssrcs[ssrc]
        call.ssrcs = [entry for entry in call.ssrcs if entry[0] != addr]
        if len(shared.calls) == 1:
            ((last, seen),) = shared.calls.items()
            del self._shared[addr]
            self._shared_flows -= 1
            self._flows[addr] = last
            self._refreshed[addr] = seen
        elif not shared.calls:
            del self._shared[addr]

    # --- shared remote addresses ---------------------------------------------------------------

    def _shared_received(self, data: bytes, addr: Address, first: int) -> None:
        shared = self._shared.get(addr)
        if shared is None:
            self.unknown += 1
        elif first < 64:
            self._shared_dtls(shared, data, addr)
        else:
            self._shared_media(shared, data, addr)

    def _shared_dtls(self, shared: _Shared, data: bytes, addr: Address) -> None:
        """Handshake DTLS from a shared address goes to the call whose turn it is there, and only if it
        learned the address (the remote can start a handshake only on a pair whose check succeeded).

        Except a flight that repeats the one a call there got just before its turn ended (as DTLS 1.2
        server: its ChangeCipherSpec and Finished were lost, the client sent its final flight again): that
        goes to that call, whose DTLS answers it again. And a flight that cannot begin a handshake (no
        ClientHello) while the holder has begun none is not the holder's: it goes to the calls whose
        handshake just ended there. A finished DTLS stack drops another handshake's records; one in
        progress would take them and fail (tests/integration/test_dtls_misrouting.py), so none is ever
        handed to the holder by guess.

        An encrypted alert or application record (a close_notify when a call ends) is handed to every
        call there whose handshake is over: DTLS silently drops a record that does not authenticate under
        its keys (RFC 6347 4.1.2.7), so only its own call acts on it; at most ``claim_trials_per_s``
        hand-overs a second per address.
        """
        now = self._clock()
        turn = self._turn(addr, now)
        encrypted, handshake = dtls_records(data)
        if handshake or not encrypted:
            holder = turn.holder if turn is not None and turn.holder in shared.calls else None
            if not is_client_hello(data):
                settling = self._settling_at(addr, now, shared)
                owners = retransmitted_by(settling, data) if settling else []
                if owners:
                    self.dtls_retransmits += 1
                    for call in owners:
                        self._deliver(call, data, addr)
                    return
                if holder is None or not holder.hello:
                    if settling and self._spend(shared, len(settling), now):
                        self.dtls_retransmits += 1
                        for call in settling:
                            self._deliver(call, data, addr)
                    elif settling:
                        self.claims_limited += 1
                    else:
                        self.dtls_ambiguous += 1
                    return
            if holder is None:
                self.dtls_ambiguous += 1
                return
            self.routed_by_flow += 1
            self._note_flight(holder, data)
            self._dtls_seen(holder, data, 2, addr)
            self._deliver(holder, data, addr)
            return
        targets = [c for c in shared.joined if c.settled or c.dtls_enc == 3 or c._claim is not None]
        if not targets:
            self.dtls_ambiguous += 1
            return
        if not self._spend(shared, len(targets), now):
            self.claims_limited += 1
            return
        self.dtls_to_sharers += 1
        for call in targets:
            self._deliver(call, data, addr)

    def _spend(self, shared: _Shared, count: int, now: float) -> bool:
        """Take ``count`` hand-overs from the address's budget (``claim_trials_per_s``), if it has them."""
        rate = self.limits.claim_trials_per_s
        shared.tokens = min(rate, shared.tokens + (now - shared.tokens_at) * rate)
        shared.tokens_at = now
        if shared.tokens < count:
            return False
        shared.tokens -= count
        return True

    def _settling_at(self, addr: Address, now: float, shared: _Shared) -> list[_Call]:
        """The live calls at ``addr`` whose handshake ended within ``turn_settle_s``."""
        queue = self._settling.get(addr)
        if queue is None:
            return []
        window = self.limits.turn_settle_s
        while queue and (
            self._calls.get(queue[0].ufrag) is not queue[0] or now - (queue[0].enc_since or 0.0) >= window
        ):  # bounded by max_settling
            queue.popleft().settling_at = None
        if not queue:
            del self._settling[addr]
            return []
        return [c for c in queue if c in shared.calls and self._calls.get(c.ufrag) is c]

    def _note_flight(self, call: _Call, data: bytes) -> None:
        """Remember what ``call``'s remote sent in its handshake: a ClientHello begins it; the bodies of
        the other epoch-0 handshake records (as DTLS 1.2 server: the client's final flight) say later
        whether a flight from a shared address repeats it."""
        if is_client_hello(data):
            call.hello = True
            return
        if not call.hello:
            return
        for seq, kind, digest in handshake_records(data):
            if kind != _CLIENT_HELLO and digest not in call.flight and len(call.flight) < _MAX_FLIGHT:
                call.flight.append(digest)
            call.flight_seq = max(call.flight_seq, seq)

    def _shared_media(self, shared: _Shared, data: bytes, addr: Address) -> None:
        """SRTP/SRTCP from a shared address: by its learned SSRC, else to the call whose keys take it."""
        size = len(data)
        rtcp = size > 1 and 191 < data[1] < 224
        if size < (8 if rtcp else 12):
            self.malformed += 1
            return
        ssrc = int.from_bytes(data[4:8] if rtcp else data[8:12], "big")
        hint = shared.ssrcs.get(ssrc)
        if hint is not None and hint._claim is not None and self._offer(hint, data, addr):
            self.routed_by_ssrc += 1
            return
        now = self._clock()
        rate = self.limits.claim_trials_per_s
        shared.tokens = min(rate, shared.tokens + (now - shared.tokens_at) * rate)
        shared.tokens_at = now
        joined = shared.joined
        count = len(joined)
        for step in range(min(count, self.limits.max_claim_trials)):
            call = joined[count - 1 - (shared.cursor + step) % count]  # newest first
            if call is hint or call._claim is None:
                continue
            if shared.tokens < 1:
                break
            shared.tokens -= 1
            if self._offer(call, data, addr):
                shared.cursor = 0
                self._learn_ssrc(shared, call, addr, ssrc)
                self.routed_by_claim += 1
                return
        else:
            shared.cursor = (shared.cursor + self.limits.max_claim_trials) % max(count, 1)
            turn = self._turn(addr, now)
            targets = [c for c in self._settling_at(addr, now, shared) if c._claim is None]
            if turn is not None and turn.holder._claim is None and turn.holder in shared.calls:
                if turn.holder not in targets:
                    targets.append(turn.holder)
            if targets and (len(targets) == 1 or self._spend(shared, len(targets) - 1, now)):
                self.early_media += 1  # a handshake just ended: aioice queues it for the fast path
                for call in targets:
                    self._deliver(call, data, addr)
                return
            self.unclaimed += 1
            return
        self.claims_limited += 1

    def _offer(self, call: _Call, data: bytes, addr: Address) -> bool:
        claim = call._claim
        if claim is None:
            return False
        try:
            taken = claim(data, addr)
        except Exception:
            self.delivery_errors += 1
            if self.delivery_errors == 1:
                logger.exception("shared port: a call's media claim raised (further only counted)")
            return False
        if taken and call.turns:
            self._media_seen(call, addr)
        return taken

    def _learn_ssrc(self, shared: _Shared, call: _Call, addr: Address, ssrc: int) -> None:
        ssrcs = shared.ssrcs
        if ssrc not in ssrcs and len(ssrcs) >= self.limits.max_ssrcs_per_remote:
            del ssrcs[next(iter(ssrcs))]
        ssrcs[ssrc] = call
        if len(call.ssrcs) >= _MAX_SSRCS_PER_CALL:
            old_addr, old = call.ssrcs.pop(0)
            old_shared = self._shared.get(old_addr)
            if old_shared is not None and old_shared.ssrcs.get(old) is call:
                del old_shared.ssrcs[old]
        call.ssrcs.append((addr, ssrc))

    # --- turns: one ICE and DTLS set-up at a time per remote address -------------------------

    def _turn(self, addr: Address, now: float) -> _Turn | None:
        """The live turn at ``addr``; a finished or expired one passes to the next waiter first."""
        turn = self._turns.get(addr)
        if turn is None:
            return None
        holder = turn.holder
        if self._finished(holder, now):
            self._end_turns(holder, now)
        elif now - turn.since >= self.limits.turn_hold_s:
            self.turns_expired += 1
            self._pass(addr, turn, now)
        return self._turns.get(addr)

    def _finished(self, call: _Call, now: float) -> bool:
        """Whether ``call``'s handshake is over (marks it settled): both Finished messages passed, or its
        fast path took over. As DTLS server too: a retransmission of the client's final flight still
        finds it (``_settling``), so nothing waits for the remote's media."""
        if call.settled:
            return True
        if call.enc_since is None and (call._claim is None or call.claim_since is None):
            return False
        call.settled = True
        return True

    def _media_seen(self, call: _Call, addr: Address) -> None:
        """Media from ``addr`` that ``call``'s keys took: the remote finished its handshake with it."""
        if call._claim is not None and addr in call.turns:
            call.settled = True
            self._end_turns(call, self._clock())

    def _dtls_seen(self, call: _Call, data: bytes, direction: int, addr: Address) -> None:
        """Note an encrypted DTLS record (epoch >= 1: Finished, or later) ``call`` sent (1) or got (2)
        toward or from ``addr``; both: its handshake is over and its turns pass on."""
        if call.settled or call.dtls_enc & direction or not dtls_records(data)[0]:
            return
        call.dtls_enc |= direction
        if call.dtls_enc == 3:
            now = self._clock()
            call.enc_since = now
            if call.flight:
                self._settle_at(call, addr)
            if self._finished(call, now):
                self._end_turns(call, now)

    def _settle_at(self, call: _Call, addr: Address) -> None:
        """``call`` just finished its handshake with ``addr``: for ``turn_settle_s`` a retransmission of
        its remote's last flight from there is routed to it."""
        self._unsettle(call)
        queue = self._settling.get(addr)
        if queue is None:
            if len(self._settling) >= self.limits.max_flows:
                for old in self._settling.pop(next(iter(self._settling))):
                    old.settling_at = None
            queue = self._settling[addr] = deque(maxlen=self.limits.max_settling)
        if len(queue) == queue.maxlen:
            queue[0].settling_at = None
        queue.append(call)
        call.settling_at = addr

    def _unsettle(self, call: _Call) -> None:
        """Take ``call`` out of the settling calls (it closed, or finished again elsewhere): no table
        keeps a closed call, and an address with none left is forgotten."""
        addr = call.settling_at
        if addr is None:
            return
        call.settling_at = None
        queue = self._settling.get(addr)
        if queue is None:
            return
        if call in queue:  # at most max_settling
            queue.remove(call)
        if not queue:
            del self._settling[addr]

    def _claim_changed(self, call: _Call) -> None:
        if call._claim is None or self._calls.get(call.ufrag) is not call:
            return
        now = self._clock()
        call.claim_since = now
        if not call.settled and call.flight and call.enc_since is None:
            call.enc_since = now
            for addr in call.turns:
                self._settle_at(call, addr)
        if self._finished(call, now):
            self._end_turns(call, now)

    def _later(self, delay: float, call: _Call) -> None:
        """Look at ``call``'s turns again after ``delay`` (inside an event loop; else the next datagram)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(delay + 0.01, self._recheck, call)

    def _recheck(self, call: _Call) -> None:
        now = self._clock()
        for addr in list(call.turns):
            self._turn(addr, now)

    def _end_turns(self, call: _Call, now: float) -> None:
        """``call`` needs no turn any more: each address it held passes to its next waiter."""
        for addr in list(call.turns):
            turn = self._turns.get(addr)
            if turn is not None and turn.holder is call:
                self._pass(addr, turn, now)
        call.turns.clear()
        if call.settled and call.held:
            self.held_dropped += len(call.held)
            call.held.clear()

    def _pass(self, addr: Address, turn: _Turn, now: float) -> None:
        """The turn at ``addr`` goes to the next waiter still setting up (its held datagrams go out)."""
        old = turn.holder
        if addr in old.turns:
            old.turns.remove(addr)
        while turn.waiters:  # bounded by the calls that waited
            nxt = turn.waiters.popleft()
            if self._calls.get(nxt.ufrag) is not nxt or nxt.settled or nxt._claim is not None:
                continue  # gone, or its handshake ended at another address
            turn.holder = nxt
            turn.since = now
            nxt.turns.append(addr)
            self._later(self.limits.turn_hold_s, nxt)
            keep: list[tuple[bytes, Address]] = []
            for data, to in nxt.held:
                if to != addr:
                    keep.append((data, to))
                    continue
                try:  # on the receive path: a socket that refuses (closing) must not raise into it
                    self.send(data, to)
                    self.sent += 1
                except Exception:
                    self.send_after_close += 1
            nxt.held = keep
            return
        del self._turns[addr]

    def _wait_turn(self, call: _Call, data: bytes, addr: Address, first: int) -> bool:
        """Whether ``data`` (a controlling check, any check's answer, DTLS) waits: another call's
        set-up holds ``addr``.

        The remote can start a DTLS handshake only on a pair a check made valid, so while one call's
        ICE and DTLS set-up is open at an address, no other call's controlling check or answer reaches
        it: the DTLS that comes from that address is the holder's.
        """
        if first < 4:
            klass = ((data[0] << 8) | data[1]) & 0x0110
            if klass == 0x0010:
                return False  # an indication (keep-alive)
            if klass == 0x0000 and (
                stun_username_and_integrity(data)[0] is None or stun_has_attribute(data, _STUN_ICE_CONTROLLED)
            ):
                # A STUN server's binding request (srflx), or the check of a controlled agent: the remote
                # (controlling) nominates through its own checks, whose answers wait here. Letting a
                # controlled call's checks out is what keeps two demultiplexers facing each other (the
                # emulator and the relay) from each waiting for a turn the other holds.
                return False
        elif is_client_hello(data):
            call.dtls_client = call.hello = True  # our ClientHello
        else:
            self._dtls_seen(call, data, 1, addr)
        now = self._clock()
        if self._finished(call, now):
            self._end_turns(call, now)
            return False
        turn = self._turn(addr, now)
        if turn is None:
            if len(self._turns) < self.limits.max_flows:
                self._turns[addr] = _Turn(call, now)
                call.turns.append(addr)
                self._later(self.limits.turn_hold_s, call)
            return False
        if turn.holder is call:
            return False
        if call not in turn.waiters:
            turn.waiters.append(call)
        held = call.held
        if first < 4:  # a retransmission replaces the copy it repeats
            txid = data[8:20]
            held[:] = [entry for entry in held if entry[1] != addr or entry[0][8:20] != txid]
        if len(held) >= self.limits.max_held:
            held.pop(0)
            self.held_dropped += 1
        held.append((data, addr))
        self.held += 1
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
        first = data[0] if data else 255
        if first < 2 and len(data) >= _STUN_HEADER and ((data[0] << 8) | data[1]) & 0x0110 == 0:
            transactions = self._transactions
            if len(transactions) >= self.limits.max_transactions:
                del transactions[next(iter(transactions))]
                self.transactions_evicted += 1
            username, _ = stun_username_and_integrity(data)
            transactions[data[8:20]] = (call, addr, username is not None)
        if (
            not call.settled
            and (first < 4 or 19 < first < 64)
            and len(data) >= 4
            and self._wait_turn(call, data, addr, first)
        ):
            return
        self.sent += 1
        self.send(data, addr)

    def stats(self) -> DemuxStats:
        return DemuxStats(
            calls=len(self._calls),
            flows=len(self._flows) + self._shared_flows,
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
            flows_shared=self.flows_shared,
            routed_by_ssrc=self.routed_by_ssrc,
            routed_by_claim=self.routed_by_claim,
            early_media=self.early_media,
            unclaimed=self.unclaimed,
            claims_limited=self.claims_limited,
            dtls_ambiguous=self.dtls_ambiguous,
            dtls_to_sharers=self.dtls_to_sharers,
            held=self.held,
            held_dropped=self.held_dropped,
            turns_expired=self.turns_expired,
            dtls_retransmits=self.dtls_retransmits,
        )
