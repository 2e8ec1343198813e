"""Rate limits per caller token and per client IP: one interface, two implementations.

In the Worker the limit is Cloudflare's Rate Limiting binding (edge/entry.py adapts it: counters are
per Cloudflare location, configured in wrangler.toml). Locally and in tests it is the token bucket
below: same question ("may this key make one more request?"), bounded memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

MAX_KEY_CHARS: Final = 256


class RateLimiter(Protocol):
    """``allow(key)``: True when the request may go ahead (and counts it)."""

    async def allow(self, key: str) -> bool: ...


def limit_key(kind: str, value: str) -> str:
    """Namespaced, bounded key (``ip:203.0.113.9``, ``token:<jti>``): never a token or a secret."""
    return f"{kind}:{value}"[:MAX_KEY_CHARS]


@dataclass
class TokenBucket:
    """``rate`` requests per second on average, bursts of ``burst``; at most ``max_keys`` keys tracked.

    When the table is full the least recently seen key is forgotten (it restarts with a full bucket):
    memory stays bounded under a flood of distinct keys, at the price of forgiving the oldest one.
    """

    rate: float
    burst: float
    max_keys: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1e6:
            raise ValueError(f"rate: must be in (0, 1e6] requests per second, got {self.rate}")
        if not 1 <= self.burst <= 1e6:
            raise ValueError(f"burst: must be in [1, 1e6], got {self.burst}")
        if not 1 <= self.max_keys <= 10_000_000:
            raise ValueError(f"max_keys: must be in [1, 10000000], got {self.max_keys}")

    async def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
