"""One call's record and lifecycle: the logic of the per-call Durable Object, over injected storage.

A call is ``created`` (the caller has its SDP answer, the relay is being attached), then ``connected``
(the relay's voice is pulled into the caller's transceiver), then ``closed`` (by the caller, by a
failure, or by the alarm that closes abandoned calls); a closed record stays readable for
``CLOSED_RETENTION_S`` (so the caller can read why), then its last alarm deletes every key (issue 16).
The record holds the SFU session and track ids,
the relay and why it was chosen, and the deadlines; the alarm fires at the next deadline. Storage is a
small async key-value protocol, so the same class runs on a Durable Object's ``ctx.storage``
(edge/entry.py) and in memory (scripts/devtools/local_edge.py, tests). Commands and replies are JSON-ready
dicts: they
cross the Durable Object RPC boundary as JSON text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

from splitrelay.contract.control import check_call_id as check_contract_call_id
from splitrelay.contract.json_fields import SchemaError


class CallState(StrEnum):
    """A call's lifecycle; the record stores the value (``"created"``...)."""

    CREATED = "created"  # the caller has its SDP answer; the relay is being attached
    CONNECTED = "connected"  # the relay's voice is pulled into the caller's transceiver
    CLOSED = "closed"


RECORD_KEY: Final = "call"
CLOSED_RETENTION_S: Final = 30.0
"""How long a closed record stays readable, so the caller's client (which polls about once a second) can
read why its call ended; then the alarm deletes every key and the object keeps nothing."""
MAX_ATTEMPTS_KEPT: Final = 8
MAX_REASON_CHARS: Final = 300
MAX_STAGES_KEPT: Final = 24


class RecordError(Exception):
    """A command the record refuses: ``status`` 404 (no such call), 409 (wrong state) or 400 (bad command)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


class RecordStorage(Protocol):
    """The slice of Durable Object storage the record uses (values are JSON text)."""

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str) -> None: ...

    async def set_alarm(self, at_ms: float) -> None: ...

    async def delete_alarm(self) -> None: ...

    async def delete_all(self) -> None:
        """Every key and the alarm: what an ended call leaves behind is nothing (issue 16)."""
        ...


@dataclass(frozen=True)
class CallRecord:
    call_id: str
    owner: str
    state: CallState
    created_at: float
    setup_deadline: float  # not connected by then: abandoned
    max_end: float  # closed at this time whatever happens
    check_interval_s: float  # how often a connected call's SFU session is probed
    relay: dict[str, Any] = field(default_factory=dict)
    relay_reason: str = ""
    relay_attempts: tuple[str, ...] = ()
    caller: dict[str, Any] = field(default_factory=dict)  # where cf says the caller is
    caller_session_id: str | None = None
    caller_mid: str | None = None
    caller_track: str = "mic"
    relay_session_id: str | None = None
    relay_track: str | None = None
    pending_sfu_offer: str | None = None  # the SFU asked to renegotiate: the caller answers via PATCH
    answered_at: float | None = None
    connected_at: float | None = None
    closed_at: float | None = None
    close_reason: str | None = None
    next_check: float | None = None
    moves: int = 0  # times the call moved to another relay (failover, drain hand-over)
    stages: tuple[dict[str, Any], ...] = ()  # the agent's last stage marks ({turn, name, ms}), for the page

    @property
    def open(self) -> bool:
        return self.state is not CallState.CLOSED

    def public(self) -> dict[str, Any]:
        """What the caller may see (GET /v1/calls/{id}): no SDP, no control URL."""
        doc: dict[str, Any] = {
            "call_id": self.call_id,
            "state": self.state,
            "relay": {
                "id": self.relay.get("id"),
                "region": self.relay.get("region"),
                "reason": self.relay_reason,
            },
            "created_at": self.created_at,
        }
        for key in ("answered_at", "connected_at", "closed_at", "close_reason"):
            value = getattr(self, key)
            if value is not None:
                doc[key] = value
        if self.answered_at is not None and self.connected_at is not None:
            doc["answer_to_connected_ms"] = round((self.connected_at - self.answered_at) * 1000, 1)
        if self.relay_attempts:
            doc["relay_attempts"] = list(self.relay_attempts)
        if self.moves:
            doc["moves"] = self.moves
        if self.stages:
            doc["stages"] = [dict(stage) for stage in self.stages]
        if self.pending_sfu_offer is not None:
            doc["renegotiation"] = {"offer": {"type": "offer", "sdp": self.pending_sfu_offer}}
        return doc

    def to_json(self) -> dict[str, Any]:
        # Flat and JSON-ready already (relay and caller are small dicts of scalars): no deep copy.
        doc = {name: getattr(self, name) for name in _FIELD_NAMES}
        doc["relay_attempts"] = list(self.relay_attempts)
        doc["stages"] = [dict(stage) for stage in self.stages]
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CallRecord:
        values = {key: value for key, value in doc.items() if key in _FIELD_SET}
        values["relay_attempts"] = tuple(values.get("relay_attempts") or ())
        values["stages"] = tuple(values.get("stages") or ())
        if "state" in values:  # absent: the constructor refuses the record
            try:
                values["state"] = CallState(values["state"])
            except ValueError:
                state = str(values["state"])[:20]
                raise RecordError(500, "corrupt_record", f"state: unknown state {state!r}") from None
        return cls(**values)


_FIELD_NAMES: Final = tuple(item.name for item in fields(CallRecord))
_FIELD_SET: Final = frozenset(_FIELD_NAMES)

# Fields an update may set, and the states each command may start from.
UPDATABLE: Final = frozenset(
    {
        "caller_session_id",
        "caller_mid",
        "relay",
        "relay_reason",
        "relay_session_id",
        "relay_track",
        "pending_sfu_offer",
        "answered_at",
    }
)


def check_call_id(call_id: object) -> str:
    """The contract's call-id rule, refused as a 400 command error."""
    try:
        return check_contract_call_id(call_id)
    except SchemaError as exc:
        raise RecordError(400, "invalid_call_id", str(exc)) from None


AlarmKind = Literal["none", "close", "probe"]


@dataclass(frozen=True)
class AlarmAction:
    kind: AlarmKind
    record: CallRecord | None = None


class CallObject:
    """The Durable Object's logic: one record, its transitions and its alarm."""

    def __init__(self, storage: RecordStorage, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.clock = clock
        # The record as storage holds it, once read or written here. The object is its storage's only
        # writer (a Durable Object's storage is private to it), so later commands skip the read.
        self._record: CallRecord | None = None
        self._loaded = False

    async def load(self) -> CallRecord | None:
        if not self._loaded:
            text = await self.storage.get(RECORD_KEY)
            self._record = None if text is None else CallRecord.from_json(json.loads(text))
            self._loaded = True
        return self._record

    async def _save(self, record: CallRecord) -> CallRecord:
        await self.storage.put(RECORD_KEY, json.dumps(record.to_json(), separators=(",", ":")))
        self._record, self._loaded = record, True
        await self._schedule(record)
        return record

    async def _schedule(self, record: CallRecord) -> None:
        if record.state is CallState.CLOSED:
            # One last alarm: after the retention the record (and the alarm) are deleted.
            await self.storage.set_alarm(((record.closed_at or self.clock()) + CLOSED_RETENTION_S) * 1000.0)
            return
        if record.state is CallState.CREATED:
            due = record.setup_deadline
        else:
            due = min(record.max_end, record.next_check or record.max_end)
        await self.storage.set_alarm(due * 1000.0)

    async def _require(self, call_id: str) -> CallRecord:
        record = await self.load()
        if record is None or record.call_id != call_id:
            raise RecordError(404, "unknown_call", f"call_id: no call {call_id!r}")
        return record

    async def dispatch(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """One command → ``{"record": ...}`` or ``{"error": ...}`` (the RPC's whole vocabulary).

        ``"quiet": true`` answers ``{}`` on success instead of the record: a caller that only needs to
        know the command took (the call setup) skips encoding and decoding the record it would drop.
        """
        try:
            op = command.get("op")
            call_id = check_call_id(command.get("call_id"))
            if op == "create":
                record = await self.create(CallRecord.from_json(command["record"]))
            elif op == "get":
                record = await self._require(call_id)
            elif op == "update":
                record = await self.update(call_id, command.get("set") or {})
            elif op == "connect":
                record = await self.connect(call_id, command.get("set") or {})
            elif op == "attempt":
                record = await self.note_attempt(call_id, str(command.get("attempt") or ""))
            elif op == "stages":
                record = await self.add_stages(call_id, str(command["if_relay"]), command["stages"])
            elif op == "move":
                moved = await self.move(call_id, str(command["if_relay"]), command.get("set") or {}, command)
                if moved is None:
                    return {"record": (await self._require(call_id)).to_json(), "skipped": True}
                record = moved
            elif op == "close":
                if_relay = command.get("if_relay")
                current = await self._require(call_id)
                if if_relay is not None and current.relay.get("id") != if_relay:
                    # The call has moved on (another relay): what its old relay says does not end it.
                    return {"record": current.to_json(), "was_open": False, "skipped": True}
                record, was_open = await self.close(call_id, str(command.get("reason") or "closed"))
                return {"record": record.to_json(), "was_open": was_open}
            else:
                raise RecordError(
                    400,
                    "invalid_command",
                    "op: must be create, get, update, connect, attempt, move, stages or close",
                )
        except RecordError as exc:
            return exc.to_json()
        except (KeyError, TypeError, ValueError) as exc:
            return RecordError(400, "invalid_command", f"bad command: {type(exc).__name__}").to_json()
        return {} if command.get("quiet") is True else {"record": record.to_json()}

    async def create(self, record: CallRecord) -> CallRecord:
        check_call_id(record.call_id)
        if await self.load() is not None:
            raise RecordError(409, "call_exists", f"call_id: {record.call_id!r} already exists")
        if record.state is not CallState.CREATED:
            raise RecordError(400, "invalid_command", "state: a new record starts as 'created'")
        return await self._save(record)

    def _changes(self, values: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(values) - UPDATABLE)
        if unknown:
            raise RecordError(400, "invalid_command", f"set: field {unknown[0][:40]!r} cannot be updated")
        return dict(values)

    async def update(self, call_id: str, values: Mapping[str, Any]) -> CallRecord:
        record = await self._require(call_id)
        if not record.open:
            raise RecordError(409, "call_closed", f"call {call_id!r} is closed ({record.close_reason})")
        return await self._save(replace(record, **self._changes(values)))

    async def connect(self, call_id: str, values: Mapping[str, Any]) -> CallRecord:
        """created → connected: the relay is attached and its voice pulled into the caller's transceiver."""
        record = await self._require(call_id)
        if record.state is not CallState.CREATED:
            raise RecordError(409, "call_" + record.state, f"call {call_id!r} is {record.state}, not created")
        now = self.clock()
        changed = replace(
            record,
            **self._changes(values),
            state=CallState.CONNECTED,
            connected_at=now,
            next_check=now + record.check_interval_s,
        )
        return await self._save(changed)

    async def note_attempt(self, call_id: str, attempt: str) -> CallRecord:
        record = await self._require(call_id)
        attempts = (*record.relay_attempts, attempt[:MAX_REASON_CHARS])[-MAX_ATTEMPTS_KEPT:]
        return await self._save(replace(record, relay_attempts=attempts))

    async def move(
        self, call_id: str, if_relay: str, values: Mapping[str, Any], command: Mapping[str, Any]
    ) -> CallRecord | None:
        """The call now runs on another relay (failover, drain hand-over): None if it is no longer
        connected to ``if_relay`` (closed, or moved by someone else first), and nothing changes."""
        changes = self._changes(values)
        record = await self._require(call_id)
        if record.state is not CallState.CONNECTED or record.relay.get("id") != if_relay:
            return None
        note = f"moved from {if_relay}: {command.get('why') or ''!s}"[:MAX_REASON_CHARS]
        attempts = (*record.relay_attempts, note)[-MAX_ATTEMPTS_KEPT:]
        changed = replace(record, **changes, moves=record.moves + 1, relay_attempts=attempts)
        return await self._save(changed)

    async def add_stages(self, call_id: str, if_relay: str, stages: list[dict[str, Any]]) -> CallRecord:
        """Keep the agent's latest stage marks (validated by the edge: contract AgentStage) for the
        caller's page; marks from a relay the call has left, or for a closed call, are dropped."""
        record = await self._require(call_id)
        if not record.open or record.relay.get("id") != if_relay:
            return record
        kept = (*record.stages, *({"turn": s["turn"], "name": s["name"], "ms": s["ms"]} for s in stages))
        return await self._save(replace(record, stages=kept[-MAX_STAGES_KEPT:]))

    async def close(self, call_id: str, reason: str) -> tuple[CallRecord, bool]:
        """→ (record, was_open). Idempotent: closing a closed call changes nothing."""
        record = await self._require(call_id)
        if not record.open:
            return record, False
        closed = replace(
            record, state=CallState.CLOSED, closed_at=self.clock(), close_reason=reason[:MAX_REASON_CHARS]
        )
        return await self._save(closed), True

    async def alarm(self) -> AlarmAction:
        """What is due now: close an abandoned or over-long call, probe a connected one, or nothing."""
        record = await self.load()
        if record is None:
            await self.storage.delete_all()
            return AlarmAction("none", None)
        if not record.open:
            if self.clock() >= (record.closed_at or 0.0) + CLOSED_RETENTION_S:
                await self.forget()
            else:
                await self._schedule(record)
            return AlarmAction("none", record)
        now = self.clock()
        if record.state is CallState.CREATED and now >= record.setup_deadline:
            limit = record.setup_deadline - record.created_at
            closed, _ = await self.close(record.call_id, f"abandoned: not connected within {limit:.0f} s")
            return AlarmAction("close", closed)
        if now >= record.max_end:
            limit = record.max_end - record.created_at
            closed, _ = await self.close(record.call_id, f"maximum call duration reached ({limit:.0f} s)")
            return AlarmAction("close", closed)
        if record.state is CallState.CONNECTED and record.next_check is not None and now >= record.next_check:
            return AlarmAction("probe", record)
        await self._schedule(record)  # woken early (or a stale alarm): set the right time again
        return AlarmAction("none", record)

    async def forget(self) -> None:
        """Delete the record, every other key and the alarm: the object's storage is empty again."""
        await self.storage.delete_all()
        self._record, self._loaded = None, True

    async def probed_alive(self, call_id: str) -> CallRecord:
        """The probe found the caller still there: check again after the interval."""
        record = await self._require(call_id)
        if not record.open:
            return record
        return await self._save(replace(record, next_check=self.clock() + record.check_interval_s))
