"""RFC 7675 consent freshness run by the fast path (relay/media/consent.py) between real aiortc peers.

The interval is sped up from ~5 s to ~0.1 s (aioice's constant, which the fast path reads when it takes
consent over): a call whose consent stopped working would show in a second here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioice.ice
import pytest

from splitrelay.relay.media import aiortc_internals
from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
from splitrelay.relay.media.shared_port import SharedUdpPort
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath
from tests.integration.conftest import connect_voice_peers

pytestmark = pytest.mark.integration

QUIET = FastPathConfig(rtcp_interval=60, bye_on_close=False)


async def eventually(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {within} s: {what}")


@pytest.fixture
def fast_consent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Consent every ~0.1 s; counts the requests aioice's own handler answers (the slow path)."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    answered_by_aioice = [0]
    original = aioice.ice.Connection.request_received

    def counting(self: aioice.ice.Connection, *args: Any, **kwargs: Any) -> None:
        answered_by_aioice[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(aioice.ice.Connection, "request_received", counting)
    return answered_by_aioice


@pytest.fixture
async def pair() -> AsyncIterator[tuple[VoicePeer, VoicePeer]]:
    config = VoicePeerConfig(candidates=LOOPBACK)
    client, relay = VoicePeer(config), VoicePeer(config)
    try:
        await connect_voice_peers(client, relay)
        yield client, relay
    finally:
        await client.close()
        await relay.close()


def _connection(peer: VoicePeer) -> aioice.ice.Connection:
    link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(peer.pc))
    assert link.connection is not None
    return link.connection


async def test_a_connected_fast_path_runs_consent_itself_not_aioice(
    pair: tuple[VoicePeer, VoicePeer], fast_consent: list[int]
) -> None:
    """Both ends' checks are sent and answered by the fast paths; aioice's task is gone and its request
    handler answers none of them; the call stays up."""
    client, relay = pair
    paths = [SrtpFastPath.attach(p.pc, lambda _p: None, QUIET) for p in (client, relay)]
    try:
        for peer in (client, relay):
            assert _connection(peer)._query_consent_task is None
        fast_consent[0] = 0
        await asyncio.sleep(1.5)
        for path in paths:
            assert path.consent is not None
            assert path.consent.checks_sent >= 8, path.consent.checks_sent
            assert path.consent.answers_received >= path.consent.checks_sent - 1
            assert path.consent.requests_answered >= 8
            assert path.consent.failures <= 1
        assert fast_consent[0] == 0
        assert [p.pc.connectionState for p in (client, relay)] == ["connected", "connected"]
    finally:
        for path in paths:
            await path.close()
    # Closed fast path, live call: aioice has its consent task back.
    for peer in (client, relay):
        task = _connection(peer)._query_consent_task
        assert task is not None and not task.done()


async def test_consent_still_fails_a_dead_peer(
    pair: tuple[VoicePeer, VoicePeer], fast_consent: list[int]
) -> None:
    """The caller's socket goes away without a word: the relay's checks go unanswered, and after
    CONSENT_FAILURES of them (6 x ~0.1 s here, ~30 s in production) the relay's call fails, as with aioice."""
    client, relay = pair
    path = SrtpFastPath.attach(relay.pc, lambda _p: None, QUIET)
    try:
        states: list[str] = []
        relay.pc.on("connectionstatechange", lambda: states.append(relay.pc.connectionState))
        client_link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(client.pc))
        client_link.protocol.datagram_received = lambda data, addr: None  # type: ignore[method-assign]
        started = asyncio.get_running_loop().time()
        await eventually(lambda: relay.pc.connectionState in ("failed", "closed"), "the relay's call failed")
        took = asyncio.get_running_loop().time() - started
        assert path.consent is not None and path.consent.expired
        assert 0.4 < took < 3.0, took  # 6 unanswered checks at 0.08-0.12 s, plus closing
    finally:
        await path.close()


async def test_consent_through_the_shared_port(fast_consent: list[int]) -> None:
    """On the shared port the checks and answers pass the demultiplexer (answers by transaction, checks by
    ufrag) and still reach the fast paths: two calls stay up with nothing answered by aioice."""
    port = await SharedUdpPort.open("127.0.0.1", 0)
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
    relays = [
        VoicePeer(VoicePeerConfig(candidates=aiortc_policy(port)), ufrag_label=f"c{i}") for i in range(2)
    ]
    paths: list[SrtpFastPath] = []
    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        paths = [SrtpFastPath.attach(p.pc, lambda _p: None, QUIET) for p in (*clients, *relays)]
        before = port.stats()
        fast_consent[0] = 0
        await asyncio.sleep(1.5)
        after = port.stats()
        assert after.routed_by_transaction - before.routed_by_transaction >= 2 * 8
        assert after.routed_by_ufrag - before.routed_by_ufrag >= 2 * 8
        for path in paths:
            assert path.consent is not None and path.consent.answers_received >= 8
        assert fast_consent[0] == 0
        assert all(r.pc.connectionState == "connected" for r in relays)
    finally:
        for path in paths:
            await path.close()
        for peer in (*clients, *relays):
            await peer.close()
        await port.close()


def aiortc_policy(port: SharedUdpPort) -> Any:
    from splitrelay.relay.media.peer import CandidatePolicy

    return CandidatePolicy(addresses=("127.0.0.1",), shared_port=port)
