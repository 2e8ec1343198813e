"""The edge→relay control contract: the call-id rule, the API's paths, and the attach request and result.

Written once: the edge builds the request and reads the result with these classes, the relay's control
API parses the request and writes the result with the same ones (its FastAPI layer only carries bytes).
Every refusal is a :class:`SchemaError` naming the field and the limit. Requests are signed with
:mod:`splitrelay.contract.signing`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from splitrelay.contract.realtime_api import (
    JsonFields,
    SchemaError,
    SdpType,
    SessionDescription,
    json_type,
    require,
)

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


def _only_keys(obj: object, path: str, allowed: frozenset[str]) -> None:
    if isinstance(obj, dict):
        for key in obj:
            if key not in allowed:
                raise SchemaError(f"{path}.{key}" if path else str(key), "is not a field of this request")


def _text(f: JsonFields, key: str, limit: int) -> str:
    value = require(f.string(key), f.at(key))
    if not value:
        raise SchemaError(f.at(key), "must not be empty")
    if len(value) > limit:
        raise SchemaError(f.at(key), f"must be at most {limit} characters, got {len(value)}")
    return value


def _description(obj: object, path: str, expected: SdpType) -> SessionDescription:
    _only_keys(obj, path, frozenset({"type", "sdp"}))
    description = SessionDescription.from_json(obj, path)
    if description.type is not expected:
        raise SchemaError(f"{path}.type", f"must be {expected.value!r} here")
    if not description.sdp or len(description.sdp) > MAX_SDP_CHARS:
        raise SchemaError(f"{path}.sdp", f"must be 1-{MAX_SDP_CHARS} characters, got {len(description.sdp)}")
    return description


@dataclass(frozen=True, kw_only=True)
class SfuAttach:
    """Where the caller's mic track lives on the SFU, so the relay can pull it."""

    caller_session_id: str
    caller_track_name: str

    def to_json(self) -> dict[str, Any]:
        return {"caller_session_id": self.caller_session_id, "caller_track_name": self.caller_track_name}

    @classmethod
    def from_json(cls, obj: object, path: str) -> SfuAttach:
        _only_keys(obj, path, frozenset({"caller_session_id", "caller_track_name"}))
        f = JsonFields(obj, path)
        return cls(
            caller_session_id=_text(f, "caller_session_id", MAX_SFU_NAME_CHARS),
            caller_track_name=_text(f, "caller_track_name", MAX_SFU_NAME_CHARS),
        )


_REQUEST_KEYS: Final = frozenset({"call_id", "mode", "offer", "sfu", "metadata"})


@dataclass(frozen=True, kw_only=True)
class AttachRequest:
    """POST /v1/calls: attach one call, by the caller's offer (direct) or the caller's SFU track (sfu)."""

    call_id: str
    mode: AttachMode
    offer: SessionDescription | None = None
    sfu: SfuAttach | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_call_id(self.call_id)
        if self.mode is AttachMode.DIRECT and self.offer is None:
            raise SchemaError("offer", "mode 'direct' needs 'offer' with type 'offer'")
        if self.mode is AttachMode.SFU and self.sfu is None:
            raise SchemaError("sfu", "mode 'sfu' needs 'sfu' with caller_session_id and caller_track_name")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"call_id": self.call_id, "mode": self.mode.value}
        if self.offer is not None:
            doc["offer"] = self.offer.to_json()
        if self.sfu is not None:
            doc["sfu"] = self.sfu.to_json()
        if self.metadata:
            doc["metadata"] = self.metadata
        return doc

    @classmethod
    def from_json(cls, obj: object) -> AttachRequest:
        f = JsonFields(obj, "")
        _only_keys(obj, "", _REQUEST_KEYS)
        metadata = obj.get("metadata", {}) if isinstance(obj, dict) else {}
        if not isinstance(metadata, dict):
            raise SchemaError("metadata", f"expected an object, got {json_type(metadata)}")
        if len(metadata) > MAX_METADATA_KEYS:
            raise SchemaError("metadata", f"at most {MAX_METADATA_KEYS} keys, got {len(metadata)}")
        return cls(
            call_id=check_call_id(require(f.string("call_id"), "call_id")),
            mode=require(f.enum("mode", AttachMode), "mode"),
            offer=f.nested("offer", lambda o, p: _description(o, p, SdpType.OFFER)),
            sfu=f.nested("sfu", SfuAttach.from_json),
            metadata=metadata,
        )


@dataclass(frozen=True, kw_only=True)
class AttachResult:
    """201 to POST /v1/calls: the relay's answer (direct) or its SFU session and track (sfu)."""

    call_id: str
    mode: AttachMode
    setup_ms: float
    answer: SessionDescription | None = None
    sfu_session_id: str | None = None
    sfu_track_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"call_id": self.call_id, "mode": self.mode.value, "setup_ms": self.setup_ms}
        if self.answer is not None:
            doc["answer"] = self.answer.to_json()
        if self.sfu_session_id is not None:
            doc["sfu_session_id"] = self.sfu_session_id
        if self.sfu_track_name is not None:
            doc["sfu_track_name"] = self.sfu_track_name
        return doc

    @classmethod
    def from_json(cls, obj: object) -> AttachResult:
        f = JsonFields(obj, "")
        setup_ms = obj.get("setup_ms") if isinstance(obj, dict) else None
        if isinstance(setup_ms, bool) or not isinstance(setup_ms, int | float):
            raise SchemaError("setup_ms", f"expected number, got {json_type(setup_ms)}")
        mode = require(f.enum("mode", AttachMode), "mode")
        result = cls(
            call_id=check_call_id(require(f.string("call_id"), "call_id")),
            mode=mode,
            setup_ms=float(setup_ms),
            answer=f.nested("answer", lambda o, p: _description(o, p, SdpType.ANSWER)),
            sfu_session_id=f.string("sfu_session_id"),
            sfu_track_name=f.string("sfu_track_name"),
        )
        if mode is AttachMode.SFU and not (result.sfu_session_id and result.sfu_track_name):
            raise SchemaError("sfu_session_id", "mode 'sfu' answers with sfu_session_id and sfu_track_name")
        if mode is AttachMode.DIRECT and result.answer is None:
            raise SchemaError("answer", "mode 'direct' answers with an SDP answer")
        return result
