"""The SRTP fast path between real aiortc peers on loopback: echo, interop, gaps, RTCP, failure handling."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from typing import Any

import numpy as np
import pytest
import uvloop
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig, negotiated_streams
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath
from tests.integration.conftest import VoicePair, connect_stock_client, connect_voice_peers
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration

FAST_RTCP = FastPathConfig(rtcp_interval=0.2)
WAIT_S = 5.0


class Echo:
    """The relay side of a test: records what arrives and sends every payload straight back."""

    def __init__(self, pc: RTCPeerConnection, config: FastPathConfig | None = None) -> None:
        self.received: list[RtpPacket] = []
        self.fast_path = SrtpFastPath.attach(pc, self.on_packet, config)

    def on_packet(self, pkt: RtpPacket) -> None:
        self.received.append(pkt)
        self.fast_path.send(
            pkt.payload, pkt.timestamp, marker=pkt.marker, audio_level=pkt.audio_level, voice=pkt.voice
        )


class Collector:
    """The client side: collects packets and wakes a waiter when a count or a sequence number arrives."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self._want: int | None = None
        self._event = asyncio.Event()

    def __call__(self, pkt: RtpPacket) -> None:
        self.packets.append(pkt)
        if self._want is not None and len(self.packets) >= self._want:
            self._event.set()

    async def wait_for_count(self, count: int) -> None:
        self._want = count
        if len(self.packets) >= count:
            return
        self._event.clear()
        async with asyncio.timeout(WAIT_S):
            await self._event.wait()


async def eventually(check: Any, what: str) -> None:
    """Poll ``check()`` every 50 ms for at most WAIT_S seconds (RTCP arrives on its own schedule)."""
    for _ in range(int(WAIT_S / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached within {WAIT_S} s: {what}")


async def test_echo_is_byte_identical_and_in_order(voice_pair: VoicePair) -> None:
    frames = encode(tone(1000))  # 50 real Opus frames
    relay = Echo(voice_pair.relay.pc)
    echoed = Collector()
    client = SrtpFastPath.attach(voice_pair.client.pc, echoed)
    try:
        first_seq = client.outbound_streams[0].sequence
        for i, frame in enumerate(frames):
            assert client.send(
                frame, (1_000_000 + 960 * i) & 0xFFFFFFFF, marker=i == 0, audio_level=i, voice=i % 2 == 0
            )
            await asyncio.sleep(0.005)
        await echoed.wait_for_count(len(frames))
    finally:
        await client.close()
        await relay.fast_path.close()

    assert [p.payload for p in echoed.packets] == frames
    # What the relay saw: the client's own numbering, timestamps and RFC 6464 levels, marker on the first.
    assert [p.sequence for p in relay.received] == [(first_seq + i) & 0xFFFF for i in range(len(frames))]
    assert [p.timestamp for p in relay.received] == [1_000_000 + 960 * i for i in range(len(frames))]
    assert [(p.audio_level, p.voice) for p in relay.received] == [(i, i % 2 == 0) for i in range(len(frames))]
    assert [p.marker for p in relay.received] == [True] + [False] * (len(frames) - 1)
    # What came back: the relay's negotiated SSRC and payload type, the relay's own consecutive numbering.
    relay_params = voice_pair.relay.stream_params()
    assert {p.ssrc for p in echoed.packets} == {relay_params.ssrc}
    assert {p.payload_type for p in echoed.packets} == {relay_params.payload_type}
    seqs = [p.sequence for p in echoed.packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(frames))]
    assert [p.audio_level for p in echoed.packets] == list(range(len(frames)))
    stats = relay.fast_path.stats()
    assert (stats.packets_in, stats.packets_out, stats.bytes_in) == (50, 50, sum(map(len, frames)))
    assert (stats.undecryptable, stats.malformed, stats.dropped, stats.callback_errors) == (0, 0, 0, 0)


async def test_stock_aiortc_receiver_decodes_our_packets() -> None:
    """Interop: a standard stack (aiortc's own receiver, jitter buffer and Opus decoder) plays our RTP."""
    relay = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    client = RTCPeerConnection()
    transceiver = client.addTransceiver("audio", direction="recvonly")
    fast_path: SrtpFastPath | None = None
    try:
        await connect_stock_client(client, relay)
        with pytest.raises(ValueError, match="aiortc's own RTCP is running"):
            SrtpFastPath.attach(client, lambda pkt: None)
        fast_path = SrtpFastPath.attach(relay.pc, lambda pkt: None, FAST_RTCP)
        track = transceiver.receiver.track
        frames = encode(tone(1000, freq=440.0))
        decoded: list[Any] = []

        async def play() -> None:
            for _ in range(len(frames)):  # cancelled below once enough arrived
                decoded.append(await track.recv())

        player = asyncio.create_task(play())
        for i, frame in enumerate(frames):
            assert fast_path.send(frame, 960 * i, marker=i == 0, audio_level=30, voice=True)
            await asyncio.sleep(0.02)
        # aiortc holds 4 packets back in its jitter buffer; the rest must have been decoded.
        await eventually(lambda: len(decoded) >= len(frames) - 4, "aiortc decoded our frames")
        await eventually(
            lambda: fast_path is not None and fast_path.stats().rtt_ms is not None, "RTT from aiortc RR"
        )
        player.cancel()
        with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
            await player
    finally:
        if fast_path is not None:
            await fast_path.close()
        await client.close()
        await relay.close()

    assert all(f.sample_rate == 48000 and f.samples == 960 for f in decoded)
    assert [f.pts for f in decoded] == [decoded[0].pts + 960 * i for i in range(len(decoded))]
    pcm = np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in decoded[2:]]).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    peak_hz = float(np.argmax(spectrum)) * 48000 / pcm.size
    assert math.isclose(peak_hz, 440.0, abs_tol=5.0), f"decoded audio peaks at {peak_hz:.1f} Hz, sent 440 Hz"
    assert 20 * math.log10(float(np.sqrt(np.mean(pcm**2))) / 32768) > -30  # a tone, not silence
    assert fast_path.stats().lost_out == 0


async def test_gaps_do_not_hold_packets_back(voice_pair: VoicePair) -> None:
    """Each packet reaches the callback before the next one is even sent, whatever was skipped before it."""
    frames = encode(tone(600))  # 30 frames
    arrived: dict[int, asyncio.Event] = {}
    seen: list[int] = []

    def on_relay(pkt: RtpPacket) -> None:
        seen.append(pkt.sequence)
        arrived.setdefault(pkt.sequence, asyncio.Event()).set()

    relay = SrtpFastPath.attach(voice_pair.relay.pc, on_relay)
    client = SrtpFastPath.attach(voice_pair.client.pc, lambda pkt: None)
    base = client.outbound_streams[0].sequence
    sent: list[int] = []
    try:
        for i, frame in enumerate(frames):
            if i % 5 == 2:  # lost on the way: the receiver sees a gap
                continue
            seq = (base + i) & 0xFFFF
            assert client.send(frame, 960 * i, sequence=seq)
            sent.append(seq)
            async with asyncio.timeout(2.0):  # no later packet is sent while we wait for this one
                await arrived.setdefault(seq, asyncio.Event()).wait()
    finally:
        await client.close()
        await relay.close()

    assert seen == sent
    stats = relay.stats()
    assert stats.lost_in == 6 and stats.packets_in == 24


async def test_rtcp_reports_give_rtt_loss_and_jitter_both_ways(voice_pair: VoicePair) -> None:
    frames = encode(tone(800))  # 40 frames
    relay = Echo(voice_pair.relay.pc, FAST_RTCP)
    client = SrtpFastPath.attach(voice_pair.client.pc, lambda pkt: None, FAST_RTCP)
    base = client.outbound_streams[0].sequence
    try:
        for i, frame in enumerate(frames):
            if i % 10 != 3:  # 4 of 40 lost
                client.send(frame, 960 * i, sequence=(base + i) & 0xFFFF)
            await asyncio.sleep(0.01)
        await eventually(
            lambda: (
                client.stats().rtt_ms is not None
                and relay.fast_path.stats().rtt_ms is not None
                and client.stats().lost_out == 4
            ),
            "RTT on both sides and the relay's loss report reaching the client",
        )
        c, r = client.stats(), relay.fast_path.stats()
    finally:
        await client.close()
        await relay.fast_path.close()

    assert r.lost_in == 4 and c.lost_out == 4  # the relay measured it; the client read it in the relay's RR
    assert c.lost_in == 0 and r.lost_out == 0  # the echo has the relay's own gapless numbering
    assert c.rtt_ms is not None and r.rtt_ms is not None
    assert 0 <= c.rtt_ms < 1000 and 0 <= r.rtt_ms < 1000
    assert c.rtcp_in > 0 and r.rtcp_in > 0 and c.rtcp_out > 0 and r.rtcp_out > 0
    assert c.jitter_in_ms >= 0 and r.jitter_in_ms >= 0 and c.jitter_out_ms >= 0
    assert 0 <= c.fraction_lost_out <= 1


async def test_bad_datagrams_are_counted_never_raised(voice_pair: VoicePair) -> None:
    collected = Collector()
    relay = SrtpFastPath.attach(voice_pair.relay.pc, collected)
    client = SrtpFastPath.attach(voice_pair.client.pc, lambda pkt: None)
    target = relay.transport.get_extra_info("sockname")[:2]
    rogue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rogue.sendto(bytes([0x80, 111]) + bytes(40), target)  # looks like SRTP, fails authentication
        rogue.sendto(bytes([0x80, 200]) + bytes(40), target)  # looks like SRTCP
        rogue.sendto(b"\x80", target)  # too short for anything
        rogue.sendto(b"\x00\x01garbage", target)  # not SRTP: handed on to aioice, which drops it
        await eventually(lambda: relay.stats().undecryptable == 3, "three undecryptable datagrams counted")
        frame = encode(tone(20))[0]
        client.send(frame, 0)
        await collected.wait_for_count(1)  # the connection still works
    finally:
        rogue.close()
        await client.close()
        await relay.close()
    assert [p.payload for p in collected.packets] == [frame]


async def test_callback_errors_are_counted_and_delivery_goes_on(voice_pair: VoicePair) -> None:
    calls: list[int] = []

    def flaky(pkt: RtpPacket) -> None:
        calls.append(pkt.sequence)
        if len(calls) == 1:
            raise RuntimeError("callback bug")

    relay = SrtpFastPath.attach(voice_pair.relay.pc, flaky)
    client = SrtpFastPath.attach(voice_pair.client.pc, lambda pkt: None)
    try:
        for i, frame in enumerate(encode(tone(100))):
            client.send(frame, 960 * i)
        await eventually(lambda: len(calls) == 5, "all five packets delivered")
    finally:
        await client.close()
        await relay.close()
    assert relay.stats().callback_errors == 1


async def test_send_rejects_bad_input_naming_the_field(voice_pair: VoicePair) -> None:
    fast_path = SrtpFastPath.attach(voice_pair.relay.pc, lambda pkt: None)
    try:
        send_cases: list[tuple[dict[str, Any], str]] = [
            ({"payload": b""}, "payload: length must be 1..1200"),
            ({"payload": b"x" * 1201}, "payload: length must be 1..1200"),
            ({"timestamp": 1 << 32}, "timestamp must be 0..4294967295"),
            ({"sequence": 70000}, "sequence must be 0..65535"),
            ({"audio_level": 128}, "audio_level must be 0..127"),
        ]
        for kwargs, message in send_cases:
            args: dict[str, Any] = {"payload": b"opus", "timestamp": 0}
            args.update(kwargs)
            with pytest.raises(ValueError, match=message):
                fast_path.send(**args)
        assert fast_path.stats().packets_out == 0
        with pytest.raises(KeyError, match="mid 'x'"):
            fast_path.outbound("x")
    finally:
        await fast_path.close()
    config_cases: list[tuple[dict[str, Any], str]] = [
        ({"rtcp_interval": 0.01}, "rtcp_interval must be 0.05..60"),
        ({"max_inbound_sources": 0}, "max_inbound_sources must be 1..31"),
        ({"max_payload": 2000}, "max_payload must be 1..1400"),
        ({"max_rtcp_reports": 0}, "max_rtcp_reports must be at least 1"),
    ]
    for bad, message in config_cases:
        with pytest.raises(ValueError, match=message):
            FastPathConfig(**bad)


async def test_close_says_bye_restores_aioice_and_ends_its_timer(voice_pair: VoicePair) -> None:
    byes: list[int] = []
    relay = SrtpFastPath.attach(voice_pair.relay.pc, lambda pkt: None)
    client = SrtpFastPath.attach(voice_pair.client.pc, lambda pkt: None, on_bye=byes.append)
    protocol = relay._protocol
    assert "datagram_received" in vars(protocol)
    relay.send(b"opus", 0)  # the client learns the relay's SSRC
    await eventually(lambda: client.stats().packets_in == 1, "first packet")
    await relay.close()
    await relay.close()  # idempotent
    assert "datagram_received" not in vars(protocol)
    assert relay._rtcp_timer is None
    assert relay.send(b"opus", 960) is False and relay.stats().send_failures == 1
    await eventually(lambda: byes == [voice_pair.relay.stream_params().ssrc], "BYE reached the client")
    await client.close()
    assert voice_pair.relay.pc.connectionState == "connected"  # closing the fast path leaves the call up


async def test_attach_needs_a_connected_peer() -> None:
    peer = VoicePeer(VoicePeerConfig(candidates=LOOPBACK))
    try:
        with pytest.raises(RuntimeError, match="peer connection is 'new'"):
            SrtpFastPath.attach(peer.pc, lambda pkt: None)
    finally:
        await peer.close()


def test_echo_under_uvloop() -> None:
    """The relay runs on uvloop: the datagram hook must work with its transports too."""

    async def main() -> list[bytes]:
        config = VoicePeerConfig(candidates=LOOPBACK)
        client_peer, relay_peer = VoicePeer(config), VoicePeer(config)
        try:
            await connect_voice_peers(client_peer, relay_peer)
            relay = Echo(relay_peer.pc)
            echoed = Collector()
            client = SrtpFastPath.attach(client_peer.pc, echoed)
            try:
                for i, frame in enumerate(encode(tone(200))):
                    client.send(frame, 960 * i)
                await echoed.wait_for_count(10)
            finally:
                await client.close()
                await relay.fast_path.close()
            return [p.payload for p in echoed.packets]
        finally:
            await client_peer.close()
            await relay_peer.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        assert runner.run(main()) == encode(tone(200))


async def test_update_streams_keeps_unchanged_streams_and_their_numbering(voice_pair: VoicePair) -> None:
    relay = SrtpFastPath.attach(voice_pair.relay.pc, lambda _p: None, FastPathConfig(rtcp_interval=5))
    try:
        (before,) = relay.outbound_streams
        relay.send(b"\x01", 0)
        next_sequence = before.sequence
        relay.update_streams(negotiated_streams(voice_pair.relay.pc))  # same negotiation: nothing changes
        (after,) = relay.outbound_streams
        assert after is before and after.sequence == next_sequence and after.packets == 1
        with pytest.raises(ValueError, match="at least one negotiated audio stream"):
            relay.update_streams([])
    finally:
        await relay.close()


async def test_reports_go_out_at_the_interval_and_no_task_waits_per_call(voice_pair: VoicePair) -> None:
    """The report timer is a loop timer, not a task: attaching fast paths adds no task (with hundreds of
    calls, a task per call woke only to sleep again), and reports still go out at 0.5-1.5 x the interval,
    up to ``max_rtcp_reports``."""
    before = len(asyncio.all_tasks())
    relay = SrtpFastPath.attach(voice_pair.relay.pc, lambda pkt: None, FastPathConfig(rtcp_interval=0.1))
    client = SrtpFastPath.attach(
        voice_pair.client.pc, lambda pkt: None, FastPathConfig(rtcp_interval=0.1, max_rtcp_reports=3)
    )
    try:
        assert len(asyncio.all_tasks()) == before
        await asyncio.sleep(1.2)  # 8-24 reports due at 0.05-0.15 s each
        assert 7 <= relay.stats().rtcp_out <= 25, relay.stats().rtcp_out
        assert relay.stats().rtcp_in == 3 and client.stats().rtcp_out == 3  # the bound
        assert client.stats().rtcp_in >= relay.stats().rtcp_out - 1  # one may be on its way
    finally:
        await relay.close()
        await client.close()
