"""How long the cyclic garbage collector stops the relay, by generation, for /metrics.

A collection stops every call of the process: a full (generation 2) one over a thousand live calls took
about 250 ms before calls were frozen (relay/gc_freeze.py), twelve frames late for every caller. The
pauses are invisible in CPU figures, so the relay times each collection itself: one ``gc.callbacks``
entry, two ``perf_counter`` readings and a bucket search per collection.
"""

from __future__ import annotations

import bisect
import gc
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

GENERATIONS = 3
PAUSE_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
)
"""Upper bounds of the pause histogram (seconds): 20 ms, one audio frame, is the line that matters."""
COUNT_OBJECTS_ENV = "SPLITRELAY_GC_COUNT_OBJECTS"
"""``1``: /metrics also counts the tracked objects a full collection would scan (``gc.get_objects()``:
a walk of the whole heap, milliseconds at a thousand calls, so only for benchmarks: bench churn sets it)."""


class GcPauses:
    """Collection pauses by generation: a histogram, the sum, the longest, and what was collected.

    ``install()`` adds it to ``gc.callbacks``; ``uninstall()`` removes it. ``observe`` is the arithmetic,
    so tests can feed it pauses without collecting.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self.buckets = [[0] * (len(PAUSE_BUCKETS_S) + 1) for _ in range(GENERATIONS)]
        """Per generation, counts per bucket (not cumulative); the last one is above every bound."""
        self.sum_s = [0.0] * GENERATIONS
        self.max_s = [0.0] * GENERATIONS
        self.collected = [0] * GENERATIONS
        self.uncollectable = [0] * GENERATIONS

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        self.observe(
            info["generation"], self._clock() - self._started, info["collected"], info["uncollectable"]
        )

    def observe(self, generation: int, seconds: float, collected: int = 0, uncollectable: int = 0) -> None:
        """One collection of ``generation`` that stopped the process ``seconds`` long."""
        self.buckets[generation][bisect.bisect_left(PAUSE_BUCKETS_S, seconds)] += 1
        self.sum_s[generation] += seconds
        if seconds > self.max_s[generation]:
            self.max_s[generation] = seconds
        self.collected[generation] += collected
        self.uncollectable[generation] += uncollectable

    def count(self, generation: int) -> int:
        return sum(self.buckets[generation])

    def cumulative(self, generation: int) -> list[tuple[str, float]]:
        """The histogram as Prometheus wants it: (upper bound, count at or below it), ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*PAUSE_BUCKETS_S, float("inf")), self.buckets[generation], strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        while self in gc.callbacks:
            gc.callbacks.remove(self)


class GcPauseCollector(Collector):
    """Prometheus families over a ``GcPauses`` (and the frozen heap's size), labelled by process."""

    def __init__(
        self,
        pauses: GcPauses,
        process: str = "0",
        frozen: Callable[[], int] | None = None,
        tracked: Callable[[], int] | None = None,
    ) -> None:
        """``frozen``: the permanent generation's size as last counted by whoever counts it (counting
        walks it: ~4 ms per 460,000 objects, too slow for every scrape; relay/gc_freeze.py counts it
        now and then). ``tracked``: how many objects a full collection scans. With
        ``SPLITRELAY_GC_COUNT_OBJECTS=1`` both are counted exactly at each scrape (benchmarks)."""
        self.pauses = pauses
        self._process = process
        counting = os.environ.get(COUNT_OBJECTS_ENV) == "1"
        self._frozen = gc.get_freeze_count if counting else frozen
        self._tracked = tracked if tracked is not None else (_tracked_objects if counting else None)

    def collect(self) -> Iterator[Any]:
        labels = ["process", "generation"]
        hist = HistogramMetricFamily(
            "splitrelay_gc_pause_seconds",
            "How long each cyclic garbage collection stopped the process (every call waits)",
            labels=labels,
        )
        collected = CounterMetricFamily(
            "splitrelay_gc_collected_objects", "Objects the cyclic collector freed", labels=labels
        )
        uncollectable = CounterMetricFamily(
            "splitrelay_gc_uncollectable_objects", "Objects the cyclic collector found but could not free",
            labels=labels,
        )  # fmt: skip
        longest = GaugeMetricFamily(
            "splitrelay_gc_pause_max_seconds", "The longest pause of each generation so far", labels=labels
        )
        for generation in range(GENERATIONS):
            key = [self._process, str(generation)]
            hist.add_metric(key, self.pauses.cumulative(generation), self.pauses.sum_s[generation])
            collected.add_metric(key, float(self.pauses.collected[generation]))
            uncollectable.add_metric(key, float(self.pauses.uncollectable[generation]))
            longest.add_metric(key, self.pauses.max_s[generation])
        yield hist
        yield collected
        yield uncollectable
        yield longest
        if self._frozen is not None:
            frozen = GaugeMetricFamily(
                "splitrelay_gc_frozen_objects",
                "Objects in the permanent generation (gc.freeze: never scanned), as last counted",
                labels=["process"],
            )
            frozen.add_metric([self._process], float(self._frozen()))
            yield frozen
        if self._tracked is not None:
            tracked = GaugeMetricFamily(
                "splitrelay_gc_tracked_objects",
                "Objects a full collection scans now (not frozen); counted on request only",
                labels=["process"],
            )
            tracked.add_metric([self._process], float(self._tracked()))
            yield tracked


def _tracked_objects() -> int:
    return len(gc.get_objects())
