"""TURN credentials shared within an isolate (edge/ice.py): the lifetime rule, and what the routes send.

The rule under test: a caller never gets credentials with less than ``TURN_TTL_S`` left; they are minted
for 1.5x that (capped at 48 h) and reused until only ``TURN_TTL_S`` remain; failures are not kept.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from splitrelay.contract.turn import MAX_TTL_S
from splitrelay.devtools.local_edge import LocalRecords
from splitrelay.edge import tokens
from splitrelay.edge.app import EdgeApp, build_app
from splitrelay.edge.calls import Inbound
from splitrelay.edge.ice import IceServers, TurnCache, mint_ttl_s
from splitrelay.edge.ratelimit import TokenBucket
from splitrelay.edge.web import EdgeRequest, EdgeResponse
from tests.edge_support import TOKEN_KEY, FakeUpstream, browser_offer, edge_env

T0 = 1_800_000_000.0


def test_mint_ttl_adds_half_and_stays_within_48_hours() -> None:
    assert mint_ttl_s(600) == 900
    assert mint_ttl_s(1) == 1  # no room for a window: every caller mints
    assert mint_ttl_s(MAX_TTL_S) == MAX_TTL_S
    assert mint_ttl_s(40 * 3600) == MAX_TTL_S  # 40 h + 20 h would pass Cloudflare's maximum


def test_cache_hands_out_credentials_only_while_the_guaranteed_lifetime_remains() -> None:
    cache = TurnCache(600)
    assert cache.get(T0) is None
    servers = [{"urls": ["turn:turn.example:3478"], "username": "u", "credential": "c"}]
    minted = cache.put(servers, requested_at=T0)
    assert minted.expires_at == T0 + 900
    assert cache.get(T0 + 300) is minted and minted.ttl_s(T0 + 300) == 600
    assert minted.ttl_s(T0 + 299.5) == 600  # whole seconds, rounded down: never more than is left
    assert cache.get(T0 + 300.001) is None  # less than TURN_TTL_S left: mint again
    assert cache.get(T0) is None  # and the stale credentials are gone for good


def test_no_reuse_at_the_48_hour_maximum() -> None:
    cache = TurnCache(MAX_TTL_S)
    minted = cache.put([{"urls": ["turn:x"]}], requested_at=T0)
    assert minted.ttl_s(T0) == MAX_TTL_S
    assert cache.get(T0 + 1) is None


def test_bad_lifetime_is_refused_naming_the_limit() -> None:
    with pytest.raises(ValueError, match="min_lifetime_s: must be 1 to 172800 seconds, got 0"):
        TurnCache(0)


def test_stun_only_has_no_ttl() -> None:
    assert IceServers([{"urls": ["stun:stun.cloudflare.com:3478"]}]).ttl_s(T0) is None


class Edge:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.now = T0
        self.upstream = FakeUpstream()
        self.records = LocalRecords(clock=lambda: self.now)
        self.app: EdgeApp = build_app(
            env or edge_env(),
            fetch=self.upstream,
            records=self.records,
            defer=lambda coro: coro.close(),  # the relay attach is not what these tests are about
            ip_limiter=TokenBucket(rate=100, burst=100),
            token_limiter=TokenBucket(rate=100, burst=100),
            clock=lambda: self.now,
        )

    async def request(self, method: str, path: str, body: object = None) -> EdgeResponse:
        token = tokens.issue(TOKEN_KEY.encode(), "alice", now=self.now)[0]
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        data = b"" if body is None else json.dumps(body).encode()
        return await self.app.handle(EdgeRequest(method, path, headers=headers, body=data))

    async def call(self) -> dict[str, Any]:
        response = await self.request(
            "POST", "/v1/calls", {"offer": {"type": "offer", "sdp": browser_offer()}}
        )
        assert response.status == 201, response.body
        doc: dict[str, Any] = response.json()
        return doc

    def turn_requests(self) -> list[dict[str, Any]]:
        return [
            json.loads(r.body or b"") for r in self.upstream.sent if r.url.endswith("/generate-ice-servers")
        ]


async def test_calls_in_one_isolate_share_credentials_until_they_must_be_reminted() -> None:
    edge = Edge(edge_env(TURN_TTL_S="600"))
    first = await edge.call()
    second = await edge.call()
    assert edge.turn_requests() == [{"ttl": 900}]
    assert first["ice_servers"] == second["ice_servers"]
    assert any(server.get("username") for server in first["ice_servers"])
    ice = await edge.request("GET", "/v1/ice-servers")
    assert ice.status == 200 and ice.json()["ttl_s"] == 900
    edge.now += 299
    assert (await edge.request("GET", "/v1/ice-servers")).json()["ttl_s"] == 601
    assert len(edge.turn_requests()) == 1
    edge.now += 2  # 599 s would be left: below TURN_TTL_S, so the next caller gets fresh ones
    assert (await edge.request("GET", "/v1/ice-servers")).json()["ttl_s"] == 900
    await edge.call()
    assert edge.turn_requests() == [{"ttl": 900}, {"ttl": 900}]
    await edge.records.aclose()


async def test_a_turn_failure_is_not_kept() -> None:
    edge = Edge()
    edge.upstream.fail["turn"] = Inbound(500, {}, b"{}")
    assert (await edge.call())["ice_servers"] == [{"urls": ["stun:stun.cloudflare.com:3478"]}]
    assert (await edge.request("GET", "/v1/ice-servers")).status == 502
    del edge.upstream.fail["turn"]
    created = await edge.call()
    assert any(server.get("username") for server in created["ice_servers"])
    # TURN retries on 5xx (3 attempts each for the call and the route), then one success.
    assert len(edge.turn_requests()) == 3 + 3 + 1
    await edge.records.aclose()


async def test_without_a_turn_key_there_is_no_request_and_no_ttl() -> None:
    env = edge_env()
    del env["TURN_KEY_ID"], env["TURN_KEY_API_TOKEN"]
    edge = Edge(env)
    created = await edge.call()
    ice = (await edge.request("GET", "/v1/ice-servers")).json()
    assert created["ice_servers"] == ice["ice_servers"] == [{"urls": ["stun:stun.cloudflare.com:3478"]}]
    assert ice["ttl_s"] is None and edge.turn_requests() == []
    await edge.records.aclose()
