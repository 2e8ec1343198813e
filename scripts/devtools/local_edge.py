"""The edge on CPython for the local stack: the same EdgeApp behind an ASGI adapter.

What the Worker gets from Cloudflare, this module gives in-process: outbound HTTP through httpx, one
in-memory :class:`~splitrelay.edge.call_record.CallObject` per call with an asyncio timer for its alarm (the
Durable Object), one in-memory :class:`~splitrelay.edge.relay_watch.RelayWatch` per relay (its
liveness), token buckets for the Rate Limiting bindings, and the static page from edge/static.
There is no ``request.cf`` locally, so relays are chosen in config order. Not imported by the Worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

import httpx

from splitrelay.edge.app import EdgeApp, build_app
from splitrelay.edge.call_record import CallObject, CallState
from splitrelay.edge.calls import FetchError, Inbound, Outbound, run_alarm, run_relay_alarm
from splitrelay.edge.ratelimit import TokenBucket
from splitrelay.edge.relay_watch import DEFAULT_TIMEOUT_S, RelayWatch
from splitrelay.edge.web import MAX_BODY_BYTES, EdgeError, EdgeRequest, EdgeResponse, check_body_size
from splitrelay.relay.http_guard import CLIENT_KEEP_ALIVE_S

log = logging.getLogger("splitrelay.devtools.local_edge")

TOO_LARGE: Final = f"body: must be at most {MAX_BODY_BYTES} bytes"
MAX_STATIC_PATH: Final = 255  # longer than any file under edge/static
STATIC_DIR: Final = Path(str(resources.files("splitrelay.edge").joinpath("static")))  # the web client
MAX_LOCAL_CALLS: Final = 10_000  # closed records beyond this are forgotten, oldest first
MAX_BACKGROUND_TASKS: Final = 10_000


class MemoryStorage:
    """Durable Object storage stand-in: a dict, and an alarm that calls back on this event loop."""

    def __init__(
        self,
        on_alarm: Callable[[], Coroutine[Any, Any, None]],
        clock: Callable[[], float],
        on_emptied: Callable[[], None] = lambda: None,
    ) -> None:
        self.values: dict[str, str] = {}
        self.alarm_at_ms: float | None = None
        self._on_alarm = on_alarm
        self._clock = clock
        self._on_emptied = on_emptied
        self._handle: asyncio.TimerHandle | None = None

    async def get(self, key: str) -> str | None:
        return self.values.get(key)

    async def put(self, key: str, value: str) -> None:
        self.values[key] = value

    async def set_alarm(self, at_ms: float) -> None:
        await self.delete_alarm()
        self.alarm_at_ms = at_ms
        delay = max(0.0, at_ms / 1000.0 - self._clock())
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(delay, lambda: loop.create_task(self._fire()))

    async def _fire(self) -> None:
        self._handle = None
        self.alarm_at_ms = None
        try:
            await self._on_alarm()
        except Exception:
            log.exception("call alarm failed")

    async def delete_alarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.alarm_at_ms = None

    async def delete_all(self) -> None:
        """Every key and the alarm (as ``deleteAll()`` then ``deleteAlarm()`` in the Worker)."""
        self.values.clear()
        await self.delete_alarm()
        self._on_emptied()


class LocalRecords:
    """One CallObject per call id, in memory: what the Durable Object namespace is in the Worker."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.objects: dict[str, CallObject] = {}
        self.alarm_runner: Callable[[CallObject], Coroutine[Any, Any, None]] | None = None

    def object(self, call_id: str) -> CallObject:
        obj = self.objects.get(call_id)
        if obj is None:
            holder: list[CallObject] = []

            async def on_alarm() -> None:
                if self.alarm_runner is not None:
                    await self.alarm_runner(holder[0])

            def emptied() -> None:
                if self.objects.get(call_id) is holder[0]:
                    del self.objects[call_id]  # nothing left of the call: forget the object too

            obj = CallObject(MemoryStorage(on_alarm, self.clock, emptied), self.clock)
            holder.append(obj)
            self.objects[call_id] = obj
            self._forget_closed()
        return obj

    def _forget_closed(self) -> None:
        if len(self.objects) <= MAX_LOCAL_CALLS:
            return
        for call_id, obj in list(self.objects.items()):
            storage = obj.storage
            closed = f'"state":"{CallState.CLOSED}"'
            if isinstance(storage, MemoryStorage) and closed in storage.values.get("call", ""):
                del self.objects[call_id]
                if len(self.objects) <= MAX_LOCAL_CALLS:
                    return

    async def send(self, call_id: str, command: dict[str, Any]) -> dict[str, Any]:
        return await self.object(call_id).dispatch(command)

    async def aclose(self) -> None:
        for obj in self.objects.values():
            if isinstance(obj.storage, MemoryStorage):
                await obj.storage.delete_alarm()


class LocalWatches:
    """One RelayWatch per relay id, in memory: what the relays' Durable Object namespace is in the Worker."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.timeout_s = DEFAULT_TIMEOUT_S
        self.objects: dict[str, RelayWatch] = {}
        self.alarm_runner: Callable[[RelayWatch], Coroutine[Any, Any, None]] | None = None

    def object(self, relay_id: str) -> RelayWatch:
        watch = self.objects.get(relay_id)
        if watch is None:
            holder: list[RelayWatch] = []

            async def on_alarm() -> None:
                if self.alarm_runner is not None:
                    await self.alarm_runner(holder[0])

            watch = RelayWatch(MemoryStorage(on_alarm, self.clock), self.clock, self.timeout_s)
            holder.append(watch)
            self.objects[relay_id] = watch
        return watch

    async def send(self, relay_id: str, command: dict[str, Any]) -> dict[str, Any]:
        return await self.object(relay_id).dispatch(command)

    async def aclose(self) -> None:
        for watch in self.objects.values():
            if isinstance(watch.storage, MemoryStorage):
                await watch.storage.delete_alarm()


class LocalEdge:
    """ASGI app: static files from edge/static, everything else through :meth:`EdgeApp.handle`."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        http: httpx.AsyncClient | None = None,
        static_dir: Path = STATIC_DIR,
        clock: Callable[[], float] = time.time,
        ip_limiter: TokenBucket | None = None,
        token_limiter: TokenBucket | None = None,
    ) -> None:
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=30.0, limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE_S)
        )
        self.static_dir = static_dir.resolve()
        self.records = LocalRecords(clock)
        self.watches = LocalWatches(clock)
        self.tasks: set[asyncio.Task[None]] = set()
        self.app: EdgeApp = build_app(
            env,
            fetch=self.fetch,
            records=self.records,
            defer=self.defer,
            ip_limiter=ip_limiter or TokenBucket(rate=20.0, burst=60.0),
            token_limiter=token_limiter or TokenBucket(rate=10.0, burst=30.0),
            clock=clock,
            watches=self.watches,
        )
        self.records.alarm_runner = self._run_alarm
        self.watches.timeout_s = self.app.config.relay_liveness_timeout_s
        self.watches.alarm_runner = self._run_relay_alarm

    async def _run_alarm(self, obj: CallObject) -> None:
        await run_alarm(obj, self.app.calls)

    async def _run_relay_alarm(self, watch: RelayWatch) -> None:
        await run_relay_alarm(watch, self.app.calls)

    async def fetch(self, request: Outbound) -> Inbound:
        try:
            response = await self.http.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                content=request.body,
                follow_redirects=False,
                timeout=request.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise FetchError(f"{type(exc).__name__} on {request.method}") from None
        return Inbound(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
        )

    def defer(self, coro: Coroutine[Any, Any, None]) -> None:
        """``ctx.waitUntil``: run after the response; tracked so :meth:`aclose` can wait for it."""
        if len(self.tasks) >= MAX_BACKGROUND_TASKS:
            coro.close()
            raise EdgeError(503, "busy", "too many calls being set up; retry shortly", retry_after=1)
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, within: float = 10.0) -> None:
        """Wait (bounded) for background work, e.g. relay attaches, to finish."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=within)

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5.0)
        await self.records.aclose()
        await self.watches.aclose()
        if self._owns_http:
            await self.http.aclose()

    def static(self, path: str) -> EdgeResponse | None:
        """A file under edge/static for GET ``path`` (``/`` is index.html), or None; no path escapes."""
        relative = "index.html" if path in ("/", "") else path.lstrip("/")
        if (
            not relative
            or ".." in relative.split("/")
            or "\x00" in relative
            or len(relative) > MAX_STATIC_PATH
        ):
            return None  # a NUL or an overlong name would make the file system raise: a 404, not a 500
        candidate = (self.static_dir / relative).resolve()
        try:
            if not candidate.is_file() or self.static_dir not in candidate.parents:
                return None
        except OSError:
            return None
        kind = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        return EdgeResponse(
            200, (("content-type", kind), ("cache-control", "no-cache")), candidate.read_bytes()
        )

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        response = await self._respond(scope, receive)
        if response is None:
            return  # the client went away (or its read deadline passed) before its body arrived
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _respond(self, scope: MutableMapping[str, Any], receive: Any) -> EdgeResponse | None:
        method = str(scope["method"]).upper()
        path = str(scope["path"])
        if method == "GET" and not path.startswith("/v1/") and path != "/healthz":
            found = self.static(path)
            if found is not None:
                return found
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            check_body_size(headers.get("content-length"))
            body = await _read_body(receive)
        except EdgeError as exc:
            return exc.response()
        if body is None:
            return None
        client = scope.get("client")
        request = EdgeRequest(
            method=method,
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            client_ip=str(client[0]) if client else "",
        )
        return await self.app.handle(request)


async def _read_body(receive: Any) -> bytes | None:
    """The whole request body, or None if the client disconnected first (never a partial body)."""
    chunks: list[bytes] = []
    size = 0
    for _ in range(MAX_BODY_BYTES + 2):  # bounded: each message carries at least one byte, or ends
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise EdgeError(413, "body_too_large", TOO_LARGE, field="body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def local_edge(env: Mapping[str, str], **kwargs: Any) -> Any:
    """``async with local_edge(env) as edge:`` closes background work and the HTTP client on exit."""
    edge = LocalEdge(env, **kwargs)
    try:
        yield edge
    finally:
        await edge.aclose()
