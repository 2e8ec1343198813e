"""The contract's SFU models and requests (edge/contract/sfu.py, sfu_http.py) against the Cloudflare
Realtime OpenAPI spec (shared/reference/, via tests/spec.py).

Every request the builders produce validates (strictly: no undeclared field) against the spec's request
schema, every example document in the spec for the operations we model parses and round-trips, and every
contract module stays importable on Pyodide (standard library only, Python 3.11 syntax).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from splitrelay.contract import sfu, sfu_http
from splitrelay.contract.safety import Secret
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    NewSessionRequest,
    RenegotiateRequest,
    SessionDescription,
    Simulcast,
    SimulcastPolicy,
    TrackObject,
    TracksRequest,
    UpdateTracksRequest,
    mid_for_track,
)
from splitrelay.contract.sfu_http import HttpRequest, SfuApp
from tests import spec

APP = SfuApp("2a45361d", Secret("spec-test-secret"))
SESSION = "e017a2629c754fedc1f7d8587e06d126"
OFFER = SessionDescription.offer("v=0\r\n")
ANSWER = SessionDescription.answer("v=0\r\n")

SESSIONS_NEW = "/apps/{appId}/sessions/new"
TRACKS_NEW = "/apps/{appId}/sessions/{sessionId}/tracks/new"
RENEGOTIATE = "/apps/{appId}/sessions/{sessionId}/renegotiate"
TRACKS_CLOSE = "/apps/{appId}/sessions/{sessionId}/tracks/close"
TRACKS_UPDATE = "/apps/{appId}/sessions/{sessionId}/tracks/update"
SESSION_STATE = "/apps/{appId}/sessions/{sessionId}"

# (method, templated path) -> (request model parser or None, response parser)
OPERATIONS: dict[tuple[str, str], tuple[Callable[[object], Any] | None, Callable[[int, bytes], Any]]] = {
    ("POST", SESSIONS_NEW): (NewSessionRequest.from_json, sfu_http.parse_new_session),
    ("POST", TRACKS_NEW): (TracksRequest.from_json, sfu_http.parse_new_tracks),
    ("PUT", RENEGOTIATE): (RenegotiateRequest.from_json, sfu_http.parse_renegotiate),
    ("PUT", TRACKS_CLOSE): (CloseTracksRequest.from_json, sfu_http.parse_close_tracks),
    ("PUT", TRACKS_UPDATE): (UpdateTracksRequest.from_json, sfu_http.parse_update_tracks),
    ("GET", SESSION_STATE): (None, sfu_http.parse_get_session),
}


def template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[A-Za-z]+\\\}", "[^/]+", re.escape(template)) + "$")


def check_against_spec(request: HttpRequest, template: str) -> None:
    """Method and path match the spec's operation; the body fits its request schema exactly."""
    assert template_regex(template).match(request.path), (request.path, template)
    op = spec.operation(request.method, template)
    declared = {p["name"]: p["schema"]["type"] for p in op.get("parameters", []) if p["in"] == "query"}
    for name, value in request.query:
        assert name in declared, f"query parameter {name} is not in the spec"
        if declared[name] == "boolean":
            assert value in ("true", "false")
    if request.body_bytes is None:
        assert not op.get("requestBody", {}).get("required", False)
        return
    body = json.loads(request.body_bytes)
    if "requestBody" in op:
        spec.validate_request(request.method, template, body)
    else:
        # sessions/new documents no body in this spec version, only the NewSessionRequest component.
        assert template == SESSIONS_NEW
        spec.validate(body, "NewSessionRequest")


BUILT: list[tuple[str, HttpRequest]] = [
    (SESSIONS_NEW, sfu_http.build_new_session(APP, thirdparty=True, correlation_id="call-1")),
    (SESSIONS_NEW, sfu_http.build_new_session(APP, request=NewSessionRequest(session_description=OFFER))),
    (
        TRACKS_NEW,
        sfu_http.build_new_tracks(
            APP,
            SESSION,
            TracksRequest(
                session_description=OFFER,
                tracks=(TrackObject.local("mic", mid="0", bidirectional_media_stream=True, kind="audio"),),
            ),
        ),
    ),
    (
        TRACKS_NEW,
        sfu_http.build_new_tracks(
            APP, SESSION, TracksRequest(tracks=(TrackObject.local("mic", kind="audio"),))
        ),
    ),
    (
        TRACKS_NEW,
        sfu_http.build_new_tracks(
            APP,
            SESSION,
            TracksRequest(
                tracks=(
                    TrackObject.remote(
                        "relay", "out", mid=mid_for_track("mic"), bidirectional_media_stream=True
                    ),
                    TrackObject.remote(
                        "cam",
                        "video",
                        kind="video",
                        simulcast=Simulcast(
                            preferred_rid="h",
                            priority_ordering=SimulcastPolicy.NONE,
                            rid_not_available=SimulcastPolicy.ASCIIBETICAL,
                        ),
                    ),
                )
            ),
        ),
    ),
    (
        TRACKS_NEW,
        sfu_http.build_new_tracks(APP, SESSION, TracksRequest(session_description=OFFER, auto_discover=True)),
    ),
    (RENEGOTIATE, sfu_http.build_renegotiate(APP, SESSION, RenegotiateRequest(session_description=ANSWER))),
    (
        TRACKS_CLOSE,
        sfu_http.build_close_tracks(APP, SESSION, CloseTracksRequest.for_mids(["0", "1"], force=True)),
    ),
    (
        TRACKS_CLOSE,
        sfu_http.build_close_tracks(
            APP, SESSION, CloseTracksRequest.for_mids(["7"], force=False, session_description=OFFER)
        ),
    ),
    (
        TRACKS_UPDATE,
        sfu_http.build_update_tracks(
            APP,
            SESSION,
            UpdateTracksRequest(
                tracks=(TrackObject.remote("s", "t", mid="8", simulcast=Simulcast(preferred_rid="q")),)
            ),
        ),
    ),
    (SESSION_STATE, sfu_http.build_get_session(APP, SESSION)),
]


@pytest.mark.parametrize(("template", "request_"), BUILT, ids=[f"{r.method} {t}" for t, r in BUILT])
def test_built_requests_fit_the_spec(template: str, request_: HttpRequest) -> None:
    check_against_spec(request_, template)


def test_the_strict_check_catches_a_misspelt_field() -> None:
    # Guards the guard: without strictness, the spec's schemas would accept any extra key.
    good = {"tracks": [{"location": "remote", "sessionId": "s", "trackName": "t"}]}
    typo = {"tracks": [{"location": "remote", "sessionId": "s", "trackname": "t"}]}
    spec.validate_request("POST", TRACKS_NEW, good)
    spec.validate_request("POST", TRACKS_NEW, typo, strict=False)
    with pytest.raises(jsonschema.ValidationError, match="trackname"):
        spec.validate_request("POST", TRACKS_NEW, typo)
    with pytest.raises(jsonschema.ValidationError):
        spec.validate_request("PUT", TRACKS_CLOSE, {"tracks": [], "force": True})  # minItems 1
    with pytest.raises(jsonschema.ValidationError):
        spec.validate("{}", "NewSessionResponse")


def test_nullable_is_converted() -> None:
    schema = spec.to_json_schema({"type": "string", "nullable": True, "enum": ["a"]}, strict=True)
    assert schema == {"type": ["string", "null"], "enum": ["a", None]}
    assert spec.errors(None, {"type": "string", "nullable": True}) == []
    assert spec.errors(None, {"type": "string"}) != []


def test_every_operation_we_model_is_in_the_spec() -> None:
    for method, template in OPERATIONS:
        spec.operation(method, template)
    assert ("GET", SESSION_STATE) in OPERATIONS


def all_examples() -> list[spec.Example]:
    return [example for method, template in OPERATIONS for example in spec.examples(method, template)]


@pytest.mark.parametrize(
    "example", all_examples(), ids=lambda e: f"{e.method} {e.path} {e.status or 'request'} {e.name}"
)
def test_spec_examples_parse_and_round_trip(example: spec.Example) -> None:
    parse_request, parse_response = OPERATIONS[(example.method, example.path)]
    if example.status is None:
        assert parse_request is not None
        model = parse_request(example.value)
    else:
        model = parse_response(example.status, json.dumps(example.value).encode())
    assert model.to_json() == example.value


def test_examples_were_found() -> None:
    # Request and response examples per operation, as in the 2024-05-21 spec copy.
    statuses = {(e.method, e.path, e.status is None) for e in all_examples()}
    for method, template in OPERATIONS:
        assert (method, template, False) in statuses, f"no response example for {method} {template}"
    assert len([e for e in all_examples() if e.path == TRACKS_NEW and e.status is None]) >= 7


def test_our_response_documents_fit_the_response_schemas() -> None:
    # The SFU emulator sends our models' to_json(): they must be valid spec responses too.
    responses: list[tuple[str, str, int, Any]] = [
        ("POST", SESSIONS_NEW, 201, sfu.NewSessionResponse(session_id=SESSION, session_description=ANSWER)),
        (
            "POST",
            TRACKS_NEW,
            200,
            sfu.TracksResponse(
                requires_immediate_renegotiation=True,
                session_description=OFFER,
                tracks=(
                    sfu.TrackResult(mid="3", session_id="s", track_name="t", location=sfu.Location.REMOTE),
                    sfu.TrackResult(track_name="u", error_code="not_found", error_description="gone"),
                ),
            ),
        ),
        ("PUT", RENEGOTIATE, 200, sfu.RenegotiateResponse()),
        (
            "PUT",
            TRACKS_CLOSE,
            200,
            sfu.CloseTracksResponse(
                requires_immediate_renegotiation=False,
                session_description=ANSWER,
                tracks=(
                    sfu.CloseTrackResult(mid="1", error_code="close_track_error", error_description="x"),
                ),
            ),
        ),
        ("PUT", TRACKS_UPDATE, 200, sfu.UpdateTracksResponse(tracks=(sfu.TrackResult(mid="7"),))),
        (
            "GET",
            SESSION_STATE,
            200,
            sfu.GetSessionStateResponse(
                tracks=(sfu.TrackState(mid="1", status=sfu.ResourceStatus.INACTIVE),),
                data_channels=(sfu.DataChannelState(id=1, status=sfu.ResourceStatus.INITIALIZING),),
            ),
        ),
    ]
    for method, template, status, model in responses:
        spec.validate_response(method, template, status, model.to_json())
    spec.validate(sfu.ErrorResponse(error_code="x", error_description="y").to_json(), "AdapterRequestError")


# --- Pyodide compatibility ----------------------------------------------------------------------------

EDGE_MODULES = sorted(Path(sfu.__file__).parent.glob("*.py"))
TYPE_ALIAS: Any = getattr(ast, "TypeAlias", ())  # the node class exists from Python 3.12 on
PYODIDE_SAFE_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "datetime",
    "email.utils",
    "enum",
    "hashlib",
    "hmac",
    "json",
    "random",
    "re",
    "secrets",
    "time",
    "types",
    "typing",
    "urllib.parse",
    *(f"splitrelay.contract.{path.stem}" for path in EDGE_MODULES),
}


@pytest.mark.parametrize("path", EDGE_MODULES, ids=lambda p: p.name)
def test_edge_api_modules_are_pure_standard_library_python_3_11(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 11))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            imported.add(node.module)
        assert not isinstance(node, TYPE_ALIAS), "PEP 695 `type X = ...` needs Python 3.12"
    assert imported <= PYODIDE_SAFE_IMPORTS, imported - PYODIDE_SAFE_IMPORTS
