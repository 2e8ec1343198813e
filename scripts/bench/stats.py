"""The statistics every benchmark and the latency budget report: one percentile definition, one ratio.

Percentiles are by linear interpolation between closest ranks: the q-th percentile of n sorted values
sits at position q/100 x (n - 1), between the two values around it. That is numpy's default
(``method="linear"``) and a spreadsheet's PERCENTILE.INC, so every p50/p95/p99 the benchmarks print
(relay round trips, call latencies, edge CPU, emulator dwell, the budget's turns) is comparable with
the others and can be checked from the raw samples. Histogram estimates (the relay's Prometheus dwell
buckets) are a different thing: they interpolate within a bucket and say so where they are printed.

Stdlib only at import time; numpy arrays are accepted (sorted with numpy, then the same interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def _interpolate(ordered: Sequence[float] | np.ndarray[Any, Any], q: float) -> float | None:
    """The q-th percentile (0..100) of values already sorted ascending; None if there are none."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q: must be 0..100, got {q}")
    if len(ordered) == 0:
        return None
    position = q / 100.0 * (len(ordered) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None if empty."""
    return _interpolate(sorted(values), q)


def percentile_ms(samples_us: np.ndarray[Any, Any], q: float) -> float | None:
    """The q-th percentile (0..100) of microsecond samples in a numpy array, in ms; None when empty."""
    import numpy as np

    value = _interpolate(np.sort(samples_us, axis=None), q)
    return None if value is None else value / 1000


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or the base is not positive."""
    if value is None or base is None or base <= 0:
        return None
    return value / base
