"""Tripwire for an aiortc/aioice upgrade: the exact versions and every private contact of relay/media.

If this fails after a dependency change, do not patch the test: re-read the new aiortc/aioice source
against relay/media/aiortc_internals.py, fix what moved, then bump PINNED_VERSIONS.
"""

from __future__ import annotations

import asyncio

import pylibsrtp
import pytest
from aiortc import RTCPeerConnection

from splitrelay.relay.media import aiortc_internals
from splitrelay.relay.media.aiortc_internals import UPGRADE_MESSAGE, check_peer, check_static
from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
from tests.integration.conftest import VoicePair, connect_stock_client

pytestmark = pytest.mark.integration


def test_pinned_versions_are_installed() -> None:
    installed = aiortc_internals.installed_versions()
    assert installed == aiortc_internals.PINNED_VERSIONS, f"{UPGRADE_MESSAGE}: installed {installed}"


def test_static_contacts_still_match() -> None:
    problems = check_static()
    assert problems == [], f"{UPGRADE_MESSAGE}:\n" + "\n".join(problems)


def test_the_check_detects_a_version_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tripwire itself must be able to fire."""
    monkeypatch.setitem(aiortc_internals.PINNED_VERSIONS, "aiortc", "0.0.0")
    assert any("aiortc 1.16.0 installed, 0.0.0 pinned" in p for p in check_static())


def test_the_check_detects_a_moved_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc import RTCDtlsTransport

    def recv_next_without_srtp(self: RTCDtlsTransport) -> None:
        """Stands in for an upgraded aiortc whose receive loop changed."""

    monkeypatch.setattr(RTCDtlsTransport, "_recv_next", recv_next_without_srtp)
    assert any(
        "RTCDtlsTransport._recv_next no longer contains 'self._rx_srtp.unprotect'" in p
        for p in check_static()
    )


async def test_new_peer_has_the_rtcp_internals() -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        problems = check_peer(pc)
        assert problems == [], f"{UPGRADE_MESSAGE}:\n" + "\n".join(problems)
    finally:
        await pc.close()


async def test_connected_peer_exposes_srtp_sessions_and_the_nominated_socket(voice_pair: VoicePair) -> None:
    for peer in (voice_pair.client, voice_pair.relay):
        problems = check_peer(peer.pc)
        assert problems == [], f"{UPGRADE_MESSAGE}:\n" + "\n".join(problems)
        assert aiortc_internals.rtcp_silenced(peer.transceiver)
        link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(peer.pc))
        assert isinstance(link.rx, pylibsrtp.Session) and isinstance(link.tx, pylibsrtp.Session)
        assert callable(link.transport.sendto) and not link.transport.is_closing()
        assert link.remote_addr[0] == "127.0.0.1"


async def test_silenced_rtcp_loops_start_and_stop_like_aiortcs(voice_pair: VoicePair) -> None:
    """aiortc's stop() waits on the started/exited events: the idle replacement must set both."""
    sender = voice_pair.relay.transceiver.sender
    started = getattr(sender, "_RTCRtpSender__rtcp_started")  # noqa: B009 (the private contact under test)
    exited = getattr(sender, "_RTCRtpSender__rtcp_exited")  # noqa: B009
    async with asyncio.timeout(5):
        await started.wait()
    assert not exited.is_set()
    async with asyncio.timeout(5):
        await voice_pair.relay.close()
    assert exited.is_set()


async def test_datagram_hook_round_trip(voice_pair: VoicePair) -> None:
    link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(voice_pair.relay.pc))
    seen: list[bytes] = []

    def handler(data: bytes, addr: tuple[str, int]) -> None:
        seen.append(data)

    original = aiortc_internals.hook_datagrams(link.protocol, handler)
    try:
        with pytest.raises(RuntimeError, match="already has a datagram hook"):
            aiortc_internals.hook_datagrams(link.protocol, handler)
        link.protocol.datagram_received(b"\x80\x6f probe", ("127.0.0.1", 9))
        assert seen == [b"\x80\x6f probe"]
        assert callable(original)
    finally:
        aiortc_internals.unhook_datagrams(link.protocol, handler)
    assert "datagram_received" not in vars(link.protocol)


async def test_rtcp_cannot_be_silenced_once_running(voice_pair: VoicePair) -> None:
    with pytest.raises(RuntimeError, match="RTCP already running"):
        aiortc_internals.silence_rtcp(voice_pair.relay.transceiver)


# --- the shared port (relay/media/shared_port.py): the ufrag we set and the endpoint we hand aioice -


def test_the_check_detects_a_moved_ufrag(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioice.ice

    monkeypatch.setattr(aioice.ice.Connection, "local_username", property(lambda self: self._ufrag))
    assert any(
        "Connection.local_username no longer contains 'return self._local_username'" in p
        for p in check_static()
    )


async def test_set_local_ufrag_reaches_the_sdp_and_only_before_gathering() -> None:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        aiortc_internals.set_local_ufrag(pc, "w0+contact+test")
        offer = await pc.createOffer()
        assert "a=ice-ufrag:w0+contact+test\r\n" in offer.sdp
        await pc.setLocalDescription(offer)
        assert aiortc_internals.local_ufrag(pc) == "w0+contact+test"
        assert "a=ice-ufrag:w0+contact+test\r\n" in pc.localDescription.sdp
        with pytest.raises(RuntimeError, match="set the ufrag before the first offer/answer"):
            aiortc_internals.set_local_ufrag(pc, "w0+later")
        with pytest.raises(ValueError, match="Username must satisfy"):
            aiortc_internals.set_local_ufrag(pc, "a:b")
    finally:
        await pc.close()


async def test_a_shared_port_peer_gathers_a_virtual_transport_and_connects() -> None:
    from splitrelay.relay.media.peer import LOOPBACK, CandidatePolicy, VoicePeer, VoicePeerConfig
    from splitrelay.relay.media.shared_port import SharedUdpPort, VirtualTransport
    from tests.integration.conftest import connect_voice_peers

    port = await SharedUdpPort.open("127.0.0.1", 0)
    client = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    relay = VoicePeer(VoicePeerConfig(candidates=CandidatePolicy(shared_port=port)))
    try:
        await connect_voice_peers(client, relay)
        problems = check_peer(relay.pc)
        assert problems == [], f"{UPGRADE_MESSAGE}:\n" + "\n".join(problems)
        link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(relay.pc))
        assert isinstance(link.transport, VirtualTransport) and link.transport.ufrag == relay.ufrag
        assert port.demux.flow_owner(link.remote_addr) == relay.ufrag
    finally:
        await client.close()
        await relay.close()
        await port.close()
    assert port.stats().calls == 0  # aioice's close reached the virtual transport


async def test_a_connected_peer_drops_another_connections_close_notify() -> None:
    """What the shared port relies on for encrypted DTLS from a remote address several calls share
    (demux.py hands a close_notify to every call there whose handshake is over): a connected aiortc
    peer given another connection's real close_notify stays connected; its own closes it."""
    from splitrelay.relay.media.peer import LOOPBACK, CandidatePolicy, VoicePeer, VoicePeerConfig
    from splitrelay.relay.media.shared_port import SharedUdpPort
    from tests.integration.conftest import connect_voice_peers

    port = await SharedUdpPort.open("127.0.0.1", 0)
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
    relays = [VoicePeer(VoicePeerConfig(candidates=CandidatePolicy(shared_port=port))) for _ in range(2)]
    seen: list[tuple[str, bytes]] = []
    deliver = port.demux._deliver

    def recording(call: object, data: bytes, addr: tuple[str, int]) -> None:
        if data and 19 < data[0] < 64:
            seen.append((getattr(call, "ufrag", ""), data))
        deliver(call, data, addr)  # type: ignore[arg-type]

    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        port.demux._deliver = recording  # type: ignore[method-assign]
        await clients[0].close()  # its close_notify reaches relays[0]
        for _ in range(200):  # bounded: 2 s
            if relays[0].pc.connectionState == "closed" and seen:
                break
            await asyncio.sleep(0.01)
        alerts = [data for ufrag, data in seen if ufrag == relays[0].ufrag and data[0] == 21]
        assert alerts and relays[0].pc.connectionState == "closed"
        link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(relays[1].pc))
        for alert in alerts:  # another call's close_notify, as a shared remote address would bring it
            link.protocol.datagram_received(alert, link.remote_addr)
        await asyncio.sleep(0.3)
        assert relays[1].pc.connectionState == "connected"
    finally:
        port.demux._deliver = deliver  # type: ignore[method-assign]
        for peer in (*clients, *relays):
            await peer.close()
        await port.close()


def test_the_check_detects_a_changed_consent_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """relay/media/consent.py stands in for aioice's consent task: a change there must fire the tripwire."""
    import aioice.ice

    async def query_consent_elsewhere(self: aioice.ice.Connection) -> None:
        """Stands in for an upgraded aioice whose consent checks changed."""

    monkeypatch.setattr(aioice.ice.Connection, "query_consent", query_consent_elsewhere)
    assert any("Connection.query_consent no longer contains" in p for p in check_static())


async def test_consent_is_taken_from_a_connected_connection_and_given_back(voice_pair: VoicePair) -> None:
    """take_consent stops aioice's task and reads the credentials aioice's checks use; give_back_consent
    restarts the task; a closed connection's consent is not taken."""
    import aioice.ice

    link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(voice_pair.relay.pc))
    connection = link.connection
    assert isinstance(connection, aioice.ice.Connection)
    task = connection._query_consent_task
    assert task is not None and not task.done()
    credentials = aiortc_internals.take_consent(connection)
    assert credentials is not None
    await asyncio.sleep(0)
    assert task.cancelled() and connection._query_consent_task is None
    request = connection.build_request(connection._nominated[1], nominate=False)
    assert request.attributes["USERNAME"] == f"{credentials.remote_ufrag}:{credentials.local_ufrag}"
    assert request.attributes["PRIORITY"] == credentials.priority
    role = "ICE-CONTROLLING" if credentials.controlling else "ICE-CONTROLLED"
    assert request.attributes[role] == credentials.tie_breaker
    assert credentials.local_password == connection.local_password
    assert credentials.remote_password == connection.remote_password
    assert (credentials.interval_s, credentials.max_failures) == (
        aioice.ice.CONSENT_INTERVAL,
        aioice.ice.CONSENT_FAILURES,
    )
    assert aiortc_internals.take_consent(connection) is None  # already taken
    aiortc_internals.give_back_consent(connection)
    restarted = connection._query_consent_task
    assert restarted is not None and not restarted.done()
    await connection.close()
    assert aiortc_internals.take_consent(connection) is None


def _selected_srtp_profile(peer: VoicePeer) -> bytes:
    ssl = getattr(aiortc_internals.dtls_transport(peer.pc), "_ssl")  # noqa: B009 (test-only look)
    return bytes(ssl.get_selected_srtp_profile())


@pytest.mark.parametrize(
    ("restricted", "expected"),
    [
        ((), b"SRTP_AEAD_AES_256_GCM"),  # aiortc's own preference: what an unrestricted pair picks
        (("SRTP_AES128_CM_SHA1_80",), b"SRTP_AES128_CM_SHA1_80"),
        (("SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"), b"SRTP_AEAD_AES_128_GCM"),
    ],
)
async def test_a_restricted_peer_makes_both_ends_use_its_srtp_profile(
    restricted: tuple[str, ...], expected: bytes
) -> None:
    client = RTCPeerConnection()
    relay = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    try:
        client.addTransceiver("audio")
        if restricted:
            aiortc_internals.restrict_srtp_profiles(client, restricted)
        await connect_stock_client(client, relay)
        assert _selected_srtp_profile(relay) == expected
        link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(relay.pc))
        assert isinstance(link.rx, pylibsrtp.Session)
    finally:
        await client.close()
        await relay.close()


async def test_restricting_srtp_profiles_refuses_what_it_cannot_do() -> None:
    pc = RTCPeerConnection()
    try:
        with pytest.raises(ValueError, match="add the transceivers first"):
            aiortc_internals.restrict_srtp_profiles(pc, ("SRTP_AES128_CM_SHA1_80",))
        pc.addTransceiver("audio")
        with pytest.raises(ValueError, match="SRTP profiles must be some of"):
            aiortc_internals.restrict_srtp_profiles(pc, ("SRTP_NULL",))
        with pytest.raises(ValueError, match="SRTP profiles must be some of"):
            aiortc_internals.restrict_srtp_profiles(pc, ())
    finally:
        await pc.close()


# --- no decoder thread, and a closed peer released (relay/gc_freeze.py relies on both) ------------


def test_the_check_detects_a_changed_receive(monkeypatch: pytest.MonkeyPatch) -> None:
    """skip_decoder copies aiortc's receive() minus the thread: any change to it must fire the tripwire."""
    from aiortc import RTCRtpReceiver

    original = RTCRtpReceiver.receive

    async def receive_that_also_does_more(self: RTCRtpReceiver, parameters: object) -> None:
        """Stands in for an upgraded aiortc whose receive() changed."""
        await original(self, parameters)  # type: ignore[arg-type]

    monkeypatch.setattr(RTCRtpReceiver, "receive", receive_that_also_does_more)
    problems = check_static()
    assert any("RTCRtpReceiver.receive no longer contains" in p for p in problems)
    assert any("RTCRtpReceiver.receive has " in p for p in problems)


def test_the_check_detects_a_shared_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    """release_peer clears each peer's certificate: only right while every peer makes its own."""

    def init_with_shared_certificates(self: RTCPeerConnection, configuration: object = None) -> None:
        """Stands in for an aiortc that shares one certificate between peers."""

    monkeypatch.setattr(RTCPeerConnection, "__init__", init_with_shared_certificates)
    assert any("generateCertificate" in p for p in check_static())


async def test_a_voice_peer_runs_without_decoder_threads_and_stops_cleanly(voice_pair: VoicePair) -> None:
    import threading

    for peer in (voice_pair.client, voice_pair.relay):
        receiver = peer.transceiver.receiver
        assert aiortc_internals.decoder_skipped(receiver)
        assert getattr(receiver, "_RTCRtpReceiver__started") is True  # noqa: B009 (the private contact)
        assert getattr(receiver, "_RTCRtpReceiver__decoder_thread") is None  # noqa: B009
        task = getattr(receiver, "_RTCRtpReceiver__rtcp_task")  # noqa: B009
        assert isinstance(task, asyncio.Future) and not task.done()  # the RTCP task did start
        assert getattr(receiver, "_RTCRtpReceiver__codecs")  # noqa: B009 (the codecs were taken)
    assert not [t for t in threading.enumerate() if t.name.endswith("-decoder")]
    async with asyncio.timeout(5):
        await voice_pair.relay.close()  # nothing to join


async def test_skip_decoder_refuses_a_started_receiver(voice_pair: VoicePair) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        aiortc_internals.skip_decoder(voice_pair.relay.transceiver.receiver)


async def test_a_closed_released_peer_is_freed_by_reference_counting(voice_pair: VoicePair) -> None:
    import gc
    import weakref

    with pytest.raises(RuntimeError, match="close it before releasing"):
        aiortc_internals.release_peer(voice_pair.relay.pc)
    pc = voice_pair.relay.pc
    dtls = aiortc_internals.dtls_transport(pc)
    refs = [weakref.ref(o) for o in (pc, dtls, dtls.transport, voice_pair.relay.transceiver)]
    del pc, dtls
    enabled = gc.isenabled()
    gc.disable()
    try:
        await voice_pair.relay.close()
        assert voice_pair.relay.release() > 10  # the peer lets go of its connection too
        for _ in range(50):  # bounded: 1 s for the close's last callbacks
            if all(r() is None for r in refs):
                break
            await asyncio.sleep(0.02)
        assert [type(r()).__name__ for r in refs if r() is not None] == []
        await voice_pair.relay.close()  # a released peer is closed: nothing to do
    finally:
        if enabled:
            gc.enable()


def test_release_touches_only_owned_instances() -> None:
    """The walk clears instances of the owned classes it reaches through containers, and nothing else."""

    class Owned:
        pass

    class Shared:
        pass

    shared = Shared()
    shared.peers = ["other call's state"]  # type: ignore[attr-defined]
    root, child = Owned(), Owned()
    root.child = child  # type: ignore[attr-defined]
    root.items = [{"k": child}, (shared,)]  # type: ignore[attr-defined]
    child.back = root  # type: ignore[attr-defined]
    child.shared = shared  # type: ignore[attr-defined]
    assert aiortc_internals.dismantle([root], (Owned,)) == 2
    assert vars(root) == {} and vars(child) == {}
    assert shared.peers == ["other call's state"]  # type: ignore[attr-defined]
