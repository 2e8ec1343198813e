"""`splitrelay relay serve --workers 2`: a supervisor routes calls to per-core worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.sdk import InferenceServer
from tests.integration.relay_harness import SIGNING_KEY, Caller, SignedApi
from tests.opus_fixtures import UTTERANCE, clip

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _start_supervisor(inference: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SPLITRELAY_RELAY_SIGNING_KEY=SIGNING_KEY.decode())
    return subprocess.Popen(
        [sys.executable, "-m", "splitrelay.cli", "relay", "serve", "--workers", "2", "--port", "0", "--json",
         "--candidate-address", "127.0.0.1", "--inference", inference],
        stdout=subprocess.PIPE,
        env=env,
    )  # fmt: skip


def _gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
async def supervisor() -> AsyncIterator[tuple[subprocess.Popen[bytes], SignedApi]]:
    async with InferenceServer(EchoAgent(EchoConfig(silence_ms=300)), "127.0.0.1", 0) as agent:
        assert agent.address is not None
        process = _start_supervisor(f"{agent.address[0]}:{agent.address[1]}")
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=60)
            ready = json.loads(line)
            assert ready["event"] == "ready" and ready["workers"] == 2
            async with httpx.AsyncClient(base_url=ready["url"], timeout=15) as http:
                yield process, SignedApi(http)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()


async def test_calls_are_spread_over_workers_and_each_echoes(
    supervisor: tuple[subprocess.Popen[bytes], SignedApi],
) -> None:
    process, api = supervisor
    workers = _children(process.pid)
    assert len(workers) == 2
    audio = clip(UTTERANCE)
    callers = [Caller() for _ in range(4)]
    try:
        await asyncio.gather(*(c.attach(api, f"w-{i}") for i, c in enumerate(callers)))
        owners = [(await api.request("GET", f"/v1/calls/w-{i}")).json()["worker"] for i in range(4)]
        assert sorted(owners) == [0, 0, 1, 1]  # least-loaded placement
        await asyncio.gather(*(c.speak(audio.frames, audio.levels) for c in callers))
        await asyncio.gather(*(c.wait_received(sum(audio.speech), within=15) for c in callers))
        for c in callers:
            back = [p.payload for p in c.received]
            assert any(audio.frames[i : i + len(back)] == back for i in range(len(audio.frames)))
        listed = (await api.request("GET", "/v1/calls")).json()["calls"]
        assert sorted(c["call_id"] for c in listed) == [f"w-{i}" for i in range(4)]
        metrics = (await api.http.get("/metrics")).text
        assert 'splitrelay_calls_live{process="0"} 2.0' in metrics
        assert 'splitrelay_calls_live{process="1"} 2.0' in metrics
        closed = await api.request("DELETE", "/v1/calls/w-0")
        assert closed.json()["closed"] is True and closed.json()["summary"]["packets_in"] == len(audio.frames)
        assert (await api.request("GET", "/v1/calls/w-0")).status_code == 404
    finally:
        await asyncio.gather(*(c.close() for c in callers))


async def test_sigterm_stops_the_supervisor_and_every_worker(
    supervisor: tuple[subprocess.Popen[bytes], SignedApi],
) -> None:
    process, api = supervisor
    workers = _children(process.pid)
    assert len(workers) == 2
    assert (await api.request("GET", "/v1/calls")).status_code == 200
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 30) == 0
    assert all(_gone(pid) for pid in workers)
