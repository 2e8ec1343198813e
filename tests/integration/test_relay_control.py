"""The relay's control API over real HTTP: signatures, bad input, limits, health, drain."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from splitrelay.contract.signing import SIGNATURE_HEADER, Verifier, sign_headers
from splitrelay.inference.echo_agent import EchoAgent
from splitrelay.relay.control import MAX_BODY_BYTES, SignatureMiddleware
from tests.integration.relay_harness import SIGNING_KEY, Caller, RelayStack, relay_stack

pytestmark = pytest.mark.integration

OFFER_BODY = {"call_id": "c1", "mode": "direct", "offer": {"type": "offer", "sdp": "v=0\r\n"}}


async def _error(
    stack: RelayStack, method: str, path: str, body: object = None, **kw: object
) -> tuple[int, str]:
    response = await stack.request(method, path, body, **kw)  # type: ignore[arg-type]
    payload = response.json()
    return response.status_code, payload["error"]["message"]


async def test_unsigned_forged_stale_and_replayed_requests_get_401_with_the_reason() -> None:
    async with relay_stack(EchoAgent()) as stack:
        status, message = await _error(stack, "GET", "/v1/calls", sign=False)
        assert status == 401 and SIGNATURE_HEADER in message

        status, message = await _error(stack, "GET", "/v1/calls", key=b"x" * 32)
        assert status == 401 and "bad signature" in message

        stale = sign_headers(SIGNING_KEY, "GET", "/v1/calls", b"", now=time.time() - 3600)
        response = await stack.http.get("/v1/calls", headers=stale)
        assert response.status_code == 401 and "window" in response.json()["error"]["message"]

        fresh = sign_headers(SIGNING_KEY, "GET", "/v1/calls", b"")
        assert (await stack.http.get("/v1/calls", headers=fresh)).status_code == 200
        replayed = await stack.http.get("/v1/calls", headers=fresh)
        assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]["message"]

        # A signature over one body does not cover another.
        body = json.dumps(OFFER_BODY).encode()
        headers = sign_headers(SIGNING_KEY, "POST", "/v1/calls", body)
        tampered = body.replace(b'"c1"', b'"c2"')
        response = await stack.http.post("/v1/calls", content=tampered, headers=headers)
        assert response.status_code == 401


async def test_secrets_never_appear_in_responses() -> None:
    async with relay_stack(EchoAgent()) as stack:
        for key in (SIGNING_KEY, b"y" * 40):
            response = await stack.request("GET", "/v1/calls", key=key)
            assert SIGNING_KEY.decode() not in response.text
        response = await stack.http.get("/metrics")
        assert SIGNING_KEY.decode() not in response.text


async def test_oversized_bodies_are_refused_with_the_limit() -> None:
    async with relay_stack(EchoAgent()) as stack:
        big = b"x" * (MAX_BODY_BYTES + 1)
        status, message = await _error(stack, "POST", "/v1/calls", big)
        assert status == 413 and str(MAX_BODY_BYTES) in message
        # Without a content-length (chunked), the stream is cut at the limit too.
        headers = sign_headers(SIGNING_KEY, "POST", "/v1/calls", big)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        response = await stack.http.post("/v1/calls", content=chunks(), headers=headers)
        assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        ({"call_id": "c1", "mode": "teleport"}, "mode"),
        ({"call_id": "bad id!", "mode": "direct", "offer": {"type": "offer", "sdp": "v=0"}}, "call_id"),
        ({"call_id": "c1", "mode": "direct"}, "offer"),
        ({"call_id": "c1", "mode": "direct", "offer": {"type": "answer", "sdp": "v=0"}}, "offer"),
        ({"call_id": "c1", "mode": "direct", "offer": {"type": "offer", "sdp": "v=0"}, "extra": 1}, "extra"),
        ({"call_id": "c1", "mode": "direct", "offer": {"type": "offer", "sdp": "x" * 40_000}}, "offer.sdp"),
        ({"call_id": "c1", "mode": "sfu"}, "sfu"),
    ],
)
async def test_bad_attach_requests_get_400_naming_the_field(body: object, field: str) -> None:
    async with relay_stack(EchoAgent()) as stack:
        status, message = await _error(stack, "POST", "/v1/calls", body)
        assert status == 400
        assert field in message


async def test_malformed_sdp_and_offers_without_audio_are_400_and_leave_nothing_behind() -> None:
    async with relay_stack(EchoAgent()) as stack:
        status, message = await _error(stack, "POST", "/v1/calls", OFFER_BODY)
        assert status == 400 and message.startswith("offer:")
        video_only = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n"
        )
        body = dict(OFFER_BODY, offer={"type": "offer", "sdp": video_only})
        status, message = await _error(stack, "POST", "/v1/calls", body)
        assert status == 400 and "audio" in message
        assert stack.relay.manager is not None and stack.relay.manager.calls == {}


async def test_sfu_mode_without_an_sfu_is_a_clear_400() -> None:
    async with relay_stack(EchoAgent()) as stack:
        body = {"call_id": "c1", "mode": "sfu", "sfu": {"caller_session_id": "s", "caller_track_name": "mic"}}
        status, message = await _error(stack, "POST", "/v1/calls", body)
        assert status == 400 and "no SFU configured" in message


async def test_duplicate_call_ids_are_409_and_unknown_calls_404() -> None:
    async with relay_stack(EchoAgent()) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "dup")
            offer = await Caller().peer.create_offer()
            body = {"call_id": "dup", "mode": "direct", "offer": {"type": "offer", "sdp": offer}}
            status, message = await _error(stack, "POST", "/v1/calls", body)
            assert status == 409 and "dup" in message
            status, message = await _error(stack, "GET", "/v1/calls/nope")
            assert status == 404 and "nope" in message
        finally:
            await caller.close()


async def test_health_readiness_and_drain() -> None:
    async with relay_stack(EchoAgent()) as stack:
        assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
        assert (await stack.http.get("/readyz")).status_code == 200
        drained = await stack.request("POST", "/v1/drain")
        no_edge = {"draining": True, "live_calls": 0, "edge_acknowledged": None}
        assert drained.status_code == 200 and drained.json() == no_edge
        assert (await stack.http.get("/readyz")).status_code == 503
        offer = await Caller().peer.create_offer()
        body = {"call_id": "late", "mode": "direct", "offer": {"type": "offer", "sdp": offer}}
        status, message = await _error(stack, "POST", "/v1/calls", body)
        assert status == 503 and "draining" in message
        assert (await stack.http.get("/healthz")).status_code == 200  # alive while draining
        undrained = await stack.request("POST", "/v1/undrain")
        assert undrained.status_code == 200 and undrained.json()["draining"] is False
        assert (await stack.http.get("/readyz")).status_code == 200


async def test_unknown_routes_get_the_same_error_shape() -> None:
    async with relay_stack(EchoAgent()) as stack:
        status, _ = await _error(stack, "GET", "/v1/nothing-here")
        assert status == 404


async def test_deeply_nested_json_is_a_400_naming_the_limit() -> None:
    async with relay_stack(EchoAgent()) as stack:
        status, message = await _error(stack, "POST", "/v1/calls", b"[" * 60_000)
        assert (status, message) == (400, "body: nests deeper than 32 levels")
        status, message = await _error(stack, "POST", "/v1/calls", b'{"call_id": "c", "mode": 1e999}')
        assert status == 400 and "overflows" in message


async def test_the_signed_path_is_the_path_as_sent_percent_encoding_kept() -> None:
    """The edge and `splitrelay call` sign /v1/calls/a%3Ab as they send it; the relay once checked the
    decoded /v1/calls/a:b instead and answered 401 where the unencoded form got 404."""
    async with relay_stack(EchoAgent()) as stack:
        for path in ("/v1/calls/a%3Ab", "/v1/calls/a:b"):
            status, message = await _error(stack, "GET", path)
            assert status == 404, (path, status, message)


async def test_an_unsigned_request_is_refused_before_its_body_is_read() -> None:
    """The middleware checks the signature headers first: an unsigned or stale request costs no read."""
    reads: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 8192, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    async def never(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run for an unsigned request")

    middleware = SignatureMiddleware(never, Verifier({"default": SIGNING_KEY}))
    scope = {"type": "http", "method": "POST", "path": "/v1/calls", "raw_path": b"/v1/calls",
             "query_string": b"", "headers": [(b"content-length", b"60000")]}  # fmt: skip
    await middleware(scope, receive, send)
    assert reads == [] and sent[0]["status"] == 401


async def test_a_truncated_offer_is_a_400_not_a_502() -> None:
    """aiortc's SDP parser fails on a cut offer with a bare AssertionError: it was answered 502."""
    async with relay_stack(EchoAgent()) as stack:
        caller = Caller()
        try:
            sdp = await caller.peer.create_offer()
        finally:
            await caller.close()
        lines = sdp.split("\r\n")
        for cut in (sdp[: len(sdp) // 2], sdp[: len(sdp) // 3], "\r\n".join(lines[: len(lines) - 5])):
            body = {"call_id": "cut-1", "mode": "direct", "offer": {"type": "offer", "sdp": cut}}
            status, message = await _error(stack, "POST", "/v1/calls", body)
            assert status == 400 and message.startswith("offer:"), (status, message)
        assert stack.relay.manager is not None and stack.relay.manager.calls == {}
