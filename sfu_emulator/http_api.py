"""HTTP face of the emulator (FastAPI): the Realtime SFU and TURN paths under ``/v1``, Bearer auth, errors.

Bodies are read bounded and parsed with the spec models' ``from_json``; answers are their ``to_json``.
Every failure, including unknown paths and methods, gets the spec's error shape
(``errorCode``/``errorDescription``), so a client configured with ``base_url=http://HOST:PORT/v1``
(relay/sfu_client.py unchanged) sees what it would see from Cloudflare.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Final, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from splitrelay.contract import untrusted_json
from splitrelay.contract.json_fields import JsonModel, SchemaError
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    NewSessionRequest,
    RenegotiateRequest,
    TracksRequest,
    UpdateTracksRequest,
)
from splitrelay.contract.sfu_http import MAX_BODY_BYTES, MAX_LABEL_CHARS
from splitrelay.contract.turn import GenerateIceServersRequest
from splitrelay.emulator import errors
from splitrelay.emulator.emulator import Emulator, Session
from splitrelay.emulator.errors import ApiError, EmulatorCode
from splitrelay.emulator.turn import TurnService

logger = logging.getLogger("splitrelay.sfu_emulator.http")

API_PREFIX: Final = "/v1"
STATE_PATH: Final = "/_emulator/state"
CORS_METHODS: Final = ("GET", "POST", "PUT")
CORS_HEADERS: Final = ("authorization", "content-type")
CORS_MAX_AGE_S: Final = 600
BODY_TIMEOUT_S: Final = 10.0
M = TypeVar("M")


async def read_json(request: Request, *, required: bool) -> object | None:
    """The request body as JSON, at most MAX_BODY_BYTES; None for an empty optional body."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):  # a slow body must not hold the request open
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ApiError(
                        413, EmulatorCode.PAYLOAD_TOO_LARGE, f"body: larger than {MAX_BODY_BYTES} bytes"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"body: not received within {BODY_TIMEOUT_S:g} s") from None
    body = b"".join(chunks)
    if not body.strip():
        if required:
            raise errors.decoding_error("body: a JSON object is required")
        return None
    try:
        return untrusted_json.read_json(body, max_bytes=MAX_BODY_BYTES)
    except SchemaError as exc:
        raise errors.decoding_error(str(exc)) from None


def parse_model(doc: object, parse: Callable[[object, str], M]) -> M:
    """A spec model from JSON: a wrong type is a decoding error, a broken rule an invalid parameter."""
    try:
        return parse(doc, "")
    except SchemaError as exc:
        if exc.message.startswith("expected"):
            raise errors.decoding_error(str(exc)) from None
        raise errors.invalid_params(str(exc)) from None


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _json(model: JsonModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.to_json(), status_code=status, headers={"vary": "Origin"})


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"vary": "Origin"}
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _query_bool(request: Request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise errors.decoding_error(f"{name}: expected true or false")
    return value == "true"


def _correlation_id(request: Request) -> str | None:
    value = request.query_params.get("correlationId")
    if value is None:
        return None
    if not value or len(value) > MAX_LABEL_CHARS or not value.isprintable():
        raise errors.invalid_params(f"correlationId: must be 1 to {MAX_LABEL_CHARS} printable characters")
    return value


def create_app(emulator: Emulator, turn: TurnService) -> FastAPI:
    """The ASGI app for one emulator (no OpenAPI pages: the spec is Cloudflare's)."""
    app = FastAPI(title="splitrelay Realtime emulator", openapi_url=None, docs_url=None, redoc_url=None)
    # The real API is called straight from pages (Cloudflare's published examples do): any origin, no
    # cookies (the Bearer token is the credential), preflight answered before routing and auth.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=list(CORS_METHODS),
        allow_headers=list(CORS_HEADERS),
        expose_headers=["retry-after"],
        max_age=CORS_MAX_AGE_S,
    )
    config = emulator.config

    def authorize(request: Request, app_id: str) -> None:
        expected = config.secret_for(app_id)
        token = bearer(request)
        if (
            expected is None
            or token is None
            or not hmac.compare_digest(token.encode(), expected.reveal().encode())
        ):
            raise errors.unauthorized()

    async def guarded(work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await work()
        except ApiError as error:
            return _error_response(error)
        except Exception:
            logger.exception("emulator request failed")
            return _error_response(errors.internal_error("the emulator failed on this request"))

    async def session_operation(
        request: Request,
        app_id: str,
        session_id: str,
        parse: Callable[[object, str], M],
        operation: Callable[[Session, M], Awaitable[JsonModel]],
    ) -> Response:
        """The shape of every session operation with a body: authorize, find the session, parse, run."""

        async def work() -> Response:
            authorize(request, app_id)
            session = emulator.session(app_id, session_id)
            body = parse_model(await read_json(request, required=True), parse)
            return _json(await operation(session, body))

        return await guarded(work)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = EmulatorCode.NOT_FOUND if exc.status_code == 404 else "invalid_request"
        text = "no such endpoint" if exc.status_code == 404 else f"HTTP {exc.status_code}"
        return _error_response(ApiError(exc.status_code, code, text))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, _exc: RequestValidationError) -> Response:
        return _error_response(errors.decoding_error("the request could not be decoded"))

    prefix = f"{API_PREFIX}/apps/{{app_id}}/sessions"

    @app.post(f"{prefix}/new")
    async def new_session(request: Request, app_id: str) -> Response:
        async def work() -> Response:
            authorize(request, app_id)
            thirdparty = _query_bool(request, "thirdparty")
            _correlation_id(request)  # checked, then only a diagnostic label: nothing stores it
            doc = await read_json(request, required=False)
            body = parse_model(doc, NewSessionRequest.from_json) if doc is not None else NewSessionRequest()
            response = await emulator.new_session(app_id, thirdparty=bool(thirdparty), request=body)
            return _json(response, 201)

        return await guarded(work)

    @app.post(f"{prefix}/{{session_id}}/tracks/new")
    async def new_tracks(request: Request, app_id: str, session_id: str) -> Response:
        return await session_operation(
            request, app_id, session_id, TracksRequest.from_json, emulator.new_tracks
        )

    @app.put(f"{prefix}/{{session_id}}/renegotiate")
    async def renegotiate(request: Request, app_id: str, session_id: str) -> Response:
        return await session_operation(
            request, app_id, session_id, RenegotiateRequest.from_json, emulator.renegotiate
        )

    @app.put(f"{prefix}/{{session_id}}/tracks/close")
    async def close_tracks(request: Request, app_id: str, session_id: str) -> Response:
        return await session_operation(
            request, app_id, session_id, CloseTracksRequest.from_json, emulator.close_tracks
        )

    @app.put(f"{prefix}/{{session_id}}/tracks/update")
    async def update_tracks(request: Request, app_id: str, session_id: str) -> Response:
        return await session_operation(
            request, app_id, session_id, UpdateTracksRequest.from_json, emulator.update_tracks
        )

    @app.get(f"{prefix}/{{session_id}}")
    async def get_session(request: Request, app_id: str, session_id: str) -> Response:
        async def work() -> Response:
            authorize(request, app_id)
            return _json(emulator.get_session(emulator.session(app_id, session_id)))

        return await guarded(work)

    @app.api_route(f"{prefix}/{{session_id}}/datachannels/{{action}}", methods=["POST", "PUT"])
    async def datachannels(request: Request, app_id: str, session_id: str, action: str) -> Response:
        async def work() -> Response:
            authorize(request, app_id)
            emulator.session(app_id, session_id)
            raise ApiError(501, EmulatorCode.NOT_EMULATED, "data channels are not emulated")

        return await guarded(work)

    @app.post(f"{API_PREFIX}/apps/{{app_id}}/adapters/websocket/{{action}}")
    async def adapters(request: Request, app_id: str, action: str) -> Response:
        async def work() -> Response:
            authorize(request, app_id)
            raise ApiError(501, EmulatorCode.NOT_EMULATED, "WebSocket adapters are not emulated")

        return await guarded(work)

    turn_prefix = f"{API_PREFIX}/turn/keys/{{key_id}}/credentials"

    @app.post(f"{turn_prefix}/generate-ice-servers")
    async def generate_ice_servers(request: Request, key_id: str) -> Response:
        async def work() -> Response:
            turn.authorize(key_id, bearer(request))
            body = parse_model(await read_json(request, required=True), GenerateIceServersRequest.from_json)
            return _json(turn.generate(key_id, body), 201)

        return await guarded(work)

    @app.post(f"{turn_prefix}/{{username}}/revoke")
    async def revoke(request: Request, key_id: str, username: str) -> Response:
        async def work() -> Response:
            turn.authorize(key_id, bearer(request))
            turn.revoke(key_id, username)
            return Response(status_code=204)

        return await guarded(work)

    @app.get(STATE_PATH)
    async def state(request: Request) -> Response:
        """The emulator's introspection (any configured app secret): for the local stack and benchmarks."""

        async def work() -> Response:
            token = bearer(request)
            if token is None or not any(
                hmac.compare_digest(token.encode(), secret.reveal().encode())
                for secret in config.apps.values()
            ):
                raise errors.unauthorized()
            doc: dict[str, Any] = {
                "state": asdict(emulator.introspect()),
                "forwarding": asdict(emulator.forwarding_stats()),
                "turn_credentials": turn.live_credentials(),
                "process_cpu_s": time.process_time(),
            }
            if request.query_params.get("reset") == "true":
                emulator.forwarder.reset()
            return JSONResponse(doc)

        return await guarded(work)

    return app
