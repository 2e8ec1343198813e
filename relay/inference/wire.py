"""Codec of the relay <-> inference UDP wire protocol (specified in docs/wire-protocol.md).

Sans-IO and allocation-light: the relay and the inference SDK both call it once per datagram, so the
audio path uses one precompiled ``struct.Struct`` and never builds JSON. ``decode`` validates a
datagram completely (header, flags allowed for its type, payload shape) and raises only
``WireError``, whatever bytes arrive, so a socket handler can count garbage and move on.

Since version 2 every non-audio datagram carries an authentication trailer (key id and a truncated
HMAC tag, ``relay/inference/wire_auth.py``) after its payload. This codec works on the *body*, the
datagram without that trailer: ``encode`` makes a body, ``wire_auth`` seals and opens it, so the
codec itself never needs the key. An audio datagram is a body as it stands.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

VERSION: Final = 2  # 2: authenticated control (docs/wire-protocol.md, "Authentication")
HEADER: Final = struct.Struct("!BBHQII")  # version, type, flags, call_id, seq, timestamp
HEADER_SIZE: Final = HEADER.size  # 20
MAX_DATAGRAM: Final = 1400  # fits a 1500-byte MTU with IPv6 + UDP headers and a tunnel's overhead
MAX_PAYLOAD: Final = MAX_DATAGRAM - HEADER_SIZE
AUTH_TRAILER: Final = 17  # control datagrams end with key_id (u8) and a 16-byte HMAC-SHA256 tag
MAX_CONTROL_PAYLOAD: Final = MAX_PAYLOAD - AUTH_TRAILER  # so a sealed control datagram fits too
UNKNOWN_CALL: Final = "unknown_call"  # the reason an empty CALL_END payload stands for (compact reply)
MAX_MARK_NAME: Final = 255  # bytes of UTF-8
U32: Final = 0xFFFFFFFF
U64: Final = 0xFFFFFFFFFFFFFFFF
MAX_SENT_AT_MS: Final = (1 << 53) - 1  # exact in a JSON number (a double)

SAMPLE_RATE: Final = 48_000
FRAME_SAMPLES: Final = 960  # one 20 ms frame at 48 kHz: the timestamp step of AUDIO_IN/AUDIO_OUT
PTIME_MS: Final = 20

# Flag bits (u16). Which ones a message may carry depends on its type (see _ALLOWED_FLAGS).
FLAG_MARKER: Final = 0x0001  # audio: start of a talk spurt (AUDIO_IN) / first frame of a response (AUDIO_OUT)
FLAG_LEVEL_PRESENT: Final = 0x0002  # AUDIO_IN: bits 8..14 carry the RFC 6464 audio level
FLAG_VOICE: Final = 0x0004  # AUDIO_IN: the RFC 6464 V bit (sender's VAD says voice)
FLAG_RELIABLE: Final = 0x0008  # non-audio: the receiver must ACK; the sender retransmits until acked
LEVEL_SHIFT: Final = 8
LEVEL_MASK: Final = 0x7F << LEVEL_SHIFT  # 0..127, in -dBov (127 = digital silence)
MAX_LEVEL: Final = 127


class WireError(ValueError):
    """A datagram or message that breaks the protocol; the text names the field and the limit."""


class MsgType(IntEnum):
    CALL_START = 1  # relay -> inference, JSON, reliable
    CALL_END = 2  # either way, JSON {"reason": str}, reliable
    AUDIO_IN = 3  # relay -> inference, one Opus frame as it came in RTP
    AUDIO_OUT = 4  # inference -> relay, one 20 ms Opus frame
    BARGE_IN = 5  # relay -> inference, 12-byte binary payload, reliable
    MARK = 6  # either way, UTF-8 name; timestamp = position in the AUDIO_OUT stream
    EVENT = 7  # either way, JSON object with a "type" string, passed through
    ACK = 8  # either way; header seq = acked seq, payload = acked type (1 byte)
    CLEAR = 9  # inference -> relay, empty payload, reliable; timestamp = AUDIO_OUT position
    BARGE_CANDIDATE = 10  # relay -> inference, 8-byte binary payload, reliable (additive to v2)
    BARGE_VERDICT = 11  # inference -> relay, 5-byte binary payload, reliable (additive to v2)
    KEEPALIVE = 12  # either way, empty, never reliable; only on calls whose CALL_START asked (additive to v2)


AUDIO_TYPES: Final = frozenset({MsgType.AUDIO_IN, MsgType.AUDIO_OUT})
# Types that must always travel with FLAG_RELIABLE; MARK and EVENT may choose.
CONTROL_TYPES: Final = frozenset(
    {
        MsgType.CALL_START,
        MsgType.CALL_END,
        MsgType.BARGE_IN,
        MsgType.CLEAR,
        MsgType.BARGE_CANDIDATE,
        MsgType.BARGE_VERDICT,
    }
)
JSON_TYPES: Final = frozenset({MsgType.CALL_START, MsgType.CALL_END, MsgType.EVENT})

_AUDIO_IN_FLAGS: Final = FLAG_MARKER | FLAG_LEVEL_PRESENT | FLAG_VOICE | LEVEL_MASK
_ALLOWED_FLAGS: Final[dict[int, int]] = {
    MsgType.CALL_START: FLAG_RELIABLE,
    MsgType.CALL_END: FLAG_RELIABLE,
    MsgType.AUDIO_IN: _AUDIO_IN_FLAGS,
    MsgType.AUDIO_OUT: FLAG_MARKER,
    MsgType.BARGE_IN: FLAG_RELIABLE,
    MsgType.MARK: FLAG_RELIABLE,
    MsgType.EVENT: FLAG_RELIABLE,
    MsgType.ACK: 0,
    MsgType.CLEAR: FLAG_RELIABLE,
    MsgType.BARGE_CANDIDATE: FLAG_RELIABLE,
    MsgType.BARGE_VERDICT: FLAG_RELIABLE,
    MsgType.KEEPALIVE: 0,
}
_TYPE_VALUES: Final = frozenset(int(t) for t in MsgType)


@dataclass(frozen=True, slots=True)
class BargeIn:
    """What the caller actually heard of the interrupted response (payload of BARGE_IN)."""

    played_samples: int  # 48 kHz samples of the current response played out to the caller
    dropped_frames: int  # AUDIO_OUT frames flushed from the relay's outbound queue
    response_seq: int  # seq of the last AUDIO_OUT frame actually sent to the caller

    _STRUCT = struct.Struct("!III")

    def pack(self) -> bytes:
        for name in ("played_samples", "dropped_frames", "response_seq"):
            _check_u32(f"barge_in.{name}", getattr(self, name))
        return self._STRUCT.pack(self.played_samples, self.dropped_frames, self.response_seq)

    @classmethod
    def unpack(cls, payload: bytes) -> BargeIn:
        if len(payload) != cls._STRUCT.size:
            raise WireError(f"payload: BARGE_IN carries exactly {cls._STRUCT.size} bytes, got {len(payload)}")
        return cls(*cls._STRUCT.unpack(payload))


@dataclass(frozen=True, slots=True)
class BargeCandidate:
    """Payload of BARGE_CANDIDATE: the relay paused playout on a voiced packet and asks inference to
    confirm (flush) or reject (resume) it. The header timestamp is the onset's AUDIO_IN timestamp."""

    candidate: int  # the call's candidate number (u32, from 1): a verdict names the one it answers
    played_samples: int  # 48 kHz samples of the current response the caller heard when it paused

    _STRUCT = struct.Struct("!II")

    def pack(self) -> bytes:
        for name in ("candidate", "played_samples"):
            _check_u32(f"barge_candidate.{name}", getattr(self, name))
        return self._STRUCT.pack(self.candidate, self.played_samples)

    @classmethod
    def unpack(cls, payload: bytes) -> BargeCandidate:
        if len(payload) != cls._STRUCT.size:
            raise WireError(
                f"payload: BARGE_CANDIDATE carries exactly {cls._STRUCT.size} bytes, got {len(payload)}"
            )
        return cls(*cls._STRUCT.unpack(payload))


VERDICT_REJECT: Final = 0  # not the caller speaking: resume playout from the paused frame
VERDICT_CONFIRM: Final = 1  # the caller is speaking: flush, and the relay sends BARGE_IN


@dataclass(frozen=True, slots=True)
class BargeVerdict:
    """Payload of BARGE_VERDICT: inference's answer to one BARGE_CANDIDATE."""

    candidate: int  # the candidate number it answers
    confirm: bool

    _STRUCT = struct.Struct("!IB")

    def pack(self) -> bytes:
        _check_u32("barge_verdict.candidate", self.candidate)
        if type(self.confirm) is not bool:
            raise WireError(f"barge_verdict.confirm: must be a bool, got {self.confirm!r}")
        return self._STRUCT.pack(self.candidate, VERDICT_CONFIRM if self.confirm else VERDICT_REJECT)

    @classmethod
    def unpack(cls, payload: bytes) -> BargeVerdict:
        if len(payload) != cls._STRUCT.size:
            raise WireError(
                f"payload: BARGE_VERDICT carries exactly {cls._STRUCT.size} bytes, got {len(payload)}"
            )
        candidate, verdict = cls._STRUCT.unpack(payload)
        if verdict not in (VERDICT_REJECT, VERDICT_CONFIRM):
            raise WireError(f"payload: BARGE_VERDICT verdict is 0 (reject) or 1 (confirm), got {verdict}")
        return cls(candidate, verdict == VERDICT_CONFIRM)


CONTINUATION_REASONS: Final = frozenset({"relay_lost", "drain", "agent_lost"})
MAX_CONTINUATIONS: Final = 16  # the contract's limit (splitrelay.contract.control.MAX_CONTINUATIONS)
MIN_KEEPALIVE_MS: Final = 20
MAX_KEEPALIVE_MS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Continuation:
    """CALL_START ``continues``: the call moved here (another relay, or another agent) and is the same
    conversation, so an agent keyed by ``CallStart.call`` keeps its context instead of greeting again."""

    previous_relay: str  # the relay the call was on before (this relay's own id on an agent retry)
    reason: str  # "relay_lost", "drain" or "agent_lost"
    attempt: int  # 1 for the call's first move, up to MAX_CONTINUATIONS

    def to_json(self) -> dict[str, Any]:
        return {"previous_relay": self.previous_relay, "reason": self.reason, "attempt": self.attempt}

    @classmethod
    def from_json(cls, obj: object) -> Continuation:
        if not isinstance(obj, dict):
            raise WireError("call_start.continues: must be a JSON object")
        relay = obj.get("previous_relay")
        if not isinstance(relay, str) or not 1 <= len(relay) <= 128:
            raise WireError("call_start.continues.previous_relay: must be a string of 1..128 characters")
        reason = obj.get("reason")
        if reason not in CONTINUATION_REASONS:
            raise WireError(
                f"call_start.continues.reason: must be one of {', '.join(sorted(CONTINUATION_REASONS))}"
            )
        attempt = obj.get("attempt")
        if type(attempt) is not int or not 1 <= attempt <= MAX_CONTINUATIONS:
            raise WireError(f"call_start.continues.attempt: must be an integer 1..{MAX_CONTINUATIONS}")
        return cls(previous_relay=relay, reason=str(reason), attempt=attempt)


@dataclass(frozen=True, slots=True)
class CallStart:
    """Payload of CALL_START: what inference needs to know before the first frame."""

    call: str  # the edge's call id (the same on every relay a call moves to; the header carries the u64 id)
    channels: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    codec: str = "opus"
    sample_rate: int = SAMPLE_RATE
    ptime_ms: int = PTIME_MS
    sent_at_ms: int = 0
    """Sender's wall clock (Unix ms) when the call was opened: inference refuses a stale CALL_START,
    so a recorded one cannot open a call once its id is forgotten. RelayLink sets it."""
    continues: Continuation | None = None
    """Optional (additive to v2): the call this one continues. Older agents ignore the key."""
    keepalive_ms: int | None = None
    """Optional (additive to v2): the relay watches the agent's liveness; an agent that knows KEEPALIVE
    sends something for the call at least this often. Older agents ignore the key (and are not watched)."""

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "call": self.call,
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "ptime_ms": self.ptime_ms,
            "sent_at_ms": self.sent_at_ms,
            "metadata": self.metadata,
        }
        if self.continues is not None:
            obj["continues"] = self.continues.to_json()
        if self.keepalive_ms is not None:
            obj["keepalive_ms"] = self.keepalive_ms
        return obj

    def pack(self) -> bytes:
        self.from_json(self.to_json())  # one validation path for both directions
        return pack_json(self.to_json(), what="CALL_START")

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CallStart:
        call = obj.get("call")
        if not isinstance(call, str) or not 1 <= len(call) <= 128:
            raise WireError("call_start.call: must be a string of 1..128 characters")
        if obj.get("codec") != "opus":
            raise WireError("call_start.codec: must be 'opus'")
        if obj.get("sample_rate") != SAMPLE_RATE:
            raise WireError(f"call_start.sample_rate: must be {SAMPLE_RATE}")
        channels = obj.get("channels")
        if type(channels) is not int or channels not in (1, 2):
            raise WireError("call_start.channels: must be 1 or 2")
        if obj.get("ptime_ms") != PTIME_MS:
            raise WireError(f"call_start.ptime_ms: must be {PTIME_MS}")
        sent_at_ms = obj.get("sent_at_ms")
        if type(sent_at_ms) is not int or not 0 <= sent_at_ms <= MAX_SENT_AT_MS:
            raise WireError(f"call_start.sent_at_ms: must be an integer 0..{MAX_SENT_AT_MS} (Unix ms)")
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise WireError("call_start.metadata: must be a JSON object")
        continues = None if obj.get("continues") is None else Continuation.from_json(obj["continues"])
        keepalive_ms = obj.get("keepalive_ms")
        if keepalive_ms is not None and (
            type(keepalive_ms) is not int or not MIN_KEEPALIVE_MS <= keepalive_ms <= MAX_KEEPALIVE_MS
        ):
            raise WireError(
                f"call_start.keepalive_ms: must be an integer {MIN_KEEPALIVE_MS}..{MAX_KEEPALIVE_MS}"
            )
        return cls(
            call=call,
            channels=channels,
            metadata=metadata,
            sent_at_ms=sent_at_ms,
            continues=continues,
            keepalive_ms=keepalive_ms,
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One datagram, decoded. ``payload`` is kept raw; the typed accessors below parse it."""

    type: MsgType
    call_id: int
    seq: int
    timestamp: int = 0
    flags: int = 0
    payload: bytes = b""

    @property
    def marker(self) -> bool:
        return bool(self.flags & FLAG_MARKER)

    @property
    def reliable(self) -> bool:
        return bool(self.flags & FLAG_RELIABLE)

    def json(self) -> dict[str, Any]:
        """The JSON object of CALL_START, CALL_END or EVENT."""
        self._expect(JSON_TYPES)
        return unpack_json(self.payload, what=self.type.name)

    def call_start(self) -> CallStart:
        self._expect({MsgType.CALL_START})
        return CallStart.from_json(self.json())

    def reason(self) -> str:
        """The reason string of CALL_END (an empty payload is the compact form of "unknown_call")."""
        self._expect({MsgType.CALL_END})
        if not self.payload:
            return UNKNOWN_CALL
        return _call_end_reason(self.json())

    def barge_in(self) -> BargeIn:
        self._expect({MsgType.BARGE_IN})
        return BargeIn.unpack(self.payload)

    def barge_candidate(self) -> BargeCandidate:
        self._expect({MsgType.BARGE_CANDIDATE})
        return BargeCandidate.unpack(self.payload)

    def barge_verdict(self) -> BargeVerdict:
        self._expect({MsgType.BARGE_VERDICT})
        return BargeVerdict.unpack(self.payload)

    def mark_name(self) -> str:
        self._expect({MsgType.MARK})
        return unpack_mark(self.payload)

    def acked_type(self) -> MsgType:
        self._expect({MsgType.ACK})
        return unpack_ack(self.payload)

    def _expect(self, types: frozenset[MsgType] | set[MsgType]) -> None:
        if self.type not in types:
            names = ", ".join(sorted(t.name for t in types))
            raise WireError(f"type: {self.type.name} has no such payload (expected {names})")


# ---- payload codecs -------------------------------------------------------------------------


def pack_json(obj: dict[str, Any], *, what: str = "JSON") -> bytes:
    try:
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise WireError(f"payload: {what} is not JSON-serialisable ({exc})") from None
    if len(data) > MAX_CONTROL_PAYLOAD:
        raise WireError(f"payload: {what} JSON is {len(data)} bytes, limit {MAX_CONTROL_PAYLOAD}")
    return data


def unpack_json(payload: bytes, *, what: str = "JSON") -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"payload: {what} is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise WireError(f"payload: {what} must be a JSON object")
    if b"\\u" in payload:  # only a \u escape can make a lone surrogate (JSON.stringify of a cut emoji)
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise WireError(f"payload: {what} carries a lone UTF-16 surrogate escape") from None
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999: valid JSON text, not re-encodable
        raise ValueError(f"{text} overflows a float")
    return value


def pack_event(event: dict[str, Any]) -> bytes:
    _check_event(event)
    return pack_json(event, what="EVENT")


def _check_event(obj: dict[str, Any]) -> None:
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise WireError('payload: EVENT must be a JSON object with a non-empty "type" string')


def pack_call_end(reason: str) -> bytes:
    _call_end_reason({"reason": reason})
    return pack_json({"reason": reason}, what="CALL_END")


def _call_end_reason(obj: dict[str, Any]) -> str:
    reason = obj.get("reason")
    if not isinstance(reason, str) or not 1 <= len(reason) <= 256:
        raise WireError('payload: CALL_END must be a JSON object with a "reason" string of 1..256 characters')
    return reason


def pack_mark(name: str) -> bytes:
    try:
        data = name.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError("payload: MARK name is not encodable as UTF-8") from None
    unpack_mark(data)
    return data


def unpack_mark(payload: bytes) -> str:
    if not 1 <= len(payload) <= MAX_MARK_NAME:
        raise WireError(f"payload: MARK name must be 1..{MAX_MARK_NAME} bytes of UTF-8, got {len(payload)}")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("payload: MARK name is not valid UTF-8") from None


_ACKABLE: Final = frozenset(t for t, allowed in _ALLOWED_FLAGS.items() if allowed & FLAG_RELIABLE)


def pack_ack(acked: MsgType) -> bytes:
    if acked not in _ACKABLE:
        raise WireError(f"payload: ACK can only acknowledge a reliable type, not {MsgType(acked).name}")
    return bytes((acked,))


def unpack_ack(payload: bytes) -> MsgType:
    if len(payload) != 1 or payload[0] not in _ACKABLE:
        raise WireError("payload: ACK carries exactly 1 byte, the type of a reliable message")
    return MsgType(payload[0])


# ---- audio-level flags ----------------------------------------------------------------------


def audio_in_flags(*, marker: bool = False, level: int | None = None, voice: bool = False) -> int:
    """Flags of an AUDIO_IN frame; ``level`` is the RFC 6464 level (0..127 -dBov) when negotiated."""
    flags = FLAG_MARKER if marker else 0
    if level is None:
        if voice:
            raise WireError("flags: VOICE needs an audio level (LEVEL_PRESENT)")
        return flags
    if type(level) is not int or not 0 <= level <= MAX_LEVEL:
        raise WireError(f"flags.level: must be an integer 0..{MAX_LEVEL} (-dBov), got {level!r}")
    flags |= FLAG_LEVEL_PRESENT | (level << LEVEL_SHIFT)
    if voice:
        flags |= FLAG_VOICE
    return flags


def flags_level(flags: int) -> int | None:
    """The RFC 6464 level carried by AUDIO_IN flags, or None when the relay had none."""
    if flags & FLAG_LEVEL_PRESENT:
        return (flags & LEVEL_MASK) >> LEVEL_SHIFT
    return None


def flags_voice(flags: int) -> bool:
    return bool(flags & FLAG_VOICE)


# ---- datagrams ------------------------------------------------------------------------------

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from


def encode_audio(type_: int, call_id: int, seq: int, timestamp: int, payload: bytes, flags: int = 0) -> bytes:
    """Hot path for AUDIO_IN / AUDIO_OUT: one struct pack and one concatenation, no JSON.

    Checks only what a caller can get wrong cheaply (payload size, integer ranges via struct);
    flags are trusted here because they come from ``audio_in_flags`` or FLAG_MARKER.
    """
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise WireError(f"payload: an Opus frame is 1..{MAX_PAYLOAD} bytes, got {len(payload)}")
    try:
        return _pack_header(VERSION, type_, flags, call_id, seq, timestamp) + payload
    except struct.error:
        raise WireError(
            "header: type and flags must fit u8/u16, call_id u64, seq and timestamp u32 (got "
            f"type={type_}, flags={flags}, call_id={call_id}, seq={seq}, timestamp={timestamp})"
        ) from None


def encode(msg: Message) -> bytes:
    """Encode any message, validating it exactly as ``decode`` would, so nothing invalid is sent."""
    data = _encode_unchecked(msg)
    decode(data)
    return data


def _encode_unchecked(msg: Message) -> bytes:
    _check_u64_nonzero(msg.call_id)
    _check_u32("seq", msg.seq)
    _check_u32("timestamp", msg.timestamp)
    if type(msg.flags) is not int or not 0 <= msg.flags <= 0xFFFF:
        raise WireError(f"flags: must fit u16, got {msg.flags!r}")
    limit = MAX_PAYLOAD if msg.type in AUDIO_TYPES else MAX_CONTROL_PAYLOAD
    if len(msg.payload) > limit:
        raise WireError(f"payload: {len(msg.payload)} bytes, limit {limit} for {MsgType(msg.type).name}")
    return _pack_header(VERSION, int(msg.type), msg.flags, msg.call_id, msg.seq, msg.timestamp) + bytes(
        msg.payload
    )


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse and fully validate one body (an audio datagram, or a control datagram once
    ``wire_auth`` opened it). Raises WireError, and only WireError, on bad input."""
    n = len(data)
    if n < HEADER_SIZE:
        raise WireError(f"header: datagram is {n} bytes, a header is {HEADER_SIZE}")
    if n > MAX_DATAGRAM:
        raise WireError(f"datagram: {n} bytes, limit {MAX_DATAGRAM}")
    version, type_, flags, call_id, seq, timestamp = _unpack_header(data)
    if version != VERSION:
        raise WireError(f"version: got {version}, this end speaks {VERSION}")
    if type_ not in _TYPE_VALUES:
        raise WireError(f"type: unknown message type {type_} (known 1..{len(_TYPE_VALUES)})")
    if call_id == 0:
        raise WireError("call_id: 0 is reserved")
    mtype = MsgType(type_)
    extra = flags & ~_ALLOWED_FLAGS[mtype]
    if extra:
        raise WireError(f"flags: bits {extra:#06x} are not allowed on {mtype.name}")
    payload = bytes(data[HEADER_SIZE:])
    if mtype not in AUDIO_TYPES and len(payload) > MAX_CONTROL_PAYLOAD:
        raise WireError(f"payload: {mtype.name} carries {len(payload)} bytes, limit {MAX_CONTROL_PAYLOAD}")
    _check_shape(mtype, flags, payload)
    return Message(mtype, call_id, seq, timestamp, flags, payload)


def _check_shape(mtype: MsgType, flags: int, payload: bytes) -> None:
    if mtype in CONTROL_TYPES and not flags & FLAG_RELIABLE:
        raise WireError(f"flags: {mtype.name} must set RELIABLE ({FLAG_RELIABLE:#06x})")
    if mtype in AUDIO_TYPES:
        if not payload:
            raise WireError(f"payload: {mtype.name} carries one Opus frame of 1..{MAX_PAYLOAD} bytes, got 0")
        if flags & (LEVEL_MASK | FLAG_VOICE) and not flags & FLAG_LEVEL_PRESENT:
            raise WireError("flags: level bits or VOICE set without LEVEL_PRESENT")
    elif mtype is MsgType.CALL_START:
        CallStart.from_json(unpack_json(payload, what="CALL_START"))
    elif mtype is MsgType.CALL_END:
        if payload:  # empty: the compact "unknown_call", no larger than the datagram it answers
            _call_end_reason(unpack_json(payload, what="CALL_END"))
    elif mtype is MsgType.EVENT:
        _check_event(unpack_json(payload, what="EVENT"))
    elif mtype is MsgType.BARGE_IN:
        BargeIn.unpack(payload)
    elif mtype is MsgType.BARGE_CANDIDATE:
        BargeCandidate.unpack(payload)
    elif mtype is MsgType.BARGE_VERDICT:
        BargeVerdict.unpack(payload)
    elif mtype is MsgType.MARK:
        unpack_mark(payload)
    elif mtype is MsgType.ACK:
        unpack_ack(payload)
    elif mtype is MsgType.CLEAR and payload:
        raise WireError(f"payload: CLEAR carries no payload, got {len(payload)} bytes")
    elif mtype is MsgType.KEEPALIVE and payload:
        raise WireError(f"payload: KEEPALIVE carries no payload, got {len(payload)} bytes")


def _check_u32(name: str, value: int) -> None:
    if type(value) is not int or not 0 <= value <= U32:
        raise WireError(f"{name}: must be an integer 0..{U32}, got {value!r}")


def _check_u64_nonzero(value: int) -> None:
    if type(value) is not int or not 1 <= value <= U64:
        raise WireError(f"call_id: must be an integer 1..{U64}, got {value!r}")


# ---- serial-number arithmetic for u32 seq and timestamps (RFC 1982) ----------------------------


def u32_diff(a: int, b: int) -> int:
    """Signed distance a - b on the u32 circle, in -2**31 .. 2**31-1 (wrap-safe ordering)."""
    return ((a - b + 0x80000000) & U32) - 0x80000000
