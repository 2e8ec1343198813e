"""The call freezing policy (relay/gc_freeze.py) on a fake collector: when it freezes, releases, unfreezes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from splitrelay.relay import gc_freeze
from splitrelay.relay.gc_freeze import CallFreezer, FreezerCollector, GcOps, freezing_enabled


def recorder(into: list[int]) -> Callable[[], int]:
    """A release that records it ran."""

    def release() -> int:
        into.append(1)
        return 7

    return release


class FakeGc:
    """Records what the policy asks of the collector; the frozen heap is a number the test moves."""

    def __init__(self, frozen: int = 1000) -> None:
        self.frozen = frozen
        self.calls: list[str] = []

    def ops(self) -> GcOps:
        return GcOps(
            collect=self.collect, freeze=self.freeze, unfreeze=self.unfreeze, frozen=lambda: self.frozen
        )

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")


def freezer(fake: FakeGc, quiet: list[bool], live: list[int], **kw: float) -> CallFreezer:
    return CallFreezer(
        lambda: quiet[0],
        lambda: live[0],
        enabled=True,
        ops=fake.ops(),
        interval_s=kw.get("interval_s", 0.01),
        release_delay_s=kw.get("release_delay_s", 0.01),
        budget_per_call=int(kw.get("budget_per_call", 100)),
        budget_slack=int(kw.get("budget_slack", 50)),
        max_wait_s=kw.get("max_wait_s", 30.0),
    )


async def until(check: object, within: float = 2.0) -> None:
    for _ in range(int(within / 0.005)):  # bounded
        if callable(check) and check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


@pytest.mark.parametrize(
    ("value", "on"), [(None, True), ("1", True), ("yes", True), ("0", False), (" 0 ", False)]
)
def test_the_switch(value: str | None, on: bool) -> None:
    environ = {} if value is None else {"SPLITRELAY_FREEZE_CALLS": value}
    assert freezing_enabled(environ) is on


async def test_set_ups_coalesce_into_one_collect_and_freeze() -> None:
    fake = FakeGc()
    f = freezer(fake, [True], [3], interval_s=0.05)
    for _ in range(5):
        f.call_live()
    await until(lambda: f.freezes == 1)
    await asyncio.sleep(0.1)
    assert fake.calls == ["collect", "freeze"]
    assert f.freezes == 1


async def test_no_freeze_while_a_call_is_being_set_up_or_torn_down() -> None:
    fake = FakeGc()
    quiet = [False]
    f = freezer(fake, quiet, [1])
    f.call_live()
    await asyncio.sleep(0.6)  # two retries at least
    assert fake.calls == []
    quiet[0] = True
    await until(lambda: f.freezes == 1)
    assert fake.calls == ["collect", "freeze"] and f.forced_freezes == 0
    f.close()


async def test_a_freeze_that_never_finds_a_quiet_moment_happens_after_its_longest_wait() -> None:
    fake = FakeGc()
    f = freezer(fake, [False], [1])
    f.max_wait_s = 0.4
    f.call_live()
    await asyncio.sleep(0.2)
    assert f.freezes == 0
    await until(lambda: f.freezes == 1)
    assert f.forced_freezes == 1 and fake.calls == ["collect", "freeze"]
    f.call_live()  # the next one waits its own full wait again
    await asyncio.sleep(0.2)
    assert f.freezes == 1
    await until(lambda: f.freezes == 2)
    f.close()


async def test_an_ended_call_is_released_after_the_delay_then_frozen_over() -> None:
    fake = FakeGc()
    f = freezer(fake, [True], [0], release_delay_s=0.1)
    released: list[int] = []
    f.call_ended(recorder(released))
    await asyncio.sleep(0.03)
    assert released == [] and f.released == 0
    await until(lambda: f.freezes == 1)
    assert released == [1] and f.released == 1
    assert fake.calls == ["collect", "freeze"]


async def test_a_failing_release_is_counted_and_the_policy_goes_on() -> None:
    fake = FakeGc()
    f = freezer(fake, [True], [0])

    def broken() -> int:
        raise AttributeError("half-dismantled")

    f.call_ended(broken)
    await until(lambda: f.freezes == 1)
    assert f.release_failures == 1 and f.released == 0


async def test_over_budget_it_unfreezes_and_collects_everything_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_freeze, "BUDGET_CHECK_S", 0.0)  # check at every freeze here
    fake = FakeGc(frozen=1000)  # what the first freeze left frozen: the base, at no live call
    live = [0]
    f = freezer(fake, [True], live, budget_per_call=100, budget_slack=50)
    f.freeze_now()
    assert fake.calls == ["collect", "freeze"] and f.unfreezes == 0
    assert f.frozen_objects == 1000  # counted once after the first freeze, for /metrics
    live[0] = 2
    fake.frozen = 1000 + 50 + 2 * 100  # exactly at the budget: no unfreeze
    f.freeze_now()
    assert f.unfreezes == 0
    fake.frozen += 1  # one over
    fake.calls.clear()
    f.freeze_now()
    assert fake.calls == ["unfreeze", "collect", "freeze"] and f.unfreezes == 1


async def test_off_means_nothing_runs() -> None:
    fake = FakeGc()
    f = CallFreezer(lambda: True, lambda: 0, enabled=False, ops=fake.ops(), release_delay_s=0.01)
    released: list[int] = []
    f.call_live()
    f.call_ended(recorder(released))
    await asyncio.sleep(0.1)
    assert fake.calls == [] and released == []


async def test_close_cancels_pending_releases_and_freezes() -> None:
    fake = FakeGc()
    f = freezer(fake, [False], [0], release_delay_s=0.05)
    released: list[int] = []
    f.call_live()
    f.call_ended(recorder(released))
    f.close()
    await asyncio.sleep(0.4)
    assert fake.calls == [] and released == []


async def test_the_frozen_heap_is_counted_at_most_every_budget_interval() -> None:
    """Counting it walks the whole frozen heap: not at every freeze."""
    counted: list[int] = []

    def count_frozen() -> int:
        counted.append(1)
        return 1000

    fake = FakeGc()
    ops = GcOps(collect=fake.collect, freeze=fake.freeze, unfreeze=fake.unfreeze, frozen=count_frozen)
    f = CallFreezer(lambda: True, lambda: 0, enabled=True, ops=ops)
    for _ in range(5):
        f.freeze_now()
    assert f.freezes == 5
    assert len(counted) == 1  # the base, after the first freeze; the next check is BUDGET_CHECK_S later


def test_the_policy_on_metrics() -> None:
    f = CallFreezer(lambda: True, lambda: 0, enabled=True, ops=FakeGc().ops())
    f.freeze_now()
    f.released, f.release_failures = 3, 1
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FreezerCollector(f, "2"))
    families = {x.name: x for x in text_string_to_metric_families(generate_latest(registry).decode())}
    value = {name: families[name].samples[0].value for name in families}
    assert value["splitrelay_gc_freezes"] == 1 and value["splitrelay_gc_calls_released"] == 3
    assert value["splitrelay_gc_release_failures"] == 1 and value["splitrelay_gc_unfreezes"] == 0
    assert value["splitrelay_gc_freezing"] == 1
    assert value["splitrelay_gc_freeze_max_seconds"] >= 0
    assert families["splitrelay_gc_freezes"].samples[0].labels == {"process": "2"}
