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


@pytest.mark.parametrize("via", ["stdin", "env"])
async def test_serve_takes_its_config_without_a_file(tmp_path: Path, via: str) -> None:
    """`--config -` (JSON on stdin, then closed) or $SPLITRELAY_EMULATOR_CONFIG: no secrets file on disk,
    and no secret in the ready line, the human start message or the logs (debug level)."""
    import os

    doc = json.dumps({"apps": {APP_ID: APP_SECRET}, "turn_keys": {TURN_KEY_ID: TURN_TOKEN}})
    env = dict(os.environ)
    args = ["--port", "0", "--log-level", "debug"]
    if via == "stdin":
        args += ["--config", "-"]
    else:
        env["SPLITRELAY_EMULATOR_CONFIG"] = doc
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "emulator",
        "serve",
        *args,
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        if via == "stdin":
            process.stdin.write(doc.encode())
            await process.stdin.drain()
            process.stdin.close()
        async with asyncio.timeout(20):
            line = await process.stdout.readline()
        assert line.startswith(b"Realtime emulator: http://127.0.0.1:"), line
        base_url = line.split()[-1].decode()
        async with SfuClient(base_url, APP_ID, APP_SECRET) as sfu:
            await sfu.new_session()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    everything = (line + stdout + stderr).decode()
    assert APP_SECRET not in everything and TURN_TOKEN not in everything
    assert not os.listdir(tmp_path)  # nothing written where it ran


async def test_serve_refuses_bad_config_json_on_stdin_without_echoing_it() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "emulator",
        "serve",
        "--config",
        "-",
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        stdout, stderr = await process.communicate(f'{{"apps": {{"a": "{APP_SECRET}"'.encode())
    assert process.returncode == 2
    assert "config from stdin: not valid JSON" in stderr.decode()
    assert APP_SECRET not in (stdout + stderr).decode()
