"""One UDP port for every call (relay/media/demux.py, shared_port.py) between real aiortc peers on loopback.

Several callers (VoicePeer, each on its own socket) reach relay peers that all share ONE UDP socket;
ICE and DTLS run through the demultiplexer and media flows both ways on the SRTP fast path, on the
native and on the Python per-datagram path. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from splitrelay.inference.udp_batch import SendBatch
from splitrelay.relay.media import aiortc_internals
from splitrelay.relay.media.demux import DemuxLimits
from splitrelay.relay.media.peer import (
    LOOPBACK,
    CandidatePolicy,
    VoicePeer,
    VoicePeerConfig,
    open_shared_port,
)
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.shared_port import SEND_BATCH, SharedUdpPort, VirtualTransport
from splitrelay.relay.media.srtp_fastpath import SrtpFastPath
from tests.integration.conftest import CONNECT_WITHIN_S, connect_voice_peers
from tests.integration.test_fastpath import Collector, Echo
from tests.integration.test_fastpath_peer import candidate_ports
from tests.integration.test_native_fastpath import _use
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration

CALLS = 3


@pytest.fixture(params=["batched", "unbatched"])
async def shared_port(request: pytest.FixtureRequest) -> AsyncIterator[SharedUdpPort]:
    """The port as the relay runs it (recvmmsg in, SendBatch's sendmmsg out) and the uvloop-transport one."""
    batched = request.param == "batched"
    port = await SharedUdpPort.open("127.0.0.1", 0, worker=3, batched=batched)
    assert port.batch_sends(lambda transport: SendBatch(transport, max_batch=SEND_BATCH)) == batched
    try:
        yield port
    finally:
        await port.close()


def relay_config(port: SharedUdpPort) -> VoicePeerConfig:
    return VoicePeerConfig(candidates=CandidatePolicy(shared_port=port))


async def _close_all(*peers: VoicePeer) -> None:
    await asyncio.gather(*(peer.close() for peer in peers))


async def _echo_calls(clients: list[VoicePeer], relays: list[VoicePeer], frames: list[bytes]) -> None:
    """Each client sends ``frames`` (tagged with its call's index) and must get exactly its own back."""
    echoes = [Echo(relay.pc) for relay in relays]
    collectors = [Collector() for _ in clients]
    paths = [SrtpFastPath.attach(c.pc, col) for c, col in zip(clients, collectors, strict=True)]
    try:
        for i, frame in enumerate(frames):
            for call, path in enumerate(paths):
                assert path.send(bytes([call]) + frame, (5000 + 960 * i) & 0xFFFFFFFF, marker=i == 0)
            await asyncio.sleep(0.004)
        for collector in collectors:
            await collector.wait_for_count(len(frames))
    finally:
        for path in paths:
            await path.close()
        for echo in echoes:
            await echo.fast_path.close()
    for call, (echo, collector) in enumerate(zip(echoes, collectors, strict=True)):
        want = [bytes([call]) + f for f in frames]
        assert [p.payload for p in echo.received] == want, f"call {call}: the relay got another call's media"
        assert [p.payload for p in collector.packets] == want, f"call {call}: the echo went astray"
        stats = echo.fast_path.stats()
        assert (stats.packets_in, stats.packets_out, stats.undecryptable, stats.malformed) == (
            len(frames),
            len(frames),
            0,
            0,
        )


@pytest.mark.parametrize("path", ["native", "python"])
async def test_calls_share_one_port_and_media_flows_both_ways(
    shared_port: SharedUdpPort, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(path, monkeypatch)
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(CALLS)]
    relays = [VoicePeer(relay_config(shared_port), ufrag_label=f"call-{i}") for i in range(CALLS)]
    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        # Every relay peer advertised the same one address and port, under its own minted ufrag.
        for i, relay in enumerate(relays):
            assert candidate_ports(relay.pc.localDescription.sdp) == [shared_port.address]
            assert relay.ufrag is not None and relay.ufrag.startswith(f"w3+call{i}+")
            assert f"a=ice-ufrag:{relay.ufrag}\r\n" in relay.local_sdp()
            assert aiortc_internals.local_ufrag(relay.pc) == relay.ufrag
            link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(relay.pc))
            assert link.transport.get_extra_info("sockname") == shared_port.address
        await _echo_calls(clients, relays, encode(tone(400)))
        stats = shared_port.stats()
        assert stats.calls == CALLS
        assert stats.routed_by_ufrag >= CALLS and stats.routed_by_flow >= CALLS * 20
        assert (stats.forged, stats.malformed, stats.delivery_errors) == (0, 0, 0)
    finally:
        await _close_all(*clients, *relays)
    assert shared_port.stats().calls == 0 and shared_port.stats().flows == 0  # closing unregistered them


async def test_relay_as_offerer_learns_flows_from_responses(shared_port: SharedUdpPort) -> None:
    """SFU mode's shape: the relay offers (ICE controlling); its checks' responses teach the flows too."""
    relays = [VoicePeer(relay_config(shared_port)) for _ in range(2)]
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
    try:
        await asyncio.gather(*(connect_voice_peers(r, c) for r, c in zip(relays, clients, strict=True)))
        await _echo_calls(clients, relays, encode(tone(200)))
        assert shared_port.stats().routed_by_transaction >= 2
    finally:
        await _close_all(*clients, *relays)


async def test_forged_and_unknown_datagrams_do_not_disturb_live_calls(shared_port: SharedUdpPort) -> None:
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
    relays = [VoicePeer(relay_config(shared_port)) for _ in range(2)]
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.1", 0))
    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        before = shared_port.stats()
        ufrag = relays[0].ufrag
        assert ufrag is not None
        from tests.unit.test_demux import binding_request

        junk = [
            b"",
            b"\x80\x6f" + bytes(30),  # SRTP-looking, from an address no call has
            b"\x16\xfe\xfd" + bytes(40),  # DTLS-looking
            binding_request(ufrag, "wrong-password-0123456789"),  # forged: bad MESSAGE-INTEGRITY
            binding_request("w3+nosuchcall", "x" * 22),  # unknown ufrag
            binding_request("w9+anotherworker", "x" * 22),  # another worker's ufrag
            b"\x00\x01\x00\x04" + bytes(20),  # bad STUN header
            b"\x41" * 50,  # TURN channel range
        ]
        for datagram in junk * 5:
            attacker.sendto(datagram, shared_port.address)
        await asyncio.sleep(0.2)
        after = shared_port.stats()
        assert after.forged - before.forged == 5
        assert after.foreign_worker - before.foreign_worker == 5
        assert after.unknown - before.unknown >= 15
        assert after.malformed - before.malformed >= 15
        assert shared_port.demux.flow_owner(attacker.getsockname()) is None  # nothing learned from it
        await _echo_calls(clients, relays, encode(tone(200)))
    finally:
        attacker.close()
        await _close_all(*clients, *relays)


async def test_a_full_port_refuses_the_next_call_clearly() -> None:
    port = await SharedUdpPort.open("127.0.0.1", 0, limits=DemuxLimits(max_calls=1))
    first, second = VoicePeer(relay_config(port)), VoicePeer(relay_config(port))
    try:
        await first.create_offer()
        with pytest.raises(ConnectionError, match=r"no ICE candidate gathered .*shared_port=\('127.0.0.1'"):
            await second.create_offer()
    finally:
        await _close_all(first, second)
        await port.close()
    assert port.stats().calls == 0


async def test_closing_the_port_ends_its_calls() -> None:
    port = await SharedUdpPort.open("127.0.0.1", 0)
    client, relay = VoicePeer(VoicePeerConfig(candidates=LOOPBACK)), VoicePeer(relay_config(port))
    try:
        await connect_voice_peers(client, relay)
        ended = asyncio.Event()
        relay.pc.on(
            "connectionstatechange",
            lambda: ended.set() if relay.pc.connectionState in ("closed", "failed") else None,
        )
        await port.close()
        async with asyncio.timeout(CONNECT_WITHIN_S):
            await ended.wait()
    finally:
        await _close_all(client, relay)


def test_policy_refuses_a_port_range_with_a_shared_port() -> None:
    port = SharedUdpPort()
    port.address = ("127.0.0.1", 40000)
    with pytest.raises(ValueError, match="port_range or shared_port, not both"):
        CandidatePolicy(port_range=(40000, 40010), shared_port=port)
    with pytest.raises(ValueError, match=r"do not include the shared port's 127\.0\.0\.1"):
        CandidatePolicy(addresses=("10.0.0.1",), shared_port=port)


def test_shared_port_under_uvloop() -> None:
    """The relay runs on uvloop: the endpoint hook and the shared socket must work on its loop too."""

    async def main() -> tuple[SharedUdpPort, int]:
        port = await SharedUdpPort.open("127.0.0.1", 0)
        clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
        relays = [VoicePeer(relay_config(port)) for _ in range(2)]
        try:
            await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
            await _echo_calls(clients, relays, encode(tone(200)))
            return port, port.stats().routed_by_flow
        finally:
            await _close_all(*clients, *relays)
            await port.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        port, routed = runner.run(main())
    assert routed >= 2 * 10 and port.closed


class _StunServer(asyncio.DatagramProtocol):
    """A minimal STUN server on loopback: answers binding requests with the sender's address."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.asked: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from aioice import stun

        request = stun.parse_message(data)
        response = stun.Message(
            stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        self.asked.append(addr)
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


async def test_a_stun_server_answers_through_the_shared_port(shared_port: SharedUdpPort) -> None:
    """Behind 1:1 NAT the relay asks STUN servers (--stun-url): their answers come back by transaction."""
    from aiortc import RTCIceServer

    loop = asyncio.get_running_loop()
    server_transport, server = await loop.create_datagram_endpoint(_StunServer, local_addr=("127.0.0.1", 0))
    host, port = server_transport.get_extra_info("sockname")
    config = VoicePeerConfig(
        candidates=CandidatePolicy(shared_port=shared_port),
        ice_servers=(RTCIceServer(f"stun:{host}:{port}"),),
    )
    relay = VoicePeer(config)
    try:
        sdp = await relay.create_offer()
        srflx = [
            line for line in sdp.split("\r\n") if line.startswith("a=candidate:") and "typ srflx" in line
        ]
        assert server.asked and set(server.asked) == {shared_port.address}  # not from a socket of its own
        assert len(srflx) == 1 and f" {shared_port.port} typ srflx" in srflx[0]
        stats = shared_port.stats()
        assert stats.routed_by_transaction >= 1 and stats.flows == 0  # a STUN server is no call's flow
    finally:
        await relay.close()
        server_transport.close()


async def test_answered_checks_alone_carry_a_call(
    shared_port: SharedUdpPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ICE-lite remote (an SFU) never sends checks: the flows must come from the answers to ours."""
    demux = shared_port.demux
    in_request = False
    stun_request, learn = demux._stun_request, demux._learn

    def request_teaching_nothing(data: bytes, addr: tuple[str, int], kind: int) -> None:
        nonlocal in_request
        in_request = True
        try:
            stun_request(data, addr, kind)
        finally:
            in_request = False

    def learn_from_answers_only(call: object, addr: tuple[str, int]) -> bool:
        return True if in_request else learn(call, addr)  # type: ignore[arg-type]

    monkeypatch.setattr(demux, "_stun_request", request_teaching_nothing)
    monkeypatch.setattr(demux, "_learn", learn_from_answers_only)
    relays = [VoicePeer(relay_config(shared_port)) for _ in range(2)]
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
    try:
        await asyncio.gather(*(connect_voice_peers(r, c) for r, c in zip(relays, clients, strict=True)))
        await _echo_calls(clients, relays, encode(tone(200)))
        stats = shared_port.stats()
        assert stats.flows_learned >= 2 and stats.flows == 2
    finally:
        await _close_all(*clients, *relays)


async def test_open_shared_port_binds_base_plus_worker_on_the_one_address() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    base = probe.getsockname()[1]
    probe.close()
    base = min(base, 65000)
    policy, port = await open_shared_port(LOOPBACK, base, worker=2)
    client = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    relay = VoicePeer(VoicePeerConfig(candidates=policy), ufrag_label="c1")
    try:
        assert port.address == ("127.0.0.1", base + 2) and policy.shared_port is port
        await connect_voice_peers(client, relay)
        assert candidate_ports(relay.pc.localDescription.sdp) == [("127.0.0.1", base + 2)]
        assert relay.ufrag is not None and relay.ufrag.startswith("w2+c1+")
    finally:
        await _close_all(client, relay)
        await port.close()
    with pytest.raises(ValueError, match="exactly one candidate address"):
        await open_shared_port(CandidatePolicy(addresses=("127.0.0.1", "::1")), base)
    with pytest.raises(ValueError, match="is not a port >= 1024"):
        await open_shared_port(LOOPBACK, 80)


async def test_sixteen_calls_on_one_port_keep_their_media_apart(shared_port: SharedUdpPort) -> None:
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(16)]
    relays = [VoicePeer(relay_config(shared_port)) for _ in range(16)]
    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        await _echo_calls(clients, relays, encode(tone(100)))
        assert shared_port.stats().calls == 16 and shared_port.stats().flows == 16
    finally:
        await _close_all(*clients, *relays)


async def test_ipv6_shared_port() -> None:
    try:
        port = await SharedUdpPort.open("::1", 0)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    v6 = CandidatePolicy(addresses=("::1",))
    clients = [VoicePeer(VoicePeerConfig(candidates=v6)) for _ in range(2)]
    relays = [VoicePeer(VoicePeerConfig(candidates=CandidatePolicy(shared_port=port))) for _ in range(2)]
    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        assert candidate_ports(relays[0].pc.localDescription.sdp) == [port.address]
        await _echo_calls(clients, relays, encode(tone(100)))
        assert all(addr[0] == "::1" for addr in port.demux._flows)
    finally:
        await _close_all(*clients, *relays)
        await port.close()


async def test_consent_checks_are_answered_through_the_shared_port(
    shared_port: SharedUdpPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 7675 consent (every ~5 s; 6 unanswered and aioice closes the call) runs through the demux.

    Sped up to every ~0.1 s: a demux that lost consent answers would show here in seconds, where a
    short test at the real interval would never notice and production calls would die after ~30 s.
    """
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
    relays = [VoicePeer(relay_config(shared_port)) for _ in range(2)]
    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        before = shared_port.stats()
        await asyncio.sleep(1.5)
        after = shared_port.stats()
        # The relays' consent requests were answered (by transaction), the callers' were routed (by ufrag).
        assert after.routed_by_transaction - before.routed_by_transaction >= 2 * 8
        assert after.routed_by_ufrag - before.routed_by_ufrag >= 2 * 8
        assert [r.pc.connectionState for r in relays] == ["connected", "connected"]
        await _echo_calls(clients, relays, encode(tone(100)))
    finally:
        await _close_all(*clients, *relays)


def _collect_into(payloads: list[bytes]) -> Callable[[RtpPacket], None]:
    return lambda packet: payloads.append(packet.payload)


class _Capture:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sent.append(data)


async def test_a_call_claims_only_media_under_its_own_keys(shared_port: SharedUdpPort) -> None:
    """The demultiplexer's offer to a call (demux.MediaClaim, for remote addresses several calls share):
    the call whose keys authenticate the datagram takes it; another refuses it and counts nothing."""
    clients = [VoicePeer(VoicePeerConfig(candidates=LOOPBACK)) for _ in range(2)]
    relays = [VoicePeer(relay_config(shared_port)) for _ in range(2)]
    try:
        await asyncio.gather(*(connect_voice_peers(c, r) for c, r in zip(clients, relays, strict=True)))
        got: list[list[bytes]] = [[], []]
        relay_paths = [SrtpFastPath.attach(r.pc, _collect_into(got[i])) for i, r in enumerate(relays)]
        client = SrtpFastPath.attach(clients[0].pc, lambda p: None)
        capture = _Capture()
        client.transport = capture
        assert client.send(b"\x01" * 40, 960) and client.send(b"\x02" * 40, 1920)
        links = [aiortc_internals.srtp_link(aiortc_internals.dtls_transport(r.pc)) for r in relays]
        transports = [link.transport for link in links]
        calls = [t._call for t in transports if isinstance(t, VirtualTransport)]
        assert len(calls) == 2
        claims = [call.media_claim for call in calls]
        assert all(claim is not None for claim in claims)
        addr = ("127.0.0.1", 9)
        assert claims[1] is not None and not claims[1](capture.sent[0], addr)
        assert relay_paths[1].stats().undecryptable == 0 and got[1] == []
        assert claims[0] is not None and claims[0](capture.sent[0], addr) and claims[0](capture.sent[1], addr)
        assert got[0] == [b"\x01" * 40, b"\x02" * 40]
        assert not claims[0](capture.sent[0], addr)  # a replay: refused (the window moved on success only)
        for path in (*relay_paths, client):
            await path.close()
        assert calls[0].media_claim is None  # a closed fast path is offered nothing
    finally:
        await _close_all(*clients, *relays)


@pytest.mark.parametrize("relay_offers", [True, False], ids=["relay-dtls-server", "relay-dtls-client"])
async def test_two_shared_ports_face_each_other_in_both_dtls_roles(relay_offers: bool) -> None:
    """An SFU that reaches every call from one address (its own shared port) and a relay on one port:
    every relay call sees one remote address and every SFU session sees one too. Both ICE and DTLS
    roles: the relay offering (controlling; the answering SFU side is the DTLS client, as the emulator
    is) and the SFU offering (the relay answers as DTLS client, as against an SFU that answers passive).
    Six calls set up at once, each call's tagged media comes back to it alone."""
    sfu_port = await SharedUdpPort.open("127.0.0.1", 0, worker=1)
    relay_port = await SharedUdpPort.open("127.0.0.1", 0, worker=2)
    sfu_side = [VoicePeer(relay_config(sfu_port)) for _ in range(6)]
    relays = [VoicePeer(relay_config(relay_port)) for _ in range(6)]
    try:
        pairs = zip(relays, sfu_side, strict=True) if relay_offers else zip(sfu_side, relays, strict=True)
        await asyncio.gather(*(connect_voice_peers(offerer, answerer) for offerer, answerer in pairs))
        await _echo_calls(sfu_side, relays, encode(tone(100)))
        for port in (relay_port, sfu_port):
            stats = port.stats()
            assert stats.flows_shared == 5 and stats.flows == 6 and stats.flow_conflicts == 0
            assert stats.dtls_ambiguous == 0 and stats.delivery_errors == 0
            assert stats.unclaimed <= 6  # at most each call's closing RTCP BYE, after its fast path closed
            assert stats.routed_by_ssrc > 0 and stats.routed_by_claim >= 6
        assert relay_port.stats().held + sfu_port.stats().held > 0  # set-ups took turns
    finally:
        await _close_all(*sfu_side, *relays)
        await relay_port.close()
        await sfu_port.close()
