"""Every bug the fuzz tier found, as a regression test that failed before its fix (or, where the fix is
another engineer's, an ``xfail(strict=True)`` naming the bug until it lands; the target then counts it as a
known open bug, tests/fuzz/engine.py's KnownFailure)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re

import pytest

from splitrelay.contract.signing import SIGNATURE_HEADER, SignatureError, Verifier, sign_headers
from splitrelay.edge import tokens
from splitrelay.edge.web import EdgeRequest
from tests.edge_support import TOKEN_KEY, browser_offer
from tests.fuzz.edge_target import NOW, EdgeFuzz

pytestmark = pytest.mark.fuzz


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signed(header: str, payload: str) -> str:
    signature = hmac.new(TOKEN_KEY.encode(), f"{header}.{payload}".encode("latin-1"), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


HEADER = _b64(b'{"alg":"HS256","typ":"JWT"}')
CLAIMS = {"iss": tokens.ISSUER, "aud": tokens.AUDIENCE, "sub": "alice", "iat": int(NOW) - 10,
          "exp": int(NOW) + 600, "jti": "j1"}  # fmt: skip


@pytest.mark.parametrize("scope", [[["calls"]], [{}], ["calls", []]])
def test_a_signed_token_whose_scope_list_holds_a_list_or_object_is_refused_not_a_500(scope: object) -> None:
    """Found by the edge-token target: ``[[]] in frozenset`` raised TypeError (unhashable) -> 500."""
    token = _signed(HEADER, _b64(json.dumps({**CLAIMS, "scope": scope}).encode()))
    with pytest.raises(tokens.TokenError, match="scope"):
        tokens.verify(TOKEN_KEY.encode(), token, clock=lambda: NOW)
    assert _status("GET", "/v1/ice-servers", f"Bearer {token}") == 401


def test_a_token_payload_part_with_non_ascii_characters_is_malformed_not_a_500() -> None:
    """Found by the edge-token target: a header byte above 0x7f in the payload part (read as latin-1)
    reached ``.encode("ascii")`` of the signing input before the part was checked -> UnicodeEncodeError."""
    token = f"{HEADER}.eyJ\u00e9.{_b64(b'x' * 32)}"
    with pytest.raises(tokens.TokenError, match="payload: is not base64url"):
        tokens.verify(TOKEN_KEY.encode(), token, clock=lambda: NOW)
    assert _status("GET", "/v1/ice-servers", f"Bearer {token}") == 401


def _status(method: str, path: str, authorization: str) -> int:
    async def go() -> int:
        fuzz = EdgeFuzz()
        request = EdgeRequest(method, path, headers=fuzz.headers(authorization, None))
        return (await fuzz.request(request, "regression")).status

    return asyncio.run(go())


def test_a_signature_header_with_non_ascii_characters_is_a_401_not_a_500() -> None:
    """Found by the relay target: ``v1=\\x85...`` (a header byte above 0x7f, read as latin-1) reached
    ``hmac.compare_digest`` of two strings, which raises TypeError on non-ASCII text -> 500."""
    verifier = Verifier(keys={"default": RELAY_KEY})
    headers = sign_headers(RELAY_KEY, "GET", "/v1/calls", b"")
    headers[SIGNATURE_HEADER] = "v1=\u00853bc" + "0" * 60
    with pytest.raises(SignatureError, match="must look like"):
        verifier.verify("GET", "/v1/calls", b"", headers)


RELAY_KEY = b"fuzz-regression-relay-key-0123456789abcdef"


# --- the emulator: found by the emulator target, fixed in sfu_emulator/ by its owner (0fede28) ---


def _emulator_statuses(requests: list[tuple[str, str, dict[str, object]]]) -> list[int]:
    """Each request against a fresh emulator's session pool (tests/fuzz/test_fuzz_emulator.py)."""
    from tests.fuzz.asgi import call
    from tests.fuzz.test_fuzz_emulator import AUTH, BASE, emulator_fuzz

    async def go() -> list[int]:
        statuses = []
        async with emulator_fuzz() as fuzz:
            app = await fuzz.fresh()
            for method, path, body in requests:
                path = path.replace("{fresh}", fuzz.sessions[1])
                reply = await call(app, method, f"{BASE}/{path}".encode(), AUTH, json.dumps(body).encode())
                statuses.append(reply.status)
        return statuses

    return asyncio.run(go())


def _offer(sdp: str) -> dict[str, object]:
    return {"sessionDescription": {"type": "offer", "sdp": sdp}}


def test_emulator_refuses_an_offer_with_a_duplicate_mid_with_a_400() -> None:
    """Two m-sections with one a=mid: aiortc's setLocalDescription failed (AttributeError, _set_mid): 500."""
    offer = browser_offer()
    head, media = offer.split("m=audio", 1)
    duplicated = f"{head}m=audio{media}m=audio{media}"
    track = {"tracks": [{"location": "local", "mid": "0", "trackName": "a"}]}
    statuses = _emulator_statuses(
        [("POST", "new", _offer(duplicated)), ("POST", "{fresh}/tracks/new", {**_offer(duplicated), **track})]
    )
    assert statuses == [400, 400]


def test_emulator_refuses_or_answers_an_offer_without_a_direction_attribute() -> None:
    """No direction attribute: aiortc's createAnswer failed (ValueError: None is not in list) -> 500."""
    statuses = _emulator_statuses([("POST", "new", _offer(browser_offer().replace("a=sendrecv\r\n", "")))])
    assert statuses[0] < 500


def test_emulator_refuses_an_offer_whose_connection_address_is_not_an_ip_with_a_400() -> None:
    """c=IN IP4 127.0/0.1: every read of pc.remoteDescription re-serialised it (ValueError) -> 500."""
    bad = browser_offer().replace("c=IN IP4 0.0.0.0", "c=IN IP4 127.0/0.1")
    track = {"tracks": [{"location": "local", "mid": "0", "trackName": "a"}]}
    statuses = _emulator_statuses([("POST", "{fresh}/tracks/new", {**_offer(bad), **track})])
    assert statuses == [400]


def test_emulator_refuses_an_offer_whose_bundle_group_names_an_unknown_mid_with_a_400() -> None:
    """a=group:BUNDLE x 0: aiortc failed mid-negotiation (AttributeError ... stop / transport) -> 500."""
    offer = browser_offer().replace("a=group:BUNDLE 0", "a=group:BUNDLE x 0")
    track = {"tracks": [{"location": "local", "mid": "0", "trackName": "a"}]}
    statuses = _emulator_statuses(
        [("POST", "new", _offer(offer)), ("POST", "{fresh}/tracks/new", {**_offer(offer), **track})]
    )
    assert statuses == [400, 400]


# --- the relay ---


def test_relay_refuses_an_offer_whose_bundle_group_names_an_unknown_mid_with_a_400() -> None:
    """Found by the relay target's long run: aiortc failed half-way through negotiation, then its own close()
    raised AttributeError on the transceiver left with no transport -> 500. Now relay/media/sdp.py checks the
    group first (check_bundle_groups)."""
    from tests.fuzz.asgi import call
    from tests.fuzz.test_fuzz_relay import relay_fuzz, signed

    async def go() -> int:
        async with relay_fuzz() as fuzz:
            sdp = re.sub(r"a=group:BUNDLE[^\r\n]*", "a=group:BUNDLE x 0", fuzz.offers[0])
            doc = {"call_id": "c1", "mode": "direct", "offer": {"type": "offer", "sdp": sdp}}
            body = json.dumps(doc).encode()
            try:
                reply = await call(
                    fuzz.fresh_app(), "POST", b"/v1/calls", signed("POST", b"/v1/calls", body), body
                )
            except AttributeError:
                return 500  # what uvicorn answers for an exception that escapes the app
            return reply.status

    assert asyncio.run(go()) == 400
