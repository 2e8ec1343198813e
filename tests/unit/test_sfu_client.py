"""relay/sfu_client.py over httpx.MockTransport: requests on the wire, retry/backoff sequences, error mapping.

No network: httpx's MockTransport answers in-process. Sleeps are recorded instead of slept, except in
the test that checks the real asyncio.sleep path and the per-attempt timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from splitrelay.contract.api_error import ErrorCode, SfuApiError
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.retry import RetryPolicy
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    SessionDescription,
    TrackObject,
    TracksRequest,
    UpdateTracksRequest,
    mid_for_track,
)
from splitrelay.contract.sfu_http import MAX_BODY_BYTES
from splitrelay.relay.sfu_client import SfuClient, TurnClient
from tests import spec

BASE = "https://sfu.test/v1"
APP_ID = "app0123"
SECRET = "appsecret-DO-NOT-LEAK-91b2"
TURN_TOKEN = "turntoken-DO-NOT-LEAK-3c4d"
SESSION = "e017a2629c754fedc1f7d8587e06d126"
POLICY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0, max_retry_after=10.0, max_elapsed=60.0)
OFFER = SessionDescription.offer("v=0\r\n")
ANSWER = SessionDescription.answer("v=0\r\n")

Reply = httpx.Response | Exception


def reply(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    content = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers)


@dataclass
class Harness:
    """A scripted server: replies in order, records every request and every sleep."""

    replies: list[Reply]
    requests: list[httpx.Request] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError("more requests than scripted replies")
        next_reply = self.replies.pop(0)
        if isinstance(next_reply, Exception):
            raise next_reply
        return next_reply

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    def sfu(self, policy: RetryPolicy = POLICY) -> SfuClient:
        return SfuClient(
            BASE, APP_ID, SECRET, http=self.http(), retry=policy, rng=random.Random(1), sleep=self.sleep
        )

    def turn(self) -> TurnClient:
        return TurnClient(
            BASE, "key1", TURN_TOKEN, http=self.http(), retry=POLICY, rng=random.Random(1), sleep=self.sleep
        )


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


# --- requests on the wire -----------------------------------------------------------------------------


async def test_every_operation_sends_the_spec_request_and_parses_the_reply() -> None:
    harness = Harness(
        [
            reply(201, {"sessionId": SESSION}),
            reply(
                200,
                {
                    "requiresImmediateRenegotiation": True,
                    "sessionDescription": OFFER.to_json(),
                    "tracks": [{"mid": "1", "sessionId": "c", "trackName": "mic"}],
                },
            ),
            reply(200, {}),
            reply(200, {"requiresImmediateRenegotiation": False, "tracks": [{"mid": "1"}]}),
            reply(
                200,
                {
                    "requiresImmediateRenegotiation": False,
                    "tracks": [{"mid": "1", "trackName": "t2", "sessionId": "c"}],
                },
            ),
            reply(200, {"tracks": [{"location": "remote", "mid": "1", "status": "active"}]}),
        ]
    )
    async with harness.sfu() as client:
        created = await client.new_session(thirdparty=False, correlation_id="call-9")
        pulled = await client.new_tracks(
            SESSION, TracksRequest(tracks=(TrackObject.remote("c", "mic", mid=mid_for_track("out")),))
        )
        await client.renegotiate(SESSION, ANSWER)
        closed = await client.close_tracks(SESSION, CloseTracksRequest.for_mids(["1"], force=True))
        updated = await client.update_tracks(
            SESSION, UpdateTracksRequest(tracks=(TrackObject.remote("c", "t2", mid="1"),))
        )
        state = await client.get_session(SESSION)

    assert created.session_id == SESSION
    assert pulled.requires_immediate_renegotiation and pulled.session_description == OFFER
    assert closed.failed == () and updated.tracks[0].track_name == "t2"
    assert state.tracks[0].mid == "1"
    assert harness.sleeps == []

    sent = [(r.method, r.url.path, r.url.query.decode()) for r in harness.requests]
    session_path = f"/v1/apps/{APP_ID}/sessions/{SESSION}"
    assert sent == [
        ("POST", f"/v1/apps/{APP_ID}/sessions/new", "thirdparty=false&correlationId=call-9"),
        ("POST", f"{session_path}/tracks/new", ""),
        ("PUT", f"{session_path}/renegotiate", ""),
        ("PUT", f"{session_path}/tracks/close", ""),
        ("PUT", f"{session_path}/tracks/update", ""),
        ("GET", session_path, ""),
    ]
    for request in harness.requests:
        assert request.url.host == "sfu.test"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert harness.requests[0].content == b""
    templates = {
        "tracks/new": ("POST", "/apps/{appId}/sessions/{sessionId}/tracks/new"),
        "renegotiate": ("PUT", "/apps/{appId}/sessions/{sessionId}/renegotiate"),
        "tracks/close": ("PUT", "/apps/{appId}/sessions/{sessionId}/tracks/close"),
        "tracks/update": ("PUT", "/apps/{appId}/sessions/{sessionId}/tracks/update"),
    }
    for request in harness.requests[1:5]:
        suffix = request.url.path.split(f"{SESSION}/", 1)[1]
        method, template = templates[suffix]
        assert request.headers["content-type"] == "application/json"
        spec.validate_request(method, template, body(request))
    assert body(harness.requests[1]) == {
        "tracks": [{"location": "remote", "mid": "#out", "sessionId": "c", "trackName": "mic"}]
    }


async def test_invalid_requests_fail_before_any_network_io() -> None:
    harness = Harness([])
    client = harness.sfu()
    with pytest.raises(SchemaError) as excinfo:
        await client.new_tracks(SESSION, TracksRequest(tracks=(TrackObject.local("mic"),)))
    assert excinfo.value.field == "tracks[0].kind"
    with pytest.raises(SchemaError) as excinfo:
        await client.get_session("a/b")
    assert excinfo.value.field == "session_id"
    with pytest.raises(SchemaError) as excinfo:
        await harness.turn().generate_ice_servers(172_801)
    assert excinfo.value.field == "ttl" and "172800" in excinfo.value.message
    assert harness.requests == []
    with pytest.raises(SchemaError) as excinfo:
        SfuClient("ftp://x", APP_ID, SECRET)
    assert excinfo.value.field == "base_url"
    with pytest.raises(SchemaError) as excinfo:
        SfuClient(BASE, APP_ID, "", http=harness.http())
    assert excinfo.value.field == "app_secret"
    with pytest.raises(SchemaError) as excinfo:
        SfuClient(BASE, APP_ID, SECRET, http=harness.http(), request_timeout=0)
    assert excinfo.value.field == "request_timeout"


# --- retries -----------------------------------------------------------------------------------------


async def test_429_then_201_honours_retry_after() -> None:
    harness = Harness([reply(429, headers={"Retry-After": "2"}), reply(201, {"sessionId": SESSION})])
    created = await harness.sfu().new_session()
    assert created.session_id == SESSION
    assert len(harness.requests) == 2
    assert harness.sleeps == [2.0]


async def test_429_without_retry_after_uses_jittered_backoff() -> None:
    harness = Harness([reply(429), reply(429), reply(201, {"sessionId": SESSION})])
    await harness.sfu().new_session()
    first, second = harness.sleeps
    assert first == POLICY.backoff(0, random.Random(1))  # the client's rng, seeded 1, drawn once
    assert 0.0 <= first <= 0.5 and 0.0 <= second <= 1.0


async def test_503_until_attempts_are_exhausted() -> None:
    failure = {"errorCode": "internal_error", "errorDescription": "Backend error"}
    harness = Harness([reply(503, failure) for _ in range(POLICY.max_attempts)])
    with pytest.raises(SfuApiError) as excinfo:
        await harness.sfu().get_session(SESSION)
    error = excinfo.value
    assert (error.status, error.code, error.description, error.retryable) == (
        503,
        "internal_error",
        "Backend error",
        True,
    )
    assert len(harness.requests) == POLICY.max_attempts
    assert len(harness.sleeps) == POLICY.max_attempts - 1
    assert all(0.0 <= delay <= POLICY.max_delay for delay in harness.sleeps)


async def test_425_is_retried() -> None:
    tracks = {"tracks": [{"mid": "0", "trackName": "mic"}], "requiresImmediateRenegotiation": False}
    harness = Harness([reply(425, headers={"Retry-After": "1"}), reply(200, tracks)])
    result = await harness.sfu().new_tracks(
        SESSION, TracksRequest(session_description=OFFER, tracks=(TrackObject.local("mic", mid="0"),))
    )
    assert result.tracks[0].track_name == "mic"
    assert harness.sleeps == [1.0]
    assert harness.requests[0].content == harness.requests[1].content


async def test_400_is_not_retried() -> None:
    harness = Harness(
        [reply(400, {"errorCode": "decoding_error", "errorDescription": "The request could not be decoded."})]
    )
    with pytest.raises(SfuApiError) as excinfo:
        await harness.sfu().renegotiate(SESSION, ANSWER)
    assert (excinfo.value.status, excinfo.value.code, excinfo.value.retryable) == (
        400,
        ErrorCode.DECODING_ERROR,
        False,
    )
    assert len(harness.requests) == 1 and harness.sleeps == []


async def test_item_errors_in_a_200_are_returned_not_retried() -> None:
    mixed = {
        "requiresImmediateRenegotiation": False,
        "tracks": [
            {"mid": "0"},
            {"mid": "2", "errorCode": "internal_error", "errorDescription": "Backend error"},
        ],
    }
    harness = Harness([reply(200, mixed)])
    result = await harness.sfu().close_tracks(SESSION, CloseTracksRequest.for_mids(["0", "2"], force=True))
    assert [track.mid for track in result.failed] == ["2"]
    assert len(harness.requests) == 1


async def test_malformed_success_body_is_not_retried() -> None:
    harness = Harness([reply(201, {"sessionId": 7})])
    with pytest.raises(SfuApiError) as excinfo:
        await harness.sfu().new_session()
    assert (excinfo.value.code, excinfo.value.retryable) == (ErrorCode.INVALID_RESPONSE, False)
    assert "sessionId" in excinfo.value.description
    assert len(harness.requests) == 1


async def test_oversized_body_is_refused() -> None:
    harness = Harness([reply(200, b"{" + b" " * MAX_BODY_BYTES + b"}")])
    with pytest.raises(SfuApiError) as excinfo:
        await harness.sfu().get_session(SESSION)
    assert (
        excinfo.value.code == ErrorCode.INVALID_RESPONSE and str(MAX_BODY_BYTES) in excinfo.value.description
    )
    assert len(harness.requests) == 1


async def test_connection_errors_are_retried_then_surface_as_status_0() -> None:
    harness = Harness([httpx.ConnectError("connection refused"), reply(201, {"sessionId": SESSION})])
    assert (await harness.sfu().new_session()).session_id == SESSION
    assert len(harness.requests) == 2 and len(harness.sleeps) == 1

    harness = Harness([httpx.ReadTimeout("slow") for _ in range(POLICY.max_attempts)])
    with pytest.raises(SfuApiError) as excinfo:
        await harness.sfu().get_session(SESSION)
    assert (excinfo.value.status, excinfo.value.code, excinfo.value.retryable) == (
        0,
        "connection_error",
        True,
    )
    assert isinstance(excinfo.value.__cause__, httpx.ReadTimeout)
    assert "no HTTP response" in str(excinfo.value)
    assert len(harness.requests) == POLICY.max_attempts


async def test_non_transient_transport_errors_are_not_retried() -> None:
    harness = Harness([httpx.UnsupportedProtocol("bad scheme")])
    with pytest.raises(SfuApiError) as excinfo:
        await harness.sfu().get_session(SESSION)
    assert (excinfo.value.code, excinfo.value.retryable) == ("connection_error", False)
    assert len(harness.requests) == 1


async def test_redirects_are_not_followed_even_on_a_following_client() -> None:
    harness = Harness([reply(307, headers={"Location": "https://elsewhere.test/steal"})])
    http = httpx.AsyncClient(transport=httpx.MockTransport(harness.handler), follow_redirects=True)
    client = SfuClient(BASE, APP_ID, SECRET, http=http, retry=POLICY, sleep=harness.sleep)
    with pytest.raises(SfuApiError) as excinfo:
        await client.get_session(SESSION)
    assert (excinfo.value.status, excinfo.value.code, excinfo.value.retryable) == (307, "http_error", False)
    assert [r.url.host for r in harness.requests] == ["sfu.test"]


async def test_retry_after_beyond_the_time_budget_gives_up() -> None:
    harness = Harness([reply(503, headers={"Retry-After": "5"})])
    policy = RetryPolicy(max_attempts=4, max_retry_after=10.0, max_elapsed=3.0)
    with pytest.raises(SfuApiError) as excinfo:
        await harness.sfu(policy).get_session(SESSION)
    assert excinfo.value.status == 503
    assert len(harness.requests) == 1 and harness.sleeps == []


async def test_real_sleep_and_per_attempt_timeout() -> None:
    calls: list[httpx.Request] = []

    async def stall(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        await asyncio.sleep(30)
        return reply(200, {})

    http = httpx.AsyncClient(transport=httpx.MockTransport(stall))
    policy = RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.001)
    client = SfuClient(BASE, APP_ID, SECRET, http=http, retry=policy, request_timeout=0.05)
    with pytest.raises(SfuApiError) as excinfo:
        await client.get_session(SESSION)
    assert (excinfo.value.code, excinfo.value.retryable) == ("connection_error", True)
    assert "0.05 s" in excinfo.value.description
    assert len(calls) == 2


# --- secrets and lifetime ----------------------------------------------------------------------------


async def test_secrets_never_reach_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    harness = Harness(
        [
            reply(503, {"errorCode": "internal_error"}),
            httpx.ConnectError("refused"),
            reply(401, {"errorCode": "unauthorized", "errorDescription": "bad token"}),
        ]
    )
    client = harness.sfu()
    with pytest.raises(SfuApiError) as excinfo:
        await client.get_session(SESSION)
    turn = harness.turn()
    shown = [str(excinfo.value), repr(excinfo.value), repr(client), repr(turn), caplog.text]
    assert "attempt 2 of 4" in caplog.text and "internal_error" in caplog.text
    assert not any(SECRET in text or TURN_TOKEN in text for text in shown)


async def test_given_http_client_is_left_open_own_client_is_closed() -> None:
    harness = Harness([])
    http = harness.http()
    async with SfuClient(BASE, APP_ID, SECRET, http=http):
        pass
    assert not http.is_closed
    await http.aclose()
    own = TurnClient(BASE, "key1", TURN_TOKEN)
    owned_http = own._transport._http
    await own.aclose()
    assert owned_http.is_closed


# --- TURN --------------------------------------------------------------------------------------------


async def test_turn_generate_and_revoke() -> None:
    servers = {
        "iceServers": [
            {"urls": ["stun:stun.cloudflare.com:3478"]},
            {"urls": ["turn:turn.cloudflare.com:3478?transport=udp"], "username": "u1", "credential": "c1"},
        ]
    }
    harness = Harness([reply(429, headers={"Retry-After": "1"}), reply(201, servers), reply(204), reply(404)])
    async with harness.turn() as turn:
        result = await turn.generate_ice_servers(300)
        await turn.revoke("u1")
        with pytest.raises(SfuApiError) as excinfo:
            await turn.revoke("u1")
    assert result.usernames == ("u1",)
    assert (excinfo.value.status, excinfo.value.retryable) == (404, False)
    generate, retried, revoke, _ = harness.requests
    assert (generate.method, generate.url.path) == (
        "POST",
        "/v1/turn/keys/key1/credentials/generate-ice-servers",
    )
    assert body(generate) == {"ttl": 300} and retried.content == generate.content
    assert (revoke.method, revoke.url.path, revoke.content) == (
        "POST",
        "/v1/turn/keys/key1/credentials/u1/revoke",
        b"",
    )
    assert all(r.headers["authorization"] == f"Bearer {TURN_TOKEN}" for r in harness.requests)
    assert harness.sleeps == [1.0]
