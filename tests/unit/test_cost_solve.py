"""Break-even volumes: solved analytically where we can, and as properties for random inputs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitrelay.cost.breakdown import CostModel
from splitrelay.cost.catalogue import PriceBook, load_catalogue
from splitrelay.cost.custom import Fleet, SplitEdge
from splitrelay.cost.hosted import (
    CloudflareRealtimeKit,
    GenericPerMinuteEdge,
    HostedRealtimeAPI,
    LiveKitCloud,
)
from splitrelay.cost.solve import CENT, BreakEven, break_even
from splitrelay.cost.traffic import Traffic

BOOK = load_catalogue()


def cost(model: CostModel, traffic: Traffic, minutes: float, book: PriceBook = BOOK) -> float:
    return model.monthly_cost(traffic.at(minutes), book).total_usd


def check_crossings(be: BreakEven, custom: CostModel, hosted: CostModel, traffic: Traffic) -> None:
    """Equal within a cent at an "equal" crossing; the order flips across every bracket."""
    previous = 0.0
    for c in be.crossings:
        low, high = c.bracket
        assert be.low <= low < high <= be.high and previous <= c.minutes
        assert low <= c.minutes <= high
        below = cost(custom, traffic, low) - cost(hosted, traffic, low)
        above = cost(custom, traffic, high) - cost(hosted, traffic, high)
        if c.custom_cheaper_above:
            assert below > 0 > above
        else:
            assert below < 0 < above
        if c.kind == "equal":
            assert abs(cost(custom, traffic, c.minutes) - cost(hosted, traffic, c.minutes)) <= CENT
        else:
            assert high - low <= 1e-9 * high * 1.01
        previous = c.minutes
    directions = [c.custom_cheaper_above for c in be.crossings]
    assert all(a != b for a, b in itertools.pairwise(directions))


def test_realtimekit_crossing_matches_the_algebra() -> None:
    # Between 256k minutes (AWS's 100 GB free used up) and 992k (DO duration still free), past the
    # Workers (10M) and DO (1M) free requests, the custom edge costs a floor of
    # Workers $5 + 4 relays + 4 public IPv4 + 4 x heartbeats + Global Accelerator, plus egress,
    # DT-Premium and requests per minute. RealtimeKit costs 0.001 M: solved for M.
    heartbeat = 4 * 3600 * 2 * 0.45 / 1e6 + 3600 * 2 * 0.128 * 12.5 / 1e6
    floor = (
        5 + 4 * 730 * (0.0816 + 0.005 + heartbeat) + 730 * 0.025 - 100 * 0.09 - 10e6 * 0.3e-6 - 1e6 * 0.15e-6
    )
    slope = 0.00039 * (0.09 + 0.015) + (7 / 3 + 60) * 0.3e-6 + (6 / 3 + 61) * 0.15e-6
    traffic = Traffic(1e6)
    be = break_even(SplitEdge(), CloudflareRealtimeKit(), traffic, BOOK)
    assert be.never is None and be.exhaustive
    (crossing,) = be.crossings
    assert crossing.kind == "equal" and crossing.custom_cheaper_above
    assert 256_410 < crossing.minutes < 992_063
    assert crossing.minutes == pytest.approx(floor / (0.001 - slope), abs=CENT / (0.001 - slope))
    check_crossings(be, SplitEdge(), CloudflareRealtimeKit(), traffic)


def test_engineering_cost_moves_break_even_to_about_ten_million() -> None:
    custom = SplitEdge(Fleet(engineering_usd=10_000))
    be = break_even(custom, CloudflareRealtimeKit(), Traffic(1e6), BOOK)
    (crossing,) = be.crossings
    assert 1e7 < crossing.minutes < 1.2e7


def test_bundled_transport_is_never_beaten_and_says_why() -> None:
    be = break_even(SplitEdge(), HostedRealtimeAPI(), Traffic(1e6), BOOK)
    assert be.crossings == ()
    assert be.never is not None and be.never.startswith("hosted is cheaper at every volume")
    assert "marginal cost ($0 per 1,000 min)" in be.never


def test_custom_cheaper_everywhere_says_why() -> None:
    be = break_even(SplitEdge(), HostedRealtimeAPI(with_model=True), Traffic(1e6), BOOK)
    assert be.crossings == ()
    assert be.never is not None and be.never.startswith("the custom edge is cheaper at every volume")


def test_floor_beyond_range_estimates_the_payback() -> None:
    custom = SplitEdge(Fleet(engineering_usd=10_000))
    # $0.12 per 1,000 min hosted against the custom edge's ~$0.114 marginal near 1e9.
    be = break_even(custom, GenericPerMinuteEdge(0.00006), Traffic(1e6), BOOK)
    assert be.crossings == ()
    assert be.never is not None and "fixed floor" in be.never and "would pay back near" in be.never


def test_every_crossing_is_reported_including_relay_steps() -> None:
    # A hosted price close to the custom edge's own marginal cost: the custom edge's relay steps
    # carry it above and below the hosted line several times.
    traffic = Traffic(1e6)
    custom, hosted = SplitEdge(), GenericPerMinuteEdge(0.00006)
    be = break_even(custom, hosted, traffic, BOOK)
    assert len(be.crossings) >= 3
    assert {c.kind for c in be.crossings} == {"equal", "step"}
    check_crossings(be, custom, hosted, traffic)


traffic_shapes = st.builds(
    Traffic,
    minutes=st.just(1e6),
    call_minutes=st.floats(0.5, 30),
    busy_hour_share=st.floats(0.02, 1),
    bitrate_kbps=st.floats(6, 128),
    overhead_bytes=st.floats(0, 120),
    frame_ms=st.sampled_from([10.0, 20.0, 40.0, 60.0]),
)
fleets = st.builds(
    Fleet,
    regions=st.integers(1, 4),
    min_instances_per_region=st.integers(1, 3),
    calls_per_core=st.floats(20, 2000),
    cores_per_instance=st.integers(1, 8),
    headroom=st.floats(1, 3),
    instance_type=st.sampled_from(["m7g.large", "c6i.large", "c7g.large"]),
    accelerators=st.integers(0, 2),
    engineering_usd=st.floats(0, 50_000),
)
hosted_options = st.one_of(
    st.builds(LiveKitCloud, agents=st.booleans()),
    st.just(CloudflareRealtimeKit()),
    st.builds(HostedRealtimeAPI, with_model=st.booleans()),
    st.builds(GenericPerMinuteEdge, rate=st.floats(1e-6, 0.01)),
)


@settings(max_examples=60, deadline=None)
@given(traffic_shapes, fleets, hosted_options, st.floats(1e4, 1e9), st.floats(1.0, 10.0))
def test_cost_never_falls_as_minutes_grow(
    traffic: Traffic, fleet: Fleet, hosted: CostModel, minutes: float, factor: float
) -> None:
    for model in (SplitEdge(fleet), hosted):
        assert cost(model, traffic, minutes * factor) >= cost(model, traffic, minutes) - 1e-9


@settings(max_examples=40, deadline=None)
@given(traffic_shapes, fleets, hosted_options)
def test_reported_break_evens_are_equal_and_flip_the_order(
    traffic: Traffic, fleet: Fleet, hosted: CostModel
) -> None:
    custom = SplitEdge(fleet)
    be = break_even(custom, hosted, traffic, BOOK)
    assert (be.never is None) == bool(be.crossings)
    check_crossings(be, custom, hosted, traffic)
