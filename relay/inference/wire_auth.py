"""Authentication of the wire link: the shared key, sealing control datagrams, replay and reply limits.

Version 2 of the wire protocol (docs/wire-protocol.md, "Authentication") appends to every non-audio
datagram a key id and a 16-byte HMAC-SHA256 tag over the rest of the datagram. Each direction uses its
own key derived from the shared secret, so a relay's message reflected back at the relay (or an
inference message at inference) never verifies. Audio stays unauthenticated, for its per-packet cost;
a receiver takes a call's audio only from the address that opened the call with an authenticated
CALL_START. This module is sans-IO: the endpoints (``endpoint.py``) call it per datagram.

The secret never leaves a ``WireKey``: its repr shows only the key id, and errors name the
environment variable and the limit, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final, Literal

from splitrelay.inference import wire

WIRE_KEY_ENV: Final = "SPLITRELAY_WIRE_KEY"
WIRE_KEY_PREVIOUS_ENV: Final = "SPLITRELAY_WIRE_KEY_PREVIOUS"
"""Optional: the key being rotated out, still accepted (docs/wire-protocol.md, "Key handling")."""
MIN_KEY_BYTES: Final = 32
MAX_KEY_BYTES: Final = 256
TAG_SIZE: Final = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 section 5 allows >= half the output)
TRAILER_SIZE: Final = wire.AUTH_TRAILER  # key id u8 + tag
assert TRAILER_SIZE == 1 + TAG_SIZE

REPLAY_WINDOW: Final = 128  # control seqs per call and direction, as SRTP's and IPsec's windows
CALL_START_WINDOW_S: Final = 30.0  # how far a CALL_START's sent_at_ms may be from this host's clock
CALL_START_IDS: Final = 100_000  # call ids remembered against CALL_START replay (within the window)

REPLY_RATE_PER_SOURCE: Final = 50.0  # replies/s to one address for calls this end does not know
REPLY_BURST_PER_SOURCE: Final = 100.0
REPLY_RATE_GLOBAL: Final = 500.0  # and to all addresses together
REPLY_BURST_GLOBAL: Final = 1000.0
REPLY_SOURCES: Final = 4096  # per-source buckets kept (least recently used evicted)

Role = Literal["relay", "inference"]
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class WireKeyError(ValueError):
    """A wire key that is missing or malformed; the text names the variable and the limit, never the value."""


class WireKey:
    """One shared secret, with the derived per-direction MAC keys and its one-byte key id.

    The key id is derived from the secret (the first byte of a hash), so the two ends need to agree
    on nothing but the secret; two keys in use at once must have different ids.
    """

    __slots__ = ("_to_inference", "_to_relay", "key_id")

    def __init__(self, secret: bytes, *, what: str = "wire key") -> None:
        if not isinstance(secret, bytes) or not MIN_KEY_BYTES <= len(secret) <= MAX_KEY_BYTES:
            size = len(secret) if isinstance(secret, bytes) else "not bytes"
            raise WireKeyError(f"{what}: must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes, got {size}")
        self.key_id: int = hashlib.sha256(b"splitrelay wire key id\0" + secret).digest()[0]
        self._to_inference = hmac.digest(secret, b"splitrelay wire v2 relay->inference", "sha256")
        self._to_relay = hmac.digest(secret, b"splitrelay wire v2 inference->relay", "sha256")

    @classmethod
    def parse(cls, text: str, *, what: str = WIRE_KEY_ENV) -> WireKey:
        """A key written as hex or base64url (padding optional), at least 32 bytes once decoded."""
        text = text.strip()
        limit = f"hex or base64url of {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes"
        if _HEX.fullmatch(text):  # random base64url text is never all hex digits (odds below 1e-19)
            secret = bytes.fromhex(text)
        elif _B64URL.fullmatch(text):
            try:
                secret = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except (binascii.Error, ValueError):
                raise WireKeyError(f"{what}: must be {limit}; it is not valid base64url") from None
        else:
            raise WireKeyError(f"{what}: must be {limit} (characters 0-9 a-f, or A-Z a-z 0-9 - _)")
        if not MIN_KEY_BYTES <= len(secret) <= MAX_KEY_BYTES:
            raise WireKeyError(f"{what}: must be {limit}, got {len(secret)} bytes")
        return cls(secret, what=what)

    @classmethod
    def generate(cls) -> WireKey:
        """A fresh random 32-byte key (tests, benchmarks; deployments use ``generate_text``)."""
        return cls(secrets.token_bytes(MIN_KEY_BYTES))

    def mac_key(self, sender: Role) -> bytes:
        """The MAC key of messages sent by ``sender``."""
        return self._to_inference if sender == "relay" else self._to_relay

    def __repr__(self) -> str:
        return f"WireKey(key_id={self.key_id}, secret=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("WireKey: not picklable (the secret stays in this process)")


def generate_text() -> str:
    """A new key as base64url text, for SPLITRELAY_WIRE_KEY (`python -c` one-liner in the docs)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(MIN_KEY_BYTES)).rstrip(b"=").decode()


class WireKeyring:
    """The key this end sends with (``current``) and, during a rotation, the one it still accepts."""

    __slots__ = ("_by_id", "current", "previous")

    def __init__(self, current: WireKey, previous: WireKey | None = None) -> None:
        if previous is not None and previous.key_id == current.key_id:
            raise WireKeyError(
                f"{WIRE_KEY_PREVIOUS_ENV}: has the same key id ({current.key_id}) as {WIRE_KEY_ENV}; "
                "generate another new key"
            )
        self.current = current
        self.previous = previous
        self._by_id = {k.key_id: k for k in (current, previous) if k is not None}

    @classmethod
    def of(cls, key: WireKey | WireKeyring) -> WireKeyring:
        return key if isinstance(key, WireKeyring) else cls(key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WireKeyring:
        """SPLITRELAY_WIRE_KEY (required) and SPLITRELAY_WIRE_KEY_PREVIOUS (optional)."""
        env = os.environ if environ is None else environ
        text = env.get(WIRE_KEY_ENV, "")
        if not text.strip():
            raise WireKeyError(
                f"{WIRE_KEY_ENV}: not set; the relay and inference need the same key (hex or base64url, "
                f"at least {MIN_KEY_BYTES} bytes; docs/wire-protocol.md, 'Key handling')"
            )
        current = WireKey.parse(text, what=WIRE_KEY_ENV)
        old = env.get(WIRE_KEY_PREVIOUS_ENV, "")
        previous = WireKey.parse(old, what=WIRE_KEY_PREVIOUS_ENV) if old.strip() else None
        return cls(current, previous)

    def get(self, key_id: int) -> WireKey | None:
        return self._by_id.get(key_id)

    def __repr__(self) -> str:
        ids = ", ".join(str(i) for i in self._by_id)
        return f"WireKeyring(key_ids=[{ids}])"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("WireKeyring: not picklable (the secrets stay in this process)")


def resolve_keyring(key: WireKey | WireKeyring | None) -> WireKeyring:
    """The keyring an endpoint uses: the one given, else the environment's (required either way)."""
    return WireKeyring.from_env() if key is None else WireKeyring.of(key)


class Sealer:
    """Seals the bodies this end sends and opens the datagrams it receives (one per endpoint)."""

    __slots__ = ("_keyring", "_receiver_of", "_sender")

    def __init__(self, keyring: WireKeyring, role: Role) -> None:
        self._keyring = keyring
        self._sender: Role = role
        self._receiver_of: Role = "inference" if role == "relay" else "relay"

    @property
    def current_key_id(self) -> int:
        return self._keyring.current.key_id

    def seal(self, body: bytes, key_id: int | None = None) -> bytes:
        """``body`` + key id + tag, with the key ``key_id`` (a call keeps the key it started with)."""
        key = (None if key_id is None else self._keyring.get(key_id)) or self._keyring.current
        signed = body + bytes((key.key_id,))
        return signed + hmac.digest(key.mac_key(self._sender), signed, "sha256")[:TAG_SIZE]

    def open(self, data: bytes) -> tuple[bytes, int] | None:
        """(body, key id) when the trailer verifies with a known key, else None (drop it unanswered)."""
        if len(data) < wire.HEADER_SIZE + TRAILER_SIZE:
            return None
        signed = data[:-TAG_SIZE]
        key = self._keyring.get(signed[-1])
        if key is None:
            return None
        tag = hmac.digest(key.mac_key(self._receiver_of), signed, "sha256")[:TAG_SIZE]
        if not hmac.compare_digest(tag, data[-TAG_SIZE:]):
            return None
        return signed[:-1], key.key_id


class ReplayWindow:
    """Sliding window over one call's control seqs from one direction (RFC 4303 section 3.4.3 style).

    Accepts each seq once: a seq seen before, or older than the newest by ``size`` or more, is a
    replay (or a retransmission already acted on). Seqs are u32 and compared wrap-safe.
    """

    __slots__ = ("_bits", "_mask", "_size", "_top")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        if not 1 <= size <= 4096:
            raise ValueError(f"replay window: must be 1..4096 seqs, got {size}")
        self._size = size
        self._mask = (1 << size) - 1
        self._top: int | None = None
        self._bits = 0  # bit i: seq (top - i) was seen

    def accept(self, seq: int) -> bool:
        """True the first time ``seq`` is seen inside the window (and records it); False otherwise."""
        top = self._top
        if top is None:
            self._top, self._bits = seq, 1
            return True
        ahead = wire.u32_diff(seq, top)
        if ahead > 0:
            self._bits = ((self._bits << ahead) | 1) & self._mask if ahead < self._size else 1
            self._top = seq
            return True
        behind = -ahead
        if behind >= self._size or self._bits >> behind & 1:
            return False
        self._bits |= 1 << behind
        return True


class CallStartGuard:
    """Refuses a CALL_START sent too long ago, or one whose call id was already seen in that time.

    Together they make a recorded CALL_START useless: inside the window its id is remembered, outside
    it is stale. Only authenticated CALL_STARTs get here, so only a key holder can fill the memory.
    """

    def __init__(
        self,
        window_s: float = CALL_START_WINDOW_S,
        *,
        max_ids: int = CALL_START_IDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1.0 <= window_s <= 3600.0:
            raise ValueError(f"call_start_window: must be 1..3600 seconds, got {window_s}")
        self.window_s = window_s
        self._max_ids = max_ids
        self._clock = clock
        self._seen: OrderedDict[int, float] = OrderedDict()  # call id -> when it may be forgotten

    def admit(self, call_id: int, sent_at_ms: int) -> str | None:
        """None when the CALL_START may open a call; else why not ("stale" or "replayed")."""
        now = self._clock()
        seen = self._seen
        for _ in range(len(seen)):  # expiries are in insertion order: stop at the first live one
            first = next(iter(seen.items()))
            if first[1] > now:
                break
            seen.popitem(last=False)
        if abs(now * 1000.0 - sent_at_ms) > self.window_s * 1000.0:
            return "stale"
        if call_id in seen:
            return "replayed"
        seen[call_id] = now + 2 * self.window_s  # covers sent_at anywhere inside +-window
        if len(seen) > self._max_ids:
            seen.popitem(last=False)
        return None


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class ReplyLimiter:
    """Token buckets per source address and overall for replies to calls this end does not know.

    Such replies are the only datagrams an unauthenticated sender can draw out of an endpoint; with the
    size rule (a reply is never larger than its request) this bounds reflection at no amplification.
    """

    def __init__(
        self,
        *,
        per_source: tuple[float, float] = (REPLY_RATE_PER_SOURCE, REPLY_BURST_PER_SOURCE),
        overall: tuple[float, float] = (REPLY_RATE_GLOBAL, REPLY_BURST_GLOBAL),
        max_sources: int = REPLY_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, (rate, burst) in (("per_source", per_source), ("overall", overall)):
            if not rate > 0 or not burst >= 1:
                raise ValueError(f"reply limit {name}: rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self._source_rate, self._source_burst = per_source
        self._rate, self._burst = overall
        self._max_sources = max_sources
        self._clock = clock
        self._global = _Bucket(self._burst, clock())
        self._sources: OrderedDict[tuple[str, int], _Bucket] = OrderedDict()

    @staticmethod
    def _refill(bucket: _Bucket, now: float, rate: float, burst: float) -> None:
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.last) * rate)
        bucket.last = now

    def allow(self, peer: tuple[str, int]) -> bool:
        """Take a token from the source's bucket and the global one; False (none taken) if either is empty."""
        now = self._clock()
        bucket = self._sources.get(peer)
        if bucket is None:
            bucket = self._sources[peer] = _Bucket(self._source_burst, now)
            if len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(peer)
        self._refill(bucket, now, self._source_rate, self._source_burst)
        self._refill(self._global, now, self._rate, self._burst)
        if bucket.tokens < 1 or self._global.tokens < 1:
            return False
        bucket.tokens -= 1
        self._global.tokens -= 1
        return True
