"""The relay in SFU attach mode, through the Cloudflare Realtime emulator, with real WebRTC on both legs.

The test plays the edge's part: it opens the caller's SFU session and pushes the mic, asks the relay to
attach (signed), then pulls the relay's output into the caller's same transceiver (`mid: "#mic"`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from splitrelay.contract.safety import Secret
from splitrelay.emulator.clients import Participant
from splitrelay.emulator.server import EmulatorServer
from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.sdk import InferenceServer
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.server import RelayServer, RelaySettings, SfuSettings
from splitrelay.relay.sfu_client import SfuClient
from tests.emulator_fixtures import APP_ID, APP_SECRET, emulator_config
from tests.integration.relay_harness import SIGNING_KEY, SignedApi
from tests.opus_fixtures import UTTERANCE, clip

pytestmark = pytest.mark.integration


async def _wait_for(predicate: Callable[[], bool], within: float) -> None:
    deadline = time.perf_counter() + within
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


async def test_caller_through_the_sfu_to_the_relay_and_back_is_byte_identical() -> None:
    audio = clip(UTTERANCE)
    async with (
        EmulatorServer(emulator_config()) as emulator,
        InferenceServer(EchoAgent(EchoConfig(silence_ms=300)), "127.0.0.1", 0) as agent,
    ):
        assert emulator.info is not None and agent.address is not None
        settings = RelaySettings(
            signing_keys={"default": SIGNING_KEY},
            inference=agent.address,
            port=0,
            candidates=LOOPBACK,
            sfu=SfuSettings(emulator.info.base_url, APP_ID, APP_SECRET),
        )
        async with (
            RelayServer(settings) as relay,
            httpx.AsyncClient(base_url=relay.url, timeout=15) as http,
            SfuClient(emulator.info.base_url, APP_ID, Secret(APP_SECRET)) as sfu,
        ):
            api = SignedApi(http)
            caller = Participant(sfu)
            try:
                await caller.open()
                mid = await caller.publish("mic", bidirectional=True)
                attached = await api.request(
                    "POST",
                    "/v1/calls",
                    {
                        "call_id": "sfu-call-1",
                        "mode": "sfu",
                        "sfu": {"caller_session_id": caller.session_id, "caller_track_name": "mic"},
                    },
                )
                assert attached.status_code == 201, attached.text
                body = attached.json()
                assert body["mode"] == "sfu" and body["sfu_track_name"] == "relay-sfu-call-1"
                await caller.pull(body["sfu_session_id"], body["sfu_track_name"], mid="#mic")
                await caller.wait_connected()
                relay_call = relay.manager.calls["sfu-call-1"] if relay.manager else None
                assert relay_call is not None
                await _wait_for(lambda: relay_call.state == "live", within=10)

                out = caller.outbound(mid)
                start = time.perf_counter()
                for i, (payload, level) in enumerate(zip(audio.frames, audio.levels, strict=True)):
                    out.send(payload, i * 960, marker=i == 0, audio_level=level)
                    delay = start + (i + 1) * 0.02 - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await _wait_for(lambda: len(caller.received) >= sum(audio.speech), within=10)
                await asyncio.sleep(0.3)
                back = [p.payload for p in caller.received]
                assert any(audio.frames[i : i + len(back)] == back for i in range(len(audio.frames))), (
                    "the echo through SFU → relay → agent → relay → SFU is not a byte-identical run"
                )
                info = (await api.request("GET", "/v1/calls/sfu-call-1")).json()
                assert info["mode"] == "sfu" and info["packets_in"] == len(audio.frames)
                # The relay saw the caller's RFC 6464 levels through the SFU (forwarded, not decoded).
                assert info["speech_frames_decoded"] == 0

                closed = await api.request("DELETE", "/v1/calls/sfu-call-1")
                assert closed.json()["closed"] is True
                # The relay closed its own tracks on the SFU (detach runs after the close).
                await _wait_for(
                    lambda: not relay.manager or not relay.manager.sfu or not relay.manager.sfu.sessions, 5
                )
            finally:
                await caller.close()
