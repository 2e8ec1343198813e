"""Log-log plot of monthly cost against minutes, break-even points marked (PNG or SVG bytes).

matplotlib is imported here, lazily, so `splitrelay cost` without --plot starts fast.
"""

from __future__ import annotations

import io
import itertools

from splitrelay.cost.render import minutes_label, money
from splitrelay.cost.report import Report, contents
from splitrelay.cost.solve import SWEEP_HIGH, SWEEP_LOW

_POINTS = 240
_SIDE = 1e-6
_CUSTOM_CONTAINS = "Workers, Durable Objects, SFU egress, relays, AWS network (lines in --json)"
_MAX_BENDS = 400
"""Bends drawn exactly per option; relay steps beyond these (tiny --calls-per-core) fall on the grid."""


def plot(report: Report, fmt: str) -> bytes:
    """The figure as `fmt` ("png" or "svg") bytes; options that cost $0 cannot sit on a log axis
    and are named in the legend title instead."""
    from matplotlib import rc_context
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    grid = [SWEEP_LOW * (SWEEP_HIGH / SWEEP_LOW) ** (i / (_POINTS - 1)) for i in range(_POINTS)]
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axes = figure.add_subplot()
    free: list[str] = []
    colours: dict[str, str] = {}
    for model in report.models:
        # Both sides of every bend and jump (plan changes, caps, relay instances), so a step is drawn
        # as a vertical step rather than a slope between two grid points.
        bends = model.breakpoints(report.traffic, report.prices, SWEEP_LOW, SWEEP_HIGH).points[:_MAX_BENDS]
        minutes = sorted({*grid, *(m * f for m in bends for f in (1 - _SIDE, 1 + _SIDE))})
        breakdowns = [model.monthly_cost(report.traffic.at(m), report.prices) for m in minutes]
        costs = [b.total_usd for b in breakdowns]
        if min(costs) <= 0:
            free.append(model.label)
            continue
        custom = model.kind == "custom"
        label = model.label + (f": {_CUSTOM_CONTAINS}" if custom else "")
        (line,) = axes.plot(
            minutes, costs, "-" if custom else "--", linewidth=2 if custom else 1.5, label=label
        )
        colours[model.name] = to_hex(line.get_color())
        for before, after in itertools.pairwise(breakdowns):
            if after.plan != before.plan or after.contract_required != before.contract_required:
                name = after.plan + (" (contract)" if after.contract_required else "")
                axes.plot([after.minutes], [after.total_usd], "|", color=line.get_color(), markersize=14)
                axes.annotate(
                    name,
                    (after.minutes, after.total_usd),
                    textcoords="offset points",
                    xytext=(3, -12),
                    fontsize=7,
                )
    for be in report.break_evens:
        hosted = report.model(be.hosted).label
        for c in be.crossings:
            side = "cheaper" if c.custom_cheaper_above else "dearer"
            axes.plot(
                [c.minutes],
                [c.custom_usd],
                "o",
                color=colours.get(be.hosted, "black"),
                markeredgecolor="black",
                markersize=7,
                label=f"custom {side} than {hosted} above {minutes_label(c.minutes)} min "
                f"({money(c.custom_usd)})",
            )
    axes.axvline(report.traffic.minutes, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("call-minutes per month")
    axes.set_ylabel("monthly cost (USD)")
    axes.set_title(
        f"Monthly cost ({contents(report)}): custom split edge against hosted options\n"
        "(dots: break-even; ticks: plan changes; steps: plan caps and relay instances)",
        fontsize=10,
    )
    axes.grid(True, which="major", alpha=0.3)
    title = f"$0 (not drawn): {', '.join(free)}" if free else None
    axes.legend(title=title, fontsize=8, title_fontsize=8, loc="upper left")
    buffer = io.BytesIO()
    # Real <text> in SVG (searchable, smaller); no timestamp, so the same report gives the same file.
    with rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()
