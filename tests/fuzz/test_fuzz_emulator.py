"""Fuzz target 5: the emulator's HTTP API (sfu_emulator/http_api.py over a real Emulator, in process).

sessions/new, tracks/new (the offer a real aiortc offer mutated line by line, the JSON mutated),
tracks/close, tracks/update, renegotiate, GET session and TURN, with mutated bodies, queries, paths and
Bearer tokens, aimed at a small pool of sessions (one with a negotiated peer). The oracle: no 5xx (the
501 of the operations the emulator documents as not emulated, data channels and WebSocket adapters, is
the only exception), and every error in the spec's shape (``errorCode``/``errorDescription``). The pool
is rebuilt every few hundred inputs and every session an input creates is ended, so a long run holds
few peers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import pytest

from splitrelay.emulator.config import Limits, Timers
from splitrelay.emulator.emulator import Emulator
from splitrelay.emulator.http_api import create_app
from splitrelay.emulator.turn import TurnService
from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
from tests.edge_support import browser_offer
from tests.emulator_fixtures import APP_ID, APP_SECRET, TURN_KEY_ID, TURN_TOKEN, emulator_config
from tests.fuzz.asgi import Reply, call, request_target
from tests.fuzz.engine import LONG_RUN_FROM, KnownFailure, Source, chance, choice, run_target
from tests.fuzz.mutate import (
    PATH_TOKENS,
    dumps,
    hostile_path,
    mutate_bytes,
    mutate_doc,
    mutate_sdp,
    mutate_text,
)

pytestmark = pytest.mark.fuzz

BASE: Final = f"/v1/apps/{APP_ID}/sessions"
REBUILD_EVERY: Final = 300
"""Inputs per emulator: then every session and peer is ended and a fresh pool made."""
TIMERS: Final = Timers(
    track_idle_timeout=30.0, reconnect_window=30.0, connect_wait=0.01, unconnected_session_ttl=60.0
)
KEYS: Final = (
    "sessionDescription", "tracks", "type", "sdp", "location", "mid", "trackName", "sessionId", "force",
    "autoDiscover", "bidirectionalMediaStream", "kind", "simulcast", "ttl", "customIdentifier",
)  # fmt: skip
NOT_EMULATED: Final = "not_emulated"
KNOWN_BUGS: Final[tuple[tuple[str, str, str], ...]] = ()
"""(label, exception type, text in its message) of open bugs in sfu_emulator/ (not this tier's to fix), each
with an xfail(strict=True) regression test in tests/fuzz/test_fuzz_found.py; remove a line when its test
passes. Empty: the four this target found (duplicate mid, no direction, c= not an IP, BUNDLE naming an
unknown mid) were fixed in 0fede28."""


class _LastError(logging.Handler):
    """The exception behind the emulator's last 500 (it logs one per internal error)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.last = record.exc_info[1]


LAST_ERROR: Final = _LastError()
logging.getLogger("splitrelay.sfu_emulator.http").addHandler(LAST_ERROR)


def known_bug(error: BaseException | None) -> str | None:
    if error is None:
        return None
    for label, kind, text in KNOWN_BUGS:
        if type(error).__name__ == kind and text in str(error):
            return label
    return None


@dataclass
class EmulatorFuzz:
    offers: tuple[str, ...]
    emulator: Emulator | None = None
    app: Any = None
    uses: int = 0
    sessions: list[str] = field(default_factory=list)
    negotiated: str = ""

    async def fresh(self) -> Any:
        if self.app is not None and self.uses < REBUILD_EVERY:
            self.uses += 1
            return self.app
        if self.emulator is not None:
            await self.emulator.close()
        config = emulator_config(TIMERS, Limits(api_calls_per_second=100_000.0))
        self.emulator = Emulator(config)
        self.app = create_app(self.emulator, TurnService(config, lambda: ("stun:127.0.0.1:3478",)))
        self.uses = 1
        self.sessions = [await self._new_session() for _ in range(2)]
        self.negotiated = self.sessions[0]
        body = {
            "sessionDescription": {"type": "offer", "sdp": self.offers[0]},
            "tracks": [{"location": "local", "mid": "0", "trackName": "mic"}],
        }
        reply = await call(
            self.app, "POST", f"{BASE}/{self.negotiated}/tracks/new".encode(), AUTH, json.dumps(body).encode()
        )
        assert reply.status == 200, reply.body
        return self.app

    async def _new_session(self) -> str:
        reply = await call(self.app, "POST", f"{BASE}/new".encode(), AUTH)
        assert reply.status == 201, reply.body
        return str(reply.json()["sessionId"])

    async def close(self) -> None:
        if self.emulator is not None:
            await self.emulator.close()

    async def end_others(self) -> None:
        """End every session an input created: only the pool stays."""
        assert self.emulator is not None
        for session_id, session in list(self.emulator.sessions.items()):
            if session_id not in self.sessions:
                await self.emulator.end_session(session)


AUTH: Final = [("authorization", f"Bearer {APP_SECRET}"), ("content-type", "application/json")]


@asynccontextmanager
async def emulator_fuzz() -> AsyncIterator[EmulatorFuzz]:
    offers = []
    for _ in range(2):
        peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
        offers.append(await peer.create_offer())
        await peer.close()
    fuzz = EmulatorFuzz((*offers, browser_offer()))
    try:
        yield fuzz
    finally:
        await fuzz.close()


def _offer(fuzz: EmulatorFuzz, source: Source) -> dict[str, str]:
    sdp = choice(source, fuzz.offers)
    return {"type": "offer", "sdp": mutate_sdp(source, sdp) if not chance(source, 20) else sdp}


def operation(fuzz: EmulatorFuzz, source: Source) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, body) of a valid-shaped request on the pool's sessions."""
    session = choice(source, fuzz.sessions)
    body: dict[str, Any] | None
    kind = source.integer(0, 7)
    if kind == 0:
        body = {"sessionDescription": _offer(fuzz, source)} if chance(source, 2) else None
        query = choice(
            source, ("", "?thirdparty=true", "?correlationId=c1", "?thirdparty=1", "?correlationId=")
        )
        return "POST", f"{BASE}/new{query}", body
    if kind <= 2:
        track: dict[str, Any] = choice(
            source,
            (
                {"location": "local", "mid": "0", "trackName": f"t{source.integer(0, 9)}"},
                {"location": "remote", "sessionId": fuzz.negotiated, "trackName": "mic"},
                {"location": "remote", "sessionId": fuzz.negotiated, "trackName": "mic", "mid": "#mic"},
            ),
        )
        body = {"tracks": [track]}
        if chance(source, 3) or track["location"] == "local":
            body["sessionDescription"] = _offer(fuzz, source)
        if chance(source, 6):
            body["autoDiscover"] = True
        return "POST", f"{BASE}/{session}/tracks/new", body
    if kind == 3:
        body = {"tracks": [{"mid": choice(source, ("0", "1", "#mic"))}], "force": chance(source, 2)}
        if body["force"] is False:
            body["sessionDescription"] = _offer(fuzz, source)
        return "PUT", f"{BASE}/{session}/tracks/close", body
    if kind == 4:
        sdp_type = choice(source, ("answer", "offer"))
        return (
            "PUT",
            f"{BASE}/{session}/renegotiate",
            {"sessionDescription": {**_offer(fuzz, source), "type": sdp_type}},
        )
    if kind == 5:
        return "GET", f"{BASE}/{session}", None
    if kind == 6:  # relay failover's call: another session's track on an existing transceiver
        track = {
            "location": choice(source, ("remote", "remote", "local")),
            "sessionId": choice(source, (*fuzz.sessions, "0" * 32)),
            "trackName": choice(source, ("mic", "t1")),
            "mid": choice(source, ("0", "1", "#mic", "#t1")),
        }
        if chance(source, 8):
            track["simulcast"] = {"preferredRid": "h"}
        body = {"tracks": [track] * source.integer(1, 2)}
        if chance(source, 8):
            body["sessionDescription"] = _offer(fuzz, source)
        return "PUT", f"{BASE}/{session}/tracks/update", body
    return "POST", f"/v1/turn/keys/{TURN_KEY_ID}/credentials/generate-ice-servers", {"ttl": 600}


async def one_request(fuzz: EmulatorFuzz, source: Source) -> None:
    app = await fuzz.fresh()
    method, path, doc = operation(fuzz, source)
    body = (
        b""
        if doc is None
        else dumps(mutate_doc(source, doc, keys=KEYS) if chance(source, 4) else doc).encode(
            "utf-8", "surrogatepass"
        )
    )
    if chance(source, 10):
        body = mutate_bytes(source, body)
    if chance(source, 8):
        path = hostile_path(source, (path, f"{BASE}/new", f"{BASE}/x/tracks/new", "/v1/apps/x/sessions/new"))
        method = choice(source, (method, "GET", "POST", "PUT", "DELETE", "PATCH"))
    if chance(source, 12):
        path += "?" + mutate_text(source, "correlationId=a&thirdparty=true", tokens=PATH_TOKENS)
    headers = list(AUTH)
    if path.startswith("/v1/turn"):
        headers[0] = ("authorization", f"Bearer {TURN_TOKEN}")
    if chance(source, 10):
        headers[0] = ("authorization", mutate_text(source, headers[0][1], tokens=(" ", "Bearer ", "\x85")))
    if chance(source, 20):
        headers = headers[1:]
    target = request_target(path)
    what = f"{method} {target[:200]!r} headers={headers!r} body={body[:300]!r}"
    LAST_ERROR.last = None
    try:
        reply = await call(app, method, target, headers, body)
    except Exception as exc:
        raise AssertionError(f"HTTP 500 (unhandled {type(exc).__name__}: {exc}) <- {what}") from exc
    finally:
        await fuzz.end_others()
    if reply.status == 500:
        label = known_bug(LAST_ERROR.last)
        if label is not None:
            raise KnownFailure(label)
        what += f" (emulator raised {LAST_ERROR.last!r})"
    check_reply(reply, what)


def check_reply(reply: Reply, what: str) -> None:
    if reply.status == 204 or 300 <= reply.status < 400:  # Starlette's trailing-slash redirect has no body
        return
    try:
        doc = reply.json()
    except ValueError:
        raise AssertionError(f"HTTP {reply.status}: not JSON {reply.body[:200]!r} <- {what}") from None
    documented = reply.status == 501 and isinstance(doc, dict) and doc.get("errorCode") == NOT_EMULATED
    assert reply.status < 500 or documented, f"HTTP {reply.status} {reply.body[:300]!r} <- {what}"
    if reply.status >= 400:
        assert (
            isinstance(doc, dict) and doc.get("errorCode") and len(str(doc.get("errorDescription", ""))) >= 8
        ), f"HTTP {reply.status}: not the spec's error shape {reply.body[:300]!r} <- {what}"


def _run(name: str, examples: int | None = None) -> None:
    with asyncio.Runner() as runner:
        context = emulator_fuzz()
        fuzz = runner.run(context.__aenter__())
        try:

            async def step(source: Source) -> None:
                await one_request(fuzz, source)

            run_target(name, runner, step, examples=examples)
        finally:
            runner.run(context.__aexit__(None, None, None))


def test_emulator_api_never_5xx() -> None:
    _run("emulator")


def test_a_raise_injected_in_the_sdp_check_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target can fail: an SDP check that crashes (RuntimeError, a 500) on an offer missing its
    ``a=fingerprint`` line, instead of refusing it with a 400, is caught.

    The trigger is structural (a deleted or truncated-away line, the mutator's commonest change), not one
    exact garbled token, so it does not hang on the line order of the offers a run happens to make.
    """
    from splitrelay.emulator import peer

    real = peer.parse_description

    def fragile(sdp: str, field: str) -> Any:
        if "a=fingerprint" not in sdp:
            raise RuntimeError("fingerprint")
        return real(sdp, field)

    monkeypatch.setattr(peer, "parse_description", fragile)
    with pytest.raises(AssertionError, match="HTTP 500"):
        _run("emulator-injected", examples=LONG_RUN_FROM // 10)
