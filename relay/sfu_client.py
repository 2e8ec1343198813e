"""Async transport for the Cloudflare Realtime SFU and TURN APIs over httpx, with bounded retries.

Request building and response parsing live in the contract (splitrelay.contract.sfu_http and .turn), the
retry loop too (splitrelay.contract.retry), all shared with the Worker; this module only sends the bytes
and reads a bounded body. The app secret and TURN token exist only inside the Authorization header.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Self, TypeVar

import httpx

from splitrelay.contract.api_error import ErrorCode, SfuApiError
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.retry import RetryPolicy, call_with_retries
from splitrelay.contract.safety import Secret, check_base_url, clean_text
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    CloseTracksResponse,
    GetSessionStateResponse,
    NewSessionRequest,
    NewSessionResponse,
    RenegotiateRequest,
    RenegotiateResponse,
    SessionDescription,
    TracksRequest,
    TracksResponse,
    UpdateTracksRequest,
    UpdateTracksResponse,
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
    parse_close_tracks,
    parse_get_session,
    parse_new_session,
    parse_new_tracks,
    parse_renegotiate,
    parse_update_tracks,
)
from splitrelay.contract.turn import (
    IceServersResponse,
    TurnKey,
    build_generate_ice_servers,
    build_revoke_credential,
    parse_generate_ice_servers,
    parse_revoke,
)
from splitrelay.relay.http_guard import CLIENT_KEEP_ALIVE_S

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger("splitrelay.relay.sfu_client")

DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
MAX_REQUEST_TIMEOUT_S: Final = 120.0
# Failures after which the same request may well succeed; anything else httpx raises is a bug or a
# misconfiguration (bad scheme, invalid header) and is not retried.
_TRANSIENT: Final = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class ApiTransport:
    """Executes sans-IO requests against one API base URL: one shared retry loop for SFU and TURN."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        if isinstance(request_timeout, bool) or not isinstance(request_timeout, int | float):
            raise SchemaError("request_timeout", "expected a number of seconds")
        if not 0 < request_timeout <= MAX_REQUEST_TIMEOUT_S:
            raise SchemaError("request_timeout", f"must be in (0, {MAX_REQUEST_TIMEOUT_S:g}] seconds")
        self.base_url = check_base_url(base_url)
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=request_timeout, limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE_S)
        )
        self._retry = retry if retry is not None else RetryPolicy()
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._request_timeout = float(request_timeout)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def call(self, request: HttpRequest, parse: Callable[[int, bytes], T]) -> T:
        """Send ``request`` until ``parse`` accepts a response or the retry policy gives up."""

        def log_retry(error: SfuApiError, attempt: int, delay: float) -> None:
            log.warning(
                "%s %s failed (%s); attempt %d of %d in %.2f s",
                request.method,
                request.path,
                error,
                attempt + 1,
                self._retry.max_attempts,
                delay,
            )

        return await call_with_retries(
            lambda: self._send_once(request),
            parse,
            self._retry,
            clock=asyncio.get_running_loop().time,
            sleep=self._sleep,
            rng=self._rng,
            on_retry=log_retry,
        )

    async def _send_once(self, request: HttpRequest) -> tuple[int, str | None, bytes]:
        http_request = self._http.build_request(
            request.method,
            request.url(self.base_url),
            headers=request.header_dict(),
            content=request.body_bytes,
        )
        try:
            async with asyncio.timeout(self._request_timeout):
                # Never follow redirects, even on a caller's client: the bearer header would go along.
                response = await self._http.send(http_request, stream=True, follow_redirects=False)
                try:
                    body = await _read_bounded(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise SfuApiError(
                0, ErrorCode.CONNECTION_ERROR, f"no complete response in {self._request_timeout:g} s", True
            ) from None
        except _TRANSIENT as exc:
            raise _transport_error(exc, retryable=True) from exc
        except httpx.HTTPError as exc:
            raise _transport_error(exc, retryable=False) from exc
        return response.status_code, response.headers.get("retry-after"), body


def _transport_error(exc: httpx.HTTPError, *, retryable: bool) -> SfuApiError:
    detail = clean_text(str(exc), 120) or "no detail"
    return SfuApiError(0, ErrorCode.CONNECTION_ERROR, f"{type(exc).__name__}: {detail}", retryable)


async def _read_bounded(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise SfuApiError(
                response.status_code,
                ErrorCode.INVALID_RESPONSE,
                f"body exceeds {MAX_BODY_BYTES} bytes",
                False,
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _secret(value: str | Secret, field: str) -> Secret:
    return value if isinstance(value, Secret) else Secret(value, field=field)


class _Client:
    """Shared lifetime plumbing: close the transport (and the httpx client, if it made one)."""

    _transport: ApiTransport

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SfuClient(_Client):
    """The Realtime SFU API for one app: sessions, tracks, renegotiation (the relay's SFU attach mode)."""

    def __init__(
        self,
        base_url: str,
        app_id: str,
        app_secret: str | Secret,
        *,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self._app = SfuApp(app_id, _secret(app_secret, "app_secret"))
        self._transport = ApiTransport(
            base_url, http=http, retry=retry, rng=rng, sleep=sleep, request_timeout=request_timeout
        )

    @property
    def app_id(self) -> str:
        return self._app.app_id

    def __repr__(self) -> str:
        return f"SfuClient(base_url={self._transport.base_url!r}, app_id={self._app.app_id!r})"

    async def new_session(
        self,
        *,
        thirdparty: bool | None = None,
        correlation_id: str | None = None,
        session_description: SessionDescription | None = None,
    ) -> NewSessionResponse:
        request = build_new_session(
            self._app,
            thirdparty=thirdparty,
            correlation_id=correlation_id,
            request=NewSessionRequest(session_description=session_description),
        )
        return await self._transport.call(request, parse_new_session)

    async def new_tracks(self, session_id: str, request: TracksRequest) -> TracksResponse:
        built = build_new_tracks(self._app, session_id, request)
        return await self._transport.call(built, parse_new_tracks)

    async def renegotiate(
        self, session_id: str, session_description: SessionDescription
    ) -> RenegotiateResponse:
        built = build_renegotiate(
            self._app, session_id, RenegotiateRequest(session_description=session_description)
        )
        return await self._transport.call(built, parse_renegotiate)

    async def close_tracks(self, session_id: str, request: CloseTracksRequest) -> CloseTracksResponse:
        built = build_close_tracks(self._app, session_id, request)
        return await self._transport.call(built, parse_close_tracks)

    async def update_tracks(self, session_id: str, request: UpdateTracksRequest) -> UpdateTracksResponse:
        built = build_update_tracks(self._app, session_id, request)
        return await self._transport.call(built, parse_update_tracks)

    async def get_session(self, session_id: str) -> GetSessionStateResponse:
        built = build_get_session(self._app, session_id)
        return await self._transport.call(built, parse_get_session)


class TurnClient(_Client):
    """Cloudflare TURN credentials for one TURN key: mint short-lived ``iceServers`` and revoke them."""

    def __init__(
        self,
        base_url: str,
        key_id: str,
        api_token: str | Secret,
        *,
        http: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self._key = TurnKey(key_id, _secret(api_token, "api_token"))
        self._transport = ApiTransport(
            base_url, http=http, retry=retry, rng=rng, sleep=sleep, request_timeout=request_timeout
        )

    def __repr__(self) -> str:
        return f"TurnClient(base_url={self._transport.base_url!r}, key_id={self._key.key_id!r})"

    async def generate_ice_servers(self, ttl: int) -> IceServersResponse:
        return await self._transport.call(
            build_generate_ice_servers(self._key, ttl), parse_generate_ice_servers
        )

    async def revoke(self, username: str) -> None:
        await self._transport.call(build_revoke_credential(self._key, username), parse_revoke)
