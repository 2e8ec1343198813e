"""The emulator with real WebRTC on loopback: aiortc participants push and pull Opus through it.

Every request goes through relay/sfu_client.py (the contract: our own client works against the
emulator unchanged) and every response is validated against the Cloudflare spec by the SpecCheck hook.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from splitrelay.contract.api_error import SfuApiError
from splitrelay.contract.safety import Secret
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    ResourceStatus,
    SessionDescription,
    TrackObject,
    UpdateTracksRequest,
)
from splitrelay.contract.sfu_http import SfuApp, build_switch_track
from splitrelay.emulator.clients import Participant
from splitrelay.emulator.server import EmulatorServer
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.sfu_client import SfuClient
from tests import spec
from tests.emulator_fixtures import APP_ID, APP_SECRET, SpecCheck, emulator_config, eventually, media_ready
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration

FRAMES = encode(tone(1000))  # 50 real Opus frames


@dataclass
class Rig:
    server: EmulatorServer
    sfu: SfuClient
    check: SpecCheck
    participants: list[Participant]

    def ready(self, *participants: Participant) -> bool:
        return media_ready(self.server.emulator, *(p.session_id for p in participants))

    def participant(self) -> Participant:
        participant = Participant(self.sfu)
        self.participants.append(participant)
        return participant


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    check = SpecCheck()
    server = EmulatorServer(emulator_config())
    await server.start()
    assert server.info is not None
    http = check.client()
    sfu = SfuClient(server.info.base_url, APP_ID, APP_SECRET, http=http)
    rig = Rig(server, sfu, check, [])
    try:
        yield rig
    finally:
        for participant in rig.participants:
            await participant.close()
        await http.aclose()
        await server.stop()
    assert check.checked > 0


async def send(
    participant: Participant, mid: str, frames: list[bytes], *, first: int = 0, skip: int = -1
) -> None:
    """Send ``frames`` at 5 ms spacing with timestamps 960 apart; ``skip`` leaves one sequence number out."""
    stream = participant.outbound(mid)
    for i, frame in enumerate(frames, start=first):
        if i == skip:
            stream.sequence = (stream.sequence + 1) & 0xFFFF  # a packet "lost" before the SFU
        assert stream.send(
            frame, (100_000 + 960 * i) & 0xFFFFFFFF, marker=i == 0, audio_level=i % 128, voice=True
        )
        await asyncio.sleep(0.005)


def payloads(packets: list[RtpPacket]) -> list[bytes]:
    return [p.payload for p in packets]


def assert_clock_follows_the_switch(stamps: list[int], switch: int, bound_s: float) -> None:
    """Timestamps step one 20 ms frame, except into packet ``switch`` (the new source's first): there
    by the wall-clock gap in whole frames. The old source kept sending 10 packets 5 ms apart after the
    update, so the gap is at least 50 ms (2 frames); it is at most ``bound_s``, measured around it."""
    steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(stamps)]
    jump = steps.pop(switch - 1)
    assert steps == [960] * len(steps)
    assert jump % 960 == 0 and 2 * 960 <= jump <= (round(bound_s / 0.02) + 1) * 960, (jump, bound_s)


async def test_push_pull_is_byte_identical_with_a_subscriber_joining_mid_stream(rig: Rig) -> None:
    publisher, first, late = rig.participant(), rig.participant(), rig.participant()
    for participant in (publisher, first, late):
        await participant.open()
    mic = await publisher.publish("mic")
    await publisher.wait_connected()
    pulled = await first.pull(publisher.session_id, "mic")
    await first.wait_connected()
    await eventually(lambda: first.peer.fast_path is not None, "subscriber fast path")
    await eventually(lambda: rig.ready(publisher, first), "emulator side ready")

    await send(publisher, mic, FRAMES[:20], skip=10)
    await eventually(lambda: len(first.received) == 20, "20 packets at the first subscriber")
    late_mid = await late.pull(publisher.session_id, "mic")
    await late.wait_connected()
    await eventually(lambda: late.peer.fast_path is not None, "late subscriber fast path")
    await eventually(lambda: rig.ready(late), "emulator side ready for the late subscriber")
    await send(publisher, mic, FRAMES[20:], first=20)
    await eventually(lambda: len(first.received) == 50 and len(late.received) == 30, "all packets")

    assert payloads(first.received) == FRAMES
    assert payloads(late.received) == FRAMES[20:]
    # Timestamps unchanged; sequence numbers shifted by one offset, so the publisher's gap shows.
    assert [p.timestamp for p in first.received] == [100_000 + 960 * i for i in range(50)]
    seqs = [p.sequence for p in first.received]
    steps = [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)]
    assert steps == [1] * 9 + [2] + [1] * 39
    # SSRC and payload type are the SFU's, as negotiated with each subscriber.
    for participant, mid, packets in ((first, pulled, first.received), (late, late_mid, late.received)):
        (stream,) = [s for s in participant.peer.negotiated_streams() if s.mid == mid]
        assert {p.ssrc for p in packets} == set(stream.remote_ssrcs)
        assert {p.payload_type for p in packets} == {stream.payload_type}
    # The RFC 6464 level survives when the subscriber negotiated the extension (aiortc does).
    assert [p.audio_level for p in first.received] == [i % 128 for i in range(50)]
    stats = rig.server.emulator.forwarding_stats()
    assert (stats.packets_in, stats.packets_forwarded, stats.send_failures) == (50, 80, 0)


async def test_caller_and_relay_flows_share_one_transceiver_each_way(rig: Rig) -> None:
    """Flow 1: the caller pushes its mic and plays the relay's track on the same sendrecv transceiver
    (``mid: "#mic"``), one offer/answer in all; flow 2: the relay pushes its output and pulls the mic."""
    caller, relay = rig.participant(), rig.participant()
    await caller.open()
    await relay.open()
    mic = await caller.publish("mic", bidirectional=True)
    out = await relay.publish("agent-voice")
    relay_in = await relay.pull(caller.session_id, "mic")
    assert await caller.pull(relay.session_id, "agent-voice", mid="#mic") == mic
    assert len(caller.peer.pc.getTransceivers()) == 1
    await caller.wait_connected()
    await relay.wait_connected()
    await eventually(
        lambda: caller.peer.fast_path is not None and relay.peer.fast_path is not None, "fast paths"
    )

    await asyncio.gather(send(caller, mic, FRAMES), send(relay, out, FRAMES[::-1]))
    await eventually(lambda: len(caller.received) == 50 and len(relay.received) == 50, "both directions")
    assert payloads(relay.received) == FRAMES
    assert payloads(caller.received) == FRAMES[::-1]
    assert {relay.mid_of_ssrc(p.ssrc) for p in relay.received} == {relay_in}
    state = await rig.sfu.get_session(caller.session_id)
    assert {(t.location.value if t.location else None, t.mid, t.track_name) for t in state.tracks} == {
        ("local", mic, "mic"),
        ("remote", mic, "agent-voice"),
    }


async def test_thirdparty_session_gets_the_sfu_offer_and_switches_source(rig: Rig) -> None:
    """The openai-webrtc-relay shape: the SFU offers a sendrecv transceiver; later tracks/update plays
    another source on it with continuous numbering and clock."""
    model, user_a, user_b = rig.participant(), rig.participant(), rig.participant()
    await model.open(thirdparty=True)
    voice_mid = await model.publish_sfu_offer("ai-voice", bidirectional=True)
    for user in (user_a, user_b):
        await user.open()
    mic_a = await user_a.publish("mic")
    mic_b = await user_b.publish("mic")
    assert await model.pull(user_a.session_id, "mic", mid="#ai-voice") == voice_mid
    for participant in (model, user_a, user_b):
        await participant.wait_connected()
    await eventually(lambda: model.peer.fast_path is not None, "model fast path")
    await eventually(lambda: rig.ready(model, user_a, user_b), "emulator side ready")
    started = time.perf_counter()  # before user A's last packet: bounds the gap at the switch
    await send(user_a, mic_a, FRAMES[:10])
    await eventually(lambda: len(model.received) == 10, "user A at the model")
    update = await rig.sfu.update_tracks(
        model.session_id,
        UpdateTracksRequest(tracks=(TrackObject.remote(user_b.session_id, "mic", mid=voice_mid),)),
    )
    update.raise_for_item_errors()
    await send(user_a, mic_a, FRAMES[10:20], first=10)  # no longer forwarded
    await send(user_b, mic_b, FRAMES[20:30], first=20)
    await eventually(lambda: len(model.received) == 20, "user B at the model")
    bound = time.perf_counter() - started
    await asyncio.sleep(0.05)
    assert payloads(model.received) == FRAMES[:10] + FRAMES[20:30]
    seqs = [p.sequence for p in model.received]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert_clock_follows_the_switch([p.timestamp for p in model.received], 10, bound)


async def test_closing_tracks_stops_media_and_leaves_nothing_behind(rig: Rig) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    publisher, listener = rig.participant(), rig.participant()
    await publisher.open()
    await listener.open()
    mic = await publisher.publish("mic")
    pulled = await listener.pull(publisher.session_id, "mic")
    await publisher.wait_connected()
    await listener.wait_connected()
    await eventually(lambda: listener.peer.fast_path is not None, "listener fast path")
    await eventually(lambda: rig.ready(publisher, listener), "emulator side ready")
    await send(publisher, mic, FRAMES[:10])
    await eventually(lambda: len(listener.received) == 10, "10 packets")

    closed = await rig.sfu.close_tracks(
        listener.session_id, CloseTracksRequest.for_mids([pulled], force=True)
    )
    assert closed.failed == () and [t.mid for t in closed.tracks] == [pulled]
    await send(publisher, mic, FRAMES[10:20], first=10)
    await asyncio.sleep(0.1)
    assert len(listener.received) == 10
    again = await rig.sfu.close_tracks(listener.session_id, CloseTracksRequest.for_mids([pulled], force=True))
    assert [t.error_code for t in again.tracks] == ["close_track_error"]
    state = await rig.sfu.get_session(listener.session_id)
    assert [t.status for t in state.tracks] == [ResourceStatus.INACTIVE]

    # A negotiated close of the published track: the publisher stops its transceiver and offers.
    (transceiver,) = publisher.peer.pc.getTransceivers()
    transceiver.direction = "inactive"
    offer = await publisher.peer.create_offer()
    response = await rig.sfu.close_tracks(
        publisher.session_id,
        CloseTracksRequest.for_mids([mic], force=False, session_description=SessionDescription.offer(offer)),
    )
    assert response.session_description is not None and response.failed == ()
    await publisher.peer.apply_answer(response.session_description.sdp)
    with pytest.raises(SfuApiError) as pulled_closed:
        await listener.pull(publisher.session_id, "mic")
    assert pulled_closed.value.status == 200 and "no active track" in pulled_closed.value.description

    for participant in rig.participants:
        await participant.close()
    rig.participants.clear()
    await rig.server.stop()
    state_after = rig.server.emulator.introspect()
    assert (state_after.sessions, state_after.peer_connections, state_after.fast_paths) == (0, 0, 0)
    assert not state_after.watchdog_running
    await asyncio.sleep(0.2)  # aiortc finishes closing its transports in the background
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == [], leftover
    assert len(os.listdir("/proc/self/fd")) <= fds_before


async def test_tracks_update_moves_the_caller_to_another_relay_without_renegotiation(rig: Rig) -> None:
    """Relay failover's SFU step (issue 15): the caller plays relay 1's voice on its sendrecv mic
    transceiver; tracks/update on the caller's session points that mid at relay 2's voice. The caller
    sends no offer and answers nothing, its connection never leaves "connected", and what it receives
    stays one stream: same SSRC and payload type, sequence +1 and timestamp +960 across the switch."""
    caller, relay_1, relay_2 = rig.participant(), rig.participant(), rig.participant()
    for participant in (caller, relay_1, relay_2):
        await participant.open()
    mic = await caller.publish("mic", bidirectional=True)
    voice_1 = await relay_1.publish("agent-voice")
    voice_2 = await relay_2.publish("agent-voice")
    assert await caller.pull(relay_1.session_id, "agent-voice", mid="#mic") == mic
    relay_2_in = await relay_2.pull(caller.session_id, "mic")  # the new relay attaches first
    for participant in (caller, relay_1, relay_2):
        await participant.wait_connected()
    await eventually(lambda: all(p.peer.fast_path is not None for p in rig.participants), "fast paths")
    await eventually(lambda: rig.ready(caller, relay_1, relay_2), "emulator side ready")
    states: list[str] = []
    caller.peer.pc.on("connectionstatechange", lambda: states.append(caller.peer.pc.connectionState))
    descriptions = (caller.peer.pc.localDescription.sdp, caller.peer.pc.remoteDescription.sdp)

    started = time.perf_counter()
    await send(relay_1, voice_1, FRAMES[:10])
    await eventually(lambda: len(caller.received) == 10, "relay 1 at the caller")
    # The edge's bytes (the stdlib contract the Worker sends), the caller's transceiver named as the
    # edge knows it (#mic); its parser accepts only a switch that needs no renegotiation.
    request, parse = build_switch_track(
        SfuApp(APP_ID, Secret(APP_SECRET)),
        caller.session_id,
        mid="#mic",
        to_session_id=relay_2.session_id,
        to_track_name="agent-voice",
    )
    assert request.body_bytes is not None
    spec.validate_request(
        "PUT", "/apps/{appId}/sessions/{sessionId}/tracks/update", json.loads(request.body_bytes)
    )
    assert rig.server.info is not None
    async with rig.check.client() as http:
        sent = await http.request(
            request.method,
            request.url(rig.server.info.base_url),
            headers=request.header_dict(),
            content=request.body_bytes,
        )
    update = parse(sent.status_code, sent.content)
    assert update.requires_immediate_renegotiation is False
    assert [(t.mid, t.session_id, t.track_name) for t in update.tracks] == [
        (mic, relay_2.session_id, "agent-voice")
    ]
    await send(relay_1, voice_1, FRAMES[10:20], first=10)  # the old relay: no longer forwarded
    stream_2 = relay_2.outbound(voice_2)
    stream_2.sequence = (caller.received[-1].sequence + 30_000) & 0xFFFF  # far from the caller's numbering
    relay_2_started = time.perf_counter()
    for i, frame in enumerate(FRAMES[20:30]):
        assert stream_2.send(frame, (7_000_000 + 960 * i) & 0xFFFFFFFF, marker=i == 0, voice=True)
        await asyncio.sleep(0.005)
    await eventually(lambda: len(caller.received) == 20, "relay 2 at the caller")
    bound = time.perf_counter() - started
    await send(caller, mic, FRAMES[:5])
    await eventually(lambda: len(relay_2.received) == 5, "the caller's mic at relay 2")
    await asyncio.sleep(0.05)

    assert payloads(caller.received) == FRAMES[:10] + FRAMES[20:30]
    (stream,) = [s for s in caller.peer.negotiated_streams() if s.mid == mic]
    assert {p.ssrc for p in caller.received} == set(stream.remote_ssrcs) and len(stream.remote_ssrcs) == 1
    assert {p.payload_type for p in caller.received} == {stream.payload_type}
    seqs = [p.sequence for p in caller.received]
    assert [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)] == [1] * 19
    assert_clock_follows_the_switch([p.timestamp for p in caller.received], 10, bound)
    assert payloads(relay_2.received) == FRAMES[:5]
    assert {relay_2.mid_of_ssrc(p.ssrc) for p in relay_2.received} == {relay_2_in}
    # No renegotiation: the caller's descriptions are the ones from before, its connection unbroken.
    assert (caller.peer.pc.localDescription.sdp, caller.peer.pc.remoteDescription.sdp) == descriptions
    assert caller.peer.pc.signalingState == "stable" and caller.peer.pc.connectionState == "connected"
    assert states == []
    state = await rig.sfu.get_session(caller.session_id)
    active = {
        (t.location.value if t.location else None, t.mid, t.session_id, t.track_name)
        for t in state.tracks
        if t.status is ResourceStatus.ACTIVE
    }
    assert active == {("local", mic, None, "mic"), ("remote", mic, relay_2.session_id, "agent-voice")}

    # Relay 2 dies and the SFU ends its session first: the caller's transceiver plays nothing. The
    # next update (back to relay 1) starts a fresh subscription on the played stream: it goes on too.
    emulator = rig.server.emulator
    await emulator.end_session(emulator.sessions[relay_2.session_id])
    assert not emulator.sessions[caller.session_id].subscriptions
    back = await rig.sfu.update_tracks(
        caller.session_id,
        UpdateTracksRequest(tracks=(TrackObject.remote(relay_1.session_id, "agent-voice", mid=mic),)),
    )
    back.raise_for_item_errors()
    await asyncio.sleep(0.05)  # the 2-frame floor of assert_clock_follows_the_switch
    await send(relay_1, voice_1, FRAMES[30:40], first=30)
    await eventually(lambda: len(caller.received) == 30, "relay 1 again at the caller")
    bound = time.perf_counter() - relay_2_started
    assert payloads(caller.received[20:]) == FRAMES[30:40]
    assert {p.ssrc for p in caller.received} == set(stream.remote_ssrcs)
    seqs = [p.sequence for p in caller.received]
    assert [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)] == [1] * 29
    assert_clock_follows_the_switch([p.timestamp for p in caller.received[10:]], 10, bound)
    assert caller.peer.pc.connectionState == "connected" and states == []
