"""Dwell histograms and the Prometheus collector: percentiles, merging, exposition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from splitrelay.relay.telemetry import (
    DWELL_BUCKETS_US,
    CallCounters,
    CallSample,
    DwellHistogram,
    RelayCollector,
)


def test_empty_histogram_has_no_percentiles() -> None:
    assert DwellHistogram().quantile_ms(0.5) is None


def test_percentiles_fall_in_the_right_bucket() -> None:
    h = DwellHistogram()
    for _ in range(99):
        h.observe_ns(15_000)  # 15 µs: the (10, 20] µs bucket
    h.observe_ns(800_000)  # one slow packet: 0.8 ms
    p50 = h.quantile_ms(0.5)
    p99 = h.quantile_ms(0.99)
    p100 = h.quantile_ms(1.0)
    assert p50 is not None and 0.010 <= p50 <= 0.020
    assert p99 is not None and 0.010 <= p99 <= 0.020
    assert p100 is not None and 0.75 <= p100 <= 0.8
    assert h.count == 100 and h.max_ns == 800_000


@given(st.lists(st.integers(min_value=0, max_value=200_000_000), min_size=1, max_size=300))
def test_quantiles_are_monotone_and_bounded_by_the_max(values: list[int]) -> None:
    h = DwellHistogram()
    for v in values:
        h.observe_ns(v)
    qs = [h.quantile_ms(q) for q in (0.1, 0.5, 0.9, 0.99, 1.0)]
    assert all(q is not None for q in qs)
    floats = [q for q in qs if q is not None]
    assert floats == sorted(floats)
    assert floats[-1] <= max(values) / 1e6 + 1e-9


def test_merge_adds_counts_and_keeps_the_max() -> None:
    a, b = DwellHistogram(), DwellHistogram()
    a.observe_ns(5_000)
    b.observe_ns(2_000_000)
    a.merge(b)
    assert a.count == 2 and a.max_ns == 2_000_000 and a.sum_ns == 2_005_000
    buckets = a.buckets()
    assert buckets[-1] == ("+Inf", 2.0)
    assert [c for _, c in buckets] == sorted(c for _, c in buckets)  # cumulative
    assert len(buckets) == len(DWELL_BUCKETS_US) + 1


def test_collector_exports_live_and_ended_calls() -> None:
    live_hist = DwellHistogram()
    live_hist.observe_ns(20_000)
    live = CallSample(CallCounters(packets_in=10, bytes_in=500), live_hist, DwellHistogram(), 2, 1.5, 30.0)
    collector = RelayCollector(lambda: [live], process="3")
    ended = CallSample(
        CallCounters(packets_in=5, barge_ins=1), DwellHistogram(), DwellHistogram(), 0, None, None
    )
    collector.record_ended(ended)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    value = {s.name: s.value for f in families.values() for s in f.samples if s.labels.get("process") == "3"}
    assert value["splitrelay_calls_live"] == 1
    assert value["splitrelay_calls_ended_total"] == 1
    assert value["splitrelay_packets_in_total"] == 15
    assert value["splitrelay_barge_ins_total"] == 1
    assert value["splitrelay_live_packets_lost"] == 2
    assert value["splitrelay_live_rtt_ms"] == 30.0
    assert value["splitrelay_dwell_in_seconds_count"] == 1


def test_the_shared_ports_counters_are_exported_when_the_process_has_one() -> None:
    collector = RelayCollector(lambda: [], process="1")

    def exported() -> dict[str, tuple[str, float]]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        text = generate_latest(registry).decode()
        return {
            s.name: (f.type, s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name.startswith("splitrelay_media_port")
        }

    assert exported() == {}  # no shared port: no such families
    collector.port_stats = lambda: {"flows": 7, "flows_shared": 3, "turns_expired": 0, "native_finished": 90}
    assert exported() == {
        "splitrelay_media_port_flows": ("gauge", 7),
        "splitrelay_media_port_flows_shared_total": ("counter", 3),
        "splitrelay_media_port_turns_expired_total": ("counter", 0),
        "splitrelay_media_port_native_finished_total": ("counter", 90),
    }
