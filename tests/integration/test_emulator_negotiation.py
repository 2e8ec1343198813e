"""Negotiation shapes beyond the main flows: sessions/new with an offer, autoDiscover, a pull in the
caller's own offer, and a client re-offer through renegotiate. Real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from splitrelay.contract.sfu import Location, SessionDescription, TrackObject, TracksRequest
from splitrelay.emulator.clients import Participant
from splitrelay.emulator.server import EmulatorServer
from splitrelay.relay.sfu_client import SfuClient
from tests.emulator_fixtures import APP_ID, APP_SECRET, SpecCheck, emulator_config, eventually, media_ready
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration

FRAMES = encode(tone(200))


@pytest.fixture
async def served() -> AsyncIterator[tuple[EmulatorServer, SfuClient]]:
    check = SpecCheck()
    server = EmulatorServer(emulator_config())
    await server.start()
    assert server.info is not None
    http = check.client()
    try:
        yield server, SfuClient(server.info.base_url, APP_ID, APP_SECRET, http=http)
    finally:
        await http.aclose()
        await server.stop()
    assert check.checked > 0


async def test_session_offer_then_autodiscover_then_a_pull_in_our_own_offer(
    served: tuple[EmulatorServer, SfuClient],
) -> None:
    server, sfu = served
    caller, listener = Participant(sfu), Participant(sfu)
    try:
        # sessions/new with an offer: the SFU answers, naming no track yet.
        first = caller.peer.add_transceiver("sendonly")
        second = caller.peer.add_transceiver("sendonly")
        created = await sfu.new_session(
            session_description=SessionDescription.offer(await caller.peer.create_offer())
        )
        caller.session_id = created.session_id
        assert created.session_description is not None
        await caller.peer.apply_answer(created.session_description.sdp)
        await caller.wait_connected()
        assert (await sfu.get_session(caller.session_id)).tracks == ()

        # autoDiscover names every sending audio m-section of the offer.
        discovered = await sfu.new_tracks(
            caller.session_id,
            TracksRequest(
                auto_discover=True,
                session_description=SessionDescription.offer(await caller.peer.create_offer()),
            ),
        )
        discovered.raise_for_item_errors()
        assert discovered.session_description is not None
        await caller.peer.apply_answer(discovered.session_description.sdp)
        await caller.peer.refresh_fast_path()
        names = {t.mid: t.track_name or "" for t in discovered.tracks}
        assert set(names) == {first.mid, second.mid}
        assert all(name.startswith("auto-") for name in names.values())

        # The listener pulls in its own offer, naming its recvonly m-section.
        await listener.open()
        receiver = listener.peer.add_transceiver("recvonly")
        offer = await listener.peer.create_offer()
        assert receiver.mid is not None and first.mid is not None
        pulled = await sfu.new_tracks(
            listener.session_id,
            TracksRequest(
                tracks=(TrackObject.remote(caller.session_id, names[first.mid], mid=receiver.mid),),
                session_description=SessionDescription.offer(offer),
            ),
        )
        pulled.raise_for_item_errors()
        assert pulled.requires_immediate_renegotiation is False and pulled.session_description is not None
        await listener.peer.apply_answer(pulled.session_description.sdp)
        await listener.wait_connected()
        await eventually(lambda: listener.peer.fast_path is not None, "listener fast path")
        await eventually(lambda: media_ready(server.emulator, listener.session_id), "emulator side ready")
        stream = caller.outbound(first.mid)
        for i, frame in enumerate(FRAMES):
            stream.send(frame, 960 * i)
            await asyncio.sleep(0.005)
        await eventually(lambda: len(listener.received) == len(FRAMES), "frames at the listener")
        assert [p.payload for p in listener.received] == FRAMES

        # A client re-offer through renegotiate is answered in the response.
        reoffer = await listener.peer.create_offer()
        answered = await sfu.renegotiate(listener.session_id, SessionDescription.offer(reoffer))
        assert answered.session_description is not None
        await listener.peer.apply_answer(answered.session_description.sdp)
        state = await sfu.get_session(listener.session_id)
        assert [(t.location, t.mid) for t in state.tracks] == [(Location.REMOTE, receiver.mid)]
    finally:
        await caller.close()
        await listener.close()
