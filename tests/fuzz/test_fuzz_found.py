"""Every bug the fuzz tier found, as a regression test that failed before its fix (or, where the fix is
another engineer's, an ``xfail(strict=True)`` naming the bug until it lands)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import pytest

from splitrelay.edge import tokens
from splitrelay.edge.web import EdgeRequest
from tests.edge_support import TOKEN_KEY
from tests.fuzz.edge_target import NOW, EdgeFuzz

pytestmark = pytest.mark.fuzz


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signed(header: str, payload: str) -> str:
    signature = hmac.new(TOKEN_KEY.encode(), f"{header}.{payload}".encode("latin-1"), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


HEADER = _b64(b'{"alg":"HS256","typ":"JWT"}')
CLAIMS = {"iss": tokens.ISSUER, "aud": tokens.AUDIENCE, "sub": "alice", "iat": int(NOW) - 10,
          "exp": int(NOW) + 600, "jti": "j1"}  # fmt: skip


@pytest.mark.parametrize("scope", [[["calls"]], [{}], ["calls", []]])
def test_a_signed_token_whose_scope_list_holds_a_list_or_object_is_refused_not_a_500(scope: object) -> None:
    """Found by the edge-token target: ``[[]] in frozenset`` raised TypeError (unhashable) -> 500."""
    token = _signed(HEADER, _b64(json.dumps({**CLAIMS, "scope": scope}).encode()))
    with pytest.raises(tokens.TokenError, match="scope"):
        tokens.verify(TOKEN_KEY.encode(), token, clock=lambda: NOW)
    assert _status("GET", "/v1/ice-servers", f"Bearer {token}") == 401


def test_a_token_payload_part_with_non_ascii_characters_is_malformed_not_a_500() -> None:
    """Found by the edge-token target: a header byte above 0x7f in the payload part (read as latin-1)
    reached ``.encode("ascii")`` of the signing input before the part was checked -> UnicodeEncodeError."""
    token = f"{HEADER}.eyJ\u00e9.{_b64(b'x' * 32)}"
    with pytest.raises(tokens.TokenError, match="payload: is not base64url"):
        tokens.verify(TOKEN_KEY.encode(), token, clock=lambda: NOW)
    assert _status("GET", "/v1/ice-servers", f"Bearer {token}") == 401


def _status(method: str, path: str, authorization: str) -> int:
    async def go() -> int:
        fuzz = EdgeFuzz()
        request = EdgeRequest(method, path, headers=fuzz.headers(authorization, None))
        return (await fuzz.request(request, "regression")).status

    return asyncio.run(go())
