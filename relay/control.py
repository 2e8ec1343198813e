"""The relay's control API: attach, close, list and inspect calls, health, readiness, drain, metrics.

Every route except /healthz, /readyz and /metrics requires an edge signature (splitrelay.contract.signing).
The API is thin: it validates and authenticates, then hands the call to a `CallBackend`, which is the
in-process call manager or the pool of per-core worker processes (relay/workers.py).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from splitrelay.contract.control import CALLS_PATH, DRAIN_PATH, UNDRAIN_PATH, AttachRequest
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.signing import SignatureError, Verifier
from splitrelay.contract.untrusted_json import read_json
from splitrelay.relay.backend import AttachRefused, CallBackend
from splitrelay.relay.edge_link import CLOSED_BY_EDGE, EdgeLink

log = logging.getLogger("splitrelay.relay.control")

MAX_BODY_BYTES = 64 * 1024


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


UNSIGNED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class SignatureMiddleware:
    """Pure ASGI middleware: bounds the body, verifies the edge signature, then replays the body.

    Pure ASGI (not BaseHTTPMiddleware) so the body read for the signature can be handed on intact.
    """

    def __init__(self, app: ASGIApp, verifier: Verifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNSIGNED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:  # before any body is read: an unsigned or stale request costs no read
            self.verifier.check_headers(headers)
        except SignatureError as exc:
            log.info("rejected control request %s %s: %s", scope["method"], scope["path"][:80], exc)
            await _error(401, "unauthorized", str(exc))(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _error(413, "body_too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")(
                scope, receive, send
            )
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _error(413, "body_too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        # The request target as sent, percent-encoding kept: what the edge signed (one canonical form).
        query = scope.get("query_string", b"").decode("latin-1")
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw.decode("latin-1") + (f"?{query}" if query else "")
        try:
            self.verifier.verify(scope["method"], path, body, headers)
        except SignatureError as exc:
            log.info("rejected control request %s %s: %s", scope["method"], scope["path"], exc)
            await _error(401, "unauthorized", str(exc))(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(backend: CallBackend, verifier: Verifier, *, edge: EdgeLink | None = None) -> FastAPI:
    """Build the control API around a backend and a signature verifier.

    ``edge``: the relay's link to the edge; a drain is announced to the edge (and acknowledged) before
    the relay refuses its first call, so the edge never sends a call the relay would refuse."""
    app = FastAPI(title="splitrelay relay control API", version="1", docs_url=None, redoc_url=None)

    app.add_middleware(SignatureMiddleware, verifier=verifier)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(400, "invalid_request", f"{field}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if backend.draining:
            return JSONResponse(status_code=503, content={"status": "draining"})
        return JSONResponse(content={"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(content=await backend.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.post(CALLS_PATH, status_code=201)
    async def attach(request: Request) -> JSONResponse:
        try:
            document = read_json(await request.body(), max_bytes=MAX_BODY_BYTES)
            attach_request = AttachRequest.from_json(document)
        except SchemaError as exc:
            return _error(400, "invalid_request", str(exc))
        if backend.draining:
            return _error(503, "draining", "relay is draining and takes no new calls")
        try:
            result = await backend.attach(attach_request)
        except AttachRefused as exc:
            return _error(exc.status, "attach_refused", exc.message)
        return JSONResponse(status_code=201, content=result.to_json())

    @app.get(CALLS_PATH)
    async def list_calls() -> dict[str, Any]:
        return {"calls": await backend.list_calls()}

    @app.get(CALLS_PATH + "/{call_id}")
    async def get_call(call_id: str) -> dict[str, Any]:
        info = await backend.get_call(call_id)
        if info is None:
            raise HTTPException(status_code=404, detail=f"no call {call_id[:64]!r} on this relay")
        return info

    @app.delete(CALLS_PATH + "/{call_id}")
    async def close_call(call_id: str) -> dict[str, Any]:
        summary = await backend.close(call_id, CLOSED_BY_EDGE)
        # Idempotent: closing a call that is already gone is not an error.
        return {"call_id": call_id, "closed": summary is not None, "summary": summary}

    @app.post(DRAIN_PATH)
    async def drain() -> dict[str, Any]:
        seen = None if edge is None else await edge.announce_drain(True)
        remaining = await backend.drain()
        return {"draining": True, "live_calls": remaining, "edge_acknowledged": seen}

    @app.post(UNDRAIN_PATH)
    async def undrain() -> dict[str, Any]:
        remaining = await backend.undrain()
        seen = None if edge is None else await edge.announce_drain(False)
        return {"draining": False, "live_calls": remaining, "edge_acknowledged": seen}

    return app
