"""tracks/update's bad input, in-process (ASGI): every failure in the spec's shape, never a 5xx.

A failure of one item (unknown mid, unknown session or track, a local track, simulcast, a mid that does
not send) is an ``errorCode`` on that item of a 200, as tracks/new reports its items; a body that does not
decode, or breaks a rule of the request (no mid), is a 400. Request bodies are checked against the spec's
UpdateTracksRequest schema (so a 400 is never given to a request the spec allows, except where the
emulator says why), responses by SpecCheck. Nothing a failed update names changes the session's tracks.
The successful switch with real media is in test_emulator_media.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import pytest

from splitrelay.emulator.config import Timers
from splitrelay.emulator.emulator import Emulator
from splitrelay.emulator.http_api import create_app
from splitrelay.emulator.turn import TurnService
from tests import spec
from tests.emulator_fixtures import APP_ID, APP_SECRET, SpecCheck, emulator_config
from tests.integration.test_emulator_conformance import _client_offer

pytestmark = pytest.mark.integration

BASE = "http://emulator.test/v1"
AUTH = {"Authorization": f"Bearer {APP_SECRET}"}
UPDATE = "/apps/{appId}/sessions/{sessionId}/tracks/update"


@dataclass
class Api:
    emulator: Emulator
    http: httpx.AsyncClient
    check: SpecCheck
    publisher: str
    """Publishes "mic" on its mid "0" (a recvonly transceiver at the SFU: it does not send)."""
    caller: str
    """A session with no transceiver."""
    offer: str

    async def update(self, session_id: str, body: Any, *, raw: bytes | None = None) -> httpx.Response:
        url = f"/apps/{APP_ID}/sessions/{session_id}/tracks/update"
        if raw is not None:
            return await self.http.put(url, headers=AUTH, content=raw)
        return await self.http.put(url, headers=AUTH, json=body)

    async def tracks(self, session_id: str) -> Any:
        return (
            (await self.http.get(f"/apps/{APP_ID}/sessions/{session_id}", headers=AUTH))
            .json()
            .get("tracks", [])
        )


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    config = emulator_config(Timers(connect_wait=0.1))
    emulator = Emulator(config)
    app = create_app(emulator, TurnService(config, lambda: ("stun:127.0.0.1:3478",)))
    check = SpecCheck()
    http = check.client(transport=httpx.ASGITransport(app=app), base_url=BASE)
    try:
        offer = await _client_offer()
        publisher = (await http.post(f"/apps/{APP_ID}/sessions/new", headers=AUTH)).json()["sessionId"]
        pushed = await http.post(
            f"/apps/{APP_ID}/sessions/{publisher}/tracks/new",
            headers=AUTH,
            json={
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [{"location": "local", "mid": "0", "trackName": "mic"}],
            },
        )
        assert pushed.status_code == 200 and "errorCode" not in pushed.json()["tracks"][0]
        caller = (await http.post(f"/apps/{APP_ID}/sessions/new", headers=AUTH)).json()["sessionId"]
        yield Api(emulator, http, check, publisher, caller, offer)
    finally:
        await http.aclose()
        await emulator.close()
    assert check.checked > 0


def remote(session_id: str, track_name: str = "mic", mid: str = "0", **extra: Any) -> dict[str, Any]:
    return {"location": "remote", "sessionId": session_id, "trackName": track_name, "mid": mid, **extra}


# (case, target session, body given the publisher's id, words the item's errorDescription must hold)
ITEM_FAILURES: list[tuple[str, str, Any, str]] = [
    ("unknown mid", "caller", lambda p: remote(p, mid="7"), "mid '7': no such transceiver"),
    ("unknown #trackName", "caller", lambda p: remote(p, mid="#nothing"), "trackName 'nothing'"),
    ("unknown session", "caller", lambda _p: remote("0" * 32), "sessionId: the publishing session does not"),
    (
        "unknown track",
        "caller",
        lambda p: remote(p, track_name="nope"),
        "trackName: the session publishes no",
    ),
    ("a local track", "caller", lambda _p: {"location": "local", "trackName": "mic", "mid": "0"}, "location"),
    ("simulcast", "caller", lambda p: remote(p, simulcast={"preferredRid": "h"}), "simulcast"),
    ("a mid that does not send", "publisher", lambda p: remote(p), "mid '0' does not send"),
]


@pytest.mark.parametrize(
    ("case", "target", "track", "words"), ITEM_FAILURES, ids=[c[0] for c in ITEM_FAILURES]
)
async def test_a_bad_item_is_an_item_error_in_a_200(
    api: Api, case: str, target: str, track: Any, words: str
) -> None:
    session_id = api.caller if target == "caller" else api.publisher
    before = await api.tracks(session_id)
    body = {"tracks": [track(api.publisher)]}
    spec.validate_request(
        "PUT", UPDATE, body
    )  # the spec allows it: the failure is the item's, not the body's
    response = await api.update(session_id, body)
    assert response.status_code == 200, (case, response.text)
    doc = response.json()
    assert doc["requiresImmediateRenegotiation"] is False
    (item,) = doc["tracks"]
    assert item["errorCode"] == "invalid_params" and words in item["errorDescription"], item
    assert {k: item[k] for k in ("mid", "trackName")} == {
        k: body["tracks"][0][k] for k in ("mid", "trackName")
    }
    assert await api.tracks(session_id) == before


async def test_one_bad_item_does_not_fail_the_others_positions(api: Api) -> None:
    body = {"tracks": [remote(api.publisher, mid="7"), remote("0" * 32, mid="8")]}
    response = await api.update(api.caller, body)
    assert response.status_code == 200
    items = response.json()["tracks"]
    assert [(t["mid"], t["errorCode"]) for t in items] == [("7", "invalid_params"), ("8", "invalid_params")]


# (case, body or raw bytes, status, errorCode, words in errorDescription, does the spec's schema refuse it)
REQUEST_FAILURES: list[tuple[str, Any, int, str, str, bool]] = [
    ("malformed JSON", b'{"tracks": [', 400, "decoding_error", "JSON", False),
    ("empty body", b"", 400, "decoding_error", "body", False),
    ("an array", [1], 400, "decoding_error", "expected an object", True),
    ("tracks not a list", {"tracks": {"mid": "0"}}, 400, "decoding_error", "tracks", True),
    (
        "mid a number",
        {"tracks": [{"location": "remote", "mid": 7}]},
        400,
        "decoding_error",
        "tracks[0].mid",
        True,
    ),
    (
        "location unknown",
        {"tracks": [{"location": "away", "mid": "0"}]},
        400,
        "invalid_params",
        "location",
        True,
    ),
    ("no tracks", {"tracks": []}, 400, "invalid_params", "tracks: must list at least 1", False),
    (
        "no mid",
        {"tracks": [{"location": "remote", "sessionId": "a", "trackName": "b"}]},
        400,
        "invalid_params",
        "tracks[0].mid: is required",
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "code", "words", "schema_refuses"),
    REQUEST_FAILURES,
    ids=[c[0] for c in REQUEST_FAILURES],
)
async def test_a_bad_body_is_a_400_naming_the_field(
    api: Api, case: str, body: Any, status: int, code: str, words: str, schema_refuses: bool
) -> None:
    if not isinstance(body, bytes):
        if schema_refuses:
            with pytest.raises(jsonschema.ValidationError):
                spec.validate_request("PUT", UPDATE, body)
        else:
            spec.validate_request("PUT", UPDATE, body)  # open in the spec: the emulator's rule, named
    response = (
        await api.update(api.caller, None, raw=body)
        if isinstance(body, bytes)
        else await api.update(api.caller, body)
    )
    assert (response.status_code, response.json()["errorCode"]) == (status, code), (case, response.text)
    assert words in response.json()["errorDescription"], response.text


async def test_an_update_with_sdp_is_refused_as_not_emulated(api: Api) -> None:
    body = {"sessionDescription": {"type": "offer", "sdp": api.offer}, "tracks": [remote(api.publisher)]}
    spec.validate_request("PUT", UPDATE, body)
    response = await api.update(api.caller, body)
    assert (response.status_code, response.json()["errorCode"]) == (400, "not_emulated")
    assert "sessionDescription" in response.json()["errorDescription"]


async def test_unknown_session_wrong_secret_and_ended_session(api: Api) -> None:
    body = {"tracks": [remote(api.publisher)]}
    unknown = await api.update("f" * 32, body)
    assert (unknown.status_code, unknown.json()["errorCode"]) == (404, "not_found")
    wrong = await api.http.put(
        f"/apps/{APP_ID}/sessions/{api.caller}/tracks/update",
        headers={"Authorization": "Bearer not-the-secret"},
        json=body,
    )
    assert wrong.status_code == 401 and "not-the-secret" not in wrong.text
    await api.emulator.end_session(api.emulator.sessions[api.publisher])
    ended = await api.update(api.caller, body)
    assert ended.status_code == 200
    assert "has ended" in ended.json()["tracks"][0]["errorDescription"]
