"""Plans as data (issue 16): plan choice by hand and as a property, break-even at a plan boundary,
Durable Object storage, and the optional lines, each hand-computed from the catalogue.

Defaults: 3-minute calls, busy hour 10% of a 30.42-day month's daily minutes, so peak concurrent
calls = M x 0.1 / 1,825 and LiveKit connections = twice that; 0.00039 GB per minute each way.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from splitrelay.cli.cost import cost_app
from splitrelay.cost.breakdown import CostModel
from splitrelay.cost.catalogue import Price, PriceBook, load_catalogue
from splitrelay.cost.custom import Fleet, SplitEdge, architecture
from splitrelay.cost.errors import CostInputError
from splitrelay.cost.extras import Extras
from splitrelay.cost.hosted import CloudflareRealtimeKit, LiveKitCloud
from splitrelay.cost.options import choose_options
from splitrelay.cost.solve import break_even
from splitrelay.cost.traffic import Traffic
from tests.unit.test_cost_models import PEAK_PER_REGION_1E8, relay_instances

BOOK = load_catalogue()
CENT = 0.005
MINUTES_PER_PEAK_CALL = 730 / 24 * 60 / 0.1
"""Monthly minutes per busy-hour concurrent call at the default busy-hour share."""
runner = CliRunner()


def override(book: PriceBook, **values: float) -> PriceBook:
    """`livekit__plans__ship__month=...` style overrides, keeping each entry's unit."""
    changed = []
    for name, value in values.items():
        key = name.replace("__", ".")
        old = book[key]
        changed.append(Price(old.path, value, old.unit, "test", None, origin="test"))
    return book.with_overrides(changed, label="test")


def items(model: CostModel, minutes: float, book: PriceBook = BOOK) -> dict[str, float]:
    return {i.label: i.usd for i in model.monthly_cost(Traffic(minutes), book).items}


def total(model: CostModel, minutes: float, book: PriceBook = BOOK) -> float:
    return model.monthly_cost(Traffic(minutes), book).total_usd


def test_ship_is_bought_until_scale_is_cheaper() -> None:
    # Ship = 50 + (2M - 150k) x 0.0005 + (0.00078 M - 250) x 0.12 once past 320.5k minutes;
    # Scale = 500 flat below 750k. Equal at M = 555 / 0.0010936 = 507,498.
    switch = 555 / 0.0010936
    below = LiveKitCloud().monthly_cost(Traffic(switch * 0.99), BOOK)
    above = LiveKitCloud().monthly_cost(Traffic(switch * 1.01), BOOK)
    assert below.plan == "Ship" and above.plan == "Scale"
    assert below.total_usd == pytest.approx(0.0010936 * switch * 0.99 - 55, abs=CENT)
    assert above.total_usd == pytest.approx(500, abs=CENT)
    # The switch is a bend the solver is told about.
    points = LiveKitCloud().breakpoints(Traffic(1e6), BOOK, 1e4, 1e9).points
    assert any(p == pytest.approx(switch, rel=1e-9) for p in points)


def test_concurrency_caps_force_a_bigger_plan_or_a_contract() -> None:
    # Ship admits 1,000 connections = 500 calls = 9.125M minutes; Scale 5,000 = 45.625M minutes.
    ship_cap, scale_cap = 500 * MINUTES_PER_PEAK_CALL, 2500 * MINUTES_PER_PEAK_CALL
    cheap_ship = override(BOOK, livekit__plans__scale__month=50_000)  # Ship is cheaper while it may
    below = LiveKitCloud().monthly_cost(Traffic(ship_cap * 0.999), cheap_ship)
    above = LiveKitCloud().monthly_cost(Traffic(ship_cap * 1.001), cheap_ship)
    assert (below.plan, above.plan) == ("Ship", "Scale")
    gb = 0.00078 * ship_cap * 1.001
    assert above.total_usd == pytest.approx(
        50_000 + (2 * ship_cap * 1.001 - 1.5e6) * 0.0004 + (gb - 3000) * 0.10, abs=CENT
    )
    past = LiveKitCloud().monthly_cost(Traffic(scale_cap * 1.001), BOOK)
    assert (past.plan, past.contract_required) == ("Scale", True)
    assert not LiveKitCloud().monthly_cost(Traffic(scale_cap * 0.999), BOOK).contract_required


def test_break_even_at_a_plan_boundary_is_a_step() -> None:
    # With Scale at $5,000 LiveKit stays on Ship until its cap (9.125M minutes), then jumps to Scale.
    # An engineering cost that puts the custom edge between the two makes the cap the break-even.
    book = override(BOOK, livekit__plans__scale__month=5_000)
    cap = 500 * MINUTES_PER_PEAK_CALL
    traffic = Traffic(1e6)
    ship = total(LiveKitCloud(), cap * (1 - 1e-7), book)
    scale = total(LiveKitCloud(), cap * (1 + 1e-7), book)
    assert scale - ship > 2_000  # a real jump
    custom_base = total(SplitEdge(), cap, book)
    custom = SplitEdge(Fleet(engineering_usd=(ship + scale) / 2 - custom_base))
    be = break_even(custom, LiveKitCloud(), traffic, book)
    step = [c for c in be.crossings if c.kind == "step"]
    assert len(step) == 1 and step[0].custom_cheaper_above
    assert step[0].minutes == pytest.approx(cap, rel=1e-6)
    low, high = step[0].bracket
    assert total(custom, low, book) > total(LiveKitCloud(), low, book)
    assert total(custom, high, book) < total(LiveKitCloud(), high, book)


plan_books = st.fixed_dictionaries(
    {
        "livekit__plans__ship__month": st.floats(0, 2_000),
        "livekit__plans__ship__max_connections": st.floats(10, 1e6),
        "livekit__plans__ship__connection_minute": st.floats(0, 0.01),
        "livekit__plans__ship__included_connection_minutes": st.floats(0, 1e8),
        "livekit__plans__scale__month": st.floats(0, 20_000),
        "livekit__plans__scale__max_connections": st.floats(10, 1e6),
        "livekit__plans__scale__downstream_per_gb": st.floats(0, 1),
        "livekit__plans__scale__included_downstream_gb": st.floats(0, 1e5),
    }
)


@settings(max_examples=80, deadline=None)
@given(plan_books, st.booleans(), st.floats(1e3, 1e10), st.floats(1.0, 100.0))
def test_plan_choice_never_makes_cost_fall_as_minutes_grow(
    values: dict[str, float], agents: bool, minutes: float, factor: float
) -> None:
    book = override(BOOK, **values)
    model = LiveKitCloud(agents=agents)
    assert total(model, minutes * factor, book) >= total(model, minutes, book) - 1e-6


def test_durable_object_storage_and_requests() -> None:
    # Storage: KB per call kept for the call and 30 s after, as a share of the 43,800-minute month.
    book = override(BOOK, cloudflare__durable_objects__stored_kb_per_call=10_000)
    calls = 1e9 / 3
    gb_month = 10_000e3 / 1e9 * calls * 3.5 / 43_800
    assert items(SplitEdge(), 1e9, book)["Durable Objects storage"] == pytest.approx((gb_month - 5) * 0.20)
    # Requests: 6 per call + 61 per call-minute (1/s reads + the 60 s probe alarm); at 1e7 minutes.
    expected = (6 * 1e7 / 3 + 61e7 - 1e6) * 0.15 / 1e6
    assert items(SplitEdge(), 1e7)["Durable Objects requests (alarms included)"] == pytest.approx(expected)
    # Rows written: 8 per call + 2 per call-minute, 50M free, $1 per million; at 1e8 minutes.
    assert items(SplitEdge(), 1e8)["Durable Objects rows written"] == pytest.approx(
        (8e8 / 3 + 2e8 - 5e7) / 1e6
    )


@pytest.mark.parametrize("minutes", [1e6, 1e8])
def test_optional_network_lines_by_hand(minutes: float) -> None:
    gb = 0.00039 * minutes  # one direction
    cross_az = items(SplitEdge(Fleet(gpu_placement="cross-az")), minutes)
    assert cross_az["Relay <-> GPU transfer (cross-az)"] == pytest.approx(2 * gb * 2 * 0.01)
    cross_region = items(SplitEdge(Fleet(gpu_placement="cross-region")), minutes)
    assert cross_region["Relay <-> GPU transfer (cross-region)"] == pytest.approx(2 * gb * 0.02)
    assert not any(k.startswith("Relay <-> GPU") for k in items(SplitEdge(), minutes))
    nat = items(SplitEdge(Fleet(nat_gateway=True)), minutes)
    assert nat["NAT gateway"] == pytest.approx(2 * 730 * 0.045)
    assert nat["NAT gateway data processed"] == pytest.approx(2 * gb * 0.045)
    assert "Public IPv4" not in items(SplitEdge(Fleet(public_ipv4=False)), minutes)
    instances = 4 if minutes == 1e6 else relay_instances(PEAK_PER_REGION_1E8)
    assert items(SplitEdge(), minutes)["Public IPv4"] == pytest.approx(instances * 730 * 0.005)
    saved = items(SplitEdge(Fleet(savings_plan=0.3)), minutes)
    assert saved["Relay fleet"] == pytest.approx(instances * 730 * 0.0816 * 0.7)


def test_architecture_picks_calls_per_core() -> None:
    assert [architecture(t) for t in ("m7g.large", "c6gn.xlarge", "c6i.large", "g5.xlarge", "m7a.large")] == [
        "arm",
        "arm",
        "x86",
        "x86",
        "x86",
    ]
    # Another (assumed) Graviton figure: at 100M, per region 2,740 x 1.5 / 400 = 10.3 -> 11 instances.
    book = override(BOOK, relay__calls_per_core__arm=200)
    assert items(SplitEdge(), 1e8, book)["Relay fleet"] == pytest.approx(22 * 730 * 0.0816)
    # x86 keeps its measured figure.
    x86 = relay_instances(PEAK_PER_REGION_1E8, per_core=BOOK.value("relay.calls_per_core.x86"))
    assert items(SplitEdge(Fleet(instance_type="c6i.large")), 1e8, book)["Relay fleet"] == pytest.approx(
        x86 * 730 * 0.085
    )
    assert items(SplitEdge(Fleet(calls_per_core=200)), 1e8)["Relay fleet"] == pytest.approx(22 * 730 * 0.0816)


@pytest.mark.parametrize("minutes", [1e6, 1e7])
def test_shared_lines_by_hand(minutes: float) -> None:
    peak = minutes / MINUTES_PER_PEAK_CALL
    extras = Extras(sip_per_minute=0.004, gpu_hour=1.0, calls_per_gpu=20, agent_host_hour=0.1)
    models = {m.name: m for m in choose_options("all", Fleet(), False, False, None, "", extras)}
    gpus = math.ceil(peak / 20) * 730 * 1.0
    hosts = math.ceil(peak / 50) * 730 * 0.1
    for name, plain in (
        ("custom", SplitEdge()),
        ("livekit", LiveKitCloud()),
        ("realtimekit", CloudflareRealtimeKit()),
    ):
        lines = items(models[name], minutes)
        assert lines["Phone minutes (SIP trunk)"] == pytest.approx(0.004 * minutes)
        assert lines["Your model (GPUs)"] == pytest.approx(gpus)
        assert lines["Agent hosts"] == pytest.approx(hosts)
        assert total(models[name], minutes) == pytest.approx(
            total(plain, minutes) + 0.004 * minutes + gpus + hosts
        )
    # The realtime API carries its own tokens (all in) and no GPU or agent host line.
    api = items(models["realtime-api"], minutes)
    assert api["Model audio output tokens"] == pytest.approx(600 * minutes * 64 / 1e6)
    assert "Your model (GPUs)" not in api and "Agent hosts" not in api
    assert api["Phone minutes (SIP trunk)"] == pytest.approx(0.004 * minutes)
    # LiveKit hosting the agent bills agent minutes and skips the agent host.
    hosted_agent = choose_options("livekit", Fleet(), True, False, None, "", extras)[0]
    assert "Agent hosts" not in items(hosted_agent, minutes)
    per_minute = choose_options("custom", Fleet(), False, False, None, "", Extras(model_per_minute=0.01))[0]
    assert items(per_minute, minutes)["Your model"] == pytest.approx(0.01 * minutes)


def test_shared_line_inputs_are_checked() -> None:
    with pytest.raises(CostInputError, match="--gpu-hour: needs --calls-per-gpu"):
        Extras(gpu_hour=1.0)
    with pytest.raises(CostInputError, match="--model-rate: give the model as"):
        Extras(model_per_minute=0.01, gpu_hour=1.0, calls_per_gpu=10)
    with pytest.raises(CostInputError, match="--gpu-placement: must be one of same-az"):
        Fleet(gpu_placement="moon")
    with pytest.raises(CostInputError, match=r"--savings-plan: must be in \[0, 0.9\]"):
        Fleet(savings_plan=1.5)


def test_cli_all_in_flags_end_to_end() -> None:
    result = runner.invoke(
        cost_app,
        [
            "--json",
            "--model-rate",
            "0.01",
            "--sip-rate",
            "0.004",
            "--gpu-placement",
            "cross-az",
            "--nat-gateway",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["contains"] == "transport + phone minutes + model"
    options = {o["name"]: o for o in data["at_volume"]["options"]}
    custom = {i["label"]: i["usd"] for i in options["custom"]["line_items"]}
    assert custom["Your model"] == pytest.approx(10_000)
    assert custom["Phone minutes (SIP trunk)"] == pytest.approx(4_000)
    assert custom["Relay <-> GPU transfer (cross-az)"] == pytest.approx(15.60)
    assert "NAT gateway" in custom
    # The realtime API is all in (tokens $48,000 + phone) and may now be compared and marked.
    assert options["realtime-api"]["monthly_usd"] == pytest.approx(48_000 + 4_000)
    assert data["at_volume"]["cheapest"] == "custom"


def test_cli_plot_title_follows_inclusions(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "p.svg"
    result = runner.invoke(cost_app, ["--plot", str(path), "--model-rate", "0.01", "--engineering", "5000"])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert "transport + model + engineering" in text
    assert "Transport cost:" not in text


def test_cli_warns_and_errors_clearly() -> None:
    result = runner.invoke(cost_app, ["--busy-hour-share", "0.01", "--options", "custom"])
    assert result.exit_code == 0
    assert "warning: --busy-hour-share 0.01 is below 1/24" in result.stderr
    result = runner.invoke(cost_app, ["-m=-5"])
    assert result.exit_code == 2
    assert "a short option takes no '='" in result.stderr
    result = runner.invoke(cost_app, ["-m", "1e12", "--options", "custom"])
    assert result.exit_code == 0
    assert "at 1T call-minutes a month" in result.stdout
    result = runner.invoke(cost_app, ["--gpu-hour", "2"])
    assert result.exit_code == 2 and "--gpu-hour: needs --calls-per-gpu" in result.stderr


def test_cli_fleet_and_agent_flags_end_to_end() -> None:
    args = ["--json", "--savings-plan", "0.3", "--no-public-ipv4", "--gpu-placement", "cross-region"]
    args += [
        "--gpu-hour",
        "1.006",
        "--calls-per-gpu",
        "20",
        "--agent-host-hour",
        "0.1",
        "--calls-per-agent-host",
        "25",
    ]
    result = runner.invoke(cost_app, [*args, "--livekit-agents", "--options", "custom,livekit"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["contains"] == "transport + model + agent hosting"
    options = {
        o["name"]: {i["label"]: i["usd"] for i in o["line_items"]} for o in data["at_volume"]["options"]
    }
    peak = 1e6 / MINUTES_PER_PEAK_CALL  # 54.8 calls
    custom = options["custom"]
    assert custom["Relay fleet"] == pytest.approx(4 * 730 * 0.0816 * 0.7)
    assert "Public IPv4" not in custom
    assert custom["Relay <-> GPU transfer (cross-region)"] == pytest.approx(2 * 390 * 0.02)
    assert custom["Your model (GPUs)"] == pytest.approx(math.ceil(peak / 20) * 730 * 1.006)
    assert custom["Agent hosts"] == pytest.approx(math.ceil(peak / 25) * 730 * 0.1)
    # LiveKit hosts the agent itself: agent minutes past Scale's 50k, no agent host line.
    livekit = options["livekit"]
    assert livekit["Agent session minutes"] == pytest.approx((1e6 - 50_000) * 0.01)
    assert "Agent hosts" not in livekit
    assert livekit["Your model (GPUs)"] == pytest.approx(custom["Your model (GPUs)"])


def test_with_model_alone_is_not_like_for_like() -> None:
    # The realtime API's tokens against transport-only options: shown, never marked cheapest, said so.
    result = runner.invoke(cost_app, ["--json", "--with-model"])
    assert result.exit_code == 0, result.output
    options = {o["name"]: o for o in json.loads(result.stdout)["at_volume"]["options"]}
    assert options["realtime-api"]["monthly_usd"] == pytest.approx(48_000)
    assert "other options carry no model" in options["realtime-api"]["not_comparable"]
    assert options["custom"]["not_comparable"] is None
    table = runner.invoke(cost_app, ["--with-model"])
    assert "[not like for like: includes its model's tokens" in " ".join(table.stdout.split())
