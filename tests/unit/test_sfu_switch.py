"""The edge's relay-failover step on the Realtime API: build_switch_track (tracks/update) and the
parser that accepts only a switch that took effect with no renegotiation. Sans-IO, stdlib contract;
requests validated against the spec's schema. The same bytes against the emulator with real media:
tests/integration/test_emulator_media.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from splitrelay.contract.api_error import ErrorCode, SfuApiError
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.safety import Secret
from splitrelay.contract.sfu import SWITCH_NEEDS_RENEGOTIATION, UpdateTracksRequest
from splitrelay.contract.sfu_http import SfuApp, build_switch_track
from tests import spec

SECRET = "s3cr3t-not-in-bodies"
APP = SfuApp("app0123", Secret(SECRET))
CALLER = "e017a2629c754fedc1f7d8587e06d126"
RELAY_2 = "2a45361d5fd7cc14eface0587c276c94"
UPDATE = "/apps/{appId}/sessions/{sessionId}/tracks/update"


def switch(mid: str = "#mic") -> Any:
    return build_switch_track(APP, CALLER, mid=mid, to_session_id=RELAY_2, to_track_name="agent-voice")


def answer(doc: object, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(doc).encode()


def test_the_request_is_a_spec_valid_tracks_update_on_the_callers_session() -> None:
    request, _parse = switch()
    assert (request.method, request.path) == ("PUT", f"/apps/app0123/sessions/{CALLER}/tracks/update")
    assert request.body_bytes is not None
    body = json.loads(request.body_bytes)
    assert body == {
        "tracks": [{"location": "remote", "mid": "#mic", "sessionId": RELAY_2, "trackName": "agent-voice"}]
    }
    spec.validate_request("PUT", UPDATE, body)
    assert request.header_dict()["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in request.body_bytes.decode() and SECRET not in repr(request)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mid": ""}, "tracks[0].mid"),
        ({"mid": "#"}, "tracks[0].mid"),
        ({"to_session_id": ""}, "tracks[0].sessionId"),
        ({"to_track_name": ""}, "tracks[0].trackName"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, str], field: str) -> None:
    args = {"mid": "0", "to_session_id": RELAY_2, "to_track_name": "agent-voice", **kwargs}
    with pytest.raises(SchemaError) as error:
        build_switch_track(APP, CALLER, **args)
    assert error.value.field == field, error.value


def test_a_switch_that_took_effect_is_returned() -> None:
    _request, parse = switch()
    item = {"location": "remote", "mid": "0", "sessionId": RELAY_2, "trackName": "agent-voice"}
    doc = {"requiresImmediateRenegotiation": False, "tracks": [item]}
    spec.validate_response("PUT", UPDATE, 200, doc)
    response = parse(*answer(doc))
    assert [(t.mid, t.session_id, t.track_name) for t in response.tracks] == [("0", RELAY_2, "agent-voice")]
    # The spec's own example answers with only mid/sessionId/trackName: accepted when they match.
    assert parse(*answer({"tracks": [{"mid": "7", "sessionId": RELAY_2}]})).tracks[0].mid == "7"


@pytest.mark.parametrize(
    ("doc", "status", "code", "retryable", "words"),
    [
        (  # the SFU refused the item: the caller still plays the old track
            {"tracks": [{"mid": "0", "errorCode": "invalid_params", "errorDescription": "no such track"}]},
            200,
            "invalid_params",
            False,
            "tracks[0]: no such track",
        ),
        (  # accepted only with an offer the caller would have to answer
            {"requiresImmediateRenegotiation": True, "tracks": [{"mid": "0", "trackName": "agent-voice"}]},
            200,
            SWITCH_NEEDS_RENEGOTIATION,
            False,
            "requiresImmediateRenegotiation",
        ),
        ({"tracks": []}, 200, ErrorCode.INVALID_RESPONSE, False, "0 item(s) for 1 requested"),
        (
            {"tracks": [{"mid": "0", "sessionId": RELAY_2, "trackName": "other-voice"}]},
            200,
            ErrorCode.INVALID_RESPONSE,
            False,
            "tracks[0].trackName",
        ),
        (
            {"tracks": [{"mid": "0", "sessionId": CALLER, "trackName": "agent-voice"}]},
            200,
            ErrorCode.INVALID_RESPONSE,
            False,
            "tracks[0].sessionId",
        ),
        (
            {"errorCode": "not_found", "errorDescription": "no such session"},
            404,
            "not_found",
            False,
            "no such",
        ),
        ({"errorCode": "internal_error"}, 503, "internal_error", True, "HTTP 503"),
        ({"tracks": "no"}, 200, ErrorCode.INVALID_RESPONSE, False, "tracks"),
    ],
)
def test_anything_but_a_clean_switch_raises(
    doc: object, status: int, code: str, retryable: bool, words: str
) -> None:
    _request, parse = switch()
    with pytest.raises(SfuApiError) as error:
        parse(*answer(doc, status))
    assert (error.value.code, error.value.retryable) == (code, retryable), error.value
    assert words in error.value.description, error.value


def test_switch_remote_is_one_remote_item() -> None:
    request = UpdateTracksRequest.switch_remote("3", RELAY_2, "agent-voice")
    assert request.to_json() == {
        "tracks": [{"location": "remote", "mid": "3", "sessionId": RELAY_2, "trackName": "agent-voice"}]
    }
