"""`splitrelay call` keeps what it measured when something fails mid-call, and reuses no stale connection.

A real relay in direct mode with a real echo agent on loopback; the relay lookup between turns is
made to fail the way a stale keep-alive connection fails (a transport error on a GET).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from splitrelay.devtools.call import (
    CallError,
    CallOptions,
    RelayAccess,
    RelayInspector,
    _request,
    run_direct_call,
)
from splitrelay.devtools.utterance import load_utterance
from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.relay.media.impair import parse_impairment
from tests.e2e.test_call_harness import KEY, relay_with

pytestmark = pytest.mark.e2e


async def test_a_failed_relay_lookup_keeps_every_measured_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    real_call = RelayInspector.call
    lookups = 0

    async def flaky_call(self: RelayInspector, call_id: str) -> dict[str, Any] | None:
        nonlocal lookups
        summary = await real_call(self, call_id)
        if summary is not None and summary.get("state") == "live" and summary.get("events"):
            lookups += 1
            if lookups == 1:  # the lookup after the first turn
                raise CallError("GET relay /v1/calls/{id}: no response from relay (RemoteProtocolError)")
        return summary

    monkeypatch.setattr(RelayInspector, "call", flaky_call)
    utterance = load_utterance()
    async with relay_with(EchoAgent(EchoConfig())) as relay:
        report = await run_direct_call(RelayAccess(relay.url, KEY.encode()), utterance, turns=2)
    assert lookups >= 2
    assert report.errors == [
        "turn 1: relay lookup failed, earlier view kept: "
        "GET relay /v1/calls/{id}: no response from relay (RemoteProtocolError)"
    ]
    assert [turn.turn for turn in report.turns] == [1, 2]
    assert all(turn.voice_to_voice_ms is not None for turn in report.turns)
    assert report.relay is not None and len(report.relay.replies) == 2  # the later lookup's view


async def test_a_read_is_retried_once_on_a_fresh_connection_and_a_write_never() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) % 2 == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        response = await _request(http, "GET x", "GET", "http://relay.test/v1/calls", expect=(200,))
        assert response.json() == {"ok": True} and seen == ["GET", "GET"]
        seen.clear()
        with pytest.raises(CallError, match=r"POST x: no response from relay.test \(RemoteProtocolError\)"):
            await _request(http, "POST x", "POST", "http://relay.test/v1/calls", expect=(201,))
        assert seen == ["POST"]


async def test_an_impaired_caller_leg_loses_and_delays_real_media_and_the_report_says_so() -> None:
    """`splitrelay call --impair`: the userspace stage on the caller's SRTP, both directions."""
    impairment = parse_impairment("loss=5%,delay=20ms,jitter=10ms,seed=3")
    async with relay_with(EchoAgent(EchoConfig())) as relay:
        report = await run_direct_call(
            RelayAccess(relay.url, KEY.encode()),
            load_utterance(),
            turns=1,
            options=CallOptions(impair=impairment),
        )
    sent, received = report.caller["impaired_sent"], report.caller["impaired_received"]
    assert sent["model"] == received["model"] == impairment.describe()
    for stats in (sent, received):
        assert stats["offered"] > 50 and 0 < stats["lost"] < stats["offered"] * 0.15
    assert report.caller["lost_in"] >= received["lost"] * 0.5  # the receiver's own RTP accounting sees it
    (turn,) = report.turns
    assert turn.reply_frames > 0 and turn.voice_to_voice_ms is not None
