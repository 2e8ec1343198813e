"""The edge driven in process for the fuzz targets: ``EdgeApp.handle`` over the unit tests' in-memory
SFU, TURN and relays (tests/edge_support.py), as tests/unit/test_edge_app.py drives it.

The oracle for every edge input: a status below 500, a JSON body, and for a refusal the edge's error shape
with a code and a message that names the problem. Rate limits are set out of reach so that inputs get
past them; background work (relay wiring) runs to completion after each input.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, Final

from splitrelay.devtools.local_edge import LocalRecords
from splitrelay.edge import tokens
from splitrelay.edge.app import EdgeApp, build_app
from splitrelay.edge.ratelimit import TokenBucket
from splitrelay.edge.web import EdgeRequest, EdgeResponse
from tests.edge_support import API_KEY, TOKEN_KEY, FakeUpstream, browser_offer, edge_env, no_secret_in

NOW: Final = 1_800_000_000.0
PARIS: Final = {"latitude": "48.85", "longitude": "2.35", "continent": "EU", "country": "FR", "colo": "CDG"}
REBUILD_EVERY: Final = 2000
"""Inputs per app: a fresh one after that, so a long run's memory stays flat (calls pile up otherwise)."""


class EdgeFuzz:
    """One edge app and a live call of ``alice``'s to aim PATCH/GET/DELETE at."""

    def __init__(self) -> None:
        self.uses = 0
        self.app: EdgeApp | None = None
        self.call_id = "c-none"
        self.background: list[Coroutine[Any, Any, None]] = []
        self.token = tokens.issue(TOKEN_KEY.encode(), "alice", ("calls",), now=NOW, ttl_s=3600)[0]

    def _defer(self, coro: Coroutine[Any, Any, None]) -> None:
        self.background.append(coro)

    async def _fresh(self) -> EdgeApp:
        self.upstream = FakeUpstream()
        app = build_app(
            edge_env(),
            fetch=self.upstream,
            records=LocalRecords(clock=lambda: NOW),
            defer=self._defer,
            ip_limiter=TokenBucket(rate=1e6, burst=1e6),
            token_limiter=TokenBucket(rate=1e6, burst=1e6),
            clock=lambda: NOW,
        )
        self.app = app
        body = json.dumps({"offer": {"type": "offer", "sdp": browser_offer()}}).encode()
        created = await self.send(
            EdgeRequest(
                "POST", "/v1/calls", headers=self.headers(), body=body, client_ip="198.51.100.7", cf=PARIS
            )
        )
        assert created.status == 201, created.body
        self.call_id = created.json()["call_id"]
        return app

    def headers(
        self, authorization: str | None = "default", content_type: str | None = "application/json"
    ) -> dict[str, str]:
        headers: dict[str, str] = {}
        if authorization is not None:
            value = f"Bearer {self.token}" if authorization == "default" else authorization
            headers["authorization"] = header_value(value)
        if content_type is not None:
            headers["content-type"] = header_value(content_type)
        return headers

    async def send(self, request: EdgeRequest) -> EdgeResponse:
        assert self.app is not None
        response = await self.app.handle(request)
        while self.background:  # bounded: each relay wiring defers at most a few steps
            await asyncio.wait_for(self.background.pop(0), timeout=5)
        return response

    async def request(self, request: EdgeRequest, what: str) -> EdgeResponse:
        """Send one fuzz input and check the oracle; ``what`` describes the input for the failure message."""
        if self.app is None or self.uses >= REBUILD_EVERY:
            self.uses = 0
            await self._fresh()
        self.uses += 1
        response = await self.send(request)
        check_response(response, what)
        return response


def check_response(response: EdgeResponse, what: str) -> None:
    assert response.status < 500, f"HTTP {response.status} {response.body[:300]!r} <- {what}"
    if response.status == 204:
        return
    try:
        doc = response.json()
    except ValueError:
        raise AssertionError(
            f"HTTP {response.status}: body is not JSON {response.body[:200]!r} <- {what}"
        ) from None
    assert isinstance(doc, dict), f"HTTP {response.status}: body is not an object <- {what}"
    if response.status >= 400:
        error = doc.get("error")
        assert isinstance(error, dict), f"HTTP {response.status}: no error object {doc!r} <- {what}"
        assert isinstance(error.get("code"), str) and error["code"], f"no error code {doc!r} <- {what}"
        message = error.get("message")
        assert isinstance(message, str) and len(message) >= 8, (
            f"no message naming the problem {doc!r} <- {what}"
        )
    assert no_secret_in(response.body), f"a secret in the response <- {what}"


def header_value(text: str) -> str:
    """What a header can carry as the Worker and our servers see it: bytes (a client's UTF-8, say) read as
    latin-1, no NUL, CR or LF, no surrounding whitespace (h11 and the Fetch API refuse or trim those)."""
    latin = text.encode("utf-8", "surrogatepass").decode("latin-1")
    return latin.replace("\x00", "").replace("\r", "").replace("\n", "").strip(" \t")


def describe(request: EdgeRequest) -> str:
    headers = {k: (v[:200] + "..." if len(v) > 200 else v) for k, v in request.headers.items()}
    return f"{request.method} {request.path[:200]!r} headers={headers!r} body={request.body[:400]!r}"


API_KEY_HEADER: Final = f"Bearer {API_KEY}"
