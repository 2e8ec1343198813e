"""Cloudflare TURN credential API: mint short-lived ``iceServers`` from a TURN key, and revoke them.

There is no machine-readable spec for these two endpoints; the shapes follow Cloudflare's TURN docs
(summarised in shared/reference/cloudflare-turn-api.md). Sans-IO and pure standard library like
:mod:`splitrelay.contract.sfu_http`, whose request, error and JSON helpers it reuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from splitrelay.contract.json_fields import JsonModel, SchemaError, join_path, json_field, json_type
from splitrelay.contract.safety import Secret, path_segment
from splitrelay.contract.sfu_http import HttpRequest, decode_response, error_from_response, json_request

MIN_TTL_S: Final = 1
MAX_TTL_S: Final = 172_800  # 48 h: the longest a Cloudflare TURN credential can live
ICE_URL_SCHEMES: Final = ("stun:", "stuns:", "turn:", "turns:")
BROWSER_BLOCKED_PORT: Final = 53  # listed by Cloudflare as an alternate port; browsers block it


@dataclass(frozen=True)
class TurnKey:
    """A TURN key: its id goes into the path, its API token only into the Authorization header."""

    key_id: str
    token: Secret

    def __post_init__(self) -> None:
        path_segment(self.key_id, "key_id")
        if not isinstance(self.token, Secret):
            raise SchemaError("api_token", "must be a Secret (wrap the string with Secret(...))")

    def credentials_path(self, suffix: str) -> str:
        return f"/turn/keys/{path_segment(self.key_id, 'key_id')}/credentials/{suffix}"


def check_ttl(ttl: object, field: str = "ttl") -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise SchemaError(field, f"expected an integer number of seconds, got {json_type(ttl)}")
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise SchemaError(field, f"must be between {MIN_TTL_S} and {MAX_TTL_S} seconds (48 h), got {ttl}")
    return ttl


@dataclass(frozen=True, kw_only=True)
class GenerateIceServersRequest(JsonModel):
    ttl: int

    def validate(self, path: str = "") -> None:
        check_ttl(self.ttl, join_path(path, "ttl"))


def url_port(url: str) -> int | None:
    """Port of a ``stun:``/``turn:`` URL (``turn:host:3478?transport=udp``), or None when it has none."""
    rest = url.split(":", 1)[1] if ":" in url else url
    rest = rest.split("?", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or host.endswith("[") or not port.isdigit():
        return None
    return int(port)


def _parse_urls(value: object, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        urls: tuple[str, ...] = (value,)
    elif isinstance(value, list):
        urls = tuple(value)
        for index, url in enumerate(urls):
            if not isinstance(url, str):
                raise SchemaError(f"{path}[{index}]", f"expected string, got {json_type(url)}")
    else:
        raise SchemaError(path, f"expected a string or an array of strings, got {json_type(value)}")
    if not urls:
        raise SchemaError(path, "must list at least one URL")
    for index, url in enumerate(urls):
        if not url.startswith(ICE_URL_SCHEMES):
            where = path if isinstance(value, str) else f"{path}[{index}]"
            raise SchemaError(where, "must start with stun:, stuns:, turn: or turns:")
    return urls


@dataclass(frozen=True, kw_only=True)
class IceServer(JsonModel):
    """One ``RTCIceServer``; ``credential`` stays out of repr (it logs in to Cloudflare's TURN)."""

    urls: tuple[str, ...] = field(metadata=json_field(decode=_parse_urls))
    username: str | None = None
    credential: str | None = field(default=None, repr=False)

    @property
    def needs_credentials(self) -> bool:
        return any(url.startswith(("turn:", "turns:")) for url in self.urls)

    def validate(self, path: str = "") -> None:
        if (self.username is None) != (self.credential is None):
            raise SchemaError(path, "username and credential must come together")
        if self.needs_credentials and self.username is None:
            raise SchemaError(join_path(path, "username"), "is required for turn: and turns: URLs")


@dataclass(frozen=True, kw_only=True)
class IceServersResponse(JsonModel):
    """``iceServers``, ready for ``RTCPeerConnection``; accepts one combined entry or STUN and TURN apart."""

    ice_servers: tuple[IceServer, ...]

    @property
    def usernames(self) -> tuple[str, ...]:
        """Distinct TURN usernames, the handle :func:`build_revoke_credential` needs."""
        names = [server.username for server in self.ice_servers if server.username is not None]
        return tuple(dict.fromkeys(names))

    def filter_urls(self, keep: Callable[[str], bool]) -> IceServersResponse:
        servers = []
        for server in self.ice_servers:
            urls = tuple(url for url in server.urls if keep(url))
            if urls:
                servers.append(IceServer(urls=urls, username=server.username, credential=server.credential))
        return IceServersResponse(ice_servers=tuple(servers))

    def without_port_53(self) -> IceServersResponse:
        """Drop port-53 URLs: browsers block them and, without trickle ICE, the client waits them out."""
        return self.filter_urls(lambda url: url_port(url) != BROWSER_BLOCKED_PORT)

    def validate(self, path: str = "") -> None:
        if not self.ice_servers:
            raise SchemaError(join_path(path, "iceServers"), "must list at least one server")


def build_generate_ice_servers(key: TurnKey, ttl: int) -> HttpRequest:
    """POST .../credentials/generate-ice-servers with ``{"ttl": seconds}`` (1 s to 48 h); 201 on success."""
    request = GenerateIceServersRequest(ttl=check_ttl(ttl))
    return json_request("POST", key.credentials_path("generate-ice-servers"), key.token, request.to_json())


def build_revoke_credential(key: TurnKey, username: str) -> HttpRequest:
    """POST .../credentials/{username}/revoke, no body; 204 on success."""
    suffix = f"{path_segment(username, 'username')}/revoke"
    return json_request("POST", key.credentials_path(suffix), key.token)


def parse_generate_ice_servers(status: int, body: bytes) -> IceServersResponse:
    return decode_response(status, body, IceServersResponse.from_json)


def parse_revoke(status: int, body: bytes) -> None:
    """Any 2xx (204 documented) is success; the body, if any, is ignored."""
    if not 200 <= status <= 299:
        raise error_from_response(status, body)
