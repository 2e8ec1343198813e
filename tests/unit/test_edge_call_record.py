"""The per-call Durable Object's logic (edge/call_record.py): commands, transitions, refusals, alarm time."""

from __future__ import annotations

from typing import Any

import pytest

from splitrelay.devtools.local_edge import MemoryStorage
from splitrelay.edge.call_record import CLOSED_RETENTION_S, CallObject, CallRecord, CallState

NOW = 1_800_000_000.0


async def no_alarm() -> None:
    return None


def record(**changes: Any) -> dict[str, Any]:
    base = CallRecord(
        call_id="call-1", owner="alice", state=CallState.CREATED, created_at=NOW, setup_deadline=NOW + 20,
        max_end=NOW + 3600, check_interval_s=60,
    )  # fmt: skip
    return {**base.to_json(), **changes}


@pytest.fixture
def obj() -> CallObject:
    return CallObject(MemoryStorage(no_alarm, lambda: NOW), lambda: NOW)


async def test_lifecycle_and_alarm_times(obj: CallObject) -> None:
    storage = obj.storage
    assert isinstance(storage, MemoryStorage)
    created = await obj.dispatch({"op": "create", "call_id": "call-1", "record": record()})
    assert created["record"]["state"] == "created" and storage.alarm_at_ms == (NOW + 20) * 1000
    connected = await obj.dispatch({"op": "connect", "call_id": "call-1", "set": {"relay_track": "t"}})
    assert connected["record"]["state"] == "connected" and storage.alarm_at_ms == (NOW + 60) * 1000
    closed = await obj.dispatch({"op": "close", "call_id": "call-1", "reason": "bye"})
    # Closed: one last alarm, when the record stops being readable and is deleted.
    assert closed["was_open"] is True and storage.alarm_at_ms == (NOW + CLOSED_RETENTION_S) * 1000
    again = await obj.dispatch({"op": "close", "call_id": "call-1", "reason": "again"})
    assert again["was_open"] is False and again["record"]["close_reason"] == "bye"
    await storage.delete_alarm()


@pytest.mark.parametrize(
    ("command", "status", "code"),
    [
        ({"op": "get", "call_id": "call-2"}, 404, "unknown_call"),
        ({"op": "get", "call_id": "bad id"}, 400, "invalid_call_id"),
        ({"op": "explode", "call_id": "call-1"}, 400, "invalid_command"),
        ({"op": "update", "call_id": "call-1", "set": {"owner": "mallory"}}, 400, "invalid_command"),
        ({"op": "create", "call_id": "call-1", "record": record()}, 409, "call_exists"),
        ({"op": "create", "call_id": "call-1"}, 400, "invalid_command"),
        ({"op": "move", "call_id": "call-1", "set": {}}, 400, "invalid_command"),  # no if_relay
        (
            {"op": "move", "call_id": "call-1", "if_relay": "r0", "set": {"owner": "x"}},
            400,
            "invalid_command",
        ),
    ],
)
async def test_refusals(obj: CallObject, command: dict[str, Any], status: int, code: str) -> None:
    await obj.dispatch({"op": "create", "call_id": "call-1", "record": record()})
    reply = await obj.dispatch(command)
    assert reply["error"]["status"] == status and reply["error"]["code"] == code
    await obj.storage.delete_alarm()


async def test_closed_calls_refuse_changes(obj: CallObject) -> None:
    await obj.dispatch({"op": "create", "call_id": "call-1", "record": record()})
    await obj.dispatch({"op": "close", "call_id": "call-1", "reason": "bye"})
    update = await obj.dispatch({"op": "update", "call_id": "call-1", "set": {"relay_track": "x"}})
    assert update["error"]["code"] == "call_closed"
    connect = await obj.dispatch({"op": "connect", "call_id": "call-1"})
    assert connect["error"]["status"] == 409


def test_public_view_hides_internals() -> None:
    view = CallRecord.from_json(record(relay={"id": "r", "control_url": "https://secret.test"})).public()
    assert "control_url" not in str(view) and view["relay"]["id"] == "r"
    with pytest.raises(Exception, match="unknown state"):
        CallRecord.from_json(record(state="zombie"))


async def test_an_ended_call_leaves_nothing_in_storage() -> None:
    """Issue 16: once the closed record's retention passes, its alarm deletes every key and itself."""
    now = [NOW]
    emptied: list[bool] = []
    storage = MemoryStorage(no_alarm, lambda: now[0], lambda: emptied.append(True))
    obj = CallObject(storage, lambda: now[0])
    await obj.dispatch({"op": "create", "call_id": "call-1", "record": record()})
    await storage.put("extra", "1")  # anything else the object may keep goes too
    await obj.dispatch({"op": "close", "call_id": "call-1", "reason": "bye"})
    now[0] += CLOSED_RETENTION_S / 2
    assert (await obj.alarm()).kind == "none"  # still readable: the caller can learn why
    assert (await obj.dispatch({"op": "get", "call_id": "call-1"}))["record"]["close_reason"] == "bye"
    assert storage.values and storage.alarm_at_ms == (NOW + CLOSED_RETENTION_S) * 1000
    now[0] = NOW + CLOSED_RETENTION_S
    assert (await obj.alarm()).kind == "none"
    assert storage.values == {} and storage.alarm_at_ms is None and emptied == [True]
    gone = await obj.dispatch({"op": "get", "call_id": "call-1"})
    assert gone["error"]["code"] == "unknown_call"


async def test_alarm_on_an_empty_object_clears_it() -> None:
    storage = MemoryStorage(no_alarm, lambda: NOW)
    await storage.set_alarm(NOW * 1000)
    assert (await CallObject(storage, lambda: NOW).alarm()).kind == "none"
    assert storage.alarm_at_ms is None and storage.values == {}


async def test_a_move_changes_the_relay_only_from_the_relay_it_names(obj: CallObject) -> None:
    """Failover and hand-over: the record moves once, from the relay the mover saw; a second mover
    (or one for a call that closed meanwhile) is told ``skipped`` and changes nothing."""
    await obj.dispatch({"op": "create", "call_id": "call-1", "record": record(relay={"id": "r0"})})
    early = await obj.dispatch({"op": "move", "call_id": "call-1", "if_relay": "r0", "set": {}})
    assert early["skipped"] is True  # not connected yet: nothing to move
    await obj.dispatch({"op": "connect", "call_id": "call-1", "set": {"relay": {"id": "r0"}}})
    to_r1 = {"relay": {"id": "r1"}, "relay_session_id": "s1", "relay_track": "t1"}
    moved = await obj.dispatch(
        {"op": "move", "call_id": "call-1", "if_relay": "r0", "why": "relay_lost", "set": to_r1}
    )
    doc = moved["record"]
    assert doc["relay"] == {"id": "r1"} and doc["moves"] == 1 and doc["state"] == "connected"
    assert doc["relay_attempts"] == ["moved from r0: relay_lost"]
    again = await obj.dispatch({"op": "move", "call_id": "call-1", "if_relay": "r0", "set": {}})
    assert again["skipped"] is True and again["record"]["relay"] == {"id": "r1"}
    # What the old relay says of the call no longer closes it.
    stale = await obj.dispatch({"op": "close", "call_id": "call-1", "reason": "x", "if_relay": "r0"})
    assert stale["skipped"] is True and stale["record"]["state"] == "connected"
    public = CallRecord.from_json(doc).public()
    assert public["moves"] == 1 and public["relay"]["id"] == "r1"
    await obj.storage.delete_alarm()
