"""The distribution: one top-level package in the wheel, and the inference SDK alone on a GPU host.

The wheel is built from this checkout with PyPA's `build` (isolated, sdist then wheel, as a user or the
deploy builds it).
The SDK test installs that wheel with no extras into a fresh virtual environment, starts the echo agent
there and calls it through a real relay (this environment) with a real WebRTC caller.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.relay_harness import Caller, relay_towards
from tests.opus_fixtures import UTTERANCE, clip

REPO = Path(__file__).resolve().parents[2]
# What `pip install splitrelay` may bring: the SDK's two dependencies and what they need.
SDK_DISTRIBUTIONS = {"splitrelay", "cffi", "pycparser", "uvloop", "pip", "setuptools"}
AGENT = """
import asyncio, json, sys
from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.sdk import InferenceServer, run

async def main() -> None:
    async with InferenceServer(EchoAgent(EchoConfig(silence_ms=400)), "127.0.0.1", 0) as server:
        print(json.dumps({"port": server.address[1], "modules": sorted(sys.modules)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

run(main())
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        # sdist, then the wheel from the unpacked sdist: nothing stale in the checkout's build/ gets in,
        # and the sdist is shown to carry everything the wheel needs.
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (built,) = out.glob("splitrelay-*.whl")
    return built


@pytest.fixture(scope="module")
def sdk_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    env_dir = tmp_path_factory.mktemp("sdk-venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    yield python


def test_the_wheel_has_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"splitrelay"}
    # Data the roles read at run time travels with the code; the tests do not.
    for needed in (
        "splitrelay/edge/static/index.html",
        "splitrelay/contract/signing.py",
        "splitrelay/inference/sdk.py",
        "splitrelay/cost/prices.toml",
        "splitrelay/devtools/assets/utterance.wav",
        "splitrelay/relay/media/rtp.py",
    ):
        assert needed in names, needed
    assert not any(name.startswith(("tests/", "splitrelay/tests/")) for name in names)


def test_the_sdk_installs_with_nothing_heavier_than_cffi_and_uvloop(sdk_python: Path) -> None:
    listed = subprocess.run(
        [str(sdk_python), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    installed = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert installed <= SDK_DISTRIBUTIONS, installed - SDK_DISTRIBUTIONS
    # The console script says what to install instead of failing with a traceback.
    script = subprocess.run(
        [str(sdk_python.parent / "splitrelay"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert script.returncode == 2
    assert "pip install 'splitrelay[cli]'" in script.stderr
    assert "Traceback" not in script.stderr


async def test_the_sdk_alone_runs_the_echo_agent_behind_a_real_relay(sdk_python: Path) -> None:
    agent = await asyncio.create_subprocess_exec(
        str(sdk_python), "-c", AGENT, cwd="/",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        async with asyncio.timeout(30):
            ready = json.loads(await agent.stdout.readline())
        heavy = {"aiortc", "av", "numpy", "fastapi", "httpx", "boto3", "matplotlib", "typer"}
        assert not heavy & {name.split(".")[0] for name in ready["modules"]}
        audio = clip(UTTERANCE)
        async with relay_towards(("127.0.0.1", ready["port"])) as relay:
            caller = Caller()
            try:
                await caller.attach(relay, "sdk-alone-1")
                await caller.speak(audio.frames, audio.levels)
                await caller.wait_received(sum(audio.speech), within=10)
                back = [packet.payload for packet in caller.received]
                # Byte-identical Opus: the reply is a contiguous run of what the caller said.
                runs = range(len(audio.frames) - len(back) + 1)
                assert any(audio.frames[s : s + len(back)] == back for s in runs), "not a run of the input"
            finally:
                await caller.close()
    finally:
        if agent.returncode is None:
            agent.kill()
        await agent.wait()
