"""The emulated Realtime SFU: sessions, tracks and their negotiation, timers and limits (no HTTP here).

Each operation takes a request model from :mod:`splitrelay.contract.sfu` and returns a response
model, or
raises :class:`splitrelay.emulator.errors.ApiError`. Per-track problems become item errors inside a 200 batch,
as the spec describes; items are checked before anything changes, so a failed item leaves no trace.
A session's operations run one at a time under its lock; the per-packet path (forwarding.py) never
takes a lock.

Reconnection: a session whose connection failed or closed keeps its tracks for the reconnect window. A
client offer in that window (renegotiate, or tracks/new with an offer) is answered by a *fresh* peer
connection: aiortc cannot restart ICE in place, so the whole transport (ICE and DTLS) restarts, and the
session's publications and subscriptions are re-bound to it (docs/emulator.md, "Reconnection").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiortc import RTCRtpTransceiver

from splitrelay.contract.api_error import ErrorCode
from splitrelay.contract.safety import clean_text
from splitrelay.contract.sfu import (
    CloseTrackResult,
    CloseTracksRequest,
    CloseTracksResponse,
    GetSessionStateResponse,
    Location,
    NewSessionRequest,
    NewSessionResponse,
    RenegotiateRequest,
    RenegotiateResponse,
    ResourceStatus,
    SdpType,
    SessionDescription,
    TrackObject,
    TrackResult,
    TracksRequest,
    TracksResponse,
    TrackState,
    UpdateTracksRequest,
    UpdateTracksResponse,
)
from splitrelay.emulator import errors
from splitrelay.emulator.config import EmulatorConfig
from splitrelay.emulator.errors import ApiError
from splitrelay.emulator.forwarding import Forwarder, ForwardingStats, Inbound, Publication, Subscription
from splitrelay.emulator.peer import SENDING, SessionPeer, rejected_mids
from splitrelay.relay.media.peer import CandidatePolicy
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath

logger = logging.getLogger("splitrelay.sfu_emulator")

MAX_GONE_REMEMBERED = 100_000
MAX_WATCHDOG_TICKS = 1 << 40  # at 10 ms a tick, longer than any emulator runs
CLOSE_TRACK_ERROR_TEXT = "Track doesn't exist or was already closed"
OFFER_FIELD = "sessionDescription.sdp"


@dataclass
class TrackRecord:
    """A track as GET session lists it; closed ones stay, inactive."""

    location: Location
    track_name: str
    mid: str
    publisher_session: str | None = None
    status: ResourceStatus = ResourceStatus.ACTIVE

    @property
    def active(self) -> bool:
        return self.status is ResourceStatus.ACTIVE

    def state(self) -> TrackState:
        return TrackState(
            location=self.location,
            mid=self.mid,
            session_id=self.publisher_session,
            track_name=self.track_name,
            status=self.status,
        )


class ItemFailure(Exception):
    """One track of a batch cannot be done: becomes ``errorCode``/``errorDescription`` on that item."""

    def __init__(self, description: str, code: str = ErrorCode.INVALID_PARAMS) -> None:
        super().__init__(description)
        self.code = code
        self.description = clean_text(description)


def _failed(track: TrackObject, failure: ItemFailure) -> TrackResult:
    return TrackResult(
        location=track.location,
        mid=track.mid,
        session_id=track.session_id,
        track_name=track.track_name,
        error_code=failure.code,
        error_description=failure.description,
    )


class Session:
    """One SFU session: its peer connection, its tracks, and the publications and subscriptions."""

    def __init__(self, emulator: Emulator, session_id: str, app_id: str, *, thirdparty: bool) -> None:
        self.emulator = emulator
        self.id = session_id
        self.app_id = app_id
        self.thirdparty = thirdparty
        self.created = emulator.clock()
        self.records: list[TrackRecord] = []
        self.publications: dict[str, Publication] = {}
        """Active published tracks by trackName."""
        self.subscriptions: dict[str, Subscription] = {}
        """Active subscriptions by our transceiver's mid."""
        self.inbound = Inbound(emulator.forwarder, emulator.clock)
        self.peer: SessionPeer | None = None
        self.lock = asyncio.Lock()
        self.ever_connected = False
        self.disconnected_since: float | None = None
        self.ended = False
        self._tokens = emulator.config.limits.api_calls_per_second
        self._tokens_at = self.created

    # --- limits ----------------------------------------------------------------------------------

    def take_call(self) -> None:
        """Token bucket of ``api_calls_per_second`` per session (burst of one second's worth)."""
        rate = self.emulator.config.limits.api_calls_per_second
        now = self.emulator.clock()
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            raise errors.rate_limited(rate)
        self._tokens -= 1.0

    # --- peer ------------------------------------------------------------------------------------

    def ensure_peer(self) -> SessionPeer:
        if self.peer is None:
            self.peer = self.new_peer()
        return self.peer

    def new_peer(self) -> SessionPeer:
        """A peer connection for this session; its events count only while it is ``self.peer``.

        A replaced peer (after a reconnect) or a fresh one not yet adopted goes quiet, so neither can
        unbind the subscriptions or mark the session disconnected.
        """
        peer: SessionPeer | None = None

        def attached(fast_path: SrtpFastPath | None) -> None:
            if peer is not None and self.peer is peer:
                self._attached(fast_path)

        def state_changed(state: str) -> None:
            if peer is not None and self.peer is peer:
                self._state_changed(state)

        peer = SessionPeer(
            candidates=self.emulator.candidates,
            ufrag_label=self.id[:8],
            fast_path_config=self.emulator.fast_path_config,
            on_packet=self.inbound.on_packet,
            on_attached=attached,
            on_state=state_changed,
        )
        return peer

    @property
    def resumable(self) -> bool:
        """The connection failed or closed and the session is still within its reconnect window."""
        return self.peer is not None and self.disconnected_since is not None and not self.ended

    def carry_directions(self, fresh: SessionPeer) -> set[str]:
        """On a fresh peer, each m-section this session had keeps the direction the SFU gave it.

        Returns the mids carried over; the others are new to the session.
        """
        before = self.peer.transceivers() if self.peer is not None else {}
        carried: set[str] = set()
        for mid, transceiver in fresh.transceivers().items():
            previous = before.get(mid)
            if previous is not None:
                fresh.set_direction(transceiver, previous.direction)
                carried.add(mid)
        return carried

    async def adopt(self, fresh: SessionPeer) -> None:
        """Make a negotiated fresh peer this session's transport; close the failed one.

        Tracks on an m-section the new transport does not carry (one only in an SFU offer that was
        never answered) end. Subscriptions get their streams when the fresh peer's fast path attaches.
        """
        logger.info("session %s: reconnected on a new transport", self.id)
        old, self.peer = self.peer, fresh
        carried = fresh.transceivers()
        for mid in sorted({r.mid for r in self.records if r.active} | set(self.subscriptions)):
            if mid not in carried:
                self.close_mid(mid)
        self._attached(fresh.fast_path)
        if old is not None:
            await old.close()
        if fresh.state == "connected":
            self._state_changed("connected")

    def _state_changed(self, state: str) -> None:
        if state == "connected":
            self.ever_connected = True
            self.disconnected_since = None
        elif state in ("failed", "closed") and self.disconnected_since is None and not self.ended:
            self.disconnected_since = self.emulator.clock()

    def _attached(self, fast_path: SrtpFastPath | None) -> None:
        streams = {} if fast_path is None else {s.mid: s for s in fast_path.outbound_streams}
        for subscription in self.subscriptions.values():
            subscription.stream = streams.get(subscription.mid)

    async def media_changed(self, *, new_transport: bool = False) -> None:
        """After an SDP exchange: learn publishers' SSRCs, take the new streams onto the fast path.

        A publication whose SSRCs changed is a new RTP source on the same track (a reconnected
        client's new sender): its subscribers' numbering and clock continue where they were. After a
        new transport without ``a=ssrc`` the source cannot be told apart, so it is taken as new too.
        """
        if self.peer is None:
            return
        streams = {s.mid: s for s in self.peer.negotiated_streams()}
        for publication in self.publications.values():
            params = streams.get(publication.mid)
            ssrcs = params.remote_ssrcs if params is not None else ()
            known = bool(publication.ssrcs and ssrcs)
            if ssrcs != publication.ssrcs and (new_transport or known):
                for subscription in publication.subscriptions:
                    subscription.switch_to(publication)
            publication.ssrcs = ssrcs
        self.inbound.set_publications(list(self.publications.values()))
        await self.peer.refresh_fast_path()

    def bind(self, subscription: Subscription) -> None:
        """Point a new subscription at our outbound stream for its mid, if the fast path has one."""
        fast_path = self.peer.fast_path if self.peer is not None else None
        if fast_path is not None:
            subscription.stream = next(
                (s for s in fast_path.outbound_streams if s.mid == subscription.mid), None
            )

    async def wait_connected(self, what: str) -> None:
        """Operations on a negotiated session wait (bounded) for its connection, then give 425."""
        peer = self.peer
        if peer is None or peer.connected.is_set():
            return
        wait = self.emulator.config.timers.connect_wait
        try:
            async with asyncio.timeout(wait):
                await peer.connected.wait()
        except TimeoutError:
            raise errors.not_connected(what, wait) from None

    # --- records ---------------------------------------------------------------------------------

    def local_record(self, *, mid: str | None = None, name: str | None = None) -> TrackRecord | None:
        for record in self.records:
            if record.active and record.location is Location.LOCAL:
                if (mid is None or record.mid == mid) and (name is None or record.track_name == name):
                    return record
        return None

    def active_at(self, mid: str) -> list[TrackRecord]:
        return [r for r in self.records if r.active and r.mid == mid]

    def add_record(self, record: TrackRecord) -> None:
        limit = self.emulator.config.limits.max_tracks_per_session
        if len(self.records) >= limit:
            # Forget the oldest closed tracks first; active ones are bounded by the check in planning.
            closed = [r for r in self.records if not r.active]
            for old in closed[: len(self.records) - limit + 1]:
                self.records.remove(old)
        self.records.append(record)

    def publish(self, track_name: str, mid: str) -> Publication:
        publication = Publication(self.id, track_name, mid, self.emulator.clock())
        self.publications[track_name] = publication
        self.add_record(TrackRecord(Location.LOCAL, track_name, mid))
        return publication

    def subscribe(self, mid: str, publication: Publication) -> Subscription:
        """Play ``publication`` on our transceiver ``mid`` (replacing what it played before)."""
        current = self.subscriptions.get(mid)
        for record in self.active_at(mid):
            if record.location is Location.REMOTE:
                record.status = ResourceStatus.INACTIVE
        if current is not None:
            _unlink(current)
            current.switch_to(publication)
            subscription = current
        else:
            subscription = Subscription(self.id, mid, publication)
            self.subscriptions[mid] = subscription
        publication.subscriptions.append(subscription)
        self.add_record(TrackRecord(Location.REMOTE, publication.track_name, mid, publication.session_id))
        self.bind(subscription)
        return subscription

    def pulled(self, mid: str, publication: Publication) -> TrackResult:
        """Subscribe, and the batch item that reports it."""
        self.subscribe(mid, publication)
        return TrackResult(
            location=Location.REMOTE,
            mid=mid,
            session_id=publication.session_id,
            track_name=publication.track_name,
        )

    def drop_subscription(self, mid: str) -> None:
        subscription = self.subscriptions.pop(mid, None)
        if subscription is not None:
            _unlink(subscription)
            subscription.stream = None
        for record in self.active_at(mid):
            if record.location is Location.REMOTE:
                record.status = ResourceStatus.INACTIVE

    def end_publication(self, publication: Publication) -> None:
        """Stop a published track: its subscribers' tracks end too (no media, inactive)."""
        publication.active = False
        for subscription in list(publication.subscriptions):
            subscriber = self.emulator.sessions.get(subscription.session_id)
            if subscriber is not None and subscriber.subscriptions.get(subscription.mid) is subscription:
                subscriber.drop_subscription(subscription.mid)
        publication.subscriptions.clear()
        if self.publications.get(publication.track_name) is publication:
            del self.publications[publication.track_name]
        for record in self.active_at(publication.mid):
            if record.location is Location.LOCAL and record.track_name == publication.track_name:
                record.status = ResourceStatus.INACTIVE
        self.inbound.set_publications(list(self.publications.values()))

    def close_mid(self, mid: str) -> bool:
        """Close every active track on ``mid`` (both directions of a bidirectional transceiver)."""
        found = self.active_at(mid)
        for record in found:
            if record.location is Location.LOCAL:
                publication = self.publications.get(record.track_name)
                if publication is not None:
                    self.end_publication(publication)
                record.status = ResourceStatus.INACTIVE
        if mid in self.subscriptions or any(r.location is Location.REMOTE for r in found):
            self.drop_subscription(mid)
        return bool(found)

    def close_rejected(self, mids: Iterable[str]) -> None:
        """An offer stopped these m-sections: whatever they carried ends (a stopped one carries nothing)."""
        for mid in mids:
            if self.active_at(mid) or mid in self.subscriptions:
                self.close_mid(mid)

    def state(self) -> GetSessionStateResponse:
        return GetSessionStateResponse(tracks=tuple(record.state() for record in self.records))


def _unlink(subscription: Subscription) -> None:
    with contextlib.suppress(ValueError):
        subscription.publication.subscriptions.remove(subscription)


@dataclass(frozen=True)
class EmulatorState:
    """What is open right now: the emulator's own introspection, for tests and the stats endpoint."""

    sessions: int
    peer_connections: int
    fast_paths: int
    publications: int
    subscriptions: int
    gone_sessions: int
    watchdog_running: bool


@dataclass
class _Plan:
    """One planned item of a batch, applied only if the whole request gets that far."""

    index: int
    track: TrackObject
    mid: str | None = None
    publication: Publication | None = None
    transceiver: RTCRtpTransceiver | None = None
    track_name: str | None = None


class Emulator:
    """All sessions of one emulator process; see the module docstring."""

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.candidates: CandidatePolicy = config.candidates
        """The policy new peers gather under: the shared socket's once ``EmulatorServer`` opened it."""
        self.sessions: dict[str, Session] = {}
        self.gone: OrderedDict[str, None] = OrderedDict()
        self.forwarder = Forwarder()
        self.fast_path_config = FastPathConfig(
            rtcp_interval=config.rtcp_interval,
            max_inbound_sources=config.limits.max_published_per_session,
            bye_on_close=False,
        )
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(), name="sfu-emulator-watchdog"
            )

    async def close(self) -> None:
        """End every session (BYE, close peers) and stop the timers. Idempotent."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        for session in list(self.sessions.values()):
            await self.end_session(session)

    def introspect(self) -> EmulatorState:
        sessions = list(self.sessions.values())
        return EmulatorState(
            sessions=len(sessions),
            peer_connections=sum(1 for s in sessions if s.peer is not None),
            fast_paths=sum(1 for s in sessions if s.peer is not None and s.peer.fast_path is not None),
            publications=sum(len(s.publications) for s in sessions),
            subscriptions=sum(len(s.subscriptions) for s in sessions),
            gone_sessions=len(self.gone),
            watchdog_running=self._watchdog is not None and not self._watchdog.done(),
        )

    def forwarding_stats(self) -> ForwardingStats:
        return self.forwarder.stats()

    async def _watch(self) -> None:
        interval = self.config.timers.watchdog_interval
        for _ in range(MAX_WATCHDOG_TICKS):
            await asyncio.sleep(interval)
            await self.tick()

    async def tick(self) -> None:
        """Apply the timers once: idle tracks dropped, failed or never-connected sessions ended."""
        timers = self.config.timers
        now = self.clock()
        for session in list(self.sessions.values()):
            if session.disconnected_since is not None:
                if now - session.disconnected_since >= timers.reconnect_window:
                    logger.info(
                        "session %s: not reconnected within %g s, ending", session.id, timers.reconnect_window
                    )
                    await self.end_session(session)
                continue
            if not session.ever_connected and now - session.created >= timers.unconnected_session_ttl:
                await self.end_session(session)
                continue
            for publication in list(session.publications.values()):
                if now - publication.last_media >= timers.track_idle_timeout:
                    logger.info(
                        "session %s: track %r had no media for %g s, dropping",
                        session.id,
                        clean_text(publication.track_name, 64),
                        timers.track_idle_timeout,
                    )
                    session.end_publication(publication)

    async def end_session(self, session: Session) -> None:
        if session.ended:
            return
        async with session.lock:
            if session.ended:
                return
            session.ended = True
            self.sessions.pop(session.id, None)
            self.gone[session.id] = None
            while len(self.gone) > MAX_GONE_REMEMBERED:
                self.gone.popitem(last=False)
            for publication in list(session.publications.values()):
                session.end_publication(publication)
            for mid in list(session.subscriptions):
                session.drop_subscription(mid)
            for record in session.records:
                record.status = ResourceStatus.INACTIVE
            if session.peer is not None:
                await session.peer.close()

    async def check_window(self, session: Session) -> None:
        """A failed session past its reconnect window is gone (410), even before the watchdog ticks."""
        since = session.disconnected_since
        if since is not None and self.clock() - since >= self.config.timers.reconnect_window:
            await self.end_session(session)
            raise errors.session_gone(session.id)

    # --- lookup ----------------------------------------------------------------------------------

    def session(self, app_id: str, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.app_id != app_id:
            if session_id in self.gone and session is None:
                raise errors.session_gone(session_id)
            raise errors.session_not_found(session_id)
        session.take_call()
        return session

    def _publication(self, app_id: str, track: TrackObject) -> Publication:
        publisher = self.sessions.get(track.session_id or "")
        if publisher is None or publisher.app_id != app_id:
            state = "has ended" if track.session_id in self.gone else "does not exist"
            raise ItemFailure(f"sessionId: the publishing session {state}")
        publication = publisher.publications.get(track.track_name or "")
        if publication is None:
            raise ItemFailure("trackName: the session publishes no active track of this name")
        return publication

    async def _wait_publishers(self, publications: Iterable[Publication]) -> None:
        sessions = {p.session_id: self.sessions.get(p.session_id) for p in publications}
        waits = [s.wait_connected(f"publishing session {s.id}") for s in sessions.values() if s is not None]
        if waits:
            await asyncio.gather(*waits)

    # --- operations ------------------------------------------------------------------------------

    async def new_session(
        self, app_id: str, *, thirdparty: bool, request: NewSessionRequest
    ) -> NewSessionResponse:
        if self._closing:
            raise ApiError(503, ErrorCode.INTERNAL_ERROR, "the emulator is shutting down")
        if len(self.sessions) >= self.config.limits.max_sessions:
            raise ApiError(
                503, ErrorCode.INTERNAL_ERROR, f"at most {self.config.limits.max_sessions} sessions at once"
            )
        session = Session(self, secrets.token_hex(16), app_id, thirdparty=thirdparty)
        answer: SessionDescription | None = None
        if request.session_description is not None:
            peer = session.ensure_peer()
            async with session.lock:
                try:
                    peer.check_offer(request.session_description.sdp, OFFER_FIELD)
                    for transceiver in await peer.apply_offer(request.session_description.sdp):
                        peer.set_direction(transceiver, "inactive")  # no track named yet
                    answer = SessionDescription.answer(await peer.create_answer())
                except BaseException:
                    await peer.close()
                    raise
        self.sessions[session.id] = session
        return NewSessionResponse(session_id=session.id, session_description=answer)

    async def new_tracks(self, session: Session, request: TracksRequest) -> TracksResponse:
        await self.check_window(session)
        async with session.lock:
            if session.ended:
                raise errors.session_gone(session.id)
            if request.session_description is None:
                return await self._tracks_sfu_side(session, request)
            return await self._answer_offer(session, request)

    @staticmethod
    def _moves_bundle(session: Session, offer: SessionDescription | None) -> bool:
        """A connected session's offer that stops its BUNDLE-tag m-section: answered on a fresh peer.

        The offer is checked against the current peer first (stable, keeps what was negotiated).
        """
        peer = session.peer
        if offer is None or peer is None or session.resumable or not peer.negotiated_once:
            return False
        return peer.moves_bundle(peer.check_offer(offer.sdp, OFFER_FIELD))

    async def _answer_offer(self, session: Session, request: TracksRequest) -> TracksResponse:
        """The caller's offer (naming tracks or not); on a failed session, a reconnect on a fresh peer.

        A browser sends such an offer after ``restartIce()``. Every m-section the session negotiated
        must be offered again. On any error a fresh peer is closed and the session stays as it was.
        An offer that stops the BUNDLE-tag m-section is answered on a fresh peer too (see
        :meth:`SessionPeer.moves_bundle`).
        """
        resuming = session.resumable or self._moves_bundle(session, request.session_description)
        peer = session.new_peer() if resuming else session.ensure_peer()
        try:
            return await self._tracks_with_offer(session, request, peer, resuming=resuming)
        except BaseException:
            if resuming:
                await peer.close()  # never adopted: the session keeps its failed peer and its window
            raise

    def _check_capacity(self, session: Session, publish: int, total: int) -> None:
        limits = self.config.limits
        if len(session.publications) + publish > limits.max_published_per_session:
            raise ItemFailure(f"a session publishes at most {limits.max_published_per_session} tracks")
        active = sum(1 for r in session.records if r.active)
        if active + total > limits.max_tracks_per_session:
            raise ItemFailure(f"a session holds at most {limits.max_tracks_per_session} active tracks")

    async def _tracks_with_offer(
        self,
        session: Session,
        request: TracksRequest,
        peer: SessionPeer,
        *,
        resuming: bool,
    ) -> TracksResponse:
        """The caller's offer names tracks; when ``resuming``, ``peer`` is a fresh one (reconnect)."""
        offer = request.session_description
        assert offer is not None  # the caller checked
        description = peer.check_offer(offer.sdp, OFFER_FIELD)
        if resuming and session.peer is not None:
            session.peer.check_resumes(description, OFFER_FIELD)
        rejected = rejected_mids(description)
        offered = {
            m.rtp.muxId: m for m in description.media if m.kind == "audio" and m.rtp.muxId not in rejected
        }
        results: list[TrackResult | None] = [None] * len(request.tracks)
        local: list[_Plan] = []
        remote: list[_Plan] = []
        names: set[str] = set()
        claimed: set[str] = set()
        for index, track in enumerate(request.tracks):
            try:
                if track.location is Location.LOCAL:
                    mid = track.mid or ""
                    media = offered.get(mid)
                    if media is None:
                        raise ItemFailure(f"mid {mid!r} is not an audio m-section of the offer")
                    if media.direction not in SENDING:
                        raise ItemFailure(f"mid {mid!r}: the offer does not send on it ({media.direction})")
                    name = track.track_name or ""
                    if name in session.publications or name in names:
                        raise ItemFailure("trackName: this session already publishes a track of that name")
                    if session.local_record(mid=mid) is not None or mid in claimed:
                        raise ItemFailure(f"mid {mid!r} already carries a published track")
                    self._check_capacity(session, len(local) + 1, len(local) + len(remote) + 1)
                    names.add(name)
                    claimed.add(mid)
                    local.append(_Plan(index, track, mid=mid, track_name=name))
                else:
                    publication = self._publication(session.app_id, track)
                    mid = self._pull_mid(session, track, offered)
                    self._check_capacity(session, len(local), len(local) + len(remote) + 1)
                    remote.append(_Plan(index, track, mid=mid, publication=publication))
            except ItemFailure as failure:
                results[index] = _failed(track, failure)
        if request.auto_discover:
            for mid, media in offered.items():
                if (
                    media.direction in SENDING
                    and mid not in claimed
                    and session.local_record(mid=mid) is None
                ):
                    name = f"auto-{secrets.token_hex(8)}"
                    track = TrackObject.local(name, mid=mid)
                    try:
                        self._check_capacity(session, len(local) + 1, len(local) + len(remote) + 1)
                    except ItemFailure as failure:
                        results.append(_failed(track, failure))
                        continue
                    claimed.add(mid)
                    results.append(None)
                    local.append(_Plan(len(results) - 1, track, mid=mid, track_name=name))
        if remote:
            await self._wait_publishers(p.publication for p in remote if p.publication is not None)

        created = await peer.apply_offer(offer.sdp)
        if not resuming:
            session.close_rejected(peer.rejected)
        carried = session.carry_directions(peer) if resuming else set()
        transceivers = peer.transceivers()
        planned = {p.mid for p in local} | {p.mid for p in remote}
        for transceiver in created:
            if transceiver.mid not in planned and transceiver.mid not in carried:
                peer.set_direction(transceiver, "inactive")
        for plan in local:
            transceiver = transceivers[plan.mid or ""]
            both = (
                bool(plan.track.bidirectional_media_stream)
                and offered[plan.mid or ""].direction == "sendrecv"
            )
            peer.set_direction(transceiver, "sendrecv" if both else "recvonly")
        for plan in remote:
            transceiver = transceivers[plan.mid or ""]
            if transceiver.direction not in SENDING:
                receiving = session.local_record(mid=plan.mid) is not None or any(
                    p.mid == plan.mid for p in local
                )
                peer.set_direction(transceiver, "sendrecv" if receiving else "sendonly")
        answer = SessionDescription.answer(await peer.create_answer())
        if resuming:
            await session.adopt(peer)

        for plan in local:
            session.publish(plan.track_name or "", plan.mid or "")
            results[plan.index] = TrackResult(
                location=Location.LOCAL, mid=plan.mid, track_name=plan.track_name
            )
        for plan in remote:
            assert plan.publication is not None
            results[plan.index] = session.pulled(plan.mid or "", plan.publication)
        await session.media_changed(new_transport=resuming)
        return TracksResponse(
            tracks=tuple(r for r in results if r is not None),
            session_description=answer,
            requires_immediate_renegotiation=False,
        )

    @staticmethod
    def _pull_mid(session: Session, track: TrackObject, offered: Mapping[str, object]) -> str:
        """Where a pull with the caller's offer plays: the offer's m-section, or ``#trackName``'s."""
        if track.mid is None:
            raise ItemFailure("mid: pulling a track together with an offer needs the m-section's mid")
        if track.mid.startswith("#"):
            record = session.local_record(name=track.mid[1:])
            if record is None:
                raise ItemFailure(f"mid: no transceiver of this session carries trackName {track.mid[1:]!r}")
            return record.mid
        if track.mid not in offered:
            raise ItemFailure(f"mid {track.mid!r} is not an audio m-section of the offer")
        return track.mid

    async def _tracks_sfu_side(self, session: Session, request: TracksRequest) -> TracksResponse:
        """No offer from the caller: the SFU offers new transceivers, or reuses negotiated ones."""
        peer = session.ensure_peer()
        if peer.signaling != "stable":
            raise errors.invalid_params(
                "the SFU's previous offer is not answered yet (PUT renegotiate first)"
            )
        if peer.negotiated_once:
            await session.wait_connected(f"session {session.id}")
        transceivers = peer.transceivers()
        results: list[TrackResult | None] = [None] * len(request.tracks)
        local: list[_Plan] = []
        remote: list[_Plan] = []
        names: set[str] = set()
        for index, track in enumerate(request.tracks):
            try:
                if track.location is Location.LOCAL:
                    if (track.kind or "audio") != "audio":
                        raise ItemFailure(f"kind {track.kind!r}: the emulator carries audio only")
                    name = track.track_name or ""
                    if name in session.publications or name in names:
                        raise ItemFailure("trackName: this session already publishes a track of that name")
                    self._check_capacity(session, len(local) + 1, len(local) + len(remote) + 1)
                    names.add(name)
                    local.append(_Plan(index, track, track_name=name))
                else:
                    publication = self._publication(session.app_id, track)
                    plan = _Plan(index, track, publication=publication)
                    if track.mid is not None:
                        plan.mid = self._existing_mid(session, track.mid, transceivers)
                        plan.transceiver = transceivers[plan.mid]
                    self._check_capacity(session, len(local), len(local) + len(remote) + 1)
                    remote.append(plan)
            except ItemFailure as failure:
                results[index] = _failed(track, failure)
        if remote:
            await self._wait_publishers(p.publication for p in remote if p.publication is not None)

        needs_offer = False
        for plan in local:
            direction = "sendrecv" if plan.track.bidirectional_media_stream else "recvonly"
            plan.transceiver = peer.add_transceiver(direction)
            needs_offer = True
        for plan in remote:
            if plan.transceiver is None:
                plan.transceiver = peer.add_transceiver("sendonly")
                needs_offer = True
            elif plan.transceiver.direction not in SENDING:
                peer.set_direction(plan.transceiver, "sendrecv")
                needs_offer = True
            elif plan.transceiver.currentDirection not in SENDING:
                needs_offer = True  # agreed on but not yet negotiated to send
        offer = SessionDescription.offer(await peer.create_offer()) if needs_offer else None

        for plan in local:
            assert plan.transceiver is not None and plan.transceiver.mid is not None
            session.publish(plan.track_name or "", plan.transceiver.mid)
            results[plan.index] = TrackResult(
                location=Location.LOCAL, mid=plan.transceiver.mid, track_name=plan.track_name
            )
        for plan in remote:
            assert plan.transceiver is not None and plan.transceiver.mid is not None
            assert plan.publication is not None
            results[plan.index] = session.pulled(plan.transceiver.mid, plan.publication)
        if offer is None:
            session.inbound.set_publications(list(session.publications.values()))
        return TracksResponse(
            tracks=tuple(r for r in results if r is not None),
            session_description=offer,
            requires_immediate_renegotiation=offer is not None,
        )

    @staticmethod
    def _existing_mid(session: Session, mid: str, transceivers: dict[str, RTCRtpTransceiver]) -> str:
        if mid.startswith("#"):
            record = session.local_record(name=mid[1:])
            if record is None:
                raise ItemFailure(f"mid: no transceiver of this session carries trackName {mid[1:]!r}")
            return record.mid
        if mid not in transceivers:
            raise ItemFailure(f"mid {mid!r}: no such transceiver on this session")
        return mid

    async def renegotiate(self, session: Session, request: RenegotiateRequest) -> RenegotiateResponse:
        description = request.session_description
        await self.check_window(session)
        async with session.lock:
            if session.ended:
                raise errors.session_gone(session.id)
            peer = session.peer
            if peer is None:
                raise errors.invalid_params("sessionDescription: this session has nothing to renegotiate")
            if description.type is SdpType.ANSWER:
                peer.check_answer(description.sdp, OFFER_FIELD)
                await peer.apply_answer(description.sdp)
                await session.media_changed()
                return RenegotiateResponse()
            if session.resumable or self._moves_bundle(session, description):
                resumed = await self._answer_offer(session, TracksRequest(session_description=description))
                return RenegotiateResponse(session_description=resumed.session_description)
            peer.check_offer(description.sdp, OFFER_FIELD)
            for transceiver in await peer.apply_offer(description.sdp):
                peer.set_direction(transceiver, "inactive")
            session.close_rejected(peer.rejected)
            answer = SessionDescription.answer(await peer.create_answer())
            await session.media_changed()
            return RenegotiateResponse(session_description=answer)

    async def close_tracks(self, session: Session, request: CloseTracksRequest) -> CloseTracksResponse:
        async with session.lock:
            if session.ended:
                raise errors.session_gone(session.id)
            peer = session.peer
            mids = [track.mid for track in request.tracks]
            present = [mid for mid in dict.fromkeys(mids) if session.active_at(mid)]
            answer: SessionDescription | None = None
            new_transport = False
            if not request.force:
                assert request.session_description is not None  # the model requires it without force
                if peer is None:
                    raise errors.invalid_params(
                        "sessionDescription: this session has no connection to renegotiate"
                    )
                if session.resumable:
                    raise errors.invalid_params(
                        "sessionDescription: this session's connection has ended; reconnect with an "
                        "offer through renegotiate or tracks/new first"
                    )
                sdp = request.session_description.sdp
                moves = peer.moves_bundle(peer.check_offer(sdp, OFFER_FIELD))
                answering = session.new_peer() if moves else peer
                try:
                    if moves:
                        answering.check_offer(sdp, OFFER_FIELD)
                    created = await answering.apply_offer(sdp)
                    carried = session.carry_directions(answering) if moves else set()
                    for transceiver in created:
                        if transceiver.mid not in carried:
                            answering.set_direction(transceiver, "inactive")
                    transceivers = answering.transceivers()
                    for mid in present:
                        if mid in transceivers:
                            answering.set_direction(transceivers[mid], "inactive")
                    answer = SessionDescription.answer(await answering.create_answer())
                except BaseException:
                    if moves:
                        await answering.close()  # never adopted: the session keeps its peer
                    raise
                if moves:
                    await session.adopt(answering)
                new_transport = moves
            for mid in present:
                session.close_mid(mid)
            closed = set(present)
            if session.peer is not None and answer is not None:
                session.close_rejected(session.peer.rejected)  # stopped in the offer without being named
            results = tuple(
                CloseTrackResult(mid=mid)
                if mid in closed
                else CloseTrackResult(
                    mid=mid, error_code=ErrorCode.CLOSE_TRACK_ERROR, error_description=CLOSE_TRACK_ERROR_TEXT
                )
                for mid in mids
            )
            if answer is not None:
                await session.media_changed(new_transport=new_transport)
            return CloseTracksResponse(
                tracks=results, session_description=answer, requires_immediate_renegotiation=False
            )

    async def update_tracks(self, session: Session, request: UpdateTracksRequest) -> UpdateTracksResponse:
        async with session.lock:
            if session.ended:
                raise errors.session_gone(session.id)
            if request.session_description is not None:
                raise ApiError(
                    400,
                    errors.EmulatorCode.NOT_EMULATED,
                    "sessionDescription: tracks/update with SDP is not emulated (update without it)",
                )
            peer = session.peer
            transceivers = peer.transceivers() if peer is not None else {}
            results: list[TrackResult | None] = [None] * len(request.tracks)
            plans: list[_Plan] = []
            for index, track in enumerate(request.tracks):
                try:
                    if track.location is not Location.REMOTE:
                        raise ItemFailure("location: only remote tracks can be updated in the emulator")
                    if track.simulcast is not None:
                        raise ItemFailure("simulcast: not emulated (audio only)")
                    publication = self._publication(session.app_id, track)
                    mid = self._existing_mid(session, track.mid or "", transceivers)
                    if transceivers[mid].currentDirection not in SENDING:
                        raise ItemFailure(f"mid {mid!r} does not send: pull with tracks/new instead")
                    plans.append(_Plan(index, track, mid=mid, publication=publication))
                except ItemFailure as failure:
                    results[index] = _failed(track, failure)
            if plans:
                await session.wait_connected(f"session {session.id}")
                await self._wait_publishers(p.publication for p in plans if p.publication is not None)
            for plan in plans:
                assert plan.publication is not None
                results[plan.index] = session.pulled(plan.mid or "", plan.publication)
            return UpdateTracksResponse(
                tracks=tuple(r for r in results if r is not None), requires_immediate_renegotiation=False
            )

    def get_session(self, session: Session) -> GetSessionStateResponse:
        return session.state()
