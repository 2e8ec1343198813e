"""The userspace impairment model (relay/media/impair.py): its statistics match what was configured.

A simulated clock drives the stage: a 20 ms voice stream (and a sparse one, where jitter is not bent
by keeping order), 50,000 datagrams, fixed seeds. Tolerances are a few standard errors of each rate.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

import pytest

from splitrelay.relay.media.impair import ImpairmentError, ImpairStage, parse_impairment

N = 50_000


@dataclass
class Run:
    sent: int
    delivered: list[tuple[int, float]]  # (sequence, arrival time)
    stage: ImpairStage
    spacing: float

    @property
    def loss(self) -> float:
        return 1 - len({seq for seq, _ in self.delivered}) / self.sent

    def transit_ms(self) -> list[float]:
        return [(t - seq * self.spacing) * 1000 for seq, t in self.delivered]

    def rfc3550_jitter_ms(self) -> float:
        """The expectation of RFC 3550's estimator: the mean |D| of successive transit differences."""
        transit = self.transit_ms()
        return statistics.fmean(abs(b - a) for a, b in itertools.pairwise(transit))

    def loss_runs(self) -> list[int]:
        got = {seq for seq, _ in self.delivered}
        runs, current = [], 0
        for seq in range(self.sent):
            if seq in got:
                if current:
                    runs.append(current)
                current = 0
            else:
                current += 1
        return runs

    def inversions(self) -> int:
        seqs = [seq for seq, _ in self.delivered]
        return sum(1 for a, b in itertools.pairwise(seqs) if b < a)


def simulate(spec: str, spacing: float = 0.02, n: int = N) -> Run:
    now = [0.0]
    events: list[tuple[float, int, object]] = []
    delivered: list[tuple[int, float]] = []
    order = itertools.count()  # timers due at the same instant fire in the order they were set

    def schedule(delay: float, callback: object) -> None:
        events.append((now[0] + delay, next(order), callback))

    stage = ImpairStage(
        parse_impairment(spec),
        lambda data, _addr: delivered.append((int.from_bytes(data, "big"), now[0])),
        schedule=schedule,
        clock=lambda: now[0],
    )
    for seq in range(n):
        now[0] = seq * spacing
        # release what is due before this send, as an event loop would
        events.sort(key=lambda e: (e[0], e[1]))
        while events and events[0][0] <= now[0]:
            when, _, callback = events.pop(0)
            saved, now[0] = now[0], when
            callback()  # type: ignore[operator]
            now[0] = saved
        stage(seq.to_bytes(4, "big"), None)
    for when, _, callback in sorted(events, key=lambda e: (e[0], e[1])):
        now[0] = when
        callback()  # type: ignore[operator]
    return Run(n, delivered, stage, spacing)


def test_random_loss_is_the_configured_rate_and_independent() -> None:
    run = simulate("loss=2%,seed=1")
    assert run.loss == pytest.approx(0.02, abs=0.002)
    assert statistics.fmean(run.loss_runs()) == pytest.approx(1 / (1 - 0.02), abs=0.05)  # geometric
    assert run.inversions() == 0 and run.transit_ms() == [0.0] * len(run.delivered)


def test_bursty_loss_has_the_configured_rate_and_mean_burst_length() -> None:
    run = simulate("loss=5%,burst=4,seed=2")
    assert run.loss == pytest.approx(0.05, abs=0.006)
    assert statistics.fmean(run.loss_runs()) == pytest.approx(4.0, rel=0.1)
    assert max(run.loss_runs()) > 10  # the bursts a random model (1/0.05^10) would never show


def test_jitter_on_a_sparse_stream_is_the_configured_deviation() -> None:
    run = simulate("delay=100ms,jitter=10ms,seed=3", spacing=0.2, n=20_000)
    transit = run.transit_ms()
    assert statistics.fmean(transit) == pytest.approx(100.0, abs=0.5)
    assert statistics.pstdev(transit) == pytest.approx(10.0, rel=0.03)
    assert run.rfc3550_jitter_ms() == pytest.approx(10.0 * 2 / 3.14159265**0.5, rel=0.05)
    assert run.inversions() == 0


def test_jitter_on_a_voice_stream_keeps_order_and_gives_the_documented_receiver_jitter() -> None:
    run = simulate("loss=2%,delay=40ms,jitter=30ms,seed=4")
    assert run.inversions() == 0  # a FIFO: jitter never reorders
    assert run.loss == pytest.approx(0.02, abs=0.002)
    assert 16.0 <= run.rfc3550_jitter_ms() <= 22.0  # "about 19 ms" in the module's docstring
    assert min(run.transit_ms()) >= 0.0


def test_reordering_swaps_the_configured_fraction_with_the_next_datagram() -> None:
    for spec in ("reorder=1%,seed=5", "reorder=1%,delay=40ms,jitter=5ms,seed=6"):
        run = simulate(spec)
        assert run.stage.stats.reordered / N == pytest.approx(0.01, abs=0.0015), spec
        assert run.inversions() == run.stage.stats.reordered, spec
        assert run.loss == 0.0, spec


def test_duplication_delivers_the_configured_fraction_twice() -> None:
    run = simulate("duplicate=0.5%,seed=7")
    extra = len(run.delivered) - len({seq for seq, _ in run.delivered})
    assert extra == run.stage.stats.duplicated
    assert extra / N == pytest.approx(0.005, abs=0.001)


def test_the_same_seed_gives_the_same_run() -> None:
    assert (
        simulate("loss=3%,burst=2,jitter=20ms,seed=9", n=2000).delivered
        == simulate("loss=3%,burst=2,jitter=20ms,seed=9", n=2000).delivered
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("loss=2", "loss: expected a percentage such as 2%, got '2'"),
        ("loss=60%", "loss: must be 0%..50%"),
        ("jitter=30", "jitter: expected a time such as 30ms or 0.2s, got '30'"),
        ("delay=9s", "delay: must be 0..5000 ms, got 9000 ms"),
        ("burst=0.5,loss=1%", "burst: mean run of losses must be 1..1000 datagrams"),
        ("lose=2%", "unknown key 'lose' (known: loss, burst"),
        ("loss=1%,loss=2%", "loss: given twice"),
        ("loss", "expected key=value, got 'loss'"),
        ("", "give at least one of"),
        ("seed=x", "seed: expected a whole number"),
        ("loss=1%," * 40, "at most 200 characters"),
    ],
)
def test_bad_specs_name_the_key_and_the_limit(spec: str, message: str) -> None:
    with pytest.raises(ImpairmentError, match=None) as caught:
        parse_impairment(spec)
    assert message in str(caught.value)


def test_describe_round_trips() -> None:
    config = parse_impairment("loss=2%,burst=3,delay=40ms,jitter=30ms,reorder=1%,duplicate=0.5%")
    assert parse_impairment(config.describe()) == config
