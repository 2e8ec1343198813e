"""The report as data: costs at the chosen volume, a sweep over volumes, break-evens and the
assumptions behind them; and its two machine-readable forms, JSON and CSV.

The terminal table, the JSON, the CSV and the plot are all drawn from one `Report`, so they can
never disagree.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

from splitrelay.cost.breakdown import CostBreakdown, CostModel
from splitrelay.cost.catalogue import PriceBook
from splitrelay.cost.custom import Fleet, SplitEdge, describe_fleet
from splitrelay.cost.extras import WithExtras, base_model
from splitrelay.cost.hosted import HostedRealtimeAPI, LiveKitCloud
from splitrelay.cost.solve import BreakEven, break_even
from splitrelay.cost.traffic import Traffic

SWEEP_MINUTES = (*(m * 10.0**e for e in range(4, 9) for m in (1, 3)), 1e9)
"""Volumes in the sweep table: 10k, 30k, 100k ... 300M, 1B minutes a month (the solver's range)."""


@dataclass(frozen=True)
class SweepRow:
    minutes: float
    monthly_usd: dict[str, float]
    plans: dict[str, str]
    """The plan each planned option buys at this volume ("Scale", "Scale, contract")."""


@dataclass(frozen=True)
class Report:
    """Everything `splitrelay cost` shows, computed once."""

    traffic: Traffic
    prices: PriceBook
    models: tuple[CostModel, ...]
    at_volume: tuple[CostBreakdown, ...]
    sweep: tuple[SweepRow, ...]
    break_evens: tuple[BreakEven, ...]
    assumptions: tuple[str, ...]

    def cheapest_of(self, costs: dict[str, float]) -> str:
        """The lowest cost among options that can be bought on their own (the first on a tie)."""
        eligible = [name for name in costs if not bundled(self.model(name))] or list(costs)
        return min(eligible, key=lambda name: costs[name])

    @property
    def cheapest(self) -> str:
        return self.cheapest_of({b.option: b.total_usd for b in self.at_volume})

    @property
    def fleet(self) -> Fleet | None:
        return _fleet(self.models)

    def model(self, name: str) -> CostModel:
        return next(m for m in self.models if m.name == name)


def build_report(traffic: Traffic, prices: PriceBook, models: tuple[CostModel, ...]) -> Report:
    """Cost every option at `traffic`, over the sweep, and solve custom-vs-hosted break-evens."""
    at_volume = tuple(m.monthly_cost(traffic, prices) for m in models)
    sweep = tuple(_sweep_row(traffic.at(minutes), prices, models) for minutes in SWEEP_MINUTES)
    customs = [m for m in models if m.kind == "custom"]
    break_evens = tuple(
        break_even(custom, hosted, traffic, prices)
        for custom in customs
        for hosted in models
        if hosted.kind == "hosted"
    )
    return Report(
        traffic, prices, models, at_volume, sweep, break_evens, _assumptions(traffic, prices, models)
    )


def _sweep_row(traffic: Traffic, prices: PriceBook, models: tuple[CostModel, ...]) -> SweepRow:
    costs = {m.name: m.monthly_cost(traffic, prices) for m in models}
    plans = {
        name: b.plan + (", contract" if b.contract_required else "") for name, b in costs.items() if b.plan
    }
    return SweepRow(traffic.minutes, {name: b.total_usd for name, b in costs.items()}, plans)


def not_comparable(model: CostModel) -> str | None:
    """Why an option is shown but never marked cheapest, or None. The realtime API's transport is
    priced inside its tokens: without them nobody can buy that transport for $0 on its own; with
    them but no model line on the other options, it would be its model against their transport."""
    inner = base_model(model)
    if not isinstance(inner, HostedRealtimeAPI):
        return None
    if not inner.with_model:
        return "transport is bundled into the model's token price (--with-model adds the tokens)"
    if not (isinstance(model, WithExtras) and model.extras.model):
        return (
            "includes its model's tokens while the other options carry no model "
            "(give --model-rate or --gpu-hour for the all-in comparison)"
        )
    return None


def bundled(model: CostModel) -> bool:
    """Shown, but never marked cheapest (see `not_comparable`)."""
    return not_comparable(model) is not None


def contents(report: Report) -> str:
    """What the totals contain, in a few words (the plot's title and the report's first note)."""
    extras = next((m.extras for m in report.models if isinstance(m, WithExtras)), None)
    inners = [base_model(m) for m in report.models]
    parts = ["transport"]
    if extras is not None and extras.sip_per_minute is not None:
        parts.append("phone minutes")
    if extras is not None and extras.model:
        parts.append("model")
    elif any(isinstance(m, HostedRealtimeAPI) and m.with_model for m in inners):
        parts.append("realtime API tokens")
    hosted_agents = any(isinstance(m, LiveKitCloud) and m.agents for m in inners)
    if hosted_agents or (extras is not None and extras.agent_host_hour is not None):
        parts.append("agent hosting")
    fleet = report.fleet
    if fleet is not None and fleet.engineering_usd:
        parts.append("engineering")
    return " + ".join(parts)


def _assumptions(traffic: Traffic, prices: PriceBook, models: tuple[CostModel, ...]) -> tuple[str, ...]:
    t = traffic
    notes = [
        f"{t.call_minutes:g}-minute calls, 2 participants (caller and agent); Opus {t.bitrate_kbps:g} kbps + "
        f"{t.overhead_bytes:g} B per {t.frame_ms:g} ms packet = {t.bytes_per_minute_each_way / 1e6:.2f} MB "
        "per minute each way, sent all call long (no DTX)",
    ]
    edge = next((m for m in map(base_model, models) if isinstance(m, SplitEdge)), None)
    if edge is not None:
        notes.append(describe_fleet(edge, t, prices))
    extras = next((m.extras for m in models if isinstance(m, WithExtras)), None)
    api_tokens = any(
        isinstance(inner := base_model(m), HostedRealtimeAPI) and inner.with_model for m in models
    )
    if extras is not None and extras.model:
        notes.append(
            "all in: the hosted realtime API carries its audio tokens, every other option your model "
            "at the given rate"
        )
    elif api_tokens:
        notes.append(
            "the hosted realtime API includes its model's audio tokens; the other options are transport "
            "only and exclude your own inference cost (give --model-rate or --gpu-hour for all-in)"
        )
    else:
        notes.append("transport only: model and inference costs are excluded (--with-model shows the API's)")
    if any(isinstance(base_model(m), LiveKitCloud) for m in models):
        notes.append(
            "LiveKit Cloud: the cheapest self-serve plan whose concurrency cap admits the busy hour "
            "(2 connections per call); above the last cap a contract is required, priced at its rates"
        )
    dates = sorted(p.as_of for p in prices.values() if p.as_of)
    checked = f"dated {dates[0]} to {dates[-1]}" if dates else "undated"
    notes.append(
        f"USD list prices without volume discounts, {checked}; {len(prices.assumptions())} of {len(prices)} "
        f"catalogue figures are assumptions and {len(prices.unverified())} published figures could not be "
        "read at their source (unverified, undated; marked in --json and in scripts/cost/prices.toml)"
    )
    return tuple(notes)


def report_json(report: Report) -> str:
    """The whole report, line items and price sources included."""
    t = report.traffic
    cheapest = report.cheapest
    data: dict[str, Any] = {
        "currency": "USD",
        "traffic": {
            **asdict(t),
            "calls": t.calls,
            "peak_concurrent_calls": t.peak_concurrent_calls,
            "bytes_per_minute_each_way": t.bytes_per_minute_each_way,
        },
        "fleet": asdict(report.fleet) if report.fleet else None,
        "contains": contents(report),
        "at_volume": {
            "minutes": t.minutes,
            "cheapest": cheapest,
            "options": [
                {
                    **_identity(report.model(b.option)),
                    "monthly_usd": b.total_usd,
                    "per_1000_minutes_usd": b.per_1000_minutes,
                    "cheapest": b.option == cheapest,
                    "not_comparable": not_comparable(report.model(b.option)),
                    "plan": b.plan or None,
                    "contract_required": b.contract_required,
                    "line_items": [item.as_dict() for item in b.items],
                }
                for b in report.at_volume
            ],
        },
        "sweep": [
            {
                "minutes": row.minutes,
                "cheapest": report.cheapest_of(row.monthly_usd),
                "monthly_usd": row.monthly_usd,
                "plans": row.plans,
            }
            for row in report.sweep
        ],
        "break_even": [b.as_dict() for b in report.break_evens],
        "assumptions": list(report.assumptions),
        "prices": {key: price.as_dict() for key, price in sorted(report.prices.items())},
    }
    return json.dumps(data, indent=2) + "\n"


def report_csv(report: Report) -> str:
    """One row per option and volume: the chosen volume first, then the sweep."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["section", "minutes", "option", "label", "kind", "monthly_usd", "per_1000_minutes_usd"]
    writer.writerow([*header, "cheapest", "plan"])
    at_volume = _sweep_row(report.traffic, report.prices, report.models)
    rows = [("at_volume", at_volume), *(("sweep", row) for row in report.sweep)]
    for section, sweep_row in rows:
        minutes, costs = sweep_row.minutes, sweep_row.monthly_usd
        cheapest = report.cheapest_of(costs)
        for name, usd in costs.items():
            model = report.model(name)
            per_1000 = usd / minutes * 1000
            row = [section, f"{minutes:.0f}", name, model.label, model.kind, f"{usd:.2f}", f"{per_1000:.4f}"]
            writer.writerow([*row, str(name == cheapest).lower(), sweep_row.plans.get(name, "")])
    return out.getvalue()


def _fleet(models: tuple[CostModel, ...]) -> Fleet | None:
    return next((m.fleet for m in map(base_model, models) if isinstance(m, SplitEdge)), None)


def _identity(model: CostModel) -> dict[str, str]:
    return {"name": model.name, "label": model.label, "kind": model.kind}
