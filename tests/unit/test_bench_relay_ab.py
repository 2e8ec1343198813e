"""`splitrelay bench relay`'s A/B of the native and the pure-Python per-datagram path: the table, the
0-loss figure per path and the JSON, from phase results (the run itself is a benchmark, not a test)."""

from __future__ import annotations

from rich.console import Console

from splitrelay.bench.relay import PhaseResult, Row, ab_table, zero_loss_calls
from tests.unit.test_bench_relay import _phase

DWELL = {"share_within_1ms": 1.0, "p50_ms": 0.05, "p99_ms": 0.4, "p99_above_top_bucket": False}


def _relay(cpu: float) -> PhaseResult:
    return _phase(subject_cpu=cpu, relay={"dwell_in": dict(DWELL), "dwell_out": dict(DWELL, p99_ms=0.7)})


def _render(rows: list[Row]) -> str:
    console = Console(width=220, record=True, file=open("/dev/null", "w"))
    console.print(ab_table(rows))
    return console.export_text()


def test_zero_loss_calls_per_path() -> None:
    rows = [
        Row(300, relay=_phase(), python=_phase(), baseline=_phase(subject_cpu=20.0)),
        Row(500, relay=_phase(), python=_phase(received=900), baseline=_phase(subject_cpu=30.0)),
        Row(700, relay=_phase(received=999), python=_phase(received=1), baseline=_phase()),
    ]
    assert zero_loss_calls(rows, "relay") == 500
    assert zero_loss_calls(rows, "python") == 300
    assert zero_loss_calls([Row(100, error="BenchError: x", relay=_phase())], "relay") is None


def test_ab_table_shows_both_paths_against_the_same_echo() -> None:
    rows = [
        Row(
            400,
            relay=_relay(60.0),
            python=_relay(90.0),
            baseline=_phase(subject_cpu=20.0),
        )
    ]
    text = _render(rows)
    assert "3.00x" in text and "4.50x" in text  # 60 / 20 and 90 / 20
    assert "python (SPLITRELAY_NATIVE=0)" in text
    assert "calls at 0 loss (of those run): native 400, python 400" in text
    as_json = rows[0].as_dict()
    assert as_json["path"] == "native"
    assert as_json["ratios"]["cpu"] == 3.0
    assert as_json["python_ratios"] == {"cpu": 4.5}
    assert "0.050 / 0.400" in text and "0.050 / 0.700" in text  # dwell in and out, p50 / p99


def test_a_failed_row_says_so_for_both_paths() -> None:
    text = _render([Row(400, error="BenchError: relay died")])
    assert text.count("error: BenchError: relay died") == 2
