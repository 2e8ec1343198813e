"""The relay registry cache parses a registry text once, however often the TTL makes it read again."""

from __future__ import annotations

import pytest

from splitrelay.edge import relays
from splitrelay.edge.relays import CachedRegistry


async def test_unchanged_text_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real_parse = relays.parse_registry

    def counting_parse(text: str | bytes, source: str = "RELAYS") -> tuple[relays.Relay, ...]:
        parsed.append(source)
        return real_parse(text, source)

    monkeypatch.setattr(relays, "parse_registry", counting_parse)
    now = [0.0]
    kv = ['[{"id": "a", "control_url": "https://a.test"}]']

    async def loader() -> str | None:
        return kv[0]

    cache = CachedRegistry(None, loader, ttl_s=30, clock=lambda: now[0])
    first = await cache.get()
    now[0] = 31.0
    assert await cache.get() is first and len(parsed) == 1  # read again, same text: same relays
    kv[0] = '[{"id": "b", "control_url": "https://b.test"}]'
    now[0] = 62.0
    assert [relay.id for relay in await cache.get()] == ["b"] and len(parsed) == 2
    kv[0] = "not json"
    now[0] = 93.0
    assert [relay.id for relay in await cache.get()] == ["b"]  # broken: the last good one stays
    kv[0] = '[{"id": "b", "control_url": "https://b.test"}]'
    now[0] = 124.0
    assert [relay.id for relay in await cache.get()] == ["b"] and len(parsed) == 3  # not re-parsed
