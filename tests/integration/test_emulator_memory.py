"""After calls end, the emulator holds nothing more than before: sessions, peers, transports, tasks, RSS.

Bounded: one warm-up call, then CALLS real calls (aiortc publisher and subscriber through the
emulator, Opus forwarded, tracks closed, clients hung up); every session ends through the (shortened)
reconnect window. Object counts are compared with the baseline exactly (robust); RSS only loosely
(allocators keep freed memory, so a plateau is expected, growth per call is not).
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from pathlib import Path

import pytest

from splitrelay.contract.sfu import CloseTracksRequest
from splitrelay.emulator.clients import Participant
from splitrelay.emulator.config import Timers
from splitrelay.emulator.server import EmulatorServer
from splitrelay.relay.sfu_client import SfuClient
from tests.emulator_fixtures import APP_ID, APP_SECRET, emulator_config, eventually, media_ready
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration

CALLS = 8
RSS_GROWTH_LIMIT_MB = 15
FRAMES = encode(tone(1000))[:15]
WATCHED = (
    "Session",
    "SessionPeer",
    "RTCPeerConnection",
    "RTCRtpTransceiver",
    "RTCDtlsTransport",
    "RTCIceTransport",
    "SrtpFastPath",
    "Publication",
    "Subscription",
    "Inbound",
)
TIMERS = Timers(track_idle_timeout=30.0, reconnect_window=0.2, connect_wait=2.0, unconnected_session_ttl=30.0)


def retained() -> Counter[str]:
    gc.collect()
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    out = Counter({name: counts[name] for name in WATCHED})
    out["tasks"] = len(asyncio.all_tasks())
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def one_call(sfu: SfuClient, server: EmulatorServer) -> None:
    caller, relay = Participant(sfu), Participant(sfu)
    try:
        await caller.open()
        await relay.open()
        mid = await caller.publish("mic", bidirectional=True)
        await relay.publish("out", bidirectional=True)
        await caller.wait_connected()
        await relay.wait_connected()
        await relay.pull(caller.session_id, "mic", mid="#out")
        await eventually(lambda: media_ready(server.emulator, caller.session_id, relay.session_id), "ready")
        await eventually(lambda: relay.peer.fast_path is not None, "relay fast path")
        stream = caller.outbound(mid)
        for i, frame in enumerate(FRAMES):
            stream.send(frame, 960 * i, marker=i == 0, audio_level=0, voice=True)
            await asyncio.sleep(0.005)
        await eventually(lambda: len(relay.received) >= 10, "media through the emulator")
        await sfu.close_tracks(caller.session_id, CloseTracksRequest.for_mids([mid], force=True))
    finally:
        await caller.close()
        await relay.close()


async def test_calls_leave_nothing_behind() -> None:
    async with EmulatorServer(emulator_config(TIMERS)) as server:
        assert server.info is not None
        async with SfuClient(server.info.base_url, APP_ID, APP_SECRET) as sfu:
            await one_call(sfu, server)  # warm-up: caches, codec tables, allocator arenas
            await eventually(lambda: not server.emulator.sessions, "warm-up sessions ended", within=15)
            baseline, rss_before = retained(), rss_mb()
            for _ in range(CALLS):
                await one_call(sfu, server)
            await eventually(lambda: not server.emulator.sessions, "sessions ended", within=15)
            state = server.emulator.introspect()
            assert (state.sessions, state.peer_connections, state.fast_paths) == (0, 0, 0), state
            after = retained()
            for _ in range(20):  # bounded: aiortc's closing tasks finish a moment after close()
                if after == baseline:
                    break
                await asyncio.sleep(0.1)
                after = retained()
            assert after == baseline, {k: (baseline[k], after[k]) for k in after if after[k] != baseline[k]}
            growth = rss_mb() - rss_before
            assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth:.1f} MB over {CALLS} calls"
