"""edge/contract/turn_api.py: TURN credential requests, both documented response shapes, errors and
secrets."""

from __future__ import annotations

import json

import pytest

from splitrelay.contract.api_error import ErrorCode, SfuApiError
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.safety import Secret
from splitrelay.contract.turn import (
    MAX_TTL_S,
    GenerateIceServersRequest,
    IceServer,
    IceServersResponse,
    TurnKey,
    build_generate_ice_servers,
    build_revoke_credential,
    parse_generate_ice_servers,
    parse_revoke,
    url_port,
)

TOKEN = "turntoken-DO-NOT-LEAK-77aa"
KEY = TurnKey("key123", Secret(TOKEN))
USERNAME = "a" * 96
CREDENTIAL = "credential-DO-NOT-LOG-" + "b" * 74

# Current docs: STUN and TURN in separate entries.
SPLIT_SHAPE = {
    "iceServers": [
        {"urls": ["stun:stun.cloudflare.com:3478"]},
        {
            "urls": [
                "turn:turn.cloudflare.com:3478?transport=udp",
                "turn:turn.cloudflare.com:443?transport=udp",
                "turn:turn.cloudflare.com:3478?transport=tcp",
                "turn:turn.cloudflare.com:80?transport=tcp",
                "turns:turn.cloudflare.com:5349?transport=tcp",
                "turns:turn.cloudflare.com:443?transport=tcp",
            ],
            "username": USERNAME,
            "credential": CREDENTIAL,
        },
    ]
}
# Older docs: one entry with STUN and TURN URLs together, including the browser-blocked port 53.
COMBINED_SHAPE = {
    "iceServers": [
        {
            "urls": [
                "stun:stun.cloudflare.com:3478",
                "stun:stun.cloudflare.com:53",
                "turn:turn.cloudflare.com:3478?transport=udp",
                "turn:turn.cloudflare.com:53?transport=udp",
                "turns:turn.cloudflare.com:5349?transport=tcp",
            ],
            "username": USERNAME,
            "credential": CREDENTIAL,
        }
    ]
}


def test_generate_request() -> None:
    request = build_generate_ice_servers(KEY, 300)
    assert (request.method, request.path) == ("POST", "/turn/keys/key123/credentials/generate-ice-servers")
    assert request.body_bytes is not None and json.loads(request.body_bytes) == {"ttl": 300}
    assert request.header_dict()["Authorization"] == f"Bearer {TOKEN}"
    assert request.header_dict()["Content-Type"] == "application/json"
    assert (
        request.url()
        == "https://rtc.live.cloudflare.com/v1/turn/keys/key123/credentials/generate-ice-servers"
    )
    assert json.loads(build_generate_ice_servers(KEY, MAX_TTL_S).body_bytes or b"") == {"ttl": 172800}


def test_revoke_request() -> None:
    request = build_revoke_credential(KEY, USERNAME)
    assert (request.method, request.path) == ("POST", f"/turn/keys/key123/credentials/{USERNAME}/revoke")
    assert request.body_bytes is None
    with pytest.raises(SchemaError) as excinfo:
        build_revoke_credential(KEY, "a/b")
    assert excinfo.value.field == "username"


@pytest.mark.parametrize(
    ("ttl", "needle"),
    [
        (0, "between 1 and 172800"),
        (172_801, "between 1 and 172800"),
        (-5, "between"),
        (True, "integer"),
        (60.0, "integer"),
    ],
)
def test_ttl_limits(ttl: object, needle: str) -> None:
    with pytest.raises(SchemaError) as excinfo:
        build_generate_ice_servers(KEY, ttl)  # type: ignore[arg-type]
    assert excinfo.value.field == "ttl"
    assert needle in excinfo.value.message


def test_ttl_limits_when_parsing_json() -> None:
    for doc, needle in [
        ({}, "is required"),
        ({"ttl": 0}, "between"),
        ({"ttl": 1.5}, "fraction"),
        ({"ttl": "60"}, "string"),
    ]:
        with pytest.raises(SchemaError) as excinfo:
            GenerateIceServersRequest.from_json(doc)
        assert excinfo.value.field == "ttl" and needle in excinfo.value.message
    assert GenerateIceServersRequest.from_json({"ttl": 1}).to_json() == {"ttl": 1}
    assert GenerateIceServersRequest.from_json({"ttl": 60.0}).ttl == 60  # JSON has one number type


def test_parses_the_split_shape() -> None:
    parsed = parse_generate_ice_servers(201, json.dumps(SPLIT_SHAPE).encode())
    stun, turn = parsed.ice_servers
    assert stun == IceServer(urls=("stun:stun.cloudflare.com:3478",))
    assert not stun.needs_credentials
    assert turn.needs_credentials and turn.username == USERNAME and turn.credential == CREDENTIAL
    assert parsed.usernames == (USERNAME,)
    assert parsed.to_json() == SPLIT_SHAPE


def test_parses_the_combined_shape_and_drops_port_53() -> None:
    parsed = parse_generate_ice_servers(201, json.dumps(COMBINED_SHAPE).encode())
    assert len(parsed.ice_servers) == 1
    filtered = parsed.without_port_53()
    assert filtered.ice_servers[0].urls == (
        "stun:stun.cloudflare.com:3478",
        "turn:turn.cloudflare.com:3478?transport=udp",
        "turns:turn.cloudflare.com:5349?transport=tcp",
    )
    assert filtered.ice_servers[0].credential == CREDENTIAL
    only_53 = IceServersResponse(ice_servers=(IceServer(urls=("stun:stun.cloudflare.com:53",)),))
    assert only_53.without_port_53().ice_servers == ()


def test_urls_may_be_a_single_string() -> None:
    doc = {"iceServers": [{"urls": "stun:stun.cloudflare.com:3478"}]}
    parsed = parse_generate_ice_servers(200, json.dumps(doc).encode())
    assert parsed.ice_servers[0].urls == ("stun:stun.cloudflare.com:3478",)
    # Emitted as a list: RTCPeerConnection accepts both and the list is the documented form.
    assert parsed.to_json() == {"iceServers": [{"urls": ["stun:stun.cloudflare.com:3478"]}]}


@pytest.mark.parametrize(
    ("doc", "field", "needle"),
    [
        ({}, "iceServers", "is required"),
        ({"iceServers": []}, "iceServers", "at least one"),
        ({"iceServers": [{}]}, "iceServers[0].urls", "is required"),
        ({"iceServers": [{"urls": []}]}, "iceServers[0].urls", "at least one"),
        ({"iceServers": [{"urls": 5}]}, "iceServers[0].urls", "string or an array"),
        ({"iceServers": [{"urls": ["stun:x:1", 5]}]}, "iceServers[0].urls[1]", "expected string"),
        ({"iceServers": [{"urls": ["http://x"]}]}, "iceServers[0].urls[0]", "stun:"),
        ({"iceServers": [{"urls": "http://x"}]}, "iceServers[0].urls", "stun:"),
        ({"iceServers": [{"urls": "turn:x:3478"}]}, "iceServers[0].username", "turn:"),
        ({"iceServers": [{"urls": "turn:x:3478", "username": "u"}]}, "iceServers[0]", "together"),
        (
            {"iceServers": [{"urls": "turn:x", "username": "u", "credential": 1}]},
            "iceServers[0].credential",
            "string",
        ),
    ],
)
def test_malformed_ice_servers_name_the_field(doc: object, field: str, needle: str) -> None:
    with pytest.raises(SchemaError) as excinfo:
        IceServersResponse.from_json(doc)
    assert excinfo.value.field == field
    assert needle in excinfo.value.message
    with pytest.raises(SfuApiError) as api_error:
        parse_generate_ice_servers(201, json.dumps(doc).encode())
    assert api_error.value.code == ErrorCode.INVALID_RESPONSE


def test_revoke_statuses() -> None:
    parse_revoke(204, b"")
    parse_revoke(200, b"{}")
    with pytest.raises(SfuApiError) as excinfo:
        parse_revoke(404, b"")
    assert (excinfo.value.status, excinfo.value.code, excinfo.value.retryable) == (404, "http_error", False)
    with pytest.raises(SfuApiError) as excinfo:
        parse_revoke(503, b"")
    assert excinfo.value.retryable


def test_generate_error_statuses() -> None:
    with pytest.raises(SfuApiError) as excinfo:
        parse_generate_ice_servers(401, json.dumps({"errorCode": "unauthorized"}).encode())
    assert (excinfo.value.code, excinfo.value.retryable) == ("unauthorized", False)


def test_secrets_stay_out_of_reprs() -> None:
    parsed = IceServersResponse.from_json(SPLIT_SHAPE)
    assert CREDENTIAL not in repr(parsed)
    for shown in (
        repr(KEY),
        str(KEY),
        repr(build_generate_ice_servers(KEY, 60)),
        repr(build_revoke_credential(KEY, "u")),
    ):
        assert TOKEN not in shown
    with pytest.raises(SchemaError) as excinfo:
        TurnKey("key", TOKEN)  # type: ignore[arg-type]
    assert excinfo.value.field == "api_token" and TOKEN not in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("stun:stun.cloudflare.com:3478", 3478),
        ("turn:turn.cloudflare.com:53?transport=udp", 53),
        ("turns:[2606:4700:48::1]:443?transport=tcp", 443),
        ("stun:[2606:4700:48::1]", None),
        ("stun:stun.cloudflare.com", None),
        ("turn:host:abc", None),
    ],
)
def test_url_port(url: str, port: int | None) -> None:
    assert url_port(url) == port
