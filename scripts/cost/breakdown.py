"""Line items, the three shapes a bill line takes, and the interface every option shares.

Every option is a list of components: a fixed monthly fee, a metered resource whose usage grows in
proportion to minutes (with a free allowance and price tiers), or whole units sized for the busy
hour (relay instances). Because each component knows where its cost bends or jumps, the break-even
solver can bracket every crossing exactly instead of hoping a grid is fine enough.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    from splitrelay.cost.catalogue import PriceBook
    from splitrelay.cost.traffic import Traffic

Kind = Literal["hosted", "custom"]

MAX_STEPS = 5000
"""Most instance steps one component reports in a range; beyond it every k-th step is reported."""


@dataclass(frozen=True)
class LineItem:
    """One line of a monthly bill: what was used, how it was priced, what it costs."""

    label: str
    quantity: float
    unit: str
    usd: float
    detail: str
    price_keys: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "quantity": self.quantity,
            "unit": self.unit,
            "usd": self.usd,
            "detail": self.detail,
            "price_keys": list(self.price_keys),
        }


@dataclass(frozen=True)
class CostBreakdown:
    """An option's monthly cost at one volume, line by line."""

    option: str
    minutes: float
    items: tuple[LineItem, ...]
    plan: str = ""
    """The plan bought at this volume, for options sold as plans."""
    contract_required: bool = False
    """The peak is above every self-serve plan's cap: priced at the largest plan's rates."""

    @property
    def total_usd(self) -> float:
        return math.fsum(item.usd for item in self.items)

    @property
    def per_1000_minutes(self) -> float:
        return self.total_usd / self.minutes * 1000


class Breakpoints(NamedTuple):
    """Minutes where a cost bends or jumps; `complete` is False when steps were thinned out."""

    points: tuple[float, ...]
    complete: bool = True


class Component(Protocol):
    def line_item(self, minutes: float) -> LineItem: ...

    def breakpoints(self, low: float, high: float) -> Breakpoints: ...


class CostModel(Protocol):
    """The interface of every option, hosted or custom."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    def monthly_cost(self, traffic: Traffic, prices: PriceBook) -> CostBreakdown: ...

    def breakpoints(self, traffic: Traffic, prices: PriceBook, low: float, high: float) -> Breakpoints: ...


@dataclass(frozen=True)
class Fixed:
    """A flat monthly fee."""

    label: str
    usd: float
    detail: str
    price_keys: tuple[str, ...] = ()

    def line_item(self, minutes: float) -> LineItem:
        return LineItem(self.label, 1.0, "month", self.usd, self.detail, self.price_keys)

    def breakpoints(self, low: float, high: float) -> Breakpoints:
        return Breakpoints(())


@dataclass(frozen=True)
class Tier:
    """Billable units up to `up_to` (cumulative, after the free allowance) cost `price` each."""

    up_to: float
    price: float


def flat(price: float) -> tuple[Tier, ...]:
    """One price for every billable unit."""
    return (Tier(math.inf, price),)


@dataclass(frozen=True)
class Metered:
    """Usage in proportion to minutes; the first `included` units are free, the rest priced by tier."""

    label: str
    unit: str
    per_minute: float
    tiers: tuple[Tier, ...]
    detail: str
    price_keys: tuple[str, ...]
    included: float = 0.0

    def line_item(self, minutes: float) -> LineItem:
        usage = self.per_minute * minutes
        billable = max(0.0, usage - self.included)
        usd, floor = 0.0, 0.0
        for tier in self.tiers:
            if billable <= floor:
                break
            usd += (min(billable, tier.up_to) - floor) * tier.price
            floor = tier.up_to
        return LineItem(self.label, usage, self.unit, usd, self.detail, self.price_keys)

    def breakpoints(self, low: float, high: float) -> Breakpoints:
        if self.per_minute <= 0:
            return Breakpoints(())
        usages = [self.included] + [self.included + t.up_to for t in self.tiers if math.isfinite(t.up_to)]
        points = (u / self.per_minute for u in usages)
        return Breakpoints(tuple(m for m in points if low < m < high))


@dataclass(frozen=True)
class Stepped:
    """Whole units sized for the busy hour and kept all month: in each of `groups`, at least
    `minimum` units, or enough for `per_minute` x minutes units (rounded up)."""

    label: str
    unit: str
    groups: int
    minimum: int
    per_minute: float
    hours: float
    price_per_hour: float
    detail: str
    price_keys: tuple[str, ...]

    def count(self, minutes: float) -> int:
        need = self.per_minute * minutes
        # A relative nudge so that a float product landing a hair above a whole number
        # does not buy a unit that the exact arithmetic would not.
        return self.groups * max(self.minimum, math.ceil(need * (1 - 1e-12)))

    def line_item(self, minutes: float) -> LineItem:
        hours = self.count(minutes) * self.hours
        return LineItem(
            self.label, hours, self.unit, hours * self.price_per_hour, self.detail, self.price_keys
        )

    def breakpoints(self, low: float, high: float) -> Breakpoints:
        if self.per_minute <= 0:
            return Breakpoints(())
        first = max(self.minimum, math.floor(low * self.per_minute) + 1)
        last = math.ceil(high * self.per_minute) - 1
        if last < first:
            return Breakpoints(())
        stride = max(1, math.ceil((last - first + 1) / MAX_STEPS))
        points = tuple(j / self.per_minute for j in range(first, last + 1, stride))
        return Breakpoints(tuple(m for m in points if low < m < high), complete=stride == 1)


class ComponentModel(ABC):
    """An option defined by its components; subclasses say which components, nothing else."""

    name: ClassVar[str]
    kind: ClassVar[Kind]

    @abstractmethod
    def components(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        """The bill lines of this option for `traffic`'s shape (any volume)."""

    def monthly_cost(self, traffic: Traffic, prices: PriceBook) -> CostBreakdown:
        items = tuple(c.line_item(traffic.minutes) for c in self.components(traffic, prices))
        return CostBreakdown(self.name, traffic.minutes, items)

    def breakpoints(self, traffic: Traffic, prices: PriceBook, low: float, high: float) -> Breakpoints:
        found = [c.breakpoints(low, high) for c in self.components(traffic, prices)]
        points = sorted({m for b in found for m in b.points})
        return Breakpoints(tuple(points), complete=all(b.complete for b in found))
