"""Call setup and teardown at the edge: the caller's SFU session, the relay attach, the pull that wires them.

One caller round trip: sessions/new, tracks/new pushing the caller's mic with its offer (bidirectional,
so the same transceiver can later play the relay), and the SFU's answer goes straight back. The relay
attach (a signed POST to the chosen relay, falling back down the ranked list) and the pull of the
relay's voice into the caller's transceiver (``mid: "#mic"``, no renegotiation) run after the answer,
in the Worker's ``waitUntil``: the relay's own pull of the caller's mic waits for the caller to connect,
and the caller connects only once it has the answer. The call record (edge/call_record.py) follows
each step, so an abandoned or half-built call is closed by its alarm.

All I/O goes through an injected ``fetch`` (JS ``fetch`` in the Worker, httpx locally, recorded
responses in tests and the benchmark) and an injected record client (the Durable Object's RPC, or
in-process objects), so this module runs unchanged on CPython and Pyodide.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlsplit

from splitrelay.contract.api_error import ErrorCode, SfuApiError
from splitrelay.contract.control import (
    CALLS_PATH,
    MAX_CONTINUATIONS,
    AttachMode,
    AttachRequest,
    AttachResult,
    Continuation,
    ContinuationReason,
    SfuAttach,
    call_path,
)
from splitrelay.contract.retry import RetryPolicy, call_with_retries
from splitrelay.contract.safety import clean_text
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    RenegotiateRequest,
    ResourceStatus,
    SdpType,
    SessionDescription,
    TrackObject,
    TracksRequest,
    mid_for_track,
)
from splitrelay.contract.sfu_http import (
    HttpRequest,
    build_close_tracks,
    build_get_session,
    build_new_session,
    build_new_tracks,
    build_renegotiate,
    build_switch_track,
    parse_close_tracks,
    parse_get_session,
    parse_new_session,
    parse_new_tracks,
    parse_renegotiate,
)
from splitrelay.contract.signing import sign_headers
from splitrelay.contract.turn import build_generate_ice_servers, parse_generate_ice_servers
from splitrelay.edge.call_record import CallObject, CallRecord, CallState
from splitrelay.edge.config import EdgeConfig
from splitrelay.edge.ice import IceServers, TurnCache
from splitrelay.edge.offer import check_offer
from splitrelay.edge.relay_watch import RelayWatch
from splitrelay.edge.relays import CallerLocation, Choice, NoRelayError, RegistryError
from splitrelay.edge.web import EdgeError

T = TypeVar("T")
log = logging.getLogger("splitrelay.edge.calls")

CALLER_TRACK: Final = "mic"
MAX_RELAY_ATTEMPTS: Final = 3
HAND_OVER_CONCURRENCY: Final = 4
MAX_RESPONSE_BYTES: Final = 1 << 20
# The caller is waiting: few, short retries (429 and 5xx only; RetryPolicy decides).
EDGE_RETRY: Final = RetryPolicy(
    max_attempts=3, base_delay=0.1, max_delay=1.0, max_retry_after=2.0, max_elapsed=5.0
)


@dataclass(frozen=True, repr=False)
class Outbound:
    """One outgoing HTTP request for the injected ``fetch``; repr leaves headers out (bearer, signature).

    ``timeout_s`` bounds the whole exchange; the fetch adapter enforces it with the platform's own
    timer (``AbortSignal.timeout`` in the Worker, httpx's timeout locally), which costs less CPU in
    Pyodide than an asyncio timer per request.
    """

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None = None
    timeout_s: float = 10.0

    def __repr__(self) -> str:
        return f"Outbound({self.method} {urlsplit(self.url).path})"


@dataclass(frozen=True)
class Inbound:
    status: int
    headers: Mapping[str, str]
    body: bytes


class FetchError(Exception):
    """No HTTP response (DNS, connection, TLS): raised by the fetch adapters."""


Fetch = Callable[[Outbound], Awaitable[Inbound]]
Defer = Callable[[Coroutine[Any, Any, None]], None]


class RecordClient(Protocol):
    """Sends one command to a call's record (edge/call_record.py ``CallObject.dispatch``)."""

    async def send(self, call_id: str, command: dict[str, Any]) -> dict[str, Any]: ...


class WatchClient(Protocol):
    """Sends one command to a relay's liveness object (edge/relay_watch.py ``RelayWatch.dispatch``)."""

    async def send(self, relay_id: str, command: dict[str, Any]) -> dict[str, Any]: ...


RELAY_STATUS_TTL_S: Final = 30.0
Ranker = Callable[[CallerLocation], Awaitable[list[Choice]]]
"""The relays a call may go to, best first (EdgeApp ranks the registry: edge/relays.py)."""
"""How long this isolate trusts what it last heard of a relay (draining, lost) when it ranks relays."""


@dataclass(frozen=True)
class CallCreated:
    record: CallRecord
    answer: SessionDescription
    ice_servers: IceServers

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.record.call_id,
            "state": self.record.state,
            "answer": self.answer.to_json(),
            "ice_servers": self.ice_servers.servers,
            "relay": {"id": self.record.relay.get("id"), "region": self.record.relay.get("region")},
        }


def new_call_id() -> str:
    return "call-" + secrets.token_hex(12)


class CallService:
    """Everything a call needs from the outside world, behind one object per isolate or process."""

    def __init__(
        self,
        config: EdgeConfig,
        fetch: Fetch,
        records: RecordClient,
        *,
        defer: Defer,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy = EDGE_RETRY,
        watches: WatchClient | None = None,
    ) -> None:
        self.config = config
        self._fetch = fetch
        self.records = records
        self.watches = watches
        # What this isolate last heard of each relay: id → (status, when). Exact in the local edge (one
        # process); a hint in the Worker, where the claim at attach (one RPC to the relay's object) decides.
        self.relay_status: dict[str, tuple[str, float]] = {}
        self._defer = defer
        self.clock = clock
        self._retry = retry
        self._rng = random.Random()
        self._turn = TurnCache(config.turn_ttl_s)
        self._stun = IceServers([{"urls": list(config.stun_urls)}])
        self.ranker: Ranker | None = None  # set by EdgeApp; without it a lost relay's calls are closed

    # --- I/O helpers ------------------------------------------------------------------------------

    def _outbound(
        self, method: str, url: str, headers: tuple[tuple[str, str], ...], body: bytes | None
    ) -> Outbound:
        return Outbound(method, url, headers, body, self.config.request_timeout_s)

    async def _send(self, request: Outbound) -> Inbound:
        response = await self._fetch(request)
        if len(response.body) > MAX_RESPONSE_BYTES:
            raise FetchError(f"response body exceeds {MAX_RESPONSE_BYTES} bytes")
        return response

    async def _api(self, request: HttpRequest, parse: Callable[[int, bytes], T]) -> T:
        """A Realtime API call (SFU or TURN) with bounded retries on 429/5xx/no response."""
        outbound = self._outbound(
            request.method, request.url(self.config.sfu_api_url), request.headers, request.body_bytes
        )

        async def once() -> tuple[int, str | None, bytes]:
            try:
                response = await self._send(outbound)
            except FetchError as exc:
                raise SfuApiError(0, ErrorCode.CONNECTION_ERROR, str(exc), True) from None
            return response.status, response.headers.get("retry-after"), response.body

        return await call_with_retries(
            once, parse, self._retry, clock=self.clock, sleep=asyncio.sleep, rng=self._rng
        )

    async def _record(self, call_id: str, command: dict[str, Any]) -> dict[str, Any]:
        reply = await self.records.send(call_id, {**command, "call_id": call_id})
        error = reply.get("error")
        if isinstance(error, dict):
            status = int(error.get("status", 500))
            raise EdgeError(status, str(error.get("code", "record_error")), str(error.get("message", "")))
        return reply

    async def get_record(self, call_id: str) -> CallRecord:
        reply = await self._record(call_id, {"op": "get"})
        return CallRecord.from_json(reply["record"])

    async def _update(self, call_id: str, op: str, values: dict[str, Any]) -> None:
        await self._record(call_id, {"op": op, "set": values, "quiet": True})

    # --- ICE servers -------------------------------------------------------------------------------

    def cached_ice_servers(self) -> IceServers | None:
        """What a caller gets without a subrequest: STUN only, or shared TURN credentials (edge/ice.py)."""
        if self.config.turn is None:
            return self._stun
        return self._turn.get(self.clock())

    async def ice_servers(self) -> IceServers:
        """TURN credentials (port 53 dropped) with at least ``TURN_TTL_S`` left; STUN without a TURN key."""
        cached = self.cached_ice_servers()
        if cached is not None:
            return cached
        assert self.config.turn is not None
        requested_at = self.clock()
        request = build_generate_ice_servers(self.config.turn, self._turn.mint_ttl_s)
        try:
            servers = await self._api(request, parse_generate_ice_servers)
        except SfuApiError as exc:
            raise sfu_error("turn", exc) from None
        return self._turn.put(list(servers.without_port_53().to_json()["iceServers"]), requested_at)

    async def _ice_servers_or_stun(self) -> IceServers:
        """For the call answer: a TURN outage must not fail a call that already has its candidates."""
        try:
            return await self.ice_servers()
        except EdgeError as exc:
            log.warning("TURN credentials unavailable, answering with STUN only: %s", exc.message)
            return self._stun

    # --- setup -------------------------------------------------------------------------------------

    async def create_call(
        self, offer_sdp: str, owner: str, where: CallerLocation, choices: list[Choice]
    ) -> CallCreated:
        """Push the caller's mic with its offer, return the SFU's answer; the relay follows in background."""
        facts = check_offer(offer_sdp)
        call_id = new_call_id()
        now = self.clock()

        def new_record(session: str | None, answered_at: float | None) -> CallRecord:
            return CallRecord(
                call_id=call_id,
                owner=owner,
                state=CallState.CREATED,
                created_at=now,
                setup_deadline=now + self.config.call_setup_timeout_s,
                max_end=now + self.config.max_call_s,
                check_interval_s=self.config.call_check_interval_s,
                relay=choices[0].relay.summary(),
                relay_reason=choices[0].reason,
                caller=where.to_json(),
                caller_session_id=session,
                caller_mid=facts.mid,
                answered_at=answered_at,
            )

        # Shared TURN credentials need no subrequest; otherwise they are minted alongside the push.
        ice = self.cached_ice_servers()
        ice_task = None if ice is not None else asyncio.ensure_future(self._ice_servers_or_stun())
        session_id: str | None = None
        try:
            session = await self._api(
                build_new_session(self.config.sfu, correlation_id=call_id), parse_new_session
            )
            session_id = session.session_id
            push = TracksRequest(
                session_description=SessionDescription.offer(offer_sdp),
                tracks=(
                    TrackObject.local(
                        CALLER_TRACK, mid=facts.mid, kind="audio", bidirectional_media_stream=True
                    ),
                ),
            )
            pushed = await self._api(build_new_tracks(self.config.sfu, session_id, push), parse_new_tracks)
            pushed.raise_for_item_errors()
            if pushed.session_description is None:
                raise SfuApiError(200, ErrorCode.INVALID_RESPONSE, "tracks/new returned no answer", False)
            # The record is created once there is something to clean up and before the caller hears of
            # the call: from here on, the Durable Object's alarm owns the call's end.
            record = new_record(session_id, self.clock())
            await self._record(call_id, {"op": "create", "record": record.to_json(), "quiet": True})
        except BaseException as exc:
            if ice_task is not None:
                ice_task.cancel()
            if session_id is not None:  # an SFU session exists but no record will close it: do it now
                await self.teardown(replace(new_record(session_id, None), relay={}))
            if isinstance(exc, SfuApiError):
                raise sfu_error("push", exc) from None
            raise
        self._defer(self.attach_relay(record, choices))
        if ice is None:
            assert ice_task is not None
            ice = await ice_task
        return CallCreated(record, pushed.session_description, ice)

    # --- liveness (relay → edge) -------------------------------------------------------------------

    def note_relay(self, relay_id: str, status: str) -> None:
        """Remember a relay's status (``alive``, ``draining``, ``lost``) for ranking on this isolate."""
        if len(self.relay_status) > 4096:
            self.relay_status.clear()
        self.relay_status[relay_id] = (status, self.clock())

    def usable(self, choices: list[Choice]) -> list[Choice]:
        """The choices without relays this isolate knows to be lost or draining (recently heard)."""
        now = self.clock()

        def ok(choice: Choice) -> bool:
            status, at = self.relay_status.get(choice.relay.id, ("unknown", 0.0))
            return status not in ("lost", "draining") or now - at > RELAY_STATUS_TTL_S

        return [choice for choice in choices if ok(choice)]

    async def _claim(self, relay_id: str, call_id: str) -> str | None:
        """None if the call may go to this relay, else why not (draining, lost)."""
        if self.watches is None:
            return None
        reply = await self.watches.send(relay_id, {"op": "claim", "relay_id": relay_id, "call_id": call_id})
        if reply.get("ok"):
            return None
        why = str(reply.get("why") or "refused")
        self.note_relay(relay_id, why)
        return why

    async def heartbeat(self, relay_id: str, beat: dict[str, Any]) -> dict[str, Any]:
        """A relay's signed beat → its watch; calls the beat no longer lists are closed (in background)."""
        if self.watches is None:
            raise EdgeError(503, "liveness_disabled", "this edge has no relay liveness objects configured")
        reply = await self.watches.send(relay_id, {"op": "heartbeat", "relay_id": relay_id, "beat": beat})
        error = reply.get("error")
        if isinstance(error, dict):
            raise EdgeError(int(error.get("status", 400)), str(error.get("code")), str(error.get("message")))
        self.note_relay(relay_id, "draining" if reply.get("draining_seen") else "alive")
        dropped = [str(call_id) for call_id in reply.get("closed") or ()]
        if dropped:
            self._defer(self._close_dropped(relay_id, dropped))
        orphans = [str(call_id) for call_id in reply.pop("came_back", None) or ()]
        if orphans:  # the relay was declared lost and beats again
            self._defer(self._release_orphans(relay_id, orphans))
        handed = [str(call_id) for call_id in reply.pop("hand_over", None) or ()]
        if handed:  # the relay just started to drain: its live calls move make-before-break
            self._defer(self._hand_over(relay_id, handed))
        return reply

    async def _hand_over(self, relay_id: str, call_ids: list[str]) -> None:
        """Move a draining relay's calls, ``HAND_OVER_CONCURRENCY`` at a time: nothing is urgent (the old
        relay still plays), and a burst of attaches (each a DTLS handshake) on the new relay would stall
        the audio of the calls already switched to it."""
        gate = asyncio.Semaphore(HAND_OVER_CONCURRENCY)

        async def one(call_id: str) -> None:
            async with gate:
                try:
                    await self.move_call(relay_id, call_id, ContinuationReason.DRAIN)
                except Exception as exc:  # background work: log, never raise into waitUntil
                    log.warning("call %s: hand-over from %s failed: %r", call_id, relay_id, exc)

        await asyncio.gather(*(one(call_id) for call_id in call_ids))

    async def _close_dropped(self, relay_id: str, call_ids: list[str]) -> None:
        for call_id in call_ids:
            await self._close_quietly(
                call_id, "relay_ended: the relay no longer holds the call", relay_id, tell_relay=False
            )

    async def _release_orphans(self, relay_id: str, call_ids: list[str]) -> None:
        """Tell a relay that came back to let go of the calls closed while it was lost (a signed DELETE):
        else each would live on there, with its SFU session, until the relay stopped."""
        for call_id in call_ids:
            try:
                record = await self.get_record(call_id)
            except EdgeError:  # deleted after its retention: the relay's DELETE is all that is left
                continue
            if not record.open and record.relay.get("id") == relay_id:
                outcome = await self.relay_close(record.relay, call_id)
                log.info("call %s: closed while %s was lost; its DELETE: %s", call_id, relay_id, outcome)

    async def relay_lost(self, relay_id: str, call_id: str, silent_s: float) -> None:
        """The relay's alarm found it silent: the call moves to another relay, or closes if none takes it
        (reason ``relay_lost``, which the caller reads from GET /v1/calls/{id}). Either way the dead
        relay's SFU session is closed here, since it cannot close it itself."""
        why = f"relay_lost: relay {relay_id} sent no heartbeat for {silent_s:.1f} s"
        try:
            before = await self.get_record(call_id)
        except EdgeError:
            return
        dead_session = before.relay_session_id if before.relay.get("id") == relay_id else None
        try:
            outcome = await self.move_call(relay_id, call_id, ContinuationReason.RELAY_LOST)
        except Exception as exc:  # background work (the relay object's alarm): close, never raise
            log.warning("call %s: failover from %s failed: %r", call_id, relay_id, exc)
            outcome = "failed"
        if outcome != "moved":
            await self._close_quietly(call_id, why, relay_id, tell_relay=False)
        if dead_session is not None:
            await self.close_session_tracks(dead_session)

    # --- failover and hand-over (docs/architecture.md, "Failover") ---------------------------------

    async def move_call(self, from_relay: str, call_id: str, reason: ContinuationReason) -> str:
        """Move a connected call to another relay without the caller renegotiating → what happened.

        Make-before-break: the new relay attaches (it pulls the caller's mic and publishes its voice on
        the SFU), then ``tracks/update`` points the caller's transceiver at the new voice, then the
        record moves (only if the call is still on ``from_relay``), then the old relay is let go.
        ``moved``; ``skipped`` (closed, not connected, or no longer on that relay); ``no_relay``
        (none took it: the caller stays on the old relay if it lives, the caller decides otherwise)."""
        try:
            record = await self.get_record(call_id)
        except EdgeError:
            return "skipped"
        if (
            record.state is not CallState.CONNECTED
            or record.relay.get("id") != from_relay
            or record.caller_session_id is None
            or record.caller_mid is None
        ):
            return "skipped"
        if record.moves >= MAX_CONTINUATIONS:
            await self._note_attempt(call_id, f"not moved again: moved {record.moves} times already")
            return "no_relay"
        continues = Continuation(previous_relay=from_relay, reason=reason, attempt=record.moves + 1)
        alternatives = (await self._alternatives(record, from_relay))[:MAX_RELAY_ATTEMPTS]
        for choice in alternatives:
            refused = await self._claim(choice.relay.id, call_id)
            if refused is not None:
                await self._note_attempt(call_id, f"move to {choice.relay.id}: {refused}")
                continue
            try:
                session, track = await self.relay_attach(choice, record, continues=continues)
            except RelayError as exc:
                await self._note_attempt(call_id, f"move to {choice.relay.id}: {exc}")
                if exc.maybe_attached:
                    await self.relay_close(choice.relay.summary(), call_id)
                continue
            try:
                await self._switch(record, session, track)
                moved = await self._record(
                    call_id,
                    {
                        "op": "move",
                        "if_relay": from_relay,
                        "why": reason.value,
                        "set": {
                            "relay": choice.relay.summary(),
                            "relay_reason": f"{reason.value}: {choice.reason}"[:300],
                            "relay_session_id": session,
                            "relay_track": track,
                        },
                    },
                )
            except BaseException:
                await self.relay_close(choice.relay.summary(), call_id)
                raise
            if moved.get("skipped"):  # closed or moved meanwhile: the new relay is not needed
                await self.relay_close(choice.relay.summary(), call_id)
                return "skipped"
            if reason is ContinuationReason.DRAIN:  # break after make: the old relay lets the call go
                await self.relay_close(record.relay, call_id)
            log.info("call %s moved from %s to %s (%s)", call_id, from_relay, choice.relay.id, reason.value)
            return "moved"
        if not alternatives:
            await self._note_attempt(call_id, f"move from {from_relay}: no other usable relay")
        log.warning("call %s: no relay took it from %s (%s)", call_id, from_relay, reason.value)
        return "no_relay"

    async def _note_attempt(self, call_id: str, attempt: str) -> None:
        """Keep why a move failed on the record (the caller and the operator read relay_attempts)."""
        try:
            await self._record(call_id, {"op": "attempt", "attempt": attempt})
        except EdgeError as exc:  # gone meanwhile: nothing to note on
            log.info("call %s: attempt not noted: %s", call_id, exc.code)

    async def _alternatives(self, record: CallRecord, from_relay: str) -> list[Choice]:
        if self.ranker is None:
            return []
        try:
            where = CallerLocation(**record.caller)
            ranked = await self.ranker(where)
        except (NoRelayError, RegistryError, TypeError) as exc:
            log.warning("call %s: no relay to move to: %s", record.call_id, exc)
            return []
        return [choice for choice in self.usable(ranked) if choice.relay.id != from_relay]

    async def _switch(self, record: CallRecord, session: str, track: str) -> None:
        """Point the caller's transceiver at another relay's voice (``tracks/update``, no new offer)."""
        assert record.caller_session_id is not None and record.caller_mid is not None
        request, parse = build_switch_track(
            self.config.sfu,
            record.caller_session_id,
            mid=record.caller_mid,
            to_session_id=session,
            to_track_name=track,
        )
        await self._api(request, parse)

    async def close_session_tracks(self, session_id: str) -> str:
        """Close every track of an SFU session whose owner is gone (a dead relay's): report, never raise."""
        try:
            state = await self._api(build_get_session(self.config.sfu, session_id), parse_get_session)
            mids = [t.mid for t in state.tracks if t.mid and t.status is not ResourceStatus.INACTIVE]
            if not mids:
                return "ok"
            request = build_close_tracks(
                self.config.sfu, session_id, CloseTracksRequest.for_mids(mids, force=True)
            )
            closed = await self._api(request, parse_close_tracks)
            closed.raise_for_item_errors()
        except SfuApiError as exc:
            if exc.status in (404, 410):
                return "gone"
            log.info("closing the tracks of session %s failed: %s", session_id, exc.code)
            return f"error: {exc.code}"
        return "ok"

    async def relay_ended(self, relay_id: str, call_id: str, code: str, reason: str) -> dict[str, Any]:
        """The relay ended the call itself (signed notice): close the record and the caller's SFU track."""
        reply = await self._record(
            call_id,
            {"op": "close", "reason": f"relay_ended: {code}: {reason}", "if_relay": relay_id},
        )
        record = CallRecord.from_json(reply["record"])
        if reply.get("was_open"):
            await self.teardown(record, tell_relay=False)
        return {"call_id": call_id, "closed_now": bool(reply.get("was_open")), "state": record.state}

    async def relay_stages(self, relay_id: str, call_id: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
        """The agent's stage marks, from the call's relay: kept on the record for the caller's page."""
        reply = await self._record(call_id, {"op": "stages", "if_relay": relay_id, "stages": stages})
        record = CallRecord.from_json(reply["record"])
        return {"call_id": call_id, "stages": len(record.stages)}

    async def _close_quietly(self, call_id: str, reason: str, relay_id: str, *, tell_relay: bool) -> None:
        try:
            reply = await self._record(call_id, {"op": "close", "reason": reason, "if_relay": relay_id})
        except EdgeError as exc:  # already gone (deleted after its retention): nothing to close
            log.info("call %s: close on relay %s skipped: %s", call_id, relay_id, exc.code)
            return
        if reply.get("was_open"):
            await self.teardown(CallRecord.from_json(reply["record"]), tell_relay=tell_relay)

    async def attach_relay(self, record: CallRecord, choices: list[Choice]) -> None:
        """Background: ask relays in rank order to attach, then pull the first one's voice to the caller."""
        try:
            await self._attach_relay(record, choices)
        except Exception as exc:  # background work: log, close, never raise into waitUntil
            log.warning("call %s: relay attach failed: %s", record.call_id, exc)
            try:
                await self.close_call(record.call_id, f"relay attach failed: {type(exc).__name__}")
            except EdgeError as close_error:
                log.warning("call %s: close after a failed attach failed: %s", record.call_id, close_error)

    async def _attach_relay(self, record: CallRecord, choices: list[Choice]) -> Choice | None:
        """→ the relay that took the call, or None (all refused: the call is closed)."""
        call_id = record.call_id
        if record.caller_session_id is None:
            raise RuntimeError("no caller session to attach to")
        for choice in choices[:MAX_RELAY_ATTEMPTS]:
            refused = await self._claim(choice.relay.id, call_id)
            if refused is not None:
                await self._record(call_id, {"op": "attempt", "attempt": f"{choice.relay.id}: {refused}"})
                continue
            try:
                relay_session, relay_track = await self.relay_attach(choice, record)
            except RelayError as exc:
                try:
                    await self._record(call_id, {"op": "attempt", "attempt": f"{choice.relay.id}: {exc}"})
                finally:
                    if exc.maybe_attached:
                        await self.relay_close(choice.relay.summary(), call_id)
                continue
            try:
                connected = await self._wire(record, choice, relay_session, relay_track)
            except BaseException:
                await self.relay_close(choice.relay.summary(), call_id)  # the record does not name it yet
                raise
            if not connected:
                await self.relay_close(choice.relay.summary(), call_id)
            return choice
        tried = min(len(choices), MAX_RELAY_ATTEMPTS)
        await self.close_call(call_id, f"no relay accepted the call ({tried} tried)")
        return None

    async def _wire(self, record: CallRecord, choice: Choice, relay_session: str, relay_track: str) -> bool:
        """Pull the relay's voice into the caller's transceiver, then mark the call connected.

        False when the call was closed meanwhile (the caller hung up): its SFU track is closed here."""
        assert record.caller_session_id is not None
        pull = TracksRequest(
            tracks=(
                TrackObject.remote(relay_session, relay_track, mid=mid_for_track(CALLER_TRACK), kind="audio"),
            )
        )
        request = build_new_tracks(self.config.sfu, record.caller_session_id, pull)
        pulled = await self._api(request, parse_new_tracks)
        pulled.raise_for_item_errors()
        values: dict[str, Any] = {
            "relay": choice.relay.summary(),
            "relay_reason": choice.reason,
            "relay_session_id": relay_session,
            "relay_track": relay_track,
        }
        if pulled.requires_immediate_renegotiation and pulled.session_description is not None:
            values["pending_sfu_offer"] = pulled.session_description.sdp
        try:
            await self._update(record.call_id, "connect", values)
        except EdgeError:
            await self.teardown(replace(record, relay={}))
            return False
        return True

    async def relay_attach(
        self, choice: Choice, record: CallRecord, *, continues: Continuation | None = None
    ) -> tuple[str, str]:
        """Signed POST {control_url}/v1/calls (mode sfu) → (relay session id, relay track name).

        ``continues``: the call is moving here from another relay (the relay tells inference)."""
        if not record.caller_session_id:
            raise RuntimeError("no caller session to attach to")
        request = AttachRequest(
            call_id=record.call_id,
            mode=AttachMode.SFU,
            sfu=SfuAttach(caller_session_id=record.caller_session_id, caller_track_name=CALLER_TRACK),
            metadata={"edge_relay_reason": choice.reason[:200], **record.caller},
            continues=continues,
        )
        body = json.dumps(request.to_json(), separators=(",", ":")).encode()
        try:
            response = await self._relay_request(choice.relay.summary(), "POST", CALLS_PATH, body)
        except FetchError as exc:
            raise RelayError(f"no response ({clean_text(str(exc), 120)})", maybe_attached=True) from None
        if response.status != 201:
            raise RelayError(f"HTTP {response.status} {_relay_message(response.body)}", maybe_attached=False)
        try:
            result = AttachResult.from_json(json.loads(response.body))
        except (ValueError, RecursionError) as exc:  # SchemaError is a ValueError
            raise RelayError(f"bad 201: {clean_text(str(exc), 120)}", maybe_attached=True) from None
        if (
            result.mode is not AttachMode.SFU
            or result.sfu_session_id is None
            or result.sfu_track_name is None
        ):
            raise RelayError("201 without sfu_session_id and sfu_track_name", maybe_attached=True)
        return result.sfu_session_id, result.sfu_track_name

    async def _relay_request(self, relay: Mapping[str, Any], method: str, path: str, body: bytes) -> Inbound:
        base = str(relay["control_url"])
        full_path = urlsplit(base).path.rstrip("/") + path
        headers = sign_headers(
            self.config.relay_signing_key, method, full_path, body, key_id=self.config.relay_signing_key_id
        )
        headers["content-type"] = "application/json"
        return await self._send(self._outbound(method, base + path, tuple(headers.items()), body))

    async def relay_close(self, relay: Mapping[str, Any], call_id: str) -> str:
        """Signed DELETE {control_url}/v1/calls/{id}: idempotent on the relay."""
        if not relay.get("control_url"):
            return "no relay"
        try:
            response = await self._relay_request(relay, "DELETE", call_path(call_id), b"")
        except FetchError as exc:
            return f"error: {clean_text(str(exc), 120)}"
        return "ok" if response.status == 200 else f"error: HTTP {response.status}"

    # --- renegotiation, close, probe ---------------------------------------------------------------

    async def renegotiate(
        self, record: CallRecord, description: SessionDescription
    ) -> SessionDescription | None:
        """PATCH: the caller's new offer (ICE restart) → the SFU's answer; or the caller's answer → None."""
        if not record.open or record.caller_session_id is None:
            raise EdgeError(409, "call_" + record.state, f"call {record.call_id!r} is {record.state}")
        if description.type is SdpType.OFFER:
            check_offer(description.sdp)
        elif record.pending_sfu_offer is None:
            raise EdgeError(409, "no_pending_offer", "answer: the SFU has no offer waiting for an answer")
        request = build_renegotiate(
            self.config.sfu, record.caller_session_id, RenegotiateRequest(session_description=description)
        )
        try:
            response = await self._api(request, parse_renegotiate)
        except SfuApiError as exc:
            raise sfu_error("renegotiate", exc) from None
        if description.type is SdpType.ANSWER:
            await self._update(record.call_id, "update", {"pending_sfu_offer": None})
            return None
        if response.session_description is None:
            raise sfu_error("renegotiate", SfuApiError(200, ErrorCode.INVALID_RESPONSE, "no answer", False))
        return response.session_description

    async def close_call(self, call_id: str, reason: str) -> tuple[CallRecord, bool, dict[str, str]]:
        """Close the record, then the SFU track and the relay's call. Idempotent: closed stays closed."""
        reply = await self._record(call_id, {"op": "close", "reason": reason})
        record = CallRecord.from_json(reply["record"])
        cleanup = await self.teardown(record) if reply.get("was_open") else {}
        return record, bool(reply.get("was_open")), cleanup

    async def teardown(self, record: CallRecord, *, tell_relay: bool = True) -> dict[str, str]:
        """Close the caller's SFU transceiver (both directions) and tell the relay; report, never raise.

        ``tell_relay=False`` when the relay ended the call or is gone: a DELETE would be wasted (or wait
        out its timeout on a dead host)."""
        results: dict[str, str] = {}
        if record.caller_session_id is not None and record.caller_mid is not None:
            request = build_close_tracks(
                self.config.sfu,
                record.caller_session_id,
                CloseTracksRequest.for_mids([record.caller_mid], force=True),
            )
            try:
                closed = await self._api(request, parse_close_tracks)
                closed.raise_for_item_errors()
                results["sfu"] = "ok"
            except SfuApiError as exc:
                results["sfu"] = f"error: {exc.code}"
        if tell_relay:
            results["relay"] = await self.relay_close(record.relay, record.call_id)
        return results

    async def probe(self, record: CallRecord) -> str | None:
        """None while the caller's SFU session and mic are alive, else why the call is abandoned."""
        if record.caller_session_id is None:
            return "no SFU session"
        try:
            state = await self._api(
                build_get_session(self.config.sfu, record.caller_session_id), parse_get_session
            )
        except SfuApiError as exc:
            if exc.status in (404, 410):
                return f"abandoned: the caller's SFU session is gone (HTTP {exc.status})"
            return None  # a transient error is no proof the caller left
        for track in state.tracks:
            if track.mid == record.caller_mid and track.track_name == record.caller_track:
                if track.status is ResourceStatus.INACTIVE:
                    return "abandoned: the caller's mic track is inactive on the SFU"
                return None
        return "abandoned: the caller's mic track is gone from the SFU session"


async def run_alarm(obj: CallObject, service: CallService) -> str:
    """The Durable Object alarm: close what is due (and clean up), or probe a connected call."""
    action = await obj.alarm()
    if action.kind == "close" and action.record is not None:
        await service.teardown(action.record)
        return "closed: " + (action.record.close_reason or "")
    if action.kind == "probe" and action.record is not None:
        why = await service.probe(action.record)
        if why is None:
            await obj.probed_alive(action.record.call_id)
            return "alive"
        record, was_open = await obj.close(action.record.call_id, why)
        if was_open:
            await service.teardown(record)
        return "closed: " + why
    return "none"


async def run_relay_alarm(watch: RelayWatch, service: CallService) -> str:
    """The relay object's alarm: if the relay went silent, every call on it loses its relay."""
    lost = await watch.alarm()
    if lost is None:
        return "none"
    log.warning(
        "relay %s lost: no heartbeat for %.1f s; %d call(s) on it",
        lost.relay_id,
        lost.silent_s,
        len(lost.calls),
    )
    service.note_relay(lost.relay_id, "lost")
    await asyncio.gather(*(service.relay_lost(lost.relay_id, c, lost.silent_s) for c in lost.calls))
    return f"lost: {len(lost.calls)} call(s)"


class RelayError(Exception):
    """The relay did not attach; ``maybe_attached`` when it may have (timeout, bad 201) and needs a DELETE."""

    def __init__(self, message: str, *, maybe_attached: bool) -> None:
        super().__init__(message)
        self.maybe_attached = maybe_attached


def _relay_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return clean_text(str(doc["error"]["code"]), 60)
    except (ValueError, KeyError, TypeError):
        return f"({len(body)}-byte body)"


def sfu_error(step: str, exc: SfuApiError) -> EdgeError:
    """Map an SFU/TURN failure to what the caller should see: their fault (400), ours (502/503/504)."""
    detail = f"{exc.code}: {exc.description}"
    if (
        step in ("push", "renegotiate")
        and exc.status in (200, 400)
        and exc.code != ErrorCode.INVALID_RESPONSE
    ):
        return EdgeError(400, "invalid_offer", f"offer.sdp: the SFU refused it ({detail})", field="offer.sdp")
    if exc.status in (401, 403):
        return EdgeError(
            502, "sfu_unauthorized", "the SFU refused the edge's credentials (check SFU_APP_ID/secret)"
        )
    if step == "renegotiate" and exc.status in (404, 410):
        return EdgeError(409, "session_gone", f"the call's SFU session is gone ({detail})")
    if exc.status == 429:
        return EdgeError(503, "sfu_busy", f"the SFU is rate limiting ({detail})", retry_after=1)
    if exc.status == 0:
        return EdgeError(504, "sfu_unreachable", f"no response from the SFU ({exc.description})")
    return EdgeError(502, "sfu_error", f"the SFU failed ({'HTTP ' + str(exc.status)}, {detail})")
