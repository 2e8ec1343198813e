"""`splitrelay emulator serve` as a subprocess: the JSON start line, a working API, a clean stop."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from splitrelay.relay.sfu_client import SfuClient
from tests.emulator_fixtures import APP_ID, APP_SECRET, TURN_KEY_ID, TURN_TOKEN

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def test_serve_prints_a_start_line_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "emulator.toml"
    config.write_text(f'[apps]\n"{APP_ID}" = "{APP_SECRET}"\n[turn_keys]\n"{TURN_KEY_ID}" = "{TURN_TOKEN}"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "emulator",
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        "--json",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = await process.stdout.readline()
        start = json.loads(line)
        assert start["event"] == "emulator_started" and start["port"] > 0
        assert start["base_url"] == f"http://127.0.0.1:{start['port']}/v1"
        assert start["app_ids"] == [APP_ID] and start["stun_url"].startswith("stun:127.0.0.1:")
        async with SfuClient(start["base_url"], APP_ID, APP_SECRET) as sfu:
            session = await sfu.new_session()
            assert (await sfu.get_session(session.session_id)).tracks == ()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert APP_SECRET not in (line + stdout + stderr).decode()
    assert TURN_TOKEN not in (line + stdout + stderr).decode()


async def test_serve_without_apps_fails_with_a_clear_error() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "emulator",
        "serve",
        "--port",
        "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "apps: configure at least one app id and secret" in stderr.decode()
