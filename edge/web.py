"""Runtime-neutral HTTP messages for the edge: what the Worker, the local adapter and the tests share.

The Worker's ``workers.Request`` and the local ASGI scope are both turned into an :class:`EdgeRequest`
by their thin adapters, and every route answers an :class:`EdgeResponse`, so the routing and all the
logic behind it run unchanged on CPython and Pyodide. Errors are :class:`EdgeError`: one JSON shape
(``{"error": {"code", "message", "field"}}``) that names the field and the limit, never a secret.
(Named ``web`` rather than ``http``: wrangler uploads edge/ flat, and a top-level ``http.py`` would
shadow the standard library inside the Worker.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from splitrelay.contract.json_fields import SchemaError, json_type
from splitrelay.contract.safety import clean_text
from splitrelay.contract.untrusted_json import read_json

MAX_BODY_BYTES: Final = 64 * 1024  # a call's JSON body carries one SDP offer (≤ 32 KiB)
JSON_TYPE: Final = "application/json"
JSON_HEADERS: Final = (("content-type", "application/json; charset=utf-8"), ("cache-control", "no-store"))


class EdgeError(Exception):
    """A request the edge refuses: HTTP status, a stable code, a message naming the field and the limit."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = clean_text(message)
        self.field = field
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}"

    def response(self) -> EdgeResponse:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        headers: list[tuple[str, str]] = []
        if self.retry_after is not None:
            headers.append(("retry-after", str(self.retry_after)))
        return json_response(self.status, {"error": error}, extra_headers=tuple(headers))


def bad_request(field: str, message: str, code: str = "invalid_request") -> EdgeError:
    """400 naming the JSON field: ``offer.sdp: must be at most 32768 characters``."""
    return EdgeError(400, code, f"{field}: {message}", field=field)


@dataclass(frozen=True)
class EdgeRequest:
    """One incoming request: header names lower-case, the body already read (bounded by the adapter)."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client_ip: str = ""
    cf: Mapping[str, object] = field(default_factory=dict)
    """Cloudflare's ``request.cf`` (colo, country, continent, latitude, longitude...); empty locally."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def __repr__(self) -> str:
        # Headers stay out: Authorization carries a token.
        return f"EdgeRequest({self.method} {self.path}, {len(self.body)}-byte body)"


@dataclass(frozen=True)
class EdgeResponse:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


def json_response(
    status: int, doc: Mapping[str, Any], *, extra_headers: tuple[tuple[str, str], ...] = ()
) -> EdgeResponse:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return EdgeResponse(status, JSON_HEADERS + extra_headers, body)


def check_body_size(length_header: str | None, limit: int = MAX_BODY_BYTES) -> None:
    """Refuse early from Content-Length, before the adapter reads the body."""
    if length_header is None:
        return
    if not length_header.strip().isdigit():
        raise EdgeError(400, "invalid_request", "content-length: must be a non-negative integer")
    if int(length_header) > limit:
        raise EdgeError(413, "body_too_large", f"body: must be at most {limit} bytes", field="body")


def read_json_object(request: EdgeRequest, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object: content type, size, UTF-8 and shape checked, in that order."""
    content_type = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != JSON_TYPE:
        shown = clean_text(content_type, 60) if content_type else "none"
        raise EdgeError(
            415,
            "unsupported_media_type",
            f"content-type: must be {JSON_TYPE}, got {shown}",
            field="content-type",
        )
    if len(request.body) > limit:
        raise EdgeError(413, "body_too_large", f"body: must be at most {limit} bytes", field="body")
    try:
        doc = read_json(request.body, max_bytes=limit)
    except SchemaError as exc:
        raise bad_request(exc.field, exc.message) from None
    if not isinstance(doc, dict):
        raise bad_request("body", f"must be a JSON object, got {json_type(doc)}")
    return doc


def bearer_token(request: EdgeRequest) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None when there is none."""
    value = request.header("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise EdgeError(401, "unauthorized", "authorization: must be 'Bearer <token>'", field="authorization")
    return token.strip()
