"""The track-switch benchmark's arithmetic on made-up arrivals: gap, baseline, breaks, duplicates."""

from __future__ import annotations

from splitrelay.bench.track_switch import Arrival, analyse

MS = 1_000_000


def test_gaps_baseline_duplicates_and_breaks() -> None:
    arrivals = [
        Arrival(0 * MS, 1, 100),
        Arrival(20 * MS, 1, 101),
        Arrival(40 * MS, 1, 102),  # switch to 2 sent at 45 ms
        Arrival(46 * MS, 1, 103),  # in flight: still the old source, not a duplicate
        Arrival(58 * MS, 2, 104),  # first of the new source: gap 12 ms
        Arrival(60 * MS, 1, 105),  # the old source after the new one's first: duplicated
        Arrival(78 * MS, 2, 106),
        Arrival(98 * MS, 2, 107),  # switch back to 1 sent at 100 ms
        Arrival(131 * MS, 1, 109),  # gap 33 ms, and the sequence skips one: a break
        Arrival(151 * MS, 1, 110),
    ]
    result = analyse("drain", arrivals, [(45 * MS, 2), (100 * MS, 1), (200 * MS, 2)], [3.0, 5.0, 4.0])
    assert (result.gap_p50_ms, result.gap_max_ms) == (22.5, 33.0)
    assert (result.duplicated, result.sequence_breaks, result.missed, result.switches) == (1, 1, 1, 3)
    # Baseline: consecutive packets of the expected source with no switch between them.
    assert result.baseline_p50_ms == 20.0 and result.baseline_p99_ms is not None
    assert result.update_p50_ms == 4.0


def test_no_arrivals_report_every_switch_missed() -> None:
    result = analyse("kill", [], [(1, 2), (2, 1)], [])
    assert (result.missed, result.gap_p50_ms, result.baseline_p50_ms) == (2, None, None)
