"""One relay's liveness at the edge: the logic of the per-relay Durable Object, over injected storage.

Each relay sends one signed heartbeat every ~250 ms (relay/edge_link.py) listing its live calls and
whether it drains. This object keeps when it last heard the relay and an alarm at that time plus
``timeout_s`` (1 s by default); when the alarm fires with no newer beat, the relay is lost and every
call on it is handed to :meth:`CallService.relay_lost` (edge/calls.py), which moves it to another relay
(``tracks/update``, no new offer) or closes it. The beat that first says "draining" hands the relay's
calls over the same way (``hand_over`` in the reply). One object per relay,
not per call: the cost is one request per beat per relay, whatever the number of calls
(docs/architecture.md, "Liveness").

Storage writes follow events, not beats: the calls, the drain flag and the boot are written when they
change; the last-seen time lives in memory (after an eviction the object counts from its reload, which
gives a relay at most one more timeout). The alarm is moved only when it fires, so a beat costs no write.
The same class runs on a Durable Object's ``ctx.storage`` (edge/entry.py) and in memory
(scripts/devtools/local_edge.py, tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from splitrelay.contract.control import Heartbeat, check_call_id, check_relay_id
from splitrelay.contract.json_fields import SchemaError
from splitrelay.edge.call_record import RecordStorage

STATE_KEY: Final = "relay"
DEFAULT_TIMEOUT_S: Final = 1.0
CLAIM_GRACE_S: Final = 10.0
"""A call the edge claimed on this relay but that no beat lists yet is kept this long (attach under way)."""
MAX_CALLS: Final = 8192


@dataclass
class WatchState:
    relay_id: str = ""
    boot_id: str = ""
    seq: int = -1
    draining: bool = False
    lost: bool = False
    listed: set[str] = field(default_factory=set)  # calls the relay's last beat named
    claimed: dict[str, float] = field(default_factory=dict)  # call id → when the edge sent it here

    def to_json(self) -> dict[str, Any]:
        return {
            "relay_id": self.relay_id,
            "boot_id": self.boot_id,
            "seq": self.seq,
            "draining": self.draining,
            "lost": self.lost,
            "listed": sorted(self.listed),
            "claimed": self.claimed,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WatchState:
        return cls(
            relay_id=str(doc.get("relay_id", "")),
            boot_id=str(doc.get("boot_id", "")),
            seq=int(doc.get("seq", -1)),
            draining=bool(doc.get("draining")),
            lost=bool(doc.get("lost")),
            listed=set(doc.get("listed") or ()),
            claimed={str(k): float(v) for k, v in (doc.get("claimed") or {}).items()},
        )


class WatchError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


@dataclass(frozen=True)
class Lost:
    """The alarm found the relay silent: these calls were on it."""

    relay_id: str
    calls: tuple[str, ...]
    silent_s: float


class RelayWatch:
    """The Durable Object's logic: heartbeats in, claims checked, an alarm that declares the relay lost."""

    def __init__(
        self,
        storage: RecordStorage,
        clock: Callable[[], float] = time.time,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.timeout_s = timeout_s
        self._state: WatchState | None = None
        self.last_seen: float | None = None  # memory only: a beat costs no storage write
        self._alarm_at: float | None = None

    async def load(self) -> WatchState:
        if self._state is None:
            text = await self.storage.get(STATE_KEY)
            self._state = WatchState() if text is None else WatchState.from_json(json.loads(text))
            if not self._state.lost and (self._state.listed or self._state.claimed):
                # Reloaded (evicted, restarted) with calls on a relay thought alive: count from now.
                self.last_seen = self.clock()
                await self._arm(self.last_seen + self.timeout_s)
        return self._state

    async def _save(self, state: WatchState) -> None:
        await self.storage.put(STATE_KEY, json.dumps(state.to_json(), separators=(",", ":")))

    async def _arm(self, at: float) -> None:
        """Set the alarm unless one is already due earlier (it re-arms itself when it fires)."""
        if self._alarm_at is None or at < self._alarm_at:
            self._alarm_at = at
            await self.storage.set_alarm(at * 1000.0)

    async def dispatch(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """One command → a JSON-ready reply or ``{"error": ...}`` (the Durable Object RPC's vocabulary)."""
        try:
            op = command.get("op")
            relay_id = check_relay_id(command.get("relay_id"))
            if op == "heartbeat":
                return await self.heartbeat(relay_id, Heartbeat.from_json(command.get("beat"), "beat"))
            if op == "claim":
                return await self.claim(relay_id, check_call_id(command.get("call_id")))
            if op == "status":
                return await self.status(relay_id)
            raise WatchError(400, "invalid_command", "op: must be heartbeat, claim or status")
        except WatchError as exc:
            return exc.to_json()
        except SchemaError as exc:
            return WatchError(400, "invalid_command", str(exc)).to_json()
        except (KeyError, TypeError, ValueError) as exc:
            return WatchError(400, "invalid_command", f"bad command: {type(exc).__name__}").to_json()

    async def heartbeat(self, relay_id: str, beat: Heartbeat) -> dict[str, Any]:
        """Note the beat; the reply names the calls this beat dropped, which the edge then closes."""
        state = await self.load()
        now = self.clock()
        if state.relay_id and state.relay_id != relay_id:
            raise WatchError(409, "wrong_relay", f"relay_id: this object watches {state.relay_id!r}")
        if beat.boot_id == state.boot_id and beat.seq <= state.seq:
            raise WatchError(409, "stale_heartbeat", f"seq: {beat.seq} is not after {state.seq}")
        restarted = beat.boot_id != state.boot_id
        listed = set(beat.calls)
        # A relay declared lost that beats again (a stall, not a death): the calls it still lists may
        # have been closed or moved meanwhile; the edge checks each and tells the relay to let go.
        came_back = sorted(listed) if state.lost and not restarted else []
        # The relay starts to drain: its live calls move to other relays before it refuses anything.
        hand_over = sorted(listed) if beat.draining and not state.draining and not restarted else []
        # Calls the relay listed before and lists no more ended there: closed at the edge (a backstop
        # for a lost call-end notice). Claimed calls never listed are only forgotten after the grace.
        dropped = sorted(state.listed - listed)
        claimed = {
            call_id: at
            for call_id, at in state.claimed.items()
            if call_id not in listed and call_id not in state.listed and now - at < CLAIM_GRACE_S
        }
        changed = (
            restarted
            or state.lost
            or state.relay_id != relay_id
            or state.draining != beat.draining
            or listed != state.listed
            or claimed != state.claimed
        )
        state.relay_id, state.boot_id, state.seq = relay_id, beat.boot_id, beat.seq
        state.draining, state.lost, state.listed, state.claimed = beat.draining, False, listed, claimed
        self.last_seen = now
        if changed:
            await self._save(state)
        await self._arm(now + self.timeout_s)
        return {
            "draining_seen": state.draining,
            "timeout_ms": round(self.timeout_s * 1000),
            "closed": dropped,
            "hand_over": hand_over,
            "came_back": came_back,
        }

    async def claim(self, relay_id: str, call_id: str) -> dict[str, Any]:
        """The edge is about to send ``call_id`` to this relay: refused if the relay drains or is lost.

        A relay never heard from (liveness not configured on it) is ``unknown`` and allowed."""
        state = await self.load()
        if state.lost:
            return {"ok": False, "why": "lost", "draining": state.draining}
        if state.draining:
            return {"ok": False, "why": "draining", "draining": True}
        if not state.boot_id:
            return {"ok": True, "why": "unknown", "draining": False}
        if len(state.claimed) + len(state.listed) >= MAX_CALLS:
            raise WatchError(503, "relay_watch_full", f"at most {MAX_CALLS} calls per relay")
        state.relay_id = state.relay_id or relay_id
        state.claimed[call_id] = self.clock()
        await self._save(state)
        return {"ok": True, "why": "alive", "draining": False}

    async def status(self, relay_id: str) -> dict[str, Any]:
        state = await self.load()
        silent = None if self.last_seen is None else round(self.clock() - self.last_seen, 3)
        return {
            "relay_id": relay_id,
            "known": bool(state.boot_id),
            "lost": state.lost,
            "draining": state.draining,
            "calls": len(state.listed | set(state.claimed)),
            "silent_s": silent,
        }

    async def alarm(self) -> Lost | None:
        """Due: the relay is lost (→ its calls) if no beat came within ``timeout_s``; else re-arm."""
        self._alarm_at = None
        state = await self.load()
        if state.lost or not state.boot_id:
            return None
        now = self.clock()
        last = self.last_seen if self.last_seen is not None else now
        if self.last_seen is None:
            self.last_seen = now
        if now < last + self.timeout_s:
            await self._arm(last + self.timeout_s)
            return None
        calls = tuple(sorted(state.listed | set(state.claimed)))
        state.lost, state.listed, state.claimed = True, set(), {}
        await self._save(state)
        return Lost(state.relay_id, calls, round(now - last, 3))
