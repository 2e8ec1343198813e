"""Break-even volumes between the custom edge and a hosted option, solved rather than read off a grid.

Costs are piecewise linear in minutes with jumps (relay instances are whole). The difference
custom - hosted is sampled at a log grid plus both sides of every bend and jump the two models
report, so between neighbouring samples it is linear and crosses zero at most once; each sign
change is then bisected until the two costs agree within a cent ("equal"), or, where the custom
edge jumps past the hosted cost as it adds an instance, until the jump is pinned down ("step").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from splitrelay.cost.breakdown import CostModel
from splitrelay.cost.catalogue import PriceBook
from splitrelay.cost.errors import number
from splitrelay.cost.traffic import Traffic

SWEEP_LOW = 1e4
SWEEP_HIGH = 1e9
CENT = 0.01
_TOLERANCE = CENT / 2
_GRID_PER_DECADE = 24
_SIDE = 1e-9
"""Relative offset of the samples taken on either side of a bend or jump."""
_MAX_BISECTIONS = 200

CrossingKind = Literal["equal", "step"]


@dataclass(frozen=True)
class Crossing:
    """Where the cheaper of the two changes. `bracket` holds volumes just below and above at which
    the two differ by more than half a cent, in opposite orders."""

    minutes: float
    kind: CrossingKind
    custom_cheaper_above: bool
    custom_usd: float
    hosted_usd: float
    bracket: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes,
            "kind": self.kind,
            "custom_cheaper_above": self.custom_cheaper_above,
            "custom_usd": self.custom_usd,
            "hosted_usd": self.hosted_usd,
            "bracket": list(self.bracket),
        }


@dataclass(frozen=True)
class BreakEven:
    """Every crossing between `custom` and `hosted` in [low, high], or why there is none."""

    custom: str
    hosted: str
    low: float
    high: float
    crossings: tuple[Crossing, ...]
    never: str | None
    exhaustive: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "custom": self.custom,
            "hosted": self.hosted,
            "range": [self.low, self.high],
            "crossings": [c.as_dict() for c in self.crossings],
            "never": self.never,
            "exhaustive": self.exhaustive,
        }


def break_even(
    custom: CostModel,
    hosted: CostModel,
    traffic: Traffic,
    prices: PriceBook,
    low: float = SWEEP_LOW,
    high: float = SWEEP_HIGH,
) -> BreakEven:
    """Solve custom(m) = hosted(m) for every m in [low, high]."""

    def cost(model: CostModel, minutes: float) -> float:
        return model.monthly_cost(traffic.at(minutes), prices).total_usd

    def diff(minutes: float) -> float:
        at = traffic.at(minutes)
        return custom.monthly_cost(at, prices).total_usd - hosted.monthly_cost(at, prices).total_usd

    bends = [custom.breakpoints(traffic, prices, low, high), hosted.breakpoints(traffic, prices, low, high)]
    samples = _samples(low, high, [m for b in bends for m in b.points])
    values = [diff(m) for m in samples]
    signs = [_sign(d) for d in values]

    crossings: list[Crossing] = []
    previous: int | None = None
    for i, sign in enumerate(signs):
        if sign == 0:
            continue
        if previous is not None and sign != signs[previous]:
            zero = next((z for z in range(previous + 1, i) if signs[z] == 0), None)
            found: tuple[float, CrossingKind, tuple[float, float]]
            if zero is not None:
                found = (samples[zero], "equal", (samples[previous], samples[i]))
            else:
                found = _bisect(diff, samples[previous], values[previous], samples[i])
            at, kind, bracket = found
            crossings.append(
                Crossing(at, kind, signs[previous] > 0, cost(custom, at), cost(hosted, at), bracket)
            )
        previous = i

    never = None if crossings else _why_never(cost, custom, hosted, signs, low, high)
    return BreakEven(
        custom.name,
        hosted.name,
        low,
        high,
        tuple(crossings),
        never,
        exhaustive=all(b.complete for b in bends),
    )


def _samples(low: float, high: float, bends: list[float]) -> list[float]:
    decades = math.log10(high / low)
    count = max(2, math.ceil(decades * _GRID_PER_DECADE) + 1)
    grid = [low * (high / low) ** (i / (count - 1)) for i in range(count)]
    sides = [m * f for m in bends for f in (1 - _SIDE, 1 + _SIDE)]
    return sorted({low, high, *grid, *(m for m in sides if low <= m <= high)})


def _sign(value: float) -> int:
    if abs(value) <= _TOLERANCE:
        return 0
    return 1 if value > 0 else -1


def _bisect(
    diff: Callable[[float], float], a: float, da: float, b: float
) -> tuple[float, CrossingKind, tuple[float, float]]:
    """Narrow a sign change of `diff` to a root (within half a cent) or to a jump."""
    for _ in range(_MAX_BISECTIONS):
        mid = (a + b) / 2
        dm = diff(mid)
        if abs(dm) <= _TOLERANCE:
            return mid, "equal", (a, b)
        if _sign(dm) == _sign(da):
            a, da = mid, dm
        else:
            b = mid
        if b - a <= _SIDE * b:
            break
    # The difference changes sign without passing through zero: a jump, reported where it lands.
    return b, "step", (a, b)


def _why_never(
    cost: Callable[[CostModel, float], float],
    custom: CostModel,
    hosted: CostModel,
    signs: list[int],
    low: float,
    high: float,
) -> str:
    span = f"{_short(low)} to {_short(high)} minutes"
    if not any(signs):
        return f"the two cost the same, within a cent, at every volume from {span}"
    c_low, h_low = cost(custom, low), cost(hosted, low)
    if all(s <= 0 for s in signs):
        return (
            f"the custom edge is cheaper at every volume from {span} "
            f"(at {_short(low)}: custom ${c_low:,.2f} against hosted ${h_low:,.2f})"
        )
    top = high / 10
    c_marginal = (cost(custom, high) - cost(custom, top)) / (high - top) * 1000
    h_marginal = (cost(hosted, high) - cost(hosted, top)) / (high - top) * 1000
    if h_marginal <= c_marginal:
        return (
            f"hosted is cheaper at every volume from {span}: its marginal cost "
            f"(${h_marginal:,.4g} per 1,000 min) is at or below the custom edge's (${c_marginal:,.4g}), "
            f"so the custom edge's higher floor (${c_low:,.2f}/month) is never paid back"
        )
    gap = cost(custom, high) - cost(hosted, high)
    beyond = high + gap / (h_marginal - c_marginal) * 1000
    return (
        f"the custom edge's fixed floor (${c_low:,.2f}/month) exceeds hosted at every volume up to "
        f"{_short(high)}; at the marginal costs near {_short(high)} (custom ${c_marginal:,.4g}, hosted "
        f"${h_marginal:,.4g} per 1,000 min) it would pay back near {_short(beyond)} minutes"
    )


def _short(minutes: float) -> str:
    return number(minutes, 3)
