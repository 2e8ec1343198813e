"""The terminal view of a report: the table at the chosen volume, the sweep, break-evens and
the assumptions, in that order (what a newcomer reads first comes first)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from splitrelay.cost.report import Report, bundled, contents, not_comparable
from splitrelay.cost.solve import SWEEP_HIGH, SWEEP_LOW, BreakEven


def money(usd: float) -> str:
    if usd == 0:
        return "$0"
    if abs(usd) >= 1000:
        return f"${usd:,.0f}"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.3g}"


def minutes_label(minutes: float) -> str:
    """10k, 263k, 1M, 11.1M, 1B, 1T: three significant digits at any volume."""
    units = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
    scale, suffix = next(((s, x) for s, x in units if minutes >= s), (1.0, ""))
    value = minutes / scale
    return (f"{value:.3g}" if value < 1000 else f"{value:,.0f}") + suffix


def render(report: Report, console: Console) -> None:
    _at_volume(report, console)
    _sweep(report, console)
    _break_evens(report, console)
    console.print()
    console.print(
        "Assumptions: " + "; ".join(report.assumptions) + ".", style="dim", markup=False, highlight=False
    )


def _at_volume(report: Report, console: Console) -> None:
    cheapest = report.cheapest
    table = Table(
        title=f"Monthly cost (USD) at {minutes_label(report.traffic.minutes)} call-minutes a month: "
        f"{contents(report)}",
        title_justify="left",
    )
    table.add_column("Option")
    table.add_column("Kind")
    table.add_column("Monthly", justify="right")
    table.add_column("per 1,000 min", justify="right")
    table.add_column("Plan")
    table.add_column("")
    for b in sorted(report.at_volume, key=lambda b: (bundled(report.model(b.option)), b.total_usd)):
        model = report.model(b.option)
        table.add_row(
            model.label + (" *" if bundled(model) else ""),
            model.kind,
            money(b.total_usd),
            money(b.per_1000_minutes),
            (b.plan + (" (contract required)" if b.contract_required else "")) if b.plan else "",
            "<- cheapest" if b.option == cheapest else "",
            style="bold green" if b.option == cheapest else None,
        )
    console.print(table)
    for reason in sorted({r for b in report.at_volume if (r := not_comparable(report.model(b.option)))}):
        console.print(f"* {reason}, so it is never marked cheapest.", style="dim", markup=False)


def _sweep(report: Report, console: Console) -> None:
    table = Table(title="Monthly cost (USD) by volume, cheapest in bold", title_justify="left")
    table.add_column("minutes/month", justify="right")
    for model in report.models:
        table.add_column(model.name + (" *" if bundled(model) else ""), justify="right")
    for row in report.sweep:
        cheapest = report.cheapest_of(row.monthly_usd)
        cells = [
            f"[bold green]{money(usd)}[/]" if name == cheapest else money(usd)
            for name, usd in row.monthly_usd.items()
        ]
        cells = [
            cell + (f" [dim]{plan}[/]" if (plan := row.plans.get(name)) else "")
            for cell, name in zip(cells, row.monthly_usd, strict=True)
        ]
        table.add_row(minutes_label(row.minutes), *cells)
    console.print()
    console.print(table)


def _break_evens(report: Report, console: Console) -> None:
    if not report.break_evens:
        return
    console.print()
    console.print(
        f"Break-even against the custom edge ({minutes_label(SWEEP_LOW)} to {minutes_label(SWEEP_HIGH)} "
        "minutes a month):",
        style="bold",
    )
    for be in report.break_evens:
        hosted = report.model(be.hosted)
        caveat = not_comparable(hosted)
        line = f"  {hosted.label}: {describe(be)}" + (f" [not like for like: {caveat}]" if caveat else "")
        console.print(line, markup=False, highlight=False)


def describe(be: BreakEven) -> str:
    """One line per hosted option: every crossing, or "never" with the reason."""
    if be.never:
        return f"never: {be.never}"
    parts = []
    for c in be.crossings:
        side = "cheaper" if c.custom_cheaper_above else "dearer"
        if c.kind == "equal":
            parts.append(
                f"custom edge {side} above {minutes_label(c.minutes)} min ({money(c.custom_usd)} each)"
            )
        else:
            parts.append(
                f"custom edge {side} above {minutes_label(c.minutes)} min, where it adds a relay instance "
                f"({money(c.custom_usd)} against {money(c.hosted_usd)})"
            )
    text = "; ".join(parts)
    if not be.exhaustive:
        text += " (relay steps were thinned out: crossings between close steps may be missing)"
    return text
