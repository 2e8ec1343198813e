"""The custom option: this kit's split edge (Workers + Durable Objects + Realtime SFU at
Cloudflare, a regional relay fleet on AWS behind Global Accelerator)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

from splitrelay.cost.breakdown import Component, ComponentModel, Fixed, Kind, Metered, Stepped, Tier, flat
from splitrelay.cost.catalogue import PriceBook, check_instance_type, load_catalogue
from splitrelay.cost.errors import CostInputError, check_range
from splitrelay.cost.traffic import DAYS_PER_MONTH, GB, HOURS_PER_MONTH, Traffic
from splitrelay.edge.call_record import CLOSED_RETENTION_S

MEASURED_CALLS_PER_CORE_KEY = "relay.calls_per_core.x86"
"""The relay's measured capacity: one place, the catalogue (prices.toml), which names the command."""
_MEASURED = load_catalogue()[MEASURED_CALLS_PER_CORE_KEY]
MEASURED_CALLS_PER_CORE = _MEASURED.value
CALLS_PER_CORE_SOURCE = _MEASURED.source
PLACEMENTS = ("same-az", "cross-az", "cross-region")
"""Where the GPUs sit relative to the relays: the relay<->GPU audio crosses nothing, an AZ or a region."""
_FAMILY = re.compile(r"[a-z]+[0-9]+([a-z-]*)")


def architecture(instance_type: str) -> str:
    """ "arm" for Graviton families (a g after the generation: m7g, c6gn, t4g), else "x86"."""
    match = _FAMILY.match(instance_type.split(".", 1)[0])
    return "arm" if match and "g" in match.group(1) else "x86"


@dataclass(frozen=True)
class Fleet:
    """How the relay fleet and its surroundings are deployed."""

    regions: int = 2
    min_instances_per_region: int = 2
    calls_per_core: float | None = None
    """None: the catalogue's figure for the instance's architecture (relay.calls_per_core.*)."""
    cores_per_instance: int = 2
    headroom: float = 1.5
    instance_type: str = "m7g.large"
    accelerators: int = 1
    engineering_usd: float = 0.0
    savings_plan: float | None = None
    """Fraction off on-demand relay hours; None: the catalogue's aws.savings_plan.compute_discount."""
    public_ipv4: bool = True
    nat_gateway: bool = False
    gpu_placement: str = "same-az"

    def __post_init__(self) -> None:
        check_range("--regions", self.regions, 1, 50, integer=True)
        check_range("--min-instances", self.min_instances_per_region, 1, 100, integer=True)
        if self.calls_per_core is not None:
            check_range("--calls-per-core", self.calls_per_core, 0, 100_000, low_open=True)
        if self.savings_plan is not None:
            check_range("--savings-plan", self.savings_plan, 0, 0.9)
        if self.gpu_placement not in PLACEMENTS:
            raise CostInputError(
                "--gpu-placement", f"must be one of {', '.join(PLACEMENTS)}, got {self.gpu_placement!r}"
            )
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
            *self._relays(traffic, prices),
            *self._aws_network(traffic, prices),
            *self._optional_network(traffic, prices),
            *self._engineering(),
        ]

    def calls_per_core(self, prices: PriceBook) -> float:
        if self.fleet.calls_per_core is not None:
            return self.fleet.calls_per_core
        return prices.value(f"relay.calls_per_core.{architecture(self.fleet.instance_type)}")

    def _edge(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        v = prices.value
        calls_per_minute = traffic.calls / traffic.minutes

        def usage(per_call: str, per_call_minute: str | None) -> tuple[float, str]:
            """Units per call-minute a month, and how they were counted."""
            amount = v(per_call) * calls_per_minute + (v(per_call_minute) if per_call_minute else 0.0)
            text = f"{v(per_call):g} per call" + (
                f" + {v(per_call_minute):g} per call-minute" if per_call_minute else ""
            )
            return amount, text

        def metered(
            label: str, unit: str, amount: tuple[float, str], free: str, price: str, *keys: str
        ) -> Metered:
            return Metered(
                label,
                unit,
                per_minute=amount[0],
                tiers=flat(v(price) / 1e6),
                included=v(free),
                detail=f"{amount[1]}, {v(free):,.0f} included, then ${v(price):g} per million",
                price_keys=(*keys, free, price),
            )

        w, do = "cloudflare.workers.", "cloudflare.durable_objects."
        requests = usage(do + "requests_per_call", do + "requests_per_call_minute")
        awake = v(do + "active_seconds_per_request") * v(do + "memory_gb")
        retention_minutes = CLOSED_RETENTION_S / 60
        # Bytes kept while a call lasts and for the retention after it, as a share of the month.
        stored_gb_month = (
            v(do + "stored_kb_per_call")
            * 1e3
            / GB
            * calls_per_minute
            * (traffic.call_minutes + retention_minutes)
            / (HOURS_PER_MONTH * 60)
        )
        return [
            Fixed("Workers Paid plan", v(w + "paid_plan_month"), "base fee", (w + "paid_plan_month",)),
            metered(
                "Workers requests",
                "requests",
                usage(w + "requests_per_call", w + "requests_per_call_minute"),
                w + "included_requests",
                w + "request_per_million",
                w + "requests_per_call",
                w + "requests_per_call_minute",
            ),
            metered(
                "Workers CPU time",
                "CPU-ms",
                usage(w + "cpu_ms_per_call", None),
                w + "included_cpu_ms",
                w + "cpu_ms_per_million",
                w + "cpu_ms_per_call",
            ),
            metered(
                "Durable Objects requests (alarms included)",
                "requests",
                requests,
                do + "included_requests",
                do + "request_per_million",
                do + "requests_per_call",
                do + "requests_per_call_minute",
            ),
            metered(
                "Durable Objects duration",
                "GB-s",
                (
                    requests[0] * awake,
                    f"{v(do + 'active_seconds_per_request'):g} s awake x {v(do + 'memory_gb'):g} GB "
                    "per request",
                ),
                do + "included_gb_s",
                do + "gb_s_per_million",
                do + "active_seconds_per_request",
                do + "memory_gb",
            ),
            metered(
                "Durable Objects rows written",
                "rows",
                usage(do + "rows_written_per_call", do + "rows_written_per_call_minute"),
                do + "included_rows_written",
                do + "rows_written_per_million",
                do + "rows_written_per_call",
                do + "rows_written_per_call_minute",
            ),
            Metered(
                "Durable Objects storage",
                "GB-month",
                per_minute=stored_gb_month,
                tiers=flat(v(do + "gb_month")),
                included=v(do + "included_gb_month"),
                detail=f"{v(do + 'stored_kb_per_call'):g} KB per call, kept for the call and "
                f"{CLOSED_RETENTION_S:g} s after it (then deleted), {v(do + 'included_gb_month'):g} GB-month "
                f"included, then ${v(do + 'gb_month'):g}/GB-month",
                price_keys=(do + "stored_kb_per_call", do + "included_gb_month", do + "gb_month"),
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

    def _relays(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        f, v = self.fleet, prices.value
        instance = prices.instance_hour(f.instance_type)
        discount = f.savings_plan if f.savings_plan is not None else v("aws.savings_plan.compute_discount")
        per_core = self.calls_per_core(prices)
        capacity = per_core * f.cores_per_instance
        # Busy-hour calls split evenly over regions, times headroom, over one instance's capacity.
        per_minute = traffic.peak_concurrent_calls / traffic.minutes / f.regions * f.headroom / capacity
        sizing = (
            f"per region max({f.min_instances_per_region}, ceil(busy-hour calls x {f.headroom:g} / "
            f"{capacity:g} calls per instance)); {f.regions} regions"
        )

        def fleet_line(label: str, per_hour: float, detail: str, keys: tuple[str, ...]) -> Stepped:
            return Stepped(
                label,
                "instance-hours",
                f.regions,
                f.min_instances_per_region,
                per_minute,
                HOURS_PER_MONTH,
                per_hour,
                detail,
                keys,
            )

        saving = f", {discount:.0%} Savings Plan" if discount else ""
        parts: list[Component] = [
            fleet_line(
                "Relay fleet",
                instance.value * (1 - discount),
                f"{f.instance_type} ({architecture(f.instance_type)}) at ${instance.value:g}/h{saving} "
                f"all month; {sizing}",
                (instance.key, "aws.savings_plan.compute_discount"),
            )
        ]
        if f.public_ipv4:
            ipv4 = v("aws.public_ipv4.hour")
            parts.append(
                fleet_line(
                    "Public IPv4",
                    ipv4,
                    f"one address per relay instance at ${ipv4:g}/h",
                    ("aws.public_ipv4.hour",),
                )
            )
        # Each relay process (one per core) beats the edge: a Worker request and a request to its
        # liveness object, which the beats keep awake all hour.
        beats = v("cloudflare.relay_watch.beats_per_second") * 3600 * f.cores_per_instance
        w, do = "cloudflare.workers.", "cloudflare.durable_objects."
        per_hour = beats * (v(w + "request_per_million") + v(do + "request_per_million")) / 1e6 + (
            3600 * f.cores_per_instance * v(do + "memory_gb") * v(do + "gb_s_per_million") / 1e6
        )
        parts.append(
            fleet_line(
                "Relay liveness (heartbeats)",
                per_hour,
                f"{beats:,.0f} beats/h per instance, each a Worker and a Durable Object request, the "
                "object awake all hour (priced past the free allowances)",
                (
                    "cloudflare.relay_watch.beats_per_second",
                    w + "request_per_million",
                    do + "request_per_million",
                ),
            )
        )
        return parts

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

    def _optional_network(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        f, v = self.fleet, prices.value
        gb = traffic.gb_per_minute_each_way
        parts: list[Component] = []
        if f.gpu_placement != "same-az":
            cross_az = f.gpu_placement == "cross-az"
            key = "aws.transfer.cross_az_per_gb" if cross_az else "aws.transfer.cross_region_per_gb"
            # One audio stream each way between relay and GPU; cross-AZ bills both sides of each.
            sides = 2 if cross_az else 1
            parts.append(
                Metered(
                    f"Relay <-> GPU transfer ({f.gpu_placement})",
                    "GB",
                    per_minute=2 * gb * sides,
                    tiers=flat(v(key)),
                    detail=f"both directions, ${v(key):g}/GB" + (" charged on each side" if cross_az else ""),
                    price_keys=(key,),
                )
            )
        if f.nat_gateway:
            hour, per_gb = v("aws.nat_gateway.hour"), v("aws.nat_gateway.per_gb")
            parts += [
                Fixed(
                    "NAT gateway",
                    f.regions * HOURS_PER_MONTH * hour,
                    f"{f.regions} x {HOURS_PER_MONTH:g} h x ${hour:g}",
                    ("aws.nat_gateway.hour",),
                ),
                Metered(
                    "NAT gateway data processed",
                    "GB",
                    per_minute=2 * gb,
                    tiers=flat(per_gb),
                    detail=f"relay<->SFU media both ways through the gateway, ${per_gb:g}/GB",
                    price_keys=("aws.nat_gateway.per_gb",),
                ),
            ]
        return parts

    def _engineering(self) -> list[Component]:
        usd = self.fleet.engineering_usd
        return [Fixed("Engineering and operations", usd, "given with --engineering")] if usd else []


def describe_fleet(edge: SplitEdge, traffic: Traffic, prices: PriceBook) -> str:
    """One line on how the relay fleet is sized, for the report's assumptions."""
    fleet = edge.fleet
    arch = architecture(fleet.instance_type)
    if fleet.calls_per_core is not None:
        origin = "given"
    elif arch == "x86":
        origin = CALLS_PER_CORE_SOURCE
    else:
        origin = "assumption: the x86 measurement reused, not measured on Graviton"
    return (
        f"relay {edge.calls_per_core(prices):g} calls/core ({origin}) x {fleet.headroom:g} headroom"
        f", {fleet.cores_per_instance} cores per {fleet.instance_type} ({arch}), at least "
        f"{fleet.min_instances_per_region} per region x {fleet.regions} regions; "
        f"{traffic.peak_concurrent_calls:,.0f} calls at peak "
        f"(busy hour = {traffic.busy_hour_share:.0%} of a day's minutes, {DAYS_PER_MONTH:.1f}-day month); "
        f"relay<->GPU {fleet.gpu_placement}, public IPv4 {'on' if fleet.public_ipv4 else 'off'}, "
        f"NAT gateway {'on' if fleet.nat_gateway else 'off'}"
    )
