"""The Worker in its real runtime: the wrangler bundle under Pyodide (Python 3.13) in Node with the real
``workers-runtime-sdk``, answering real Fetch API requests. Upstream calls replay the exchange recorded
from the emulator and a real relay (tests/pyodide/recorded_call_setup.json), so this needs no network;
tests/integration/test_edge_e2e.py runs the same Worker against the live emulator and relay.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from splitrelay.contract.control import call_end_path, heartbeat_path, stages_path
from splitrelay.contract.signing import sign_headers
from splitrelay.edge import tokens
from tests.edge_support import API_KEY, RELAY_KEY, TOKEN_KEY, edge_env, no_secret_in
from tests.emulator_fixtures import APP_ID
from tests.pyodide import host

RECORDED = Path(host.__file__).resolve().parent / "recorded_call_setup.json"
pytestmark = pytest.mark.asyncio(loop_scope="module")
PARIS = json.dumps(
    {"latitude": "48.85", "longitude": "2.35", "continent": "EU", "colo": "CDG", "country": "FR"}
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[host.WorkerHost, Path]]:
    workdir = tmp_path_factory.mktemp("worker")
    bundle = workdir / "bundle"
    host.build_bundle(bundle)
    env = edge_env(
        [{"id": "near", "control_url": "http://127.0.0.1:9", "latitude": 48.0, "longitude": 2.0},
         {"id": "far", "control_url": "http://127.0.0.1:9", "latitude": -33.9, "longitude": 151.2}],
        SFU_APP_ID=APP_ID, SFU_API_URL="http://127.0.0.1:9/v1",
        TURN_KEY_ID="emulator-test-turn-key",
    )  # fmt: skip
    config = host.host_config(bundle, env, recorded=str(RECORDED), limits={"ip": 1000, "token": 1000})
    async with host.worker_host(config, workdir) as running:
        yield running, workdir


@pytest_asyncio.fixture(loop_scope="module")
async def http(worker: tuple[host.WorkerHost, Path]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=worker[0].url, timeout=30) as client:
        yield client


def auth(sub: str = "alice") -> dict[str, str]:
    return {"authorization": f"Bearer {tokens.issue(TOKEN_KEY.encode(), sub)[0]}"}


async def test_runtime_and_classes(worker: tuple[host.WorkerHost, Path]) -> None:
    ready = worker[0].ready
    assert ready["pyodide"].startswith("0.28.") and ready["python"].startswith("3.13.")
    assert ready["classes"] == {
        "durable_objects": ["CallRecordObject", "RelayWatchObject"],
        "entrypoints": ["Default"],
    }
    assert "entry.py" in ready["modules"] and "relays.py" in ready["modules"]


async def test_call_setup_in_the_worker(
    http: httpx.AsyncClient, worker: tuple[host.WorkerHost, Path]
) -> None:
    recorded: dict[str, Any] = json.loads(RECORDED.read_text())
    headers = {**auth(), "x-test-cf": PARIS}
    response = await http.post(
        "/v1/calls", json={"offer": {"type": "offer", "sdp": recorded["offer"]}}, headers=headers
    )
    assert response.status_code == 201, response.text
    created = response.json()
    push = next(item for item in recorded["exchanges"] if item["key"].endswith("/tracks/new+sdp"))
    assert created["answer"] == push["body"]["sessionDescription"]
    assert created["relay"]["id"] == "near" and created["ice_servers"]
    assert (await http.get("/__host/drain")).json() == {"pending": 0}
    state = (await http.get(f"/v1/calls/{created['call_id']}", headers=headers)).json()
    assert state["state"] == "connected", state
    assert state["relay"]["reason"].startswith("chosen: near: cf latitude/longitude: nearest healthy relay")
    closed = await http.delete(f"/v1/calls/{created['call_id']}", headers=headers)
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    for body in (response.content, closed.content):
        assert no_secret_in(body)


async def test_errors_in_the_worker(http: httpx.AsyncClient, worker: tuple[host.WorkerHost, Path]) -> None:
    wrong_type = await http.post(
        "/v1/calls", content=b"v=0", headers={**auth(), "content-type": "application/sdp"}
    )
    assert wrong_type.status_code == 415 and wrong_type.json()["error"]["field"] == "content-type"
    big = await http.post(
        "/v1/calls", content=b"x" * (70 * 1024), headers={**auth(), "content-type": "application/json"}
    )
    assert big.status_code == 413
    no_audio = await http.post(
        "/v1/calls", json={"offer": {"type": "offer", "sdp": "v=0\r\ns=-\r\n"}}, headers=auth()
    )
    assert no_audio.status_code == 400 and "no audio m-section" in no_audio.json()["error"]["message"]
    forged = tokens.issue(b"f" * 40, "alice")[0]
    refused = await http.get("/v1/ice-servers", headers={"authorization": f"Bearer {forged}"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_bad_signature"
    unknown = await http.get("/v1/calls/call-000000000000", headers=auth())
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_call"
    issued = await http.post(
        "/v1/tokens", json={"sub": "bob", "ttl_s": 60}, headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert (
        issued.status_code == 201 and tokens.verify(TOKEN_KEY.encode(), issued.json()["token"]).sub == "bob"
    )
    page = await http.get("/")
    assert page.status_code == 200 and "<title>splitrelay call</title>" in page.text
    for response in (wrong_type, big, no_audio, refused, unknown, issued):
        assert no_secret_in(response.content)
    assert no_secret_in(host.host_log(worker[1]))


async def test_relay_heartbeat_and_call_end_in_the_worker(
    http: httpx.AsyncClient, worker: tuple[host.WorkerHost, Path]
) -> None:
    """The relay → edge routes and the per-relay Durable Object (RelayWatchObject) under Pyodide."""
    path = heartbeat_path("near")
    body = json.dumps({"boot_id": "boot-1", "seq": 1, "calls": [], "draining": True}).encode()
    headers = {**sign_headers(RELAY_KEY.encode(), "POST", path, body), "content-type": "application/json"}
    beat = await http.post(path, content=body, headers=headers)
    assert beat.status_code == 200, beat.text
    assert beat.json() == {"draining_seen": True, "timeout_ms": 1000, "closed": []}
    replayed = await http.post(path, content=body, headers=headers)
    assert replayed.status_code == 409 and replayed.json()["error"]["code"] == "replayed"
    end_path = call_end_path("near", "call-000000000000")
    end_body = json.dumps({"code": "agent_ended", "reason": "bye"}).encode()
    end_headers = {
        **sign_headers(RELAY_KEY.encode(), "POST", end_path, end_body),
        "content-type": "application/json",
    }
    unknown = await http.post(end_path, content=end_body, headers=end_headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_call"
    marks_path = stages_path("near", "call-000000000000")
    marks = json.dumps({"stages": [{"turn": 1, "name": "stt_final", "ms": 12.5}]}).encode()
    marks_headers = {
        **sign_headers(RELAY_KEY.encode(), "POST", marks_path, marks),
        "content-type": "application/json",
    }
    no_call = await http.post(marks_path, content=marks, headers=marks_headers)
    assert no_call.status_code == 404 and no_call.json()["error"]["code"] == "unknown_call"
    bad = json.dumps({"stages": [{"turn": 1, "name": "STT", "ms": 1}]}).encode()
    bad_headers = {
        **sign_headers(RELAY_KEY.encode(), "POST", marks_path, bad),
        "content-type": "application/json",
    }
    refused = await http.post(marks_path, content=bad, headers=bad_headers)
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "stages[0].name"
    undrain = json.dumps({"boot_id": "boot-1", "seq": 2, "calls": [], "draining": False}).encode()
    headers = {**sign_headers(RELAY_KEY.encode(), "POST", path, undrain), "content-type": "application/json"}
    assert (await http.post(path, content=undrain, headers=headers)).json()["draining_seen"] is False
    assert no_secret_in(host.host_log(worker[1]))
