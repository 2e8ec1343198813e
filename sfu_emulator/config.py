"""Emulator configuration: app ids and secrets, TURN keys, timers and limits, from a TOML/JSON file or flags.

Timers are configurable because the real service's (30 s) would make tests slow; every value is checked
here once, with an error naming the field and its limit, so the rest of the emulator trusts its config.
Secrets stay wrapped in :class:`splitrelay.contract.safety.Secret` and only :func:`mask` forms are
ever printed.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from splitrelay.contract.json_fields import SchemaError, json_type
from splitrelay.contract.safety import Secret, path_segment
from splitrelay.relay.media.peer import LOOPBACK, CandidatePolicy
from splitrelay.relay.media.rtcp import MAX_REPORT_BLOCKS

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8790
MAX_CONFIG_BYTES: Final = 1 << 20


class ConfigError(ValueError):
    """A configuration value is missing or out of range; the message names the field and the limit."""


def mask(secret: Secret) -> str:
    """What may be printed about a secret: that it is set, and its length."""
    return f"<redacted, {len(secret.reveal())} chars>"


@dataclass(frozen=True)
class Timers:
    """Behaviour timers of the real service (seconds); shorten them in tests."""

    track_idle_timeout: float = 30.0
    """A published track with no media for this long is dropped (Cloudflare: 30 s)."""
    reconnect_window: float = 30.0
    """A session whose connection fails stays addressable this long before it is gone (410)."""
    connect_wait: float = 5.0
    """Operations that need a session's connection wait this long for it, then answer 425."""
    unconnected_session_ttl: float = 60.0
    """A session that never connects expires after this long."""

    def __post_init__(self) -> None:
        for item in fields(self):
            _check_number(f"timers.{item.name}", getattr(self, item.name), 0.01, 86_400.0)

    @property
    def watchdog_interval(self) -> float:
        """How often timers are checked: a quarter of the shortest, within 10 ms..1 s."""
        shortest = min(self.track_idle_timeout, self.reconnect_window, self.unconnected_session_ttl)
        return min(1.0, max(0.01, shortest / 4))


@dataclass(frozen=True)
class Limits:
    """Bounds on what one emulator holds; the per-call track limit (64) is the spec's, in edge/."""

    max_sessions: int = 10_000
    max_tracks_per_session: int = 256
    max_published_per_session: int = MAX_REPORT_BLOCKS
    """Published (received) tracks per session: one RTCP report block each."""
    api_calls_per_second: float = 50.0
    """Per session, as Cloudflare documents; more gives 429."""
    max_turn_credentials: int = 100_000

    def __post_init__(self) -> None:
        _check_int("limits.max_sessions", self.max_sessions, 1, 1_000_000)
        _check_int("limits.max_tracks_per_session", self.max_tracks_per_session, 1, 4096)
        _check_int("limits.max_published_per_session", self.max_published_per_session, 1, MAX_REPORT_BLOCKS)
        _check_number("limits.api_calls_per_second", self.api_calls_per_second, 1.0, 100_000.0)
        _check_int("limits.max_turn_credentials", self.max_turn_credentials, 1, 10_000_000)


@dataclass(frozen=True)
class EmulatorConfig:
    apps: Mapping[str, Secret]
    """SFU app id -> app secret (the Bearer token of /v1/apps/{appId}/...)."""
    turn_keys: Mapping[str, Secret] = field(default_factory=lambda: MappingProxyType({}))
    """TURN key id -> key API token."""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    """HTTP port; 0 picks a free one (the bound port is reported on start)."""
    stun_port: int = 0
    """UDP port of the emulator's STUN responder; 0 picks a free one."""
    candidates: CandidatePolicy = LOOPBACK
    """Where the sessions' ICE host candidates are gathered (loopback by default)."""
    media_port: int | None = None
    """None: each session's ICE has a socket of its own. A port (0: any free one): every session shares
    ONE UDP socket on the one candidate address, as an anycast SFU reaches all its peers from one address
    and port; sessions are told apart by the relay's demultiplexer (relay/media/demux.py)."""
    rtcp_interval: float = 2.5
    timers: Timers = field(default_factory=Timers)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.apps:
            raise ConfigError("apps: configure at least one app id and secret")
        for name, table in (("apps", self.apps), ("turn_keys", self.turn_keys)):
            for key, secret in table.items():
                try:
                    path_segment(key, f"{name} id")
                except SchemaError as exc:
                    raise ConfigError(str(exc)) from None
                if not isinstance(secret, Secret):
                    raise ConfigError(f"{name}[{key}]: must be a Secret")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("host: must be a non-empty host name or address")
        _check_int("port", self.port, 0, 65535)
        _check_int("stun_port", self.stun_port, 0, 65535)
        if self.media_port is not None:
            _check_int("media_port", self.media_port, 0, 65535)
            if self.media_port and self.media_port < 1024:
                raise ConfigError(f"media_port: must be 0 or 1024..65535, got {self.media_port}")
            addresses = self.candidates.addresses
            if addresses is None or len(addresses) != 1:
                raise ConfigError(
                    "media_port: one shared socket serves exactly one candidate address "
                    f"(candidate_addresses has {len(addresses) if addresses else 'none'})"
                )
        _check_number("rtcp_interval", self.rtcp_interval, 0.05, 60.0)
        object.__setattr__(self, "apps", MappingProxyType(dict(self.apps)))
        object.__setattr__(self, "turn_keys", MappingProxyType(dict(self.turn_keys)))

    def secret_for(self, app_id: str) -> Secret | None:
        return self.apps.get(app_id)

    def describe(self) -> dict[str, Any]:
        """A printable summary: ids and masked secrets only."""
        return {
            "apps": {app: mask(secret) for app, secret in self.apps.items()},
            "turn_keys": {key: mask(token) for key, token in self.turn_keys.items()},
            "host": self.host,
            "port": self.port,
        }

    def with_overrides(self, **changes: Any) -> EmulatorConfig:
        return replace(self, **changes)


def _check_number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {json_type(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low:g} and {high:g}, got {value:g}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {json_type(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {value}")


def _secrets(doc: object, name: str) -> dict[str, Secret]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{name}: expected a table of id = secret, got {json_type(doc)}")
    out: dict[str, Secret] = {}
    for key, value in doc.items():
        try:
            out[str(key)] = Secret(value, field=f"{name}.{key}")
        except SchemaError as exc:
            raise ConfigError(str(exc)) from None
    return out


def _section(doc: Mapping[str, object], name: str, cls: type[Timers] | type[Limits]) -> Any:
    raw = doc.get(name, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table, got {json_type(raw)}")
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    return cls(**raw)


_TOP_LEVEL: Final = frozenset(
    {"apps", "turn_keys", "host", "port", "stun_port", "media_port", "candidate_addresses", "rtcp_interval"}
    | {"timers", "limits"}
)


def config_from_mapping(doc: Mapping[str, object]) -> EmulatorConfig:
    """Build a config from a parsed TOML/JSON document (see docs/emulator.md for the format)."""
    unknown = sorted(set(doc) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (known: {', '.join(sorted(_TOP_LEVEL))})")
    candidates = LOOPBACK
    addresses = doc.get("candidate_addresses")
    if addresses is not None:
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ConfigError("candidate_addresses: expected a list of IP address strings")
        try:
            candidates = CandidatePolicy(addresses=tuple(addresses))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    extra: dict[str, Any] = {}
    for key in ("host", "port", "stun_port", "media_port", "rtcp_interval"):
        if key in doc:
            extra[key] = doc[key]
    return EmulatorConfig(
        apps=_secrets(doc.get("apps"), "apps"),
        turn_keys=_secrets(doc.get("turn_keys"), "turn_keys"),
        candidates=candidates,
        timers=_section(doc, "timers", Timers),
        limits=_section(doc, "limits", Limits),
        **extra,
    )


def load_config(path: Path) -> EmulatorConfig:
    """Read a ``.toml`` or ``.json`` config file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        if path.suffix == ".json":
            doc = json.loads(data.decode("utf-8"))
        elif path.suffix == ".toml":
            doc = tomllib.loads(data.decode("utf-8"))
        else:
            raise ConfigError(f"config file {path}: name must end in .toml or .json")
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {path}: not valid {path.suffix[1:].upper()}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path}: the top level must be a table/object")
    return config_from_mapping(doc)


def load_config_json(data: bytes, source: str) -> EmulatorConfig:
    """A JSON config handed over without a file (stdin or an environment variable).

    The local stack passes its secrets this way so no file holding them outlives the emulator.
    Errors name ``source`` and never echo the text (it holds secrets).
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config from {source}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"config from {source}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config from {source}: the top level must be an object")
    return config_from_mapping(doc)
