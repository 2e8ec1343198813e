"""`splitrelay dev --agent HOST:PORT`: the documented Pipecat example (docs/agents.md) takes a call from the
local stack. The agent runs first with its own wire key; dev starts no echo agent and gives the relay that
agent and that key; a headless WebRTC caller speaks through the edge and the parrot says it back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import sys
from pathlib import Path

import httpx
import pytest

from splitrelay.devtools.live_caller import dial
from splitrelay.devtools.stack import StackInfo
from tests.e2e.test_dev_stack import READY_WITHIN_S, STOP_WITHIN_S, dev, read_event

pytest.importorskip("pipecat")
pytestmark = pytest.mark.e2e

SPLITRELAY = [sys.executable, "-m", "splitrelay.cli"]
READY = re.compile(rb"listening on udp://([0-9.]+):(\d+)")


async def test_dev_sends_calls_to_your_pipecat_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_hex(32)
    monkeypatch.setenv("SPLITRELAY_WIRE_KEY", key)  # dev inherits it, as from the user's shell
    agent = await asyncio.create_subprocess_exec(
        *SPLITRELAY, "agent", "pipecat", "splitrelay.integrations.pipecat_parrot:factory",
        "--listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(agent.stdout.readline(), READY_WITHIN_S)
        match = READY.search(line)
        assert match, line
        address = f"{match.group(1).decode()}:{match.group(2).decode()}"
        async with dev(tmp_path, "--agent", address) as process:
            ready = await read_event(process, "ready", READY_WITHIN_S)
            assert "agent" not in ready["pids"] and ready["agent"] == address
            assert key not in json.dumps(ready)
            info = StackInfo.load(Path(ready["stack_file"]))
            async with httpx.AsyncClient(timeout=30) as http:
                caller = await dial(http, info, subject="pipecat-dev")
                try:
                    answered = await caller.hears_the_agent(within=20, frames=10)
                    print(f"the parrot answered {answered:.2f} s after the utterance ended")
                finally:
                    await caller.close()
            process.send_signal(signal.SIGTERM)
            stopped = await read_event(process, "stopped", STOP_WITHIN_S)
            assert stopped["clean"] is True and "agent" not in stopped["exit_codes"]
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(agent.wait(), STOP_WITHIN_S)
            except TimeoutError:
                agent.kill()
                await agent.wait()


async def test_an_external_agent_without_a_wire_key_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPLITRELAY_WIRE_KEY", raising=False)
    async with dev(tmp_path, "--agent", "127.0.0.1:7000") as process:
        with pytest.raises(AssertionError, match="SPLITRELAY_WIRE_KEY"):
            await read_event(process, "ready", READY_WITHIN_S)
    bad = await asyncio.create_subprocess_exec(
        *SPLITRELAY, "dev", "--agent", "localhost",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 2 and b"--agent" in err and b"HOST:PORT" in err
