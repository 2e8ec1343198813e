"""HMAC signatures on edge → relay control requests.

The relay's control API is reachable from the Internet (Cloudflare's egress ranges), so every request
the edge sends carries a signature over method, path, body, timestamp and a nonce. The relay rejects
unsigned, forged, stale and replayed requests. Pure standard library: the same module signs in the
Worker (Pyodide) and verifies on the relay (CPython).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

SIGNATURE_HEADER = "x-splitrelay-signature"
TIMESTAMP_HEADER = "x-splitrelay-timestamp"
NONCE_HEADER = "x-splitrelay-nonce"
KEY_ID_HEADER = "x-splitrelay-key-id"
SCHEME = "v1"
DEFAULT_WINDOW_S = 60
MIN_KEY_BYTES = 32
MAX_NONCE_CHARS = 64
_HEX_MAC = re.compile(r"[0-9a-f]{64}")


class SignatureError(Exception):
    """A request failed verification; the message says why and never contains key material."""


def _canonical(method: str, path: str, body: bytes, timestamp: int, nonce: str) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{SCHEME}\n{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{body_hash}".encode()


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_key(key: bytes, name: str = "signing key") -> bytes:
    """Refuse keys too short to be secret; the message names the limit, never the key."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{name} must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def sign_headers(
    key: bytes,
    method: str,
    path: str,
    body: bytes,
    *,
    key_id: str = "default",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers to add to a request; `path` includes the query string exactly as sent."""
    timestamp = int(time.time() if now is None else now)
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    mac = _mac(check_key(key), _canonical(method, path, body, timestamp, nonce))
    return {
        SIGNATURE_HEADER: f"{SCHEME}={mac}",
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce,
        KEY_ID_HEADER: key_id,
    }


@dataclass
class ReplayCache:
    """Nonces seen within the replay window, bounded in size so a flood cannot grow it without limit."""

    max_entries: int = 100_000
    _seen: dict[str, float] = field(default_factory=dict)

    def add(self, nonce: str, expires_at: float, now: float) -> None:
        if nonce in self._seen and self._seen[nonce] > now:
            raise SignatureError("replayed request: this nonce was already used within the replay window")
        if len(self._seen) >= self.max_entries:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
            if len(self._seen) >= self.max_entries:
                raise SignatureError(
                    f"replay cache full ({self.max_entries} live nonces); retry after the window passes"
                )
        self._seen[nonce] = expires_at

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class Verifier:
    """Verifies signed requests: known key id, fresh timestamp, unused nonce, matching HMAC."""

    keys: Mapping[str, bytes]
    window_s: int = DEFAULT_WINDOW_S
    replay: ReplayCache = field(default_factory=ReplayCache)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("at least one signing key is required")
        for key_id, key in self.keys.items():
            check_key(key, f"signing key {key_id!r}")

    def __repr__(self) -> str:
        return f"Verifier(key_ids={sorted(self.keys)}, window_s={self.window_s})"

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """The checks that need no body (signed at all, known key, fresh, well-formed): a server runs them
        before it reads the body, so an unsigned or stale request costs it no read."""
        self._signed(headers)

    def verify(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> str:
        """Return the key id that signed the request, or raise SignatureError with the reason.

        ``path`` is the request target as sent (percent-encoding kept, then ``?query``): the form the
        signer signed, so both ends agree on one canonical path."""
        key_id, key, timestamp, nonce, mac, now = self._signed(headers)
        expected = _mac(key, _canonical(method, path, body, timestamp, nonce))
        if not hmac.compare_digest(expected, mac):
            raise SignatureError("bad signature: it does not match the method, path, body and timestamp")
        self.replay.add(nonce, timestamp + self.window_s, now)
        return key_id

    def _signed(self, headers: Mapping[str, str]) -> tuple[str, bytes, int, str, str, float]:
        lower = {k.lower(): v for k, v in headers.items()}
        for name in (SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER):
            if not lower.get(name):
                raise SignatureError(f"unsigned request: header {name} is missing")
        key_id = lower.get(KEY_ID_HEADER, "default")
        key = self.keys.get(key_id)
        if key is None:
            raise SignatureError(f"unknown key id {key_id[:32]!r}")
        try:
            timestamp = int(lower[TIMESTAMP_HEADER])
        except ValueError:
            raise SignatureError(f"header {TIMESTAMP_HEADER} must be integer Unix seconds") from None
        now = self.clock()
        age = now - timestamp
        if abs(age) > self.window_s:
            raise SignatureError(
                f"stale request: timestamp is {age:+.0f} s from now, the window is ±{self.window_s} s"
            )
        nonce = lower[NONCE_HEADER]
        if len(nonce) > MAX_NONCE_CHARS:
            raise SignatureError(f"header {NONCE_HEADER} is longer than {MAX_NONCE_CHARS} characters")
        scheme, _, mac = lower[SIGNATURE_HEADER].partition("=")
        # Hex only: compare_digest refuses non-ASCII text (a TypeError, a 500), and a MAC is hex anyway.
        if scheme != SCHEME or not _HEX_MAC.fullmatch(mac):
            raise SignatureError(f"header {SIGNATURE_HEADER} must look like '{SCHEME}=<hex>'")
        return key_id, key, timestamp, nonce, mac, now
