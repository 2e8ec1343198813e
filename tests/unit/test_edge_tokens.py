"""Caller tokens (edge/tokens.py): HS256 JWTs cross-checked against PyJWT, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from splitrelay.edge import tokens
from tests.edge_support import TOKEN_KEY

KEY = TOKEN_KEY.encode()
NOW = 1_800_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, object], payload: dict[str, object], key: bytes = KEY) -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def claims(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "iss": tokens.ISSUER,
        "aud": tokens.AUDIENCE,
        "sub": "alice",
        "scope": "calls",
        "iat": NOW,
        "exp": NOW + 600,
        "jti": "j1",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_round_trip_and_pyjwt_decodes_ours() -> None:
    token, issued = tokens.issue(KEY, "alice", ["calls"], ttl_s=600, now=NOW, jti="abc")
    assert tokens.verify(KEY, token, clock=lambda: NOW + 1) == issued
    decoded = jwt.decode(
        token, KEY, algorithms=["HS256"], audience=tokens.AUDIENCE, issuer=tokens.ISSUER,
        options={"verify_exp": False, "verify_iat": False},
    )  # fmt: skip
    assert decoded["sub"] == "alice" and decoded["exp"] == NOW + 600 and decoded["scope"] == "calls"


def test_ours_decodes_pyjwt_tokens() -> None:
    token = jwt.encode(claims(scope="ice calls"), KEY, algorithm="HS256")
    result = tokens.verify(KEY, token, clock=lambda: NOW)
    assert result.sub == "alice" and result.scope == ("calls", "ice") and result.allows("ice")


@pytest.mark.parametrize("alg", ["none", "HS512", "RS256", "hs256", None])
def test_other_algorithms_refused_before_signature(alg: str | None) -> None:
    header: dict[str, object] = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    token = forge(header, claims())
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(KEY, token, clock=lambda: NOW)
    assert info.value.code == "unsupported_algorithm"


def test_alg_none_with_empty_signature_refused() -> None:
    head = b64(json.dumps({"alg": "none"}).encode())
    body = b64(json.dumps(claims()).encode())
    with pytest.raises(tokens.TokenError, match="only HS256"):
        tokens.verify(KEY, f"{head}.{body}.", clock=lambda: NOW)


def test_pyjwt_hs512_token_refused() -> None:
    token = jwt.encode(claims(), KEY + b"x" * 32, algorithm="HS512")
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(KEY, token, clock=lambda: NOW)
    assert info.value.code == "unsupported_algorithm"


def test_forged_and_tampered_tokens() -> None:
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(KEY, forge({"alg": "HS256"}, claims(), key=b"another-key-" * 4), clock=lambda: NOW)
    assert info.value.code == "bad_signature"
    token, _ = tokens.issue(KEY, "alice", now=NOW)
    head, _, sig = token.split(".")
    evil = b64(json.dumps(claims(sub="mallory")).encode())
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(KEY, f"{head}.{evil}.{sig}", clock=lambda: NOW)
    assert info.value.code == "bad_signature"


def test_expiry_with_leeway_and_future_iat() -> None:
    token = forge({"alg": "HS256"}, claims())
    tokens.verify(KEY, token, clock=lambda: NOW + 600 + tokens.LEEWAY_S)
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(KEY, token, clock=lambda: NOW + 600 + tokens.LEEWAY_S + 1)
    assert info.value.code == "expired" and "token: expired" in str(info.value)
    with pytest.raises(tokens.TokenError) as info:
        tokens.verify(KEY, token, clock=lambda: NOW - tokens.LEEWAY_S - 1)
    assert info.value.code == "not_yet_valid"
    nbf = forge({"alg": "HS256"}, claims(nbf=NOW + 100))
    with pytest.raises(tokens.TokenError, match="iat/nbf"):
        tokens.verify(KEY, nbf, clock=lambda: NOW)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exp": None}, "exp: is required"),
        ({"exp": "soon"}, "exp: must be a NumericDate"),
        ({"exp": NOW + tokens.MAX_TTL_S + 1}, f"at most {tokens.MAX_TTL_S} seconds"),
        ({"iss": "someone"}, "iss: must be 'splitrelay'"),
        ({"aud": "other"}, "aud: must include"),
        ({"sub": "a b"}, "sub: must be 1 to 128"),
        ({"scope": "admin"}, "scope: each scope must be one of"),
        ({"scope": ""}, "scope: must name 1 to"),
        ({"jti": 7}, "jti: must be a string"),
    ],
)
def test_claim_checks_name_the_claim(changes: dict[str, object], message: str) -> None:
    with pytest.raises(tokens.TokenError, match=message) as info:
        tokens.verify(KEY, forge({"alg": "HS256"}, claims(**changes)), clock=lambda: NOW)
    assert info.value.code == "invalid_claims"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "token: is empty"),
        ("a.b", "three dot-separated parts"),
        ("x" * (tokens.MAX_TOKEN_CHARS + 1), f"at most {tokens.MAX_TOKEN_CHARS}"),
        ("a+b.c.d", "header: is not base64url"),
        (b64(b"[1]") + ".e30.", "header: must be a JSON object"),
        (b64(b"\xff") + ".e30.", "header: is not UTF-8 JSON"),
    ],
)
def test_malformed_tokens(token: str, message: str) -> None:
    with pytest.raises(tokens.TokenError, match=message) as info:
        tokens.verify(KEY, token, clock=lambda: NOW)
    assert info.value.code == "malformed"
    assert token[:20] not in str(info.value) or len(token) < 8


def test_issue_bounds() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        tokens.issue(b"short", "alice")
    with pytest.raises(tokens.TokenError, match="ttl_s: must be between 1 and"):
        tokens.issue(KEY, "alice", ttl_s=tokens.MAX_TTL_S + 1)
    with pytest.raises(tokens.TokenError, match="sub: must be"):
        tokens.issue(KEY, "x" * 129)
    _, ice_only = tokens.issue(KEY, "bob", ["ice"], now=NOW)
    assert ice_only.allows("ice") and not ice_only.allows("calls")


def test_a_signed_token_with_an_unrepresentable_exp_is_malformed_not_a_crash() -> None:
    """exp=1e309 is valid JSON text that overflows a float: it gave an OverflowError (a 500) once signed."""
    key = b"k" * 32
    header = tokens._b64encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = tokens._b64encode(b'{"sub":"a","iat":1,"exp":1e309,"jti":"j"}')
    signature = tokens._b64encode(tokens._sign(key, f"{header}.{payload}".encode()))
    with pytest.raises(
        tokens.TokenError, match=r"token payload: is not valid UTF-8 JSON \(1e309 overflows a float\)"
    ):
        tokens.verify(key, f"{header}.{payload}.{signature}")
