"""Bounded retries for Realtime API calls: the policy, and the one retry loop both sides run.

The Worker (JS ``fetch``) and the relay (httpx) each hand :func:`call_with_retries` a ``send`` that
makes one attempt; the loop, the policy and the ``Retry-After`` reading are the same on both.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from splitrelay.contract.api_error import SfuApiError
from splitrelay.contract.json_fields import SchemaError, json_type

T = TypeVar("T")

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


def _check_range(name: str, value: object, low: float, high: float, *, integer: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and isinstance(value, float))
    ):
        raise SchemaError(name, f"expected {'an integer' if integer else 'a number'}, got {json_type(value)}")
    if not low <= value <= high:
        raise SchemaError(name, f"must be between {low:g} and {high:g}, got {value:g}")


Send = Callable[[], Awaitable[tuple[int, str | None, bytes]]]
Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[SfuApiError, int, float], None]


async def call_with_retries(
    send: Send,
    parse: Callable[[int, bytes], T],
    policy: RetryPolicy,
    *,
    clock: Callable[[], float],
    sleep: Sleep,
    rng: random.Random,
    on_retry: OnRetry | None = None,
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
