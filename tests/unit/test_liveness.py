"""Relay liveness at the edge (edge/relay_watch.py, the relay routes of edge/app.py), on a fake clock.

A relay beats every ~250 ms; when no beat came for the timeout the watch's alarm declares it lost and
every call on it closes with ``relay_lost``. Relay → edge messages are signed: a bad signature, a replay,
an unknown relay or call and an oversized body each get a clear 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from splitrelay.contract.control import call_end_path, heartbeat_path, stages_path
from splitrelay.contract.signing import sign_headers
from splitrelay.devtools.local_edge import LocalWatches, MemoryStorage
from splitrelay.edge.calls import Inbound, run_relay_alarm
from splitrelay.edge.relay_watch import CLAIM_GRACE_S, RelayWatch
from splitrelay.edge.web import MAX_BODY_BYTES, EdgeRequest, EdgeResponse
from tests.edge_support import RELAY_KEY, edge_env, no_secret_in
from tests.unit.test_edge_app import PARIS, Harness

NOW = 1_800_000_000.0


async def no_alarm() -> None:
    return None


def beat(
    seq: int, calls: tuple[str, ...] = (), *, boot: str = "boot-a", draining: bool = False
) -> dict[str, Any]:
    return {"boot_id": boot, "seq": seq, "calls": list(calls), "draining": draining, "interval_ms": 250}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watch(clock: Clock) -> RelayWatch:
    return RelayWatch(MemoryStorage(no_alarm, clock), clock, timeout_s=1.0)


async def send_beat(watch: RelayWatch, seq: int, calls: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    return await watch.dispatch({"op": "heartbeat", "relay_id": "fra", "beat": beat(seq, calls, **kw)})


async def test_silent_relay_is_lost_after_the_timeout_with_its_calls(watch: RelayWatch, clock: Clock) -> None:
    storage = watch.storage
    assert isinstance(storage, MemoryStorage)
    reply = await send_beat(watch, 1, ("call-a", "call-b"))
    assert reply == {
        "draining_seen": False,
        "timeout_ms": 1000,
        "closed": [],
        "hand_over": [],
        "came_back": [],
    }
    assert storage.alarm_at_ms == (NOW + 1.0) * 1000
    for step in range(1, 4):  # beats every 250 ms keep it alive; the alarm re-arms from the last one
        clock.now = NOW + 0.25 * step
        await send_beat(watch, 1 + step, ("call-a", "call-b"))
    clock.now = NOW + 1.0
    assert await watch.alarm() is None  # last beat at +0.75 s: not yet silent for 1 s
    assert storage.alarm_at_ms == (NOW + 1.75) * 1000
    clock.now = NOW + 1.75
    lost = await watch.alarm()
    assert lost is not None and lost.calls == ("call-a", "call-b") and lost.silent_s == pytest.approx(1.0)
    assert (await watch.alarm()) is None  # lost once, reported once
    refused = await watch.dispatch({"op": "claim", "relay_id": "fra", "call_id": "call-c"})
    assert refused == {"ok": False, "why": "lost", "draining": False}
    await send_beat(watch, 1, boot="boot-b")  # restarted: alive again, a new boot restarts seq
    assert (await watch.dispatch({"op": "claim", "relay_id": "fra", "call_id": "call-c"}))["ok"] is True


async def test_beats_cost_no_storage_write_unless_something_changed(watch: RelayWatch, clock: Clock) -> None:
    writes: list[str] = []
    storage = watch.storage
    assert isinstance(storage, MemoryStorage)
    put = storage.put

    async def counting_put(key: str, value: str) -> None:
        writes.append(key)
        await put(key, value)

    storage.put = counting_put  # type: ignore[method-assign]
    await send_beat(watch, 1, ("call-a",))
    for seq in range(2, 12):
        clock.now += 0.25
        await send_beat(watch, seq, ("call-a",))
    assert writes == ["relay"]
    await send_beat(watch, 12, ("call-a",), draining=True)
    assert writes == ["relay", "relay"]


async def test_dropped_calls_stale_beats_claims_and_drain(watch: RelayWatch, clock: Clock) -> None:
    await send_beat(watch, 5, ("call-a",))
    stale = await send_beat(watch, 5, ("call-a",))
    assert stale["error"]["status"] == 409 and stale["error"]["code"] == "stale_heartbeat"
    claimed = await watch.dispatch({"op": "claim", "relay_id": "fra", "call_id": "call-new"})
    assert claimed == {"ok": True, "why": "alive", "draining": False}
    # call-a ended on the relay: the next beat drops it, and the edge closes it; call-new is in its grace.
    reply = await send_beat(watch, 6, ())
    assert reply["closed"] == ["call-a"]
    clock.now += CLAIM_GRACE_S + 1  # never listed: forgotten, not closed (its attach went elsewhere)
    assert (await send_beat(watch, 7, ()))["closed"] == []
    assert (await watch.status("fra"))["calls"] == 0
    drained = await send_beat(watch, 8, (), draining=True)
    assert drained["draining_seen"] is True
    refused = await watch.dispatch({"op": "claim", "relay_id": "fra", "call_id": "call-x"})
    assert refused == {"ok": False, "why": "draining", "draining": True}


async def test_unknown_relay_is_allowed_and_bad_commands_are_400(watch: RelayWatch) -> None:
    unknown = await watch.dispatch({"op": "claim", "relay_id": "fra", "call_id": "call-1"})
    assert unknown == {"ok": True, "why": "unknown", "draining": False}
    assert await watch.alarm() is None  # never heard from: never lost
    for command in (
        {"op": "explode", "relay_id": "fra"},
        {"op": "claim", "relay_id": "bad id", "call_id": "call-1"},
        {"op": "heartbeat", "relay_id": "fra", "beat": {"boot_id": "b", "seq": -1}},
        {"op": "heartbeat", "relay_id": "fra", "beat": {"boot_id": "b", "seq": 1, "calls": ["bad id"]}},
    ):
        reply = await watch.dispatch(command)
        assert reply["error"]["status"] == 400, command


async def test_a_reloaded_watch_gives_the_relay_one_more_timeout(clock: Clock) -> None:
    storage = MemoryStorage(no_alarm, clock)
    first = RelayWatch(storage, clock, timeout_s=1.0)
    await first.dispatch({"op": "heartbeat", "relay_id": "fra", "beat": beat(1, ("call-a",))})
    clock.now += 30  # evicted; a new instance reads the same storage
    second = RelayWatch(storage, clock, timeout_s=1.0)
    assert await second.alarm() is None
    clock.now += 1.0
    lost = await second.alarm()
    assert lost is not None and lost.calls == ("call-a",)


# --- through the edge: signed routes, the alarm closing calls ------------------------------------------


class LiveHarness(Harness):
    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.watches = LocalWatches(clock=lambda: self.now)
        self.app.calls.watches = self.watches

    async def relay_post(
        self,
        path: str,
        doc: object,
        *,
        key: str = RELAY_KEY,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> EdgeResponse:
        body = raw if raw is not None else json.dumps(doc).encode()
        signed = sign_headers(key.encode(), "POST", path, body, now=self.now)
        signed.update(headers or {})
        signed["content-type"] = "application/json"
        response = await self.app.handle(EdgeRequest("POST", path, headers=signed, body=body))
        self.responses.append(response)
        return response

    async def beat(self, relay: str, seq: int, calls: tuple[str, ...] = (), **kw: Any) -> EdgeResponse:
        return await self.relay_post(heartbeat_path(relay), beat(seq, calls, **kw))


async def connected_call(h: LiveHarness) -> str:
    created = await h.create(cf=PARIS)
    await h.drain()
    call_id = str(created["call_id"])
    state = (await h.request("GET", f"/v1/calls/{call_id}")).json()
    assert state["state"] == "connected" and state["relay"]["id"] == "fra"
    return call_id


async def test_a_lost_relay_s_call_moves_to_another_relay_without_a_new_offer() -> None:
    """Failover: the lost relay's call is attached to the next relay (with ``continues``), the caller's
    transceiver is switched to its voice with tracks/update, and the record stays connected."""
    h = LiveHarness()
    assert (await h.beat("fra", 1)).status == 200
    call_id = await connected_call(h)
    caller_session = h.upstream.relay_calls[call_id]["sfu"]["caller_session_id"]
    assert (await h.beat("fra", 2, (call_id,))).json()["closed"] == []
    h.now += 1.0
    steps_before = len(h.upstream.steps())
    assert await run_relay_alarm(h.watches.object("fra"), h.app.calls) == "lost: 1 call(s)"
    state = (await h.request("GET", f"/v1/calls/{call_id}")).json()
    assert state["state"] == "connected" and state["relay"]["id"] == "iad" and state["moves"] == 1, state
    new_steps = h.upstream.steps()[steps_before:]
    assert "POST relay-iad.test/v1/calls" in new_steps
    assert not any("relay-fra" in step for step in new_steps)  # no DELETE to a dead relay
    attach = h.upstream.relay_calls[call_id]
    assert attach["relay"] == "iad"
    assert attach["continues"] == {"previous_relay": "fra", "reason": "relay_lost", "attempt": 1}
    (switch,) = h.upstream.sessions[caller_session]["switched"]
    assert switch == {
        "location": "remote",
        "sessionId": "relay-sess-iad",
        "trackName": f"relay-{call_id}",
        "mid": state_mid(h, caller_session),
    }
    await h.watches.aclose()


def state_mid(h: LiveHarness, session: str) -> str:
    (mid,) = h.upstream.sessions[session]["tracks"]
    return str(mid)


async def test_a_lost_relay_s_call_closes_with_relay_lost_when_no_relay_takes_it() -> None:
    h = LiveHarness()
    assert (await h.beat("fra", 1)).status == 200
    call_id = await connected_call(h)
    assert (await h.beat("fra", 2, (call_id,))).json()["closed"] == []
    refused = Inbound(503, {}, b'{"error":{"code":"draining","message":"draining"}}')
    h.upstream.fail.update({"relay:iad": refused, "relay:sin": refused})  # every other region refuses
    h.now += 1.0
    steps_before = len(h.upstream.steps())
    assert await run_relay_alarm(h.watches.object("fra"), h.app.calls) == "lost: 1 call(s)"
    state = (await h.request("GET", f"/v1/calls/{call_id}")).json()
    assert state["state"] == "closed" and state["close_reason"].startswith("relay_lost: relay fra")
    new_steps = h.upstream.steps()[steps_before:]
    assert any("tracks/close" in step for step in new_steps)  # the caller's SFU track is closed
    assert not any("relay-fra" in step for step in new_steps)  # no DELETE to a dead relay
    # New calls skip the lost relay: this isolate heard it was lost, and its watch refuses the claim.
    h.upstream.fail.clear()
    created = await h.create(cf=PARIS)
    await h.drain()
    assert (await h.request("GET", f"/v1/calls/{created['call_id']}")).json()["relay"]["id"] == "iad"
    await h.watches.aclose()


async def test_a_lost_relay_that_beats_again_is_told_to_let_go_of_the_calls_closed_meanwhile() -> None:
    """A stall, not a death: the relay's call was closed (relay_lost) while it was silent; when it beats
    again still listing the call, the edge sends it a signed DELETE, else the call (and its SFU session)
    would live on there until the relay stopped."""
    h = LiveHarness()
    assert (await h.beat("fra", 1)).status == 200
    call_id = await connected_call(h)
    assert (await h.beat("fra", 2, (call_id,))).status == 200
    refused = Inbound(503, {}, b'{"error":{"code":"draining","message":"draining"}}')
    h.upstream.fail.update({"relay:iad": refused, "relay:sin": refused})
    h.now += 1.0
    assert await run_relay_alarm(h.watches.object("fra"), h.app.calls) == "lost: 1 call(s)"
    steps_before = len(h.upstream.steps())
    reply = await h.beat("fra", 3, (call_id,))  # the same boot: it was stalled, not restarted
    assert reply.status == 200 and "came_back" not in reply.json()  # internal: not sent to the relay
    await h.drain()
    new_steps = h.upstream.steps()[steps_before:]
    assert any(step.startswith("DELETE relay-fra.test") for step in new_steps), new_steps
    # A beat after that (the relay still lists it until its DELETE lands) sends nothing more.
    steps_before = len(h.upstream.steps())
    assert (await h.beat("fra", 4, (call_id,))).status == 200
    await h.drain()
    assert not any(step.startswith("DELETE") for step in h.upstream.steps()[steps_before:])
    await h.watches.aclose()


async def test_a_draining_relay_s_calls_are_handed_over_then_let_go() -> None:
    """Drain: the first draining beat moves the relay's calls (make: attach + switch), then the edge
    lets the old relay go (break: a signed DELETE)."""
    h = LiveHarness()
    assert (await h.beat("fra", 1)).status == 200
    call_id = await connected_call(h)
    assert (await h.beat("fra", 2, (call_id,))).status == 200
    steps_before = len(h.upstream.steps())
    reply = await h.beat("fra", 3, (call_id,), draining=True)
    assert reply.status == 200 and "hand_over" not in reply.json()  # internal: not sent to the relay
    await h.drain()
    new_steps = h.upstream.steps()[steps_before:]
    post, switch = (
        new_steps.index("POST relay-iad.test/v1/calls"),
        next(i for i, step in enumerate(new_steps) if step.endswith("/tracks/update")),
    )
    delete = next(i for i, step in enumerate(new_steps) if step.startswith("DELETE relay-fra.test"))
    assert post < switch < delete  # make before break
    state = (await h.request("GET", f"/v1/calls/{call_id}")).json()
    assert state["state"] == "connected" and state["relay"]["id"] == "iad"
    assert h.upstream.relay_calls[call_id]["continues"]["reason"] == "drain"
    await h.watches.aclose()


async def test_draining_relay_is_skipped_before_it_refuses_and_none_left_is_503() -> None:
    only_fra = [{"id": "fra", "control_url": "https://relay-fra.test", "latitude": 50.1, "longitude": 8.7}]
    h = LiveHarness(edge_env(only_fra))
    reply = await h.beat("fra", 1, draining=True)
    assert reply.status == 200 and reply.json()["draining_seen"] is True
    where: dict[str, object] = dict(PARIS)
    refused = await h.request("POST", "/v1/calls", {"offer": {"type": "offer", "sdp": "v=0"}}, cf=where)
    assert refused.status == 503 and refused.json()["error"]["code"] == "no_relay"
    assert not any("relay-" in step for step in h.upstream.steps())
    assert (await h.beat("fra", 2, draining=False)).status == 200  # undrained
    await connected_call(h)
    await h.watches.aclose()


async def test_call_end_from_the_relay_closes_the_record_and_the_sfu_track() -> None:
    h = LiveHarness()
    call_id = await connected_call(h)
    steps_before = len(h.upstream.steps())
    ended = await h.relay_post(call_end_path("fra", call_id), {"code": "agent_ended", "reason": "bye"})
    assert ended.status == 200 and ended.json() == {"call_id": call_id, "closed_now": True, "state": "closed"}
    state = (await h.request("GET", f"/v1/calls/{call_id}")).json()
    assert state["close_reason"] == "relay_ended: agent_ended: bye"
    assert any("tracks/close" in step for step in h.upstream.steps()[steps_before:])
    again = await h.relay_post(call_end_path("fra", call_id), {"code": "agent_ended", "reason": "bye"})
    assert again.status == 200 and again.json()["closed_now"] is False  # idempotent
    # Another relay cannot end a call that is not on it.
    other = await connected_call(h)
    wrong = await h.relay_post(call_end_path("iad", other), {"code": "other", "reason": "x"})
    assert wrong.status == 200 and wrong.json()["closed_now"] is False
    assert (await h.request("GET", f"/v1/calls/{other}")).json()["state"] == "connected"


async def test_the_agents_stage_marks_reach_the_callers_record() -> None:
    """The relay posts the agent's stage marks (signed); the caller reads the last ones in its record.
    Marks from a relay the call is not on are dropped; a bad mark is refused by field."""
    h = LiveHarness()
    call_id = await connected_call(h)
    marks = [
        {"turn": 1, "name": "stt_final", "ms": 180.5},
        {"turn": 1, "name": "llm_first_token", "ms": 402.0},
    ]
    posted = await h.relay_post(stages_path("fra", call_id), {"stages": marks})
    assert posted.status == 200 and posted.json() == {"call_id": call_id, "stages": 2}
    assert (await h.request("GET", f"/v1/calls/{call_id}")).json()["stages"] == marks
    other = await h.relay_post(stages_path("iad", call_id), {"stages": marks})
    assert other.status == 200 and other.json()["stages"] == 2  # not its call: nothing added
    many = [{"turn": t, "name": "tts_first_byte", "ms": 1.0} for t in range(16)]
    for _ in range(2):
        assert (await h.relay_post(stages_path("fra", call_id), {"stages": many})).status == 200
    kept = (await h.request("GET", f"/v1/calls/{call_id}")).json()["stages"]
    assert len(kept) == 24 and kept[-1] == many[-1]  # the latest, bounded
    for body, field in (
        ({"stages": []}, "stages"),
        ({"stages": [{"turn": 1, "name": "STT final", "ms": 1}]}, "stages[0].name"),
        ({"stages": [{"turn": 1, "name": "stt", "ms": 1e9}]}, "stages[0].ms"),
        ({"stages": marks, "more": 1}, "more"),
    ):
        refused = await h.relay_post(stages_path("fra", call_id), body)
        assert refused.status == 400 and refused.json()["error"]["field"] == field, refused.json()
    unsigned = await h.relay_post(stages_path("fra", call_id), {"stages": marks}, key="k" * 40)
    assert unsigned.status == 401
    unknown = await h.relay_post(stages_path("fra", "call-unknown"), {"stages": marks})
    assert unknown.status == 404


async def test_a_beat_that_drops_a_call_closes_it_at_the_edge() -> None:
    h = LiveHarness()
    call_id = await connected_call(h)
    await h.beat("fra", 1, (call_id,))
    await h.beat("fra", 2, ())
    await h.drain()
    state = (await h.request("GET", f"/v1/calls/{call_id}")).json()
    assert state["state"] == "closed" and state["close_reason"].startswith("relay_ended")


async def test_relay_messages_refused_with_clear_4xx() -> None:
    h = LiveHarness()
    call_id = await connected_call(h)
    path = heartbeat_path("fra")
    forged = await h.relay_post(path, beat(1), key="x" * 40)
    assert forged.status == 401 and forged.json()["error"]["code"] == "unauthorized"
    unsigned = await h.app.handle(EdgeRequest("POST", path, headers={}, body=b"{}"))
    assert unsigned.status == 401
    body = json.dumps(beat(1)).encode()
    headers = sign_headers(RELAY_KEY.encode(), "POST", path, body, now=h.now)
    headers["content-type"] = "application/json"
    first = await h.app.handle(EdgeRequest("POST", path, headers=headers, body=body))
    replayed = await h.app.handle(EdgeRequest("POST", path, headers=headers, body=body))
    assert first.status == 200 and replayed.status == 409 and replayed.json()["error"]["code"] == "replayed"
    stale = await h.beat("fra", 1)  # same boot, same seq, new nonce: the watch refuses it
    assert stale.status == 409 and stale.json()["error"]["code"] == "stale_heartbeat"
    unknown_relay = await h.beat("nowhere", 1)
    assert unknown_relay.status == 404 and unknown_relay.json()["error"]["code"] == "unknown_relay"
    unknown_call = await h.relay_post(call_end_path("fra", "call-000"), {"code": "other", "reason": "x"})
    assert unknown_call.status == 404 and unknown_call.json()["error"]["code"] == "unknown_call"
    bad_code = await h.relay_post(call_end_path("fra", call_id), {"code": "nope", "reason": "x"})
    assert bad_code.status == 400 and "code" in bad_code.json()["error"]["message"]
    too_many = await h.relay_post(path, beat(9, tuple(f"call-{i}" for i in range(1501))))
    assert too_many.status in (400, 413)
    big = await h.relay_post(path, None, raw=b'{"x":"' + b"a" * MAX_BODY_BYTES + b'"}')
    assert big.status == 413
    wrong_method = await h.app.handle(EdgeRequest("GET", path, headers={}, body=b""))
    assert wrong_method.status == 405
    for response in (forged, unsigned, replayed, stale, unknown_relay, unknown_call, bad_code, big):
        assert 400 <= response.status < 500 and no_secret_in(response.body)
    await h.watches.aclose()


async def test_heartbeats_without_watches_are_503() -> None:
    h = Harness()
    body = json.dumps(beat(1)).encode()
    headers = sign_headers(RELAY_KEY.encode(), "POST", heartbeat_path("fra"), body, now=h.now)
    headers["content-type"] = "application/json"
    response = await h.app.handle(EdgeRequest("POST", heartbeat_path("fra"), headers=headers, body=body))
    assert response.status == 503 and response.json()["error"]["code"] == "liveness_disabled"


async def test_local_watch_alarm_fires_on_the_event_loop() -> None:
    """The in-memory stand-in really fires: a relay that stops beating is lost ~timeout later."""
    watches = LocalWatches()
    watches.timeout_s = 0.2
    lost: list[tuple[str, ...]] = []

    async def runner(watch: RelayWatch) -> None:
        found = await watch.alarm()
        if found is not None:
            lost.append(found.calls)

    watches.alarm_runner = runner
    await watches.send("fra", {"op": "heartbeat", "relay_id": "fra", "beat": beat(1, ("call-a",))})
    for _ in range(100):  # bounded: 2 s
        if lost:
            break
        await asyncio.sleep(0.02)
    assert lost == [("call-a",)]
    await watches.aclose()


async def test_the_first_draining_beat_hands_the_relays_calls_over_once(watch: RelayWatch) -> None:
    """Drain with hand-over: the beat that first says "draining" names the calls to move; later beats
    (still draining) and an undrain name none."""
    await send_beat(watch, 1, ("call-a", "call-b"))
    first = await send_beat(watch, 2, ("call-a", "call-b"), draining=True)
    assert first["hand_over"] == ["call-a", "call-b"] and first["draining_seen"] is True
    assert (await send_beat(watch, 3, ("call-a",), draining=True))["hand_over"] == []
    assert (await send_beat(watch, 4, ("call-a",)))["hand_over"] == []
    restarted = await send_beat(watch, 1, ("call-c",), boot="boot-b", draining=True)
    assert restarted["hand_over"] == []  # a relay that boots draining has no calls of ours to move
