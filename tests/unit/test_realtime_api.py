"""edge/contract/realtime_api.py: request building, model validation, response parsing, errors and secrets."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from splitrelay.contract.api_error import ErrorCode, SfuApiError, is_retryable_status
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.safety import Secret
from splitrelay.contract.sfu import (
    MAX_TRACKS_PER_CALL,
    CloseTracksRequest,
    CloseTracksResponse,
    ErrorResponse,
    GetSessionStateResponse,
    Location,
    NewSessionRequest,
    NewSessionResponse,
    RenegotiateRequest,
    ResourceStatus,
    SdpType,
    SessionDescription,
    Simulcast,
    SimulcastPolicy,
    TrackObject,
    TrackResult,
    TracksRequest,
    TracksResponse,
    UpdateTracksRequest,
    mid_for_track,
)
from splitrelay.contract.sfu_http import (
    MAX_BODY_BYTES,
    HttpRequest,
    SfuApp,
    build_close_tracks,
    build_get_session,
    build_new_session,
    build_new_tracks,
    build_renegotiate,
    build_update_tracks,
    error_from_response,
    parse_close_tracks,
    parse_get_session,
    parse_new_session,
    parse_new_tracks,
    parse_renegotiate,
    parse_update_tracks,
)

SECRET = "appsecret-DO-NOT-LEAK-5f0c9e1d"
APP = SfuApp("app0123", Secret(SECRET))
SESSION = "e017a2629c754fedc1f7d8587e06d126"
OFFER = SessionDescription.offer("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n")
ANSWER = SessionDescription.answer("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n")


def body_of(request: HttpRequest) -> Any:
    assert request.body_bytes is not None
    return json.loads(request.body_bytes)


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


def schema_error(excinfo: pytest.ExceptionInfo[SchemaError]) -> tuple[str, str]:
    return excinfo.value.field, excinfo.value.message


# --- building requests ------------------------------------------------------------------------------


def test_new_session_without_offer_sends_no_body_and_spec_query() -> None:
    request = build_new_session(APP, thirdparty=True, correlation_id="call 7&x")
    assert request.method == "POST"
    assert request.path == "/apps/app0123/sessions/new"
    assert request.query == (("thirdparty", "true"), ("correlationId", "call 7&x"))
    assert request.body_bytes is None
    assert "Content-Type" not in request.header_dict()
    assert request.url() == (
        "https://rtc.live.cloudflare.com/v1/apps/app0123/sessions/new?thirdparty=true&correlationId=call+7%26x"
    )


def test_new_session_with_offer_carries_it() -> None:
    request = build_new_session(APP, request=NewSessionRequest(session_description=OFFER))
    assert body_of(request) == {"sessionDescription": {"sdp": OFFER.sdp, "type": "offer"}}
    assert request.header_dict()["Content-Type"] == "application/json"
    assert build_new_session(APP, thirdparty=False).query == (("thirdparty", "false"),)


def test_push_local_track_with_offer() -> None:
    request = build_new_tracks(
        APP,
        SESSION,
        TracksRequest(
            session_description=OFFER,
            tracks=(TrackObject.local("mic", mid="0", bidirectional_media_stream=True),),
        ),
    )
    assert (request.method, request.path) == ("POST", f"/apps/app0123/sessions/{SESSION}/tracks/new")
    assert body_of(request) == {
        "sessionDescription": {"sdp": OFFER.sdp, "type": "offer"},
        "tracks": [{"location": "local", "mid": "0", "trackName": "mic", "bidirectionalMediaStream": True}],
    }


def test_pull_remote_track_into_existing_transceiver_by_track_name() -> None:
    track = TrackObject.remote("relaysession", "relay-out", mid=mid_for_track("mic"), kind="audio")
    request = build_new_tracks(APP, SESSION, TracksRequest(tracks=(track,)))
    assert body_of(request) == {
        "tracks": [
            {
                "location": "remote",
                "mid": "#mic",
                "sessionId": "relaysession",
                "trackName": "relay-out",
                "kind": "audio",
            }
        ]
    }


def test_other_operations_use_spec_methods_and_paths() -> None:
    base = f"/apps/app0123/sessions/{SESSION}"
    renegotiate = build_renegotiate(APP, SESSION, RenegotiateRequest(session_description=ANSWER))
    assert (renegotiate.method, renegotiate.path) == ("PUT", f"{base}/renegotiate")
    assert body_of(renegotiate) == {"sessionDescription": {"sdp": ANSWER.sdp, "type": "answer"}}

    close = build_close_tracks(APP, SESSION, CloseTracksRequest.for_mids(["0", "1"], force=True))
    assert (close.method, close.path) == ("PUT", f"{base}/tracks/close")
    assert body_of(close) == {"tracks": [{"mid": "0"}, {"mid": "1"}], "force": True}

    update = build_update_tracks(
        APP, SESSION, UpdateTracksRequest(tracks=(TrackObject.remote("other", "t2", mid="7"),))
    )
    assert (update.method, update.path) == ("PUT", f"{base}/tracks/update")
    assert body_of(update) == {
        "tracks": [{"location": "remote", "mid": "7", "sessionId": "other", "trackName": "t2"}]
    }

    get = build_get_session(APP, SESSION)
    assert (get.method, get.path, get.body_bytes) == ("GET", base, None)


def test_ids_in_the_path_are_checked_and_encoded() -> None:
    assert build_get_session(APP, "a:b").path == "/apps/app0123/sessions/a%3Ab"
    for bad, message in [
        ("", "1 to 256"),
        ("x" * 257, "1 to 256"),
        ("../other", "'/'"),
        ("a?b", "'?'"),
        ("a b", "whitespace"),
        ("a%2F", "'%'"),
    ]:
        with pytest.raises(SchemaError) as excinfo:
            build_get_session(APP, bad)
        assert excinfo.value.field == "session_id"
        assert message in excinfo.value.message
    with pytest.raises(SchemaError) as excinfo:
        SfuApp("app/1", Secret(SECRET))
    assert excinfo.value.field == "app_id"


@pytest.mark.parametrize(
    ("request_", "field", "needle"),
    [
        (
            TracksRequest(tracks=(TrackObject(location=Location.REMOTE, track_name="t"),)),
            "tracks[0].sessionId",
            "required",
        ),
        (
            TracksRequest(tracks=(TrackObject(location=Location.REMOTE, session_id="s"),)),
            "tracks[0].trackName",
            "required",
        ),
        (
            TracksRequest(tracks=(TrackObject(track_name="t", session_id="s"),)),
            "tracks[0].location",
            "required",
        ),
        (
            TracksRequest(session_description=OFFER, tracks=(TrackObject.local("mic"),)),
            "tracks[0].mid",
            "offer",
        ),
        (TracksRequest(tracks=(TrackObject.local("mic"),)), "tracks[0].kind", "SFU generates the offer"),
        (
            TracksRequest(
                tracks=(TrackObject(location=Location.LOCAL, track_name="t", session_id="s", kind="audio"),)
            ),
            "tracks[0].sessionId",
            "local",
        ),
        (TracksRequest(tracks=(TrackObject.remote("s", "t", mid="#"),)), "tracks[0].mid", "'#'"),
        (TracksRequest(tracks=(TrackObject.remote("s", "t", mid=""),)), "tracks[0].mid", "empty"),
        (TracksRequest(tracks=(TrackObject.remote("", "t"),)), "tracks[0].sessionId", "empty"),
        (TracksRequest(), "tracks", "at least 1"),
        (TracksRequest(auto_discover=True), "sessionDescription", "autoDiscover"),
        (
            TracksRequest(session_description=ANSWER, tracks=(TrackObject.local("mic", mid="0"),)),
            "sessionDescription.type",
            "'offer'",
        ),
        (
            TracksRequest(
                tracks=tuple(TrackObject.remote("s", f"t{i}") for i in range(MAX_TRACKS_PER_CALL + 1))
            ),
            "tracks",
            "at most 64",
        ),
    ],
)
def test_bad_tracks_requests_name_the_field(request_: TracksRequest, field: str, needle: str) -> None:
    with pytest.raises(SchemaError) as excinfo:
        build_new_tracks(APP, SESSION, request_)
    assert excinfo.value.field == field
    assert needle in excinfo.value.message
    assert str(excinfo.value).startswith(f"{field}: ")


def test_exactly_64_tracks_is_allowed() -> None:
    tracks = tuple(TrackObject.remote("s", f"t{i}") for i in range(MAX_TRACKS_PER_CALL))
    assert len(body_of(build_new_tracks(APP, SESSION, TracksRequest(tracks=tracks)))["tracks"]) == 64


def test_bad_close_update_renegotiate_and_session_requests() -> None:
    cases: list[tuple[Any, str, str]] = [
        (
            lambda: build_close_tracks(APP, SESSION, CloseTracksRequest(tracks=(), force=True)),
            "tracks",
            "at least 1",
        ),
        (
            lambda: build_close_tracks(APP, SESSION, CloseTracksRequest.for_mids(["0"], force=False)),
            "sessionDescription",
            "force is false",
        ),
        (
            lambda: build_close_tracks(
                APP, SESSION, CloseTracksRequest.for_mids(["0"], force=False, session_description=ANSWER)
            ),
            "sessionDescription.type",
            "'offer'",
        ),
        (
            lambda: build_close_tracks(APP, SESSION, CloseTracksRequest.for_mids([""], force=True)),
            "tracks[0].mid",
            "empty",
        ),
        (
            lambda: build_update_tracks(
                APP, SESSION, UpdateTracksRequest(tracks=(TrackObject.remote("s", "t"),))
            ),
            "tracks[0].mid",
            "required",
        ),
        (
            lambda: build_renegotiate(
                APP, SESSION, RenegotiateRequest(session_description=SessionDescription.answer(""))
            ),
            "sessionDescription.sdp",
            "empty",
        ),
        (lambda: build_new_session(APP, correlation_id="x" * 257), "correlationId", "at most 256"),
        (lambda: build_new_session(APP, correlation_id=""), "correlationId", "empty"),
        (lambda: build_new_session(APP, correlation_id="a\nb"), "correlationId", "printable"),
        (lambda: build_new_session(APP, thirdparty="yes"), "thirdparty", "boolean"),  # type: ignore[arg-type]
    ]
    for make, field, needle in cases:
        with pytest.raises(SchemaError) as excinfo:
            make()
        assert (excinfo.value.field, needle in excinfo.value.message) == (field, True), str(excinfo.value)


def test_request_models_round_trip_and_validate_on_from_json() -> None:
    request = TracksRequest(
        tracks=(
            TrackObject.remote(
                "s1",
                "video",
                mid="5",
                simulcast=Simulcast(preferred_rid="h", priority_ordering=SimulcastPolicy.ASCIIBETICAL),
            ),
        )
    )
    assert TracksRequest.from_json(request.to_json()) == request
    with pytest.raises(SchemaError) as excinfo:
        TracksRequest.from_json({"tracks": [{"location": "remote", "trackName": "t"}]})
    assert excinfo.value.field == "tracks[0].sessionId"
    with pytest.raises(SchemaError) as excinfo:
        CloseTracksRequest.from_json({"tracks": [{"mid": "1"}]})
    assert excinfo.value.field == "force"
    with pytest.raises(SchemaError) as excinfo:
        RenegotiateRequest.from_json({})
    assert excinfo.value.field == "sessionDescription"


# --- parsing responses -----------------------------------------------------------------------------


def test_parse_new_session() -> None:
    assert parse_new_session(201, raw({"sessionId": SESSION})) == NewSessionResponse(session_id=SESSION)
    parsed = parse_new_session(201, raw({"sessionId": SESSION, "sessionDescription": ANSWER.to_json()}))
    assert parsed.session_description == ANSWER


def test_parse_tracks_response_with_item_errors() -> None:
    body = {
        "requiresImmediateRenegotiation": True,
        "sessionDescription": {"type": "offer", "sdp": "v=0"},
        "tracks": [
            {"mid": "1", "sessionId": "s", "trackName": "ok"},
            {"sessionId": "s", "trackName": "gone", "errorCode": "not_found", "errorDescription": "no track"},
        ],
    }
    parsed = parse_new_tracks(200, raw(body))
    assert parsed.requires_immediate_renegotiation is True
    assert parsed.session_description == SessionDescription.offer("v=0")
    assert [track.ok for track in parsed.tracks] == [True, False]
    assert parsed.failed == (
        TrackResult(session_id="s", track_name="gone", error_code="not_found", error_description="no track"),
    )
    with pytest.raises(SfuApiError) as excinfo:
        parsed.raise_for_item_errors()
    assert (excinfo.value.status, excinfo.value.code, excinfo.value.retryable) == (200, "not_found", False)
    assert "tracks[1]: no track" in excinfo.value.description
    assert parsed.to_json() == body
    TracksResponse(tracks=parsed.tracks[:1]).raise_for_item_errors()  # no failures: no error


def test_close_response_treats_already_closed_as_done() -> None:
    body = {
        "requiresImmediateRenegotiation": False,
        "tracks": [
            {"mid": "0"},
            {"mid": "1", "errorCode": "close_track_error", "errorDescription": "already closed"},
            {"mid": "2", "errorCode": "internal_error", "errorDescription": "Backend error"},
        ],
    }
    parsed = parse_close_tracks(200, raw(body))
    assert [track.mid for track in parsed.failed] == ["2"]
    with pytest.raises(SfuApiError) as excinfo:
        parsed.raise_for_item_errors()
    assert excinfo.value.code == ErrorCode.INTERNAL_ERROR
    assert excinfo.value.description == "tracks[2]: Backend error"
    CloseTracksResponse(tracks=parsed.tracks[:2]).raise_for_item_errors()


def test_parse_get_session_and_update_and_renegotiate() -> None:
    state = parse_get_session(
        200,
        raw(
            {
                "tracks": [{"location": "local", "mid": "2", "trackName": "mic", "status": "active"}],
                "dataChannels": [
                    {
                        "location": "remote",
                        "sessionId": "s",
                        "dataChannelName": "c",
                        "id": 2,
                        "status": "inactive",
                    }
                ],
            }
        ),
    )
    assert state.tracks[0].status is ResourceStatus.ACTIVE
    assert state.tracks[0].location is Location.LOCAL
    assert state.data_channels[0].id == 2
    assert parse_get_session(200, b"{}") == GetSessionStateResponse()
    update = parse_update_tracks(
        200, raw({"requiresImmediateRenegotiation": False, "tracks": [{"mid": "7"}]})
    )
    assert update.tracks[0].mid == "7" and update.failed == ()
    assert parse_renegotiate(200, b"").session_description is None
    assert parse_renegotiate(200, raw({"sessionDescription": ANSWER.to_json()})).session_description == ANSWER


@pytest.mark.parametrize(
    ("doc", "field", "needle"),
    [
        ([], "body", "expected an object, got array"),
        ({"tracks": [{"mid": 4}]}, "tracks[0].mid", "expected string, got number"),
        ({"tracks": {"mid": "4"}}, "tracks", "expected array, got object"),
        ({"tracks": ["x"]}, "tracks[0]", "expected an object, got string"),
        ({"requiresImmediateRenegotiation": "yes"}, "requiresImmediateRenegotiation", "expected boolean"),
        (
            {"sessionDescription": {"sdp": "v=0", "type": "pranswer"}},
            "sessionDescription.type",
            "one of 'offer'",
        ),
        ({"sessionDescription": {"type": "offer"}}, "sessionDescription.sdp", "is required"),
        ({"tracks": [{"location": "elsewhere"}]}, "tracks[0].location", "one of"),
        (
            {"tracks": [{"simulcast": {"priorityOrdering": 1}}]},
            "tracks[0].simulcast.priorityOrdering",
            "string",
        ),
        ({"tracks": [{"bidirectionalMediaStream": 1}]}, "tracks[0].bidirectionalMediaStream", "got number"),
        ({"tracks": [{"mid": None}]}, "tracks[0].mid", "got null"),
    ],
)
def test_malformed_tracks_response_names_the_field(doc: object, field: str, needle: str) -> None:
    with pytest.raises(SchemaError) as excinfo:
        TracksResponse.from_json(doc)
    assert excinfo.value.field == field
    assert needle in excinfo.value.message
    with pytest.raises(SfuApiError) as api_error:
        parse_new_tracks(200, raw(doc))
    assert api_error.value.code == ErrorCode.INVALID_RESPONSE
    assert field in api_error.value.description
    assert api_error.value.retryable is False


def test_integer_fields_reject_fractions_and_booleans() -> None:
    for bad, needle in [(1.5, "fraction"), (True, "boolean"), ("2", "string")]:
        with pytest.raises(SchemaError) as excinfo:
            GetSessionStateResponse.from_json({"dataChannels": [{"id": bad}]})
        assert excinfo.value.field == "dataChannels[0].id"
        assert needle in excinfo.value.message
    assert GetSessionStateResponse.from_json({"dataChannels": [{"id": 3.0}]}).data_channels[0].id == 3


def test_schema_errors_never_echo_values() -> None:
    sentinel = "SENTINEL-VALUE-123"
    for doc in ({"requiresImmediateRenegotiation": sentinel}, {"tracks": [{"location": sentinel}]}):
        with pytest.raises(SchemaError) as excinfo:
            TracksResponse.from_json(doc)
        assert sentinel not in str(excinfo.value)


def test_new_session_response_requires_session_id() -> None:
    for doc, needle in [({}, "is required"), ({"sessionId": ""}, "empty"), ({"sessionId": 5}, "string")]:
        with pytest.raises(SfuApiError) as excinfo:
            parse_new_session(201, raw(doc))
        assert excinfo.value.code == ErrorCode.INVALID_RESPONSE
        assert "sessionId" in excinfo.value.description and needle in excinfo.value.description


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (400, {"errorCode": "decoding_error", "errorDescription": "bad JSON"}, "decoding_error", False),
        (
            406,
            {"errorCode": "invalid_params", "errorDescription": "Expecting at most 4"},
            "invalid_params",
            False,
        ),
        (404, {"errorCode": "session_not_found"}, "session_not_found", False),
        (429, None, "http_error", True),
        (425, {"errorCode": "too_early", "errorDescription": "wait"}, "too_early", True),
        (500, {"errorCode": "internal_error", "errorDescription": "Backend error"}, "internal_error", True),
        (503, b"<html>Service Unavailable</html>", "http_error", True),
        (302, None, "http_error", False),
        (401, {"errorCode": 7}, "http_error", False),
    ],
)
def test_error_statuses_map_to_spec_codes(status: int, body: object, code: str, retryable: bool) -> None:
    payload = body if isinstance(body, bytes) else b"" if body is None else raw(body)
    for parse in (
        parse_new_session,
        parse_new_tracks,
        parse_renegotiate,
        parse_close_tracks,
        parse_get_session,
    ):
        with pytest.raises(SfuApiError) as excinfo:
            parse(status, payload)
        error = excinfo.value
        assert (error.status, error.code, error.retryable) == (status, code, retryable)
        assert f"HTTP {status}" in str(error)
    assert "html" not in error_from_response(503, b"<html>Service Unavailable</html>").description


def test_error_body_in_a_2xx_response_raises() -> None:
    with pytest.raises(SfuApiError) as excinfo:
        parse_new_tracks(200, raw({"errorCode": "internal_error", "errorDescription": "Backend error"}))
    assert (excinfo.value.status, excinfo.value.code, excinfo.value.retryable) == (
        200,
        "internal_error",
        False,
    )
    assert excinfo.value.description == "Backend error"
    assert ErrorResponse.from_json({"errorCode": "x"}).to_json() == {"errorCode": "x"}


def test_malformed_bodies_are_invalid_responses() -> None:
    too_big = b'{"sessionId": "' + b"a" * MAX_BODY_BYTES + b'"}'
    for body, needle in [
        (b"{not json", "JSON"),
        (b"\xff\xfe", "JSON"),
        (b'{"sessionId": NaN}', "JSON"),
        (too_big, str(MAX_BODY_BYTES)),
    ]:
        with pytest.raises(SfuApiError) as excinfo:
            parse_new_session(201, body)
        assert excinfo.value.code == ErrorCode.INVALID_RESPONSE
        assert needle in excinfo.value.description


def test_remote_error_text_is_flattened_and_bounded() -> None:
    error = error_from_response(
        500, raw({"errorCode": "internal_error", "errorDescription": "a\nb\x1b" + "x" * 999})
    )
    assert "\n" not in error.description and "\x1b" not in error.description
    assert len(error.description) <= 300
    assert error.retryable


def test_errors_pickle_with_their_fields() -> None:
    error = pickle.loads(pickle.dumps(SfuApiError(503, "internal_error", "down", True)))
    assert (error.status, error.code, error.description, error.retryable) == (
        503,
        "internal_error",
        "down",
        True,
    )
    schema = pickle.loads(pickle.dumps(SchemaError("tracks[0].mid", "is required")))
    assert str(schema) == "tracks[0].mid: is required"
    assert isinstance(schema, ValueError)


def test_retryable_statuses() -> None:
    assert [
        s for s in (200, 400, 404, 408, 409, 425, 429, 499, 500, 502, 503, 599, 600) if is_retryable_status(s)
    ] == [
        425,
        429,
        500,
        502,
        503,
        599,
    ]


# --- secrets ----------------------------------------------------------------------------------------


def all_requests() -> list[HttpRequest]:
    return [
        build_new_session(APP, thirdparty=True, correlation_id="c1"),
        build_new_session(APP, request=NewSessionRequest(session_description=OFFER)),
        build_new_tracks(APP, SESSION, TracksRequest(tracks=(TrackObject.remote("s", "t"),))),
        build_renegotiate(APP, SESSION, RenegotiateRequest(session_description=ANSWER)),
        build_close_tracks(APP, SESSION, CloseTracksRequest.for_mids(["0"], force=True)),
        build_update_tracks(
            APP, SESSION, UpdateTracksRequest(tracks=(TrackObject.remote("s", "t", mid="1"),))
        ),
        build_get_session(APP, SESSION),
    ]


def test_secret_is_only_in_the_authorization_header() -> None:
    for request in all_requests():
        assert request.header_dict()["Authorization"] == f"Bearer {SECRET}"
        visible = [repr(request), str(request), request.url(), request.path, repr(request.query)]
        visible.append((request.body_bytes or b"").decode())
        assert not any(SECRET in text for text in visible)
        assert "Authorization: <redacted>" in repr(request)
    for shown in (repr(APP), str(APP), repr(APP.secret), str(APP.secret), f"{APP.secret}"):
        assert SECRET not in shown
    assert APP.secret.reveal() == SECRET
    assert Secret(SECRET) == APP.secret and Secret("other") != APP.secret


def test_bad_secrets_are_refused_without_echoing_them() -> None:
    for bad, needle in [
        ("", "empty"),
        (f"{SECRET} x", "without spaces"),
        (f"{SECRET}\n", "without spaces"),
        ("é" + SECRET, "ASCII"),
    ]:
        with pytest.raises(SchemaError) as excinfo:
            Secret(bad, field="app_secret")
        assert excinfo.value.field == "app_secret" and needle in excinfo.value.message
        assert SECRET not in str(excinfo.value)
    with pytest.raises(SchemaError) as excinfo:
        Secret("x" * 4097)
    assert "4096" in excinfo.value.message
    with pytest.raises(SchemaError):
        SfuApp("app", SECRET)  # type: ignore[arg-type]


def test_base_url_checks() -> None:
    request = build_get_session(APP, SESSION)
    assert (
        request.url("http://127.0.0.1:8787/v1/")
        == f"http://127.0.0.1:8787/v1/apps/app0123/sessions/{SESSION}"
    )
    for bad in ("ftp://x", "rtc.live.cloudflare.com/v1", "https://x/v1?a=1"):
        with pytest.raises(SchemaError) as excinfo:
            request.url(bad)
        assert excinfo.value.field == "base_url"


def test_session_description_repr_hides_sdp() -> None:
    assert "IN IP4" not in repr(OFFER)
    assert OFFER.type is SdpType.OFFER
