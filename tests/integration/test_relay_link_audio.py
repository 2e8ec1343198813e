"""The relay link's AUDIO_OUT fast path accepts exactly what the full decoder accepts, on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from splitrelay.inference import wire
from splitrelay.inference.wire import Message, MsgType
from splitrelay.relay.inference_link import RelayLink
from tests.recording_sink import RecordingSink
from tests.wire_keys import AS_INFERENCE, KEY, peek

pytestmark = pytest.mark.integration


def _audio(call_id: int, seq: int, payload: bytes = b"\xf8\x01", flags: int = 0) -> bytes:
    return wire.HEADER.pack(wire.VERSION, MsgType.AUDIO_OUT, flags, call_id, seq, seq * 960) + payload


async def _recv(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), timeout=5)
    return data, addr


async def test_audio_out_fast_path_matches_the_decoder() -> None:
    inference = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inference.bind(("127.0.0.1", 0))
    inference.setblocking(False)
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind(("127.0.0.1", 0))
    sink = RecordingSink()
    async with RelayLink(inference.getsockname(), key=KEY) as link:
        assert link.address is not None
        starting = asyncio.create_task(link.start_call("fast-path", sink))
        data, relay_addr = await _recv(inference)
        start = peek(data)
        ack = Message(MsgType.ACK, start.call_id, start.seq, payload=wire.pack_ack(MsgType.CALL_START))
        inference.sendto(AS_INFERENCE.seal(wire.encode(ack)), relay_addr)
        call_id = await starting

        sends = [
            _audio(call_id, 1, flags=wire.FLAG_MARKER),  # good, first of a response
            _audio(call_id, 2),  # good
            _audio(call_id, 2),  # duplicate: late, dropped
            _audio(call_id, 3, flags=wire.FLAG_LEVEL_PRESENT),  # a flag AUDIO_OUT may not carry
            _audio(call_id, 4, payload=b""),  # no Opus frame
            _audio(call_id, 5)[:10],  # a torn header
            b"\x01" + _audio(call_id, 6)[1:],  # the previous protocol version
            _audio(call_id + 1, 7),  # an unknown call
            _audio(call_id, 8),  # good again
        ]
        for datagram in sends:
            inference.sendto(datagram, relay_addr)
        intruder.sendto(_audio(call_id, 9, payload=b"x" * 40), relay_addr)  # right call id, wrong sender
        for _ in range(200):  # bounded wait for the last good frame
            if any(out.seq == 8 for out in sink.audio):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert [(out.seq, out.marker, out.payload) for out in sink.audio] == [
            (1, True, b"\xf8\x01"),
            (2, False, b"\xf8\x01"),
            (8, False, b"\xf8\x01"),
        ]
        assert link.stats.audio_late == 1
        assert link.stats.garbage == 3  # bad flags, empty payload, torn header
        assert link.stats.bad_version == 1
        await asyncio.sleep(0.05)
        assert link.stats.unknown_call == 2  # the unknown call id; the intruder's frame
        assert link.active_calls == 1  # the intruder's frame neither reached the sink nor ended the call
        # The intruder got at most the compact CALL_END (37 bytes) for its 60-byte frame, never the call.
        intruder.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:  # bounded: the socket holds at most the one reply
                reply = intruder.recv(2048)
                assert len(reply) <= 60 and peek(reply).reason() == "unknown_call"
    inference.close()
    intruder.close()
