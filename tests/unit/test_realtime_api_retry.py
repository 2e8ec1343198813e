"""RetryPolicy, Retry-After parsing and the retry loop: deterministic with a seeded random.Random."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from splitrelay.contract.api_error import ErrorCode, SfuApiError
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.retry import RetryPolicy, call_with_retries, parse_retry_after
from splitrelay.contract.sfu_http import parse_new_session

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=3.0, max_retry_after=10.0, max_elapsed=30.0)


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    for retry_index, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (10, 3.0), (1000, 3.0)]:
        delays = [POLICY.backoff(retry_index, random.Random(seed)) for seed in range(300)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        # Full jitter spreads over the whole interval, not a fixed step.
        assert min(delays) < 0.1 * ceiling
        assert max(delays) > 0.9 * ceiling


def test_backoff_is_deterministic_for_a_seed() -> None:
    first = [POLICY.backoff(i, random.Random(7)) for i in range(4)]
    again = [POLICY.backoff(i, random.Random(7)) for i in range(4)]
    other = [POLICY.backoff(i, random.Random(8)) for i in range(4)]
    assert first == again
    assert first != other


def test_attempts_are_bounded() -> None:
    rng = random.Random(1)
    delays = [
        POLICY.next_delay(attempts_made=attempt, elapsed=0.0, retryable=True, rng=rng)
        for attempt in range(1, 6)
    ]
    assert [delay is not None for delay in delays] == [True, True, True, False, False]
    assert RetryPolicy(max_attempts=1).next_delay(attempts_made=1, elapsed=0, retryable=True, rng=rng) is None


def test_non_retryable_errors_never_wait() -> None:
    assert POLICY.next_delay(attempts_made=1, elapsed=0.0, retryable=False, rng=random.Random(1)) is None


def test_retry_after_is_honoured_and_capped() -> None:
    rng = random.Random(1)
    assert POLICY.next_delay(attempts_made=1, elapsed=0, retryable=True, rng=rng, retry_after="2") == 2.0
    assert POLICY.next_delay(attempts_made=1, elapsed=0, retryable=True, rng=rng, retry_after="0") == 0.0
    assert POLICY.next_delay(attempts_made=1, elapsed=0, retryable=True, rng=rng, retry_after="3600") == 10.0
    date = format_datetime(NOW + timedelta(seconds=5), usegmt=True)
    assert (
        POLICY.next_delay(attempts_made=2, elapsed=0, retryable=True, rng=rng, retry_after=date, now=NOW)
        == 5.0
    )


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    delay = POLICY.next_delay(
        attempts_made=3, elapsed=0, retryable=True, rng=random.Random(3), retry_after="soon"
    )
    assert delay == POLICY.backoff(2, random.Random(3))


def test_total_time_is_bounded() -> None:
    rng = random.Random(1)
    assert POLICY.next_delay(attempts_made=1, elapsed=29.0, retryable=True, rng=rng, retry_after="2") is None
    assert POLICY.next_delay(attempts_made=1, elapsed=27.0, retryable=True, rng=rng, retry_after="2") == 2.0
    assert POLICY.next_delay(attempts_made=1, elapsed=31.0, retryable=True, rng=rng) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 7 ", 7.0),
        ("-1", None),
        ("1.5", None),
        ("٣", None),  # a non-ASCII digit is not delta-seconds
        ("99999999999", None),
        ("not a date", None),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        (format_datetime(NOW - timedelta(seconds=90), usegmt=True), 0.0),
        ("Mon, 23 Nov 2026 12:00:30", 30.0),  # no zone: read as UTC
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("kwargs", "field", "needle"),
    [
        ({"max_attempts": 0}, "max_attempts", "between 1 and 10"),
        ({"max_attempts": 11}, "max_attempts", "between 1 and 10"),
        ({"max_attempts": 2.0}, "max_attempts", "integer"),
        ({"max_attempts": True}, "max_attempts", "integer"),
        ({"base_delay": -0.1}, "base_delay", "between 0 and 60"),
        ({"base_delay": 2.0, "max_delay": 1.0}, "max_delay", "between 2 and 60"),
        ({"max_retry_after": 301.0}, "max_retry_after", "between 0 and 300"),
        ({"max_elapsed": 601.0}, "max_elapsed", "between 0 and 600"),
        ({"max_elapsed": "30"}, "max_elapsed", "number"),
    ],
)
def test_policy_limits_are_enforced(kwargs: dict[str, object], field: str, needle: str) -> None:
    with pytest.raises(SchemaError) as excinfo:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert excinfo.value.field == field
    assert needle in excinfo.value.message


# --- the one retry loop (call_with_retries), as the Worker and the relay both run it ---------------------


async def test_the_retry_loop_retries_what_may_succeed_and_honours_retry_after() -> None:
    replies = [(503, None, b""), (429, "2", b""), (201, None, b'{"sessionId": "s1"}')]
    sleeps: list[float] = []
    retried: list[tuple[str, int, float]] = []

    async def send() -> tuple[int, str | None, bytes]:
        return replies.pop(0)

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    result = await call_with_retries(
        send,
        parse_new_session,
        POLICY,
        clock=lambda: 0.0,
        sleep=sleep,
        rng=random.Random(1),
        on_retry=lambda error, attempt, delay: retried.append((error.code, attempt, delay)),
    )
    assert result.session_id == "s1" and replies == []
    assert len(sleeps) == 2 and 0.0 <= sleeps[0] <= 0.5 and sleeps[1] == 2.0
    assert [(code, attempt) for code, attempt, _ in retried] == [("http_error", 1), ("http_error", 2)]


async def test_the_retry_loop_raises_the_last_error_when_it_gives_up() -> None:
    attempts = 0

    async def no_response() -> tuple[int, str | None, bytes]:
        nonlocal attempts
        attempts += 1
        raise SfuApiError(0, ErrorCode.CONNECTION_ERROR, f"refused {attempts}", True)

    async def sleep(delay: float) -> None:
        return None

    with pytest.raises(SfuApiError) as excinfo:
        await call_with_retries(
            no_response, parse_new_session, POLICY, clock=lambda: 0.0, sleep=sleep, rng=random.Random(1)
        )
    assert attempts == POLICY.max_attempts and excinfo.value.description == "refused 4"

    async def refused() -> tuple[int, str | None, bytes]:
        return 400, None, b'{"errorCode": "invalid_params"}'

    with pytest.raises(SfuApiError) as excinfo:
        await call_with_retries(
            refused, parse_new_session, POLICY, clock=lambda: 0.0, sleep=sleep, rng=random.Random(1)
        )
    assert excinfo.value.code == "invalid_params" and not excinfo.value.retryable
