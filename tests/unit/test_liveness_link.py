"""The relay's side of liveness (relay/edge_link.py) against the real edge logic in process.

The link beats into a LocalEdge over ASGI (no sockets): the edge hears the beats, the drain is
acknowledged before ``announce_drain`` returns, a call the relay ends closes the edge's record with
the reason, a call the edge closed sends nothing back, and a link that stops beating makes the edge
declare the relay lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from typer.testing import CliRunner

from splitrelay.cli.main import app as cli
from splitrelay.contract.control import EndCode
from splitrelay.devtools.local_edge import LocalEdge
from splitrelay.edge.call_record import CallRecord, CallState
from splitrelay.relay.edge_link import CLOSED_BY_EDGE, EdgeLink, EdgeLinkSettings, end_code
from tests.edge_support import RELAY_KEY, edge_env

RELAYS = [{"id": "relay-0", "control_url": "http://127.0.0.1:9"}]


@pytest_asyncio.fixture
async def edge() -> AsyncIterator[LocalEdge]:
    local = LocalEdge(edge_env(RELAYS, RELAY_LIVENESS_TIMEOUT_S="0.3"))
    try:
        yield local
    finally:
        await local.aclose()


def link_to(edge: LocalEdge, calls: list[str], interval_s: float = 0.25) -> EdgeLink:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://edge.test")
    settings = EdgeLinkSettings("http://edge.test", "relay-0", RELAY_KEY.encode(), interval_s=interval_s)
    return EdgeLink(settings, lambda: list(calls), http=http)


async def new_record(edge: LocalEdge, call_id: str) -> None:
    record = CallRecord(
        call_id=call_id, owner="alice", state=CallState.CREATED, created_at=0.0, setup_deadline=4e9,
        max_end=4e9, check_interval_s=60, relay={"id": "relay-0", "control_url": "http://127.0.0.1:9"},
    )  # fmt: skip
    reply = await edge.records.send(call_id, {"op": "create", "call_id": call_id, "record": record.to_json()})
    assert "error" not in reply, reply


def test_end_codes_from_relay_reasons() -> None:
    assert end_code("inference ended the call: unknown_call") is EndCode.AGENT_LOST
    assert end_code("inference ended the call: done") is EndCode.AGENT_ENDED
    assert end_code("inference ended the call: agent lost (silent 0.8 s)") is EndCode.AGENT_LOST
    assert end_code("setup failed: no answer") is EndCode.SETUP_FAILED
    assert end_code("peer connection failed") is EndCode.PEER_CLOSED
    assert end_code("caller sent RTCP BYE") is EndCode.PEER_CLOSED
    assert end_code("relay shutting down") is EndCode.SHUTDOWN
    assert end_code("something else") is EndCode.OTHER


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"edge_url": "ftp://edge"}, "edge URL"),
        ({"relay_id": "bad id"}, "relay id"),
        ({"key": b"short"}, "at least 32 bytes"),
        ({"interval_s": 0.0}, "heartbeat interval"),
    ],
)
def test_settings_refuse_bad_values(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"edge_url": "http://e", "relay_id": "r", "key": b"k" * 40, **kwargs}
    with pytest.raises(ValueError, match=message):
        EdgeLinkSettings(**values)  # type: ignore[arg-type]
    assert b"k" * 40 not in repr(EdgeLinkSettings("http://e", "r", b"k" * 40)).encode()


async def test_beats_drain_and_call_ends_reach_the_edge(edge: LocalEdge) -> None:
    calls = ["call-1"]
    await new_record(edge, "call-1")
    link = link_to(edge, calls)
    reply = await link.beat()
    assert reply is not None and reply.draining_seen is False and reply.timeout_ms == 300
    assert await link.announce_drain(True) is True
    assert edge.app.calls.relay_status["relay-0"][0] == "draining"
    assert await link.announce_drain(False) is True
    link.call_ended("call-1", "inference ended the call: bye")
    link.call_ended("call-2", CLOSED_BY_EDGE)  # the edge closed it: nothing goes back
    await link.aclose()
    assert link.notices_sent == 1 and link.notices_failed == 0
    record = await edge.app.calls.get_record("call-1")
    assert record.state is CallState.CLOSED
    assert record.close_reason == "relay_ended: agent_ended: inference ended the call: bye"


async def test_agent_stage_marks_reach_the_callers_record(edge: LocalEdge) -> None:
    await new_record(edge, "call-5")
    await edge.records.send("call-5", {"op": "connect", "call_id": "call-5", "set": {}})
    link = link_to(edge, ["call-5"])
    link.call_stages("call-5", {"type": "agent.stage", "turn": 2, "name": "stt_final", "ms": 151.25})
    link.call_stages("call-5", {"type": "agent.stage", "turn": 2, "name": "Bad Name", "ms": 1})
    link.call_stages("call-5", {"type": "agent.stage", "turn": 2, "name": "llm_first_token", "ms": 390})
    await link.aclose()
    assert link.stages_sent == 2 and link.stages_dropped == 1
    assert link.stage_posts == 1  # one turn's marks, one request
    record = await edge.app.calls.get_record("call-5")
    assert record.public()["stages"] == [
        {"turn": 2, "name": "stt_final", "ms": 151.25},
        {"turn": 2, "name": "llm_first_token", "ms": 390.0},
    ]


async def test_a_link_that_stops_beating_is_declared_lost(edge: LocalEdge) -> None:
    await new_record(edge, "call-9")
    await edge.records.send("call-9", {"op": "connect", "call_id": "call-9", "set": {}})
    link = link_to(edge, ["call-9"], interval_s=0.05)
    link.start()
    for _ in range(100):  # bounded: 2 s
        if link.beats_sent >= 3:
            break
        await asyncio.sleep(0.02)
    assert link.beats_sent >= 3 and link.beats_failed == 0
    await link.aclose()  # the relay "dies": no more beats
    for _ in range(150):  # bounded: 3 s
        record = await edge.app.calls.get_record("call-9")
        if record.state is CallState.CLOSED:
            break
        await asyncio.sleep(0.02)
    assert record.close_reason is not None and record.close_reason.startswith("relay_lost: relay relay-0")
    assert edge.app.calls.relay_status["relay-0"][0] == "lost"


async def test_a_refused_beat_is_counted_not_raised(edge: LocalEdge) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url="http://edge.test")
    wrong_key = EdgeLinkSettings("http://edge.test", "relay-0", b"w" * 40)
    link = EdgeLink(wrong_key, list, http=http)
    assert await link.beat() is None and link.beats_failed == 1
    await link.aclose()
    await http.aclose()


@pytest.mark.parametrize("verb", ["drain", "undrain"])
def test_drain_cli_refuses_bad_input_without_printing_the_key(
    verb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPLITRELAY_RELAY_SIGNING_KEY", raising=False)
    runner = CliRunner()
    no_key = runner.invoke(cli, ["relay", verb, "--url", "http://127.0.0.1:9"])
    assert no_key.exit_code != 0 and "SPLITRELAY_RELAY_SIGNING_KEY" in no_key.output
    key = "k" * 40
    bad_url = runner.invoke(
        cli, ["relay", verb, "--url", "ftp://x"], env={"SPLITRELAY_RELAY_SIGNING_KEY": key}
    )
    assert bad_url.exit_code != 0 and "--url" in bad_url.output and key not in bad_url.output
    down = runner.invoke(
        cli,
        ["relay", verb, "--url", "http://127.0.0.1:9", "--json"],
        env={"SPLITRELAY_RELAY_SIGNING_KEY": key},
    )
    assert down.exit_code == 2 and key not in down.output
