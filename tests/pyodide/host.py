"""Python side of the Worker's runtime tests: find Node, Pyodide and the SDK wheel, build the bundle with
wrangler, and start tests/pyodide/worker_host.mjs on loopback (or run its benchmark mode).

Missing tools skip a test on a developer machine but fail it under CI (``CI`` set): the runtime check
is the point of these tests, and ``make setup`` installs everything they need.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST_SCRIPT = Path(__file__).resolve().parent / "worker_host.mjs"
WORKERS_SDK_VERSION = "1.9.5"
WHEEL_DIR = REPO / "build" / "wheels"
WRANGLER = REPO / "node_modules" / ".bin" / "wrangler"
PYODIDE = REPO / "node_modules" / "pyodide"
STARTUP_TIMEOUT_S = 90.0


def recorded_key(method: str, url: str, body: bytes | str | None) -> str:
    """How a recorded exchange is looked up (as worker_host.mjs): ids out of the path, offer or not."""
    path = re.sub(r"/sessions/(?!new$)[^/]+", "/sessions/{session}", urlsplit(url).path, count=1)
    path = re.sub(r"/calls/[^/]+$", "/calls/{call}", path)
    data = body.encode() if isinstance(body, str) else body
    return path + ("+sdp" if data and b'"sessionDescription"' in data else "")


def need(condition: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when a tool the runtime tests need is missing."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Worker's runtime tests: {what}")
    pytest.skip(what)


def node() -> str:
    path = shutil.which("node")
    need(path is not None, "needs node on PATH (apt-get install nodejs npm)")
    assert path is not None
    return path


def pyodide_dir() -> Path:
    need((PYODIDE / "pyodide.mjs").is_file(), "needs the npm pyodide package: `make setup` (npm install)")
    return PYODIDE


def wrangler() -> Path:
    need(WRANGLER.exists(), "needs wrangler from package.json: `make setup` (npm install)")
    return WRANGLER


def sdk_wheel() -> Path:
    """The real workers-runtime-sdk wheel: $SPLITRELAY_WORKERS_SDK_WHEEL, build/wheels/, else from PyPI."""
    override = os.environ.get("SPLITRELAY_WORKERS_SDK_WHEEL")
    if override:
        return Path(override)
    name = f"workers_runtime_sdk-{WORKERS_SDK_VERSION}-py3-none-any.whl"
    if not (WHEEL_DIR / name).is_file():
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(WHEEL_DIR),
             f"workers-runtime-sdk=={WORKERS_SDK_VERSION}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        need(
            result.returncode == 0,
            f"needs the workers-runtime-sdk wheel (pip download failed: {result.stderr[-300:]})",
        )
    return WHEEL_DIR / name


def build_bundle(outdir: Path) -> str:
    """``wrangler deploy --dry-run --outdir``: exactly what would be uploaded. Returns wrangler's output."""
    env = {**os.environ, "WRANGLER_SEND_METRICS": "false", "CI": "true", "NO_COLOR": "1"}
    result = subprocess.run(
        [str(wrangler()), "deploy", "--dry-run", "--outdir", str(outdir)],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"wrangler dry-run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    )
    return result.stdout


def host_config(bundle: Path, env: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "pyodide": str(pyodide_dir()),
        "bundle": str(bundle),
        "wheel": str(sdk_wheel()),
        "assets": str(REPO / "edge" / "static"),
        "env": env,
        **extra,
    }


@dataclass
class WorkerHost:
    url: str
    ready: dict[str, Any]
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def worker_host(config: dict[str, Any], workdir: Path) -> AsyncIterator[WorkerHost]:
    """Start the Worker under Pyodide in Node on 127.0.0.1; stop it on exit."""
    config_path = workdir / "host-config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    stderr_path = workdir / "host-stderr.log"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            node(), str(HOST_SCRIPT), "serve", str(config_path), stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
        try:
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
            except TimeoutError:
                line = b""
            if not line:
                raise AssertionError(f"worker host did not start:\n{stderr_path.read_text()[-3000:]}")
            ready = json.loads(line)
            yield WorkerHost(ready["url"], ready, process)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def host_log(workdir: Path) -> str:
    path = workdir / "host-stderr.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def run_bench(config: dict[str, Any], workdir: Path, timeout_s: float = 600.0) -> dict[str, Any]:
    """The host's bench mode: call setups against recorded responses; returns its JSON report."""
    config_path = workdir / "bench-config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    result = subprocess.run(
        [node(), str(HOST_SCRIPT), "bench", str(config_path)],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report
