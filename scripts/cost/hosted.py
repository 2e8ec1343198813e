"""Hosted options: someone else's edge, priced per minute, per GB or per token.

All count the same two participants per call (caller and agent) and the same bytes each way as the
custom edge (`traffic.py`), so differences come from pricing, not from counting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from splitrelay.cost.breakdown import Component, ComponentModel, Fixed, Kind, Metered, flat
from splitrelay.cost.catalogue import PriceBook
from splitrelay.cost.errors import check_range
from splitrelay.cost.traffic import PARTICIPANTS_PER_CALL, Traffic


@dataclass(frozen=True)
class LiveKitCloud(ComponentModel):
    """Connection-minutes for each participant, downstream GB, a plan fee, optional agent hosting."""

    agents: bool = False
    name: ClassVar[str] = "livekit"
    label: ClassVar[str] = "LiveKit Cloud"
    kind: ClassVar[Kind] = "hosted"

    def components(self, traffic: Traffic, prices: PriceBook) -> list[Component]:
        conn = prices.value("livekit.connection_minute")
        per_gb = prices.value("livekit.downstream_per_gb")
        free_min = prices.value("livekit.included_connection_minutes")
        free_gb = prices.value("livekit.included_downstream_gb")
        parts: list[Component] = [
            Fixed(
                "Plan fee", prices.value("livekit.plan_month"), "cheapest paid plan", ("livekit.plan_month",)
            ),
            Metered(
                "Connection minutes",
                "connection-minutes",
                per_minute=PARTICIPANTS_PER_CALL,
                tiers=flat(conn),
                included=free_min,
                detail=f"{PARTICIPANTS_PER_CALL} participants per call-minute, {free_min:,.0f} included, "
                f"then ${conn:g} each",
                price_keys=("livekit.connection_minute", "livekit.included_connection_minutes"),
            ),
            Metered(
                "Downstream data",
                "GB",
                # Each participant receives the other's audio; upstream is free.
                per_minute=PARTICIPANTS_PER_CALL * traffic.gb_per_minute_each_way,
                tiers=flat(per_gb),
                included=free_gb,
                detail=f"each participant receives the other's audio, {free_gb:,.0f} GB included, "
                f"then ${per_gb:g}/GB",
                price_keys=("livekit.downstream_per_gb", "livekit.included_downstream_gb"),
            ),
        ]
        if self.agents:
            agent = prices.value("livekit.agent_session_minute")
            free_agent = prices.value("livekit.included_agent_minutes")
            parts.append(
                Metered(
                    "Agent session minutes",
                    "agent-session-minutes",
                    per_minute=1.0,
                    tiers=flat(agent),
                    included=free_agent,
                    detail=f"agent hosted on LiveKit Cloud, {free_agent:,.0f} included, then ${agent:g}/min",
                    price_keys=("livekit.agent_session_minute", "livekit.included_agent_minutes"),
                )
            )
        return parts


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
