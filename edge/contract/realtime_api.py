"""Cloudflare Realtime SFU API (spec 2024-05-21): typed models, request building, response parsing, retries.

Sans-IO so the Worker (JS ``fetch`` under Pyodide) and the relay (httpx) share one implementation:
``build_*`` returns an :class:`HttpRequest`, ``parse_*`` turns ``(status, body)`` into a model or raises
:class:`SfuApiError`, :class:`RetryPolicy` decides whether and how long to wait. Pure standard library,
CPython 3.11 syntax, so the same file runs on Pyodide (Python 3.13). JSON field names are the spec's;
validation errors name the JSON field path and the limit, never the value.
"""

from __future__ import annotations

import hmac
import json
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum, StrEnum
from typing import Any, Final, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, urlencode

T = TypeVar("T")
E = TypeVar("E", bound=Enum)

API_BASE_URL: Final = "https://rtc.live.cloudflare.com/v1"
# Cloudflare's documented limit (realtime/sfu/limits): up to 64 tracks in one API call.
MAX_TRACKS_PER_CALL: Final = 64
MAX_PATH_ID_CHARS: Final = 256  # our bound for ids placed in a URL path (Cloudflare's are 32 hex chars)
MAX_LABEL_CHARS: Final = 256  # our bound for correlationId
MAX_SECRET_CHARS: Final = 4096
MAX_BODY_BYTES: Final = 1 << 20  # responses are SDP-sized (a few KiB); anything larger is refused
MAX_ERROR_TEXT_CHARS: Final = 300


# --- errors -----------------------------------------------------------------------------------------


class RealtimeApiError(Exception):
    """Base of every error this module raises."""


class SchemaError(RealtimeApiError, ValueError):
    """A document or argument does not fit the spec; ``field`` is the JSON path (``tracks[0].mid``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field or "body"
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ErrorCode(StrEnum):
    """``errorCode`` values named in the spec, plus three this client uses for failures with no SFU code."""

    DECODING_ERROR = "decoding_error"
    INVALID_PARAMS = "invalid_params"
    INTERNAL_ERROR = "internal_error"
    CLOSE_TRACK_ERROR = "close_track_error"
    WEBSOCKET_HANDSHAKE_FAILED = "websocket_handshake_failed"
    # Client-side codes (not sent by Cloudflare):
    HTTP_ERROR = "http_error"  # error status without a JSON errorCode (e.g. a proxy's HTML 502)
    INVALID_RESPONSE = "invalid_response"  # 2xx body that is not the documented shape
    CONNECTION_ERROR = "connection_error"  # no HTTP response at all (status 0)


def is_retryable_status(status: int) -> bool:
    """429 (rate limit: 50 calls/s per session), 425 (too early) and 5xx are worth another attempt."""
    return status in (425, 429) or 500 <= status <= 599


class SfuApiError(RealtimeApiError):
    """A failed API call: HTTP status (0 = no response), the spec's ``errorCode`` and whether to retry."""

    def __init__(self, status: int, code: str, description: str, retryable: bool) -> None:
        super().__init__(status, code, description, retryable)
        self.status = status
        self.code = str(code)
        self.description = clean_text(description)
        self.retryable = retryable

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no HTTP response"
        return f"Realtime API error ({where}, {self.code}): {self.description}"

    def __repr__(self) -> str:
        return (
            f"SfuApiError(status={self.status}, code={self.code!r}, "
            f"description={self.description!r}, retryable={self.retryable})"
        )


def clean_text(text: str, limit: int = MAX_ERROR_TEXT_CHARS) -> str:
    """Make remote text safe to log: one line, printable, bounded."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- secrets and path segments ----------------------------------------------------------------------


_SECRET_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: safe in an HTTP header


class Secret:
    """A bearer token that only :meth:`reveal` gives out: repr, str and errors never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str, *, field: str = "secret") -> None:
        if not isinstance(value, str):
            raise SchemaError(field, f"must be a string, got {json_type(value)}")
        if not value:
            raise SchemaError(field, "must not be empty")
        if len(value) > MAX_SECRET_CHARS:
            raise SchemaError(field, f"must be at most {MAX_SECRET_CHARS} characters")
        if not _SECRET_CHARS.fullmatch(value):
            raise SchemaError(field, "must be printable ASCII without spaces (it goes into an HTTP header)")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


_FORBIDDEN_IN_PATH = re.compile(r"[/?#%\s\x00-\x1f\x7f]")


def path_segment(value: object, field: str) -> str:
    """Check an id that goes into a URL path and percent-encode it (no '/', '?', '#', '%', spaces)."""
    if not isinstance(value, str):
        raise SchemaError(field, f"must be a string, got {json_type(value)}")
    if not 1 <= len(value) <= MAX_PATH_ID_CHARS:
        raise SchemaError(field, f"must be 1 to {MAX_PATH_ID_CHARS} characters, got {len(value)}")
    if _FORBIDDEN_IN_PATH.search(value):
        raise SchemaError(field, "must not contain '/', '?', '#', '%', whitespace or control characters")
    return quote(value, safe="")


# --- JSON reading helpers (shared with edge/contract/turn_api.py)
# ---------------------------------------------


def json_type(value: object) -> str:
    """JSON type name of a value, for error messages that must not echo the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_MISSING: Final = object()


class JsonFields:
    """Typed reads from one JSON object; absent keys give None, wrong types raise :class:`SchemaError`."""

    __slots__ = ("_obj", "path")

    def __init__(self, obj: object, path: str) -> None:
        if not isinstance(obj, dict):
            raise SchemaError(path, f"expected an object, got {json_type(obj)}")
        self._obj: dict[str, object] = obj
        self.path = path

    def at(self, key: str) -> str:
        return join_path(self.path, key)

    def _typed(self, key: str, kind: type | tuple[type, ...], name: str) -> object:
        value = self._obj.get(key, _MISSING)
        if value is _MISSING:
            return None
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise SchemaError(self.at(key), f"expected {name}, got boolean")
        if not isinstance(value, kind):
            raise SchemaError(self.at(key), f"expected {name}, got {json_type(value)}")
        return value

    def string(self, key: str) -> str | None:
        value = self._typed(key, str, "string")
        return value if isinstance(value, str) else None

    def boolean(self, key: str) -> bool | None:
        value = self._typed(key, bool, "boolean")
        return value if isinstance(value, bool) else None

    def integer(self, key: str) -> int | None:
        value = self._typed(key, (int, float), "integer")
        if value is None:
            return None
        if isinstance(value, float):
            if not value.is_integer():
                raise SchemaError(self.at(key), "expected integer, got a fraction")
            return int(value)
        return value if isinstance(value, int) else None

    def enum(self, key: str, cls: type[E]) -> E | None:
        raw = self.string(key)
        if raw is None:
            return None
        try:
            return cls(raw)
        except ValueError:
            allowed = ", ".join(repr(member.value) for member in cls)
            raise SchemaError(self.at(key), f"must be one of {allowed}") from None

    def nested(self, key: str, parse: Callable[[object, str], T]) -> T | None:
        value = self._obj.get(key, _MISSING)
        return None if value is _MISSING else parse(value, self.at(key))

    def array(self, key: str, parse: Callable[[object, str], T]) -> tuple[T, ...] | None:
        value = self._typed(key, list, "array")
        if not isinstance(value, list):
            return None
        return tuple(parse(item, f"{self.at(key)}[{index}]") for index, item in enumerate(value))


def require(value: T | None, field: str) -> T:
    """The spec marks this field required."""
    if value is None:
        raise SchemaError(field, "is required")
    return value


@runtime_checkable
class JsonModel(Protocol):
    def to_json(self) -> dict[str, Any]: ...


def _to_json_value(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    # What isinstance(value, JsonModel) checks, without the runtime protocol check's introspection
    # (a dozen Python calls per value: a measurable share of a call setup's CPU in Pyodide).
    to_json = getattr(value, "to_json", None)
    if to_json is not None:
        return to_json()
    if isinstance(value, tuple):
        return [_to_json_value(item) for item in value]
    return value


def put(doc: dict[str, Any], key: str, value: object) -> None:
    """Add an optional field; unset (None) and empty tuples are omitted, as the spec's examples do."""
    if value is None or value == ():
        return
    doc[key] = _to_json_value(value)


def _check_text(value: str | None, field: str, *, limit: int | None = None) -> None:
    if value is None:
        return
    if not value:
        raise SchemaError(field, "must not be empty")
    if limit is not None and len(value) > limit:
        raise SchemaError(field, f"must be at most {limit} characters, got {len(value)}")


# --- enums and models -------------------------------------------------------------------------------


class SdpType(StrEnum):
    OFFER = "offer"
    ANSWER = "answer"


class Location(StrEnum):
    """``local``: this session publishes the track; ``remote``: it plays a track another session publishes."""

    LOCAL = "local"
    REMOTE = "remote"


class SimulcastPolicy(StrEnum):
    NONE = "none"
    ASCIIBETICAL = "asciibetical"


class ResourceStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    INITIALIZING = "initializing"


@dataclass(frozen=True, kw_only=True)
class SessionDescription:
    """An SDP offer or answer; the SDP text is left out of repr (long, and it carries ICE passwords)."""

    type: SdpType
    sdp: str = field(repr=False)

    @classmethod
    def offer(cls, sdp: str) -> SessionDescription:
        return cls(type=SdpType.OFFER, sdp=sdp)

    @classmethod
    def answer(cls, sdp: str) -> SessionDescription:
        return cls(type=SdpType.ANSWER, sdp=sdp)

    def to_json(self) -> dict[str, Any]:
        return {"sdp": self.sdp, "type": self.type.value}

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> SessionDescription:
        f = JsonFields(obj, path)
        return cls(
            sdp=require(f.string("sdp"), f.at("sdp")),
            type=require(f.enum("type", SdpType), f.at("type")),
        )

    def check(self, field: str, expected: SdpType | None = None) -> None:
        _check_text(self.sdp, join_path(field, "sdp"))
        if expected is not None and self.type is not expected:
            raise SchemaError(join_path(field, "type"), f"must be {expected.value!r} here")


@dataclass(frozen=True, kw_only=True)
class Simulcast:
    preferred_rid: str | None = None
    priority_ordering: SimulcastPolicy | None = None
    rid_not_available: SimulcastPolicy | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "preferredRid", self.preferred_rid)
        put(doc, "priorityOrdering", self.priority_ordering)
        put(doc, "ridNotAvailable", self.rid_not_available)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> Simulcast:
        f = JsonFields(obj, path)
        return cls(
            preferred_rid=f.string("preferredRid"),
            priority_ordering=f.enum("priorityOrdering", SimulcastPolicy),
            rid_not_available=f.enum("ridNotAvailable", SimulcastPolicy),
        )


def mid_for_track(track_name: str) -> str:
    """The ``#trackName`` form of ``mid``: pull into the transceiver that already carries ``track_name``."""
    _check_text(track_name, "trackName")
    return f"#{track_name}"


@dataclass(frozen=True, kw_only=True)
class TrackObject:
    """One entry of ``tracks`` (spec ``TrackObject``); every field is optional in the spec."""

    location: Location | None = None
    mid: str | None = None
    session_id: str | None = None
    track_name: str | None = None
    bidirectional_media_stream: bool | None = None
    kind: str | None = None
    simulcast: Simulcast | None = None

    @classmethod
    def local(
        cls,
        track_name: str,
        *,
        mid: str | None = None,
        kind: str | None = None,
        bidirectional_media_stream: bool | None = None,
    ) -> TrackObject:
        """Push a track this session sends (``mid`` from our offer, or ``kind`` when the SFU offers)."""
        return cls(
            location=Location.LOCAL,
            track_name=track_name,
            mid=mid,
            kind=kind,
            bidirectional_media_stream=bidirectional_media_stream,
        )

    @classmethod
    def remote(
        cls,
        session_id: str,
        track_name: str,
        *,
        mid: str | None = None,
        kind: str | None = None,
        bidirectional_media_stream: bool | None = None,
        simulcast: Simulcast | None = None,
    ) -> TrackObject:
        """Pull ``track_name`` published by ``session_id``; ``mid="#name"`` reuses our transceiver."""
        return cls(
            location=Location.REMOTE,
            session_id=session_id,
            track_name=track_name,
            mid=mid,
            kind=kind,
            bidirectional_media_stream=bidirectional_media_stream,
            simulcast=simulcast,
        )

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "location", self.location)
        put(doc, "mid", self.mid)
        put(doc, "sessionId", self.session_id)
        put(doc, "trackName", self.track_name)
        put(doc, "bidirectionalMediaStream", self.bidirectional_media_stream)
        put(doc, "kind", self.kind)
        put(doc, "simulcast", self.simulcast)
        return doc

    @staticmethod
    def _fields(f: JsonFields) -> dict[str, Any]:
        return {
            "location": f.enum("location", Location),
            "mid": f.string("mid"),
            "session_id": f.string("sessionId"),
            "track_name": f.string("trackName"),
            "bidirectional_media_stream": f.boolean("bidirectionalMediaStream"),
            "kind": f.string("kind"),
            "simulcast": f.nested("simulcast", Simulcast.from_json),
        }

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> TrackObject:
        return cls(**cls._fields(JsonFields(obj, path)))

    def check(self, path: str, *, sdp_from_caller: bool | None, reuse_transceiver: bool = False) -> None:
        """Rules the spec states in prose; ``sdp_from_caller`` None skips the offer-dependent ones."""
        _check_text(self.mid, join_path(path, "mid"))
        if self.mid is not None and self.mid.startswith("#") and len(self.mid) == 1:
            raise SchemaError(join_path(path, "mid"), "'#' must be followed by a trackName")
        _check_text(self.kind, join_path(path, "kind"))
        location = require(self.location, join_path(path, "location"))
        _check_text(require(self.track_name, join_path(path, "trackName")), join_path(path, "trackName"))
        if reuse_transceiver:
            require(self.mid, join_path(path, "mid"))
        if location is Location.REMOTE:
            session_id = require(self.session_id, join_path(path, "sessionId"))
            _check_text(session_id, join_path(path, "sessionId"))
            return
        if self.session_id is not None:
            raise SchemaError(join_path(path, "sessionId"), "must be unset for a local track")
        if sdp_from_caller is True and self.mid is None:
            raise SchemaError(join_path(path, "mid"), "is required for a local track pushed with an offer")
        if sdp_from_caller is False and self.kind is None:
            raise SchemaError(join_path(path, "kind"), "is required when the SFU generates the offer")


@dataclass(frozen=True, kw_only=True)
class ItemError:
    """Per-item ``errorCode``/``errorDescription``: a 200 batch response can hold failed items."""

    error_code: str | None = None
    error_description: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def _put_error(self, doc: dict[str, Any]) -> dict[str, Any]:
        put(doc, "errorCode", self.error_code)
        put(doc, "errorDescription", self.error_description)
        return doc

    @staticmethod
    def _error_fields(f: JsonFields) -> dict[str, Any]:
        return {"error_code": f.string("errorCode"), "error_description": f.string("errorDescription")}


@dataclass(frozen=True, kw_only=True)
class TrackResult(TrackObject, ItemError):
    """A ``tracks`` item of a tracks/new or tracks/update response."""

    def to_json(self) -> dict[str, Any]:
        return self._put_error(super().to_json())

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> TrackResult:
        f = JsonFields(obj, path)
        return cls(**TrackObject._fields(f), **ItemError._error_fields(f))


@dataclass(frozen=True, kw_only=True)
class TrackState(TrackObject):
    """A ``tracks`` item of GET session: the track plus its status."""

    status: ResourceStatus | None = None

    def to_json(self) -> dict[str, Any]:
        doc = super().to_json()
        put(doc, "status", self.status)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> TrackState:
        f = JsonFields(obj, path)
        return cls(**TrackObject._fields(f), status=f.enum("status", ResourceStatus))


@dataclass(frozen=True, kw_only=True)
class CloseTrackObject:
    """A track to close, named by its transceiver's ``mid`` on this session."""

    mid: str

    def to_json(self) -> dict[str, Any]:
        return {"mid": self.mid}

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> CloseTrackObject:
        f = JsonFields(obj, path)
        return cls(mid=require(f.string("mid"), f.at("mid")))


@dataclass(frozen=True, kw_only=True)
class CloseTrackResult(CloseTrackObject, ItemError):
    """A close result; ``close_track_error`` means the track was absent or already closed."""

    def to_json(self) -> dict[str, Any]:
        return self._put_error(super().to_json())

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> CloseTrackResult:
        f = JsonFields(obj, path)
        return cls(mid=require(f.string("mid"), f.at("mid")), **ItemError._error_fields(f))


@dataclass(frozen=True, kw_only=True)
class DataChannelState:
    location: Location | None = None
    session_id: str | None = None
    data_channel_name: str | None = None
    id: int | None = None
    status: ResourceStatus | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "location", self.location)
        put(doc, "sessionId", self.session_id)
        put(doc, "dataChannelName", self.data_channel_name)
        put(doc, "id", self.id)
        put(doc, "status", self.status)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> DataChannelState:
        f = JsonFields(obj, path)
        return cls(
            location=f.enum("location", Location),
            session_id=f.string("sessionId"),
            data_channel_name=f.string("dataChannelName"),
            id=f.integer("id"),
            status=f.enum("status", ResourceStatus),
        )


def _check_count(items: tuple[Any, ...], field: str, minimum: int) -> None:
    if len(items) < minimum:
        raise SchemaError(field, f"must list at least {minimum} item(s)")
    if len(items) > MAX_TRACKS_PER_CALL:
        raise SchemaError(field, f"must list at most {MAX_TRACKS_PER_CALL} tracks per call, got {len(items)}")


def raise_for_item_errors(
    items: Iterable[ItemError], field: str = "tracks", *, ignore: tuple[str, ...] = ()
) -> None:
    """Turn failed items of a 200 batch into one :class:`SfuApiError` (the first failure, plus a count)."""
    failed = [
        (index, item) for index, item in enumerate(items) if not item.ok and item.error_code not in ignore
    ]
    if not failed:
        return
    index, first = failed[0]
    more = f" (and {len(failed) - 1} more failed item(s))" if len(failed) > 1 else ""
    description = first.error_description or "item failed"
    raise SfuApiError(200, first.error_code or "", f"{field}[{index}]: {description}{more}", retryable=False)


# Requests -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NewSessionRequest:
    """sessions/new body; with no description the SFU only allocates a sessionId."""

    session_description: SessionDescription | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "sessionDescription", self.session_description)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> NewSessionRequest:
        f = JsonFields(obj, path)
        request = cls(session_description=f.nested("sessionDescription", SessionDescription.from_json))
        request.validate(path)
        return request

    def validate(self, path: str = "") -> None:
        if self.session_description is not None:
            self.session_description.check(join_path(path, "sessionDescription"), SdpType.OFFER)


@dataclass(frozen=True, kw_only=True)
class TracksRequest:
    """tracks/new body: push local tracks with our offer, or pull remote ones (the SFU offers)."""

    tracks: tuple[TrackObject, ...] = ()
    session_description: SessionDescription | None = None
    auto_discover: bool | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "sessionDescription", self.session_description)
        put(doc, "tracks", self.tracks)
        put(doc, "autoDiscover", self.auto_discover)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> TracksRequest:
        f = JsonFields(obj, path)
        request = cls(
            session_description=f.nested("sessionDescription", SessionDescription.from_json),
            tracks=f.array("tracks", TrackObject.from_json) or (),
            auto_discover=f.boolean("autoDiscover"),
        )
        request.validate(path)
        return request

    def validate(self, path: str = "") -> None:
        offered = self.session_description is not None
        if self.session_description is not None:
            self.session_description.check(join_path(path, "sessionDescription"), SdpType.OFFER)
        elif self.auto_discover:
            raise SchemaError(
                join_path(path, "sessionDescription"), "is required (our offer) with autoDiscover"
            )
        _check_count(self.tracks, join_path(path, "tracks"), 0 if self.auto_discover else 1)
        for index, track in enumerate(self.tracks):
            track.check(f"{join_path(path, 'tracks')}[{index}]", sdp_from_caller=offered)


@dataclass(frozen=True, kw_only=True)
class RenegotiateRequest:
    """renegotiate body: our answer to the SFU's offer (after ``requiresImmediateRenegotiation``)."""

    session_description: SessionDescription

    def to_json(self) -> dict[str, Any]:
        return {"sessionDescription": self.session_description.to_json()}

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> RenegotiateRequest:
        f = JsonFields(obj, path)
        description = f.nested("sessionDescription", SessionDescription.from_json)
        request = cls(session_description=require(description, f.at("sessionDescription")))
        request.validate(path)
        return request

    def validate(self, path: str = "") -> None:
        self.session_description.check(join_path(path, "sessionDescription"))


@dataclass(frozen=True, kw_only=True)
class CloseTracksRequest:
    """tracks/close body: ``force=True`` closes without SDP; ``force=False`` needs our offer."""

    tracks: tuple[CloseTrackObject, ...]
    force: bool
    session_description: SessionDescription | None = None

    @classmethod
    def for_mids(
        cls, mids: Iterable[str], *, force: bool, session_description: SessionDescription | None = None
    ) -> CloseTracksRequest:
        return cls(
            tracks=tuple(CloseTrackObject(mid=mid) for mid in mids),
            force=force,
            session_description=session_description,
        )

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "sessionDescription", self.session_description)
        doc["tracks"] = [track.to_json() for track in self.tracks]
        doc["force"] = self.force
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> CloseTracksRequest:
        f = JsonFields(obj, path)
        request = cls(
            session_description=f.nested("sessionDescription", SessionDescription.from_json),
            tracks=require(f.array("tracks", CloseTrackObject.from_json), f.at("tracks")),
            force=require(f.boolean("force"), f.at("force")),
        )
        request.validate(path)
        return request

    def validate(self, path: str = "") -> None:
        _check_count(self.tracks, join_path(path, "tracks"), 1)
        for index, track in enumerate(self.tracks):
            _check_text(track.mid, f"{join_path(path, 'tracks')}[{index}].mid")
        if not isinstance(self.force, bool):
            raise SchemaError(join_path(path, "force"), f"expected boolean, got {json_type(self.force)}")
        if self.session_description is not None:
            self.session_description.check(join_path(path, "sessionDescription"), SdpType.OFFER)
        elif not self.force:
            raise SchemaError(
                join_path(path, "sessionDescription"), "is required (our offer) when force is false"
            )


@dataclass(frozen=True, kw_only=True)
class UpdateTracksRequest:
    """tracks/update body: put another track (or new simulcast preferences) on existing transceivers."""

    tracks: tuple[TrackObject, ...]
    session_description: SessionDescription | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "sessionDescription", self.session_description)
        doc["tracks"] = [track.to_json() for track in self.tracks]
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> UpdateTracksRequest:
        f = JsonFields(obj, path)
        request = cls(
            session_description=f.nested("sessionDescription", SessionDescription.from_json),
            tracks=require(f.array("tracks", TrackObject.from_json), f.at("tracks")),
        )
        request.validate(path)
        return request

    def validate(self, path: str = "") -> None:
        if self.session_description is not None:
            self.session_description.check(join_path(path, "sessionDescription"))
        _check_count(self.tracks, join_path(path, "tracks"), 1)
        for index, track in enumerate(self.tracks):
            track.check(f"{join_path(path, 'tracks')}[{index}]", sdp_from_caller=None, reuse_transceiver=True)


# Responses ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ErrorResponse:
    """A request-level error body (``errorCode`` + ``errorDescription``), e.g. for an emulator to send."""

    error_code: str
    error_description: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"errorCode": self.error_code}
        put(doc, "errorDescription", self.error_description)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> ErrorResponse:
        f = JsonFields(obj, path)
        return cls(
            error_code=require(f.string("errorCode"), f.at("errorCode")),
            error_description=f.string("errorDescription"),
        )


@dataclass(frozen=True, kw_only=True)
class NewSessionResponse:
    session_id: str
    session_description: SessionDescription | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "sessionDescription", self.session_description)
        doc["sessionId"] = self.session_id
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> NewSessionResponse:
        f = JsonFields(obj, path)
        session_id = require(f.string("sessionId"), f.at("sessionId"))
        _check_text(session_id, f.at("sessionId"))
        return cls(
            session_id=session_id,
            session_description=f.nested("sessionDescription", SessionDescription.from_json),
        )


@dataclass(frozen=True, kw_only=True)
class TracksResponse:
    """tracks/new result; check :attr:`failed` (or :meth:`raise_for_item_errors`): 200 can hold failures."""

    tracks: tuple[TrackResult, ...] = ()
    session_description: SessionDescription | None = None
    requires_immediate_renegotiation: bool | None = None

    @property
    def failed(self) -> tuple[TrackResult, ...]:
        return tuple(track for track in self.tracks if not track.ok)

    def raise_for_item_errors(self) -> None:
        raise_for_item_errors(self.tracks)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "requiresImmediateRenegotiation", self.requires_immediate_renegotiation)
        put(doc, "tracks", self.tracks)
        put(doc, "sessionDescription", self.session_description)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> TracksResponse:
        f = JsonFields(obj, path)
        return cls(
            tracks=f.array("tracks", TrackResult.from_json) or (),
            session_description=f.nested("sessionDescription", SessionDescription.from_json),
            requires_immediate_renegotiation=f.boolean("requiresImmediateRenegotiation"),
        )


@dataclass(frozen=True, kw_only=True)
class RenegotiateResponse:
    session_description: SessionDescription | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "sessionDescription", self.session_description)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> RenegotiateResponse:
        f = JsonFields(obj, path)
        return cls(session_description=f.nested("sessionDescription", SessionDescription.from_json))


_CLOSED_CODES: Final = (ErrorCode.CLOSE_TRACK_ERROR.value,)


@dataclass(frozen=True, kw_only=True)
class CloseTracksResponse:
    """tracks/close result, per requested mid; a negotiated close carries the SFU's answer."""

    tracks: tuple[CloseTrackResult, ...] = ()
    session_description: SessionDescription | None = None
    requires_immediate_renegotiation: bool | None = None

    @property
    def failed(self) -> tuple[CloseTrackResult, ...]:
        """Failed items other than ``close_track_error`` (absent or already closed: nothing left to do)."""
        return tuple(track for track in self.tracks if not track.ok and track.error_code not in _CLOSED_CODES)

    def raise_for_item_errors(self) -> None:
        raise_for_item_errors(self.tracks, ignore=_CLOSED_CODES)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "sessionDescription", self.session_description)
        put(doc, "requiresImmediateRenegotiation", self.requires_immediate_renegotiation)
        put(doc, "tracks", self.tracks)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> CloseTracksResponse:
        f = JsonFields(obj, path)
        return cls(
            tracks=f.array("tracks", CloseTrackResult.from_json) or (),
            session_description=f.nested("sessionDescription", SessionDescription.from_json),
            requires_immediate_renegotiation=f.boolean("requiresImmediateRenegotiation"),
        )


@dataclass(frozen=True, kw_only=True)
class UpdateTracksResponse:
    tracks: tuple[TrackResult, ...] = ()
    requires_immediate_renegotiation: bool | None = None

    @property
    def failed(self) -> tuple[TrackResult, ...]:
        return tuple(track for track in self.tracks if not track.ok)

    def raise_for_item_errors(self) -> None:
        raise_for_item_errors(self.tracks)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "requiresImmediateRenegotiation", self.requires_immediate_renegotiation)
        put(doc, "tracks", self.tracks)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> UpdateTracksResponse:
        f = JsonFields(obj, path)
        return cls(
            tracks=f.array("tracks", TrackResult.from_json) or (),
            requires_immediate_renegotiation=f.boolean("requiresImmediateRenegotiation"),
        )


@dataclass(frozen=True, kw_only=True)
class GetSessionStateResponse:
    tracks: tuple[TrackState, ...] = ()
    data_channels: tuple[DataChannelState, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        put(doc, "tracks", self.tracks)
        put(doc, "dataChannels", self.data_channels)
        return doc

    @classmethod
    def from_json(cls, obj: object, path: str = "") -> GetSessionStateResponse:
        f = JsonFields(obj, path)
        return cls(
            tracks=f.array("tracks", TrackState.from_json) or (),
            data_channels=f.array("dataChannels", DataChannelState.from_json) or (),
        )


# --- requests on the wire -----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class HttpRequest:
    """What to send, for any HTTP library; ``path`` is relative to the API base (``.../v1``)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body_bytes: bytes | None = None

    def url(self, base_url: str = API_BASE_URL) -> str:
        url = check_base_url(base_url) + self.path
        return f"{url}?{urlencode(self.query)}" if self.query else url

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)

    def __repr__(self) -> str:
        names = ", ".join(
            f"{name}: <redacted>" if name.lower() == "authorization" else f"{name}: {value}"
            for name, value in self.headers
        )
        size = "none" if self.body_bytes is None else f"{len(self.body_bytes)} bytes"
        return f"HttpRequest({self.method} {self.path} query={self.query!r} headers={{{names}}} body={size})"


def check_base_url(base_url: object) -> str:
    """The API root (``https://rtc.live.cloudflare.com/v1``) without its trailing slash."""
    if not isinstance(base_url, str):
        raise SchemaError("base_url", f"expected string, got {json_type(base_url)}")
    if not base_url.startswith(("https://", "http://")) or "?" in base_url or "#" in base_url:
        raise SchemaError("base_url", "must be an https:// URL (http:// for a local emulator) with no query")
    return base_url.rstrip("/")


def json_request(
    method: str,
    path: str,
    token: Secret,
    body: Mapping[str, Any] | None = None,
    query: tuple[tuple[str, str], ...] = (),
) -> HttpRequest:
    """An :class:`HttpRequest` with the bearer token in its header and a compact JSON body."""
    headers = [("Authorization", f"Bearer {token.reveal()}"), ("Accept", "application/json")]
    payload = None
    if body is not None:
        headers.append(("Content-Type", "application/json"))
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return HttpRequest(method, path, query, tuple(headers), payload)


@dataclass(frozen=True)
class SfuApp:
    """An SFU application: its id (in the path) and its secret (only in the Authorization header)."""

    app_id: str
    secret: Secret

    def __post_init__(self) -> None:
        path_segment(self.app_id, "app_id")
        if not isinstance(self.secret, Secret):
            raise SchemaError("app_secret", "must be a Secret (wrap the string with Secret(...))")

    def session_path(self, session_id: str, suffix: str = "") -> str:
        app = path_segment(self.app_id, "app_id")
        return f"/apps/{app}/sessions/{path_segment(session_id, 'session_id')}{suffix}"


def build_new_session(
    app: SfuApp,
    *,
    thirdparty: bool | None = None,
    correlation_id: str | None = None,
    request: NewSessionRequest | None = None,
) -> HttpRequest:
    """POST sessions/new; no body unless ``request`` carries an offer (201 with ``sessionId``)."""
    query: list[tuple[str, str]] = []
    if thirdparty is not None:
        if not isinstance(thirdparty, bool):
            raise SchemaError("thirdparty", f"expected boolean, got {json_type(thirdparty)}")
        query.append(("thirdparty", "true" if thirdparty else "false"))
    if correlation_id is not None:
        if not isinstance(correlation_id, str):
            raise SchemaError("correlationId", f"expected string, got {json_type(correlation_id)}")
        _check_text(correlation_id, "correlationId", limit=MAX_LABEL_CHARS)
        if not correlation_id.isprintable():
            raise SchemaError("correlationId", "must be printable text")
        query.append(("correlationId", correlation_id))
    body = None
    if request is not None and request.session_description is not None:
        request.validate()
        body = request.to_json()
    path = f"/apps/{path_segment(app.app_id, 'app_id')}/sessions/new"
    return json_request("POST", path, app.secret, body, tuple(query))


def build_new_tracks(app: SfuApp, session_id: str, request: TracksRequest) -> HttpRequest:
    request.validate()
    return json_request("POST", app.session_path(session_id, "/tracks/new"), app.secret, request.to_json())


def build_renegotiate(app: SfuApp, session_id: str, request: RenegotiateRequest) -> HttpRequest:
    request.validate()
    return json_request("PUT", app.session_path(session_id, "/renegotiate"), app.secret, request.to_json())


def build_close_tracks(app: SfuApp, session_id: str, request: CloseTracksRequest) -> HttpRequest:
    request.validate()
    return json_request("PUT", app.session_path(session_id, "/tracks/close"), app.secret, request.to_json())


def build_update_tracks(app: SfuApp, session_id: str, request: UpdateTracksRequest) -> HttpRequest:
    request.validate()
    return json_request("PUT", app.session_path(session_id, "/tracks/update"), app.secret, request.to_json())


def build_get_session(app: SfuApp, session_id: str) -> HttpRequest:
    return json_request("GET", app.session_path(session_id), app.secret)


# --- responses ----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _load_json(status: int, body: bytes) -> object:
    if len(body) > MAX_BODY_BYTES:
        raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, f"body exceeds {MAX_BODY_BYTES} bytes", False)
    if not body.strip():
        return {}
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, "body is not UTF-8 JSON", False) from None


def error_from_response(status: int, body: bytes) -> SfuApiError:
    """The error for a non-2xx response, using the body's ``errorCode`` when it has one."""
    retryable = is_retryable_status(status)
    try:
        doc = _load_json(status, body)
    except SfuApiError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("errorCode"), str) and doc["errorCode"]:
        description = doc.get("errorDescription")
        text = description if isinstance(description, str) and description else f"HTTP {status}"
        return SfuApiError(status, doc["errorCode"], text, retryable)
    # Never echo a body we cannot read as the API's error document: it could be anything.
    return SfuApiError(status, ErrorCode.HTTP_ERROR, f"HTTP {status} ({len(body)}-byte body)", retryable)


def decode_response(status: int, body: bytes, parse: Callable[[object, str], T]) -> T:
    """2xx → model; non-2xx, a top-level ``errorCode`` or a malformed body → :class:`SfuApiError`."""
    if not 200 <= status <= 299:
        raise error_from_response(status, body)
    doc = _load_json(status, body)
    if isinstance(doc, dict) and "errorCode" in doc:
        try:
            error = ErrorResponse.from_json(doc)
        except SchemaError as exc:
            raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, str(exc), False) from None
        raise SfuApiError(status, error.error_code, error.error_description or "request failed", False)
    try:
        return parse(doc, "")
    except SchemaError as exc:
        raise SfuApiError(status, ErrorCode.INVALID_RESPONSE, str(exc), False) from None


def parse_new_session(status: int, body: bytes) -> NewSessionResponse:
    return decode_response(status, body, NewSessionResponse.from_json)


def parse_new_tracks(status: int, body: bytes) -> TracksResponse:
    return decode_response(status, body, TracksResponse.from_json)


def parse_renegotiate(status: int, body: bytes) -> RenegotiateResponse:
    return decode_response(status, body, RenegotiateResponse.from_json)


def parse_close_tracks(status: int, body: bytes) -> CloseTracksResponse:
    return decode_response(status, body, CloseTracksResponse.from_json)


def parse_update_tracks(status: int, body: bytes) -> UpdateTracksResponse:
    return decode_response(status, body, UpdateTracksResponse.from_json)


def parse_get_session(status: int, body: bytes) -> GetSessionStateResponse:
    return decode_response(status, body, GetSessionStateResponse.from_json)


# --- retries --------------------------------------------------------------------------------------------


_DELTA_SECONDS = re.compile(r"[0-9]{1,10}", re.ASCII)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounded retries: full-jitter exponential backoff, ``Retry-After`` honoured up to a cap.

    Retries only what may succeed later (429, 425, 5xx, no response). Every bound is finite, so a call
    takes at most ``max_attempts`` tries and never starts a retry after ``max_elapsed`` seconds.
    """

    max_attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 4.0
    max_retry_after: float = 10.0
    max_elapsed: float = 30.0

    def __post_init__(self) -> None:
        _check_range("max_attempts", self.max_attempts, 1, 10, integer=True)
        _check_range("base_delay", self.base_delay, 0.0, 60.0)
        _check_range("max_delay", self.max_delay, self.base_delay, 60.0)
        _check_range("max_retry_after", self.max_retry_after, 0.0, 300.0)
        _check_range("max_elapsed", self.max_elapsed, 0.0, 600.0)

    def backoff(self, retry_index: int, rng: random.Random) -> float:
        """Full jitter (uniform in [0, min(max_delay, base_delay * 2**retry_index)])."""
        ceiling = min(self.max_delay, self.base_delay * (2.0 ** min(retry_index, 30)))
        return rng.uniform(0.0, ceiling)

    def next_delay(
        self,
        *,
        attempts_made: int,
        elapsed: float,
        retryable: bool,
        rng: random.Random,
        retry_after: str | None = None,
        now: datetime | None = None,
    ) -> float | None:
        """Seconds to sleep before the next attempt, or None to give up and raise the last error."""
        if not retryable or attempts_made >= self.max_attempts:
            return None
        hinted = parse_retry_after(retry_after, now=now)
        if hinted is not None:
            delay = min(hinted, self.max_retry_after)
        else:
            delay = self.backoff(attempts_made - 1, rng)
        if elapsed + delay > self.max_elapsed:
            return None
        return delay


async def call_with_retries(
    send: Callable[[], Awaitable[tuple[int, str | None, bytes]]],
    parse: Callable[[int, bytes], T],
    policy: RetryPolicy,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random,
    on_retry: Callable[[SfuApiError, int, float], None] | None = None,
) -> T:
    """The one retry loop of the Realtime API (SFU and TURN): the Worker's ``fetch`` and the relay's httpx.

    ``send`` makes one attempt and returns (status, Retry-After header, body), or raises
    :class:`SfuApiError` when no response came; ``parse`` accepts the response or raises the API's error.
    ``on_retry(error, attempt, delay)`` is told before each wait (the relay logs it).
    """
    started = clock()
    for attempt in range(1, policy.max_attempts + 1):
        retry_after: str | None = None
        try:
            status, retry_after, body = await send()
            return parse(status, body)
        except SfuApiError as exc:
            error = exc
        delay = policy.next_delay(
            attempts_made=attempt,
            elapsed=clock() - started,
            retryable=error.retryable,
            rng=rng,
            retry_after=retry_after,
        )
        if delay is None:
            raise error
        if on_retry is not None:
            on_retry(error, attempt, delay)
        await sleep(delay)
    raise AssertionError("RetryPolicy.next_delay gives up at max_attempts")


def _check_range(name: str, value: object, low: float, high: float, *, integer: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and isinstance(value, float))
    ):
        raise SchemaError(name, f"expected {'an integer' if integer else 'a number'}, got {json_type(value)}")
    if not low <= value <= high:
        raise SchemaError(name, f"must be between {low:g} and {high:g}, got {value:g}")
