"""Shared pieces of the edge's tests and benchmark: keys, an env, offers, and an in-memory upstream.

``FakeUpstream`` is an injected ``fetch`` that answers like the Realtime SFU, the TURN API and a relay's
control API, checking what a real one would check (bearer token, relay signature, request shape), so
the unit tests can drive every route on CPython and count exactly what the edge sent. It is a test
double for unit tests only: the integration tests use the emulator and a real relay.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from splitrelay.contract.sfu import TracksRequest
from splitrelay.contract.signing import SignatureError, Verifier
from splitrelay.edge.calls import FetchError, Inbound, Outbound

APP_ID = "edge-test-app"
APP_SECRET = "edge-test-sfu-secret-0123456789"
TURN_KEY_ID = "edge-test-turn-key"
TURN_TOKEN = "edge-test-turn-token-0123456789"
RELAY_KEY = "edge-test-relay-signing-key-0123456789"
TOKEN_KEY = "edge-test-token-signing-key-0123456789"
API_KEY = "edge-test-api-key-0123456789abcdef0123"
SFU_URL = "https://sfu.test/v1"
SECRETS = (APP_SECRET, TURN_TOKEN, RELAY_KEY, TOKEN_KEY, API_KEY)

RELAYS = [
    {"id": "fra", "region": "eu-central-1", "continent": "EU", "latitude": 50.11, "longitude": 8.68,
     "control_url": "https://relay-fra.test"},
    {"id": "iad", "region": "us-east-1", "continent": "NA", "latitude": 38.95, "longitude": -77.45,
     "control_url": "https://relay-iad.test"},
    {"id": "sin", "region": "ap-southeast-1", "continent": "AS", "latitude": 1.35, "longitude": 103.99,
     "control_url": "https://relay-sin.test"},
]  # fmt: skip


def edge_env(relays: list[dict[str, Any]] | None = None, **overrides: str) -> dict[str, str]:
    env = {
        "SFU_APP_ID": APP_ID,
        "SFU_APP_SECRET": APP_SECRET,
        "SFU_API_URL": SFU_URL,
        "TURN_KEY_ID": TURN_KEY_ID,
        "TURN_KEY_API_TOKEN": TURN_TOKEN,
        "RELAY_SIGNING_KEY": RELAY_KEY,
        "TOKEN_SIGNING_KEY": TOKEN_KEY,
        "API_KEY": API_KEY,
        "RELAYS": json.dumps({"relays": RELAYS if relays is None else relays}),
    }
    env.update(overrides)
    return env


def browser_offer(mid: str = "0", *, direction: str = "sendrecv", extra: str = "") -> str:
    """An SDP offer shaped like a browser's for one audio transceiver (no real ICE: unit tests only)."""
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {mid}",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:Xk3e",
        "a=ice-pwd:Dm1q9PPr4sPz8rmpIlYrk4cW",
        "a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98",
        "a=setup:actpass",
        f"a=mid:{mid}",
        f"a={direction}",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000",
    ]
    return "\r\n".join(lines) + "\r\n" + extra


def answer_for(offer: str) -> str:
    mids = re.findall(r"a=mid:(\S+)", offer)
    return "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + "".join(
        f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{mid}\r\na=sendrecv\r\n" for mid in mids
    )


@dataclass
class FakeUpstream:
    """SFU + TURN + relays in memory. Set ``fail`` entries (``"push"``, ``"relay:fra"``...) to break steps."""

    fail: dict[str, Inbound | Exception] = field(default_factory=dict)
    sent: list[Outbound] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    relay_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    pull_renegotiates: bool = False
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    verifier: Verifier = field(default_factory=lambda: Verifier(keys={"default": RELAY_KEY.encode()}))

    def steps(self) -> list[str]:
        return [f"{r.method} {urlsplit(r.url).netloc}{urlsplit(r.url).path}" for r in self.sent]

    async def __call__(self, request: Outbound) -> Inbound:
        self.sent.append(request)
        url = urlsplit(request.url)
        if url.netloc == "sfu.test":
            return self._sfu(request, url.path)
        if url.netloc.startswith("relay-"):
            return self._relay(request, url.netloc.split(".")[0].removeprefix("relay-"), url.path)
        raise FetchError(f"no such host {url.netloc}")

    def _broken(self, step: str) -> Inbound | None:
        failure = self.fail.get(step)
        if isinstance(failure, Exception):
            raise failure
        return failure

    @staticmethod
    def _json(status: int, doc: object) -> Inbound:
        return Inbound(status, {"content-type": "application/json"}, json.dumps(doc).encode())

    def _sfu(self, request: Outbound, path: str) -> Inbound:
        headers = dict(request.headers)
        bearer = TURN_TOKEN if "/turn/" in path else APP_SECRET
        if headers.get("Authorization") != f"Bearer {bearer}":
            return self._json(401, {"errorCode": "unauthorized", "errorDescription": "bad token"})
        body: Any = json.loads(request.body) if request.body else {}
        if path.endswith("/generate-ice-servers"):
            return self._broken("turn") or self._json(
                201,
                {"iceServers": [{"urls": ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"]},
                                {"urls": ["turn:turn.cloudflare.com:3478?transport=udp",
                                          "turn:turn.cloudflare.com:53?transport=udp"],
                                 "username": "u" * 16, "credential": "c" * 16}]},
            )  # fmt: skip
        match = re.fullmatch(rf"/v1/apps/{APP_ID}/sessions/([^/]+)(/.*)?", path)
        assert match, path
        session, rest = match.group(1), match.group(2) or ""
        if session == "new":
            broken = self._broken("session")
            if broken:
                return broken
            sid = f"sess{next(self._ids):04d}"
            self.sessions[sid] = {"tracks": {}}
            return self._json(201, {"sessionId": sid})
        if session not in self.sessions:
            return self._json(404, {"errorCode": "not_found", "errorDescription": "no such session"})
        state = self.sessions[session]
        if rest == "/tracks/new":
            tracks = TracksRequest.from_json(body)
            if tracks.session_description is not None:
                broken = self._broken("push")
                if broken:
                    return broken
                for track in tracks.tracks:
                    state["tracks"][track.mid] = {
                        "trackName": track.track_name,
                        "mid": track.mid,
                        "status": "active",
                    }
                return self._json(
                    200,
                    {
                        "requiresImmediateRenegotiation": False,
                        "tracks": [{"trackName": t.track_name, "mid": t.mid} for t in tracks.tracks],
                        "sessionDescription": {
                            "type": "answer",
                            "sdp": answer_for(tracks.session_description.sdp),
                        },
                    },
                )
            broken = self._broken("pull")
            if broken:
                return broken
            state["pulled"] = [t.to_json() for t in tracks.tracks]
            doc: dict[str, Any] = {
                "requiresImmediateRenegotiation": self.pull_renegotiates,
                "tracks": [
                    {"trackName": t.track_name, "mid": "0", "sessionId": t.session_id} for t in tracks.tracks
                ],
            }
            if self.pull_renegotiates:
                doc["sessionDescription"] = {"type": "offer", "sdp": "v=0\r\no=- 9 9 IN IP4 0.0.0.0\r\n"}
            return self._json(200, doc)
        if rest == "/tracks/update":
            broken = self._broken("update")
            if broken:
                return broken
            items = body["tracks"]
            state.setdefault("switched", []).extend(items)
            return self._json(
                200,
                {
                    "requiresImmediateRenegotiation": False,
                    "tracks": [
                        {"trackName": t["trackName"], "mid": t["mid"], "sessionId": t["sessionId"]}
                        for t in items
                    ],
                },
            )
        if rest == "/renegotiate":
            broken = self._broken("renegotiate")
            if broken:
                return broken
            description = body["sessionDescription"]
            if description["type"] == "offer":
                return self._json(
                    200, {"sessionDescription": {"type": "answer", "sdp": answer_for(description["sdp"])}}
                )
            return self._json(200, {})
        if rest == "/tracks/close":
            for item in body["tracks"]:
                state["tracks"].pop(item["mid"], None)
            state["closed"] = True
            return self._json(200, {"tracks": [{"mid": item["mid"]} for item in body["tracks"]]})
        if rest == "":
            broken = self._broken("get_session")
            if broken:
                return broken
            return self._json(200, {"tracks": [dict(t, location="local") for t in state["tracks"].values()]})
        raise AssertionError(f"unexpected SFU path {path}")

    def _relay(self, request: Outbound, relay_id: str, path: str) -> Inbound:
        try:
            self.verifier.verify(request.method, path, request.body or b"", dict(request.headers))
        except SignatureError as exc:
            return self._json(401, {"error": {"code": "unauthorized", "message": str(exc)}})
        broken = self._broken(f"relay:{relay_id}")
        if broken:
            return broken
        if request.method == "DELETE":
            call_id = path.rsplit("/", 1)[1]
            held = self.relay_calls.get(call_id)
            known = self.relay_calls.pop(call_id) if held is not None and held["relay"] == relay_id else None
            return self._json(200, {"call_id": call_id, "closed": known is not None})
        body = json.loads(request.body or b"{}")
        assert body["mode"] == "sfu" and body["sfu"]["caller_track_name"] == "mic", body
        self.relay_calls[body["call_id"]] = {"relay": relay_id, **body}
        return self._json(
            201,
            {"call_id": body["call_id"], "mode": "sfu", "sfu_session_id": f"relay-sess-{relay_id}",
             "sfu_track_name": f"relay-{body['call_id']}", "setup_ms": 5.0},
        )  # fmt: skip


def no_secret_in(text: str | bytes) -> bool:
    """True when none of the test secrets appears in ``text`` (responses, logs)."""
    data = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return not any(secret in data for secret in SECRETS)


Clock = Callable[[], float]
