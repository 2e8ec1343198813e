"""The relay's messages to the edge: one heartbeat every ~250 ms, and a notice for every call it ends.

The edge learns a relay died when its beats stop (edge/relay_watch.py: lost after 1 s without one), so
one small signed POST per relay, not per call, carries liveness, the live call ids and the drain flag.
A call the relay ends itself (the agent's CALL_END or ``unknown_call``, a failed set-up, the media
peer, a shutdown) is told to the edge at once with a signed call-end notice, so the caller's record
closes and the caller learns why; should that notice be lost, the next beat no longer lists the call
and the edge closes it anyway.

Signed with the key the relay already shares with the edge (``SPLITRELAY_RELAY_SIGNING_KEY``, the edge's
``RELAY_SIGNING_KEY``) through splitrelay.contract.signing: method and path are in the signature and
the edge's relay routes (``/v1/relays/...``) are paths the relay never serves, so a request signed
for one direction cannot be replayed in the other (docs/edge.md, "Relay → edge").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import httpx

from splitrelay.contract.control import (
    MAX_STAGES_PER_POST,
    AgentStage,
    CallEnded,
    CallStages,
    EndCode,
    Heartbeat,
    HeartbeatReply,
    call_end_path,
    check_relay_id,
    heartbeat_path,
    stages_path,
)
from splitrelay.contract.signing import check_key, sign_headers

log = logging.getLogger("splitrelay.relay.edge_link")

CLOSED_BY_EDGE: Final = "closed by edge"
"""The reason the control API closes a call with when the edge asked: no notice goes back for it."""
DEFAULT_INTERVAL_S: Final = 0.25
NOTICE_ATTEMPTS: Final = 3
MAX_PENDING_NOTICES: Final = 10_000
LOG_EVERY_S: Final = 10.0
STAGE_BATCH_S: Final = 0.3
"""An agent reports a turn's stages within a few hundred ms of each other: one POST carries them."""


def end_code(reason: str) -> EndCode:
    """The machine code for a relay close reason (relay/call.py writes the reasons)."""
    if reason.startswith("inference ended the call"):
        lost = "unknown_call" in reason or "agent lost" in reason
        return EndCode.AGENT_LOST if lost else EndCode.AGENT_ENDED
    if reason.startswith("setup failed") or reason.startswith("attach"):
        return EndCode.SETUP_FAILED
    if reason.startswith("peer connection") or "BYE" in reason:
        return EndCode.PEER_CLOSED
    if "shutting down" in reason or "drain" in reason:
        return EndCode.SHUTDOWN
    if "limit" in reason or "maximum" in reason:
        return EndCode.LIMIT
    return EndCode.OTHER


@dataclass(frozen=True)
class EdgeLinkSettings:
    edge_url: str
    relay_id: str
    key: bytes = field(repr=False)
    key_id: str = "default"
    interval_s: float = DEFAULT_INTERVAL_S
    timeout_s: float = 2.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.edge_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"edge URL: expected http(s)://HOST[:PORT][/PATH], got {self.edge_url[:80]!r}")
        check_relay_id(self.relay_id, "relay id")
        check_key(self.key, "signing key")
        if not 0.05 <= self.interval_s <= 10.0:
            raise ValueError(f"heartbeat interval: must be 0.05..10 s, got {self.interval_s}")


class EdgeLink:
    """Beats to the edge in the background; sends call-end notices. ``start()``, then ``aclose()``."""

    def __init__(
        self,
        settings: EdgeLinkSettings,
        live_calls: Callable[[], list[str]],
        *,
        draining: Callable[[], bool] = lambda: False,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self._live_calls = live_calls
        self._draining = draining
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=settings.timeout_s)
        self.boot_id = secrets.token_hex(8)
        self.seq = 0
        self.draining_seen: bool | None = None  # what the edge's last reply said
        self.drain_flag: bool | None = None  # set by announce_drain; else ``draining()`` decides
        self.last_ok: float | None = None
        self.beats_sent = 0
        self.beats_failed = 0
        self.notices_sent = 0
        self.notices_failed = 0
        self.stages_sent = 0
        self.stages_dropped = 0
        self.stage_posts = 0
        self._stage_batches: dict[str, list[AgentStage]] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._last_log = -LOG_EVERY_S
        self._base_path = urlsplit(settings.edge_url).path.rstrip("/")

    def __repr__(self) -> str:
        return f"EdgeLink({self.settings.edge_url!r}, relay_id={self.settings.relay_id!r})"

    async def _post(self, path: str, body: bytes) -> httpx.Response:
        full = self._base_path + path
        headers = sign_headers(self.settings.key, "POST", full, body, key_id=self.settings.key_id)
        headers["content-type"] = "application/json"
        base = self.settings.edge_url.rstrip("/")
        return await self._http.post(base + path, content=body, headers=headers)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:  # a down edge must not flood the log at 4 beats a second
            self._last_log = now
            log.warning(message, *args)

    async def beat(self) -> HeartbeatReply | None:
        """Send one heartbeat now; the edge's reply, or None if it did not answer 200."""
        self.seq += 1
        calls = tuple(self._live_calls())
        beat = Heartbeat(
            boot_id=self.boot_id,
            seq=self.seq,
            calls=calls,
            draining=self._draining() if self.drain_flag is None else self.drain_flag,
            interval_ms=round(self.settings.interval_s * 1000),
        )
        body = json.dumps(beat.to_json(), separators=(",", ":")).encode()
        try:
            response = await self._post(heartbeat_path(self.settings.relay_id), body)
        except httpx.HTTPError as exc:
            self.beats_failed += 1
            self._warn("heartbeat to the edge failed: %s", type(exc).__name__)
            return None
        if response.status_code != 200:
            self.beats_failed += 1
            self._warn("heartbeat refused by the edge: HTTP %s %s", response.status_code, _code(response))
            return None
        try:
            reply = HeartbeatReply.from_json(response.json())
        except ValueError:
            self.beats_failed += 1
            return None
        self.beats_sent += 1
        self.last_ok = time.monotonic()
        self.draining_seen = reply.draining_seen
        return reply

    async def _loop(self) -> None:
        interval = self.settings.interval_s
        while True:  # until cancelled by aclose()
            started = time.monotonic()
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, interval - (time.monotonic() - started)))
            self._wake.clear()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def announce_drain(self, draining: bool, within: float = 2.0) -> bool:
        """Beat at once with the new drain flag; True when the edge has acknowledged it within ``within``."""
        self.drain_flag = draining
        deadline = time.monotonic() + within
        for _ in range(100):  # bounded in count and by the deadline
            reply = await self.beat()
            if reply is not None and reply.draining_seen == draining:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return False

    def call_ended(self, call_id: str, reason: str) -> None:
        """Tell the edge (in the background, a few tries) that this relay ended ``call_id``."""
        if reason == CLOSED_BY_EDGE:
            return
        if len(self._pending) >= MAX_PENDING_NOTICES:
            self.notices_failed += 1
            return
        task = asyncio.get_running_loop().create_task(self._notice(call_id, reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        self._wake.set()  # the next beat goes now too, without the call

    def call_stages(self, call_id: str, event: dict[str, object]) -> None:
        """Pass an agent's ``agent.stage`` event to the edge, so the caller's page can split the agent's
        time into its stages. Marks of a call are gathered for ``STAGE_BATCH_S`` and sent in one signed
        POST (one Worker request per turn, not per mark; one try). A malformed mark is dropped here."""
        try:
            stage = AgentStage.from_json(
                {"turn": event.get("turn"), "name": event.get("name"), "ms": event.get("ms")}
            )
        except ValueError:
            self.stages_dropped += 1
            return
        batch = self._stage_batches.get(call_id)
        if batch is not None:
            if len(batch) >= MAX_STAGES_PER_POST:
                self.stages_dropped += 1
            else:
                batch.append(stage)
            return
        if len(self._pending) >= MAX_PENDING_NOTICES:
            self.stages_dropped += 1
            return
        self._stage_batches[call_id] = [stage]
        task = asyncio.get_running_loop().create_task(self._flush_stages(call_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _flush_stages(self, call_id: str) -> None:
        await asyncio.sleep(STAGE_BATCH_S)  # aclose() waits for it: a batch is not lost at a clean stop
        await self._post_stages(call_id, tuple(self._stage_batches.pop(call_id, ())))

    async def _post_stages(self, call_id: str, stages: tuple[AgentStage, ...]) -> None:
        body = json.dumps(CallStages(stages=stages[:MAX_STAGES_PER_POST]).to_json(), separators=(",", ":"))
        try:
            response = await self._post(stages_path(self.settings.relay_id, call_id), body.encode())
        except httpx.HTTPError as exc:
            self.stages_dropped += len(stages)
            self._warn("stage marks to the edge failed: %s", type(exc).__name__)
            return
        if response.status_code == 200:
            self.stages_sent += len(stages)
            self.stage_posts += 1
        else:
            self.stages_dropped += len(stages)

    async def _notice(self, call_id: str, reason: str) -> None:
        notice = CallEnded(code=end_code(reason), reason=reason[:300] or "ended")
        body = json.dumps(notice.to_json(), separators=(",", ":")).encode()
        path = call_end_path(self.settings.relay_id, call_id)
        for attempt in range(NOTICE_ATTEMPTS):
            try:
                response = await self._post(path, body)
            except httpx.HTTPError as exc:
                self._warn("call-end notice to the edge failed: %s", type(exc).__name__)
            else:
                if response.status_code < 500:  # 200, or a 4xx that a retry would not change (404: gone)
                    self.notices_sent += 1
                    return
            await asyncio.sleep(0.1 * (attempt + 1))
        self.notices_failed += 1

    async def aclose(self, within: float = 2.0) -> None:
        """Stop beating; give pending notices ``within`` seconds to land."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=within)
        for task in list(self._pending):
            task.cancel()
        if self._owns_http:
            await self._http.aclose()

    def stats(self) -> dict[str, object]:
        return {
            "relay_id": self.settings.relay_id,
            "beats_sent": self.beats_sent,
            "beats_failed": self.beats_failed,
            "notices_sent": self.notices_sent,
            "notices_failed": self.notices_failed,
            "stages_sent": self.stages_sent,
            "stages_dropped": self.stages_dropped,
            "draining_seen": self.draining_seen,
        }


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])[:40]
    except (ValueError, KeyError, TypeError):
        return ""
