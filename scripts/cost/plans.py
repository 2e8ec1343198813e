"""Hosted products sold as plans: a base fee, included quotas, overage rates and a concurrency cap.

The calculator buys the cheapest plan whose cap admits the busy hour's concurrent connections; above
the last self-serve cap only a contract applies, which is priced at the largest plan's rates and
flagged. Each plan's cost is non-decreasing in minutes and the set of plans a volume admits only
shrinks as minutes grow, so the chosen cost never falls as volume grows.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from itertools import pairwise

from splitrelay.cost.breakdown import Breakpoints, Component, ComponentModel, CostBreakdown
from splitrelay.cost.catalogue import PriceBook
from splitrelay.cost.errors import CostInputError
from splitrelay.cost.traffic import Traffic


@dataclass(frozen=True)
class Plan:
    """One self-serve plan: its bill lines and the most concurrent connections it admits."""

    name: str
    components: tuple[Component, ...]
    max_connections: float

    def cost(self, minutes: float) -> float:
        return math.fsum(c.line_item(minutes).usd for c in self.components)


@dataclass(frozen=True)
class PlanChoice:
    plan: Plan
    contract_required: bool


def plan_names(prices: PriceBook, prefix: str) -> list[str]:
    """Plan names under `prefix` (e.g. "livekit.plans."), in catalogue order."""
    names: list[str] = []
    for rest in prices.under(prefix):
        name = rest.split(".", 1)[0]
        if name not in names:
            names.append(name)
    if not names:
        raise CostInputError(f"prices: {prefix}*", "no plan is defined")
    return names


class PlannedModel(ComponentModel):
    """An option whose bill depends on which plan the volume needs."""

    @abstractmethod
    def plans(self, traffic: Traffic, prices: PriceBook) -> list[Plan]:
        """Every self-serve plan, each with its components for `traffic`'s shape."""

    @abstractmethod
    def connections_per_minute(self, traffic: Traffic) -> float:
        """Busy-hour concurrent connections per call-minute a month (the cap's measure)."""

    def components(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        return list(self.choose(traffic, prices).plan.components)

    def choose(self, traffic: Traffic, prices: PriceBook) -> PlanChoice:
        return choose_plan(self.plans(traffic, prices), self.connections_per_minute(traffic), traffic.minutes)

    def monthly_cost(self, traffic: Traffic, prices: PriceBook) -> CostBreakdown:
        choice = self.choose(traffic, prices)
        items = tuple(c.line_item(traffic.minutes) for c in choice.plan.components)
        return CostBreakdown(self.name, traffic.minutes, items, choice.plan.name, choice.contract_required)

    def breakpoints(self, traffic: Traffic, prices: PriceBook, low: float, high: float) -> Breakpoints:
        """Every plan's bends, every cap, and every volume where two plans cost the same (exact:
        between neighbouring bends each plan's cost is linear)."""
        plans = self.plans(traffic, prices)
        found = [c.breakpoints(low, high) for p in plans for c in p.components]
        per_minute = self.connections_per_minute(traffic)
        caps = [p.max_connections / per_minute for p in plans if per_minute > 0]
        bends = sorted(
            {low, high, *(m for b in found for m in b.points), *(m for m in caps if low < m < high)}
        )
        crossings: list[float] = []
        for a, b in pairwise(bends):
            for i, p in enumerate(plans):
                for q in plans[i + 1 :]:
                    da, db = p.cost(a) - q.cost(a), p.cost(b) - q.cost(b)
                    if da * db < 0:
                        crossings.append(a + (b - a) * da / (da - db))
        points = sorted({m for m in (*bends, *crossings) if low < m < high})
        return Breakpoints(tuple(points), complete=all(b.complete for b in found))


def choose_plan(plans: list[Plan], connections_per_minute: float, minutes: float) -> PlanChoice:
    """The cheapest plan admitting the peak (the first on a tie); above every cap, the plan with the
    highest cap, marked as needing a contract."""
    peak = connections_per_minute * minutes
    admitted = [p for p in plans if peak <= p.max_connections]
    if admitted:
        return PlanChoice(min(admitted, key=lambda p: p.cost(minutes)), False)
    return PlanChoice(max(plans, key=lambda p: p.max_connections), True)
