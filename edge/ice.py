"""ICE servers for callers: TURN credentials minted once and shared within an isolate for part of their life.

Why: minting credentials per call setup was one more subrequest on the caller's critical path (about
0.3 ms of the Worker's CPU in Pyodide, plus its round trip). Cloudflare sets no rate limit on minting
but asks that most minted credentials actually be used (docs: TURN FAQ); sharing them does both.

Lifetime rule (``TURN_TTL_S`` = T): a caller never receives credentials with less than T seconds left,
as before. To reuse them, the edge mints them for T plus a reuse window of T/2 (capped so the total
stays within Cloudflare's 48 h maximum: at T = 48 h there is no window and every request mints), and
hands the same credentials to every caller in the isolate while at least T seconds remain. The
``ttl_s`` a caller is told is the time its credentials have left, not the minted lifetime. Expiry is
counted from when the mint request was sent, which is no later than when Cloudflare minted them.
Failures are not cached: the next caller asks again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from splitrelay.contract.turn import MAX_TTL_S


@dataclass(frozen=True)
class IceServers:
    """What a caller gets: the ``iceServers`` list and when its TURN credentials expire (None: STUN only)."""

    servers: list[dict[str, Any]]
    expires_at: float | None = None

    def ttl_s(self, now: float) -> int | None:
        """Whole seconds the credentials have left (never rounded up), or None when nothing expires."""
        if self.expires_at is None:
            return None
        return max(0, math.floor(self.expires_at - now))


def mint_ttl_s(min_lifetime_s: int) -> int:
    """The lifetime to ask Cloudflare for: the guaranteed lifetime plus a reuse window of half of it."""
    return min(MAX_TTL_S, min_lifetime_s + min_lifetime_s // 2)


class TurnCache:
    """One isolate's minted TURN credentials, handed out while at least ``min_lifetime_s`` remain."""

    def __init__(self, min_lifetime_s: int) -> None:
        if not 1 <= min_lifetime_s <= MAX_TTL_S:
            raise ValueError(f"min_lifetime_s: must be 1 to {MAX_TTL_S} seconds, got {min_lifetime_s}")
        self.min_lifetime_s = min_lifetime_s
        self.mint_ttl_s = mint_ttl_s(min_lifetime_s)
        self._current: IceServers | None = None

    def get(self, now: float) -> IceServers | None:
        """The shared credentials if they still have the guaranteed lifetime left, else None (mint)."""
        current = self._current
        if current is None or current.expires_at is None:
            return None
        if current.expires_at - now < self.min_lifetime_s:
            self._current = None
            return None
        return current

    def put(self, servers: list[dict[str, Any]], requested_at: float) -> IceServers:
        """Keep credentials minted by a request sent at ``requested_at`` with ``ttl = mint_ttl_s``."""
        minted = IceServers(servers, requested_at + self.mint_ttl_s)
        self._current = minted
        return minted
