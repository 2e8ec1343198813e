"""The headless caller: one WebRTC call through the edge (or straight to a relay), turn by turn.

It does what the browser page does, with aiortc instead of a browser: token, GET /v1/ice-servers,
POST /v1/calls with an offer (one sendrecv audio transceiver), apply the answer, connect through the
SFU, DELETE at the end. Audio moves on the SRTP fast path (relay/media), as the relay's does: a
prepared utterance (scripts/devtools/utterance.py) is sent in real time on an absolute 20 ms schedule with
RFC 6464 levels, silence frames in between, and the agent's reply is taken at packet arrival (no
jitter buffer, no playout). With access to the relay's record of the call it adds what only the relay
and the agent know (endpointing, relay dwell, the relay's leg RTT): scripts/devtools/budget.py does the
arithmetic. ``splitrelay bench calls`` runs many of these; import :func:`run_call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from aiortc import RTCIceServer

from splitrelay.contract.signing import check_key, sign_headers
from splitrelay.devtools.budget import (
    CallReport,
    ConnectTimes,
    RelayView,
    SendClock,
    TurnRecord,
    turn_budget,
)
from splitrelay.devtools.utterance import FRAME_MS, SILENCE_LEVEL, Utterance
from splitrelay.relay.http_guard import CLIENT_KEEP_ALIVE_S
from splitrelay.relay.media.impair import Impairment
from splitrelay.relay.media.peer import LOOPBACK, CandidatePolicy, VoicePeer, VoicePeerConfig
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath

T = TypeVar("T")

FRAME_S: Final = FRAME_MS / 1000
POLL_S: Final = 0.02  # how often set-up state is polled (edge record, relay call)
MAX_TURNS: Final = 50  # the relay keeps a call's last 64 inference events
HTTP_TIMEOUT_S: Final = 10.0
IMPAIRED_MAX_GAP_SHARE: Final = 0.5
"""On an impaired leg a reply may miss frames (lost either way), at most this share of its span."""


class CallError(Exception):
    """The call could not be set up or ran into a wall; the message names the step and the limit."""


@dataclass(frozen=True)
class RelayAccess:
    """A relay's control API and the key it verifies signatures with (never shown in repr)."""

    url: str
    signing_key: bytes = field(repr=False)
    key_id: str = "default"

    def __post_init__(self) -> None:
        check_url(self.url, "relay url")
        check_key(self.signing_key, "relay signing key")


@dataclass(frozen=True)
class CallOptions:
    reply_gap_s: float = 0.3
    """A reply has ended once this long passed without a reply packet."""
    reply_timeout_s: float = 10.0
    """The agent must start replying within this long after the last speech frame."""
    max_reply_s: float = 60.0
    """A reply still going after this long ends the turn (bounded turns)."""
    connect_timeout_s: float = 15.0
    """ICE+DTLS, and the edge/relay reporting the path up, each within this long."""
    rtcp_interval_s: float = 0.5
    """Our RTCP sender reports: the round trip is measured against them."""
    candidates: CandidatePolicy | None = None
    """ICE host candidates; None: loopback when the edge is on loopback, else aioice's choice."""
    impair: Impairment | None = None
    """Impair the caller's leg (both directions of its media): relay/media/impair.py."""
    lossy_path: bool = False
    """Another leg of the path is impaired (the relay's, `relay serve --impair`): replies may miss
    frames, so they are matched allowing gaps, as with ``impair``."""

    def __post_init__(self) -> None:
        for name, low, high in (
            ("reply_gap_s", 0.06, 5.0),
            ("reply_timeout_s", 1.0, 120.0),
            ("max_reply_s", 1.0, 600.0),
            ("connect_timeout_s", 1.0, 120.0),
            ("rtcp_interval_s", 0.05, 60.0),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}: must be {low}..{high} s, got {value}")


def check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what}: expected an http(s) URL such as http://127.0.0.1:8787, got {url[:80]!r}")
    return url.rstrip("/")


def check_turns(turns: int) -> int:
    if not 1 <= turns <= MAX_TURNS:
        raise ValueError(f"turns: must be 1..{MAX_TURNS}, got {turns}")
    return turns


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- HTTP ---------------------------------------------------------------------------------------


def _error_text(response: httpx.Response) -> str:
    """The server's error message (edge and relay both answer {"error": {"code", "message"}})."""
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error.get('code')}: {str(error.get('message'))[:300]}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {response.status_code}"


def http_client() -> httpx.AsyncClient:
    """The harness's HTTP client: idle connections expire before our servers close them."""
    return httpx.AsyncClient(
        timeout=HTTP_TIMEOUT_S, limits=httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE_S)
    )


async def _request(
    http: httpx.AsyncClient, step: str, method: str, url: str, *, expect: tuple[int, ...], **kwargs: Any
) -> httpx.Response:
    attempts = 2 if method == "GET" else 1  # a read may be retried once on a fresh connection
    for attempt in range(attempts):
        try:
            response = await http.request(method, url, **kwargs)
            break
        except httpx.TransportError as exc:
            if attempt + 1 < attempts and not isinstance(exc, httpx.TimeoutException):
                continue
            raise CallError(
                f"{step}: no response from {urlsplit(url).netloc} ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise CallError(
                f"{step}: no response from {urlsplit(url).netloc} ({type(exc).__name__})"
            ) from None
    if response.status_code not in expect:
        raise CallError(f"{step}: {_error_text(response)}")
    return response


def _json(response: httpx.Response, step: str) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise CallError(f"{step}: HTTP {response.status_code} without a JSON object")
    return doc


def _text(doc: dict[str, Any], step: str, *path: str) -> str:
    """A non-empty string at ``path`` in a response, or a CallError naming the field."""
    value: Any = doc
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        raise CallError(f"{step}: the response has no {'.'.join(path)}")
    return value


class RelayInspector:
    """Signed reads of the relay's record of a call (GET /v1/calls/{id}): summary and agent events."""

    def __init__(self, http: httpx.AsyncClient, access: RelayAccess) -> None:
        self.http = http
        self.access = access

    async def request(
        self, step: str, method: str, path: str, body: bytes = b"", expect: tuple[int, ...] = (200,)
    ) -> httpx.Response:
        base = self.access.url
        full_path = urlsplit(base).path.rstrip("/") + path
        headers = sign_headers(
            self.access.signing_key, method, full_path, body, key_id=self.access.key_id
        ) | {"content-type": "application/json"}
        return await _request(
            self.http, step, method, base + path, expect=expect, content=body, headers=headers
        )

    async def call(self, call_id: str) -> dict[str, Any] | None:
        """The relay's summary of the call with its events, or None when the relay does not know it."""
        path = f"/v1/calls/{quote(call_id, safe='')}"
        response = await self.request("GET relay /v1/calls/{id}", "GET", path, expect=(200, 404))
        return None if response.status_code == 404 else _json(response, "GET relay /v1/calls/{id}")


# --- signalling: through the edge, or straight to a relay ----------------------------------------


class Signalling(Protocol):
    mode: str

    async def ice_servers(self) -> list[RTCIceServer]: ...

    async def create(self, offer_sdp: str) -> tuple[str, str]:
        """Send the offer → (call id, answer SDP)."""
        ...

    async def wait_path(self, call_id: str, deadline: float) -> float | None:
        """Until the far end can hear us; returns the edge's answer → connected time if it has one."""
        ...

    async def hang_up(self, call_id: str) -> None: ...


class EdgeSignalling:
    """Exactly what the browser page does against the edge's API (docs/edge.md)."""

    mode = "sfu"

    def __init__(self, http: httpx.AsyncClient, edge_url: str, token: str) -> None:
        self.http = http
        self.url = check_url(edge_url, "edge url")
        if not token or len(token) > 4096:
            raise ValueError("token: must be 1..4096 characters")
        self._auth = {"authorization": f"Bearer {token}"}

    async def ice_servers(self) -> list[RTCIceServer]:
        response = await _request(
            self.http,
            "GET /v1/ice-servers",
            "GET",
            f"{self.url}/v1/ice-servers",
            expect=(200,),
            headers=self._auth,
        )
        servers = []
        items = _json(response, "GET /v1/ice-servers").get("ice_servers")
        for item in items if isinstance(items, list) else []:
            urls = item.get("urls") if isinstance(item, dict) else None
            if isinstance(urls, str | list) and urls:
                servers.append(
                    RTCIceServer(urls=urls, username=item.get("username"), credential=item.get("credential"))
                )
        return servers

    async def create(self, offer_sdp: str) -> tuple[str, str]:
        response = await _request(
            self.http,
            "POST /v1/calls",
            "POST",
            f"{self.url}/v1/calls",
            expect=(201,),
            json={"offer": {"type": "offer", "sdp": offer_sdp}},
            headers=self._auth,
        )
        doc = _json(response, "POST /v1/calls")
        return _text(doc, "POST /v1/calls", "call_id"), _text(doc, "POST /v1/calls", "answer", "sdp")

    async def record(self, call_id: str) -> dict[str, Any]:
        response = await _request(
            self.http,
            "GET /v1/calls/{id}",
            "GET",
            f"{self.url}/v1/calls/{quote(call_id, safe='')}",
            expect=(200,),
            headers=self._auth,
        )
        return _json(response, "GET /v1/calls/{id}")

    async def wait_path(self, call_id: str, deadline: float) -> float | None:
        """The edge attaches the relay after answering us: wait for its record to say ``connected``."""
        for _ in range(int(120 / POLL_S)):  # bounded; the deadline ends it first
            record = await self.record(call_id)
            state = record.get("state")
            if state == "connected":
                if "renegotiation" in record:
                    raise CallError(
                        "GET /v1/calls/{id}: the SFU asks for a renegotiation; the headless caller does not "
                        "answer SFU offers yet (the browser page does)"
                    )
                value = record.get("answer_to_connected_ms")
                return float(value) if isinstance(value, int | float) else None
            if state == "closed":
                raise CallError(f"the edge closed the call during set-up: {record.get('close_reason')}")
            if time.perf_counter() > deadline:
                raise CallError(f"the edge's record of the call is still {state!r} after the connect timeout")
            await asyncio.sleep(POLL_S)
        raise CallError("the edge's record of the call never became 'connected'")

    async def hang_up(self, call_id: str) -> None:
        await _request(
            self.http,
            "DELETE /v1/calls/{id}",
            "DELETE",
            f"{self.url}/v1/calls/{quote(call_id, safe='')}",
            expect=(200,),
            headers=self._auth,
        )


class DirectSignalling:
    """Direct mode: the offer goes straight to a relay's control API, signed as the edge would sign it."""

    mode = "direct"

    def __init__(self, relay: RelayInspector) -> None:
        self.relay = relay

    async def ice_servers(self) -> list[RTCIceServer]:
        return []  # the relay has a reachable address of its own; no STUN/TURN needed for it

    async def create(self, offer_sdp: str) -> tuple[str, str]:
        call_id = "call-" + secrets.token_hex(12)
        body = json.dumps(
            {"call_id": call_id, "mode": "direct", "offer": {"type": "offer", "sdp": offer_sdp}}
        ).encode()
        response = await self.relay.request("POST relay /v1/calls", "POST", "/v1/calls", body, expect=(201,))
        return call_id, _text(
            _json(response, "POST relay /v1/calls"), "POST relay /v1/calls", "answer", "sdp"
        )

    async def wait_path(self, call_id: str, deadline: float) -> float | None:
        return None  # the relay is the far end: _Call._relay_live waits for its call to be live

    async def hang_up(self, call_id: str) -> None:
        await self.relay.request(
            "DELETE relay /v1/calls/{id}", "DELETE", f"/v1/calls/{quote(call_id, safe='')}"
        )


# --- media ----------------------------------------------------------------------------------------


@dataclass
class _Reply:
    """The agent's packets in one turn, as they arrived."""

    payloads: list[bytes] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    first: asyncio.Event = field(default_factory=asyncio.Event)

    sequence: list[int] = field(default_factory=list)

    def add(self, packet: RtpPacket, arrived: float) -> None:
        if self.first_at is None:
            self.first_at = arrived
            self.first.set()
        self.last_at = arrived
        self.payloads.append(packet.payload)
        self.sequence.append(packet.sequence)

    def in_sequence_order(self) -> list[bytes]:
        """The payloads by RTP sequence number (unwrapped from the first), duplicates dropped: what a
        receiver's jitter buffer would play, for matching a reply that crossed a reordering network."""
        if not self.sequence:
            return []
        first = self.sequence[0]
        by_seq: dict[int, bytes] = {}
        for seq, payload in zip(self.sequence, self.payloads, strict=True):
            by_seq.setdefault(((seq - first + 0x8000) & 0xFFFF) - 0x8000, payload)
        return [by_seq[k] for k in sorted(by_seq)]


class Receiver:
    """The fast path's packet callback: files each agent packet under the turn being measured."""

    def __init__(self) -> None:
        self.current: _Reply | None = None
        self.outside_turns = 0
        self.packets = 0

    def on_packet(self, packet: RtpPacket) -> None:
        self.packets += 1
        arrived = packet.arrival_ns / 1e9 if packet.arrival_ns else time.perf_counter()
        if self.current is None:
            self.outside_turns += 1
        else:
            self.current.add(packet, arrived)


@dataclass
class _Speech:
    """One utterance being sent: where it starts on the timeline, and when its last frame left."""

    started: asyncio.Future[int]
    """Resolves to the frame index (on the send clock) of the utterance's first frame."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    next_frame: int = 0


class Sender:
    """Sends one frame every 20 ms on an absolute schedule: the utterance when told, else silence."""

    def __init__(
        self, fast_path: SrtpFastPath, utterance: Utterance, clock: SendClock, max_frames: int
    ) -> None:
        self.fast_path = fast_path
        self.utterance = utterance
        self.clock = clock
        self.max_frames = max_frames
        self._speech: _Speech | None = None

    def speak(self) -> _Speech:
        """Start the utterance at the next tick."""
        if self._speech is not None and not self._speech.done.is_set():
            raise RuntimeError("the caller is already speaking")
        self._speech = _Speech(asyncio.get_running_loop().create_future())
        return self._speech

    async def run(self) -> None:
        utterance = self.utterance
        clock = self.clock
        for index in range(self.max_frames):
            payload, level, voice = utterance.silence_frame, SILENCE_LEVEL, False
            speech = self._speech
            if speech is not None and not speech.done.is_set():
                i = speech.next_frame
                payload, level, voice = utterance.frames[i], utterance.levels[i], utterance.speech[i]
                if i == 0:
                    speech.started.set_result(index)
                speech.next_frame += 1
                if speech.next_frame == len(utterance.frames):
                    speech.done.set()  # waiters run after this frame's send below is recorded
            # A failed send (connection gone) is counted by the fast path: its send_failures.
            self.fast_path.send(
                payload, clock.timestamp(index), marker=index == 0, audio_level=level, voice=voice
            )
            clock.record(time.perf_counter())
            # The absolute schedule: a late frame does not push the later ones back (they catch up).
            delay = clock.due(index + 1) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        raise CallError(f"the caller sent {self.max_frames} frames: the call ran past its time budget")


def find_run(haystack: tuple[bytes, ...], needle: list[bytes]) -> int | None:
    """Index where ``needle`` occurs as a contiguous run of ``haystack`` (byte-identical), or None."""
    if not needle or len(needle) > len(haystack):
        return None
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start] == needle[0] and list(haystack[start : start + len(needle)]) == needle:
            return start
    return None


def find_run_with_gaps(haystack: tuple[bytes, ...], needle: list[bytes], max_gap_share: float) -> int | None:
    """Index where ``needle`` occurs in ``haystack`` in order, byte-identical, with frames missing
    between (lost on an impaired leg: at most ``max_gap_share`` of the span), or None.

    The strict check (:func:`find_run`) is for a clean network, where any gap is a bug; an impaired
    one loses frames on the way in (the agent never echoes them) and on the way back. What must still
    hold: every frame that came back is one that was sent, in the order it was sent.
    """
    if not needle or len(needle) > len(haystack) or not 0 <= max_gap_share < 1:
        return None
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start] != needle[0]:
            continue
        at, matched = start, 1
        for frame in needle[1:]:
            at += 1
            while at < len(haystack) and haystack[at] != frame:
                at += 1
            if at >= len(haystack):
                break
            matched += 1
        if matched == len(needle) and (at - start + 1 - len(needle)) <= max_gap_share * (at - start + 1):
            return start
    return None


# --- the call -------------------------------------------------------------------------------------


async def run_call(
    edge_url: str,
    token: str,
    utterance: Utterance,
    turns: int = 3,
    *,
    relay: RelayAccess | None = None,
    options: CallOptions | None = None,
) -> CallReport:
    """One call through the edge; ``relay`` (optional) adds the relay's and the agent's view."""
    options = options or CallOptions()
    async with http_client() as http:
        inspector = RelayInspector(http, relay) if relay is not None else None
        signalling = EdgeSignalling(http, edge_url, token)
        candidates = options.candidates or (LOOPBACK if is_loopback(edge_url) else CandidatePolicy())
        return await _Call(signalling, inspector, utterance, check_turns(turns), options, candidates).run()


async def run_direct_call(
    relay: RelayAccess, utterance: Utterance, turns: int = 3, *, options: CallOptions | None = None
) -> CallReport:
    """One call in the relay's direct mode (no edge, no SFU): the offer goes to the relay itself."""
    options = options or CallOptions()
    async with http_client() as http:
        inspector = RelayInspector(http, relay)
        candidates = options.candidates or (LOOPBACK if is_loopback(relay.url) else CandidatePolicy())
        signalling = DirectSignalling(inspector)
        return await _Call(signalling, inspector, utterance, check_turns(turns), options, candidates).run()


class _Call:
    def __init__(
        self,
        signalling: Signalling,
        relay: RelayInspector | None,
        utterance: Utterance,
        turns: int,
        options: CallOptions,
        candidates: CandidatePolicy,
    ) -> None:
        self.signalling = signalling
        self.relay = relay
        self.utterance = utterance
        self.turns = turns
        self.options = options
        self.candidates = candidates
        self.receiver = Receiver()
        # A browser starts its RTP timeline at a random timestamp; the schedule starts at connect.
        self.clock = SendClock(random.randrange(1 << 32), time.perf_counter())
        self.report = CallReport(
            mode=signalling.mode, call_id=None, utterance=utterance.name, utterance_ms=utterance.duration_ms
        )
        self.fast_path: SrtpFastPath | None = None
        self.connected_at: float | None = None

    def _budget_s(self) -> float:
        """Upper bound on the whole call's media time: sizes the send loop's frame budget."""
        o = self.options
        per_turn = self.utterance.duration_ms / 1000 + o.reply_timeout_s + o.max_reply_s + o.reply_gap_s + 5
        return 2 * o.connect_timeout_s + self.turns * per_turn + 30

    async def run(self) -> CallReport:
        peer = VoicePeer(
            VoicePeerConfig(
                ice_servers=tuple(await self.signalling.ice_servers()), candidates=self.candidates
            )
        )
        call_id: str | None = None
        sender_task: asyncio.Task[None] | None = None
        try:
            self._watch_connection(peer)
            try:
                offer = await peer.create_offer()
            except ConnectionError as exc:
                raise CallError(f"offer: {exc}") from None
            posted = time.perf_counter()
            call_id, answer = await self.signalling.create(offer)
            answered = time.perf_counter()
            self.report.call_id = call_id
            try:
                await peer.accept_answer(answer)
            except ValueError as exc:
                raise CallError(f"answer: {exc}") from None
            applied = time.perf_counter()
            try:
                await peer.wait_connected(within=self.options.connect_timeout_s)
            except (TimeoutError, ConnectionError) as exc:
                raise CallError(f"ICE/DTLS: {exc}") from None
            if self.fast_path is None or self.connected_at is None:
                raise CallError("ICE/DTLS: connected, but the fast path did not attach")
            deadline = time.perf_counter() + self.options.connect_timeout_s
            self.clock.start = time.perf_counter()
            sender = Sender(self.fast_path, self.utterance, self.clock, int(self._budget_s() / FRAME_S))
            sender_task = asyncio.create_task(sender.run())  # like a browser: audio flows from connect on
            edge_ms = await self.signalling.wait_path(call_id, deadline)
            ready = await self._relay_live(call_id, deadline) or time.perf_counter()
            self.report.connect = ConnectTimes(
                signalling_ms=(answered - posted) * 1000,
                answer_to_connected_ms=(self.connected_at - applied) * 1000,
                connect_ms=(self.connected_at - posted) * 1000,
                ready_ms=(ready - posted) * 1000,
                edge_answer_to_connected_ms=edge_ms,
            )
            try:
                await self._turns(sender, sender_task)
            except CallError as exc:  # keep what was measured: the report says what failed
                self.report.errors.append(str(exc))
        finally:
            if sender_task is not None:
                sender_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, CallError):
                    await sender_task
            if call_id is not None:
                try:
                    await self.signalling.hang_up(call_id)
                except CallError as exc:
                    self.report.errors.append(f"hang-up: {exc}")
            if self.fast_path is not None:
                self._caller_stats()
                await self.fast_path.close()
            await peer.close()
        return self.report

    def _watch_connection(self, peer: VoicePeer) -> None:
        """Attach the fast path inside the state callback: no packet can reach aiortc's stack before it."""

        def on_state() -> None:
            if peer.pc.connectionState == "connected" and self.fast_path is None:
                self.connected_at = time.perf_counter()
                self.fast_path = SrtpFastPath.attach(
                    peer.pc,
                    self.receiver.on_packet,
                    FastPathConfig(
                        rtcp_interval=self.options.rtcp_interval_s,
                        impair_out=self.options.impair,
                        impair_in=self.options.impair,
                    ),
                )

        peer.pc.on("connectionstatechange", on_state)

    async def _relay_live(self, call_id: str, deadline: float) -> float | None:
        """Wait until the relay's call is ``live`` (its media and inference link up); None if unseen."""
        if self.relay is None:
            return None
        for _ in range(int(120 / POLL_S)):  # bounded; the deadline ends it first
            summary = await self.relay.call(call_id)
            state = summary.get("state") if summary else None
            if state == "live":
                return time.perf_counter()
            if state == "closed":
                raise CallError(
                    f"the relay closed the call during set-up: {summary and summary.get('close_reason')}"
                )
            if time.perf_counter() > deadline:
                raise CallError(
                    f"the relay's call is {state or 'unknown to the relay'} after the connect timeout"
                )
            await asyncio.sleep(POLL_S)
        raise CallError("the relay's call never became live")

    async def _turns(self, sender: Sender, sender_task: asyncio.Task[None]) -> None:
        """Run the turns; whatever ends them early, the turns measured so far are kept and reported."""
        relay_view: RelayView | None = None
        records: list[TurnRecord] = []
        try:
            for turn in range(self.turns):
                record = await self._one_turn(turn, sender, sender_task)
                records.append(record)
                relay_view = await self._relay_view(turn, relay_view)
                if record.reply_first_at is None:
                    self.report.errors.append(
                        f"turn {turn + 1}: no reply within {self.options.reply_timeout_s:g} s "
                        "of the last speech frame"
                    )
        finally:
            self.report.relay = relay_view
            self.report.turns = [
                turn_budget(record, self.clock, relay_view, self.signalling.mode, order=i)
                for i, record in enumerate(records)
            ]
        for budget in self.report.turns:
            if budget.reply_frames and budget.reply_match is None:
                self.report.errors.append(
                    f"turn {budget.turn}: the reply's {budget.reply_frames} frames are not "
                    "a run of the sent frames"
                )

    async def _relay_view(self, turn: int, previous: RelayView | None) -> RelayView | None:
        """The relay's latest view of the call; a failed lookup is reported and the last view kept."""
        if self.relay is None or self.report.call_id is None:
            return previous
        try:
            summary = await self.relay.call(self.report.call_id)
        except CallError as exc:
            self.report.errors.append(f"turn {turn + 1}: relay lookup failed, earlier view kept: {exc}")
            return previous
        return RelayView.from_summary(summary) if summary is not None else previous

    async def _one_turn(self, turn: int, sender: Sender, sender_task: asyncio.Task[None]) -> TurnRecord:
        o = self.options
        reply = _Reply()
        self.receiver.current = reply
        speech = sender.speak()
        first_index = await _or_sender_failed(speech.started, sender_task)
        await _or_sender_failed(speech.done.wait(), sender_task)
        last = self.utterance.last_speech_index
        last_ts = self.clock.timestamp(first_index + last)
        last_due = self.clock.due(first_index + last)
        remaining = last_due + o.reply_timeout_s - time.perf_counter()
        if reply.first_at is None and remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_or_sender_failed(reply.first.wait(), sender_task), remaining)
        if reply.first_at is not None:
            end = reply.first_at + o.max_reply_s
            for _ in range(int(o.max_reply_s / 0.02) + 2):  # bounded; the gap or max_reply_s ends it
                now = time.perf_counter()
                last_at = reply.last_at or now
                if now - last_at >= o.reply_gap_s or now >= end:
                    break
                await asyncio.sleep(min(o.reply_gap_s - (now - last_at), end - now) + 0.001)
        self.receiver.current = None
        stats = self.fast_path.stats() if self.fast_path is not None else None
        return TurnRecord(
            index=turn + 1,
            first_frame_ts=self.clock.timestamp(first_index),
            frames=len(self.utterance.frames),
            last_speech_ts=last_ts,
            last_speech_due=last_due,
            reply_first_at=reply.first_at,
            reply_last_at=reply.last_at,
            reply_frames=len(reply.payloads),
            reply_match=(
                find_run(self.utterance.frames, reply.payloads)
                if self.options.impair is None and not self.options.lossy_path
                else find_run_with_gaps(
                    self.utterance.frames, reply.in_sequence_order(), IMPAIRED_MAX_GAP_SHARE
                )
            ),
            caller_rtt_ms=stats.rtt_ms if stats is not None else None,
            caller_jitter_ms=stats.jitter_in_ms if stats is not None and stats.packets_in else None,
        )

    def _caller_stats(self) -> None:
        assert self.fast_path is not None
        s = self.fast_path.stats()
        self.report.caller = {
            "packets_out": s.packets_out,
            "packets_in": s.packets_in,
            "packets_outside_turns": self.receiver.outside_turns,
            "lost_in": s.lost_in,
            "lost_out": s.lost_out,
            "rtt_ms": s.rtt_ms,
            "jitter_in_ms": round(s.jitter_in_ms, 3),
            "jitter_out_ms": round(s.jitter_out_ms, 3),
            "undecryptable": s.undecryptable,
            "send_failures": s.send_failures,
        }
        impairments = [("sent", self.fast_path.impair_out), ("received", self.fast_path.impair_in)]
        for direction, stage in impairments:
            if stage is not None:
                self.report.caller[f"impaired_{direction}"] = {
                    "model": stage.config.describe(),
                    **{k: v for k, v in vars(stage.stats).items()},
                }


async def _or_sender_failed(awaitable: Awaitable[T], sender_task: asyncio.Task[None]) -> T:
    """Await ``awaitable`` unless the send loop dies first (then raise its error)."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({waiter, sender_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiter.done():
            waiter.cancel()
    if waiter in done:
        return waiter.result()
    error = sender_task.exception() if not sender_task.cancelled() else None
    raise CallError(f"the send loop stopped: {error or 'cancelled'}")
