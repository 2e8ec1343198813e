"""Loopback WebRTC peers for integration tests: real aiortc ICE + DTLS on 127.0.0.1, nothing mocked.

Each fixture starts its peers and closes them at teardown; tests that need other shapes call
``connect_voice_peers`` / ``connect`` themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig, candidate_policy, wait_connected

CONNECT_WITHIN_S = 10.0


@dataclass
class VoicePair:
    """A connected offerer ("client", the caller's side) and answerer ("relay")."""

    client: VoicePeer
    relay: VoicePeer


async def connect_voice_peers(client: VoicePeer, relay: VoicePeer) -> None:
    """Offer from ``client``, answer from ``relay``, wait until both are connected."""
    answer = await relay.accept_offer(await client.create_offer())
    await client.accept_answer(answer)
    await asyncio.gather(
        client.wait_connected(within=CONNECT_WITHIN_S), relay.wait_connected(within=CONNECT_WITHIN_S)
    )


async def connect_stock_client(client: RTCPeerConnection, relay: VoicePeer) -> None:
    """Offer from a plain aiortc peer (stock media path) to a relay VoicePeer; wait until connected."""
    offer = await client.createOffer()
    with candidate_policy(LOOPBACK):
        await client.setLocalDescription(offer)
    answer = await relay.accept_offer(client.localDescription.sdp)
    await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.gather(
        wait_connected(client, within=CONNECT_WITHIN_S), relay.wait_connected(within=CONNECT_WITHIN_S)
    )


@pytest.fixture
async def voice_pair() -> AsyncIterator[VoicePair]:
    """Two VoicePeers on loopback, connected, aiortc RTCP silenced on both (ready for the fast path)."""
    config = VoicePeerConfig(candidates=LOOPBACK)
    pair = VoicePair(client=VoicePeer(config), relay=VoicePeer(config))
    try:
        await connect_voice_peers(pair.client, pair.relay)
        yield pair
    finally:
        await pair.client.close()
        await pair.relay.close()
