"""Relay registry and relay choice (edge/relays.py): validation, nearest healthy, fallback order."""

from __future__ import annotations

import json

import pytest

from splitrelay.edge.relays import (
    CachedRegistry,
    CallerLocation,
    NoRelayError,
    RegistryError,
    haversine_km,
    parse_registry,
    rank_relays,
)
from tests.edge_support import RELAYS


def registry(*changes: dict[str, object]) -> str:
    relays = [dict(relay) for relay in RELAYS]
    for relay, change in zip(relays, changes, strict=False):
        relay.update(change)
    return json.dumps({"relays": relays})


def test_haversine_known_distance() -> None:
    # Frankfurt - Washington Dulles is about 6,530 km.
    assert 6450 < haversine_km(50.11, 8.68, 38.95, -77.45) < 6600
    assert haversine_km(10, 10, 10, 10) == 0


def test_cf_strings_choose_the_nearest() -> None:
    where = CallerLocation.from_cf(
        {"latitude": "48.85", "longitude": "2.35", "continent": "EU", "colo": "CDG"}
    )
    choices = rank_relays(parse_registry(registry()), where)
    assert [c.relay.id for c in choices] == ["fra", "iad", "sin"]
    assert choices[0].reason.startswith("chosen: fra: cf latitude/longitude: nearest healthy relay (")
    assert choices[1].reason.startswith("fallback 1: iad")
    assert choices[0].distance_km is not None and 400 < choices[0].distance_km < 600


def test_unhealthy_skipped_and_busy_last() -> None:
    where = CallerLocation.from_cf({"latitude": "48.85", "longitude": "2.35"})
    relays = parse_registry(registry({"health": "draining"}, {"load": 0.95}))
    choices = rank_relays(relays, where)
    assert [c.relay.id for c in choices] == ["sin", "iad"]
    assert "load 0.95 over 0.90" in choices[1].reason


def test_continent_without_coordinates_then_config_order() -> None:
    relays = parse_registry(registry())
    by_continent = rank_relays(relays, CallerLocation.from_cf({"continent": "AS", "latitude": "nan"}))
    assert [c.relay.id for c in by_continent] == ["sin", "fra", "iad"]
    assert "caller continent AS, no coordinates: same continent" in by_continent[0].reason
    local = rank_relays(relays, CallerLocation.from_cf({}))
    assert [c.relay.id for c in local] == ["fra", "iad", "sin"]
    assert local[0].reason == "chosen: fra: no location: first healthy relay in config order"


def test_no_healthy_relay() -> None:
    relays = parse_registry(registry({"health": "down"}, {"health": "down"}, {"health": "draining"}))
    with pytest.raises(NoRelayError, match="no healthy relay"):
        rank_relays(relays, CallerLocation())


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{", "RELAYS: is not valid JSON"),
        ('{"relays": {}}', "RELAYS.relays: expected an array"),
        ('{"relays": []}', "must list 1 to 256 relays"),
        ('[{"control_url": "https://a.test"}]', r"relays\[0\].id: is required"),
        ('[{"id": "a b", "control_url": "https://a.test"}]', r"relays\[0\].id: must be 1 to 64"),
        ('[{"id": "a", "control_url": "http://relay.test"}]', "http:// is allowed only for loopback"),
        ('[{"id": "a", "control_url": "https://a.test?x=1"}]', "no query"),
        (
            '[{"id": "a", "control_url": "https://a.test", "latitude": 91, "longitude": 0}]',
            "latitude: must be",
        ),
        ('[{"id": "a", "control_url": "https://a.test", "latitude": 1}]', "must come together"),
        ('[{"id": "a", "control_url": "https://a.test", "health": "ok"}]', "health: must be one of"),
        ('[{"id": "a", "control_url": "https://a.test", "load": 2}]', "load: must be between 0 and 1"),
        ('[{"id": "a", "control_url": "https://a.test", "zone": 1}]', "unknown field 'zone'"),
        (
            '[{"id": "a", "control_url": "https://a.test"}, {"id": "a", "control_url": "https://b.test"}]',
            "duplicate",
        ),
    ],
)
def test_registry_errors_name_the_field(doc: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_registry(doc)


def test_loopback_http_allowed() -> None:
    (relay,) = parse_registry('[{"id": "local", "control_url": "http://127.0.0.1:8700/"}]')
    assert relay.control_url == "http://127.0.0.1:8700"


async def test_cached_registry_prefers_kv_and_keeps_last_good() -> None:
    now = [0.0]
    kv: list[str | None] = ['[{"id": "kv", "control_url": "https://kv.test"}]']

    async def loader() -> str | None:
        return kv[0]

    cache = CachedRegistry(registry(), loader, ttl_s=30, clock=lambda: now[0])
    assert [r.id for r in await cache.get()] == ["kv"]
    kv[0] = "not json"
    now[0] = 31.0
    assert [r.id for r in await cache.get()] == ["kv"]  # broken KV value: last good registry stays
    kv[0] = None
    now[0] = 62.0
    assert [r.id for r in await cache.get()] == ["fra", "iad", "sin"]  # no KV key: the RELAYS var
    with pytest.raises(RegistryError, match="no relay registry configured"):
        await CachedRegistry(None).get()
