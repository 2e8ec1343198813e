"""Realtime API requests and responses on the wire, sans-IO: the Worker (JS ``fetch``) and the relay
(httpx) send the same bytes.

``build_*`` returns an :class:`HttpRequest` (the secret only in its Authorization header), ``parse_*``
turns ``(status, body)`` into a model of :mod:`splitrelay.contract.sfu` or raises
:class:`~splitrelay.contract.api_error.SfuApiError`. :func:`json_request`, :func:`decode_response` and
:func:`error_from_response` serve the TURN API (:mod:`splitrelay.contract.turn`) too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

from splitrelay.contract.api_error import ErrorCode, SfuApiError, is_retryable_status
from splitrelay.contract.json_fields import SchemaError, check_text, json_type
from splitrelay.contract.safety import Secret, check_base_url, path_segment
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    CloseTracksResponse,
    ErrorResponse,
    GetSessionStateResponse,
    NewSessionRequest,
    NewSessionResponse,
    RenegotiateRequest,
    RenegotiateResponse,
    TracksRequest,
    TracksResponse,
    UpdateTracksRequest,
    UpdateTracksResponse,
)

T = TypeVar("T")

API_BASE_URL: Final = "https://rtc.live.cloudflare.com/v1"
MAX_LABEL_CHARS: Final = 256  # our bound for correlationId
MAX_BODY_BYTES: Final = 1 << 20  # responses are SDP-sized (a few KiB); anything larger is refused


@dataclass(frozen=True, repr=False)
class HttpRequest:
    """What to send, for any HTTP library; ``path`` is relative to the API base (``.../v1``)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body_bytes: bytes | None = None

    def url(self, base_url: str = API_BASE_URL) -> str:
        url = check_base_url(base_url) + self.path
        return f"{url}?{urlencode(self.query)}" if self.query else url

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)

    def __repr__(self) -> str:
        names = ", ".join(
            f"{name}: <redacted>" if name.lower() == "authorization" else f"{name}: {value}"
            for name, value in self.headers
        )
        size = "none" if self.body_bytes is None else f"{len(self.body_bytes)} bytes"
        return f"HttpRequest({self.method} {self.path} query={self.query!r} headers={{{names}}} body={size})"


def json_request(
    method: str,
    path: str,
    token: Secret,
    body: Mapping[str, Any] | None = None,
    query: tuple[tuple[str, str], ...] = (),
) -> HttpRequest:
    """An :class:`HttpRequest` with the bearer token in its header and a compact JSON body."""
    headers = [("Authorization", f"Bearer {token.reveal()}"), ("Accept", "application/json")]
    payload = None
    if body is not None:
        headers.append(("Content-Type", "application/json"))
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return HttpRequest(method, path, query, tuple(headers), payload)


@dataclass(frozen=True)
class SfuApp:
    """An SFU application: its id (in the path) and its secret (only in the Authorization header)."""

    app_id: str
    secret: Secret

    def __post_init__(self) -> None:
        path_segment(self.app_id, "app_id")
        if not isinstance(self.secret, Secret):
            raise SchemaError("app_secret", "must be a Secret (wrap the string with Secret(...))")

    def session_path(self, session_id: str, suffix: str = "") -> str:
        app = path_segment(self.app_id, "app_id")
        return f"/apps/{app}/sessions/{path_segment(session_id, 'session_id')}{suffix}"


def build_new_session(
    app: SfuApp,
    *,
    thirdparty: bool | None = None,
    correlation_id: str | None = None,
    request: NewSessionRequest | None = None,
) -> HttpRequest:
    """POST sessions/new; no body unless ``request`` carries an offer (201 with ``sessionId``)."""
    query: list[tuple[str, str]] = []
    if thirdparty is not None:
        if not isinstance(thirdparty, bool):
            raise SchemaError("thirdparty", f"expected boolean, got {json_type(thirdparty)}")
        query.append(("thirdparty", "true" if thirdparty else "false"))
    if correlation_id is not None:
        if not isinstance(correlation_id, str):
            raise SchemaError("correlationId", f"expected string, got {json_type(correlation_id)}")
        check_text(correlation_id, "correlationId", limit=MAX_LABEL_CHARS)
        if not correlation_id.isprintable():
            raise SchemaError("correlationId", "must be printable text")
        query.append(("correlationId", correlation_id))
    body = None
    if request is not None and request.session_description is not None:
        request.validate()
        body = request.to_json()
    path = f"/apps/{path_segment(app.app_id, 'app_id')}/sessions/new"
    return json_request("POST", path, app.secret, body, tuple(query))


def build_new_tracks(app: SfuApp, session_id: str, request: TracksRequest) -> HttpRequest:
    request.validate()
    return json_request("POST", app.session_path(session_id, "/tracks/new"), app.secret, request.to_json())


def build_renegotiate(app: SfuApp, session_id: str, request: RenegotiateRequest) -> HttpRequest:
    request.validate()
    return json_request("PUT", app.session_path(session_id, "/renegotiate"), app.secret, request.to_json())


def build_close_tracks(app: SfuApp, session_id: str, request: CloseTracksRequest) -> HttpRequest:
    request.validate()
    return json_request("PUT", app.session_path(session_id, "/tracks/close"), app.secret, request.to_json())


def build_update_tracks(app: SfuApp, session_id: str, request: UpdateTracksRequest) -> HttpRequest:
    request.validate()
    return json_request("PUT", app.session_path(session_id, "/tracks/update"), app.secret, request.to_json())


def build_switch_track(
    app: SfuApp, session_id: str, *, mid: str, to_session_id: str, to_track_name: str
) -> tuple[HttpRequest, Callable[[int, bytes], UpdateTracksResponse]]:
    """tracks/update that moves ``session_id``'s transceiver ``mid`` to another session's track, and the
    parser that accepts only a switch that took effect without renegotiation
    (:meth:`UpdateTracksResponse.check_switched`). Repeating it is harmless (the same track again), so
    it may be retried like any call."""
    request = UpdateTracksRequest.switch_remote(mid, to_session_id, to_track_name)

    def parse(status: int, body: bytes) -> UpdateTracksResponse:
        response = parse_update_tracks(status, body)
        response.check_switched(request)
        return response

    return build_update_tracks(app, session_id, request), parse


def build_get_session(app: SfuApp, session_id: str) -> HttpRequest:
    return json_request("GET", app.session_path(session_id), app.secret)


# --- responses ----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _load_json(status: int, body: bytes) -> object:
    if len(body) > MAX_BODY_BYTES:
        raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, f"body exceeds {MAX_BODY_BYTES} bytes", False)
    if not body.strip():
        return {}
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, "body is not UTF-8 JSON", False) from None


def error_from_response(status: int, body: bytes) -> SfuApiError:
    """The error for a non-2xx response, using the body's ``errorCode`` when it has one."""
    retryable = is_retryable_status(status)
    try:
        doc = _load_json(status, body)
    except SfuApiError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("errorCode"), str) and doc["errorCode"]:
        description = doc.get("errorDescription")
        text = description if isinstance(description, str) and description else f"HTTP {status}"
        return SfuApiError(status, doc["errorCode"], text, retryable)
    # Never echo a body we cannot read as the API's error document: it could be anything.
    return SfuApiError(status, ErrorCode.HTTP_ERROR, f"HTTP {status} ({len(body)}-byte body)", retryable)


def decode_response(status: int, body: bytes, parse: Callable[[object, str], T]) -> T:
    """2xx → model; non-2xx, a top-level ``errorCode`` or a malformed body → :class:`SfuApiError`."""
    if not 200 <= status <= 299:
        raise error_from_response(status, body)
    doc = _load_json(status, body)
    if isinstance(doc, dict) and "errorCode" in doc:
        try:
            error = ErrorResponse.from_json(doc)
        except SchemaError as exc:
            raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, str(exc), False) from None
        raise SfuApiError(status, error.error_code, error.error_description or "request failed", False)
    try:
        return parse(doc, "")
    except SchemaError as exc:
        raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, str(exc), False) from None


def parse_new_session(status: int, body: bytes) -> NewSessionResponse:
    return decode_response(status, body, NewSessionResponse.from_json)


def parse_new_tracks(status: int, body: bytes) -> TracksResponse:
    return decode_response(status, body, TracksResponse.from_json)


def parse_renegotiate(status: int, body: bytes) -> RenegotiateResponse:
    return decode_response(status, body, RenegotiateResponse.from_json)


def parse_close_tracks(status: int, body: bytes) -> CloseTracksResponse:
    return decode_response(status, body, CloseTracksResponse.from_json)


def parse_update_tracks(status: int, body: bytes) -> UpdateTracksResponse:
    return decode_response(status, body, UpdateTracksResponse.from_json)


def parse_get_session(status: int, body: bytes) -> GetSessionStateResponse:
    return decode_response(status, body, GetSessionStateResponse.from_json)
