"""`splitrelay relay serve`: several inference endpoints (issue 15), the agent watch, and the
pause-and-confirm barge-in flags (issue 18); each bad value is refused by the flag's name."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from splitrelay.cli.main import app
from splitrelay.cli.relay import barge_in_settings, parse_inference

KEY = "k" * 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--barge-in-confirm-ms", "2001"], "--barge-in-confirm-ms must be 0..2000"),
        (["--barge-in-confirm-ms", "-1"], "--barge-in-confirm-ms must be 0..2000"),
        (["--barge-in-candidate-dbov", "3"], "--barge-in-candidate-dbov must be -127..0"),
        (["--barge-in-sustain-ms", "10"], "--barge-in-sustain-ms must be 20..2000"),
        (["--barge-in-confirm-ms", "soon"], "--barge-in-confirm-ms"),
        (["--agent-timeout", "0.1"], "--agent-timeout must be 0 (off) or 0.4..60"),
        (["--inference", "127.0.0.1:7000,nohost"], "--inference: expected HOST:PORT"),
        (["--inference", "127.0.0.1:0"], "--inference: port must be 1..65535"),
        (["--inference", "::1:7000"], "--inference: put an IPv6 address in brackets"),
    ],
)
def test_bad_values_are_refused_by_name(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPLITRELAY_RELAY_SIGNING_KEY", KEY)
    result = CliRunner().invoke(app, ["relay", "serve", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output  # rich wraps long lines
    assert KEY not in result.output


def test_inference_endpoints_repeat_or_comma_separate_in_order() -> None:
    assert parse_inference(None) == [("127.0.0.1", 7000)]
    assert parse_inference(["10.0.0.5:7000"]) == [("10.0.0.5", 7000)]  # the deploy's single form
    assert parse_inference(["10.0.0.5:7000,10.0.0.6:7000", "[::1]:7001"]) == [
        ("10.0.0.5", 7000),
        ("10.0.0.6", 7000),
        ("::1", 7001),
    ]
    assert parse_inference(["10.0.0.5:7000", "10.0.0.5:7000"]) == [("10.0.0.5", 7000)]  # once each
    with pytest.raises(typer.BadParameter, match=r"1\.\.16 endpoints"):
        parse_inference([",".join(f"10.0.0.{i}:7000" for i in range(17))])


def test_barge_in_settings_feed_call_config() -> None:
    assert barge_in_settings(300, -55.0, 120) == {
        "barge_in_confirm_ms": 300,
        "barge_in_candidate_dbov": -55.0,
        "barge_in_sustain_ms": 120,
        "heard_lag_ms": 20,
        "barge_in_retry_ms": 0,
    }
    with pytest.raises(typer.BadParameter, match=r"--barge-in-retry-ms must be 0 or 100\.\.5000"):
        barge_in_settings(300, -55.0, 120, retry_ms=20)
    with pytest.raises(typer.BadParameter, match=r"--heard-lag-ms must be 0\.\.1000"):
        barge_in_settings(300, -55.0, 120, heard_lag_ms=5000)
