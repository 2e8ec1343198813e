"""The edge's configuration from the Worker's env (vars + secrets) or the local adapter's environment.

One reader for both runtimes: the entry module and the local adapter each turn their environment into
a ``Mapping[str, str]`` and call :func:`load_config`. Every problem names the variable and the limit,
never its value; secrets stay wrapped (``Secret``, or bytes that nothing prints).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.safety import Secret, check_base_url
from splitrelay.contract.sfu_http import API_BASE_URL, SfuApp
from splitrelay.contract.signing import MIN_KEY_BYTES
from splitrelay.contract.turn import MAX_TTL_S, MIN_TTL_S, TurnKey
from splitrelay.edge.web import EdgeError

DEFAULT_STUN_URLS: Final = ("stun:stun.cloudflare.com:3478",)
SECRET_NAMES: Final = (
    "SFU_APP_SECRET",
    "TURN_KEY_API_TOKEN",
    "RELAY_SIGNING_KEY",
    "TOKEN_SIGNING_KEY",
    "API_KEY",
)
VAR_NAMES: Final = (
    "SFU_APP_ID",
    "SFU_API_URL",
    "TURN_KEY_ID",
    "TURN_TTL_S",
    "STUN_URLS",
    "RELAYS",
    "RELAY_SIGNING_KEY_ID",
    "CALL_SETUP_TIMEOUT_S",
    "MAX_CALL_S",
    "CALL_CHECK_INTERVAL_S",
    "RELAY_LIVENESS_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "TOKEN_MAX_TTL_S",
    "ALLOWED_ORIGINS",
)


class ConfigError(ValueError):
    """A variable or secret is missing or out of range (the message names it, not its value)."""

    def edge_error(self) -> EdgeError:
        return EdgeError(503, "edge_misconfigured", f"the edge is misconfigured: {self}")


@dataclass(frozen=True)
class EdgeConfig:
    sfu: SfuApp
    sfu_api_url: str = field(default=API_BASE_URL)
    turn: TurnKey | None = None
    turn_ttl_s: int = 600
    stun_urls: tuple[str, ...] = DEFAULT_STUN_URLS
    relays_json: str | None = None
    relay_signing_key: bytes = field(default=b"", repr=False)
    relay_signing_key_id: str = "default"
    token_signing_key: bytes = field(default=b"", repr=False)
    api_key: Secret | None = None
    call_setup_timeout_s: float = 20.0
    max_call_s: float = 4 * 3600.0
    call_check_interval_s: float = 60.0
    relay_liveness_timeout_s: float = 1.0
    """A relay that sent no heartbeat for this long is lost (edge/relay_watch.py)."""
    request_timeout_s: float = 10.0
    token_max_ttl_s: int = 3600
    allowed_origins: tuple[str, ...] = ()
    """Other sites' origins allowed to call this API from a browser (CORS); same-origin needs none."""


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low:g} and {high:g}")
    return value


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise ConfigError(f"{name}: is required")
    return value


def _key(env: Mapping[str, str], name: str) -> bytes:
    key = _required(env, name).encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{name}: must be at least {MIN_KEY_BYTES} bytes")
    return key


def load_config(env: Mapping[str, str]) -> EdgeConfig:
    """Read and check every setting; raise :class:`ConfigError` on the first bad one."""
    try:
        sfu = SfuApp(
            _required(env, "SFU_APP_ID"), Secret(_required(env, "SFU_APP_SECRET"), field="SFU_APP_SECRET")
        )
        sfu_url = check_base_url(env.get("SFU_API_URL") or API_BASE_URL)
        turn = None
        if env.get("TURN_KEY_ID") or env.get("TURN_KEY_API_TOKEN"):
            token = Secret(_required(env, "TURN_KEY_API_TOKEN"), field="TURN_KEY_API_TOKEN")
            turn = TurnKey(_required(env, "TURN_KEY_ID"), token)
        api_key = Secret(env["API_KEY"], field="API_KEY") if env.get("API_KEY") else None
    except SchemaError as exc:
        field_name = {"app_id": "SFU_APP_ID", "key_id": "TURN_KEY_ID", "base_url": "SFU_API_URL"}.get(
            exc.field, exc.field
        )
        raise ConfigError(f"{field_name}: {exc.message}") from None
    if api_key is not None and len(api_key.reveal()) < MIN_KEY_BYTES:
        raise ConfigError(f"API_KEY: must be at least {MIN_KEY_BYTES} characters")
    stun = tuple(url for url in (env.get("STUN_URLS") or "").split() if url) or DEFAULT_STUN_URLS
    for url in stun:
        if not url.startswith(("stun:", "stuns:")):
            raise ConfigError("STUN_URLS: each URL must start with stun: or stuns:")
    origins = tuple(o for o in (env.get("ALLOWED_ORIGINS") or "").replace(",", " ").split() if o)
    for origin in origins:
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
            raise ConfigError(
                f"ALLOWED_ORIGINS: {origin[:80]!r} is not an origin (scheme://host[:port], no path or '*')"
            )
    key_id = env.get("RELAY_SIGNING_KEY_ID") or "default"
    if len(key_id) > 64 or not key_id.isprintable():
        raise ConfigError("RELAY_SIGNING_KEY_ID: must be at most 64 printable characters")
    return EdgeConfig(
        sfu=sfu,
        sfu_api_url=sfu_url,
        turn=turn,
        turn_ttl_s=int(_number(env, "TURN_TTL_S", 600, MIN_TTL_S, MAX_TTL_S)),
        stun_urls=stun,
        relays_json=env.get("RELAYS") or None,
        relay_signing_key=_key(env, "RELAY_SIGNING_KEY"),
        relay_signing_key_id=key_id,
        token_signing_key=_key(env, "TOKEN_SIGNING_KEY"),
        api_key=api_key,
        call_setup_timeout_s=_number(env, "CALL_SETUP_TIMEOUT_S", 20.0, 1.0, 600.0),
        max_call_s=_number(env, "MAX_CALL_S", 4 * 3600.0, 10.0, 48 * 3600.0),
        call_check_interval_s=_number(env, "CALL_CHECK_INTERVAL_S", 60.0, 1.0, 3600.0),
        relay_liveness_timeout_s=_number(env, "RELAY_LIVENESS_TIMEOUT_S", 1.0, 0.3, 60.0),
        request_timeout_s=_number(env, "REQUEST_TIMEOUT_S", 10.0, 0.1, 60.0),
        token_max_ttl_s=int(_number(env, "TOKEN_MAX_TTL_S", 3600, 60, 24 * 3600)),
        allowed_origins=origins,
    )
