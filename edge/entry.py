"""The Cloudflare Python Worker: adapts ``workers`` Request/Response/env to edge/app.py, nothing more.

wrangler uploads edge/ as the bundle's root (module names relative to this file's folder: ``entry.py``,
``app.py``, ``contract/signing.py``...), so in the Worker this module is the top-level ``entry`` and the
``splitrelay.edge`` and ``splitrelay.contract`` packages do not exist until :func:`_mount_packages`
registers them. On CPython (tests) they are installed packages and nothing is mounted. Only this module
imports ``workers`` and ``js``.

- ``Default`` (``WorkerEntrypoint``): every request that is not a static asset.
- ``CallRecordObject`` (``DurableObject``): one per call; its record and alarm (edge/call_record.py).
- ``RelayWatchObject`` (``DurableObject``): one per relay; its heartbeats and liveness alarm
  (edge/relay_watch.py). Optional: without the ``RELAY_WATCH`` binding relay heartbeats answer 503.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import json
import os
import sys
import types
from typing import Any
from urllib.parse import urlsplit


def _mount_packages() -> None:
    """Make ``import splitrelay.edge.x`` and ``splitrelay.contract.x`` load what wrangler uploaded.

    wrangler uploads this folder as the bundle's root (``entry.py``, ``app.py``, ``contract/...``), so the
    Worker has no ``splitrelay`` package: this registers an empty ``splitrelay`` and mounts this folder
    as ``splitrelay.edge`` and ``contract/`` as ``splitrelay.contract`` (docs/edge.md, "Bundle").
    """
    if "splitrelay.edge" in sys.modules or __package__:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    root = types.ModuleType("splitrelay")
    root.__path__ = []
    sys.modules.setdefault("splitrelay", root)
    for name, folder in (("splitrelay.contract", os.path.join(here, "contract")), ("splitrelay.edge", here)):
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot mount {name} from {folder}")
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)


_mount_packages()

import js  # noqa: E402
from pyodide.ffi import to_js  # noqa: E402
from workers import DurableObject, Response, WorkerEntrypoint  # noqa: E402

from splitrelay.edge.app import EdgeApp, build_app  # noqa: E402
from splitrelay.edge.call_record import CallObject  # noqa: E402
from splitrelay.edge.calls import FetchError, Inbound, Outbound, run_alarm, run_relay_alarm  # noqa: E402
from splitrelay.edge.config import SECRET_NAMES, VAR_NAMES, ConfigError, load_config  # noqa: E402
from splitrelay.edge.relay_watch import RelayWatch  # noqa: E402
from splitrelay.edge.web import EdgeError, EdgeRequest, EdgeResponse, check_body_size  # noqa: E402

CALLS_BINDING = "CALLS"  # Durable Object namespace (wrangler.toml)
WATCH_BINDING = "RELAY_WATCH"  # Durable Object namespace, one object per relay (optional)
REGISTRY_BINDING = "RELAY_REGISTRY"  # KV namespace: key "relays" overrides the RELAYS var
IP_LIMIT_BINDING = "IP_RATE_LIMIT"  # Rate Limiting bindings
TOKEN_LIMIT_BINDING = "TOKEN_RATE_LIMIT"
CF_KEYS = ("latitude", "longitude", "continent", "country", "colo", "region")
BODY_METHODS = ("POST", "PATCH", "PUT")
_FROM_ENTRIES = js.Object.fromEntries  # Python dict -> plain JS object, for to_js

_current_ctx: contextvars.ContextVar[Any] = contextvars.ContextVar("ctx")
# One app per isolate (its relay registry and TURN caches live on); rebuilt only if the env's settings
# change. ``_cached_env`` is the JS env object it was built from: the same object means the same
# settings, which spares reading every variable through the SDK on each request.
_cached: tuple[dict[str, str], EdgeApp] | None = None
_cached_env: Any = None


def _js(wrapper: Any, attribute: str) -> Any:
    """The JS object under one of the SDK's convenience wrappers, or the wrapper if it has none.

    The SDK wraps every binding so that any Python value can be passed: each call converts its
    arguments and result through generic RPC converters, which cost 2-3 times the call itself in
    Pyodide. The edge passes only strings, numbers and JS objects, so it calls the JS object directly.
    Only the instance attribute is read (never the wrapper's ``__getattr__``, which would look up a
    binding of that name); should an SDK release rename it, the wrapper is used and still works.
    """
    try:
        return object.__getattribute__(wrapper, attribute)
    except AttributeError:
        return wrapper


def _env_strings(env: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in (*VAR_NAMES, *SECRET_NAMES):
        value = getattr(env, name, None)
        if isinstance(value, str):
            values[name] = value
    return values


async def _fetch(request: Outbound) -> Inbound:
    """The platform's ``fetch``, called directly: no redirects (a bearer header must not travel), the
    timeout as an ``AbortSignal``, only the header we read (Retry-After) brought into Python."""
    options: dict[str, Any] = {
        "method": request.method,
        "headers": dict(request.headers),
        "redirect": "manual",
        "signal": js.AbortSignal.timeout(int(request.timeout_s * 1000)),
    }
    if request.body is not None:
        options["body"] = request.body.decode("utf-8")
    try:
        response = await js.fetch(request.url, to_js(options, dict_converter=_FROM_ENTRIES))
        payload = (await response.arrayBuffer()).to_bytes()
    except Exception as exc:  # JsException: network failure, abort on timeout
        raise FetchError(f"{type(exc).__name__} on {request.method} {urlsplit(request.url).path}") from None
    retry_after = response.headers.get("retry-after")
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    return Inbound(int(response.status), headers, bytes(payload))


class _DurableRecords:
    """Record commands as JSON over Durable Object RPC: ``stub.dispatch(text) -> text``."""

    def __init__(self, namespace: Any) -> None:
        self.namespace = _js(namespace, "_binding")

    async def send(self, call_id: str, command: dict[str, Any]) -> dict[str, Any]:
        stub = self.namespace.get(self.namespace.idFromName(call_id))
        reply = await stub.dispatch(json.dumps(command, separators=(",", ":")))
        result: dict[str, Any] = json.loads(str(reply))
        return result


class _DurableWatches:
    """Relay liveness commands as JSON over Durable Object RPC, one object per relay id."""

    def __init__(self, namespace: Any) -> None:
        self.namespace = _js(namespace, "_binding")

    async def send(self, relay_id: str, command: dict[str, Any]) -> dict[str, Any]:
        stub = self.namespace.get(self.namespace.idFromName(relay_id))
        reply = await stub.dispatch(json.dumps(command, separators=(",", ":")))
        result: dict[str, Any] = json.loads(str(reply))
        return result


class _BindingLimiter:
    """Cloudflare's Rate Limiting binding; an absent binding means no limit of that kind."""

    def __init__(self, binding: Any) -> None:
        self.binding = None if binding is None else _js(binding, "_binding")

    async def allow(self, key: str) -> bool:
        if self.binding is None:
            return True
        outcome = await self.binding.limit(to_js({"key": key}, dict_converter=_FROM_ENTRIES))
        success = outcome.get("success") if isinstance(outcome, dict) else getattr(outcome, "success", None)
        return bool(success)


def _defer(coro: Any) -> None:
    """Run after the response: ``ctx.waitUntil`` keeps the isolate alive until the task is done."""
    _current_ctx.get().waitUntil(asyncio.ensure_future(coro))


def _app(env: Any) -> EdgeApp:
    global _cached, _cached_env
    js_env = _js(env, "_env")
    if _cached is not None and js_env is not env and _same_js_object(js_env, _cached_env):
        return _cached[1]
    settings = _env_strings(env)
    _cached_env = js_env if js_env is not env else None
    if _cached is None or _cached[0] != settings:
        kv = getattr(env, REGISTRY_BINDING, None)

        async def registry_loader() -> str | None:
            if kv is None:
                return None
            value = await kv.get("relays")
            return value if isinstance(value, str) else None

        watch_namespace = getattr(env, WATCH_BINDING, None)
        app = build_app(
            settings,
            fetch=_fetch,
            records=_DurableRecords(getattr(env, CALLS_BINDING)),
            watches=None if watch_namespace is None else _DurableWatches(watch_namespace),
            defer=_defer,
            ip_limiter=_BindingLimiter(getattr(env, IP_LIMIT_BINDING, None)),
            token_limiter=_BindingLimiter(getattr(env, TOKEN_LIMIT_BINDING, None)),
            registry_loader=registry_loader,
        )
        _cached = (settings, app)
    return _cached[1]


def _cf(request: Any) -> dict[str, object]:
    try:
        cf = request.cf
    except AttributeError:  # a JS undefined ``cf`` (previews, requests built by hand) raises here
        return {}
    if cf is None:
        return {}
    values: dict[str, object] = {}
    for key in CF_KEYS:
        value = getattr(cf, key, None)
        if isinstance(value, str | int | float):
            values[key] = value
    return values


def _same_js_object(a: Any, b: Any) -> bool:
    """JS identity of two proxies (each access makes a new proxy; ``==`` on proxies is JS ``===``)."""
    return a is not None and b is not None and bool(a == b)


async def _edge_request(request: Any) -> EdgeRequest:
    # Straight from the JS Request: the SDK's ``headers`` builds an email.message per request, and its
    # ``bytes()`` adds a coroutine layer; the Fetch API already gives lower-case names, trimmed values.
    js_request = request.js_object
    method = str(js_request.method).upper()
    headers = {str(key): str(value) for key, value in js_request.headers}
    body = b""
    if method in BODY_METHODS:
        check_body_size(headers.get("content-length"))
        body = (await js_request.arrayBuffer()).to_bytes()
    url = urlsplit(str(js_request.url))
    return EdgeRequest(
        method=method,
        path=url.path,
        query=url.query,
        headers=headers,
        body=body,
        client_ip=headers.get("cf-connecting-ip", ""),
        cf=_cf(request),
    )


def _response(response: EdgeResponse) -> Any:
    """The JS Response, built in one conversion and handed back in the SDK's wrapper.

    Text, not bytes: every edge body is UTF-8 JSON, and a str crosses into JS in one copy where bytes
    go through a buffer proxy; no body at all for a 204 (the Fetch API refuses one). The SDK's own
    constructor would also pass the headers as a Python list for JS to iterate item by item.
    """
    body = response.body.decode("utf-8") if response.body else None
    init = to_js(
        {"status": response.status, "headers": [list(pair) for pair in response.headers]},
        dict_converter=_FROM_ENTRIES,
    )
    return Response(js.Response.new(body, init))


class Default(WorkerEntrypoint):  # type: ignore[misc]
    async def fetch(self, request: Any) -> Any:
        _current_ctx.set(self.ctx)
        try:
            app = _app(self.env)
            edge_request = await _edge_request(request)
            response = await app.handle(edge_request)
        except ConfigError as exc:
            response = exc.edge_error().response()
        except EdgeError as exc:
            response = exc.response()
        return _response(response)


class CallRecordObject(DurableObject):  # type: ignore[misc]
    """One call's record; its alarm closes the call when abandoned or over time."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        self.logic = CallObject(_DurableStorage(_js(ctx.storage, "_binding")))

    async def dispatch(self, command: str) -> str:
        reply = await self.logic.dispatch(json.loads(command))
        return json.dumps(reply, separators=(",", ":"))

    async def alarm(self, *_info: Any) -> None:
        _current_ctx.set(self.ctx)
        await run_alarm(self.logic, _app(self.env).calls)


class RelayWatchObject(DurableObject):  # type: ignore[misc]
    """One relay's liveness: its heartbeats, and the alarm that finds it silent (edge/relay_watch.py)."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        timeout = load_config(_env_strings(env)).relay_liveness_timeout_s
        self.logic = RelayWatch(_DurableStorage(_js(ctx.storage, "_binding")), timeout_s=timeout)

    async def dispatch(self, command: str) -> str:
        reply = await self.logic.dispatch(json.loads(command))
        return json.dumps(reply, separators=(",", ":"))

    async def alarm(self, *_info: Any) -> None:
        _current_ctx.set(self.ctx)
        await run_relay_alarm(self.logic, _app(self.env).calls)


class _DurableStorage:
    """``ctx.storage`` (JS Durable Object storage) as edge/call_record.py's RecordStorage."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    async def get(self, key: str) -> str | None:
        value = await self.storage.get(key)
        return value if isinstance(value, str) else None

    async def put(self, key: str, value: str) -> None:
        await self.storage.put(key, value)

    async def set_alarm(self, at_ms: float) -> None:
        await self.storage.setAlarm(at_ms)

    async def delete_alarm(self) -> None:
        await self.storage.deleteAlarm()

    async def delete_all(self) -> None:
        # deleteAll() leaves the alarm in place (Cloudflare's docs): delete it first, then every key.
        await self.storage.deleteAlarm()
        await self.storage.deleteAll()
