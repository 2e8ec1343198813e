"""The edge→relay control contract: the call-id rule, the API's paths, and the attach request and result.

Written once: the edge builds the request and reads the result with these classes, the relay's control
API parses the request and writes the result with the same ones (its FastAPI layer only carries bytes).
The JSON is snake_case (our API, not Cloudflare's) and a request is strict: an unknown key is refused
by name. Every refusal is a :class:`SchemaError` naming the field and the limit. Requests are signed
with :mod:`splitrelay.contract.signing`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from splitrelay.contract.json_fields import JsonModel, SchemaError, check_text, join_path, json_type
from splitrelay.contract.sfu import SdpType, SessionDescription

CALL_ID_MAX: Final = 64
CALL_ID: Final = re.compile(rf"[A-Za-z0-9_.:-]{{1,{CALL_ID_MAX}}}")
"""The one call-id rule: the edge mints ids that match, the Durable Object and the relay refuse others."""
CALLS_PATH: Final = "/v1/calls"
DRAIN_PATH: Final = "/v1/drain"
MAX_SDP_CHARS: Final = 32 * 1024
MAX_SFU_NAME_CHARS: Final = 128
MAX_METADATA_KEYS: Final = 64


def check_call_id(value: object, field_name: str = "call_id") -> str:
    """The call id, or a SchemaError naming the field and the rule."""
    if not isinstance(value, str):
        raise SchemaError(field_name, f"expected string, got {json_type(value)}")
    if not CALL_ID.fullmatch(value):
        raise SchemaError(field_name, f"must be 1-{CALL_ID_MAX} of A-Z a-z 0-9 _ . : -")
    return value


def call_path(call_id: str) -> str:
    """``/v1/calls/{call_id}``: ids are path-safe by :data:`CALL_ID`, so the path needs no encoding."""
    return f"{CALLS_PATH}/{check_call_id(call_id)}"


class AttachMode(StrEnum):
    DIRECT = "direct"  # the caller's offer goes to the relay itself (tests, `splitrelay dev --direct`)
    SFU = "sfu"  # the relay pulls the caller's track from the Realtime SFU


class _Control(JsonModel):
    """Our own JSON: snake_case names as written; requests refuse unknown keys."""

    __slots__ = ()
    json_case = "snake"
    json_strict = True


@dataclass(frozen=True, kw_only=True)
class SfuAttach(_Control):
    """Where the caller's mic track lives on the SFU, so the relay can pull it."""

    caller_session_id: str
    caller_track_name: str

    def validate(self, path: str = "") -> None:
        check_text(self.caller_session_id, join_path(path, "caller_session_id"), limit=MAX_SFU_NAME_CHARS)
        check_text(self.caller_track_name, join_path(path, "caller_track_name"), limit=MAX_SFU_NAME_CHARS)


class ContinuationReason(StrEnum):
    """Why a call moved to this relay (docs/architecture.md, "Failover")."""

    RELAY_LOST = "relay_lost"  # its relay stopped beating; the edge attached this one
    DRAIN = "drain"  # its relay drains (a deploy); moved make-before-break
    AGENT_LOST = "agent_lost"  # its agent went away; the relay retries another inference endpoint


MAX_CONTINUATIONS: Final = 16
"""A call moved more often than this is ended instead: something is wrong with every relay."""


@dataclass(frozen=True, kw_only=True)
class Continuation(_Control):
    """The call this attach continues: the same edge call id, moved from another relay.

    The relay passes it to inference in CALL_START (``continues``), so an agent keyed by the call id
    can keep its conversation instead of greeting the caller again."""

    previous_relay: str
    reason: ContinuationReason
    attempt: int  # 1 for the first move of this call

    def validate(self, path: str = "") -> None:
        check_text(self.previous_relay, join_path(path, "previous_relay"), limit=64)
        if not 1 <= self.attempt <= MAX_CONTINUATIONS:
            raise SchemaError(
                join_path(path, "attempt"), f"must be 1..{MAX_CONTINUATIONS}, got {self.attempt}"
            )


@dataclass(frozen=True, kw_only=True)
class AttachRequest(_Control):
    """POST /v1/calls: attach one call, by the caller's offer (direct) or the caller's SFU track (sfu)."""

    call_id: str
    mode: AttachMode
    offer: SessionDescription | None = None
    sfu: SfuAttach | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    continues: Continuation | None = None
    """Set when the call moves here from another relay (failover, drain hand-over)."""

    def validate(self, path: str = "") -> None:
        check_call_id(self.call_id, join_path(path, "call_id"))
        if self.offer is not None:
            self.offer.check(join_path(path, "offer"), SdpType.OFFER, max_chars=MAX_SDP_CHARS)
        elif self.mode is AttachMode.DIRECT:
            raise SchemaError(join_path(path, "offer"), "mode 'direct' needs 'offer' with type 'offer'")
        if self.mode is AttachMode.SFU and self.sfu is None:
            raise SchemaError(
                join_path(path, "sfu"), "mode 'sfu' needs 'sfu' with caller_session_id and caller_track_name"
            )
        if len(self.metadata) > MAX_METADATA_KEYS:
            raise SchemaError(
                join_path(path, "metadata"), f"at most {MAX_METADATA_KEYS} keys, got {len(self.metadata)}"
            )


@dataclass(frozen=True, kw_only=True)
class AttachResult(_Control):
    """201 to POST /v1/calls: the relay's answer (direct) or its SFU session and track (sfu)."""

    json_strict = False  # the edge reads it: a newer relay may add a field

    call_id: str
    mode: AttachMode
    setup_ms: float
    answer: SessionDescription | None = None
    sfu_session_id: str | None = None
    sfu_track_name: str | None = None

    def validate(self, path: str = "") -> None:
        check_call_id(self.call_id, join_path(path, "call_id"))
        if self.answer is not None:
            self.answer.check(join_path(path, "answer"), SdpType.ANSWER, max_chars=MAX_SDP_CHARS)
        if self.mode is AttachMode.SFU and not (self.sfu_session_id and self.sfu_track_name):
            raise SchemaError(
                join_path(path, "sfu_session_id"), "mode 'sfu' answers with sfu_session_id and sfu_track_name"
            )
        if self.mode is AttachMode.DIRECT and self.answer is None:
            raise SchemaError(join_path(path, "answer"), "mode 'direct' answers with an SDP answer")


# --- relay → edge: liveness and call ends (docs/architecture.md, "Liveness") ---------------------------

RELAY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""The relay-id rule of the edge's registry (edge/relays.py): the relay names itself with it."""
RELAYS_PATH: Final = "/v1/relays"
UNDRAIN_PATH: Final = "/v1/undrain"
MAX_HEARTBEAT_CALLS: Final = 1500  # 1,500 ids of 30 characters fit the edge's 64 KiB body limit
MAX_END_REASON_CHARS: Final = 300
MAX_BOOT_ID_CHARS: Final = 64


def check_relay_id(value: object, field_name: str = "relay_id") -> str:
    if not isinstance(value, str):
        raise SchemaError(field_name, f"expected string, got {json_type(value)}")
    if not RELAY_ID.fullmatch(value):
        raise SchemaError(field_name, "must be 1-64 of A-Z a-z 0-9 _ . -")
    return value


def heartbeat_path(relay_id: str) -> str:
    """``/v1/relays/{relay_id}/heartbeat`` on the edge: one signed POST per relay every ~250 ms."""
    return f"{RELAYS_PATH}/{check_relay_id(relay_id)}/heartbeat"


def call_end_path(relay_id: str, call_id: str) -> str:
    """``/v1/relays/{relay_id}/calls/{call_id}/end`` on the edge: the relay ended this call."""
    return f"{RELAYS_PATH}/{check_relay_id(relay_id)}/calls/{check_call_id(call_id)}/end"


@dataclass(frozen=True, kw_only=True)
class Heartbeat(_Control):
    """The relay's liveness beat: which calls it holds and whether it drains (one per relay, not per call).

    ``boot_id`` is random per relay start and ``seq`` counts up within it, so the edge can drop a beat
    older than one it has seen (a delayed or replayed one) and notice a restart.
    """

    boot_id: str
    seq: int
    calls: tuple[str, ...] = ()
    draining: bool = False
    interval_ms: int = 250

    def validate(self, path: str = "") -> None:
        check_text(self.boot_id, join_path(path, "boot_id"), limit=MAX_BOOT_ID_CHARS)
        if not 0 <= self.seq < 2**53:
            raise SchemaError(join_path(path, "seq"), "must be 0 to 2^53-1")
        if len(self.calls) > MAX_HEARTBEAT_CALLS:
            raise SchemaError(join_path(path, "calls"), f"at most {MAX_HEARTBEAT_CALLS} calls")
        for index, call_id in enumerate(self.calls):
            check_call_id(call_id, f"{join_path(path, 'calls')}[{index}]")
        if not 10 <= self.interval_ms <= 60_000:
            raise SchemaError(join_path(path, "interval_ms"), "must be 10 to 60000")


@dataclass(frozen=True, kw_only=True)
class HeartbeatReply(_Control):
    """200 to a heartbeat: what the edge now believes, so a draining relay knows when to refuse."""

    json_strict = False

    draining_seen: bool
    timeout_ms: int
    closed: tuple[str, ...] = ()
    """Calls the edge closed because this beat no longer lists them (the backstop for a lost call end)."""


class EndCode(StrEnum):
    """Why the relay ended a call, for machines; ``reason`` says it for people."""

    AGENT_ENDED = "agent_ended"  # inference sent CALL_END
    AGENT_LOST = "agent_lost"  # inference answered unknown_call, or stopped answering
    LIMIT = "limit"  # a relay limit (duration, setup time)
    SETUP_FAILED = "setup_failed"  # the call never started (attach, connect or CALL_START failed)
    PEER_CLOSED = "peer_closed"  # the media peer failed or sent BYE
    SHUTDOWN = "shutdown"  # the relay stopped (after its drain grace)
    OTHER = "other"


@dataclass(frozen=True, kw_only=True)
class CallEnded(_Control):
    """POST body of :func:`call_end_path`: the relay ended the call, and why."""

    code: EndCode
    reason: str

    def validate(self, path: str = "") -> None:
        check_text(self.reason, join_path(path, "reason"), limit=MAX_END_REASON_CHARS)


# --- relay → edge: the agent's stage marks, for the caller's page (docs/edge.md) -----------------------

STAGE_NAME: Final = re.compile(r"[a-z0-9_.-]{1,40}")
MAX_STAGES_PER_POST: Final = 16
MAX_STAGE_MS: Final = 600_000.0


def stages_path(relay_id: str, call_id: str) -> str:
    """``/v1/relays/{relay_id}/calls/{call_id}/stages`` on the edge: the agent's stage marks of a turn."""
    return f"{RELAYS_PATH}/{check_relay_id(relay_id)}/calls/{check_call_id(call_id)}/stages"


@dataclass(frozen=True, kw_only=True)
class AgentStage(_Control):
    """One stage mark an agent reported (``agent.stage``, docs/wire-protocol.md): ``ms`` after the agent
    decided the caller's turn had ended, in turn ``turn`` of the call."""

    turn: int
    name: str
    ms: float

    def validate(self, path: str = "") -> None:
        if not 0 <= self.turn < 2**31:
            raise SchemaError(join_path(path, "turn"), "must be 0 to 2^31-1")
        if not isinstance(self.name, str) or not STAGE_NAME.fullmatch(self.name):
            raise SchemaError(join_path(path, "name"), "must be 1-40 of a-z 0-9 _ . -")
        if not 0 <= self.ms <= MAX_STAGE_MS:
            raise SchemaError(join_path(path, "ms"), f"must be 0 to {MAX_STAGE_MS:g}")


@dataclass(frozen=True, kw_only=True)
class CallStages(_Control):
    """POST body of :func:`stages_path`: stage marks in the order the agent reported them."""

    stages: tuple[AgentStage, ...]

    def validate(self, path: str = "") -> None:
        if not 1 <= len(self.stages) <= MAX_STAGES_PER_POST:
            raise SchemaError(join_path(path, "stages"), f"1 to {MAX_STAGES_PER_POST} stage marks")
