"""Every option's monthly cost, hand-computed from the catalogue at a few volumes.

Defaults: 3-minute calls, busy hour 10%, Opus 32 kbps + 50 B x 50 packets/s = 390,000 B = 0.00039 GB
per minute each way; relay m7g.large $0.0816/h, the catalogue's calls per core (relay.calls_per_core.arm:
the x86 measurement reused) x 2 cores, headroom 1.5, >= 2 per region x 2 regions; 730 h a month. If a
catalogue price changes, these expectations must be redone by hand: that is the point of them. The
relay's calls per core is a measurement that moves with the relay: it is read from the catalogue, once,
and the relay counts below follow it through ``relay_instances``.
"""

from __future__ import annotations

import math

import pytest

from splitrelay.cost.breakdown import CostModel, Metered, Stepped, Tier
from splitrelay.cost.catalogue import MEASURED_PREFIX, PriceBook, load_catalogue
from splitrelay.cost.custom import (
    CALLS_PER_CORE_SOURCE,
    MEASURED_CALLS_PER_CORE,
    MEASURED_CALLS_PER_CORE_KEY,
    Fleet,
    SplitEdge,
)
from splitrelay.cost.errors import CostInputError
from splitrelay.cost.hosted import (
    CloudflareRealtimeKit,
    GenericPerMinuteEdge,
    HostedRealtimeAPI,
    LiveKitCloud,
)
from splitrelay.cost.traffic import Traffic

CENT = 0.005
PER_CORE = load_catalogue().value("relay.calls_per_core.arm")
"""The default m7g.large's calls per core (the x86 measurement reused): the one figure these take as given."""
PEAK_PER_REGION_1E8 = 5_479.45 / 2  # 1e8 minutes / (730 / 24) days x 10% busy hour / 60, two regions
RELAY_HOUR = 0.0816 + 0.005  # an m7g.large and its public IPv4, per hour (heartbeats on top)


def relay_instances(peak_per_region: float, per_core: float = PER_CORE, regions: int = 2) -> int:
    """Relay instances for a peak: per region ceil(peak x 1.5 headroom / (calls per core x 2 cores)),
    at least 2, times the regions."""
    return regions * max(2, math.ceil(peak_per_region * 1.5 / (per_core * 2)))


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return load_catalogue()


def total(model: CostModel, minutes: float, book: PriceBook) -> float:
    return model.monthly_cost(Traffic(minutes), book).total_usd


def items(model: CostModel, minutes: float, book: PriceBook) -> dict[str, float]:
    return {i.label: i.usd for i in model.monthly_cost(Traffic(minutes), book).items}


def test_livekit_by_hand(book: PriceBook) -> None:
    # 10k min: Ship $50; 20k connection-min < 150k and 7.8 GB < 250 GB included.
    assert total(LiveKitCloud(), 1e4, book) == pytest.approx(50, abs=CENT)
    # 100k min: Ship $50 + (200k - 150k) x $0.0005 (78 GB < 250 GB).
    assert total(LiveKitCloud(), 1e5, book) == pytest.approx(75, abs=CENT)
    # 1M min: Ship would be $50 + 1.85M x $0.0005 + (780 - 250) GB x $0.12 = $1,038.60;
    # Scale is $500 + (2M - 1.5M) x $0.0004 (780 GB < 3 TB) = $700: Scale is bought.
    at_1m = LiveKitCloud().monthly_cost(Traffic(1e6), book)
    assert at_1m.plan == "Scale" and not at_1m.contract_required
    assert at_1m.total_usd == pytest.approx(700, abs=CENT)
    # Agents: Scale + (1M - 50k) x $0.01 = $10,200 (Ship would be $1,038.60 + 995k x $0.01).
    assert total(LiveKitCloud(agents=True), 1e6, book) == pytest.approx(700 + 9_500, abs=CENT)
    # 10M min: peak 548 calls = 1,096 connections > Ship's 1,000: Scale, $500 + 18.5M x $0.0004
    # + (7,800 - 3,000) GB x $0.10 = $8,380.
    at_10m = LiveKitCloud().monthly_cost(Traffic(1e7), book)
    assert (at_10m.plan, at_10m.contract_required) == ("Scale", False)
    assert at_10m.total_usd == pytest.approx(8_380, abs=CENT)
    # 100M min: 10,959 connections > Scale's 5,000: contract required, priced at Scale's rates.
    at_100m = LiveKitCloud().monthly_cost(Traffic(1e8), book)
    assert (at_100m.plan, at_100m.contract_required) == ("Scale", True)
    assert at_100m.total_usd == pytest.approx(500 + 198.5e6 * 0.0004 + 75_000 * 0.10, abs=CENT)
    assert items(LiveKitCloud(), 1e5, book)["Plan fee (Ship)"] == 50


def test_realtimekit_by_hand(book: PriceBook) -> None:
    for minutes in (1e4, 1e6, 1e9):
        # Two audio-only participants per call-minute at $0.0005.
        assert total(CloudflareRealtimeKit(), minutes, book) == pytest.approx(minutes * 2 * 0.0005, abs=CENT)


def test_hosted_realtime_api_by_hand(book: PriceBook) -> None:
    assert total(HostedRealtimeAPI(), 1e6, book) == 0
    # Input: 10 tokens/s x 50% x 60 s = 300 tokens per minute -> 3e8 tokens x $32/M = $9,600.
    # Output: 20 tokens/s x 50% x 60 s = 600 tokens per minute -> 6e8 tokens x $64/M = $38,400.
    with_model = items(HostedRealtimeAPI(with_model=True), 1e6, book)
    assert with_model["Model audio input tokens"] == pytest.approx(9_600)
    assert with_model["Model audio output tokens"] == pytest.approx(38_400)
    assert with_model["Transport (bundled)"] == 0


def test_generic_edge_by_hand(book: PriceBook) -> None:
    assert total(GenericPerMinuteEdge(0.002, "Daily"), 1e6, book) == pytest.approx(4_000)
    with pytest.raises(CostInputError, match=r"--generic-rate: must be in \[0, 1\]"):
        GenericPerMinuteEdge(2.0)


HEARTBEAT_PER_INSTANCE_HOUR = 4 * 3600 * 2 * (0.30 + 0.15) / 1e6 + 3600 * 2 * 0.128 * 12.5 / 1e6
"""Two relay processes beat 4 times a second: a Worker and a DO request each, the object awake."""


def test_custom_edge_at_one_million_by_hand(book: PriceBook) -> None:
    lines = items(SplitEdge(), 1e6, book)
    calls = 1e6 / 3
    # Workers: 7 per call + 60 per call-minute (the client reads the record every second).
    assert lines["Workers requests"] == pytest.approx((7 * calls + 60e6 - 10e6) * 0.30 / 1e6)  # $15.70
    assert lines["Workers CPU time"] == 0  # 13.3M CPU-ms < 30M
    # DO: 6 per call + 61 per call-minute (reads and the 60 s probe alarm).
    do_requests = 6 * calls + 61e6
    assert lines["Durable Objects requests (alarms included)"] == pytest.approx(
        (do_requests - 1e6) * 0.15 / 1e6
    )
    assert lines["Durable Objects duration"] == pytest.approx(
        (do_requests * 0.05 * 0.128 - 400e3) * 12.5 / 1e6
    )  # $0.04
    assert lines["Durable Objects rows written"] == 0  # 4.67M rows < 50M
    assert lines["Durable Objects storage"] == 0  # deleted 30 s after each call: 0.0004 GB-month
    assert lines["Realtime SFU + TURN egress"] == 0
    assert lines["Workers Paid plan"] == 5
    # Peak 54.8 calls, 27.4 per region x 1.5 / (2 cores x calls per core) -> 1, but at least 2 per region.
    assert relay_instances(27.4) == 4
    assert lines["Relay fleet"] == pytest.approx(4 * 730 * 0.0816)
    assert lines["Public IPv4"] == pytest.approx(4 * 730 * 0.005)
    assert lines["Relay liveness (heartbeats)"] == pytest.approx(4 * 730 * HEARTBEAT_PER_INSTANCE_HOUR)
    # 390 GB relay -> SFU, 100 GB free, 290 GB x $0.09.
    assert lines["AWS data transfer out"] == pytest.approx(26.10)
    assert lines["Global Accelerator"] == pytest.approx(730 * 0.025)
    assert lines["Global Accelerator DT-Premium"] == pytest.approx(390 * 0.015)
    assert total(SplitEdge(), 1e6, book) == pytest.approx(404.594, abs=CENT)


def test_custom_edge_at_one_hundred_million_by_hand(book: PriceBook) -> None:
    lines = items(SplitEdge(), 1e8, book)
    calls = 1e8 / 3
    assert lines["Workers requests"] == pytest.approx((7 * calls + 6e9 - 10e6) * 0.30 / 1e6)  # $1,867
    assert lines["Workers CPU time"] == pytest.approx((40 * calls - 30e6) * 0.02 / 1e6)  # $26.07
    do_requests = 6 * calls + 6.1e9
    assert lines["Durable Objects requests (alarms included)"] == pytest.approx(
        (do_requests - 1e6) * 0.15 / 1e6
    )
    assert lines["Durable Objects duration"] == pytest.approx((do_requests * 0.0064 - 400e3) * 12.5 / 1e6)
    # Rows written: 8 per call + 2 per call-minute = 466.7M, 50M free, $1 per million.
    assert lines["Durable Objects rows written"] == pytest.approx((8 * calls + 2e8 - 50e6) / 1e6)
    # 16 KB per call for 3.5 minutes of a 43,800-minute month: 0.043 GB-month, under 5 included.
    assert lines["Durable Objects storage"] == 0
    assert lines["Realtime SFU + TURN egress"] == pytest.approx(77_000 * 0.05)
    # Peak 5,479 calls; per region 2,740 x 1.5 / (2 x calls per core), rounded up, x 2 regions x 730 h
    # (at 400 calls per core: 5.14 -> 6, 12 instances).
    instances = relay_instances(PEAK_PER_REGION_1E8)
    assert relay_instances(PEAK_PER_REGION_1E8, per_core=400) == 12
    assert lines["Relay fleet"] == pytest.approx(instances * 730 * 0.0816)
    assert lines["Public IPv4"] == pytest.approx(instances * 730 * 0.005)
    assert lines["Relay liveness (heartbeats)"] == pytest.approx(
        instances * 730 * HEARTBEAT_PER_INSTANCE_HOUR
    )
    # 39,000 GB out, 100 free: 10,240 GB x $0.09 + 28,660 GB x $0.085.
    assert lines["AWS data transfer out"] == pytest.approx(10_240 * 0.09 + 28_660 * 0.085)
    assert lines["Global Accelerator DT-Premium"] == pytest.approx(39_000 * 0.015)
    assert total(SplitEdge(), 1e8, book) == pytest.approx(sum(lines.values()))
    # $12,542.59 with 12 relay instances; each one more adds its hours, IPv4 and heartbeats.
    extra = (instances - 12) * 730 * (RELAY_HOUR + HEARTBEAT_PER_INSTANCE_HOUR)
    assert total(SplitEdge(), 1e8, book) == pytest.approx(12_542.59 + extra, abs=CENT)


def test_custom_edge_options_by_hand(book: PriceBook) -> None:
    base = total(SplitEdge(), 1e6, book)
    assert total(SplitEdge(Fleet(engineering_usd=10_000)), 1e6, book) == pytest.approx(base + 10_000)
    no_ga = items(SplitEdge(Fleet(accelerators=0)), 1e6, book)
    assert "Global Accelerator" not in no_ga and "Global Accelerator DT-Premium" not in no_ga
    # Three regions at the redundancy floor: 6 instances.
    assert items(SplitEdge(Fleet(regions=3)), 1e6, book)["Relay fleet"] == pytest.approx(6 * 730 * 0.0816)


def test_the_relays_calls_per_core_is_the_worst_case_measurement(book: PriceBook) -> None:
    """One place: the catalogue's x86 figure, measured (not an assumption) by the command its source
    names, under the worst case measured (AES-CM + HMAC-SHA1-80, a bursty agent); Graviton reuses it,
    as an assumption."""
    x86 = book[MEASURED_CALLS_PER_CORE_KEY]
    assert (MEASURED_CALLS_PER_CORE, CALLS_PER_CORE_SOURCE) == (x86.value, x86.source)
    assert x86.measured and not x86.assumption and x86.source.startswith(MEASURED_PREFIX)
    for needle in ("splitrelay bench relay", "--srtp-profile cm80", "--agent burst", " at "):
        assert needle in x86.source
    arm = book["relay.calls_per_core.arm"]
    assert arm.assumption and arm.value == x86.value and "NOT measured on Graviton" in arm.source


def test_relay_step_lands_exactly_on_capacity() -> None:
    # 1 unit per 100 minutes per group: at 300 minutes exactly 3 units, just above it 4.
    fleet = Stepped(
        "r",
        "instance-hours",
        groups=2,
        minimum=1,
        per_minute=0.01,
        hours=730,
        price_per_hour=1.0,
        detail="",
        price_keys=(),
    )
    assert fleet.count(300.0) == 6
    assert fleet.count(300.0 * (1 + 1e-9)) == 8
    assert fleet.count(50.0) == 2  # the minimum per group
    assert fleet.breakpoints(50, 500).points == (100.0, 200.0, 300.0, 400.0)


def test_metered_tiers_and_free_allowance() -> None:
    tiers = (Tier(10, 2.0), Tier(math.inf, 1.0))
    egress = Metered("e", "GB", per_minute=1.0, tiers=tiers, detail="", price_keys=(), included=5)
    assert egress.line_item(5).usd == 0
    assert egress.line_item(10).usd == 10  # 5 billable x $2
    assert egress.line_item(25).usd == 10 * 2 + 10 * 1
    assert egress.breakpoints(0, 100).points == (5.0, 15.0)


def test_custom_breakpoints_include_free_tiers_and_relay_steps(book: PriceBook) -> None:
    points = SplitEdge().breakpoints(Traffic(1e6), book, 1e4, 1e9)
    assert points.complete
    assert any(p == pytest.approx(1000 / 0.00078) for p in points.points)  # SFU's 1,000 GB
    assert any(p == pytest.approx(100 / 0.00039) for p in points.points)  # AWS's 100 GB
    step = (
        2 * (2 * PER_CORE) / 1.5 / (0.1 / (730 / 24 * 60))
    )  # per-region capacity x regions / peak per minute
    assert any(p == pytest.approx(2 * step) for p in points.points)


def test_line_items_add_up(book: PriceBook) -> None:
    for model in (SplitEdge(), LiveKitCloud(agents=True), CloudflareRealtimeKit(), HostedRealtimeAPI(True)):
        breakdown = model.monthly_cost(Traffic(3e7), book)
        assert breakdown.total_usd == pytest.approx(sum(i.usd for i in breakdown.items))
        assert breakdown.per_1000_minutes == pytest.approx(breakdown.total_usd / 3e4)
        assert all(i.usd >= 0 and i.quantity >= 0 for i in breakdown.items)
