"""The custom option: this kit's split edge (Workers + Durable Objects + Realtime SFU at
Cloudflare, a regional relay fleet on AWS behind Global Accelerator)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from splitrelay.cost.breakdown import Component, ComponentModel, Fixed, Kind, Metered, Stepped, Tier, flat
from splitrelay.cost.catalogue import PriceBook, check_instance_type
from splitrelay.cost.errors import CostInputError, check_range
from splitrelay.cost.traffic import DAYS_PER_MONTH, HOURS_PER_MONTH, Traffic

MEASURED_CALLS_PER_CORE = 400.0
CALLS_PER_CORE_SOURCE = (
    "measured SRTP fast path: 400 sessions/core at 72% CPU, 0 loss; shared/design/findings.md"
)


@dataclass(frozen=True)
class Fleet:
    """How the relay fleet and its surroundings are deployed."""

    regions: int = 2
    min_instances_per_region: int = 2
    calls_per_core: float = MEASURED_CALLS_PER_CORE
    cores_per_instance: int = 2
    headroom: float = 1.5
    instance_type: str = "m7g.large"
    accelerators: int = 1
    engineering_usd: float = 0.0

    def __post_init__(self) -> None:
        check_range("--regions", self.regions, 1, 50, integer=True)
        check_range("--min-instances", self.min_instances_per_region, 1, 100, integer=True)
        check_range("--calls-per-core", self.calls_per_core, 0, 100_000, low_open=True)
        check_range("--cores-per-instance", self.cores_per_instance, 1, 448, integer=True)
        check_range("--headroom", self.headroom, 1, 10)
        check_range("--accelerators", self.accelerators, 0, 20, integer=True)
        check_range("--engineering", self.engineering_usd, 0, 1e9)
        check_instance_type(self.instance_type)


@dataclass(frozen=True)
class SplitEdge(ComponentModel):
    """Edge signalling, SFU egress on both legs, relay instances sized for the busy hour,
    AWS egress back to the SFU, Global Accelerator, optional engineering time."""

    fleet: Fleet = Fleet()
    name: ClassVar[str] = "custom"
    label: ClassVar[str] = "splitrelay custom edge"
    kind: ClassVar[Kind] = "custom"

    def components(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        return [
            *self._edge(traffic, prices),
            self._sfu(traffic, prices),
            self._relays(traffic, prices),
            *self._aws_network(traffic, prices),
            *self._engineering(),
        ]

    def _edge(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        v = prices.value
        calls_per_minute = traffic.calls / traffic.minutes

        def per_call(label: str, unit: str, keys: tuple[str, str, str], scale: float = 1.0) -> Metered:
            """`keys`: usage per call, free allowance, price per million units."""
            amount = v(keys[0]) * scale
            return Metered(
                label,
                unit,
                per_minute=calls_per_minute * amount,
                tiers=flat(v(keys[2]) / 1e6),
                included=v(keys[1]),
                detail=f"{amount:g} {unit} per call, {v(keys[1]):,.0f} included, "
                f"then ${v(keys[2]):g} per million",
                price_keys=keys,
            )

        w, do = "cloudflare.workers.", "cloudflare.durable_objects."
        return [
            Fixed("Workers Paid plan", v(w + "paid_plan_month"), "base fee", (w + "paid_plan_month",)),
            per_call(
                "Workers requests",
                "requests",
                (w + "requests_per_call", w + "included_requests", w + "request_per_million"),
            ),
            per_call(
                "Workers CPU time",
                "CPU-ms",
                (w + "cpu_ms_per_call", w + "included_cpu_ms", w + "cpu_ms_per_million"),
            ),
            per_call(
                "Durable Objects requests",
                "requests",
                (do + "requests_per_call", do + "included_requests", do + "request_per_million"),
            ),
            # Duration bills GB-s: seconds awake per call x the memory every object is billed at.
            per_call(
                "Durable Objects duration",
                "GB-s",
                (do + "active_seconds_per_call", do + "included_gb_s", do + "gb_s_per_million"),
                scale=v(do + "memory_gb"),
            ),
        ]

    def _sfu(self, traffic: Traffic, prices: PriceBook) -> Component:
        per_gb = prices.value("cloudflare.realtime.egress_per_gb")
        free = prices.value("cloudflare.realtime.included_gb")
        return Metered(
            "Realtime SFU + TURN egress",
            "GB",
            # Both legs leave Cloudflare: SFU -> caller (agent audio) and SFU -> relay (caller audio).
            per_minute=2 * traffic.gb_per_minute_each_way,
            tiers=flat(per_gb),
            included=free,
            detail=f"both legs (SFU to caller, SFU to relay), {free:,.0f} GB free, then ${per_gb:g}/GB",
            price_keys=("cloudflare.realtime.egress_per_gb", "cloudflare.realtime.included_gb"),
        )

    def _relays(self, traffic: Traffic, prices: PriceBook) -> Component:
        f = self.fleet
        instance = prices.instance_hour(f.instance_type)
        peak_per_minute = traffic.peak_concurrent_calls / traffic.minutes
        capacity = f.calls_per_core * f.cores_per_instance
        return Stepped(
            "Relay fleet",
            "instance-hours",
            groups=f.regions,
            minimum=f.min_instances_per_region,
            # Busy-hour calls split evenly over regions, times headroom, over one instance's capacity.
            per_minute=peak_per_minute / f.regions * f.headroom / capacity,
            hours=HOURS_PER_MONTH,
            price_per_hour=instance.value,
            detail=f"{f.instance_type} at ${instance.value:g}/h all month; per region "
            f"max({f.min_instances_per_region}, ceil(busy-hour calls x {f.headroom:g} / "
            f"{capacity:g} calls per instance)); {f.regions} regions",
            price_keys=(instance.key,),
        )

    def _aws_network(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        v = prices.value
        gb = traffic.gb_per_minute_each_way
        bounds = [v(f"aws.egress.tier{i}_up_to_gb") for i in (1, 2, 3)]
        for i in (1, 2):
            if bounds[i] <= bounds[i - 1]:
                raise CostInputError(
                    f"prices: aws.egress.tier{i + 1}_up_to_gb",
                    f"must be above tier{i}_up_to_gb ({bounds[i - 1]:g}), got {bounds[i]:g}",
                )
        tiers = tuple(
            Tier(up_to, v(f"aws.egress.tier{i}_per_gb"))
            for i, up_to in enumerate([*bounds, math.inf], start=1)
        )
        free = v("aws.egress.included_gb")
        parts: list[Component] = [
            Metered(
                "AWS data transfer out",
                "GB",
                per_minute=gb,
                tiers=tiers,
                included=free,
                detail=f"relay to SFU (agent audio), {free:,.0f} GB free, then "
                + ", ".join(f"${t.price:g}" for t in tiers)
                + "/GB by tier",
                price_keys=("aws.egress.included_gb", *(f"aws.egress.tier{i}_per_gb" for i in (1, 2, 3, 4))),
            )
        ]
        count = self.fleet.accelerators
        if count:
            hour, premium = v("aws.global_accelerator.hour"), v("aws.global_accelerator.premium_per_gb")
            parts += [
                Fixed(
                    "Global Accelerator",
                    count * HOURS_PER_MONTH * hour,
                    f"{count} x {HOURS_PER_MONTH:g} h x ${hour:g}",
                    ("aws.global_accelerator.hour",),
                ),
                Metered(
                    "Global Accelerator DT-Premium",
                    "GB",
                    # Billed on the dominant direction only; both directions carry one audio stream.
                    per_minute=gb,
                    tiers=flat(premium),
                    detail=f"dominant direction, ${premium:g}/GB on top of egress",
                    price_keys=("aws.global_accelerator.premium_per_gb",),
                ),
            ]
        return parts

    def _engineering(self) -> list[Component]:
        usd = self.fleet.engineering_usd
        return [Fixed("Engineering and operations", usd, "given with --engineering")] if usd else []


def describe_fleet(fleet: Fleet, traffic: Traffic) -> str:
    """One line on how the relay fleet is sized, for the report's assumptions."""
    return (
        f"relay {fleet.calls_per_core:g} calls/core x {fleet.headroom:g} headroom"
        + (f" ({CALLS_PER_CORE_SOURCE})" if fleet.calls_per_core == MEASURED_CALLS_PER_CORE else " (given)")
        + f", {fleet.cores_per_instance} cores per {fleet.instance_type}, at least "
        f"{fleet.min_instances_per_region} per region x {fleet.regions} regions; "
        f"{traffic.peak_concurrent_calls:,.0f} calls at peak "
        f"(busy hour = {traffic.busy_hour_share:.0%} of a day's minutes, {DAYS_PER_MONTH:.1f}-day month)"
    )
