"""The real service's timers and limits, shortened: idle track drop, reconnect window (410), 425, 429."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from splitrelay.contract.api_error import SfuApiError
from splitrelay.contract.retry import RetryPolicy
from splitrelay.contract.sfu import ResourceStatus, SessionDescription, TrackObject, TracksRequest
from splitrelay.emulator.clients import Participant
from splitrelay.emulator.config import Limits, Timers
from splitrelay.emulator.server import EmulatorServer
from splitrelay.relay.sfu_client import SfuClient
from tests.emulator_fixtures import APP_ID, APP_SECRET, SpecCheck, emulator_config, eventually
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration

SHORT = Timers(track_idle_timeout=0.4, reconnect_window=0.3, connect_wait=0.3, unconnected_session_ttl=60.0)


class Harness:
    """Emulators started by a test (each with its own timers) and the participants it made."""

    def __init__(self) -> None:
        self.servers: list[EmulatorServer] = []
        self.clients: list[SfuClient] = []
        self.participants: list[Participant] = []
        self.check = SpecCheck()

    async def start(
        self, timers: Timers = SHORT, limits: Limits | None = None
    ) -> tuple[EmulatorServer, SfuClient]:
        server = EmulatorServer(emulator_config(timers, limits))
        await server.start()
        self.servers.append(server)
        assert server.info is not None
        sfu = SfuClient(
            server.info.base_url,
            APP_ID,
            APP_SECRET,
            http=self.check.client(),
            retry=RetryPolicy(max_attempts=1),
        )
        self.clients.append(sfu)
        return server, sfu

    def participant(self, sfu: SfuClient) -> Participant:
        participant = Participant(sfu)
        self.participants.append(participant)
        return participant

    async def close(self) -> None:
        for participant in self.participants:
            await participant.close()
        for sfu in self.clients:
            await sfu.aclose()
        for server in self.servers:
            await server.stop()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        await harness.close()


async def test_a_track_without_media_is_dropped(harness: Harness) -> None:
    server, sfu = await harness.start()
    publisher = harness.participant(sfu)
    listener = harness.participant(sfu)
    await publisher.open()
    await listener.open()
    mic = await publisher.publish("mic")
    await publisher.wait_connected()
    await listener.pull(publisher.session_id, "mic")
    frames = encode(tone(200))
    stream = publisher.outbound(mic)
    for i in range(12):  # 0.6 s of media at 50 ms spacing keeps the 0.4 s timer from firing
        stream.send(frames[i % len(frames)], 960 * i)
        await asyncio.sleep(0.05)
    state = await sfu.get_session(publisher.session_id)
    assert [t.status for t in state.tracks] == [ResourceStatus.ACTIVE]

    async def statuses() -> list[ResourceStatus | None]:
        return [t.status for t in (await sfu.get_session(listener.session_id)).tracks]

    await eventually(lambda: not server.emulator.sessions[publisher.session_id].publications, "track dropped")
    assert [t.status for t in (await sfu.get_session(publisher.session_id)).tracks] == [
        ResourceStatus.INACTIVE
    ]
    assert await statuses() == [ResourceStatus.INACTIVE]
    with pytest.raises(SfuApiError, match="no active track"):
        await listener.pull(publisher.session_id, "mic")


async def test_a_failed_session_is_kept_for_the_reconnect_window_then_gone(harness: Harness) -> None:
    server, sfu = await harness.start()
    caller = harness.participant(sfu)
    await caller.open()
    await caller.publish("mic")
    await caller.wait_connected()
    session = server.emulator.sessions[caller.session_id]
    await caller.close()  # the client's DTLS close_notify ends the emulator side's connection
    await eventually(lambda: session.disconnected_since is not None, "emulator sees the connection end")
    state = await sfu.get_session(caller.session_id)  # still there within the window
    assert len(state.tracks) == 1
    await eventually(
        lambda: caller.session_id not in server.emulator.sessions, "session ended after the window"
    )
    with pytest.raises(SfuApiError) as gone:
        await sfu.get_session(caller.session_id)
    assert (gone.value.status, gone.value.code) == (410, "session_gone")
    with pytest.raises(SfuApiError) as unknown:
        await sfu.get_session("0" * 32)
    assert (unknown.value.status, unknown.value.code) == (404, "not_found")


async def test_operations_wait_for_the_connection_then_answer_425(harness: Harness) -> None:
    server, sfu = await harness.start()
    caller = harness.participant(sfu)
    other = harness.participant(sfu)
    await caller.open()
    await other.open()
    await other.publish("voice")
    # The caller offers, the emulator answers, but the caller never applies the answer: no connection.
    transceiver = caller.peer.add_transceiver("sendrecv")
    offer = await caller.peer.create_offer()
    response = await sfu.new_tracks(
        caller.session_id,
        TracksRequest(
            tracks=(TrackObject.local("mic", mid=transceiver.mid, bidirectional_media_stream=True),),
            session_description=SessionDescription.offer(offer),
        ),
    )
    response.raise_for_item_errors()
    started_at = asyncio.get_running_loop().time()
    with pytest.raises(SfuApiError) as early:
        await caller.pull(other.session_id, "voice", mid="#mic")
    waited = asyncio.get_running_loop().time() - started_at
    assert (early.value.status, early.value.code) == (425, "not_connected")
    assert waited >= SHORT.connect_wait
    assert "not connected after waiting 0.3 s" in early.value.description
    # Nothing was half-done: the failed pull left no track behind.
    state = await sfu.get_session(caller.session_id)
    assert [(t.track_name, t.status) for t in state.tracks] == [("mic", ResourceStatus.ACTIVE)]
    assert server.emulator.sessions[caller.session_id].subscriptions == {}


async def test_more_than_the_call_rate_gives_429(harness: Harness) -> None:
    _server, sfu = await harness.start(SHORT, Limits(api_calls_per_second=5.0))
    session = (await sfu.new_session()).session_id
    statuses = []
    for _ in range(8):
        try:
            await sfu.get_session(session)
            statuses.append(200)
        except SfuApiError as exc:
            statuses.append(exc.status)
    assert statuses[:5] == [200] * 5
    assert 429 in statuses[5:]
