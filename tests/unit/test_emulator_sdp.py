"""The emulator's SDP handling in-process (ASGI, no sockets): bad offers are 400s, stopped m-sections out.

- Invalid offers found by fuzzing the offer parser (a ``c=`` address that is no IP, a missing direction,
  a repeated mid, a BUNDLE group naming an unknown mid, a mangled ``m=`` line, truncations) give a 400
  whose description names the problem, never a 500, and leave the session usable. A Hypothesis test
  mutates valid offers and checks that only 2xx/4xx come back.
- A negotiated close (the client's offer stops an m-section: port 0, outside its BUNDLE group) is
  answered as RFC 8843 and JSEP require: that m-section port 0, ``a=inactive``, out of the BUNDLE
  group. tests/e2e/test_emulator_browser.py does the same with a real Chromium.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitrelay.emulator.config import Limits
from splitrelay.emulator.emulator import Emulator
from splitrelay.emulator.http_api import create_app
from splitrelay.emulator.turn import TurnService
from tests.edge_support import browser_offer
from tests.emulator_fixtures import APP_ID, APP_SECRET, emulator_config

BASE = "http://emulator.test/v1"
AUTH = {"authorization": f"Bearer {APP_SECRET}"}
FINGERPRINT = (
    "a=fingerprint:sha-256 C2:0D:0E:83:BF:85:73:4F:05:77:C4:74:ED:9A:2B:38:"
    "31:CE:F5:EF:29:C2:F6:74:DC:46:B7:86:2D:A2:24:7B"
)


def chromium_offer(
    mids: list[str], *, stopped: tuple[str, ...] = (), ufrag: str = "BmdO", version: int = 2
) -> str:
    """An offer shaped like Chromium's for sending audio transceivers (as captured from Chromium 1xx).

    A stopped transceiver's m-section has port 0, ``a=inactive``, no SSRC and is not in the BUNDLE
    group, exactly as Chromium writes it after ``transceiver.stop()``.
    """
    bundled = [mid for mid in mids if mid not in stopped]
    lines = [
        "v=0",
        f"o=- 7935729539098482572 {version} IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(bundled)}",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
    ]
    for index, mid in enumerate(mids):
        off = mid in stopped
        lines += [
            f"m=audio {0 if off else 9} UDP/TLS/RTP/SAVPF 111 63 0",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ufrag}",
            "a=ice-pwd:vkN8inX3VhR5FeWavReK8qLq",
            "a=ice-options:trickle",
            FINGERPRINT,
            "a=setup:actpass",
            f"a=mid:{mid}",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=inactive" if off else "a=sendonly",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtpmap:63 red/48000/2",
            "a=rtpmap:0 PCMU/8000",
        ]
        if not off:
            lines += [f"a=ssrc:{1000 + index} cname:VmgKXAZTTDtkc0RO", f"a=msid:- track-{mid}"]
    return "\r\n".join(lines) + "\r\n"


def sections(sdp: str) -> tuple[list[str], dict[str, list[str]]]:
    """Session-level lines, and each m-section's lines by its mid."""
    head: list[str] = []
    by_mid: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = [line]
        elif current is None:
            head.append(line)
            continue
        else:
            current.append(line)
        for item in current:
            if item.startswith("a=mid:"):
                by_mid[item[len("a=mid:") :]] = current
    return head, by_mid


def bundle(head: list[str]) -> list[str]:
    line = next((x for x in head if x.startswith("a=group:BUNDLE")), "a=group:BUNDLE")
    return line.split()[1:]


def attribute(lines: list[str], name: str) -> str | None:
    return next((x.split(":", 1)[1] for x in lines if x.startswith(f"a={name}:")), None)


@dataclass
class Api:
    emulator: Emulator
    http: httpx.AsyncClient

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        content = None if body is None else json.dumps(body).encode()
        return await self.http.request(method, f"{BASE}/apps/{APP_ID}{path}", content=content, headers=AUTH)

    async def session(self) -> str:
        response = await self.call("POST", "/sessions/new")
        assert response.status_code == 201, response.text
        return str(response.json()["sessionId"])

    async def push(self, session_id: str, sdp: str, names: dict[str, str]) -> httpx.Response:
        tracks = [{"location": "local", "mid": mid, "trackName": name} for mid, name in names.items()]
        return await self.call(
            "POST",
            f"/sessions/{session_id}/tracks/new",
            {"sessionDescription": {"type": "offer", "sdp": sdp}, "tracks": tracks},
        )


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    config = emulator_config(limits=Limits(api_calls_per_second=100_000.0))
    emulator = Emulator(config)
    app = create_app(emulator, TurnService(config, lambda: ("stun:127.0.0.1:3478",)))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    try:
        yield Api(emulator, http)
    finally:
        await http.aclose()
        await emulator.close()


def _offer(sdp: str) -> dict[str, Any]:
    return {"sessionDescription": {"type": "offer", "sdp": sdp}}


# --- invalid offers: 400 naming the problem, never 500 ----------------------------------------------

BAD_OFFERS = {
    "c= address not an IP": (
        browser_offer().replace("c=IN IP4 0.0.0.0", "c=IN IP4 127.0/0.1"),
        "c= address '127.0/0.1' is not an IPv4 or IPv6 address",
    ),
    "session-level c= address not an IP": (
        browser_offer().replace("t=0 0", "t=0 0\r\nc=IN IP4 0.0."),
        "session level: c= address '0.0.' is not an IPv4 or IPv6 address",
    ),
    "no direction attribute": (
        browser_offer().replace("a=sendrecv\r\n", ""),
        "m-section 0 has no direction attribute",
    ),
    "duplicate mid": (
        chromium_offer(["0", "1"]).replace("a=mid:1", "a=mid:0").replace("BUNDLE 0 1", "BUNDLE 0"),
        "m-section 1 repeats a=mid:0",
    ),
    "BUNDLE names an unknown mid": (
        browser_offer().replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 7"),
        "a=group:BUNDLE 0 7 must name each m-section's mid at most once",
    ),
    "mangled m= line drops an m-section": (
        chromium_offer(["0", "1"]).replace("m=audio 9", "M=AUDIO 9", 1),
        "is not an SDP line <type>=<value>: 'M=AUDIO 9",
    ),
    "m-line with no formats": (
        browser_offer().replace("m=audio 9 UDP/TLS/RTP/SAVPF 111 0", "m=audio 9 UDP/TLS/RTP/SAVPF"),
        "not a parseable SDP",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_OFFERS))
async def test_an_invalid_offer_is_a_400_naming_the_problem(api: Api, case: str) -> None:
    sdp, problem = BAD_OFFERS[case]
    new = await api.call("POST", "/sessions/new", _offer(sdp))
    session_id = await api.session()
    pushed = await api.push(session_id, sdp, {"0": "a"})
    for response in (new, pushed):
        assert response.status_code == 400, (case, response.status_code, response.text)
        body = response.json()
        assert body["errorCode"] == "invalid_params", body
        assert problem in body["errorDescription"], body
    # The session the bad offer was sent to is unharmed: readable, and a good offer still works.
    assert (await api.call("GET", f"/sessions/{session_id}")).status_code == 200
    good = await api.push(session_id, browser_offer(), {"0": "a"})
    assert good.status_code == 200, good.text
    assert (await api.call("GET", f"/sessions/{session_id}")).status_code == 200


async def test_every_truncation_of_an_offer_is_refused_or_answered(api: Api) -> None:
    """Cut a Chromium offer after each line and mid-line: never a 500, and sessions still end cleanly."""
    offer = chromium_offer(["0", "1"])
    cuts = sorted({i for i, ch in enumerate(offer) if ch == "\n"} | set(range(0, len(offer), 37)))
    statuses: set[int] = set()
    for cut in cuts[:200]:  # bounded
        session_id = await api.session()
        response = await api.push(session_id, offer[:cut], {"0": "a"})
        statuses.add(response.status_code)
        assert response.status_code < 500, (cut, response.text)
        await api.emulator.end_session(api.emulator.sessions[session_id])
    assert 400 in statuses and 200 in statuses, statuses


LINE_EDITS = st.sampled_from(["delete", "duplicate", "truncate", "replace_token", "insert", "upper"])
TOKENS = ["", "0", "-1", "abc", "127.0/0.1", "99999999999", "IP6", "::1", "x:y", "*", "0.0."]
INSERTS = [
    "m=audio 9 UDP/TLS/RTP/SAVPF",
    "m=audio 0 UDP/TLS/RTP/SAVPF 111",
    "a=mid:",
    "a=mid:0",
    "a=group:BUNDLE",
    "a=group:BUNDLE 7",
    "c=IN IP4 127.0/0.1",
    "c=IN IP6 ::g",
    "a=sendrecv",
    "a=setup:active",
    "a=rtpmap:111 opus/48000/2",
    "a=ssrc:1 cname:x",
    "a=rtcp:abc",
    "a=candidate:1 1 udp 1 1.2.3.4 1 typ host",
    "a=extmap:1",
]


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    base = draw(
        st.sampled_from(
            [
                browser_offer(),
                chromium_offer(["0", "1"]),
                chromium_offer(["0", "1"], stopped=("0",)),
                chromium_offer(["2", "1"], version=4),
            ]
        )
    )
    lines = base.split("\r\n")
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(lines) - 1)) if lines else 0
        edit = draw(LINE_EDITS)
        if not lines:
            lines = [""]
        line = lines[index]
        if edit == "delete":
            del lines[index]
        elif edit == "duplicate":
            lines.insert(index, lines[draw(st.integers(0, len(lines) - 1))])
        elif edit == "truncate":
            lines[index] = line[: draw(st.integers(0, len(line)))]
        elif edit == "replace_token":
            parts = line.split(" ")
            parts[draw(st.integers(0, len(parts) - 1))] = draw(st.sampled_from(TOKENS))
            lines[index] = " ".join(parts)
        elif edit == "insert":
            lines.insert(index, draw(st.sampled_from(INSERTS)))
        else:
            lines[index] = line.upper()
    return "\r\n".join(lines)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sdp=mutated_offers(), path=st.sampled_from(["new", "tracks", "renegotiate", "close"]))
def test_mutated_offers_get_only_2xx_or_4xx(sdp: str, path: str) -> None:
    """Any mutation of a valid offer, on each path that takes one: 2xx or 4xx, and the session ends."""

    async def go() -> None:
        config = emulator_config(limits=Limits(api_calls_per_second=100_000.0))
        emulator = Emulator(config)
        app = create_app(emulator, TurnService(config, lambda: ("stun:127.0.0.1:3478",)))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
            api = Api(emulator, http)
            try:
                if path == "new":
                    response = await api.call("POST", "/sessions/new", _offer(sdp))
                else:
                    session_id = await api.session()
                    if path == "tracks":
                        response = await api.push(session_id, sdp, {"0": "a"})
                    else:
                        first = await api.push(session_id, chromium_offer(["0", "1"]), {"0": "a", "1": "b"})
                        assert first.status_code == 200, first.text
                        body: dict[str, Any] = _offer(sdp)
                        if path == "close":
                            body |= {"tracks": [{"mid": "0"}], "force": False}
                        verb = "PUT"
                        route = "tracks/close" if path == "close" else "renegotiate"
                        response = await api.call(verb, f"/sessions/{session_id}/{route}", body)
                    state = await api.call("GET", f"/sessions/{session_id}")
                    assert state.status_code == 200, state.text
                assert response.status_code < 500, (response.status_code, response.text, sdp)
            finally:
                await emulator.close()  # every session ends, whatever state a bad offer left

    asyncio.run(go())


# --- negotiated close: the stopped m-section is rejected (RFC 8843, JSEP 5.3.1) ----------------------


async def test_a_negotiated_close_rejects_the_stopped_m_section(api: Api) -> None:
    """Chromium stops its second transceiver: the answer has it on port 0, inactive, out of BUNDLE."""
    session_id = await api.session()
    pushed = await api.push(session_id, chromium_offer(["0", "1"]), {"0": "one", "1": "two"})
    assert pushed.status_code == 200, pushed.text
    ufrag = attribute(sections(pushed.json()["sessionDescription"]["sdp"])[1]["0"], "ice-ufrag")

    closed = await api.call(
        "PUT",
        f"/sessions/{session_id}/tracks/close",
        {
            "tracks": [{"mid": "1"}],
            "sessionDescription": {
                "type": "offer",
                "sdp": chromium_offer(["0", "1"], stopped=("1",), version=3),
            },
            "force": False,
        },
    )
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["tracks"] == [{"mid": "1"}], body
    head, by_mid = sections(body["sessionDescription"]["sdp"])
    assert bundle(head) == ["0"], head
    stopped = by_mid["1"]
    assert stopped[0].split()[1] == "0", stopped[0]
    assert "a=inactive" in stopped
    assert not [x for x in stopped if x.startswith(("a=candidate:", "a=ssrc:", "a=msid:"))], stopped
    kept = by_mid["0"]
    assert kept[0].split()[1] != "0" and "a=recvonly" in kept, kept
    assert attribute(kept, "ice-ufrag") == ufrag  # the same transport: the BUNDLE tag did not move

    state = (await api.call("GET", f"/sessions/{session_id}")).json()["tracks"]
    assert {t["mid"]: t["status"] for t in state} == {"0": "active", "1": "inactive"}

    # The next offer keeps the stopped m-section stopped; it stays rejected in the answer.
    again = await api.call(
        "PUT",
        f"/sessions/{session_id}/renegotiate",
        _offer(chromium_offer(["0", "1"], stopped=("1",), version=4)),
    )
    assert again.status_code == 200, again.text
    head, by_mid = sections(again.json()["sessionDescription"]["sdp"])
    assert bundle(head) == ["0"] and by_mid["1"][0].split()[1] == "0", head


async def test_closing_the_bundle_tag_answers_on_a_new_transport(api: Api) -> None:
    """Chromium stops the first transceiver (the BUNDLE tag) and moves the group to a new transport."""
    session_id = await api.session()
    pushed = await api.push(session_id, chromium_offer(["0", "1"]), {"0": "one", "1": "two"})
    assert pushed.status_code == 200, pushed.text
    before = sections(pushed.json()["sessionDescription"]["sdp"])[1]["1"]
    closed = await api.call(
        "PUT",
        f"/sessions/{session_id}/tracks/close",
        {
            "tracks": [{"mid": "0"}],
            "sessionDescription": {
                "type": "offer",
                "sdp": chromium_offer(["0", "1"], stopped=("0",), version=3),
            },
            "force": False,
        },
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["tracks"] == [{"mid": "0"}]
    head, by_mid = sections(closed.json()["sessionDescription"]["sdp"])
    assert bundle(head) == ["1"], head
    assert by_mid["0"][0].split()[1] == "0" and "a=inactive" in by_mid["0"]
    assert attribute(by_mid["1"], "ice-ufrag") != attribute(before, "ice-ufrag")  # a fresh transport
    state = (await api.call("GET", f"/sessions/{session_id}")).json()["tracks"]
    assert {t["mid"]: t["status"] for t in state} == {"0": "inactive", "1": "active"}
    assert api.emulator.introspect().peer_connections == 1

    # A new track recycles the stopped m-line (new mid 2 at index 0, the new BUNDLE tag).
    recycled = await api.push(session_id, chromium_offer(["2", "1"], version=4), {"2": "three"})
    assert recycled.status_code == 200, recycled.text
    head, by_mid = sections(recycled.json()["sessionDescription"]["sdp"])
    assert bundle(head) == ["2", "1"] and set(by_mid) == {"2", "1"}, head
    assert "a=recvonly" in by_mid["2"] and "a=recvonly" in by_mid["1"]
    state = (await api.call("GET", f"/sessions/{session_id}")).json()["tracks"]
    assert {(t["mid"], t["status"]) for t in state} == {("0", "inactive"), ("1", "active"), ("2", "active")}


async def test_an_offer_that_drops_a_live_m_section_is_still_refused(api: Api) -> None:
    """Recycling is allowed only in a rejected m-section's place: a live one must stay."""
    session_id = await api.session()
    pushed = await api.push(session_id, chromium_offer(["0", "1"]), {"0": "one", "1": "two"})
    assert pushed.status_code == 200, pushed.text
    replaced = await api.push(session_id, chromium_offer(["2", "1"], version=3), {"2": "three"})
    assert replaced.status_code == 400, replaced.text
    assert "lacks the negotiated audio m-section mid '0'" in replaced.json()["errorDescription"]


async def test_answering_an_offer_looks_up_no_stun_server(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """An emulated session gathers from its own addresses: no name lookup (aiortc's default STUN server,
    stun.l.google.com, once cost 5 s per answer under a burst when the resolver dropped a query)."""
    looked_up: list[str] = []
    real = socket.gethostbyname

    def recording(name: str) -> str:
        looked_up.append(name)
        return real(name)

    monkeypatch.setattr(socket, "gethostbyname", recording)
    session_id = await api.session()
    pushed = await api.push(session_id, chromium_offer(["0"]), {"0": "one"})
    assert pushed.status_code == 200, pushed.text
    assert "a=candidate" in pushed.json()["sessionDescription"]["sdp"]
    assert looked_up == []
