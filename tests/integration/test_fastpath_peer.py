"""Peer set-up for the fast path (relay/media/peer.py): SDP we answer with, candidate addresses and ports."""

from __future__ import annotations

import random
import socket

import aioice.ice
import pytest

from splitrelay.relay.media.peer import (
    LOOPBACK,
    CandidatePolicy,
    VoicePeer,
    VoicePeerConfig,
    candidate_policy,
)
from splitrelay.relay.media.rtp import AUDIO_LEVEL_URI, MID_URI
from splitrelay.relay.media.sdp import parse_media_sections
from tests.integration.conftest import connect_voice_peers
from tests.unit.test_rtp_sdp import CHROME_OFFER

pytestmark = pytest.mark.integration


def candidate_ports(sdp: str) -> list[tuple[str, int]]:
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            bits = line.split()
            out.append((bits[4], int(bits[5])))
    return out


async def test_answer_to_a_browser_offer_is_opus_only_with_fec_and_audio_level() -> None:
    peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    try:
        answer = await peer.accept_offer(CHROME_OFFER)
        (audio,) = parse_media_sections(answer)
        params = peer.stream_params()
    finally:
        await peer.close()
    assert [(c.payload_type, c.name, c.clock_rate, c.channels) for c in audio.codecs] == [
        (111, "opus", 48000, 2)
    ]
    assert audio.codecs[0].fmtp == {"minptime": "10", "useinbandfec": "1"}
    assert audio.extensions == {AUDIO_LEVEL_URI: 1, MID_URI: 4}  # the browser's ids, nothing else accepted
    assert audio.direction == "sendrecv" and audio.mid == "0"
    assert len(audio.ssrcs) == 1 and audio.cname
    assert {host for host, _ in candidate_ports(answer)} == {"127.0.0.1"}
    assert (params.payload_type, params.audio_level_id, params.remote_ssrcs) == (111, 1, (1001,))


async def test_our_offer_carries_opus_fmtp_and_the_audio_level_extension() -> None:
    peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK, opus_fmtp={"useinbandfec": 1, "usedtx": 1}))
    try:
        (audio,) = parse_media_sections(await peer.create_offer())
    finally:
        await peer.close()
    assert [c.name for c in audio.codecs] == ["opus"]
    assert audio.codecs[0].fmtp == {"useinbandfec": "1", "usedtx": "1"}
    assert AUDIO_LEVEL_URI in audio.extensions and audio.direction == "sendrecv"


async def test_offers_other_than_one_audio_section_are_refused() -> None:
    video = CHROME_OFFER + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n"
    peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    try:
        with pytest.raises(
            ValueError, match=r"offer: expected exactly one audio m-section, got \['audio', 'video'\]"
        ):
            await peer.accept_offer(video)
        assert peer.pc.signalingState == "stable"  # nothing applied
    finally:
        await peer.close()


async def test_port_range_is_honoured_and_peers_connect() -> None:
    low = random.randrange(20000, 30000)  # below Linux's ephemeral range, so other peers stay outside it
    config = VoicePeerConfig(candidates=CandidatePolicy(addresses=("127.0.0.1",), port_range=(low, low + 9)))
    client, relay = VoicePeer(config), VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    try:
        await connect_voice_peers(client, relay)
        ports = [port for _, port in candidate_ports(client.pc.localDescription.sdp)]
        other = [port for _, port in candidate_ports(relay.pc.localDescription.sdp)]
    finally:
        await client.close()
        await relay.close()
    assert ports and all(low <= p <= low + 9 for p in ports)
    assert other and not any(low <= p <= low + 9 for p in other)  # the policy did not leak to the other peer


def two_adjacent_bound_ports() -> tuple[int, list[socket.socket]]:
    """Bind two neighbouring UDP ports on 127.0.0.1 ourselves (a few tries: a neighbour may be taken)."""
    for _ in range(20):
        first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            second.bind(("127.0.0.1", port + 1))
        except OSError:
            first.close()
            second.close()
            continue
        return port, [first, second]
    raise AssertionError("could not bind two adjacent UDP ports in 20 tries")


async def test_exhausted_port_range_is_a_clear_error() -> None:
    port, holders = two_adjacent_bound_ports()
    try:
        peer = VoicePeer(VoicePeerConfig(candidates=CandidatePolicy(("127.0.0.1",), (port, port + 1))))
        try:
            with pytest.raises(
                ConnectionError, match=rf"no ICE candidate gathered .*port_range=\({port}, {port + 1}\)"
            ):
                await peer.create_offer()
        finally:
            await peer.close()
    finally:
        for holder in holders:
            holder.close()


async def test_candidate_policy_is_scoped() -> None:
    default = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    with candidate_policy(CandidatePolicy(addresses=("127.0.0.1", "::1"))):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == default
    assert "127.0.0.1" not in default


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"addresses": ()}, "candidates.addresses: give at least one address"),
        ({"addresses": ("localhost",)}, "'localhost' is not an IPv4/IPv6 address literal"),
        ({"port_range": (80, 90)}, "1024 <= low <= high <= 65535, got 80-90"),
        ({"port_range": (5000, 4000)}, "got 5000-4000"),
    ],
)
def test_candidate_policy_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CandidatePolicy(**kwargs)  # type: ignore[arg-type]


async def test_bad_fmtp_is_refused_before_anything_is_built() -> None:
    with pytest.raises(ValueError, match="fmtp parameter useinbandfec: value '1;x=2'"):
        VoicePeer(VoicePeerConfig(opus_fmtp={"useinbandfec": "1;x=2"}))


async def test_wait_connected_reports_its_limit() -> None:
    peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    try:
        with pytest.raises(TimeoutError, match=r"still 'new' after 0\.1 s"):
            await peer.wait_connected(within=0.1)
        with pytest.raises(ValueError, match=r"within must be in \(0, 300\] seconds"):
            await peer.wait_connected(within=0)
    finally:
        await peer.close()
