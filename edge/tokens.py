"""Caller tokens: short-lived JWTs (RFC 7519), HS256 only, written with the standard library.

Why not PyJWT: the Worker bundle can hold only edge/ modules (no dependency can be bundled offline),
so the few lines of JWS we need live here; tests cross-check them against PyJWT both ways. Only HS256
is accepted (``none`` and every other ``alg`` are refused before any signature work), ``exp`` is
required and bounded, and every error names the claim and the limit but never echoes the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.untrusted_json import NOT_JSON, read_json

ALGORITHM: Final = "HS256"
ISSUER: Final = "splitrelay"
AUDIENCE: Final = "splitrelay-edge"
MIN_KEY_BYTES: Final = 32
MAX_TOKEN_CHARS: Final = 4096
MAX_TOKEN_PART_BYTES: Final = MAX_TOKEN_CHARS * 3 // 4  # a base64url part decodes to at most this
MAX_TTL_S: Final = 24 * 3600  # a caller token lives at most a day; the default is much shorter
DEFAULT_TTL_S: Final = 900
LEEWAY_S: Final = 30  # clock skew tolerated on exp/nbf/iat
SUBJECT_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
SCOPE_CALLS: Final = "calls"  # create, renegotiate, inspect and close one's own calls (implies ice)
SCOPE_ICE: Final = "ice"  # fetch ICE servers only
SCOPES: Final = frozenset({SCOPE_CALLS, SCOPE_ICE})
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


class TokenError(Exception):
    """A token was refused: a stable ``code`` (``expired``, ``bad_signature``...), a message safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def check_signing_key(key: bytes, name: str = "TOKEN_SIGNING_KEY") -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{name}: must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def check_subject(sub: object, field: str = "sub") -> str:
    if not isinstance(sub, str) or not SUBJECT_PATTERN.fullmatch(sub):
        raise TokenError("invalid_claims", f"{field}: must be 1 to 128 characters of A-Z a-z 0-9 _ . : @ -")
    return sub


def check_scopes(scope: object, field: str = "scope") -> tuple[str, ...]:
    """A space-separated scope string (RFC 8693 style) or a list, each one of :data:`SCOPES`."""
    if isinstance(scope, str):
        items: list[object] = list(scope.split())
    elif isinstance(scope, list):
        items = list(scope)
    else:
        raise TokenError("invalid_claims", f"{field}: must be a space-separated string or a list of scopes")
    if not items or len(items) > len(SCOPES):
        raise TokenError("invalid_claims", f"{field}: must name 1 to {len(SCOPES)} scopes")
    for item in items:
        if not isinstance(item, str) or item not in SCOPES:  # a list or object in the list is unhashable
            raise TokenError("invalid_claims", f"{field}: each scope must be one of {sorted(SCOPES)}")
    return tuple(sorted({str(item) for item in items}))


def check_ttl(ttl: object, field: str = "ttl_s") -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TokenError("invalid_claims", f"{field}: must be an integer number of seconds")
    if not 1 <= ttl <= MAX_TTL_S:
        raise TokenError("invalid_claims", f"{field}: must be between 1 and {MAX_TTL_S} seconds")
    return ttl


@dataclass(frozen=True)
class Claims:
    """The claims the edge relies on; ``jti`` keys the per-token rate limit."""

    sub: str
    scope: tuple[str, ...]
    exp: int
    iat: int
    jti: str

    def allows(self, scope: str) -> bool:
        return scope in self.scope or (scope == SCOPE_ICE and SCOPE_CALLS in self.scope)

    def to_json(self) -> dict[str, Any]:
        return {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": self.sub,
            "scope": " ".join(self.scope),
            "iat": self.iat,
            "exp": self.exp,
            "jti": self.jti,
        }


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, part: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError("malformed", f"token {part}: is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed", f"token {part}: is not base64url") from None


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    try:
        doc = read_json(data, max_bytes=MAX_TOKEN_PART_BYTES, field=f"token {part}")
    except SchemaError as exc:
        detail = "is not UTF-8 JSON" if exc.message == NOT_JSON else exc.message
        raise TokenError("malformed", f"token {part}: {detail}") from None
    if not isinstance(doc, dict):
        raise TokenError("malformed", f"token {part}: must be a JSON object")
    return doc


def _sign(key: bytes, signing_input: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def issue(
    key: bytes,
    sub: str,
    scope: Iterable[str] = (SCOPE_CALLS,),
    *,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
    jti: str | None = None,
) -> tuple[str, Claims]:
    """A signed token and its claims; ``ttl_s`` is bounded by :data:`MAX_TTL_S`."""
    check_signing_key(key)
    issued = int(time.time() if now is None else now)
    claims = Claims(
        sub=check_subject(sub),
        scope=check_scopes(list(scope)),
        exp=issued + check_ttl(ttl_s),
        iat=issued,
        jti=jti if jti is not None else secrets.token_hex(12),
    )
    header = _b64encode(json.dumps({"alg": ALGORITHM, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64encode(json.dumps(claims.to_json(), separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_sign(key, signing_input))}", claims


def _int_claim(doc: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise TokenError("invalid_claims", f"{name}: is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError("invalid_claims", f"{name}: must be a NumericDate (seconds since 1970)")
    return int(value)


def verify(
    key: bytes,
    token: str,
    *,
    clock: Callable[[], float] = time.time,
    leeway_s: int = LEEWAY_S,
) -> Claims:
    """The claims of a valid token, or :class:`TokenError` saying what is wrong (never the token)."""
    if not isinstance(token, str) or not token:
        raise TokenError("malformed", "token: is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("malformed", f"token: must be at most {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed", "token: must have three dot-separated parts (JWS compact)")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    if header.get("alg") != ALGORITHM:
        raise TokenError("unsupported_algorithm", f"token header alg: only {ALGORITHM} is accepted")
    if "crit" in header:
        raise TokenError("malformed", "token header crit: no critical extensions are supported")
    if header.get("typ", "JWT") not in ("JWT", "jwt"):
        raise TokenError("malformed", "token header typ: must be JWT")
    signature = _b64decode(parts[2], "signature")
    payload = _b64decode(parts[1], "payload")  # base64url checked first: the signing input is then ASCII
    expected = _sign(key, f"{parts[0]}.{parts[1]}".encode("ascii"))
    if not hmac.compare_digest(signature, expected):
        raise TokenError("bad_signature", "token: signature does not match (forged, or another key)")
    doc = _json_object(payload, "payload")
    now = clock()
    exp = _int_claim(doc, "exp", required=True)
    iat = _int_claim(doc, "iat", required=True)
    nbf = _int_claim(doc, "nbf", required=False)
    assert exp is not None and iat is not None
    if exp - iat > MAX_TTL_S:
        raise TokenError("invalid_claims", f"exp: a token may live at most {MAX_TTL_S} seconds after iat")
    if now > exp + leeway_s:
        raise TokenError("expired", "token: expired")
    if iat > now + leeway_s or (nbf is not None and nbf > now + leeway_s):
        raise TokenError("not_yet_valid", "token: iat/nbf is in the future")
    if doc.get("iss") != ISSUER:
        raise TokenError("invalid_claims", f"iss: must be {ISSUER!r}")
    audience = doc.get("aud")
    if audience != AUDIENCE and not (isinstance(audience, list) and AUDIENCE in audience):
        raise TokenError("invalid_claims", f"aud: must include {AUDIENCE!r}")
    jti = doc.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= 64:
        raise TokenError("invalid_claims", "jti: must be a string of 1 to 64 characters")
    return Claims(
        sub=check_subject(doc.get("sub")), scope=check_scopes(doc.get("scope")), exp=exp, iat=iat, jti=jti
    )
