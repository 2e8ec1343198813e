"""`relay serve --media-port`: bad combinations are refused naming the flag, before anything binds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENV = {
    "PATH": "/usr/bin:/bin",
    "COLUMNS": "200",
    "SPLITRELAY_RELAY_SIGNING_KEY": "k" * 40,
    "SPLITRELAY_WIRE_KEY": "ab" * 32,
    "HOME": os.environ.get("HOME", "/tmp"),
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--media-port", "80", "--candidate-address", "127.0.0.1"], "must be 1024..65535"),
        (["--media-port", "65535", "--workers", "2", "--candidate-address", "127.0.0.1"], "1024..65534"),
        (
            ["--media-port", "40000", "--port-range", "40000-40010", "--candidate-address", "127.0.0.1"],
            "not both",
        ),
        (["--media-port", "40000"], "exactly one --candidate-address"),
    ],
)
def test_bad_media_port_options_are_refused_by_name(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "splitrelay.cli", "relay", "serve", *args],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--media-port" in done.stderr and message in done.stderr, done.stderr
