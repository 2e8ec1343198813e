"""The caller's page when the agent dies (issue 15), run inside a network namespace of its own.

``unshare --net`` for the reason tests/browser/scenario.py gives (every packet on 127.0.0.1). Inside,
the local stack as child processes (scripts/devtools/stack.py: Realtime emulator, one echo agent, one
relay in the deployed shape, ``--workers 2``, and the local edge serving the page), then the Node
driver (tests/browser/agent_lost_driver.mjs) with Chromium. Once the page is in the call, the only
agent is SIGKILLed by PID; the relay's worker loses it (keep-alives), ends the call and tells the edge
through its supervisor; the edge closes the record and the SFU tracks; the page reads its record
(once a second), closes its peer connection and shows why. This module gathers the times and what is
left open into a JSON report that tests/e2e/test_browser_agent_lost.py asserts on.

Usage: python -m tests.browser.agent_lost_scenario CONFIG.json   (CONFIG: see :class:`AgentLostConfig`)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from splitrelay.bench.calls_leaks import EMULATOR_KEYS, STATE_PATH
from splitrelay.devtools.call import RelayAccess, RelayInspector
from splitrelay.devtools.stack import Stack, StackConfig, StackInfo
from tests.browser.scenario import Driver, loopback_only

DRIVER = Path(__file__).resolve().parent / "agent_lost_driver.mjs"
CLEANUP_WAIT_S = 10.0  # the emulator ends the caller's session on its (shortened) reconnect timer


@dataclass(frozen=True)
class AgentLostConfig:
    wav: str  # the fake microphone (48 kHz mono WAV, looped by Chromium)
    screenshot: str
    work_dir: str  # the stack's run directory, Chromium's fresh profile and the driver's config go here
    report: str
    chromium: str = "/usr/bin/chromium"
    node: str = "node"
    call_timeout_s: float = 30.0  # until the page is connected and receives audio
    end_timeout_s: float = 10.0  # after the kill, until the page shows the end (the test asserts less)

    @classmethod
    def load(cls, path: str) -> AgentLostConfig:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: must hold a JSON object")
        return cls(**doc)


async def what_is_open(http: httpx.AsyncClient, info: StackInfo, within: float) -> dict[str, Any]:
    """The relay's live calls and the emulator's counts, once nothing is open (or after ``within``)."""
    assert info.emulator_url is not None
    relay = RelayInspector(http, RelayAccess(info.relay_url, info.relay_signing_key.encode()))
    url = info.emulator_url.removesuffix("/v1") + STATE_PATH
    now: dict[str, Any] = {}
    for _ in range(int(within / 0.25) + 1):  # bounded
        calls = await relay.request("GET relay /v1/calls", "GET", "/v1/calls")
        state = await http.get(url, headers={"authorization": f"Bearer {info.sfu_app_secret}"})
        state.raise_for_status()
        counts = {key: int(state.json()["state"].get(key, 0)) for key in EMULATOR_KEYS}
        now = {"relay_calls": len(calls.json()["calls"]), "emulator": counts}
        if now["relay_calls"] == 0 and not any(counts.values()):
            break
        await asyncio.sleep(0.25)
    return now


async def run(config: AgentLostConfig, report: dict[str, Any], secrets: list[str]) -> None:
    """Fill ``report`` as the scenario goes, so a failure still reports what was reached."""
    work = Path(config.work_dir)
    report["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    stack = Stack(StackConfig(relay_workers=2, sfu_reconnect_window_s=1.0, run_dir=work / "stack"))
    try:
        info = await stack.start()
        assert info.page is not None and info.edge_url is not None
        page_token = info.page.split("#token=", 1)[1]
        secrets += [page_token, info.relay_signing_key, info.sfu_app_secret, info.token_signing_key]
        agent = next(comp for comp in stack.components if comp.name == "agent")
        driver_config = {
            "url": info.page,
            "wav": config.wav,
            "chromium": config.chromium,
            "userDataDir": str(work / "chromium-profile"),
            "screenshot": config.screenshot,
            "callTimeoutS": config.call_timeout_s,
            "endTimeoutS": config.end_timeout_s,
        }
        config_path = work / "driver.json"
        config_path.write_text(json.dumps(driver_config))
        config_path.chmod(0o600)  # it holds the page's token
        driver = await Driver.start(config.node, DRIVER, config_path, page_token)
        try:
            report["launched"] = await driver.until("launched", 30.0)
            in_call = await driver.until("in_call", config.call_timeout_s + 20.0)
            report["in_call"] = {"view": in_call["view"], "peers": in_call["peers"]}
            call_id = str(in_call["view"]["callId"])
            async with httpx.AsyncClient(timeout=10.0) as http:
                relay = RelayInspector(http, RelayAccess(info.relay_url, info.relay_signing_key.encode()))
                summary = await relay.call(call_id)
                report["relay_call_before"] = {"worker": (summary or {}).get("worker")}
                # The page reads its record once a second: a kill at a random phase of that cycle, so
                # that runs measure the whole range, not one phase.
                await asyncio.sleep(random.uniform(0.0, 1.0))
                report["killed_at"] = time.time()
                os.kill(agent.process.pid, signal.SIGKILL)  # the only agent, by PID
                await driver.send_last("killed")
                ended = await driver.until("ended", config.end_timeout_s + 5.0)
                report["ended"] = ended
                record = await http.get(
                    f"{info.edge_url}/v1/calls/{call_id}", headers={"authorization": f"Bearer {page_token}"}
                )
                report["edge_record"] = record.json()
                report["left_open"] = await what_is_open(http, info, CLEANUP_WAIT_S)
        finally:
            await driver.stop()
            report["driver_log"] = driver.log
            report["driver_exit"] = driver.process.returncode
    except BaseException:
        report["logs"] = {  # what each component said, for the failure message (secrets scrubbed later)
            log.stem: log.read_text(errors="replace").splitlines()[-40:]
            for log in sorted((work / "stack").glob("*.log"))
        }
        raise
    finally:
        stopped = await stack.stop()
        report["stack_leftovers"] = stopped.leftovers


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    if len(argv) != 2:
        print("usage: python -m tests.browser.agent_lost_scenario CONFIG.json", file=sys.stderr)
        return 2
    config = AgentLostConfig.load(argv[1])
    if shutil.which(config.node) is None:
        print(f"node: {config.node!r} not found on PATH", file=sys.stderr)
        return 2
    loopback_only()
    report: dict[str, Any] = {}
    secrets: list[str] = []
    status = 0
    try:
        asyncio.run(run(config, report, secrets))
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    text = json.dumps(report, indent=1) + "\n"
    for secret in secrets:  # the page's token and the stack's keys: scrubbed from everything reported
        text = text.replace(secret, "<secret>")
    Path(config.report).write_text(text)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
