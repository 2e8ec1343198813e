"""`splitrelay relay serve` refuses bad configuration before binding anything, naming the option."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from splitrelay.cli.main import app

KEY = "k" * 40


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "SPLITRELAY_RELAY_SIGNING_KEY"),
        ([], {"SPLITRELAY_RELAY_SIGNING_KEY": "short"}, "at least 32 bytes"),
        (["--port-range", "9-5"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "1024 <= low <= high"),
        (["--port-range", "abc"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "LOW-HIGH"),
        (["--stun", "turn:example.com"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "stun:HOST"),
        (["--candidate-address", "not-an-ip"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "not an IPv4/IPv6"),
        (["--workers", "0"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "--workers must be 1..256"),
        (["--max-calls", "0"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "--max-calls must be 1..100000"),
        (["--sfu-url", "http://x"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "SPLITRELAY_SFU_APP_SECRET"),
        (["--inference", "nohost"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "HOST:PORT"),
        (["--bogus"], {"SPLITRELAY_RELAY_SIGNING_KEY": KEY}, "No such option"),
    ],
)
def test_bad_configuration_exits_non_zero_naming_the_problem(
    args: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPLITRELAY_RELAY_SIGNING_KEY", raising=False)
    result = CliRunner().invoke(app, ["relay", "serve", *args], env=env)
    assert result.exit_code != 0
    assert message in result.output
    assert KEY not in result.output


def test_signing_key_file_must_exist() -> None:
    result = CliRunner().invoke(app, ["relay", "serve", "--signing-key-file", "/nonexistent/key"])
    assert result.exit_code != 0 and "signing key file" in result.output
