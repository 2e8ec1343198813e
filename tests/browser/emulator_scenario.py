"""A Chromium page calls the Realtime emulator's API cross-origin and closes a track by renegotiation.

Runs inside a network namespace of its own (``unshare --net``), as tests/browser/scenario.py does and
for the same reason: with ``lo`` the only interface every packet stays on 127.0.0.1. The emulator runs
in process; a tiny HTTP server on another loopback port serves the page, so the page's origin
(``http://127.0.0.1:PAGE_PORT``) differs from the API's and every call is a CORS request. The Node
driver (tests/browser/emulator_driver.mjs) runs the scenario in the page and prints its result; this
module adds the emulator's own view and writes a JSON report that tests/e2e/test_emulator_browser.py
asserts on.

Usage: python -m tests.browser.emulator_scenario CONFIG.json  (CONFIG: see :class:`EmulatorScenarioConfig`)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from splitrelay.emulator.server import EmulatorServer
from tests.browser.scenario import Driver, loopback_only
from tests.emulator_fixtures import APP_ID, APP_SECRET, FAST_TIMERS, emulator_config

DRIVER = Path(__file__).resolve().parent / "emulator_driver.mjs"
PAGE = b"<!doctype html><html><head><title>emulator client</title></head><body>emulator client</body></html>"
MAX_REQUEST_BYTES = 16_384


@dataclass(frozen=True)
class EmulatorScenarioConfig:
    work_dir: str  # Chromium's fresh profile and the driver's config go here
    report: str
    chromium: str = "/usr/bin/chromium"
    node: str = "node"
    timeout_s: float = 20.0  # each wait inside the page (connection, packets)

    @classmethod
    def load(cls, path: str) -> EmulatorScenarioConfig:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: must hold a JSON object")
        return cls(**doc)


async def _serve_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Any GET gets the empty page: all the page does is run the driver's script."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n"
            + f"content-length: {len(PAGE)}\r\n\r\n".encode()
            + PAGE
        )
        await writer.drain()
    writer.close()


async def run(config: EmulatorScenarioConfig, report: dict[str, Any]) -> None:
    work = Path(config.work_dir)
    report["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    page_server = await asyncio.start_server(_serve_page, "127.0.0.1", 0, limit=MAX_REQUEST_BYTES)
    page_port = int(page_server.sockets[0].getsockname()[1])
    try:
        async with EmulatorServer(emulator_config(FAST_TIMERS)) as emulator:
            assert emulator.info is not None
            report["api_port"], report["page_port"] = emulator.info.port, page_port
            driver_config = {
                "pageUrl": f"http://127.0.0.1:{page_port}/",
                "apiBase": emulator.info.base_url,
                "appId": APP_ID,
                "appSecret": APP_SECRET,
                "chromium": config.chromium,
                "userDataDir": str(work / "chromium-profile"),
                "timeoutS": config.timeout_s,
            }
            config_path = work / "emulator-driver.json"
            config_path.write_text(json.dumps(driver_config))
            process = await asyncio.create_subprocess_exec(
                config.node,
                str(DRIVER),
                str(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            driver = Driver(process, APP_SECRET)
            try:
                report["launched"] = await driver.until("launched", 30.0)
                report["result"] = await driver.until("result", 4 * config.timeout_s + 20.0)
                report["emulator_state"] = asdict(emulator.emulator.introspect())
            finally:
                await driver.stop()
                report["driver_log"] = driver.log
                report["driver_exit"] = process.returncode
    finally:
        page_server.close()
        await page_server.wait_closed()


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO if os.environ.get("SPLITRELAY_SCENARIO_DEBUG") else logging.WARNING
    )
    if len(argv) != 2:
        print("usage: python -m tests.browser.emulator_scenario CONFIG.json", file=sys.stderr)
        return 2
    config = EmulatorScenarioConfig.load(argv[1])
    if shutil.which(config.node) is None:
        print(f"node: {config.node!r} not found on PATH", file=sys.stderr)
        return 2
    loopback_only()
    report: dict[str, Any] = {}
    status = 0
    try:
        asyncio.run(run(config, report))
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    Path(config.report).write_text((json.dumps(report, indent=1) + "\n").replace(APP_SECRET, "<secret>"))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
