"""The emulator's HTTP API in-process (ASGI, no sockets): auth, bad input, error shapes, TURN, limits.

Requests go through relay/sfu_client.py where it can express them, raw httpx where it cannot
(malformed JSON, wrong types); every response is validated against the spec by SpecCheck.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from splitrelay.contract.api_error import SfuApiError
from splitrelay.contract.retry import RetryPolicy
from splitrelay.contract.sfu import SessionDescription, TrackObject, TracksRequest
from splitrelay.emulator.emulator import Emulator
from splitrelay.emulator.http_api import STATE_PATH, create_app
from splitrelay.emulator.turn import TurnService
from splitrelay.relay.sfu_client import SfuClient, TurnClient
from tests.emulator_fixtures import (
    APP_ID,
    APP_SECRET,
    TURN_KEY_ID,
    TURN_TOKEN,
    SpecCheck,
    emulator_config,
)

BASE = "http://emulator.test/v1"
STUN_URL = "stun:127.0.0.1:3478"
VIDEO_ONLY_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
    "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n"
    "a=setup:actpass\r\na=rtpmap:96 VP8/90000\r\n"
)


@dataclass
class Api:
    emulator: Emulator
    http: httpx.AsyncClient
    sfu: SfuClient
    check: SpecCheck

    def auth(self, secret: str = APP_SECRET) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    async def session(self) -> str:
        return (await self.sfu.new_session()).session_id


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    config = emulator_config()
    emulator = Emulator(config)
    app = create_app(emulator, TurnService(config, lambda: (STUN_URL,)))
    check = SpecCheck()
    http = check.client(transport=httpx.ASGITransport(app=app), base_url=BASE)
    sfu = SfuClient(BASE, APP_ID, APP_SECRET, http=http, retry=RetryPolicy(max_attempts=1))
    try:
        yield Api(emulator, http, sfu, check)
    finally:
        await http.aclose()
        await emulator.close()
    assert check.checked > 0


async def test_new_session_and_empty_state(api: Api) -> None:
    response = await api.http.post(
        f"{BASE}/apps/{APP_ID}/sessions/new?thirdparty=true&correlationId=call-42", headers=api.auth()
    )
    assert response.status_code == 201
    session_id = response.json()["sessionId"]
    assert len(session_id) == 32 and int(session_id, 16) >= 0
    assert api.emulator.sessions[session_id].thirdparty
    state = await api.sfu.get_session(session_id)
    assert state.tracks == ()


@pytest.mark.parametrize(
    ("app_id", "header"),
    [
        (APP_ID, {"Authorization": "Bearer wrong-secret"}),
        (APP_ID, {}),
        (APP_ID, {"Authorization": f"Basic {APP_SECRET}"}),
        ("another-app", {"Authorization": f"Bearer {APP_SECRET}"}),
    ],
)
async def test_wrong_or_missing_secret_is_401_without_echoing_it(
    api: Api, app_id: str, header: dict[str, str]
) -> None:
    response = await api.http.post(f"{BASE}/apps/{app_id}/sessions/new", headers=header)
    assert response.status_code == 401
    assert response.json()["errorCode"] == "unauthorized"
    assert APP_SECRET not in response.text and "wrong-secret" not in response.text


async def test_wrong_secret_through_our_client(api: Api) -> None:
    wrong = SfuClient(BASE, APP_ID, "not-the-secret", http=api.http, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(SfuApiError) as error:
        await wrong.new_session()
    assert (error.value.status, error.value.code) == (401, "unauthorized")


async def test_malformed_json_is_a_decoding_error(api: Api) -> None:
    session_id = await api.session()
    for body in (b"{not json", b"\xff\xfe", b"[1, 2", b"NaN", b"[" * 60_000, b'{"a": 1e309}'):
        response = await api.http.post(
            f"{BASE}/apps/{APP_ID}/sessions/{session_id}/tracks/new", content=body, headers=api.auth()
        )
        assert response.status_code == 400, body
        assert response.json()["errorCode"] == "decoding_error"


@pytest.mark.parametrize(
    ("doc", "code", "field"),
    [
        ({"tracks": "mic"}, "decoding_error", "tracks"),
        ({"tracks": [{"location": "local", "trackName": 5}]}, "decoding_error", "tracks[0].trackName"),
        ({"tracks": [{"location": "up", "trackName": "a"}]}, "invalid_params", "tracks[0].location"),
        ({"tracks": [{"location": "local", "trackName": "a"}]}, "invalid_params", "tracks[0].kind"),
        ({"tracks": []}, "invalid_params", "tracks"),
        (
            {"tracks": [{"location": "remote", "trackName": "a", "sessionId": "x"}] * 65},
            "invalid_params",
            "at most 64 tracks per call",
        ),
    ],
)
async def test_bad_track_requests_name_the_field(api: Api, doc: object, code: str, field: str) -> None:
    session_id = await api.session()
    response = await api.http.post(
        f"{BASE}/apps/{APP_ID}/sessions/{session_id}/tracks/new", json=doc, headers=api.auth()
    )
    assert response.status_code == 400
    assert response.json()["errorCode"] == code
    assert field in response.json()["errorDescription"]


async def test_sdp_without_audio_is_refused_and_changes_nothing(api: Api) -> None:
    session_id = await api.session()
    request = TracksRequest(
        tracks=(TrackObject.local("cam", mid="0"),),
        session_description=SessionDescription.offer(VIDEO_ONLY_OFFER),
    )
    with pytest.raises(SfuApiError) as error:
        await api.sfu.new_tracks(session_id, request)
    assert (error.value.status, error.value.code) == (400, "invalid_params")
    assert "sessionDescription.sdp" in error.value.description and "audio only" in error.value.description
    garbage = TracksRequest(
        tracks=(TrackObject.local("mic", mid="0"),), session_description=SessionDescription.offer("hello")
    )
    with pytest.raises(SfuApiError, match=r"sessionDescription\.sdp"):
        await api.sfu.new_tracks(session_id, garbage)
    assert (await api.sfu.get_session(session_id)).tracks == ()


async def test_unknown_session_is_404_in_the_spec_shape(api: Api) -> None:
    with pytest.raises(SfuApiError) as error:
        await api.sfu.get_session("f" * 32)
    assert (error.value.status, error.value.code) == (404, "not_found")


async def test_pulling_what_does_not_exist_is_an_item_error_in_a_200(api: Api) -> None:
    session_id = await api.session()
    other = await api.session()
    response = await api.sfu.new_tracks(
        session_id,
        TracksRequest(
            tracks=(
                TrackObject.remote("0" * 32, "mic"),
                TrackObject.remote(other, "mic"),
            )
        ),
    )
    assert [t.error_code for t in response.tracks] == ["invalid_params", "invalid_params"]
    assert "does not exist" in (response.tracks[0].error_description or "")
    assert "no active track" in (response.tracks[1].error_description or "")
    assert response.session_description is None and response.requires_immediate_renegotiation is False


async def test_unknown_paths_methods_and_big_bodies_keep_the_error_shape(api: Api) -> None:
    missing = await api.http.get(f"{BASE}/apps/{APP_ID}/nothing/here", headers=api.auth())
    assert missing.status_code == 404 and missing.json()["errorCode"] == "not_found"
    wrong_method = await api.http.delete(f"{BASE}/apps/{APP_ID}/sessions/new", headers=api.auth())
    assert wrong_method.status_code == 405 and "errorCode" in wrong_method.json()
    session_id = await api.session()
    huge = await api.http.put(
        f"{BASE}/apps/{APP_ID}/sessions/{session_id}/renegotiate",
        content=b" " * (2 << 20),
        headers=api.auth(),
    )
    assert huge.status_code == 413 and huge.json()["errorCode"] == "payload_too_large"
    channels = await api.http.post(
        f"{BASE}/apps/{APP_ID}/sessions/{session_id}/datachannels/new", json={}, headers=api.auth()
    )
    assert channels.status_code == 501 and channels.json()["errorCode"] == "not_emulated"
    flag = await api.http.post(f"{BASE}/apps/{APP_ID}/sessions/new?thirdparty=yes", headers=api.auth())
    assert flag.status_code == 400 and "thirdparty" in flag.json()["errorDescription"]


async def test_renegotiate_and_close_without_a_negotiation(api: Api) -> None:
    session_id = await api.session()
    with pytest.raises(SfuApiError, match="nothing to renegotiate"):
        await api.sfu.renegotiate(session_id, SessionDescription.answer("v=0\r\n"))
    response = await api.http.put(
        f"{BASE}/apps/{APP_ID}/sessions/{session_id}/tracks/close",
        json={"tracks": [{"mid": "3"}], "force": True},
        headers=api.auth(),
    )
    assert response.status_code == 200
    assert response.json() == {
        "requiresImmediateRenegotiation": False,
        "tracks": [
            {
                "mid": "3",
                "errorCode": "close_track_error",
                "errorDescription": "Track doesn't exist or was already closed",
            }
        ],
    }


async def test_turn_credentials_point_at_the_emulators_stun(api: Api) -> None:
    turn = TurnClient(BASE, TURN_KEY_ID, TURN_TOKEN, http=api.http, retry=RetryPolicy(max_attempts=1))
    servers = await turn.generate_ice_servers(3600)
    (server,) = servers.ice_servers
    assert server.urls == (STUN_URL,)
    assert server.username is not None and len(server.username) == 96
    assert server.credential is not None and len(server.credential) == 96
    await turn.revoke(server.username)
    with pytest.raises(SfuApiError) as again:
        await turn.revoke(server.username)
    assert again.value.status == 404
    bad_ttl = await api.http.post(
        f"{BASE}/turn/keys/{TURN_KEY_ID}/credentials/generate-ice-servers",
        json={"ttl": 172_801},
        headers={"Authorization": f"Bearer {TURN_TOKEN}"},
    )
    assert bad_ttl.status_code == 400 and "ttl" in bad_ttl.json()["errorDescription"]
    wrong = TurnClient(BASE, TURN_KEY_ID, "nope", http=api.http, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(SfuApiError) as denied:
        await wrong.generate_ice_servers(60)
    assert denied.value.status == 401


async def test_state_endpoint_needs_an_app_secret(api: Api) -> None:
    assert (await api.http.get(f"http://emulator.test{STATE_PATH}")).status_code == 401
    response = await api.http.get(f"http://emulator.test{STATE_PATH}", headers=api.auth())
    assert response.status_code == 200
    doc = response.json()
    assert doc["state"]["sessions"] == 0
    assert doc["forwarding"]["dwell_p50_ms"] is None
    assert json.dumps(doc)
