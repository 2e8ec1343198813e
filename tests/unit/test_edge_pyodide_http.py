"""The Worker's own HTTP plumbing in its real runtime (edge/entry.py under Pyodide with the real SDK).

entry.py builds the JS Response itself and reads the JS Request directly (not through the SDK's
wrappers), and calls the Rate Limiting and Durable Object bindings directly: these cases check what
that must keep right. A 204 has no body at all, extra headers (Allow, Retry-After, CORS) arrive,
header names are matched case-insensitively, a body that is not UTF-8 JSON is refused, the rate limit
binding's answer is read, and the record's replies come back through the object's RPC.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from splitrelay.edge import tokens
from tests.edge_support import TOKEN_KEY, edge_env
from tests.emulator_fixtures import APP_ID
from tests.pyodide import host

RECORDED = Path(host.__file__).resolve().parent / "recorded_call_setup.json"
ORIGIN = "https://app.example.com"
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    workdir = tmp_path_factory.mktemp("worker-http")
    host.build_bundle(workdir / "bundle")
    env = edge_env(
        [{"id": "near", "control_url": "http://127.0.0.1:9"}],
        SFU_APP_ID=APP_ID, SFU_API_URL="http://127.0.0.1:9/v1", TURN_KEY_ID="emulator-test-turn-key",
        ALLOWED_ORIGINS=ORIGIN,
    )  # fmt: skip
    config = host.host_config(
        workdir / "bundle", env, recorded=str(RECORDED), limits={"ip": 1000, "token": 3}
    )
    async with host.worker_host(config, workdir) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
            yield client


def bearer(sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue(TOKEN_KEY.encode(), sub)[0]}"}


async def test_preflight_is_204_with_no_body_and_cors_headers(http: httpx.AsyncClient) -> None:
    response = await http.options(
        "/v1/calls", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert response.status_code == 204 and response.content == b""
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "PATCH" in response.headers["access-control-allow-methods"]
    refused = await http.options("/v1/calls", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"


async def test_extra_headers_and_json_bodies(http: httpx.AsyncClient) -> None:
    wrong_method = await http.delete("/v1/ice-servers", headers={"Origin": ORIGIN})
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    assert wrong_method.headers["access-control-allow-origin"] == ORIGIN
    assert wrong_method.headers["content-type"] == "application/json; charset=utf-8"
    not_utf8 = await http.post(
        "/v1/calls", content=b"\xff\xfe{", headers={**bearer("carol"), "Content-Type": "application/json"}
    )
    assert not_utf8.status_code == 400 and not_utf8.json()["error"]["field"] == "body"
    health = await http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


async def test_token_rate_limit_binding_is_read(http: httpx.AsyncClient) -> None:
    headers = bearer("dave")  # one token: its jti is the limit's key (3 a minute in this host)
    statuses = [(await http.get("/v1/ice-servers", headers=headers)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = await http.get("/v1/ice-servers", headers=headers)
    assert limited.headers["retry-after"] == "10" and limited.json()["error"]["code"] == "rate_limited"


async def test_ice_servers_are_shared_and_ttl_counts_down(http: httpx.AsyncClient) -> None:
    first = (await http.get("/v1/ice-servers", headers=bearer("erin"))).json()
    second = (await http.get("/v1/ice-servers", headers=bearer("frank"))).json()
    assert first["ice_servers"] == second["ice_servers"] and first["ice_servers"]
    assert 600 <= second["ttl_s"] <= first["ttl_s"] <= 900


async def test_record_replies_through_the_object(http: httpx.AsyncClient) -> None:
    recorded = json.loads(RECORDED.read_text())
    headers = bearer("grace")  # fresh tokens below: each token may make 3 requests a minute here
    created = await http.post(
        "/v1/calls", json={"offer": {"type": "offer", "sdp": recorded["offer"]}}, headers=headers
    )
    assert created.status_code == 201, created.text
    call_id = created.json()["call_id"]
    assert (await http.get("/__host/drain")).json() == {"pending": 0}
    state = await http.get(f"/v1/calls/{call_id}", headers=bearer("grace"))
    assert state.status_code == 200 and state.json()["state"] == "connected"
    other = await http.get(f"/v1/calls/{call_id}", headers=bearer("mallory"))
    assert other.status_code == 404
    closed = await http.delete(f"/v1/calls/{call_id}", headers=bearer("grace"))
    again = await http.delete(f"/v1/calls/{call_id}", headers=bearer("grace"))
    assert closed.json()["closed_now"] is True and again.json()["closed_now"] is False


async def test_hostile_json_is_a_400_and_the_isolate_lives_on(http: httpx.AsyncClient) -> None:
    """60 KB of nested brackets from a caller with a token once killed the Pyodide runtime ("Maximum call
    stack size exceeded") and every request after it; a token header nested 1,100 deep needed no token."""
    nested = await http.post(
        "/v1/calls", content=b"[" * 60_000, headers={**bearer("heidi"), "Content-Type": "application/json"}
    )
    assert nested.status_code == 400, nested.text
    assert nested.json()["error"]["message"] == "body: nests deeper than 32 levels"
    deep_header = tokens._b64encode(b"[" * 1_100 + b"]" * 1_100)  # the header part of a JWT
    forged = await http.get("/v1/ice-servers", headers={"Authorization": f"Bearer {deep_header}.e30.c2ln"})
    assert forged.status_code == 401 and "nests deeper" in forged.json()["error"]["message"]
    health = await http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
