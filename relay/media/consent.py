"""RFC 7675 consent freshness for a connected call, answered and sent without aioice's STUN stack.

Every connected call exchanges a STUN Binding transaction each way about every 5 s: we answer the
peer's consent check and send our own. Through aioice each costs a full parse of the message (attribute
objects, ``ipaddress``), a second integrity check after the demultiplexer's, a ``Transaction`` with its
future and timer, and a task per connection that wakes for it: 91 us of relay CPU per call per second
measured idle at 300 calls (more than the call's RTCP reports). Here the same bytes are built and read
directly (tests/unit/test_consent.py compares them with aioice's encoder), one loop timer per call.

Only the steady state is taken: a Binding request from the nominated remote address, with our ufrag
and a valid MESSAGE-INTEGRITY, no USE-CANDIDATE and no role conflict, gets our success response; a
success response to one of our own checks refreshes consent. Everything else (a new address, a
nomination, a role conflict, a bad signature, errors) goes on to aioice as before. Consent expires, as
aioice's does, after ``max_failures`` checks in a row went unanswered; the connection is then closed.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import ipaddress
import random
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Address = tuple[str, int]

STUN_HEADER = 20
COOKIE = b"\x21\x12\xa4\x42"
_COOKIE_INT = 0x2112A442
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_USERNAME = 0x0006
_INTEGRITY = 0x0008
_XOR_MAPPED = 0x0020
_PRIORITY = 0x0024
_USE_CANDIDATE = 0x0025
_FINGERPRINT = 0x8028
_ICE_CONTROLLED = 0x8029
_ICE_CONTROLLING = 0x802A
_INTEGRITY_LEN = 20
_FINGERPRINT_XOR = 0x5354554E
_MAX_ATTRIBUTES = 32  # a consent message has 3-6; anything longer goes to aioice


@dataclass(frozen=True)
class ConsentCredentials:
    """What a consent exchange needs from the ICE connection (aiortc_internals.take_consent)."""

    local_ufrag: str
    local_password: str
    remote_ufrag: str
    remote_password: str
    controlling: bool
    tie_breaker: int
    priority: int
    """PRIORITY of our checks (aioice sends the peer-reflexive priority of component 1)."""
    interval_s: float
    """Mean seconds between our checks; each wait is 0.8-1.2 times this (RFC 7675 section 5.1)."""
    max_failures: int
    """Checks in a row without an authenticated answer after which consent has expired."""


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def _sign(kind: int, txid: bytes, body: bytes, key: bytes) -> bytes:
    """``body`` plus MESSAGE-INTEGRITY (HMAC-SHA1 under ``key``) and FINGERPRINT, with the header."""
    length = len(body) + 24
    mac = hmac.digest(key, struct.pack("!HH", kind, length) + COOKIE + txid + body, hashlib.sha1)
    body += _attribute(_INTEGRITY, mac)
    head = struct.pack("!HH", kind, length + 8) + COOKIE + txid
    crc = binascii.crc32(head + body) ^ _FINGERPRINT_XOR
    return head + body + struct.pack("!HHI", _FINGERPRINT, 4, crc)


def binding_request(txid: bytes, credentials: ConsentCredentials) -> bytes:
    """Our consent check, byte for byte what aioice's ``query_consent`` sends."""
    c = credentials
    body = _attribute(_USERNAME, f"{c.remote_ufrag}:{c.local_ufrag}".encode())
    body += _attribute(_PRIORITY, struct.pack("!I", c.priority))
    role = _ICE_CONTROLLING if c.controlling else _ICE_CONTROLLED
    body += _attribute(role, struct.pack("!Q", c.tie_breaker))
    return _sign(_BINDING_REQUEST, txid, body, c.remote_password.encode())


def binding_success(txid: bytes, addr: Address, key: bytes) -> bytes:
    """The answer to a Binding request from ``addr``: byte for byte aioice's ``request_received``'s."""
    ip = ipaddress.ip_address(addr[0])
    pad = COOKIE + txid
    packed = ip.packed
    xored = bytes(b ^ pad[i] for i, b in enumerate(packed))
    value = struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, addr[1] ^ (_COOKIE_INT >> 16)) + xored
    return _sign(_BINDING_SUCCESS, txid, _attribute(_XOR_MAPPED, value), key)


@dataclass(frozen=True, slots=True)
class StunView:
    """The parts of a STUN message a consent exchange reads (None: not a message to take here)."""

    kind: int
    txid: bytes
    username: bytes | None
    integrity_at: int
    """Offset of MESSAGE-INTEGRITY."""
    use_candidate: bool
    controlling: bool
    controlled: bool


def read_stun(data: bytes) -> StunView | None:
    """Read a signed STUN message's header and attributes; None unless well formed, with
    MESSAGE-INTEGRITY and, after it, nothing but a FINGERPRINT that matches."""
    size = len(data)
    if size < STUN_HEADER or size % 4 or data[4:8] != COOKIE or (data[2] << 8 | data[3]) != size - 20:
        return None
    username: bytes | None = None
    use_candidate = controlling = controlled = False
    pos = STUN_HEADER
    for _ in range(_MAX_ATTRIBUTES):
        if pos + 4 > size:
            return None
        kind = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 4 + length
        if end > size:
            return None
        if kind == _INTEGRITY:
            if length != _INTEGRITY_LEN:
                return None
            rest = data[end:]
            if rest and (
                len(rest) != 8
                or rest[:4] != b"\x80\x28\x00\x04"
                or int.from_bytes(rest[4:], "big")
                != binascii.crc32(data[:end]) ^ _FINGERPRINT_XOR  # length already counts it
            ):
                return None
            msg_kind = (data[0] << 8) | data[1]
            return StunView(msg_kind, data[8:20], username, pos, use_candidate, controlling, controlled)
        if kind == _USERNAME:
            username = data[pos + 4 : end]
        elif kind == _USE_CANDIDATE:
            use_candidate = True
        elif kind == _ICE_CONTROLLING:
            controlling = True
        elif kind == _ICE_CONTROLLED:
            controlled = True
        pos = end + (-length % 4)
    return None


def integrity_ok(data: bytes, view: StunView, key: bytes) -> bool:
    """RFC 8489 section 14.5: HMAC-SHA1 up to MESSAGE-INTEGRITY, the length counting up to its end."""
    offset = view.integrity_at
    signed = data[:2] + (offset - STUN_HEADER + 24).to_bytes(2, "big") + data[4:offset]
    expected = hmac.digest(key, signed, hashlib.sha1)
    return hmac.compare_digest(expected, data[offset + 4 : offset + 24])


class ConsentFreshness:
    """One connected call's consent in both directions (module docstring); ``handle`` sees its STUN first."""

    def __init__(
        self,
        credentials: ConsentCredentials,
        remote_addr: Address,
        send: Callable[[bytes, Address], object],
        on_expired: Callable[[], object],
    ) -> None:
        self.credentials = credentials
        self.remote_addr = remote_addr
        self._send = send
        self._on_expired = on_expired
        self._local_key = credentials.local_password.encode()
        self._remote_key = credentials.remote_password.encode()
        self._username = f"{credentials.local_ufrag}:{credentials.remote_ufrag}".encode()
        self._pending: bytes | None = None
        """Transaction id of our last check, until it is answered."""
        self.failures = 0
        self.checks_sent = 0
        self.answers_received = 0
        self.requests_answered = 0
        self.expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._schedule()

    def _schedule(self) -> None:
        delay = self.credentials.interval_s * (0.8 + 0.4 * random.random())
        self._timer = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        """A check is due: count the last one if it went unanswered, expire or send the next."""
        self._timer = None
        if self._pending is not None:
            self.failures += 1
            if self.failures >= self.credentials.max_failures:
                self.expired = True
                self._pending = None
                self._on_expired()
                return
        txid = secrets.token_bytes(12)
        self._pending = txid
        self.checks_sent += 1
        self._send(binding_request(txid, self.credentials), self.remote_addr)
        self._schedule()

    def handle(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Take a consent message of this call (True); False leaves ``data`` to aioice."""
        remote = self.remote_addr
        if self.expired or addr[0] != remote[0] or addr[1] != remote[1]:  # an IPv6 4-tuple compares too
            return False
        view = read_stun(data)
        if view is None:
            return False
        if view.kind == _BINDING_SUCCESS:
            if view.txid != self._pending or not integrity_ok(data, view, self._remote_key):
                return False
            self._pending = None
            self.failures = 0
            self.answers_received += 1
            return True
        if (
            view.kind != _BINDING_REQUEST
            or view.username != self._username
            or view.use_candidate
            or (view.controlling if self.credentials.controlling else view.controlled)
            or not integrity_ok(data, view, self._local_key)
        ):
            return False
        self.requests_answered += 1
        self._send(binding_success(view.txid, remote, self._local_key), remote)
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.expired = True
