"""The relay registry and relay choice: the nearest healthy relay to the caller, then the rest in order.

The registry is JSON (the ``RELAYS`` var, or the ``relays`` key of the ``RELAY_REGISTRY`` KV namespace so
operators can change health and load without a deploy). The caller's position comes from Cloudflare's
``request.cf`` (``latitude``/``longitude`` arrive as strings, ``continent`` as a two-letter code); with
no coordinates the continent decides, with neither the config order does. The ranked list is the
fallback order if a relay refuses the call, and each entry carries the reason it was chosen.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from splitrelay.contract.json_fields import json_type

MAX_RELAYS: Final = 256
MAX_REGISTRY_BYTES: Final = 256 * 1024
DEFAULT_MAX_LOAD: Final = 0.9  # a relay reporting more load than this is tried only after the others
EARTH_RADIUS_KM: Final = 6371.0088
CONTINENTS: Final = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})
HEALTH_STATES: Final = ("healthy", "draining", "down")
RELAY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})


class RegistryError(ValueError):
    """The registry document is invalid; the message names the JSON path and the limit."""


@dataclass(frozen=True)
class Relay:
    id: str
    control_url: str
    region: str = ""
    continent: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    health: str = "healthy"
    load: float = 0.0

    def summary(self) -> dict[str, Any]:
        """What the call record keeps about its relay."""
        return {"id": self.id, "region": self.region, "control_url": self.control_url}


def _string(
    item: Mapping[str, Any], key: str, path: str, *, required: bool = False, limit: int = 256
) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            raise RegistryError(f"{path}.{key}: is required")
        return None
    if not isinstance(value, str):
        raise RegistryError(f"{path}.{key}: expected string, got {json_type(value)}")
    if not 1 <= len(value) <= limit:
        raise RegistryError(f"{path}.{key}: must be 1 to {limit} characters")
    return value


def _number(item: Mapping[str, Any], key: str, path: str, low: float, high: float) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RegistryError(f"{path}.{key}: expected a number, got {json_type(value)}")
    if not low <= value <= high:
        raise RegistryError(f"{path}.{key}: must be between {low:g} and {high:g}")
    return float(value)


def check_control_url(url: str, field: str) -> str:
    """https:// anywhere; plain http:// only to a loopback host (the local stack)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise RegistryError(f"{field}: must be an https:// URL")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise RegistryError(f"{field}: must be https:// (http:// is allowed only for loopback hosts)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise RegistryError(f"{field}: must have no query, fragment or credentials")
    return url.rstrip("/")


def _relay(item: object, path: str) -> Relay:
    if not isinstance(item, dict):
        raise RegistryError(f"{path}: expected an object, got {json_type(item)}")
    known = {"id", "control_url", "region", "continent", "latitude", "longitude", "health", "load"}
    unknown = sorted(set(item) - known)
    if unknown:
        raise RegistryError(f"{path}: unknown field {unknown[0][:40]!r} (known: {', '.join(sorted(known))})")
    relay_id = _string(item, "id", path, required=True, limit=64)
    assert relay_id is not None
    if not RELAY_ID.fullmatch(relay_id):
        raise RegistryError(f"{path}.id: must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
    url = _string(item, "control_url", path, required=True, limit=2048)
    assert url is not None
    continent = _string(item, "continent", path, limit=2)
    if continent is not None and continent not in CONTINENTS:
        raise RegistryError(f"{path}.continent: must be one of {', '.join(sorted(CONTINENTS))}")
    latitude = _number(item, "latitude", path, -90.0, 90.0)
    longitude = _number(item, "longitude", path, -180.0, 180.0)
    if (latitude is None) != (longitude is None):
        raise RegistryError(f"{path}: latitude and longitude must come together")
    health = _string(item, "health", path, limit=16) or "healthy"
    if health not in HEALTH_STATES:
        raise RegistryError(f"{path}.health: must be one of {', '.join(HEALTH_STATES)}")
    load = _number(item, "load", path, 0.0, 1.0)
    return Relay(
        id=relay_id,
        control_url=check_control_url(url, f"{path}.control_url"),
        region=_string(item, "region", path, limit=64) or "",
        continent=continent,
        latitude=latitude,
        longitude=longitude,
        health=health,
        load=0.0 if load is None else load,
    )


def parse_registry(text: str | bytes, source: str = "RELAYS") -> tuple[Relay, ...]:
    """``{"relays": [...]}`` (or a bare list) → relays, every field checked; ids must be unique."""
    if len(text) > MAX_REGISTRY_BYTES:
        raise RegistryError(f"{source}: must be at most {MAX_REGISTRY_BYTES} bytes")
    try:
        doc = json.loads(text)
    except ValueError:
        raise RegistryError(f"{source}: is not valid JSON") from None
    items = doc.get("relays") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise RegistryError(f"{source}.relays: expected an array of relays, got {json_type(items)}")
    if not 1 <= len(items) <= MAX_RELAYS:
        raise RegistryError(f"{source}.relays: must list 1 to {MAX_RELAYS} relays, got {len(items)}")
    relays = tuple(_relay(item, f"{source}.relays[{index}]") for index, item in enumerate(items))
    seen: set[str] = set()
    for index, relay in enumerate(relays):
        if relay.id in seen:
            raise RegistryError(f"{source}.relays[{index}].id: duplicate relay id {relay.id!r}")
        seen.add(relay.id)
    return relays


@dataclass(frozen=True)
class CallerLocation:
    """Where Cloudflare saw the caller; every field may be missing (no ``cf`` locally)."""

    latitude: float | None = None
    longitude: float | None = None
    continent: str | None = None
    country: str | None = None
    colo: str | None = None

    @classmethod
    def from_cf(cls, cf: Mapping[str, object]) -> CallerLocation:
        """Tolerant: a missing or malformed field is dropped, never an error (it is Cloudflare's data)."""
        lat = _coordinate(cf.get("latitude"), 90.0)
        lon = _coordinate(cf.get("longitude"), 180.0)
        if lat is None or lon is None:
            lat = lon = None
        continent = cf.get("continent")
        return cls(
            latitude=lat,
            longitude=lon,
            continent=continent if isinstance(continent, str) and continent in CONTINENTS else None,
            country=_short(cf.get("country")),
            colo=_short(cf.get("colo")),
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _coordinate(value: object, bound: float) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, str | int | float) else None
    except ValueError:
        return None
    if number is None or not math.isfinite(number) or abs(number) > bound:
        return None
    return number


def _short(value: object) -> str | None:
    return value if isinstance(value, str) and 1 <= len(value) <= 8 and value.isalnum() else None


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a spherical Earth (error under 0.5%: enough to rank relays)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class Choice:
    relay: Relay
    reason: str
    distance_km: float | None = None


class NoRelayError(Exception):
    """No relay in the registry is healthy."""


def rank_relays(
    relays: tuple[Relay, ...], where: CallerLocation, *, max_load: float = DEFAULT_MAX_LOAD
) -> list[Choice]:
    """Healthy relays, best first; relays over ``max_load`` come after all others. Never empty."""
    order = {relay.id: index for index, relay in enumerate(relays)}
    healthy = [relay for relay in relays if relay.health == "healthy"]
    if not healthy:
        states = ", ".join(f"{relay.id}={relay.health}" for relay in relays[:8])
        raise NoRelayError(f"no healthy relay in the registry ({states})")

    def busy(relay: Relay) -> bool:
        return relay.load >= max_load

    distances: dict[str, float] = {}
    if where.latitude is not None and where.longitude is not None:
        for relay in healthy:
            if relay.latitude is not None and relay.longitude is not None:
                distances[relay.id] = haversine_km(
                    where.latitude, where.longitude, relay.latitude, relay.longitude
                )
        basis = "cf latitude/longitude"

        def key(relay: Relay) -> tuple[bool, float, float, int]:
            return (busy(relay), distances.get(relay.id, math.inf), relay.load, order[relay.id])

    elif where.continent is not None:
        basis = f"caller continent {where.continent}, no coordinates"

        def key(relay: Relay) -> tuple[bool, float, float, int]:
            return (busy(relay), 0.0 if relay.continent == where.continent else 1.0, 0.0, order[relay.id])

    else:
        basis = "no location"

        def key(relay: Relay) -> tuple[bool, float, float, int]:
            return (busy(relay), 0.0, 0.0, order[relay.id])

    ranked = sorted(healthy, key=key)
    choices = []
    for position, relay in enumerate(ranked):
        distance = distances.get(relay.id)
        detail = f"{distance:.0f} km" if distance is not None else "distance unknown"
        if basis == "no location":
            what = "first healthy relay in config order"
        elif basis.startswith("caller continent"):
            same = relay.continent == where.continent
            what = f"{'same' if same else 'other'} continent, config order"
        else:
            what = f"nearest healthy relay ({detail})"
        if busy(relay):
            what += f", load {relay.load:.2f} over {max_load:.2f}"
        prefix = "chosen" if position == 0 else f"fallback {position}"
        choices.append(Choice(relay, f"{prefix}: {relay.id}: {basis}: {what}", distance))
    return choices


Loader = Callable[[], Awaitable[str | None]]


@dataclass
class CachedRegistry:
    """Registry text from ``loader`` (KV), else ``fallback`` (the RELAYS var), parsed and cached ``ttl_s``.

    KV reads cost a subrequest; relay health changes on the scale of seconds, so a short cache per
    isolate is the right trade. A broken KV value falls back to the last good registry when there is one.
    An unchanged text is not parsed again (the check of every field is the costly part, and it would
    land on one caller's setup every ``ttl_s``).
    """

    fallback: str | None
    loader: Loader | None = None
    ttl_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _cached: tuple[Relay, ...] | None = None
    _text: str | None = None
    _loaded_at: float = field(default=-math.inf)

    async def get(self) -> tuple[Relay, ...]:
        now = self.clock()
        if self._cached is not None and now - self._loaded_at < self.ttl_s:
            return self._cached
        text = await self.loader() if self.loader is not None else None
        source = "RELAY_REGISTRY:relays"
        if text is None:
            text, source = self.fallback, "RELAYS"
        if text is None:
            raise RegistryError(
                "RELAYS: no relay registry configured (set the RELAYS var or the KV key 'relays')"
            )
        if self._cached is not None and text == self._text:
            self._loaded_at = now
            return self._cached
        try:
            relays = parse_registry(text, source)
        except RegistryError:
            if self._cached is None:
                raise
            relays = self._cached
        else:
            self._text = text
        self._cached, self._loaded_at = relays, now
        return relays
