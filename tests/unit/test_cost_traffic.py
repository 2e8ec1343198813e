"""Traffic inputs: volume parsing, derived quantities by hand, and the limits of each field."""

from __future__ import annotations

from typing import Any

import pytest

from splitrelay.cost.custom import Fleet
from splitrelay.cost.errors import CostInputError
from splitrelay.cost.traffic import Traffic, parse_minutes


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("1e6", 1e6),
        ("1M", 1e6),
        ("1m", 1e6),
        ("250k", 250e3),
        ("1.5B", 1.5e9),
        ("2,500,000", 2.5e6),
        ("10_000", 1e4),
    ],
)
def test_minutes_forms(text: str, minutes: float) -> None:
    assert parse_minutes(text) == minutes


@pytest.mark.parametrize("text", ["0", "-5", "-1M", "abc", "1e13", "M", "1 million", ""])
def test_bad_minutes_name_the_flag_and_range(text: str) -> None:
    with pytest.raises(CostInputError) as caught:
        parse_minutes(text)
    assert caught.value.field == "--minutes"
    assert "(0, 1e12]" in caught.value.message


def test_derived_quantities_by_hand() -> None:
    traffic = Traffic(
        1_000_000, call_minutes=4, busy_hour_share=0.2, bitrate_kbps=24, overhead_bytes=60, frame_ms=20
    )
    assert traffic.calls == 250_000
    assert traffic.packets_per_second == 50
    # 24 kbps = 3,000 B/s of Opus; 60 B x 50 packets = 3,000 B/s of headers; x 60 s.
    assert traffic.bytes_per_minute_each_way == 360_000
    assert traffic.gb_per_minute_each_way == pytest.approx(0.00036)
    # A busy hour carrying 20% of a day's minutes: 1e6 / (730/24) days x 0.2 / 60 min.
    assert traffic.peak_concurrent_calls == pytest.approx(1e6 / (730 / 24) * 0.2 / 60)
    assert traffic.peak_concurrent_calls == pytest.approx(109.589, abs=1e-3)
    assert traffic.at(2e6).peak_concurrent_calls == pytest.approx(2 * traffic.peak_concurrent_calls)


@pytest.mark.parametrize(
    ("fields", "flag", "interval"),
    [
        ({"busy_hour_share": 0.0}, "--busy-hour-share", "(0, 1]"),
        ({"busy_hour_share": 1.01}, "--busy-hour-share", "(0, 1]"),
        ({"busy_hour_share": float("nan")}, "--busy-hour-share", "(0, 1]"),
        ({"call_minutes": 0.0}, "--call-minutes", "(0, 1440]"),
        ({"bitrate_kbps": 5.0}, "--bitrate-kbps", "[6, 510]"),
        ({"overhead_bytes": -1.0}, "--overhead-bytes", "[0, 200]"),
        ({"frame_ms": 7.0}, "--frame-ms", "2.5, 5, 10, 20, 40, 60"),
        ({"minutes": -3.0}, "--minutes", "(0, 1e12]"),
    ],
)
def test_traffic_limits(fields: dict[str, Any], flag: str, interval: str) -> None:
    with pytest.raises(CostInputError) as caught:
        Traffic(**{"minutes": 1e6, **fields})
    assert caught.value.field == flag
    assert interval in caught.value.message


@pytest.mark.parametrize(
    ("fields", "flag", "interval"),
    [
        ({"regions": 0}, "--regions", "[1, 50]"),
        ({"regions": 1.5}, "--regions", "whole number"),
        ({"min_instances_per_region": 0}, "--min-instances", "[1, 100]"),
        ({"calls_per_core": 0.0}, "--calls-per-core", "(0, 100000]"),
        ({"headroom": 0.9}, "--headroom", "[1, 10]"),
        ({"accelerators": -1}, "--accelerators", "[0, 20]"),
        ({"engineering_usd": -5.0}, "--engineering", "[0, 1e9]"),
        ({"instance_type": "big box"}, "--instance-type", "m7g.large"),
    ],
)
def test_fleet_limits(fields: dict[str, Any], flag: str, interval: str) -> None:
    with pytest.raises(CostInputError) as caught:
        Fleet(**fields)
    assert caught.value.field == flag
    assert interval in caught.value.message
