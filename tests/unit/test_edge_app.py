"""Every edge route on CPython (edge/app.py, edge/calls.py) against an in-memory SFU, TURN and relays."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from splitrelay.contract.control import MAX_SDP_CHARS
from splitrelay.devtools.local_edge import LocalRecords
from splitrelay.edge import tokens
from splitrelay.edge.app import EdgeApp, build_app
from splitrelay.edge.calls import FetchError, Inbound, run_alarm
from splitrelay.edge.config import ConfigError, load_config
from splitrelay.edge.ratelimit import TokenBucket
from splitrelay.edge.web import MAX_BODY_BYTES, EdgeRequest, EdgeResponse
from tests.edge_support import API_KEY, TOKEN_KEY, FakeUpstream, browser_offer, edge_env, no_secret_in

PARIS = {"latitude": "48.85", "longitude": "2.35", "continent": "EU", "country": "FR", "colo": "CDG"}


class Harness:
    def __init__(self, env: dict[str, str] | None = None, *, run_background: bool = True) -> None:
        self.now = 1_800_000_000.0
        self.upstream = FakeUpstream()
        self.records = LocalRecords(clock=lambda: self.now)
        self.background: list[Coroutine[Any, Any, None]] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.run_background = run_background
        self.app: EdgeApp = build_app(
            env or edge_env(),
            fetch=self.upstream,
            records=self.records,
            defer=self.defer,
            ip_limiter=TokenBucket(rate=100, burst=100),
            token_limiter=TokenBucket(rate=100, burst=100),
            clock=lambda: self.now,
        )
        self.responses: list[EdgeResponse] = []

    def defer(self, coro: Coroutine[Any, Any, None]) -> None:
        if self.run_background:
            self.tasks.append(asyncio.get_running_loop().create_task(coro))
        else:
            self.background.append(coro)

    async def drain(self) -> None:
        await asyncio.gather(*self.tasks)

    def token(self, sub: str = "alice", scope: tuple[str, ...] = ("calls",)) -> str:
        return tokens.issue(TOKEN_KEY.encode(), sub, scope, now=self.now)[0]

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        cf: dict[str, object] | None = None,
    ) -> EdgeResponse:
        all_headers = {"content-type": "application/json"} if body is not None or raw is not None else {}
        if token is not None:
            all_headers["authorization"] = f"Bearer {self.token() if token == 'default' else token}"
        all_headers.update(headers or {})
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        request = EdgeRequest(
            method, path, headers=all_headers, body=data, client_ip="198.51.100.7", cf=cf or {}
        )
        response = await self.app.handle(request)
        self.responses.append(response)
        return response

    async def create(self, **kwargs: Any) -> dict[str, Any]:
        response = await self.request("POST", "/v1/calls", offer_body(browser_offer()), **kwargs)
        assert response.status == 201, response.body
        doc: dict[str, Any] = response.json()
        return doc


def offer_body(sdp: str) -> dict[str, Any]:
    return {"offer": {"type": "offer", "sdp": sdp}}


def error_of(response: EdgeResponse) -> dict[str, Any]:
    doc: dict[str, Any] = response.json()["error"]
    return doc


@pytest.fixture
def h() -> Harness:
    return Harness()


async def test_call_setup_one_round_trip_then_relay_wired(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await h.create(cf=PARIS)
    assert created["answer"]["type"] == "answer" and "a=mid:0" in created["answer"]["sdp"]
    assert created["state"] == "created" and created["relay"] == {"id": "fra", "region": "eu-central-1"}
    urls = [url for server in created["ice_servers"] for url in server["urls"]]
    assert "turn:turn.cloudflare.com:3478?transport=udp" in urls and not any(":53" in url for url in urls)
    await h.drain()
    steps = h.upstream.steps()
    assert steps[0] == "POST sfu.test/v1/apps/edge-test-app/sessions/new"
    assert steps.index("POST relay-fra.test/v1/calls") > steps.index(
        "POST sfu.test/v1/apps/edge-test-app/sessions/sess0000/tracks/new"
    )
    push_index = next(i for i, s in enumerate(steps) if s.endswith("sess0000/tracks/new"))
    push = json.loads(h.upstream.sent[push_index].body or b"")
    assert push["tracks"] == [
        {
            "location": "local",
            "mid": "0",
            "trackName": "mic",
            "bidirectionalMediaStream": True,
            "kind": "audio",
        }
    ]
    pulled = h.upstream.sessions["sess0000"]["pulled"]
    assert pulled == [{"location": "remote", "mid": "#mic", "sessionId": "relay-sess-fra",
                       "trackName": f"relay-{created['call_id']}", "kind": "audio"}]  # fmt: skip
    relay_body = h.upstream.relay_calls[created["call_id"]]
    assert relay_body["sfu"] == {"caller_session_id": "sess0000", "caller_track_name": "mic"}
    state = (await h.request("GET", f"/v1/calls/{created['call_id']}")).json()
    assert state["state"] == "connected" and state["relay"]["reason"].startswith("chosen: fra: cf latitude")
    assert "answer_to_connected_ms" in state
    for response in h.responses:
        assert no_secret_in(response.body)
    assert no_secret_in(caplog.text)


async def test_delete_is_idempotent_and_cleans_up(h: Harness) -> None:
    created = await h.create()
    await h.drain()
    path = f"/v1/calls/{created['call_id']}"
    first = (await h.request("DELETE", path)).json()
    assert first["closed_now"] is True and first["cleanup"] == {"sfu": "ok", "relay": "ok"}
    assert h.upstream.sessions["sess0000"]["closed"] and created["call_id"] not in h.upstream.relay_calls
    second = await h.request("DELETE", path)
    assert (
        second.status == 200 and second.json()["closed_now"] is False and second.json()["state"] == "closed"
    )
    assert (await h.request("GET", path)).json()["close_reason"] == "closed by the caller"


async def test_relay_fallback_in_rank_order(h: Harness) -> None:
    h.upstream.fail["relay:fra"] = Inbound(503, {}, b'{"error": {"code": "draining"}}')
    h.upstream.fail["relay:iad"] = FetchError("connect timeout")
    created = await h.create(cf=PARIS)
    await h.drain()
    state = (await h.request("GET", f"/v1/calls/{created['call_id']}")).json()
    assert state["state"] == "connected" and state["relay"]["id"] == "sin"
    assert state["relay"]["reason"].startswith("fallback 2: sin")
    assert state["relay_attempts"][0] == "fra: HTTP 503 draining"
    assert state["relay_attempts"][1].startswith("iad: no response")
    assert "DELETE relay-iad.test/v1/calls/" + created["call_id"] in h.upstream.steps()  # may have attached


async def test_no_relay_accepts_closes_the_call(h: Harness) -> None:
    for relay in ("fra", "iad", "sin"):
        h.upstream.fail[f"relay:{relay}"] = Inbound(503, {}, b"{}")
    created = await h.create()
    await h.drain()
    state = (await h.request("GET", f"/v1/calls/{created['call_id']}")).json()
    assert state["state"] == "closed" and state["close_reason"] == "no relay accepted the call (3 tried)"
    assert h.upstream.sessions["sess0000"]["closed"]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (offer_body("v=0\r\n" + "a=x\r\n" * (MAX_SDP_CHARS // 5)), 400, "invalid_offer",
         f"offer.sdp: must be at most {MAX_SDP_CHARS} characters"),
        (offer_body("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n"), 400, "invalid_offer",
         "offer.sdp: has no audio m-section"),
        (offer_body(browser_offer(extra="m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n")),
         400, "invalid_offer", "has a 'video' m-section"),
        (offer_body(browser_offer(direction="sendonly")), 400, "invalid_offer",
         "must be sendrecv"),
        (offer_body(browser_offer().replace("opus", "G722")), 400, "invalid_offer",
         "must offer Opus"),
        (offer_body(browser_offer().replace("a=mid:0\r\n", "")), 400, "invalid_offer",
         "exactly one a=mid"),
        (offer_body("hello"), 400, "invalid_offer", "must start with 'v=0'"),
        ({"offer": {"type": "answer", "sdp": browser_offer()}}, 400, "invalid_request",
         "offer.type: must be 'offer'"),
        ({"offer": {"type": "offer"}}, 400, "invalid_request", "offer.sdp: is required"),
        ({"offer": {"type": "pranswer", "sdp": "x"}}, 400, "invalid_request", "offer.type: must be one of"),
        ({}, 400, "invalid_request", "offer: is required"),
        ({"offer": {}, "extra": 1}, 400, "invalid_request", "extra: unknown field"),
        ([1], 400, "invalid_request", "body: must be a JSON object"),
    ],
)  # fmt: skip
async def test_bad_offers_are_clear_4xx(
    h: Harness, body: object, status: int, code: str, message: str
) -> None:
    response = await h.request("POST", "/v1/calls", body)
    assert response.status == status, response.body
    assert error_of(response)["code"] == code and message in error_of(response)["message"]
    assert not h.upstream.sent  # nothing reached the SFU


async def test_transport_level_refusals(h: Harness) -> None:
    wrong_type = await h.request("POST", "/v1/calls", raw=b"v=0", headers={"content-type": "application/sdp"})
    assert (
        wrong_type.status == 415
        and "content-type: must be application/json" in error_of(wrong_type)["message"]
    )
    big = await h.request("POST", "/v1/calls", raw=b"{" + b" " * MAX_BODY_BYTES + b"}")
    assert big.status == 413 and f"at most {MAX_BODY_BYTES} bytes" in error_of(big)["message"]
    broken = await h.request("POST", "/v1/calls", raw=b"{not json")
    assert broken.status == 400 and error_of(broken)["message"] == "body: is not valid UTF-8 JSON"
    method = await h.request("PUT", "/v1/calls")
    assert method.status == 405 and method.header("allow") == "POST"
    assert (await h.request("GET", "/nope")).status == 404
    unknown = await h.request("GET", "/v1/calls/call-doesnotexist")
    assert unknown.status == 404 and error_of(unknown)["code"] == "unknown_call"
    assert (await h.request("GET", "/v1/calls/bad%20id")).status == 404


async def test_token_refusals(h: Harness) -> None:
    missing = await h.request("GET", "/v1/ice-servers", token=None)
    assert missing.status == 401 and error_of(missing)["field"] == "authorization"
    scheme = await h.request("GET", "/v1/ice-servers", token=None, headers={"authorization": "Basic abc"})
    assert scheme.status == 401 and "must be 'Bearer <token>'" in error_of(scheme)["message"]
    expired, _ = tokens.issue(TOKEN_KEY.encode(), "alice", now=h.now - 3600, ttl_s=60)
    assert error_of(await h.request("GET", "/v1/ice-servers", token=expired))["code"] == "token_expired"
    forged, _ = tokens.issue(b"k" * 40, "alice", now=h.now)
    assert error_of(await h.request("GET", "/v1/ice-servers", token=forged))["code"] == "token_bad_signature"
    ice_only = h.token(scope=("ice",))
    assert (await h.request("GET", "/v1/ice-servers", token=ice_only)).status == 200
    refused = await h.request("POST", "/v1/calls", {"offer": {}}, token=ice_only)
    assert refused.status == 403 and error_of(refused)["code"] == "insufficient_scope"


async def test_calls_are_private_to_their_token_subject(h: Harness) -> None:
    created = await h.create()
    other = h.token(sub="mallory")
    for method in ("GET", "DELETE"):
        response = await h.request(method, f"/v1/calls/{created['call_id']}", token=other)
        assert response.status == 404 and error_of(response)["code"] == "unknown_call"


async def test_token_issuance(h: Harness) -> None:
    ok = await h.request("POST", "/v1/tokens", {"sub": "bob", "scope": "ice", "ttl_s": 60}, token=API_KEY)
    assert ok.status == 201
    claims = tokens.verify(TOKEN_KEY.encode(), ok.json()["token"], clock=lambda: h.now)
    assert claims.sub == "bob" and claims.scope == ("ice",) and claims.exp == int(h.now) + 60
    wrong = await h.request("POST", "/v1/tokens", {"sub": "bob"}, token="x" * 40)
    assert wrong.status == 401
    long = await h.request("POST", "/v1/tokens", {"sub": "bob", "ttl_s": 7200}, token=API_KEY)
    assert long.status == 400 and error_of(long)["message"] == "ttl_s: must be at most 3600 seconds"
    bad_sub = await h.request("POST", "/v1/tokens", {"sub": "a/b"}, token=API_KEY)
    assert bad_sub.status == 400 and error_of(bad_sub)["field"] == "sub"
    disabled = Harness({k: v for k, v in edge_env().items() if k != "API_KEY"})
    response = await disabled.request("POST", "/v1/tokens", {"sub": "bob"}, token=API_KEY)
    assert response.status == 403 and error_of(response)["code"] == "token_issuance_disabled"


@pytest.mark.parametrize(
    ("step", "failure", "status", "code"),
    [
        ("push", Inbound(400, {}, b'{"errorCode": "invalid_params", "errorDescription": "bad fingerprint"}'),
         400, "invalid_offer"),
        ("session", Inbound(401, {}, b'{"errorCode": "unauthorized"}'), 502, "sfu_unauthorized"),
        ("session", Inbound(503, {}, b"<html>oops</html>"), 502, "sfu_error"),
        ("session", Inbound(429, {"retry-after": "0"}, b"{}"), 503, "sfu_busy"),
        ("session", FetchError("dns"), 504, "sfu_unreachable"),
    ],
)  # fmt: skip
async def test_sfu_errors_mapped(
    h: Harness, step: str, failure: Inbound | Exception, status: int, code: str
) -> None:
    h.upstream.fail[step] = failure
    response = await h.request("POST", "/v1/calls", offer_body(browser_offer()))
    assert response.status == status and error_of(response)["code"] == code, response.body
    assert no_secret_in(response.body)
    if status == 503:
        assert response.header("retry-after") == "1"
    attempts = [s for s in h.upstream.steps() if s.endswith("sessions/new")]
    assert len(attempts) == (3 if step == "session" and code != "sfu_unauthorized" else 1)  # bounded retries
    assert [await obj.load() for obj in h.records.objects.values()] == [None] * len(h.records.objects)
    for session in h.upstream.sessions.values():
        assert session.get("closed"), "an SFU session of a failed setup was left open"


async def test_turn_outage_degrades_to_stun_for_calls_not_for_ice_route(h: Harness) -> None:
    h.upstream.fail["turn"] = Inbound(500, {}, b"{}")
    created = await h.create()
    assert created["ice_servers"] == [{"urls": ["stun:stun.cloudflare.com:3478"]}]
    ice = await h.request("GET", "/v1/ice-servers")
    assert ice.status == 502 and error_of(ice)["code"] == "sfu_error"


async def test_renegotiation_and_ice_restart(h: Harness) -> None:
    h.upstream.pull_renegotiates = True
    created = await h.create()
    await h.drain()
    path = f"/v1/calls/{created['call_id']}"
    state = (await h.request("GET", path)).json()
    assert state["renegotiation"]["offer"]["type"] == "offer"
    answered = await h.request("PATCH", path, {"answer": {"type": "answer", "sdp": "v=0\r\n"}})
    assert answered.status == 200 and "answer" not in answered.json()
    assert "renegotiation" not in (await h.request("GET", path)).json()
    again = await h.request("PATCH", path, {"answer": {"type": "answer", "sdp": "v=0\r\n"}})
    assert again.status == 409 and error_of(again)["code"] == "no_pending_offer"
    restart = await h.request("PATCH", path, offer_body(browser_offer()))
    assert restart.status == 200 and restart.json()["answer"]["type"] == "answer"
    bad = await h.request("PATCH", path, offer_body(browser_offer(direction="recvonly")))
    assert bad.status == 400 and error_of(bad)["code"] == "invalid_offer"
    both = await h.request("PATCH", path, {"offer": {}, "answer": {}})
    assert both.status == 400 and "exactly one of" in error_of(both)["message"]
    await h.request("DELETE", path)
    closed = await h.request("PATCH", path, offer_body(browser_offer()))
    assert closed.status == 409 and error_of(closed)["code"] == "call_closed"


async def test_rate_limits_per_ip_and_per_token() -> None:
    h = Harness()
    h.app.ip_limiter = TokenBucket(rate=0.001, burst=3, clock=lambda: h.now)
    h.app.token_limiter = TokenBucket(rate=0.001, burst=2, clock=lambda: h.now)
    token = h.token()
    statuses = [(await h.request("GET", "/v1/ice-servers", token=token)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = await h.request("GET", "/v1/ice-servers", token=h.token(sub="bob"))
    assert limited.status == 429 and error_of(limited)["message"].startswith("too many requests for this ip")
    assert limited.header("retry-after") == "10"


async def test_alarm_closes_abandoned_setup() -> None:
    h = Harness(run_background=False)  # the relay attach never runs: the call stays "created"
    created = await h.create()
    obj = h.records.objects[created["call_id"]]
    assert await run_alarm(obj, h.app.calls) == "none"  # not due yet
    h.now += 21
    assert await run_alarm(obj, h.app.calls) == "closed: abandoned: not connected within 20 s"
    assert h.upstream.sessions["sess0000"]["closed"]
    for coro in h.background:
        coro.close()


async def test_alarm_probes_connected_calls_and_enforces_max_duration(h: Harness) -> None:
    created = await h.create()
    await h.drain()
    obj = h.records.objects[created["call_id"]]
    h.now += 61
    assert await run_alarm(obj, h.app.calls) == "alive"
    h.now += 61
    h.upstream.fail["get_session"] = Inbound(503, {}, b"{}")
    assert await run_alarm(obj, h.app.calls) == "alive"  # a transient SFU error is no proof of absence
    del h.upstream.fail["get_session"]
    h.upstream.sessions["sess0000"]["tracks"].clear()
    h.now += 61
    result = await run_alarm(obj, h.app.calls)
    assert result == "closed: abandoned: the caller's mic track is gone from the SFU session"
    second = await h.create()
    await h.drain()
    h.now += 4 * 3600 + 1
    assert await run_alarm(h.records.objects[second["call_id"]], h.app.calls) == (
        "closed: maximum call duration reached (14400 s)"
    )


def test_config_errors_name_the_variable_never_the_value() -> None:
    env = edge_env()
    del env["SFU_APP_SECRET"]
    with pytest.raises(ConfigError, match="SFU_APP_SECRET: is required"):
        load_config(env)
    with pytest.raises(ConfigError, match="TOKEN_SIGNING_KEY: must be at least 32 bytes") as info:
        load_config(edge_env(TOKEN_SIGNING_KEY="short-secret"))
    assert "short-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="MAX_CALL_S: must be between"):
        load_config(edge_env(MAX_CALL_S="5"))
    with pytest.raises(ConfigError, match="SFU_API_URL"):
        load_config(edge_env(SFU_API_URL="ftp://x"))
    assert no_secret_in(repr(load_config(edge_env())))


async def test_cors_only_for_allowed_origins() -> None:
    h = Harness(dict(edge_env(), ALLOWED_ORIGINS="https://app.example.com, http://localhost:5173"))
    allowed = {"origin": "https://app.example.com"}
    preflight = await h.request("OPTIONS", "/v1/calls", token=None, headers=allowed)
    assert preflight.status == 204
    assert preflight.header("access-control-allow-origin") == "https://app.example.com"
    assert "authorization" in (preflight.header("access-control-allow-headers") or "")
    response = await h.request("GET", "/v1/ice-servers", headers=allowed)
    assert (
        response.status == 200 and response.header("access-control-allow-origin") == "https://app.example.com"
    )
    other = {"origin": "https://evil.example"}
    refused = await h.request("OPTIONS", "/v1/calls", token=None, headers=other)
    assert refused.status == 403 and "ALLOWED_ORIGINS" in refused.json()["error"]["message"]
    response = await h.request("GET", "/v1/ice-servers", headers=other)
    assert response.header("access-control-allow-origin") is None  # the browser blocks the read


def test_allowed_origins_must_be_origins() -> None:
    for bad in ("*", "https://app.example.com/path", "app.example.com"):
        with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
            load_config(dict(edge_env(), ALLOWED_ORIGINS=bad))
