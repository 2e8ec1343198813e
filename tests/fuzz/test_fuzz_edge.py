"""Fuzz target 2: the edge's routes, in process. Hostile tokens (mutated JWTs, re-signed claims that are
nested, huge or of the wrong type), hostile JSON bodies (deep nesting, huge, invalid UTF-8, NaN, lone
surrogates) and hostile paths (NUL, percent-encoding, overlong). The oracle: status below 500 and a JSON
error body with a code and a message naming the problem (tests/fuzz/edge_target.py).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any, Final

import pytest

from splitrelay.edge import tokens
from splitrelay.edge.web import EdgeRequest
from tests.edge_support import TOKEN_KEY, browser_offer
from tests.fuzz.edge_target import API_KEY_HEADER, NOW, PARIS, EdgeFuzz, describe, header_value
from tests.fuzz.engine import LONG_RUN_FROM, Source, chance, choice, run_target
from tests.fuzz.mutate import (
    PATH_TOKENS,
    Raw,
    dumps,
    hostile_path,
    hostile_raw,
    mutate_bytes,
    mutate_doc,
    mutate_text,
)

pytestmark = pytest.mark.fuzz

CLAIMS: Final[dict[str, Any]] = {
    "iss": tokens.ISSUER, "aud": tokens.AUDIENCE, "sub": "alice", "scope": "calls", "iat": int(NOW) - 10,
    "exp": int(NOW) + 600, "jti": "0123456789abcdef01234567",
}  # fmt: skip
HEADER: Final[dict[str, Any]] = {"alg": "HS256", "typ": "JWT"}
CLAIM_KEYS: Final = ("iss", "aud", "sub", "scope", "iat", "exp", "nbf", "jti", "alg", "typ", "crit", "kid")
METHODS: Final = ("GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS", "HEAD", "get", "TRACE", "", "P\x00ST")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _part(source: Source, doc: Any) -> str:
    text = dumps(mutate_doc(source, doc, keys=CLAIM_KEYS) if not chance(source, 5) else hostile_raw(source))
    return _b64(text.encode("utf-8", "surrogatepass"))


def token_text(source: Source, valid: str) -> str:
    """A JWT-like token: the valid one garbled, or one of mutated parts, usually signed with the real key."""
    kind = source.integer(0, 4)
    if kind == 0:
        return mutate_text(source, valid, tokens=(".", "..", "=", "+", "/", "%", " ", "\x00", "A" * 5000))
    header = _b64(json.dumps(HEADER).encode()) if kind != 1 else _part(source, HEADER)
    payload = _part(source, CLAIMS) if kind != 2 else _b64(json.dumps(CLAIMS).encode())
    if kind == 3:
        nested = Raw("[" * 1100 + "]" * 1100)
        payload = (
            _b64(dumps({**CLAIMS, choice(source, CLAIM_KEYS): nested}).encode())
            if chance(source, 2)
            else payload
        )
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = _b64(hmac.new(TOKEN_KEY.encode(), signing_input, hashlib.sha256).digest())
    if chance(source, 8):
        signature = mutate_text(source, signature)
    return f"{header}.{payload}.{signature}"


def authorization(source: Source, fuzz: EdgeFuzz) -> str:
    token = token_text(source, fuzz.token)
    if not chance(source, 5):
        return "Bearer " + token
    scheme = choice(source, ("bearer  ", "BEARER ", "Basic ", "Bearer\t", "", "Bearer", " Bearer "))
    return scheme + token


async def one_token(fuzz: EdgeFuzz, source: Source) -> None:
    route = source.integer(0, 3)
    if route == 0:
        request = EdgeRequest(
            "GET", "/v1/ice-servers", headers=fuzz.headers(authorization(source, fuzz), None)
        )
    elif route == 1:
        body = json.dumps({"offer": {"type": "offer", "sdp": browser_offer()}}).encode()
        request = EdgeRequest(
            "POST", "/v1/calls", headers=fuzz.headers(authorization(source, fuzz)), body=body, cf=PARIS
        )
    elif route == 2:
        request = EdgeRequest(
            "GET", f"/v1/calls/{fuzz.call_id}", headers=fuzz.headers(authorization(source, fuzz), None)
        )
    else:  # the API key route: an API key garbled
        key = mutate_text(source, API_KEY_HEADER) if chance(source, 2) else authorization(source, fuzz)
        request = EdgeRequest("POST", "/v1/tokens", headers=fuzz.headers(key), body=b'{"sub":"bob"}')
    await fuzz.request(request, describe(request))


BODIES: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("POST /v1/calls", {"offer": {"type": "offer", "sdp": browser_offer()}}),
    ("PATCH", {"offer": {"type": "offer", "sdp": browser_offer()}}),
    ("PATCH", {"answer": {"type": "answer", "sdp": browser_offer()}}),
    ("POST /v1/tokens", {"sub": "bob", "scope": "calls ice", "ttl_s": 600}),
    ("POST /v1/tokens", {"sub": "bob", "scope": ["calls"]}),
)
BODY_KEYS: Final = ("offer", "answer", "type", "sdp", "sub", "scope", "ttl_s")


def body_bytes(source: Source, doc: dict[str, Any]) -> bytes:
    mutated = mutate_doc(source, doc, keys=BODY_KEYS) if not chance(source, 10) else doc
    data = dumps(mutated).encode("utf-8", "surrogatepass")
    if chance(source, 4):
        data = mutate_bytes(source, data)
    if chance(source, 40):
        data = b"[" * 30_000 + b"]" * 30_000  # the 60 KB of brackets that killed Pyodide
    return data


async def one_body(fuzz: EdgeFuzz, source: Source) -> None:
    route, doc = choice(source, BODIES)
    content_type = choice(
        source,
        ("application/json",) * 6 + ("application/json; charset=utf-8", "text/plain", "", "APPLICATION/JSON"),
    )
    if route == "PATCH":
        method, path, auth = "PATCH", f"/v1/calls/{fuzz.call_id}", "default"
    elif route == "POST /v1/tokens":
        method, path, auth = "POST", "/v1/tokens", API_KEY_HEADER
    else:
        method, path, auth = "POST", "/v1/calls", "default"
    headers = fuzz.headers(auth, content_type)
    request = EdgeRequest(method, path, headers=headers, body=body_bytes(source, doc), cf=PARIS)
    await fuzz.request(request, describe(request))


async def one_path(fuzz: EdgeFuzz, source: Source) -> None:
    valid = (
        "/healthz",
        "/v1/tokens",
        "/v1/ice-servers",
        "/v1/calls",
        f"/v1/calls/{fuzz.call_id}",
        "/v1/calls/x",
    )
    path = hostile_path(source, valid)
    method = choice(source, METHODS)
    headers = fuzz.headers("default" if not chance(source, 4) else None)
    if chance(source, 5):
        headers["origin"] = header_value(
            choice(source, ("https://evil.test", "", "null", "\x00", "x" * 5000))
        )
    query = mutate_text(source, "a=1", tokens=PATH_TOKENS) if chance(source, 4) else ""
    body = b'{"offer":{"type":"offer","sdp":"v=0"}}' if chance(source, 2) else b""
    request = EdgeRequest(method, path, query=query, headers=headers, body=body)
    await fuzz.request(request, describe(request))


def _run(name: str, one: Any) -> None:
    fuzz = EdgeFuzz()

    async def step(source: Source) -> None:
        await one(fuzz, source)

    with asyncio.Runner() as runner:
        run_target(name, runner, step)


def test_edge_tokens_never_5xx() -> None:
    _run("edge-token", one_token)


def test_edge_json_bodies_never_5xx() -> None:
    _run("edge-body", one_body)


def test_edge_paths_never_5xx() -> None:
    _run("edge-path", one_path)


async def test_a_raise_injected_behind_the_token_check_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target can fail: a verifier that overflows on a big ``exp`` (the issue's 500) is caught."""
    real = tokens._int_claim

    def overflowing(doc: dict[str, Any], name: str, *, required: bool) -> int | None:
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**40:
            raise OverflowError("int too large to convert to float")
        return real(doc, name, required=required)

    monkeypatch.setattr(tokens, "_int_claim", overflowing)
    fuzz = EdgeFuzz()

    async def step(source: Source) -> None:
        await one_token(fuzz, source)

    with pytest.raises(AssertionError, match="HTTP 500"):
        await asyncio.to_thread(_run_injected, step)


def _run_injected(step: Any) -> None:
    with asyncio.Runner() as runner:
        run_target("edge-token-injected", runner, step, examples=LONG_RUN_FROM)
