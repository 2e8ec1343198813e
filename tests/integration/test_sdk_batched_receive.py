"""The echo agent takes real calls through the SDK's batched receive (relay/inference/udp_recv.py).

The agent's ``InferenceServer`` owns its socket and reads it with ``recvmmsg`` (or the ``recvfrom``
reference where libc has none): a relay's real ``RelayLink`` starts a call, bursts an utterance and must
get the agent's reply byte-identical and in order, under asyncio and under uvloop; the SDK's switch
(SPLITRELAY_INFERENCE_RECV_BATCH=0) brings the datagram transport back.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from splitrelay.inference import udp_recv
from splitrelay.inference.echo_agent import EchoAgent
from splitrelay.inference.sdk import InferenceServer
from splitrelay.relay.inference_link import RelayLink
from tests.integration.test_echo_agent import reply_events, send_clip
from tests.opus_fixtures import UTTERANCE, clip
from tests.recording_sink import RecordingSink
from tests.wire_keys import KEY


async def _echo_call() -> InferenceServer:
    """One call through the echo agent: the utterance in a burst, the reply back; returns the server."""
    audio = clip(UTTERANCE)
    expected = audio.frames[5:45]  # pre-roll, the speech with its pause, the tail (test_echo_agent.py)
    sink = RecordingSink()
    async with InferenceServer(EchoAgent(), "127.0.0.1", 0, key=KEY) as server:
        assert server.address is not None
        async with RelayLink(server.address, key=KEY) as link:
            call_id = await link.start_call("batched-1", sink)
            await send_clip(link, call_id, audio, levels=True)  # 70 frames in one loop turn
            await sink.wait_for(lambda: len(sink.audio) == len(expected))
            assert [o.payload for o in sink.audio] == expected
            assert [o.seq for o in sink.audio] == list(range(len(expected)))
            (event,) = reply_events(sink)
            assert event["utterance_ms"] == 800
            assert await link.end_call(call_id)
        assert server.stats.garbage == server.stats.auth_failed == 0
        assert link.stats.garbage == 0
    return server


def _assert_read_in_batches(server: InferenceServer, native: bool) -> None:
    receiver = server.receiver
    assert receiver is not None and receiver.native is native
    assert receiver.datagrams == server.stats.datagrams_in >= 70
    assert receiver.oversize == receiver.errors == 0
    assert receiver.most_per_turn <= udp_recv.RECV_BATCH * udp_recv.RECV_CALLS_PER_TURN
    if native:
        # The burst waited on the socket: recvmmsg took it in a few calls, not one (plus one) per datagram.
        assert receiver.calls < receiver.datagrams


@pytest.mark.skipif(not udp_recv.available(), reason="libc has no recvmmsg (not Linux)")
async def test_the_echo_agent_answers_through_recvmmsg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(udp_recv.ENV, raising=False)
    server = await _echo_call()
    _assert_read_in_batches(server, native=True)


async def test_the_echo_agent_answers_through_the_recvfrom_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(udp_recv.ENV, raising=False)
    monkeypatch.setattr(udp_recv, "_RECVMMSG", None)  # as where libc has no recvmmsg
    server = await _echo_call()
    _assert_read_in_batches(server, native=False)


@pytest.mark.skipif(not udp_recv.available(), reason="libc has no recvmmsg (not Linux)")
def test_the_echo_agent_answers_through_recvmmsg_under_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(udp_recv.ENV, raising=False)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        server = runner.run(asyncio.wait_for(_echo_call(), 30))
    _assert_read_in_batches(server, native=True)


async def test_the_switch_keeps_the_datagram_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(udp_recv.ENV, "0")
    server = await _echo_call()
    assert server.receive_batch is False and server.receiver is None
    assert server.stats.datagrams_in >= 70


async def test_the_relay_side_keeps_its_own_choice() -> None:
    """RelayLink decides by itself (``batch_receive``): the endpoint's default is off on the relay side."""
    link = RelayLink(("127.0.0.1", 9), key=KEY)
    assert link.receive_batch is False
    server = InferenceServer(EchoAgent(), key=KEY)
    assert server.receive_batch is udp_recv.enabled()
