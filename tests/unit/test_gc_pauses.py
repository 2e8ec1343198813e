"""The relay's collection-pause histogram (relay/gc_pauses.py): arithmetic, the gc hook, the families."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from splitrelay.relay.gc_pauses import PAUSE_BUCKETS_S, GcPauseCollector, GcPauses


def test_a_pause_on_a_bound_counts_at_that_bound_and_above_every_bound_in_inf() -> None:
    pauses = GcPauses()
    pauses.observe(2, 0.02, collected=5)  # exactly one frame: "le 0.02"
    pauses.observe(2, 0.020001)
    pauses.observe(2, 3.0)
    pauses.observe(0, 0.00001, collected=1, uncollectable=2)
    cumulative = dict(pauses.cumulative(2))
    assert cumulative["0.01"] == 0
    assert cumulative["0.02"] == 1
    assert cumulative["0.05"] == 2
    assert cumulative["1.0"] == 2
    assert cumulative["+Inf"] == 3
    assert pauses.count(2) == 3 and pauses.count(1) == 0 and pauses.count(0) == 1
    assert pauses.max_s[2] == 3.0
    assert pauses.sum_s[2] == pytest.approx(3.040001)
    assert pauses.collected == [1, 0, 5]
    assert pauses.uncollectable == [2, 0, 0]
    assert len(pauses.cumulative(0)) == len(PAUSE_BUCKETS_S) + 1


def test_the_callback_times_a_collection_with_the_clock_it_was_given() -> None:
    ticks = iter([10.0, 10.25])
    pauses = GcPauses(clock=lambda: next(ticks))
    pauses("start", {"generation": 2, "collected": 0, "uncollectable": 0})
    pauses("stop", {"generation": 2, "collected": 7, "uncollectable": 0})
    assert pauses.max_s[2] == pytest.approx(0.25)
    assert dict(pauses.cumulative(2))["0.2"] == 0 and dict(pauses.cumulative(2))["0.5"] == 1
    assert pauses.collected[2] == 7


def test_install_sees_real_collections_and_uninstall_stops_it() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # once only
    try:
        assert gc.callbacks.count(pauses) == 1
        gc.collect()
        gc.collect(0)
        assert pauses.count(2) >= 1 and pauses.count(0) >= 1
        assert pauses.max_s[2] > 0
    finally:
        pauses.uninstall()
    assert pauses not in gc.callbacks
    seen = pauses.count(2)
    gc.collect()
    assert pauses.count(2) == seen


def test_metrics_families_by_generation_and_the_frozen_heap() -> None:
    pauses = GcPauses()
    pauses.observe(2, 0.15, collected=3)
    pauses.observe(1, 0.001)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GcPauseCollector(pauses, "3", frozen=lambda: 1234))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    hist = families["splitrelay_gc_pause_seconds"]
    counts = {
        (s.labels["generation"], s.labels["le"]): s.value for s in hist.samples if s.name.endswith("_bucket")
    }
    assert counts[("2", "0.1")] == 0 and counts[("2", "0.2")] == 1 and counts[("2", "+Inf")] == 1
    assert counts[("1", "0.001")] == 1 and counts[("0", "+Inf")] == 0
    assert all(s.labels["process"] == "3" for s in hist.samples)
    totals = {s.labels["generation"]: s.value for s in families["splitrelay_gc_collected_objects"].samples}
    assert totals == {"0": 0.0, "1": 0.0, "2": 3.0}
    longest = {s.labels["generation"]: s.value for s in families["splitrelay_gc_pause_max_seconds"].samples}
    assert longest["2"] == pytest.approx(0.15)
    (frozen,) = families["splitrelay_gc_frozen_objects"].samples
    assert frozen.value == 1234
    assert "splitrelay_gc_tracked_objects" not in families  # a heap walk: only when asked for


def test_the_tracked_object_count_is_exported_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITRELAY_GC_COUNT_OBJECTS", "1")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GcPauseCollector(GcPauses(), "0"))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    (tracked,) = families["splitrelay_gc_tracked_objects"].samples
    assert tracked.value > 100  # this test process's heap
    assert "splitrelay_gc_frozen_objects" in families  # counted exactly, whatever was passed


def test_without_a_count_the_frozen_heap_is_not_walked_at_each_scrape() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GcPauseCollector(GcPauses(), "0"))
    families = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert "splitrelay_gc_frozen_objects" not in families and "splitrelay_gc_tracked_objects" not in families
