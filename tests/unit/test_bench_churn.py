"""`bench churn`'s arithmetic (scripts/bench/churn.py): the relay's GC families, pause windows, /proc."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from splitrelay.bench.churn import (
    ChurnConfig,
    ProcSample,
    cpu_us_per_call_s,
    parse_gc_metrics,
    parse_status,
    pause_summary,
    pause_table,
    per_call,
    per_call_table,
)
from splitrelay.bench.support import BenchError
from splitrelay.relay.gc_pauses import GcPauseCollector, GcPauses


def metrics_text(pauses: GcPauses, frozen: int = 100_000, tracked: int | None = 5_000) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        GcPauseCollector(
            pauses, "0", frozen=lambda: frozen, tracked=None if tracked is None else lambda: tracked
        )
    )
    return (
        generate_latest(registry).decode()
        + '# TYPE splitrelay_calls_live gauge\nsplitrelay_calls_live{process="0"} 7.0\n'
    )


def test_the_relay_families_are_read_back() -> None:
    pauses = GcPauses()
    pauses.observe(2, 0.25)
    pauses.observe(0, 0.0002)
    snap = parse_gc_metrics(metrics_text(pauses))
    assert snap.frozen == 100_000 and snap.tracked == 5_000 and snap.live_calls == 7
    assert snap.pauses[2][-1] == (float("inf"), 1.0)
    assert snap.pause_max_s[2] == pytest.approx(0.25)
    assert snap.pause_sum_s[0] == pytest.approx(0.0002)
    assert parse_gc_metrics(metrics_text(GcPauses(), tracked=None)).tracked is None


def test_a_relay_without_the_histogram_is_an_error() -> None:
    with pytest.raises(BenchError, match="splitrelay_gc_pause_seconds"):
        parse_gc_metrics('# TYPE splitrelay_calls_live gauge\nsplitrelay_calls_live{process="0"} 1.0\n')


def test_a_window_counts_only_its_own_pauses_and_knows_when_its_max_is_exact() -> None:
    pauses = GcPauses()
    pauses.observe(2, 0.3)  # before the window: the relay's record
    start = parse_gc_metrics(metrics_text(pauses))
    pauses.observe(2, 0.004)
    pauses.observe(2, 0.006)
    pauses.observe(2, 0.15)
    end = parse_gc_metrics(metrics_text(pauses))
    window = pause_summary(start, end, 2)
    assert window["count"] == 3
    assert window["total_ms"] == pytest.approx(160.0)
    assert window["max_ms"] == pytest.approx(200.0) and window["max_exact"] is False  # the 0.2 bucket's bound
    assert 2.0 <= window["p50_ms"] <= 10.0  # within the 0.005-0.01 bucket region, interpolated
    pauses.observe(2, 0.4)  # a new record: exact
    later = parse_gc_metrics(metrics_text(pauses))
    after = pause_summary(end, later, 2)
    assert after["count"] == 1 and after["max_ms"] == pytest.approx(400.0) and after["max_exact"] is True
    assert pause_summary(later, later, 2) == {
        "count": 0,
        "total_ms": 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
        "max_exact": True,
    }


def test_a_pause_above_every_bound_has_no_finite_bucket_bound() -> None:
    pauses = GcPauses()
    pauses.observe(2, 5.0)
    start = parse_gc_metrics(metrics_text(GcPauses()))
    summary = pause_summary(start, parse_gc_metrics(metrics_text(pauses)), 2)
    assert summary["max_ms"] == pytest.approx(5000.0) and summary["max_exact"] is True


def test_proc_status_and_per_call_figures() -> None:
    status = "Name:\tpython\nVmRSS:\t  123456 kB\nThreads:\t3\n"
    assert parse_status(status) == (123456, 3)
    with pytest.raises(ValueError, match="VmRSS"):
        parse_status("Name:\tpython\n")
    assert per_call(1000, 5000, 10) == 400
    assert per_call(None, 5000, 10) is None and per_call(1, 2, 0) is None
    a, b = ProcSample(10.0, 1, 1), ProcSample(10.5, 1, 1)
    assert cpu_us_per_call_s(a, b, 10.0, 100) == pytest.approx(500.0)  # 5% of a core over 100 calls
    assert cpu_us_per_call_s(a, b, 0.0, 100) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calls": 0}, "--calls"),
        ({"churn_per_s": -1}, "--churn-per-s"),
        ({"duration": 0}, "--duration"),
        ({"idle": 0}, "--idle"),
        ({"setup_concurrency": 65}, "--setup-concurrency"),
    ],
)
def test_config_limits(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChurnConfig(**kwargs)  # type: ignore[arg-type]


def test_the_tables_render_a_result() -> None:
    pauses = GcPauses()
    start = parse_gc_metrics(metrics_text(pauses))
    pauses.observe(2, 0.02)
    end = parse_gc_metrics(metrics_text(pauses))
    phase = {f"gen{g}": pause_summary(start, end, g) for g in (0, 1, 2)}
    result = {
        "variant": "frozen",
        "calls": 10,
        "ramp": {"seconds": 1.0} | phase,
        "idle": {"seconds": 2.0} | phase,
        "churn": {"seconds": 3.0, "hang_ups": 5, "set_ups": 5} | phase,
        "per_call": {
            "tracked_objects": 1.5,
            "frozen_objects": 400.0,
            "threads": 0.0,
            "rss_kb": 300.0,
            "idle_cpu_us_per_s": None,
        },
    }
    console = Console(width=200, record=True)
    console.print(pause_table([result]))
    console.print(per_call_table([result]))
    text = console.export_text()
    assert "churn (5 ended, 5 set up)" in text and "1: 15.00 / 19.90 / 20.0" in text
    assert "400.0" in text and "-" in text
    assert ChurnConfig(calls=5, ab=True).command().endswith("--ab")


async def test_each_churn_turn_hangs_up_a_different_call_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Turns overlap (a hang-up takes longer than a tick): none may pick a call another turn took."""
    import asyncio

    from splitrelay.bench import churn

    run = churn.Run("http://relay", "key", 1, setup_timeout=5.0)
    for i in range(40):
        run.callers[f"c{i}"] = object()  # type: ignore[assignment]
    hung: list[str] = []

    async def hang_up(http: object, call_id: str, caller: object) -> None:
        await asyncio.sleep(0.05)
        hung.append(call_id)
        run.ended += 1

    async def attach(http: object, frames: object, rtts: object) -> None:
        run.callers[f"new{run.made}"] = object()  # type: ignore[assignment]
        run.made += 1

    monkeypatch.setattr(run, "hang_up", hang_up)
    monkeypatch.setattr(run, "attach", attach)
    await churn._churn(run, None, rate=200.0, duration=0.1)
    assert len(hung) == len(set(hung)) == 20 - run.late
    assert hung == sorted(hung, key=lambda c: int(c[1:]))[: len(hung)] and hung[0] == "c0"
    assert len(run.callers) == 40  # every hang-up was followed by a set-up
