"""Shared helpers for the emulator's tests: a config with fast timers, spec checks on every response.

``SpecCheck`` is an httpx response hook: every response the emulator gives to a test's SfuClient is
validated against the Cloudflare spec (success bodies against the operation's schema, error bodies
against the spec's error shape), so conformance is checked on all traffic, not on a sample.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import httpx

from splitrelay.contract.safety import Secret
from splitrelay.emulator.config import EmulatorConfig, Limits, Timers
from splitrelay.emulator.emulator import Emulator
from tests import spec

APP_ID = "emulator-test-app"
APP_SECRET = "emulator-test-secret-0123456789"
TURN_KEY_ID = "emulator-test-turn-key"
TURN_TOKEN = "emulator-test-turn-token-0123456789"

FAST_TIMERS = Timers(
    track_idle_timeout=30.0, reconnect_window=30.0, connect_wait=2.0, unconnected_session_ttl=60.0
)

SFU_OPERATIONS: tuple[tuple[str, str], ...] = (
    ("POST", "/apps/{appId}/sessions/new"),
    ("POST", "/apps/{appId}/sessions/{sessionId}/tracks/new"),
    ("PUT", "/apps/{appId}/sessions/{sessionId}/renegotiate"),
    ("PUT", "/apps/{appId}/sessions/{sessionId}/tracks/close"),
    ("PUT", "/apps/{appId}/sessions/{sessionId}/tracks/update"),
    ("GET", "/apps/{appId}/sessions/{sessionId}"),
)


def emulator_config(timers: Timers = FAST_TIMERS, limits: Limits | None = None) -> EmulatorConfig:
    return EmulatorConfig(
        apps={APP_ID: Secret(APP_SECRET)},
        turn_keys={TURN_KEY_ID: Secret(TURN_TOKEN)},
        port=0,
        rtcp_interval=0.2,
        timers=timers,
        limits=limits or Limits(),
    )


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^/v1" + re.sub(r"\\\{[A-Za-z]+\\\}", "[^/]+", re.escape(template)) + "$")


_ROUTES = [(method, _template_regex(path), path) for method, path in SFU_OPERATIONS]


def operation_for(method: str, path: str) -> str | None:
    """The spec's templated path for a request path under /v1 (sessions/new before {sessionId})."""
    for op_method, pattern, template in _ROUTES:
        if op_method == method and pattern.match(path):
            return template
    return None


def check_response(method: str, path: str, status: int, body: bytes) -> dict[str, Any] | None:
    """Validate one emulator response against the spec; raise AssertionError naming what is wrong."""
    if status == 204:
        assert not body, f"{method} {path}: 204 with a body"
        return None
    doc = json.loads(body)
    assert isinstance(doc, dict), f"{method} {path}: body is not an object"
    if status >= 400:
        problems = spec.errors(doc, {"$ref": "#/components/schemas/AdapterRequestError"})
        assert not problems, f"{method} {path} -> {status}: error body breaks the spec's shape: {problems}"
        return doc
    template = operation_for(method, path)
    if template is None:
        return doc  # TURN and the emulator's own paths: the spec has no schema for them
    problems = spec.errors(doc, spec.response_schema(method, template, status))
    assert not problems, f"{method} {template} -> {status}: {problems}"
    return doc


class SpecCheck:
    """Response hook validating everything; counts checked responses so a test can assert it ran."""

    def __init__(self) -> None:
        self.checked = 0
        self.statuses: list[int] = []

    async def __call__(self, response: httpx.Response) -> None:
        body = await response.aread()
        check_response(response.request.method, response.request.url.path, response.status_code, body)
        self.checked += 1
        self.statuses.append(response.status_code)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"response": [self]}, timeout=10.0, **kwargs)


def media_ready(emulator: Emulator, *session_ids: str) -> bool:
    """The emulator's side of these sessions is connected and every subscription has its stream."""
    for session_id in session_ids:
        session = emulator.sessions.get(session_id)
        if session is None or session.peer is None or session.peer.fast_path is None:
            return False
        if any(sub.stream is None for sub in session.subscriptions.values()):
            return False
    return True


async def eventually(check: Callable[[], bool], what: str, *, within: float = 5.0) -> None:
    """Poll ``check`` every 20 ms, at most ``within`` seconds."""
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {within} s: {what}")
