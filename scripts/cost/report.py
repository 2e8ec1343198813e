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
from splitrelay.cost.hosted import HostedRealtimeAPI
from splitrelay.cost.solve import BreakEven, break_even
from splitrelay.cost.traffic import Traffic

SWEEP_MINUTES = (*(m * 10.0**e for e in range(4, 9) for m in (1, 3)), 1e9)
"""Volumes in the sweep table: 10k, 30k, 100k ... 300M, 1B minutes a month (the solver's range)."""


@dataclass(frozen=True)
class SweepRow:
    minutes: float
    monthly_usd: dict[str, float]


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
    sweep = tuple(
        SweepRow(minutes, {m.name: m.monthly_cost(traffic.at(minutes), prices).total_usd for m in models})
        for minutes in SWEEP_MINUTES
    )
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


def bundled(model: CostModel) -> bool:
    """Transport priced inside something else (the realtime API without its model): shown, but it
    cannot be "cheapest" since nobody can buy that transport for $0 on its own."""
    return isinstance(model, HostedRealtimeAPI) and not model.with_model


def _assumptions(traffic: Traffic, prices: PriceBook, models: tuple[CostModel, ...]) -> tuple[str, ...]:
    t = traffic
    notes = [
        f"{t.call_minutes:g}-minute calls, 2 participants (caller and agent); Opus {t.bitrate_kbps:g} kbps + "
        f"{t.overhead_bytes:g} B per {t.frame_ms:g} ms packet = {t.bytes_per_minute_each_way / 1e6:.2f} MB "
        "per minute each way, sent all call long (no DTX)",
    ]
    fleet = _fleet(models)
    if fleet is not None:
        notes.append(describe_fleet(fleet, t))
    if any(isinstance(m, HostedRealtimeAPI) and m.with_model for m in models):
        notes.append(
            "the hosted realtime API includes its model's audio tokens; the other options are transport "
            "only and exclude your own inference cost"
        )
    else:
        notes.append("transport only: model and inference costs are excluded (--with-model shows the API's)")
    dates = sorted(p.as_of for p in prices.values() if p.as_of)
    checked = f"checked {dates[0]} to {dates[-1]}" if dates else "undated"
    notes.append(
        f"USD list prices without volume discounts, {checked}; {len(prices.assumptions())} of {len(prices)} "
        "catalogue figures are assumptions (marked in --json and in scripts/cost/prices.toml)"
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
        "at_volume": {
            "minutes": t.minutes,
            "cheapest": cheapest,
            "options": [
                {
                    **_identity(report.model(b.option)),
                    "monthly_usd": b.total_usd,
                    "per_1000_minutes_usd": b.per_1000_minutes,
                    "cheapest": b.option == cheapest,
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
    writer.writerow(
        ["section", "minutes", "option", "label", "kind", "monthly_usd", "per_1000_minutes_usd", "cheapest"]
    )
    rows = [("at_volume", report.traffic.minutes, {b.option: b.total_usd for b in report.at_volume})]
    rows += [("sweep", row.minutes, row.monthly_usd) for row in report.sweep]
    for section, minutes, costs in rows:
        cheapest = report.cheapest_of(costs)
        for name, usd in costs.items():
            model = report.model(name)
            per_1000 = usd / minutes * 1000
            row = [section, f"{minutes:.0f}", name, model.label, model.kind, f"{usd:.2f}", f"{per_1000:.4f}"]
            writer.writerow([*row, str(name == cheapest).lower()])
    return out.getvalue()


def _fleet(models: tuple[CostModel, ...]) -> Fleet | None:
    return next((m.fleet for m in models if isinstance(m, SplitEdge)), None)


def _identity(model: CostModel) -> dict[str, str]:
    return {"name": model.name, "label": model.label, "kind": model.kind}
