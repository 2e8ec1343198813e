"""The call record's object keeps what it wrote (one storage read per object), and quiet commands."""

from __future__ import annotations

from typing import Any

from splitrelay.devtools.local_edge import MemoryStorage
from splitrelay.edge.call_record import CallObject

NOW = 1_800_000_000.0


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__(self._no_alarm, lambda: NOW)
        self.gets = 0
        self.puts = 0

    @staticmethod
    async def _no_alarm() -> None:
        return None

    async def get(self, key: str) -> str | None:
        self.gets += 1
        return await super().get(key)

    async def put(self, key: str, value: str) -> None:
        self.puts += 1
        await super().put(key, value)


def record(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "call_id": "call-1",
        "owner": "alice",
        "state": "created",
        "created_at": NOW,
        "setup_deadline": NOW + 20,
        "max_end": NOW + 3600,
        "check_interval_s": 60.0,
    }
    doc.update(changes)
    return doc


async def test_one_storage_read_per_object_and_a_restarted_object_reads_again() -> None:
    storage = CountingStorage()
    obj = CallObject(storage, lambda: NOW)
    created = await obj.dispatch({"op": "create", "call_id": "call-1", "record": record()})
    assert created["record"]["state"] == "created" and created["record"]["owner"] == "alice"
    assert storage.gets == 1  # does a record exist already?
    connected = await obj.dispatch({"op": "connect", "call_id": "call-1", "set": {"relay_track": "t"}})
    got = await obj.dispatch({"op": "get", "call_id": "call-1"})
    assert connected["record"] == got["record"] and got["record"]["state"] == "connected"
    assert storage.gets == 1 and storage.puts == 2

    restarted = CallObject(storage, lambda: NOW)  # evicted and started again: memory is empty
    again = await restarted.dispatch({"op": "get", "call_id": "call-1"})
    assert again["record"] == got["record"] and storage.gets == 2
    await storage.delete_alarm()


async def test_a_failed_write_leaves_the_kept_record_unchanged() -> None:
    storage = CountingStorage()
    obj = CallObject(storage, lambda: NOW)
    await obj.dispatch({"op": "create", "call_id": "call-1", "record": record()})

    async def broken_put(key: str, value: str) -> None:
        raise ValueError("storage refused the write")

    storage.put = broken_put  # type: ignore[method-assign]
    failed = await obj.dispatch({"op": "connect", "call_id": "call-1", "set": {"relay_track": "t"}})
    assert failed["error"]["code"] == "invalid_command"
    assert (await obj.dispatch({"op": "get", "call_id": "call-1"}))["record"]["state"] == "created"
    await storage.delete_alarm()


async def test_quiet_commands_answer_empty_but_still_report_errors() -> None:
    storage = CountingStorage()
    obj = CallObject(storage, lambda: NOW)
    created = await obj.dispatch({"op": "create", "call_id": "call-1", "record": record(), "quiet": True})
    assert created == {}
    connect = {"op": "connect", "call_id": "call-1", "set": {"relay_track": "t"}, "quiet": True}
    assert await obj.dispatch(connect) == {}
    refused = await obj.dispatch(connect)  # connected already: an error, quiet or not
    assert refused["error"]["status"] == 409
    assert (await obj.dispatch({"op": "get", "call_id": "call-1"}))["record"]["relay_track"] == "t"
    await storage.delete_alarm()
