"""The shared playout pacer: one loop timer for every call's paced playout."""

from __future__ import annotations

import asyncio
import functools
import itertools
from typing import Any

import pytest

from splitrelay.relay.playout import FRAME_NS, Playout, SharedPacer


class Ran(list[Any]):
    """Records what ran; ``until(n)`` waits (bounded) for the n-th record."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def add(self, item: Any) -> None:
        self.append(item)
        self._grew.set()

    async def until(self, n: int, within: float = 2.0) -> None:
        async with asyncio.timeout(within):
            while len(self) < n:
                self._grew.clear()
                await self._grew.wait()


async def test_wake_ups_run_in_due_order_and_never_before_their_time_less_early() -> None:
    pacer = SharedPacer(early_ms=0.5)
    loop = asyncio.get_running_loop()
    ran = Ran()
    start = loop.time()

    def record(name: str, delay: float) -> None:
        ran.add((name, loop.time() - start - delay))

    for name, delay in (("c", 0.030), ("a", 0.010), ("b", 0.020), ("a2", 0.010)):
        pacer.schedule(delay, functools.partial(record, name, delay))
    await ran.until(4)
    assert [n for n, _ in ran] == ["a", "a2", "b", "c"]  # due order; ties in scheduling order
    assert all(early >= -0.0005 - 1e-6 for _, early in ran)
    assert pacer.pending == 0


async def test_wake_ups_due_together_share_one_loop_timer() -> None:
    pacer = SharedPacer(early_ms=0.5)
    ran = Ran()
    for i in range(200):
        pacer.schedule(0.01, functools.partial(ran.add, i))
    await ran.until(200)
    assert ran == list(range(200))
    assert pacer.fired == 1 and pacer.ran == 200


async def test_an_earlier_wake_up_rearms_the_timer() -> None:
    pacer = SharedPacer(early_ms=0)
    ran = Ran()
    pacer.schedule(0.5, functools.partial(ran.add, "late"))
    pacer.schedule(0.005, functools.partial(ran.add, "early"))
    await ran.until(1, within=0.4)  # did not wait for the 0.5 s timer
    assert ran == ["early"] and pacer.pending == 1
    pacer.close()
    assert pacer.pending == 0


async def test_a_wake_up_scheduled_while_firing_does_not_hide_an_earlier_one() -> None:
    pacer = SharedPacer(early_ms=0)
    ran = Ran()

    def first() -> None:
        ran.add("first")
        pacer.schedule(0.2, functools.partial(ran.add, "far"))  # scheduled during the firing

    pacer.schedule(0.005, first)
    pacer.schedule(0.02, functools.partial(ran.add, "near"))  # earlier than "far": must not wait for it
    await ran.until(2, within=0.15)
    assert ran == ["first", "near"]
    await ran.until(3)
    assert ran == ["first", "near", "far"]


async def test_a_failing_wake_up_is_counted_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pacer = SharedPacer()
    ran = Ran()

    def boom() -> None:
        raise RuntimeError("a bug in one call")

    pacer.schedule(0.005, boom)
    pacer.schedule(0.005, boom)
    pacer.schedule(0.005, functools.partial(ran.add, 1))
    await ran.until(1)
    assert pacer.failed == 2
    assert len([r for r in caplog.records if "wake-up failed" in r.getMessage()]) == 1  # logged once


def test_early_is_validated() -> None:
    with pytest.raises(ValueError, match=r"early must be 0\.\.5 ms, got 9"):
        SharedPacer(early_ms=9)


async def test_a_paced_burst_on_the_shared_pacer_leaves_one_frame_per_slot() -> None:
    pacer = SharedPacer(early_ms=0.5)
    sent = Ran()
    clock = asyncio.get_running_loop().time
    playout = Playout(lambda payload, ts, marker: sent.add(ts), lambda n, t: None, pacer.schedule, lead_ms=0)
    t0 = clock()
    for i in range(6):
        playout.push_frame(b"x", seq=i, marker=i == 0, timestamp=i * 960)
    assert len(sent) == 1 and playout.queued_frames == 5
    await sent.until(6)
    assert [b - a for a, b in itertools.pairwise(sent)] == [960] * 5
    assert clock() - t0 >= 5 * FRAME_NS / 1e9 - 0.0005  # paced: never faster than one slot each
