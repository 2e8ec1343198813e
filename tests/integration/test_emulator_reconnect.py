"""Reconnect within the window: a session whose connection failed is resumed by a new client offer.

A browser calls ``restartIce()`` and offers again (new ICE credentials, same mids). aiortc has no ICE
restart, so the test client does what the emulator does on its side: a new RTCPeerConnection with the
same transceivers in the same order. Real aiortc peers on loopback; every response is validated
against the Cloudflare spec by the SpecCheck hook.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator

import pytest

from splitrelay.contract.api_error import SfuApiError
from splitrelay.contract.retry import RetryPolicy
from splitrelay.contract.sfu import (
    CloseTracksRequest,
    ResourceStatus,
    SessionDescription,
    TrackObject,
    TracksRequest,
)
from splitrelay.emulator.clients import Participant
from splitrelay.emulator.config import Timers
from splitrelay.emulator.emulator import Session
from splitrelay.emulator.peer import SessionPeer
from splitrelay.emulator.server import EmulatorServer
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from splitrelay.relay.sfu_client import SfuClient
from tests.emulator_fixtures import APP_ID, APP_SECRET, SpecCheck, emulator_config, eventually, media_ready
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration

FRAMES = encode(tone(1000))  # 50 real Opus frames
VOICE = encode(tone(400, freq=220.0))  # 20 frames from another publisher
WINDOW = Timers(track_idle_timeout=30.0, reconnect_window=8.0, connect_wait=2.0, unconnected_session_ttl=60.0)
SHORT_WINDOW = Timers(
    track_idle_timeout=30.0, reconnect_window=0.3, connect_wait=2.0, unconnected_session_ttl=60.0
)


class Rig:
    """One emulator with the given timers, a spec-checked client, and the participants a test made."""

    def __init__(self, timers: Timers) -> None:
        self.check = SpecCheck()
        self.server = EmulatorServer(emulator_config(timers))
        self.http = self.check.client()
        self.participants: list[Participant] = []
        self.client_peers: list[SessionPeer] = []
        self._sfu: SfuClient | None = None

    async def start(self) -> None:
        await self.server.start()
        assert self.server.info is not None
        self._sfu = SfuClient(
            self.server.info.base_url, APP_ID, APP_SECRET, http=self.http, retry=RetryPolicy(max_attempts=1)
        )

    @property
    def sfu(self) -> SfuClient:
        assert self._sfu is not None
        return self._sfu

    async def participant(self) -> Participant:
        participant = Participant(self.sfu)
        self.participants.append(participant)
        await participant.open()
        return participant

    def session(self, participant: Participant) -> Session:
        return self.server.emulator.sessions[participant.session_id]

    async def close_clients(self) -> None:
        for participant in self.participants:
            await participant.close()
        for peer in self.client_peers:
            await peer.close()
        self.participants.clear()
        self.client_peers.clear()

    async def close(self) -> None:
        await self.close_clients()
        await self.http.aclose()
        await self.server.stop()


async def rig_with(timers: Timers) -> AsyncIterator[Rig]:
    rig = Rig(timers)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.close()
    assert rig.check.checked > 0


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for made in rig_with(WINDOW):
        yield made


@pytest.fixture
async def short_rig() -> AsyncIterator[Rig]:
    async for made in rig_with(SHORT_WINDOW):
        yield made


async def send(participant: Participant, mid: str, frames: list[bytes], *, base: int, first: int = 0) -> None:
    """Send ``frames`` at 5 ms spacing, timestamps ``base + 960 * i``."""
    stream = participant.outbound(mid)
    for i, frame in enumerate(frames, start=first):
        assert stream.send(frame, (base + 960 * i) & 0xFFFFFFFF, marker=i == 0)
        await asyncio.sleep(0.005)


def steps(packets: list[RtpPacket]) -> list[int]:
    return [(b.sequence - a.sequence) & 0xFFFF for a, b in itertools.pairwise(packets)]


async def kill(rig: Rig, participant: Participant) -> None:
    """End the client's connection (its DTLS close_notify); wait until the emulator sees it."""
    session = rig.session(participant)
    await participant.peer.close()
    await eventually(lambda: session.disconnected_since is not None, "emulator sees the connection end")


async def restart_offer(rig: Rig, participant: Participant, *, keep: int | None = None) -> SessionPeer:
    """A browser's ICE restart as aiortc can do it: a new peer with the same transceivers, in order.

    ``keep`` offers only the first transceivers (a broken client). The new peer has the offer set
    as its local description; the caller sends it and applies the answer.
    """
    old = participant.peer.pc.getTransceivers()[:keep]
    fresh = SessionPeer(
        candidates=LOOPBACK,
        fast_path_config=FastPathConfig(rtcp_interval=0.5, bye_on_close=False),
        on_packet=participant.received.append,
        on_attached=lambda _fast_path: None,
        on_state=lambda _state: None,
    )
    rig.client_peers.append(fresh)
    for transceiver in old:
        fresh.add_transceiver(transceiver.direction)
    await fresh.create_offer()
    assert [t.mid for t in fresh.pc.getTransceivers()] == [t.mid for t in old], "same mids, same order"
    return fresh


def offer_of(peer: SessionPeer) -> SessionDescription:
    return SessionDescription.offer(peer.pc.localDescription.sdp)


async def resume(rig: Rig, participant: Participant, fresh: SessionPeer, answer: SessionDescription) -> None:
    """Apply the emulator's answer on the new client peer and wait for media both ways."""
    await fresh.apply_answer(answer.sdp)
    rig.client_peers.remove(fresh)
    participant.peer = fresh
    await participant.wait_connected()
    await eventually(lambda: fresh.fast_path is not None, "client fast path after reconnect")
    session = rig.session(participant)
    await eventually(
        lambda: (
            session.disconnected_since is None and media_ready(rig.server.emulator, participant.session_id)
        ),
        "emulator side reconnected",
    )


async def assert_nothing_left_open(rig: Rig, fds_before: int) -> None:
    """Close every client and the emulator: no session, peer, fast path, task or socket remains."""
    await rig.close_clients()
    await rig.server.stop()
    after = rig.server.emulator.introspect()
    assert (after.sessions, after.peer_connections, after.fast_paths) == (0, 0, 0)
    assert not after.watchdog_running
    await asyncio.sleep(0.2)  # aiortc finishes closing its transports in the background
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == [], leftover
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def attribute(sdp: str, name: str) -> str:
    """The first ``a=name:`` value of an SDP."""
    return next(line.split(":", 1)[1] for line in sdp.splitlines() if line.startswith(f"a={name}:"))


async def test_a_failed_publisher_reconnects_and_media_flows_both_ways(rig: Rig) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    caller, listener, other = await rig.participant(), await rig.participant(), await rig.participant()
    mic = await caller.publish("mic")
    voice = await other.publish("voice")
    pulled = await caller.pull(other.session_id, "voice")
    await listener.pull(caller.session_id, "mic")
    for participant in (caller, listener, other):
        await participant.wait_connected()
    ids = [p.session_id for p in (caller, listener, other)]
    await eventually(lambda: media_ready(rig.server.emulator, *ids), "emulator side ready")
    await eventually(lambda: all(p.peer.fast_path is not None for p in rig.participants), "client fast paths")
    first_answer = caller.peer.pc.remoteDescription.sdp

    before_first = time.perf_counter()  # the outage's bounds: see the clock check below
    await send(caller, mic, FRAMES[:20], base=100_000)
    await send(other, voice, VOICE[:10], base=5_000)
    await eventually(lambda: len(listener.received) == 20 and len(caller.received) == 10, "media before")
    all_before = time.perf_counter()

    session = rig.session(caller)
    failed = session.peer
    await kill(rig, caller)
    state = await rig.sfu.get_session(caller.session_id)  # still addressable within the window
    assert [t.status for t in state.tracks] == [ResourceStatus.ACTIVE, ResourceStatus.ACTIVE]

    fresh = await restart_offer(rig, caller)
    answered = await rig.sfu.renegotiate(caller.session_id, offer_of(fresh))
    assert answered.session_description is not None
    # A new transport on the emulator's side: new ICE credentials and a new DTLS certificate.
    for name in ("ice-ufrag", "fingerprint"):
        assert attribute(answered.session_description.sdp, name) != attribute(first_answer, name)
    # The failed peer is closed by the emulator, its fast path (and RTCP task) stopped.
    assert session.peer is not failed and failed is not None
    assert failed.fast_path is None and failed.pc.connectionState == "closed"
    await resume(rig, caller, fresh, answered.session_description)

    # The reconnected publisher's new sender (new SSRC, its own sequence and clock) reaches the
    # existing subscriber byte-identical, its numbering continuing without a jump and its clock moved
    # on by the outage in whole 20 ms frames (sfu_emulator/forwarding.py), then 960 per packet again.
    resumed_at = time.perf_counter()  # before the mic's first packet after it
    await send(caller, mic, FRAMES[20:], base=7_000_000, first=20)
    await send(other, voice, VOICE[10:], base=5_000, first=10)
    await eventually(lambda: len(listener.received) == 50 and len(caller.received) == 20, "media after")
    assert [p.payload for p in listener.received] == FRAMES
    assert steps(listener.received) == [1] * 49
    stamps = [p.timestamp for p in listener.received]
    assert stamps[:20] == [100_000 + 960 * i for i in range(20)]
    jump = (stamps[20] - stamps[19]) & 0xFFFFFFFF
    # The emulator saw the outage between its forwarding of packets 19 and 20: after everything sent
    # before it had arrived, before resumed_at; within the whole exchange.
    shortest, longest = resumed_at - all_before, time.perf_counter() - before_first
    assert jump % 960 == 0
    assert max(1, round(shortest / 0.02)) * 960 <= jump <= max(1, round(longest / 0.02)) * 960, jump
    assert [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(stamps[20:])] == [960] * 29
    assert len({p.ssrc for p in listener.received}) == 1

    # What the reconnected session pulls flows to it, numbering continued, on the new SFU stream.
    assert [p.payload for p in caller.received] == VOICE
    assert steps(caller.received) == [1] * 19
    (stream,) = [s for s in caller.peer.negotiated_streams() if s.mid == pulled]
    assert {p.ssrc for p in caller.received[10:]} == set(stream.remote_ssrcs)
    assert rig.server.emulator.forwarding_stats().send_failures == 0

    # An offer to the connected session is an ordinary renegotiation: same transport.
    resumed = session.peer
    reoffer = await caller.peer.create_offer()
    again = await rig.sfu.renegotiate(caller.session_id, SessionDescription.offer(reoffer))
    assert again.session_description is not None
    await caller.peer.apply_answer(again.session_description.sdp)
    assert session.peer is resumed
    for name in ("ice-ufrag", "fingerprint"):
        assert attribute(again.session_description.sdp, name) == attribute(
            answered.session_description.sdp, name
        )

    await assert_nothing_left_open(rig, fds_before)


async def test_a_reconnect_offer_must_carry_every_mid_then_tracks_new_resumes(rig: Rig) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    caller, listener, other = await rig.participant(), await rig.participant(), await rig.participant()
    mic = await caller.publish("mic")
    await other.publish("voice")
    pulled = await caller.pull(other.session_id, "voice")
    await listener.pull(caller.session_id, "mic")
    for participant in (caller, listener, other):
        await participant.wait_connected()
    session = rig.session(caller)
    await kill(rig, caller)
    failed = session.peer
    peers_before = rig.server.emulator.introspect().peer_connections

    # An offer that drops a negotiated m-section: 400 naming the mid; nothing changed.
    broken = await restart_offer(rig, caller, keep=1)
    with pytest.raises(SfuApiError) as refused:
        await rig.sfu.renegotiate(caller.session_id, offer_of(broken))
    assert (refused.value.status, refused.value.code) == (400, "invalid_params")
    assert f"mid {pulled!r}" in refused.value.description
    assert session.peer is failed and session.disconnected_since is not None
    assert rig.server.emulator.introspect().peer_connections == peers_before
    # tracks/close is not a reconnect path: its offer is refused, pointing at the ones that are.
    with pytest.raises(SfuApiError) as not_resumed:
        await rig.sfu.close_tracks(
            caller.session_id,
            CloseTracksRequest.for_mids([mic], force=False, session_description=offer_of(broken)),
        )
    assert (
        not_resumed.value.status == 400
        and "through renegotiate or tracks/new" in not_resumed.value.description
    )
    state = await rig.sfu.get_session(caller.session_id)
    assert [(t.mid, t.status) for t in state.tracks] == [
        (mic, ResourceStatus.ACTIVE),
        (pulled, ResourceStatus.ACTIVE),
    ]

    # tracks/new with the full restart offer resumes the session and publishes a new track with it.
    fresh = await restart_offer(rig, caller)
    extra = fresh.add_transceiver("sendonly")
    offer = SessionDescription.offer(await fresh.create_offer())
    assert extra.mid is not None
    response = await rig.sfu.new_tracks(
        caller.session_id,
        TracksRequest(
            tracks=(TrackObject.local("mic-2", mid=extra.mid, kind="audio"),), session_description=offer
        ),
    )
    response.raise_for_item_errors()
    assert response.session_description is not None and response.requires_immediate_renegotiation is False
    await resume(rig, caller, fresh, response.session_description)
    await eventually(
        lambda: listener.peer.fast_path is not None and media_ready(rig.server.emulator, listener.session_id),
        "listener ready",
    )

    await send(caller, mic, FRAMES[:10], base=3_000)
    await eventually(lambda: len(listener.received) == 10, "media after a tracks/new reconnect")
    assert [p.payload for p in listener.received] == FRAMES[:10]
    state = await rig.sfu.get_session(caller.session_id)
    assert [(t.mid, t.track_name, t.status) for t in state.tracks] == [
        (mic, "mic", ResourceStatus.ACTIVE),
        (pulled, "voice", ResourceStatus.ACTIVE),
        (extra.mid, "mic-2", ResourceStatus.ACTIVE),
    ]
    await assert_nothing_left_open(rig, fds_before)


async def test_a_reconnect_after_the_window_is_410(short_rig: Rig) -> None:
    rig = short_rig
    caller = await rig.participant()
    await caller.publish("mic")
    await caller.wait_connected()
    await kill(rig, caller)
    await eventually(lambda: caller.session_id not in rig.server.emulator.sessions, "session ended")
    fresh = await restart_offer(rig, caller)
    with pytest.raises(SfuApiError) as gone:
        await rig.sfu.renegotiate(caller.session_id, offer_of(fresh))
    assert (gone.value.status, gone.value.code) == (410, "session_gone")
    with pytest.raises(SfuApiError) as gone_too:
        await rig.sfu.new_tracks(
            caller.session_id,
            TracksRequest(tracks=(TrackObject.local("mic-2", mid="0"),), session_description=offer_of(fresh)),
        )
    assert (gone_too.value.status, gone_too.value.code) == (410, "session_gone")
    assert rig.server.emulator.introspect().peer_connections == 0
