"""The hard case of one port per worker: an SFU that reaches every session from ONE address and port.

The emulator runs with ``media_port`` (every session on one UDP socket, as an anycast SFU does) and the
relay with ``media_port`` (every call on one UDP socket): in SFU mode each relay call then sees the same
remote address and port, and the emulator sees every relay session from one address too. Callers (own
sockets) attach through the relay in SFU mode; each call's audio carries its call's tag byte and must
come back to that caller only, while calls are set up and torn down around it. Real aiortc, real SRTP,
nothing mocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from splitrelay.contract.safety import Secret
from splitrelay.devtools.stack import free_udp_port
from splitrelay.emulator.clients import Participant
from splitrelay.emulator.config import ConfigError, EmulatorConfig
from splitrelay.emulator.server import EmulatorServer
from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.sdk import InferenceServer
from splitrelay.relay.media.peer import LOOPBACK, CandidatePolicy
from splitrelay.relay.media.shared_port import SharedUdpPort
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from splitrelay.relay.server import RelayServer, RelaySettings, SfuSettings
from splitrelay.relay.sfu_client import SfuClient
from tests.emulator_fixtures import APP_ID, APP_SECRET, emulator_config
from tests.integration.relay_harness import SIGNING_KEY, SignedApi
from tests.opus_fixtures import clip

pytestmark = pytest.mark.integration

SPEECH = clip((("silence", 100), ("tone", 400), ("silence", 500)))


async def _wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.perf_counter() + within
    for _ in range(int(within / 0.01) + 1):
        if predicate():
            return
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{what}: not within {within} s")


class TaggedCall:
    """One caller through the SFU to the relay: its frames carry ``tag`` as their first byte."""

    def __init__(
        self, sfu: SfuClient, api: SignedApi, call_id: str, tag: int, *, rtcp_interval: float = 0.3
    ) -> None:
        self.caller = Participant(
            sfu, fast_path_config=FastPathConfig(rtcp_interval=rtcp_interval, bye_on_close=False)
        )
        self.api = api
        self.call_id = call_id
        self.tag = tag
        self.mid = ""

    async def start(self) -> None:
        caller = self.caller
        await caller.open()
        self.mid = await caller.publish("mic", bidirectional=True)
        attached = await self.api.request(
            "POST",
            "/v1/calls",
            {
                "call_id": self.call_id,
                "mode": "sfu",
                "sfu": {"caller_session_id": caller.session_id, "caller_track_name": "mic"},
            },
        )
        assert attached.status_code == 201, attached.text
        body = attached.json()
        await caller.pull(body["sfu_session_id"], body["sfu_track_name"], mid=f"#{'mic'}")
        await caller.wait_connected()

    async def speak(self, turns: int) -> None:
        out = self.caller.outbound(self.mid)
        start = time.perf_counter()
        sent = 0
        for _ in range(turns):
            for payload, level in zip(SPEECH.frames, SPEECH.levels, strict=True):
                out.send(bytes([self.tag]) + payload, sent * 960, marker=sent == 0, audio_level=level)
                sent += 1
                delay = start + sent * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)

    def echoed(self) -> list[bytes]:
        return [p.payload for p in self.caller.received]

    async def stop(self) -> None:
        try:
            closed = await self.api.request("DELETE", f"/v1/calls/{self.call_id}")
            assert closed.status_code == 200, closed.text
        finally:
            await self.caller.close()


def check_own_echo(call: TaggedCall) -> None:
    echoed = call.echoed()
    speech = sum(SPEECH.speech)
    assert len(echoed) >= speech, f"{call.call_id}: {len(echoed)} frames echoed, want >= {speech}"
    strangers = {p[0] for p in echoed if p[0] != call.tag}
    assert not strangers, f"{call.call_id} (tag {call.tag}) heard calls {sorted(strangers)}: cross-talk"


@dataclasses.dataclass
class Rig:
    """The emulator on one socket, an echo agent, a relay on one port, and clients of both."""

    emulator: EmulatorServer
    relay: RelayServer
    api: SignedApi
    sfu: SfuClient
    port: SharedUdpPort
    """The relay's one media port."""
    sfu_media: SharedUdpPort
    """The emulator's one media socket: the remote address every relay call shares."""

    async def end(self, calls: list[TaggedCall]) -> None:
        for call in calls:
            if self.relay.manager is not None and call.call_id in self.relay.manager.calls:
                await call.stop()
            else:
                await call.caller.close()


@asynccontextmanager
async def anycast_rig(*, sfu_rtcp_interval: float | None = None) -> AsyncIterator[Rig]:
    """``sfu_rtcp_interval``: the emulator's RTCP report interval (60: a silent SFU, as toward muted
    callers); by default the fixtures' 0.2 s."""
    config = dataclasses.replace(emulator_config(), media_port=0)
    if sfu_rtcp_interval is not None:
        config = dataclasses.replace(config, rtcp_interval=sfu_rtcp_interval)
    async with (
        EmulatorServer(config) as emulator,
        InferenceServer(EchoAgent(EchoConfig(silence_ms=300)), "127.0.0.1", 0) as agent,
    ):
        assert emulator.info is not None and agent.address is not None and emulator.media is not None
        assert emulator.info.media_address == emulator.media.address
        settings = RelaySettings(
            signing_keys={"default": SIGNING_KEY},
            inference=agent.address,
            port=0,
            candidates=LOOPBACK,
            media_port=free_udp_port(),
            sfu=SfuSettings(emulator.info.base_url, APP_ID, APP_SECRET),
        )
        async with (
            RelayServer(settings) as relay,
            httpx.AsyncClient(base_url=relay.url, timeout=30) as http,
            SfuClient(emulator.info.base_url, APP_ID, Secret(APP_SECRET)) as sfu,
        ):
            assert relay._shared_port is not None and relay.manager is not None
            yield Rig(emulator, relay, SignedApi(http), sfu, relay._shared_port, emulator.media)


async def test_sfu_on_one_socket_to_a_relay_on_one_port_keeps_eight_calls_apart() -> None:
    """Eight calls through an SFU on one socket to a relay on one port, media both ways, no cross-talk;
    four more set up and two torn down while the others talk."""
    async with anycast_rig() as rig:
        port = rig.port
        calls = [TaggedCall(rig.sfu, rig.api, f"shared-{i}", tag=i) for i in range(12)]
        try:
            first, later = calls[:8], calls[8:]
            await asyncio.gather(*(c.start() for c in first))  # eight set-ups at once
            talking = [asyncio.ensure_future(c.speak(turns=2)) for c in first]
            await asyncio.gather(*(c.start() for c in later))  # four more while eight talk
            await asyncio.gather(*talking)
            for call in first[:2]:  # two end while the rest go on
                await call.stop()
            await asyncio.gather(*(c.speak(turns=1) for c in first[2:] + later))
            survivors = first[2:] + later
            await _wait_for(
                lambda: all(len(c.echoed()) >= sum(SPEECH.speech) for c in survivors),
                within=15,
                what="every call's echo",
            )
            for call in calls:
                check_own_echo(call)
            stats = port.stats()
            # Every relay call met the SFU at the same one address: shared, routed by keys and turns.
            assert stats.flows_shared >= 11 and stats.flow_conflicts == 0
            assert stats.routed_by_claim >= 10 and stats.routed_by_ssrc > 100
            # Set-ups waited for their turn at the SFU's address; no DTLS went astray. What no call's
            # keys took is the SFU's reports to the two closed calls' sessions until they ended.
            assert stats.held > 0 and stats.dtls_ambiguous == 0 and stats.delivery_errors == 0
            assert stats.unclaimed <= 40, stats
            sfu_side = rig.sfu_media.stats()
            assert sfu_side.flows_shared >= 11 and sfu_side.delivery_errors == 0
            # The same counters on /metrics, where an operator watches a staging relay (docs/deploy.md).
            metrics = (await rig.api.http.get("/metrics")).text
            exported = _metric(metrics, "splitrelay_media_port_flows_shared_total")
            assert exported is not None and exported >= stats.flows_shared, metrics
            assert _metric(metrics, "splitrelay_media_port_calls") is not None
            finished = _metric(metrics, "splitrelay_media_port_native_finished_total")
            assert finished is not None and (finished > 0 or not rig.port.native)
            out_finished = _metric(metrics, "splitrelay_media_port_native_out_finished_total")
            assert out_finished is not None
            assert out_finished > 0 or rig.relay.link.native_out is None, "the echo answers in real time"
        finally:
            await rig.end(calls)


def _metric(text: str, name: str) -> float | None:
    """A metric's value for process 0 in Prometheus text, or None when it is not there."""
    prefix = name + '{process="0"} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def test_a_shared_media_socket_needs_exactly_one_candidate_address() -> None:
    base = emulator_config()
    with pytest.raises(ConfigError, match="one shared socket serves exactly one candidate address"):
        dataclasses.replace(base, media_port=0, candidates=CandidatePolicy(addresses=("127.0.0.1", "::1")))
    with pytest.raises(ConfigError, match=r"media_port: must be 0 or 1024\.\.65535"):
        dataclasses.replace(base, media_port=80)
    assert isinstance(dataclasses.replace(base, media_port=0), EmulatorConfig)


async def test_serve_media_port_puts_every_session_on_one_socket(tmp_path: Path) -> None:
    """`splitrelay emulator serve --media-port 0`: the start line names the one socket, which is bound."""
    config = tmp_path / "emulator.toml"
    config.write_text(f'[apps]\n"{APP_ID}" = "{APP_SECRET}"\n')
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "splitrelay.cli", "emulator", "serve", "--config", str(config)),
        *("--port", "0", "--media-port", "0", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            start = json.loads(await process.stdout.readline())
        host, port = start["media_address"]
        assert host == "127.0.0.1" and port > 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
            probe.bind((host, port))  # the emulator holds it
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()


async def test_forged_datagrams_from_the_shared_sfu_address_disturb_no_call() -> None:
    """Spoofed datagrams with the SFU's one source address, while three calls run through it: a replay
    of a real SRTP packet, SRTP under a live call's SSRC, a forged close_notify (encrypted alert), a
    ClientHello while no set-up holds the address, a check with a wrong password. None is taken by any
    call, none closes one or counts against its keys, and every call goes on hearing only itself."""
    async with anycast_rig() as rig:
        relay, port = rig.relay, rig.port
        assert relay.manager is not None
        demux, sfu_addr = port.demux, rig.sfu_media.address
        taken: list[bytes] = []
        offer = demux._offer

        def recording(call: Any, data: bytes, addr: tuple[str, int]) -> bool:
            ok = offer(call, data, addr)
            if ok and len(taken) < 50:
                taken.append(data)
            return ok

        demux._offer = recording  # type: ignore[method-assign]
        calls = [TaggedCall(rig.sfu, rig.api, f"forged-{i}", tag=i) for i in range(3)]
        try:
            await asyncio.gather(*(c.start() for c in calls))
            await asyncio.gather(*(c.speak(turns=1) for c in calls))
            assert taken and demux.is_shared(sfu_addr)
            ssrc = next(iter(demux._shared[sfu_addr].ssrcs))
            before = demux.stats()
            paths = [relay.manager.calls[c.call_id].fast_path for c in calls]
            assert all(p is not None for p in paths)
            counts = [p.stats() for p in paths if p is not None]
            forged_srtp = b"\x80\x6f\x12\x34" + bytes(4) + ssrc.to_bytes(4, "big") + bytes(40)
            alert = b"\x15\xfe\xfd\x00\x01" + bytes(5) + b"\x09\x00\x1a" + bytes(26)
            hello = b"\x16\xfe\xfd\x00\x00" + bytes(6) + b"\x00\x10\x01" + bytes(15)
            ufrag = next(iter(demux._calls))
            from tests.unit.test_demux import binding_request

            for _ in range(20):
                for data in (taken[0], taken[-1], forged_srtp, alert, hello):
                    demux.datagram_received(data, sfu_addr)
                demux.datagram_received(binding_request(ufrag, "not-the-password-123456"), sfu_addr)
            after = demux.stats()
            assert after.unclaimed - before.unclaimed >= 60  # replays and the forged SRTP
            assert after.forged - before.forged == 20
            assert after.dtls_ambiguous - before.dtls_ambiguous == 20  # the ClientHellos
            assert after.routed_by_claim == before.routed_by_claim  # nothing new learned
            await asyncio.sleep(0.3)
            assert all(relay.manager.calls[c.call_id].peer.pc.connectionState == "connected" for c in calls)
            for path, count in zip(paths, counts, strict=True):
                assert path is not None and path.stats().undecryptable == count.undecryptable
            for call in calls:
                call.caller.received.clear()
            await asyncio.gather(*(c.speak(turns=1) for c in calls))
            await _wait_for(lambda: all(len(c.echoed()) >= sum(SPEECH.speech) for c in calls), 15, "echoes")
            for call in calls:
                check_own_echo(call)
        finally:
            demux._offer = offer  # type: ignore[method-assign]
            await rig.end(calls)
