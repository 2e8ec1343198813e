"""Pacing in C (fastpath.c ``sr_pace``): a burst's frames wait in the call's ring and leave on their slots.

tests/unit/test_native_out.py runs random traffic through a C-paced relay and a Python one and compares
everything; here the properties one by one, on the same relay harness: frames leave exactly when their
slot comes within ``lead`` (not early, not late), a pause stops them before the next wake-up and a
barge-in drops them, and Python taking the ring back mid-burst (a named mark) loses and repeats nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from splitrelay.relay.media import native, srtp_fastpath
from splitrelay.relay.playout import FRAME_NS
from tests.unit.test_native_out import Agent, Clock, World, relay

pytestmark = pytest.mark.skipif(not native.available(), reason="native path not built")

LEAD_NS = 60_000_000  # CallConfig's default playout lead


@asynccontextmanager
async def paced_world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[World, Clock, socket.socket]]:
    clock = Clock()
    monkeypatch.setattr(srtp_fastpath, "send_clock", clock.read)
    inference = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inference.bind(("127.0.0.1", 0))
    inference.setblocking(False)
    try:
        async with relay(True, clock, inference, monkeypatch, "drain", True) as world:
            yield world, clock, inference
    finally:
        inference.close()


async def deliver(world: World, inference: socket.socket, datagrams: list[bytes]) -> None:
    address = world.link.address
    assert address is not None
    for data in datagrams:
        inference.sendto(data, address)
    await asyncio.sleep(0.002)  # loopback delivery
    receiver = world.link.receiver
    assert receiver is not None
    receiver.drain()
    await settle()


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)  # the send batches' flush
    await asyncio.sleep(0.002)


def rtp_timestamps(datagrams: list[bytes]) -> list[int]:
    return [struct.unpack_from("!I", d, 4)[0] for d in datagrams]


async def step_to(world: World, clock: Clock, until: int, early_ns: int = 0) -> list[tuple[int, list[bytes]]]:
    """Fire each wake-up at its due time up to ``until`` (first ``early_ns`` before it, as SharedPacer may,
    then on time); what caller 0 heard at each (bounded)."""
    heard: list[tuple[int, list[bytes]]] = []
    for _ in range(10_000):
        heap = world.timers.heap
        if not heap or heap[0][0] > until:
            break
        due = heap[0][0]
        if early_ns and clock.now < due - early_ns:
            clock.now = due - early_ns
            heapq.heappop(heap)[2]()  # early: a correct pacer sends nothing and asks again for `due`
        else:
            clock.now = max(clock.now, due)
            world.timers.fire()
        await settle()
        got = world.drain_callers()[0]
        if got:
            heard.append((clock.now, got))
    clock.now = until
    return heard


async def test_c_paces_a_burst_onto_its_slots_never_early_never_late(monkeypatch: pytest.MonkeyPatch) -> None:
    async with paced_world(monkeypatch) as (world, clock, inference):
        rng, agent = random.Random(7), Agent()
        start = clock.now
        await deliver(world, inference, [agent.frame(rng, 0, marker=i == 0) for i in range(30)])
        first = world.drain_callers()[0]
        assert len(first) == 4  # the slots within lead: now, +20, +40, +60 ms
        entry = world.calls[0]._out
        assert entry is not None and entry.held() == 26  # the rest wait in C, not in Python's queue
        assert world.calls[0].playout.queued_frames == 26
        assert world.calls[0].playout.state.queued == 0
        heard = await step_to(world, clock, start + 2_000_000_000, early_ns=500_000)
        sent = [(at, ts) for at, batch in heard for ts in rtp_timestamps(batch)]
        assert len(sent) == 26
        ts0 = rtp_timestamps(first)[0]
        for at, ts in sent:
            slot = start + (ts - ts0) * 1_000_000_000 // 48_000
            assert at == slot - LEAD_NS, f"a frame left {(at - (slot - LEAD_NS)) / 1e6:+.3f} ms off its time"
        assert [at for at, _ in sent] == [start + FRAME_NS * (k + 1) for k in range(26)]
        out = world.link.native_out
        assert out is not None and out.paced == 26


async def test_a_pause_holds_c_s_frames_and_a_barge_in_drops_them(monkeypatch: pytest.MonkeyPatch) -> None:
    async with paced_world(monkeypatch) as (world, clock, inference):
        rng, agent = random.Random(8), Agent()
        start = clock.now
        call = world.calls[0]
        await deliver(world, inference, [agent.frame(rng, 0, marker=i == 0) for i in range(30)])
        world.drain_callers()
        await step_to(world, clock, start + 5 * FRAME_NS)
        entry = call._out
        assert entry is not None
        held = entry.held()
        assert held == 30 - 4 - 5
        call.playout.pause()  # a barge-in candidate: nothing more may leave
        heard = await step_to(world, clock, start + 20 * FRAME_NS)
        assert heard == [] and entry.held() == held
        assert call.playout.playing()
        call._barge_in(0)  # confirmed: the held frames are dropped
        assert entry.held() == 0 and call.playout.queued_frames == 0
        assert await step_to(world, clock, start + 60 * FRAME_NS) == []
        assert not call.playout.playing()


async def test_a_named_mark_takes_the_ring_back_mid_burst_and_nothing_is_lost_or_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with paced_world(monkeypatch) as (world, clock, inference):
        rng, agent = random.Random(9), Agent()
        start = clock.now
        call = world.calls[0]
        await deliver(world, inference, [agent.frame(rng, 0, marker=i == 0) for i in range(30)])
        heard = [ts for ts in rtp_timestamps(world.drain_callers()[0])]
        heard += [
            ts
            for _, batch in await step_to(world, clock, start + 10 * FRAME_NS)
            for ts in rtp_timestamps(batch)
        ]
        entry = call._out
        assert entry is not None and entry.held() == 30 - 14
        call.playout.push_mark("half", 0)  # Python needs the queue: C's frames come back first, in order
        assert entry.held() == 0 and call.playout.queued_frames == 16
        marks: list[str] = []
        monkeypatch.setattr(call.playout, "_mark_reached", lambda name, _ts: marks.append(name))
        rest = await step_to(world, clock, start + 2_000_000_000)
        heard += [ts for _, batch in rest for ts in rtp_timestamps(batch)]
        assert heard == [(heard[0] + 960 * k) & 0xFFFFFFFF for k in range(30)]
        assert [at for at, _ in rest] == [start + FRAME_NS * (k + 11) for k in range(16)]  # still on time
        assert marks == ["half"]


async def test_the_links_pace_wake_ups_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each earlier slot arms an earlier wake-up; the later ones it supersedes must not re-arm (else every
    burst would leave one more wake-up behind, forever)."""
    async with paced_world(monkeypatch) as (world, clock, inference):
        rng, agent = random.Random(10), Agent()
        start = clock.now
        await deliver(world, inference, [agent.frame(rng, 0, marker=i == 0) for i in range(30)])
        out = world.link.native_out
        assert out is not None
        for k in range(10, 0, -1):  # ever earlier slots, as new bursts of other calls would bring
            out.table.pace_due = start + k * 1_000_000
            world.link._arm_pace()
        assert len(world.timers.heap) == 11
        await step_to(world, clock, start + 15 * FRAME_NS)
        assert len(world.timers.heap) == 1  # mid-burst: the one wake-up of the next slot
        await step_to(world, clock, start + 200 * FRAME_NS)
        assert world.drain_callers()[0] == [] and world.calls[0].playout.queued_frames == 0
        assert len(world.timers.heap) == 0  # all sent, no wake-up left


async def test_a_slot_less_than_a_timer_tick_away_waits_a_tick_instead_of_spinning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with paced_world(monkeypatch) as (world, clock, inference):
        rng, agent = random.Random(11), Agent()
        await deliver(world, inference, [agent.frame(rng, 0, marker=i == 0) for i in range(10)])
        out = world.link.native_out
        assert out is not None
        world.timers.heap.clear()
        world.link._pace_armed_for = None
        out.table.pace_due = clock.now + 300_000  # 0.3 ms: libuv would fire at once, again and again
        world.link._arm_pace()
        assert [due - clock.now for due, _, _ in world.timers.heap] == [1_000_000]
        out.table.pace_due = clock.now - 5  # overdue: at once
        world.link._arm_pace()
        assert sorted(due - clock.now for due, _, _ in world.timers.heap) == [0, 1_000_000]
