"""Which options a report compares, from the CLI's `--options` and option-specific flags."""

from __future__ import annotations

from splitrelay.cost.breakdown import CostModel
from splitrelay.cost.custom import Fleet, SplitEdge
from splitrelay.cost.errors import CostInputError
from splitrelay.cost.extras import Extras, WithExtras
from splitrelay.cost.hosted import (
    CloudflareRealtimeKit,
    GenericPerMinuteEdge,
    HostedRealtimeAPI,
    LiveKitCloud,
)

OPTION_NAMES = ("custom", "livekit", "realtimekit", "realtime-api", "generic")


def choose_options(
    text: str,
    fleet: Fleet,
    livekit_agents: bool,
    with_model: bool,
    generic_rate: float | None,
    generic_name: str,
    extras: Extras = Extras(),
) -> tuple[CostModel, ...]:
    """`all` (generic only when a rate is given) or a comma-separated subset of OPTION_NAMES, each
    with the shared lines (`extras`) it does not bill itself. A model line makes the realtime API
    carry its tokens: the all-in comparison."""
    allowed = ", ".join(OPTION_NAMES)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise CostInputError("--options", f"must name at least one of: all, {allowed}")
    if names == ["all"]:
        names = [n for n in OPTION_NAMES if n != "generic" or generic_rate is not None]
    for name in names:
        if name not in OPTION_NAMES:
            raise CostInputError("--options", f"unknown option {name!r}; allowed: all, {allowed}")
    if "generic" in names and generic_rate is None:
        raise CostInputError(
            "--generic-rate", "is required for option 'generic' (USD per participant-minute, in [0, 1])"
        )
    built: dict[str, CostModel] = {
        "custom": SplitEdge(fleet),
        "livekit": LiveKitCloud(agents=livekit_agents),
        "realtimekit": CloudflareRealtimeKit(),
        "realtime-api": HostedRealtimeAPI(with_model=with_model or extras.model),
    }
    if generic_rate is not None:
        built["generic"] = GenericPerMinuteEdge(generic_rate, generic_name)
    chosen = [built[name] for name in OPTION_NAMES if name in names]
    if extras.empty:
        return tuple(chosen)
    return tuple(
        WithExtras(
            model,
            extras,
            model_billed=isinstance(model, HostedRealtimeAPI) and model.with_model,
            agent_billed=(isinstance(model, LiveKitCloud) and model.agents)
            or (isinstance(model, HostedRealtimeAPI) and model.with_model),
        )
        for model in chosen
    )
