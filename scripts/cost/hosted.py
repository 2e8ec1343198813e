"""Hosted options: someone else's edge, priced per minute, per GB or per token.

All count the same two participants per call (caller and agent) and the same bytes each way as the
custom edge (`traffic.py`), so differences come from pricing, not from counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from splitrelay.cost.breakdown import Component, ComponentModel, Fixed, Kind, Metered, flat
from splitrelay.cost.catalogue import PriceBook
from splitrelay.cost.errors import CostInputError, check_range
from splitrelay.cost.plans import Plan, PlannedModel, plan_names
from splitrelay.cost.traffic import PARTICIPANTS_PER_CALL, Traffic

LIVEKIT_PLANS = "livekit.plans."


@dataclass(frozen=True)
class LiveKitCloud(PlannedModel):
    """LiveKit Cloud's self-serve plans: base fee, included connection-minutes, downstream GB and
    agent minutes, overage after them, a cap on concurrent connections. The cheapest plan that
    admits the busy hour is bought; above the last cap a contract is required."""

    agents: bool = False
    name: ClassVar[str] = "livekit"
    label: ClassVar[str] = "LiveKit Cloud"
    kind: ClassVar[Kind] = "hosted"

    def connections_per_minute(self, traffic: Traffic) -> float:
        # Caller and agent are both connections for the whole call.
        return PARTICIPANTS_PER_CALL * traffic.peak_concurrent_calls / traffic.minutes

    def plans(self, traffic: Traffic, prices: PriceBook) -> list[Plan]:
        return [self._plan(name, traffic, prices) for name in plan_names(prices, LIVEKIT_PLANS)]

    def _plan(self, plan: str, traffic: Traffic, prices: PriceBook) -> Plan:
        prefix = f"{LIVEKIT_PLANS}{plan}."
        fields = prices.under(prefix)
        missing = [f for f in _LIVEKIT_FIELDS if f not in fields]
        if missing:
            raise CostInputError(
                f"prices: {prefix}{missing[0]}", f"plan {plan!r} needs every one of {_LIVEKIT_FIELDS}"
            )

        def v(field: str) -> float:
            return fields[field].value

        def key(field: str) -> str:
            return prefix + field

        title = plan.capitalize()
        parts: list[Component] = [
            Fixed(f"Plan fee ({title})", v("month"), f"LiveKit Cloud {title} plan", (key("month"),)),
            Metered(
                "Connection minutes",
                "connection-minutes",
                per_minute=PARTICIPANTS_PER_CALL,
                tiers=flat(v("connection_minute")),
                included=v("included_connection_minutes"),
                detail=f"{PARTICIPANTS_PER_CALL} participants per call-minute, "
                f"{v('included_connection_minutes'):,.0f} included, then ${v('connection_minute'):g} each",
                price_keys=(key("connection_minute"), key("included_connection_minutes")),
            ),
            Metered(
                "Downstream data",
                "GB",
                # Each participant receives the other's audio; upstream is free.
                per_minute=PARTICIPANTS_PER_CALL * traffic.gb_per_minute_each_way,
                tiers=flat(v("downstream_per_gb")),
                included=v("included_downstream_gb"),
                detail=f"each participant receives the other's audio, {v('included_downstream_gb'):,.0f} GB "
                f"included, then ${v('downstream_per_gb'):g}/GB",
                price_keys=(key("downstream_per_gb"), key("included_downstream_gb")),
            ),
        ]
        if self.agents:
            parts.append(
                Metered(
                    "Agent session minutes",
                    "agent-session-minutes",
                    per_minute=1.0,
                    tiers=flat(v("agent_session_minute")),
                    included=v("included_agent_minutes"),
                    detail=f"agent hosted on LiveKit Cloud, {v('included_agent_minutes'):,.0f} included, "
                    f"then ${v('agent_session_minute'):g}/min",
                    price_keys=(key("agent_session_minute"), key("included_agent_minutes")),
                )
            )
        return Plan(title, tuple(parts), v("max_connections"))


_LIVEKIT_FIELDS = (
    "month",
    "included_connection_minutes",
    "connection_minute",
    "included_downstream_gb",
    "downstream_per_gb",
    "included_agent_minutes",
    "agent_session_minute",
    "max_connections",
)


@dataclass(frozen=True)
class CloudflareRealtimeKit(ComponentModel):
    """Audio-only participant-minutes; bandwidth included."""

    name: ClassVar[str] = "realtimekit"
    label: ClassVar[str] = "Cloudflare RealtimeKit"
    kind: ClassVar[Kind] = "hosted"

    def components(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        rate = prices.value("cloudflare.realtimekit.audio_participant_minute")
        return [
            Metered(
                "Audio participant-minutes",
                "participant-minutes",
                per_minute=PARTICIPANTS_PER_CALL,
                tiers=flat(rate),
                detail=f"{PARTICIPANTS_PER_CALL} participants (caller and agent) at ${rate:g}/min",
                price_keys=("cloudflare.realtimekit.audio_participant_minute",),
            )
        ]


@dataclass(frozen=True)
class HostedRealtimeAPI(ComponentModel):
    """A speech-to-speech API whose WebRTC transport is bundled: $0 for transport; the model's
    token charges appear only with `with_model`, stated with their tokens-per-second assumption."""

    with_model: bool = False
    name: ClassVar[str] = "realtime-api"
    label: ClassVar[str] = "Hosted realtime API (OpenAI)"
    kind: ClassVar[Kind] = "hosted"

    def components(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        parts: list[Component] = [
            Fixed(
                "Transport (bundled)",
                0.0,
                "no charge for bandwidth or connections; model tokens billed separately",
            )
        ]
        if not self.with_model:
            return parts
        for side, share_key, rate_key, price_key in (
            (
                "input",
                "openai.realtime.caller_talk_share",
                "openai.realtime.input_tokens_per_second",
                "openai.realtime.audio_input_per_million_tokens",
            ),
            (
                "output",
                "openai.realtime.agent_talk_share",
                "openai.realtime.output_tokens_per_second",
                "openai.realtime.audio_output_per_million_tokens",
            ),
        ):
            share, rate, price = prices.value(share_key), prices.value(rate_key), prices.value(price_key)
            parts.append(
                Metered(
                    f"Model audio {side} tokens",
                    "tokens",
                    per_minute=60 * rate * share,
                    tiers=flat(price / 1e6),
                    detail=f"{rate:g} tokens/s for {share:.0%} of each minute, ${price:g}/M tokens "
                    "(re-sent context not counted)",
                    price_keys=(share_key, rate_key, price_key),
                )
            )
        return parts


@dataclass(frozen=True)
class GenericPerMinuteEdge(ComponentModel):
    """Any edge priced per participant-minute at a rate the user gives (Daily, Twilio, others
    without a trustworthy public price)."""

    rate: float
    label: str = "Generic per-minute edge"
    name: ClassVar[str] = "generic"
    kind: ClassVar[Kind] = "hosted"

    def __post_init__(self) -> None:
        check_range("--generic-rate", self.rate, 0, 1)

    def components(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        return [
            Metered(
                "Participant-minutes",
                "participant-minutes",
                per_minute=PARTICIPANTS_PER_CALL,
                tiers=flat(self.rate),
                detail=f"{PARTICIPANTS_PER_CALL} participants at the given ${self.rate:g}/min",
                price_keys=(),
            )
        ]
