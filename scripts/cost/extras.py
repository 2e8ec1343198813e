"""Lines every option pays alike, added on request: phone minutes, the model, agent hosting.

They make the comparison all-in ("custom edge + your model" against "hosted realtime API, all in")
without each option repeating them. An option that already bills a line itself skips it: LiveKit
with its hosted agents skips agent hosting; the realtime API with its tokens skips the model and the
agent host (the model is the agent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from splitrelay.cost.breakdown import (
    Breakpoints,
    Component,
    CostBreakdown,
    CostModel,
    Kind,
    Metered,
    Stepped,
    flat,
)
from splitrelay.cost.errors import CostInputError, check_range
from splitrelay.cost.traffic import HOURS_PER_MONTH

if TYPE_CHECKING:
    from splitrelay.cost.catalogue import PriceBook
    from splitrelay.cost.traffic import Traffic


@dataclass(frozen=True)
class Extras:
    """User-given rates for the shared lines; each None (or 0) leaves its line out."""

    sip_per_minute: float | None = None
    model_per_minute: float | None = None
    gpu_hour: float | None = None
    calls_per_gpu: float | None = None
    agent_host_hour: float | None = None
    calls_per_agent_host: float = 50.0

    def __post_init__(self) -> None:
        if self.sip_per_minute is not None:
            check_range("--sip-rate", self.sip_per_minute, 0, 1)
        if self.model_per_minute is not None:
            check_range("--model-rate", self.model_per_minute, 0, 10)
        if self.gpu_hour is not None:
            check_range("--gpu-hour", self.gpu_hour, 0, 1000)
        if self.calls_per_gpu is not None:
            check_range("--calls-per-gpu", self.calls_per_gpu, 0, 100_000, low_open=True)
        if (self.gpu_hour is None) != (self.calls_per_gpu is None):
            raise CostInputError("--gpu-hour", "needs --calls-per-gpu too (and the other way round)")
        if self.gpu_hour is not None and self.model_per_minute is not None:
            raise CostInputError("--model-rate", "give the model as --model-rate or as --gpu-hour, not both")
        if self.agent_host_hour is not None:
            check_range("--agent-host-hour", self.agent_host_hour, 0, 1000)
        check_range("--calls-per-agent-host", self.calls_per_agent_host, 0, 100_000, low_open=True)

    @property
    def model(self) -> bool:
        return self.model_per_minute is not None or self.gpu_hour is not None

    @property
    def empty(self) -> bool:
        return self.sip_per_minute is None and not self.model and self.agent_host_hour is None

    def components(self, traffic: Traffic, model_billed: bool, agent_billed: bool) -> list[Component]:
        parts: list[Component] = []
        peak_per_minute = traffic.peak_concurrent_calls / traffic.minutes
        if self.sip_per_minute is not None:
            parts.append(
                Metered(
                    "Phone minutes (SIP trunk)",
                    "minutes",
                    per_minute=1.0,
                    tiers=flat(self.sip_per_minute),
                    detail=f"every call-minute over PSTN at the given ${self.sip_per_minute:g}/min",
                    price_keys=(),
                )
            )
        if not model_billed and self.model_per_minute is not None:
            parts.append(
                Metered(
                    "Your model",
                    "minutes",
                    per_minute=1.0,
                    tiers=flat(self.model_per_minute),
                    detail=f"given ${self.model_per_minute:g} per call-minute",
                    price_keys=(),
                )
            )
        if not model_billed and self.gpu_hour is not None and self.calls_per_gpu is not None:
            parts.append(
                Stepped(
                    "Your model (GPUs)",
                    "GPU-hours",
                    groups=1,
                    minimum=1,
                    per_minute=peak_per_minute / self.calls_per_gpu,
                    hours=HOURS_PER_MONTH,
                    price_per_hour=self.gpu_hour,
                    detail=f"ceil(busy-hour calls / {self.calls_per_gpu:g} per GPU) GPUs all month "
                    f"at the given ${self.gpu_hour:g}/h",
                    price_keys=(),
                )
            )
        if not agent_billed and self.agent_host_hour is not None:
            parts.append(
                Stepped(
                    "Agent hosts",
                    "host-hours",
                    groups=1,
                    minimum=1,
                    per_minute=peak_per_minute / self.calls_per_agent_host,
                    hours=HOURS_PER_MONTH,
                    price_per_hour=self.agent_host_hour,
                    detail=f"ceil(busy-hour calls / {self.calls_per_agent_host:g} per host) all month "
                    f"at the given ${self.agent_host_hour:g}/h",
                    price_keys=(),
                )
            )
        return parts


@dataclass(frozen=True)
class WithExtras:
    """An option plus the shared lines it does not bill itself."""

    inner: CostModel
    extras: Extras
    model_billed: bool = False
    agent_billed: bool = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def kind(self) -> Kind:
        return self.inner.kind

    def _extra(self, traffic: Traffic) -> list[Component]:
        return self.extras.components(traffic, self.model_billed, self.agent_billed)

    def monthly_cost(self, traffic: Traffic, prices: PriceBook) -> CostBreakdown:
        own = self.inner.monthly_cost(traffic, prices)
        added = tuple(c.line_item(traffic.minutes) for c in self._extra(traffic))
        return CostBreakdown(own.option, own.minutes, own.items + added, own.plan, own.contract_required)

    def breakpoints(self, traffic: Traffic, prices: PriceBook, low: float, high: float) -> Breakpoints:
        found = [self.inner.breakpoints(traffic, prices, low, high)]
        found += [c.breakpoints(low, high) for c in self._extra(traffic)]
        return Breakpoints(
            tuple(sorted({m for b in found for m in b.points})), complete=all(b.complete for b in found)
        )


def base_model(model: CostModel) -> CostModel:
    """The option itself, without the shared lines."""
    return model.inner if isinstance(model, WithExtras) else model
