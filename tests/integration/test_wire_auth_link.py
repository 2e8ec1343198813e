"""The authenticated wire link on loopback: what a stranger on the network can no longer do."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from splitrelay.inference import wire
from splitrelay.inference.endpoint import LinkError
from splitrelay.inference.sdk import InferenceCall, InferenceServer, RelayEvent
from splitrelay.inference.wire import FLAG_RELIABLE, CallStart, Message, MsgType
from splitrelay.inference.wire_auth import Sealer, WireKey, WireKeyring
from splitrelay.relay.inference_link import RelayLink
from tests.recording_sink import RecordingSink
from tests.wire_keys import AS_RELAY, KEY, peek

pytestmark = pytest.mark.integration


class Recorder:
    def __init__(self) -> None:
        self.calls: list[InferenceCall] = []
        self.events: list[object] = []

    async def __call__(self, call: InferenceCall) -> None:
        self.calls.append(call)
        async for event in call.events():
            self.events.append(event)


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``condition`` every 5 ms; fail after ``within`` seconds."""
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition not met within {within} s")


def attacker() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    for _ in range(100_000):  # bounded: more than any test sends
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            break
    return got


def call_start(call_id: int, *, sent_at_ms: int | None = None, seq: int = 0) -> bytes:
    sent = int(time.time() * 1000) if sent_at_ms is None else sent_at_ms
    info = CallStart(call=f"c-{call_id}", sent_at_ms=sent)
    return wire.encode(Message(MsgType.CALL_START, call_id, seq, flags=FLAG_RELIABLE, payload=info.pack()))


async def test_a_thousand_forged_call_starts_leave_capacity_untouched() -> None:
    recorder = Recorder()
    other_key = Sealer(WireKeyring(WireKey(b"w" * 32)), "relay")
    async with InferenceServer(recorder, "127.0.0.1", 0, key=KEY, max_calls=1000) as server:
        assert server.address is not None
        sock = attacker()
        try:
            for i in range(1, 1001):  # no tag, a bad tag, another key: a third each
                body = call_start(i)
                forged = (body, body + bytes(17), other_key.seal(body))[i % 3]
                sock.sendto(forged, server.address)
                if i % 100 == 0:
                    await asyncio.sleep(0.005)  # let the server read; the socket buffer is finite
            await until(lambda: server.stats.datagrams_in >= 1000)
            await asyncio.sleep(0.1)
            assert server.stats.auth_failed == 1000
            assert server.calls == [] and recorder.calls == []
            assert drain(sock) == []  # never answered
            # The real relay still gets every one of the 1,000 slots' first.
            async with RelayLink(server.address, key=KEY) as link:
                await link.start_call("real", RecordingSink())
                assert len(server.calls) == 1
        finally:
            sock.close()


async def test_a_replayed_control_message_is_acted_on_once() -> None:
    recorder = Recorder()
    async with InferenceServer(recorder, "127.0.0.1", 0, key=KEY) as server:
        assert server.address is not None
        # The "relay" is a bare socket, so the test can send the same sealed datagram again.
        relay = attacker()
        try:
            relay.sendto(AS_RELAY.seal(call_start(7)), server.address)
            await until(lambda: len(recorder.calls) == 1)
            event = wire.encode(Message(MsgType.EVENT, 7, 1, payload=wire.pack_event({"type": "once"})))
            barge = wire.encode(Message(MsgType.BARGE_IN, 7, 2, 0, FLAG_RELIABLE, bytes(12)))
            for _ in range(5):
                relay.sendto(AS_RELAY.seal(event), server.address)
                relay.sendto(AS_RELAY.seal(barge), server.address)
            await until(lambda: server.stats.duplicates == 8)
            await asyncio.sleep(0.05)
            assert [type(e).__name__ for e in recorder.events] == ["RelayEvent", "BargeInNotice"]
            assert isinstance(recorder.events[0], RelayEvent) and recorder.events[0].data == {"type": "once"}
            acks = [peek(d) for d in drain(relay)]
            assert [(m.type, m.seq) for m in acks].count((MsgType.ACK, 2)) == 5  # ACKed each time
        finally:
            relay.close()


async def test_a_replayed_call_start_is_refused_inside_and_outside_the_window() -> None:
    recorder = Recorder()
    async with InferenceServer(recorder, "127.0.0.1", 0, key=KEY, call_start_window=5.0) as server:
        assert server.address is not None
        first, replay = attacker(), attacker()
        try:
            recorded = AS_RELAY.seal(call_start(11))
            first.sendto(recorded, server.address)
            await until(lambda: len(recorder.calls) == 1)
            replay.sendto(recorded, server.address)  # same bytes, another address: a second call?
            stale = AS_RELAY.seal(call_start(12, sent_at_ms=int(time.time() * 1000) - 60_000))
            replay.sendto(stale, server.address)  # recorded a minute ago: its id long forgotten
            await until(lambda: server.stats.call_start_refused == 2)
            assert len(recorder.calls) == 1 and len(server.calls) == 1
            reasons = sorted(peek(d).reason() for d in drain(replay))
            assert reasons == ["call_start_replayed", "call_start_stale"]
            assert all(len(d) <= len(recorded) for d in drain(replay))
        finally:
            first.close()
            replay.close()


async def test_a_relay_whose_clock_is_off_is_told_why() -> None:
    async with InferenceServer(Recorder(), "127.0.0.1", 0, key=KEY, call_start_window=1.0) as server:
        assert server.address is not None
        async with RelayLink(server.address, key=KEY) as link:
            real_time = time.time
            try:
                time.time = lambda: real_time() + 30  # the relay's clock only
                start = link.start_call("skewed", RecordingSink())
                task = asyncio.ensure_future(start)
                await asyncio.sleep(0)  # CALL_START built with the skewed clock
            finally:
                time.time = real_time
            with pytest.raises(LinkError, match=r"refused call 'skewed': call_start_stale"):
                await task


async def test_audio_from_another_address_is_dropped_on_both_sides() -> None:
    recorder = Recorder()
    frames: list[bytes] = []

    async def collect(call: InferenceCall) -> None:
        recorder.calls.append(call)
        async for frame in call.frames():
            frames.append(frame.payload)

    async with InferenceServer(collect, "127.0.0.1", 0, key=KEY) as server:
        assert server.address is not None
        sink = RecordingSink()
        async with RelayLink(server.address, key=KEY) as link:
            call_id = await link.start_call("victim", sink)
            await until(lambda: len(recorder.calls) == 1)
            assert link.address is not None
            spoofer = attacker()
            try:
                spoofer.sendto(
                    wire.encode_audio(MsgType.AUDIO_IN, call_id, 5, 0, b"injected" * 5), server.address
                )
                spoofer.sendto(
                    wire.encode_audio(MsgType.AUDIO_OUT, call_id, 5, 0, b"injected" * 5),
                    ("127.0.0.1", link.address[1]),
                )
                await until(lambda: server.stats.unknown_call == 1 and link.stats.unknown_call == 1)
                link.send_audio_in(call_id, 6, 960, b"real")
                recorder.calls[0].send_audio(b"real-out")
                await until(lambda: bool(frames) and bool(sink.audio))
                assert frames == [b"real"] and [a.payload for a in sink.audio] == [b"real-out"]
                assert not recorder.calls[0].ended and link.active_calls == 1
            finally:
                spoofer.close()


async def test_replies_to_forged_audio_are_bounded_in_count_and_size() -> None:
    async with InferenceServer(Recorder(), "127.0.0.1", 0, key=KEY) as server:
        assert server.address is not None
        sock = attacker()
        try:
            sent = 0
            began = time.monotonic()
            for i in range(1, 2001):  # unknown call ids, frames of 21..120 bytes
                sock.sendto(
                    wire.encode_audio(MsgType.AUDIO_IN, i, 0, 0, b"a" * (1 + i % 100)), server.address
                )
                sent += 21 + i % 100
                if i % 100 == 0:
                    await asyncio.sleep(0.005)
            await until(lambda: server.stats.datagrams_in >= 2000)
            await asyncio.sleep(0.1)
            replies = drain(sock)
            elapsed = time.monotonic() - began
            stats = server.stats
            assert len(replies) + stats.replies_limited + stats.replies_too_large == 2000
            assert len(replies) <= 100 + 50 * elapsed  # one source's burst and rate (wire_auth.REPLY_*)
            assert stats.replies_limited > 0 and stats.replies_too_large > 0
            assert all(len(r) == 37 for r in replies)  # the compact CALL_END, never more than its request
            assert sum(len(r) for r in replies) < sent / 10
        finally:
            sock.close()


async def test_key_rotation_accepts_the_previous_key() -> None:
    old, new = WireKey(b"o" * 32), WireKey(b"n" * 32)
    recorder = Recorder()
    async with InferenceServer(recorder, "127.0.0.1", 0, key=WireKeyring(new, old)) as server:
        assert server.address is not None
        async with RelayLink(server.address, key=old) as not_yet, RelayLink(server.address, key=new) as moved:
            sinks = (RecordingSink(), RecordingSink())
            ids = [await not_yet.start_call("old", sinks[0]), await moved.start_call("new", sinks[1])]
            await until(lambda: len(recorder.calls) == 2)
            for call in recorder.calls:  # inference answers each call in the key it started with
                call.send_event({"type": "hello"}, reliable=True)
            await until(lambda: all(s.events for s in sinks))
            assert [c.call_id for c in recorder.calls] == ids
        async with RelayLink(server.address, key=WireKey(b"x" * 32), rto=0.005, attempts=2) as stale:
            with pytest.raises(LinkError, match="did not acknowledge"):
                await stale.start_call("retired", RecordingSink())
        assert server.stats.auth_failed >= 2
