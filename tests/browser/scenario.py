"""The browser-client scenario, run inside a network namespace of its own (``unshare --net``).

Why a namespace: Chromium's WebRTC gathers candidates on every interface it finds and skips loopback;
in a fresh namespace the only interface is ``lo``, so with ``--allow-loopback-in-peer-connection`` every
packet of the call (ICE, DTLS, SRTP, STUN, HTTP) provably stays on 127.0.0.1. The stack, the Node driver
and Chromium all run in it; the pytest process outside cannot reach in, so this module gathers facts
and writes a JSON report that tests/e2e/test_browser_client.py asserts on.

The stack is assembled as tests/integration/test_edge_e2e.py does: in-process Realtime emulator, the
echo agent (relay/inference/echo_agent.py), a relay in SFU mode, the local edge
(scripts/devtools/local_edge.py) serving the page.

Usage: python -m tests.browser.scenario CONFIG.json   (CONFIG: see :class:`ScenarioConfig`)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from splitrelay.contract.signing import sign_headers
from splitrelay.devtools.local_edge import LocalEdge
from splitrelay.edge import tokens
from splitrelay.emulator.config import Timers
from splitrelay.emulator.http_api import STATE_PATH
from splitrelay.emulator.server import EmulatorServer
from splitrelay.inference.echo_agent import EchoAgent
from splitrelay.inference.sdk import InferenceServer
from splitrelay.relay.call import CallConfig
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from splitrelay.relay.server import ControlServer, RelayServer, RelaySettings, SfuSettings
from tests.edge_support import RELAY_KEY, TOKEN_KEY, edge_env
from tests.emulator_fixtures import APP_ID, APP_SECRET, TURN_KEY_ID, TURN_TOKEN, emulator_config

DRIVER = Path(__file__).resolve().parent / "client_driver.mjs"
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = struct.Struct("16sh22x")  # struct ifreq: name, flags, padding to the union's 40 bytes
# Short emulator timers so that "no live session" is reached soon after hang-up.
TIMERS = Timers(track_idle_timeout=30.0, reconnect_window=1.0, connect_wait=2.0, unconnected_session_ttl=30.0)
CLEANUP_WAIT_S = 10.0
MAX_DRIVER_LINES = 1000  # console lines included; bounds the read loop

logger = logging.getLogger("splitrelay.browser_scenario")


@dataclass(frozen=True)
class ScenarioConfig:
    wav: str  # the fake microphone (48 kHz mono WAV, looped by Chromium)
    screenshot: str
    work_dir: str  # Chromium's fresh profile and the driver's config go here
    report: str
    chromium: str = "/usr/bin/chromium"
    node: str = "node"
    call_timeout_s: float = 30.0  # until the page has measured what ``want_*`` ask for
    want_turns: int = 1
    want_barge_ins: int = 1

    @classmethod
    def load(cls, path: str) -> ScenarioConfig:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: must hold a JSON object")
        return cls(**doc)


def loopback_only() -> None:
    """Bring ``lo`` up; refuse to run where any other interface exists (not a fresh namespace)."""
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        raise SystemExit(f"interfaces: must be only ['lo'] (run under `unshare --net`), found {names}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = IFREQ.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ.pack(b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ.pack(b"lo", flags | IFF_UP))


@dataclass
class Stack:
    emulator: EmulatorServer
    relay: RelayServer
    edge_url: str


@contextlib.asynccontextmanager
async def stack() -> AsyncIterator[Stack]:
    async with (
        EmulatorServer(emulator_config(TIMERS)) as emulator,
        InferenceServer(EchoAgent(), "127.0.0.1", 0) as inference,
    ):
        assert emulator.info is not None and inference.address is not None
        settings = RelaySettings(
            signing_keys={"default": RELAY_KEY.encode()},
            inference=inference.address,
            port=0,
            candidates=LOOPBACK,
            call=CallConfig(fast_path=FastPathConfig(rtcp_interval=0.5)),
            sfu=SfuSettings(emulator.info.base_url, APP_ID, APP_SECRET),
        )
        async with RelayServer(settings) as relay:
            env = edge_env(
                [{"id": "local", "control_url": relay.url, "region": "loopback"}],
                SFU_APP_ID=APP_ID,
                SFU_APP_SECRET=APP_SECRET,
                SFU_API_URL=emulator.info.base_url,
                TURN_KEY_ID=TURN_KEY_ID,
                TURN_KEY_API_TOKEN=TURN_TOKEN,
            )
            edge = LocalEdge(env)
            server = ControlServer(edge, "127.0.0.1", 0)
            await server.start()
            try:
                yield Stack(emulator, relay, server.url)
            finally:
                await server.stop()
                await edge.aclose()


class Driver:
    """The Node driver as a child process: JSON lines out (stderr merged), one ``hangup`` line in."""

    def __init__(self, process: asyncio.subprocess.Process, secret: str) -> None:
        self.process = process
        self.secret = secret
        self.log: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, node: str, driver: Path, config_path: Path, secret: str) -> Driver:
        """``node driver config_path``, stdout and stderr merged into one pipe of JSON lines."""
        process = await asyncio.create_subprocess_exec(
            node,
            str(driver),
            str(config_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process, secret)

    async def until(self, event: str, within: float) -> dict[str, Any]:
        """Read lines until ``event`` (console lines are kept); a driver error or exit raises."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + within
        for _ in range(MAX_DRIVER_LINES):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), left)
            except TimeoutError:
                break
            if not raw:
                raise RuntimeError(f"driver exited before {event!r}; its output: {self.log[-5:]}")
            line = raw.decode(errors="replace").replace(self.secret, "<token>").strip()
            try:
                doc = json.loads(line)
            except ValueError:  # Node's own messages (stderr is merged): kept, not fatal
                doc = {"event": "output", "text": line[:500]}
            if doc.get("event") == event:
                return dict(doc)
            if doc.get("event") == "error":
                raise RuntimeError(f"driver: {doc.get('message')}")
            self.log.append(doc)
        raise RuntimeError(f"driver: no {event!r} within {within:g} s")

    async def send_last(self, line: str) -> None:
        """Send the one command the driver takes, and close its stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        self.process.stdin.close()

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 15.0)
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def relay_call(http: httpx.AsyncClient, relay_url: str, call_id: str) -> dict[str, Any]:
    """The relay's own record of the call (packets in and out), signed as the edge signs."""
    path = f"/v1/calls/{call_id}"
    response = await http.get(relay_url + path, headers=sign_headers(RELAY_KEY.encode(), "GET", path, b""))
    response.raise_for_status()
    return dict(response.json())


async def relay_calls(http: httpx.AsyncClient, relay_url: str) -> list[dict[str, Any]]:
    """Every live call on the relay, with its counters."""
    path = "/v1/calls"
    response = await http.get(relay_url + path, headers=sign_headers(RELAY_KEY.encode(), "GET", path, b""))
    response.raise_for_status()
    return list(response.json()["calls"])


async def live(http: httpx.AsyncClient, stack: Stack) -> dict[str, Any]:
    """What is still open: the relay's calls and the emulator's sessions, peers and tracks."""
    calls = await relay_calls(http, stack.relay.url)
    assert stack.emulator.info is not None
    base = stack.emulator.info.base_url.removesuffix("/v1")
    state = await http.get(base + STATE_PATH, headers={"authorization": f"Bearer {APP_SECRET}"})
    state.raise_for_status()
    return {"relay_calls": len(calls), "emulator": state.json()["state"]}


def all_closed(now: dict[str, Any]) -> bool:
    emulator = now["emulator"]
    return now["relay_calls"] == 0 and all(
        emulator[key] == 0 for key in ("sessions", "peer_connections", "publications", "subscriptions")
    )


async def run(config: ScenarioConfig, token: str, report: dict[str, Any]) -> None:
    """Fill ``report`` as the scenario goes, so a failure still reports what was reached."""
    work = Path(config.work_dir)
    report["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    async with stack() as running, httpx.AsyncClient(timeout=10.0) as http:
        driver_config = {
            "url": f"{running.edge_url}/#token={token}",
            "wav": config.wav,
            "chromium": config.chromium,
            "userDataDir": str(work / "chromium-profile"),
            "screenshot": config.screenshot,
            "callTimeoutS": config.call_timeout_s,
            "hangupWaitS": 30,
            "want": {"turns": config.want_turns, "bargeIns": config.want_barge_ins},
        }
        config_path = work / "driver.json"
        config_path.write_text(json.dumps(driver_config))
        driver = await Driver.start(config.node, DRIVER, config_path, token)
        try:
            report["launched"] = await driver.until("launched", 30.0)
            try:
                in_call = await driver.until("in_call", config.call_timeout_s + 20.0)
            except RuntimeError:
                report["relay_calls"] = await relay_calls(http, running.relay.url)
                raise
            report["page"] = {"first": in_call["first"], "later": in_call["later"]}
            call_id = in_call["later"]["callId"]
            edge_record = await http.get(
                f"{running.edge_url}/v1/calls/{call_id}", headers={"authorization": f"Bearer {token}"}
            )
            report["edge_record"] = edge_record.json()
            report["relay_record"] = await relay_call(http, running.relay.url, call_id)
            report["live_in_call"] = await live(http, running)
            await driver.send_last("hangup")
            report["page"]["closed"] = (await driver.until("closed", 20.0))["view"]
            now = await live(http, running)
            for _ in range(int(CLEANUP_WAIT_S / 0.1)):  # bounded: the emulator ends sessions on a timer
                if all_closed(now):
                    break
                await asyncio.sleep(0.1)
                now = await live(http, running)
            report["live_after_hangup"] = now
            after = await http.get(
                f"{running.edge_url}/v1/calls/{call_id}", headers={"authorization": f"Bearer {token}"}
            )
            report["edge_record_after"] = after.json()
        finally:
            await driver.stop()
            report["driver_log"] = driver.log
            report["driver_exit"] = driver.process.returncode


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO if os.environ.get("SPLITRELAY_SCENARIO_DEBUG") else logging.WARNING
    )
    if len(argv) != 2:
        print("usage: python -m tests.browser.scenario CONFIG.json", file=sys.stderr)
        return 2
    config = ScenarioConfig.load(argv[1])
    if shutil.which(config.node) is None:
        print(f"node: {config.node!r} not found on PATH", file=sys.stderr)
        return 2
    loopback_only()
    token, _ = tokens.issue(TOKEN_KEY.encode(), "browser-test", ttl_s=600)
    report: dict[str, Any] = {}
    status = 0
    try:
        asyncio.run(run(config, token, report))
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    # The caller token is a secret: scrubbed from everything the report carries (driver errors included).
    Path(config.report).write_text((json.dumps(report, indent=1) + "\n").replace(token, "<token>"))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
