"""Traffic: call-minutes per month and the shape of a call, and what follows from them.

Everything a cost model meters is derived here (calls, bytes each way, peak concurrency), so the
hosted and custom options count the same traffic the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from splitrelay.cost.errors import CostInputError, check_range, number

HOURS_PER_MONTH = 730.0
"""AWS's billing convention; a month is 730 / 24 = 30.42 days throughout."""
DAYS_PER_MONTH = HOURS_PER_MONTH / 24
GB = 1e9
"""Bytes in a GB: Cloudflare, LiveKit and AWS data transfer are all metered in decimal GB here."""
PARTICIPANTS_PER_CALL = 2
"""A voice-AI call has two participants: the caller and the agent (or the relay that stands for it)."""
MINUTES_MAX = 1e12
OPUS_FRAME_MS = (2.5, 5.0, 10.0, 20.0, 40.0, 60.0)
"""Opus frame durations (RFC 6716); 40 and 60 ms are multi-frame packets."""

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
_MINUTES = re.compile(r"\s*([-+]?[0-9][0-9_,]*\.?[0-9]*(?:e[+-]?[0-9]+)?)\s*([kmbg]?)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Traffic:
    """Monthly call volume and per-call media shape (validated on construction)."""

    minutes: float
    call_minutes: float = 3.0
    busy_hour_share: float = 0.1
    bitrate_kbps: float = 32.0
    overhead_bytes: float = 50.0
    frame_ms: float = 20.0

    def __post_init__(self) -> None:
        check_range("--minutes", self.minutes, 0, MINUTES_MAX, low_open=True)
        check_range("--call-minutes", self.call_minutes, 0, 1440, low_open=True)
        check_range("--busy-hour-share", self.busy_hour_share, 0, 1, low_open=True)
        check_range("--bitrate-kbps", self.bitrate_kbps, 6, 510)
        check_range("--overhead-bytes", self.overhead_bytes, 0, 200)
        if self.frame_ms not in OPUS_FRAME_MS:
            allowed = ", ".join(f"{f:g}" for f in OPUS_FRAME_MS)
            raise CostInputError("--frame-ms", f"must be one of {allowed}, got {self.frame_ms!r}")

    def at(self, minutes: float) -> Traffic:
        """The same traffic shape at another volume."""
        return replace(self, minutes=minutes)

    @property
    def calls(self) -> float:
        return self.minutes / self.call_minutes

    @property
    def packets_per_second(self) -> float:
        return 1000.0 / self.frame_ms

    @property
    def bytes_per_minute_each_way(self) -> float:
        """Opus payload plus IP/UDP/RTP/SRTP overhead of every packet, one direction, no DTX."""
        return (self.bitrate_kbps * 1000 / 8 + self.overhead_bytes * self.packets_per_second) * 60

    @property
    def gb_per_minute_each_way(self) -> float:
        return self.bytes_per_minute_each_way / GB

    @property
    def peak_concurrent_calls(self) -> float:
        """Concurrent calls in the busy hour: that hour carries `busy_hour_share` of a day's minutes."""
        return self.minutes * self.busy_hour_share / (DAYS_PER_MONTH * 60)


BUSY_HOUR_FLOOR = 1 / 24
"""A busy hour with less than 1/24 of the day's minutes is quieter than the average hour."""


def input_warnings(traffic: Traffic) -> list[str]:
    """Inputs the docs call unrealistic: accepted, but said out loud."""
    warnings: list[str] = []
    if traffic.busy_hour_share < BUSY_HOUR_FLOOR:
        warnings.append(
            f"--busy-hour-share {traffic.busy_hour_share:g} is below 1/24 = {BUSY_HOUR_FLOOR:.3f}: "
            "the busy hour would be quieter than the average hour, so the relay fleet and plan caps "
            "are understated"
        )
    return warnings


def parse_minutes(text: str) -> float:
    """`1e6`, `1M`, `250k`, `1.5B`, `2,500,000` -> minutes per month, in (0, 1e12]."""
    allowed = f"a number of call-minutes per month in (0, {number(MINUTES_MAX)}], such as 1e6, 1M or 250k"
    if text.startswith("="):
        # `-m=5` reaches us as "=5": a short option takes its value after a space.
        raise CostInputError(
            "--minutes", f"write `-m VALUE` or `--minutes=VALUE` (a short option takes no '='); got -m{text}"
        )
    match = _MINUTES.fullmatch(text)
    if match is None:
        raise CostInputError("--minutes", f"must be {allowed}; got {text!r}")
    try:
        minutes = float(match.group(1).replace(",", "").replace("_", "")) * _SUFFIX[match.group(2).lower()]
    except ValueError:
        raise CostInputError("--minutes", f"must be {allowed}; got {text!r}") from None
    check_range("--minutes", minutes, 0, MINUTES_MAX, low_open=True)
    return minutes
