"""End to end through the edge: a real aiortc caller → edge → Realtime emulator → relay (SFU mode) → echo
agent → back, byte-identical. Run twice: the edge on CPython (scripts/devtools/local_edge.py) and the edge
in its real
runtime (the Worker under Pyodide in Node, tests/pyodide/worker_host.mjs).

Also measures what the issue asks: the time from the SDP answer to the first relayed audio at the
caller (printed; docs/edge.md quotes it). With SPLITRELAY_RECORD_EDGE=path, the CPython run records the
SFU and relay exchanges of its call setup: that file is the recorded exchange the Pyodide unit test and
the edge benchmark replay (tests/pyodide/recorded_call_setup.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from splitrelay.devtools.local_edge import LocalEdge
from splitrelay.edge import tokens
from splitrelay.edge.calls import Inbound, Outbound
from splitrelay.emulator.server import EmulatorServer
from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.relay.call import CallConfig
from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath
from splitrelay.relay.server import ControlServer, RelayServer, RelaySettings, SfuSettings
from tests.edge_support import RELAY_KEY, TOKEN_KEY, edge_env, no_secret_in
from tests.emulator_fixtures import APP_ID, APP_SECRET, TURN_KEY_ID, TURN_TOKEN, emulator_config
from tests.opus_fixtures import encode, tone
from tests.pyodide import host

pytestmark = pytest.mark.integration

FRAMES = encode(tone(1000))  # 50 real Opus frames
FRAME_TS = 960


async def echo(call: InferenceCall) -> None:
    async for frame in call.frames():
        call.send_audio(frame.payload)


class Recorder:
    """Wraps the local edge's fetch and keeps every SFU/TURN/relay exchange of the call setup."""

    def __init__(self, edge: LocalEdge) -> None:
        self.inner = edge.fetch
        self.exchanges: list[dict[str, Any]] = []

    async def __call__(self, request: Outbound) -> Inbound:
        response = await self.inner(request)
        self.exchanges.append(
            {
                "method": request.method,
                "key": host.recorded_key(request.method, request.url, request.body),
                "status": response.status,
                "body": json.loads(response.body) if response.body else None,
            }
        )
        return response


@contextlib.asynccontextmanager
async def stack() -> AsyncIterator[tuple[EmulatorServer, RelayServer]]:
    async with (
        EmulatorServer(emulator_config()) as emulator,
        InferenceServer(echo, "127.0.0.1", 0) as inference,
    ):
        assert emulator.info is not None and inference.address is not None
        settings = RelaySettings(
            signing_keys={"default": RELAY_KEY.encode()},
            inference=inference.address,
            port=0,
            candidates=LOOPBACK,
            call=CallConfig(fast_path=FastPathConfig(rtcp_interval=0.2)),
            sfu=SfuSettings(emulator.info.base_url, APP_ID, APP_SECRET),
        )
        async with RelayServer(settings) as relay:
            yield emulator, relay


def stack_env(emulator: EmulatorServer, relay: RelayServer) -> dict[str, str]:
    assert emulator.info is not None
    return edge_env(
        [{"id": "local", "control_url": relay.url, "region": "loopback"}],
        SFU_APP_ID=APP_ID,
        SFU_APP_SECRET=APP_SECRET,
        SFU_API_URL=emulator.info.base_url,
        TURN_KEY_ID=TURN_KEY_ID,
        TURN_KEY_API_TOKEN=TURN_TOKEN,
    )


async def call_through(edge_url: str, *, drain: Any = None) -> dict[str, Any]:
    """One caller: offer → edge → answer; speak 50 frames; return what came back and the timings."""
    token, _ = tokens.issue(TOKEN_KEY.encode(), "e2e-caller")
    auth = {"authorization": f"Bearer {token}"}
    peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    received: list[RtpPacket] = []
    first_back: list[float] = []

    def on_packet(packet: RtpPacket) -> None:
        if not first_back:
            first_back.append(time.perf_counter())
        received.append(packet)

    fast_path: SrtpFastPath | None = None
    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:
        try:
            offer = await peer.create_offer()
            response = await http.post(
                "/v1/calls", json={"offer": {"type": "offer", "sdp": offer}}, headers=auth
            )
            answered = time.perf_counter()
            assert response.status_code == 201, response.text
            created = response.json()
            await peer.accept_answer(created["answer"]["sdp"])
            await peer.wait_connected(within=10)
            fast_path = SrtpFastPath.attach(peer.pc, on_packet, FastPathConfig(rtcp_interval=0.2))
            state: dict[str, Any] = {}
            for _ in range(200):  # bounded: 10 s for the background relay attach
                state = (await http.get(f"/v1/calls/{created['call_id']}", headers=auth)).json()
                if state["state"] != "created":
                    break
                await asyncio.sleep(0.05)
            assert state["state"] == "connected", state
            stream = fast_path.outbound_streams[0]
            start = time.perf_counter()
            for index, frame in enumerate(FRAMES):
                fast_path.send(
                    frame, (index * FRAME_TS) & 0xFFFFFFFF, marker=index == 0, audio_level=30, voice=True
                )
                delay = start + (index + 1) * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            for _ in range(200):  # bounded: 10 s
                if len(received) >= len(FRAMES):
                    break
                await asyncio.sleep(0.05)
            deleted = await http.delete(f"/v1/calls/{created['call_id']}", headers=auth)
            assert deleted.status_code == 200 and deleted.json()["closed_now"] is True, deleted.text
            assert deleted.json()["cleanup"] == {"sfu": "ok", "relay": "ok"}
            again = await http.delete(f"/v1/calls/{created['call_id']}", headers=auth)
            assert again.status_code == 200 and again.json()["closed_now"] is False
            for reply in (response, deleted, again):
                assert no_secret_in(reply.content)
            del stream
        finally:
            if fast_path is not None:
                await fast_path.close()
            await peer.close()
    return {
        "offer": offer,
        "created": created,
        "state": state,
        "payloads": [packet.payload for packet in received],
        "answer_to_first_audio_ms": (first_back[0] - answered) * 1000 if first_back else None,
    }


def check_echo(result: dict[str, Any]) -> None:
    assert result["payloads"][: len(FRAMES)] == FRAMES, (
        f"{len(result['payloads'])} of {len(FRAMES)} frames back"
    )
    print(
        f"\nanswer -> connected (edge record): {result['state']['answer_to_connected_ms']} ms; "
        f"answer -> first relayed audio at the caller: {result['answer_to_first_audio_ms']:.0f} ms"
    )


async def test_call_through_local_edge(tmp_path: Path) -> None:
    async with stack() as (emulator, relay):
        edge = LocalEdge(stack_env(emulator, relay))
        recorder = Recorder(edge)
        edge.app.calls._fetch = recorder
        server = ControlServer(edge, "127.0.0.1", 0)
        await server.start()
        try:
            result = await call_through(server.url)
        finally:
            await server.stop()
            await edge.aclose()
    check_echo(result)
    assert result["state"]["relay"]["id"] == "local"
    keys = [f"{item['method']} {item['key']}" for item in recorder.exchanges]
    assert keys[:1] == [f"POST /v1/apps/{APP_ID}/sessions/new"] and "POST /v1/calls" in keys
    target = os.environ.get("SPLITRELAY_RECORD_EDGE")
    if target:
        setup = [
            item
            for item in recorder.exchanges
            if item["method"] != "DELETE" and "/tracks/close" not in item["key"]
        ]
        recording = json.dumps({"offer": result["offer"], "exchanges": setup}, indent=1) + "\n"
        await asyncio.to_thread(Path(target).write_text, recording)


async def test_call_through_worker_in_pyodide(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    host.build_bundle(bundle)
    async with stack() as (emulator, relay):
        config = host.host_config(bundle, stack_env(emulator, relay))
        async with host.worker_host(config, tmp_path) as worker:
            result = await call_through(worker.url)
    check_echo(result)
    log = host.host_log(tmp_path)
    assert no_secret_in(log), "a secret reached the Worker host's log"
