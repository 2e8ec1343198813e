"""Cloudflare Realtime SFU API (spec 2024-05-21): the request and response documents as typed models.

One frozen dataclass per spec schema, read and written by the contract's one codec
(:mod:`splitrelay.contract.json_fields`): JSON names are the spec's camelCase, unset optional fields
are left out. The rules the spec states in prose live in each request's ``validate``. The requests on
the wire are :mod:`splitrelay.contract.sfu_http`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from splitrelay.contract.api_error import ErrorCode, SfuApiError
from splitrelay.contract.json_fields import JsonModel, SchemaError, check_text, join_path, json_type, require

# Cloudflare's documented limit (realtime/sfu/limits): up to 64 tracks in one API call.
MAX_TRACKS_PER_CALL: Final = 64


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
class SessionDescription(JsonModel):
    """An SDP offer or answer; the SDP text is left out of repr (long, and it carries ICE passwords)."""

    type: SdpType
    sdp: str = field(repr=False)

    @classmethod
    def offer(cls, sdp: str) -> SessionDescription:
        return cls(type=SdpType.OFFER, sdp=sdp)

    @classmethod
    def answer(cls, sdp: str) -> SessionDescription:
        return cls(type=SdpType.ANSWER, sdp=sdp)

    def check(self, field: str, expected: SdpType | None = None, *, max_chars: int | None = None) -> None:
        """Not empty, at most ``max_chars``, and of the ``expected`` type (where only one makes sense)."""
        check_text(self.sdp, join_path(field, "sdp"), limit=max_chars)
        if expected is not None and self.type is not expected:
            raise SchemaError(join_path(field, "type"), f"must be {expected.value!r} here")


@dataclass(frozen=True, kw_only=True)
class Simulcast(JsonModel):
    preferred_rid: str | None = None
    priority_ordering: SimulcastPolicy | None = None
    rid_not_available: SimulcastPolicy | None = None


def mid_for_track(track_name: str) -> str:
    """The ``#trackName`` form of ``mid``: pull into the transceiver that already carries ``track_name``."""
    check_text(track_name, "trackName")
    return f"#{track_name}"


@dataclass(frozen=True, kw_only=True)
class TrackObject(JsonModel):
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

    def check(self, path: str, *, sdp_from_caller: bool | None, reuse_transceiver: bool = False) -> None:
        """Rules the spec states in prose; ``sdp_from_caller`` None skips the offer-dependent ones."""
        check_text(self.mid, join_path(path, "mid"))
        if self.mid is not None and self.mid.startswith("#") and len(self.mid) == 1:
            raise SchemaError(join_path(path, "mid"), "'#' must be followed by a trackName")
        check_text(self.kind, join_path(path, "kind"))
        location = require(self.location, join_path(path, "location"))
        check_text(require(self.track_name, join_path(path, "trackName")), join_path(path, "trackName"))
        if reuse_transceiver:
            require(self.mid, join_path(path, "mid"))
        if location is Location.REMOTE:
            session_id = require(self.session_id, join_path(path, "sessionId"))
            check_text(session_id, join_path(path, "sessionId"))
            return
        if self.session_id is not None:
            raise SchemaError(join_path(path, "sessionId"), "must be unset for a local track")
        if sdp_from_caller is True and self.mid is None:
            raise SchemaError(join_path(path, "mid"), "is required for a local track pushed with an offer")
        if sdp_from_caller is False and self.kind is None:
            raise SchemaError(join_path(path, "kind"), "is required when the SFU generates the offer")


@dataclass(frozen=True, kw_only=True)
class ItemError(JsonModel):
    """Per-item ``errorCode``/``errorDescription``: a 200 batch response can hold failed items."""

    error_code: str | None = None
    error_description: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


@dataclass(frozen=True, kw_only=True)
class TrackResult(TrackObject, ItemError):
    """A ``tracks`` item of a tracks/new or tracks/update response."""


@dataclass(frozen=True, kw_only=True)
class TrackState(TrackObject):
    """A ``tracks`` item of GET session: the track plus its status."""

    status: ResourceStatus | None = None


@dataclass(frozen=True, kw_only=True)
class CloseTrackObject(JsonModel):
    """A track to close, named by its transceiver's ``mid`` on this session."""

    mid: str


@dataclass(frozen=True, kw_only=True)
class CloseTrackResult(CloseTrackObject, ItemError):
    """A close result; ``close_track_error`` means the track was absent or already closed."""


@dataclass(frozen=True, kw_only=True)
class DataChannelState(JsonModel):
    location: Location | None = None
    session_id: str | None = None
    data_channel_name: str | None = None
    id: int | None = None
    status: ResourceStatus | None = None


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
class NewSessionRequest(JsonModel):
    """sessions/new body; with no description the SFU only allocates a sessionId."""

    session_description: SessionDescription | None = None

    def validate(self, path: str = "") -> None:
        if self.session_description is not None:
            self.session_description.check(join_path(path, "sessionDescription"), SdpType.OFFER)


@dataclass(frozen=True, kw_only=True)
class TracksRequest(JsonModel):
    """tracks/new body: push local tracks with our offer, or pull remote ones (the SFU offers)."""

    session_description: SessionDescription | None = None
    tracks: tuple[TrackObject, ...] = ()
    auto_discover: bool | None = None

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
class RenegotiateRequest(JsonModel):
    """renegotiate body: our answer to the SFU's offer (after ``requiresImmediateRenegotiation``)."""

    session_description: SessionDescription

    def validate(self, path: str = "") -> None:
        self.session_description.check(join_path(path, "sessionDescription"))


@dataclass(frozen=True, kw_only=True)
class CloseTracksRequest(JsonModel):
    """tracks/close body: ``force=True`` closes without SDP; ``force=False`` needs our offer."""

    session_description: SessionDescription | None = None
    tracks: tuple[CloseTrackObject, ...]
    force: bool

    @classmethod
    def for_mids(
        cls, mids: Iterable[str], *, force: bool, session_description: SessionDescription | None = None
    ) -> CloseTracksRequest:
        return cls(
            tracks=tuple(CloseTrackObject(mid=mid) for mid in mids),
            force=force,
            session_description=session_description,
        )

    def validate(self, path: str = "") -> None:
        _check_count(self.tracks, join_path(path, "tracks"), 1)
        for index, track in enumerate(self.tracks):
            check_text(track.mid, f"{join_path(path, 'tracks')}[{index}].mid")
        if not isinstance(self.force, bool):
            raise SchemaError(join_path(path, "force"), f"expected boolean, got {json_type(self.force)}")
        if self.session_description is not None:
            self.session_description.check(join_path(path, "sessionDescription"), SdpType.OFFER)
        elif not self.force:
            raise SchemaError(
                join_path(path, "sessionDescription"), "is required (our offer) when force is false"
            )


@dataclass(frozen=True, kw_only=True)
class UpdateTracksRequest(JsonModel):
    """tracks/update body: put another track (or new simulcast preferences) on existing transceivers."""

    session_description: SessionDescription | None = None
    tracks: tuple[TrackObject, ...]

    def validate(self, path: str = "") -> None:
        if self.session_description is not None:
            self.session_description.check(join_path(path, "sessionDescription"))
        _check_count(self.tracks, join_path(path, "tracks"), 1)
        for index, track in enumerate(self.tracks):
            track.check(f"{join_path(path, 'tracks')}[{index}]", sdp_from_caller=None, reuse_transceiver=True)

    @classmethod
    def switch_remote(cls, mid: str, session_id: str, track_name: str) -> UpdateTracksRequest:
        """Play ``session_id``'s ``track_name`` on our transceiver ``mid`` (or ``#ourTrackName``) in place
        of what it plays now: relay failover moves the caller to the new relay's voice this way, with no
        offer from the caller."""
        request = cls(tracks=(TrackObject.remote(session_id, track_name, mid=mid),))
        request.validate()
        return request


# Responses ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ErrorResponse(JsonModel):
    """A request-level error body (``errorCode`` + ``errorDescription``), e.g. for an emulator to send."""

    error_code: str
    error_description: str | None = None


@dataclass(frozen=True, kw_only=True)
class NewSessionResponse(JsonModel):
    session_id: str
    session_description: SessionDescription | None = None

    def validate(self, path: str = "") -> None:
        check_text(self.session_id, join_path(path, "sessionId"))


_CLOSED_CODES: Final = (ErrorCode.CLOSE_TRACK_ERROR.value,)


@dataclass(frozen=True, kw_only=True)
class TracksResponse(JsonModel):
    """tracks/new result; check :attr:`failed` (or :meth:`raise_for_item_errors`): 200 can hold failures."""

    requires_immediate_renegotiation: bool | None = None
    tracks: tuple[TrackResult, ...] = ()
    session_description: SessionDescription | None = None

    @property
    def failed(self) -> tuple[TrackResult, ...]:
        return tuple(track for track in self.tracks if not track.ok)

    def raise_for_item_errors(self) -> None:
        raise_for_item_errors(self.tracks)


@dataclass(frozen=True, kw_only=True)
class RenegotiateResponse(JsonModel):
    session_description: SessionDescription | None = None


@dataclass(frozen=True, kw_only=True)
class CloseTracksResponse(JsonModel):
    """tracks/close result, per requested mid; a negotiated close carries the SFU's answer."""

    session_description: SessionDescription | None = None
    requires_immediate_renegotiation: bool | None = None
    tracks: tuple[CloseTrackResult, ...] = ()

    @property
    def failed(self) -> tuple[CloseTrackResult, ...]:
        """Failed items other than ``close_track_error`` (absent or already closed: nothing left to do)."""
        return tuple(track for track in self.tracks if not track.ok and track.error_code not in _CLOSED_CODES)

    def raise_for_item_errors(self) -> None:
        raise_for_item_errors(self.tracks, ignore=_CLOSED_CODES)


SWITCH_NEEDS_RENEGOTIATION: Final = "switch_needs_renegotiation"
"""Client-side code: a tracks/update the SFU accepted only with a renegotiation (a failover cannot use it)."""


@dataclass(frozen=True, kw_only=True)
class UpdateTracksResponse(JsonModel):
    requires_immediate_renegotiation: bool | None = None
    tracks: tuple[TrackResult, ...] = ()

    @property
    def failed(self) -> tuple[TrackResult, ...]:
        return tuple(track for track in self.tracks if not track.ok)

    def raise_for_item_errors(self) -> None:
        raise_for_item_errors(self.tracks)

    def check_switched(self, request: UpdateTracksRequest) -> None:
        """Raise :class:`SfuApiError` unless every switch of ``request`` took effect with no renegotiation.

        A failover counts on the caller doing nothing: an item error, a missing item, an item naming
        another track, or ``requiresImmediateRenegotiation: true`` (the caller would have to answer an
        offer the edge cannot deliver) all mean the caller still plays the old track, or nothing.
        """
        raise_for_item_errors(self.tracks)
        if self.requires_immediate_renegotiation:
            raise SfuApiError(
                200,
                SWITCH_NEEDS_RENEGOTIATION,
                "requiresImmediateRenegotiation: the switch needs an offer",
                False,
            )
        if len(self.tracks) != len(request.tracks):
            raise SfuApiError(
                200,
                ErrorCode.INVALID_RESPONSE,
                f"tracks: {len(self.tracks)} item(s) for {len(request.tracks)} requested",
                False,
            )
        for index, (asked, got) in enumerate(zip(request.tracks, self.tracks, strict=True)):
            for name, want, have in (
                ("sessionId", asked.session_id, got.session_id),
                ("trackName", asked.track_name, got.track_name),
            ):
                if have is not None and have != want:
                    raise SfuApiError(
                        200,
                        ErrorCode.INVALID_RESPONSE,
                        f"tracks[{index}].{name}: the response names another track than requested",
                        False,
                    )


@dataclass(frozen=True, kw_only=True)
class GetSessionStateResponse(JsonModel):
    tracks: tuple[TrackState, ...] = ()
    data_channels: tuple[DataChannelState, ...] = ()
