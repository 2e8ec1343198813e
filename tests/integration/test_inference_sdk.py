"""Inference SDK and the relay's link, talking over real UDP sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from splitrelay.inference import sdk as inference
from splitrelay.inference import wire
from splitrelay.inference.endpoint import LinkError
from splitrelay.inference.sdk import (
    AudioFrame,
    BargeInNotice,
    CallEvent,
    InferenceCall,
    InferenceServer,
    MarkReached,
    RelayEvent,
)
from splitrelay.inference.wire import FLAG_RELIABLE, BargeIn, Message, MsgType, WireError
from splitrelay.relay.inference_link import RelayLink
from tests.opus_fixtures import UTTERANCE, clip
from tests.recording_sink import RecordingSink
from tests.wire_keys import AS_INFERENCE, KEY, peek

Handler = Callable[[InferenceCall], Awaitable[None]]


@asynccontextmanager
async def pair(
    handler: Handler, *, host: str = "127.0.0.1", server_kw: Any = None, link_kw: Any = None
) -> AsyncIterator[tuple[InferenceServer, RelayLink]]:
    server = InferenceServer(handler, host, 0, **({"key": KEY} | (server_kw or {})))
    address = await server.start()
    link = RelayLink(address, **({"key": KEY} | (link_kw or {})))
    await link.start()
    try:
        yield server, link
    finally:
        await link.close()
        await server.close()


class Recorder:
    """A handler that records every frame and event of its calls until they end."""

    def __init__(self, on_start: Callable[[InferenceCall], Awaitable[None]] | None = None) -> None:
        self.calls: list[InferenceCall] = []
        self.frames: list[AudioFrame] = []
        self.events: list[CallEvent] = []
        self.started = asyncio.Event()
        self.done = asyncio.Event()
        self._on_start = on_start

    async def __call__(self, call: InferenceCall) -> None:
        self.calls.append(call)
        self.started.set()
        try:
            if self._on_start is not None:
                await self._on_start(call)

            async def events() -> None:
                async for event in call.events():
                    self.events.append(event)

            task = asyncio.create_task(events())
            async for frame in call.frames():
                self.frames.append(frame)
            await task
        finally:
            self.done.set()


async def _acked(future: asyncio.Future[bool] | None) -> bool:
    assert future is not None
    return await future


def ended(sink: RecordingSink) -> Callable[[], bool]:
    return lambda: bool(sink.ends)


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``condition`` every 5 ms; fail after ``within`` seconds."""
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition not met within {within} s")


async def test_call_frames_and_replies_travel_both_ways() -> None:
    async def greet(call: InferenceCall) -> None:
        assert call.send_audio(b"hello-1", marker=True)
        assert call.send_audio(b"hello-2")
        call.send_event({"type": "transcript.final", "text": "hi"})
        assert await _acked(call.send_mark("greeting-done"))
        assert call.send_audio(b"hello-3")
        assert await _acked(call.clear())

    recorder = Recorder(greet)
    sink = RecordingSink()
    audio = clip(UTTERANCE)
    async with pair(recorder) as (server, link):
        call_id = await link.start_call("call-1", sink, channels=2, metadata={"lang": "en"})
        for i, frame in enumerate(audio.frames):
            flags = wire.audio_in_flags(marker=i == 0, level=audio.levels[i], voice=audio.speech[i])
            assert link.send_audio_in(call_id, 1000 + i, i * 960, frame, flags)
        await until(lambda: len(recorder.frames) == len(audio.frames))
        await sink.wait_for(lambda: len(sink.audio) == 3 and bool(sink.clears))
        assert await link.end_call(call_id, "caller_hangup") is True
        await asyncio.wait_for(recorder.done.wait(), 5)

        call = recorder.calls[0]
        assert call.info.call == "call-1"
        assert (call.info.channels, call.info.metadata) == (2, {"lang": "en"})
        assert call.end_reason == "caller_hangup"
        assert [f.payload for f in recorder.frames] == audio.frames
        assert [f.seq for f in recorder.frames] == [1000 + i for i in range(len(audio.frames))]
        assert [f.timestamp for f in recorder.frames] == [i * 960 for i in range(len(audio.frames))]
        assert [f.marker for f in recorder.frames] == [True] + [False] * (len(audio.frames) - 1)
        assert [f.audio_level for f in recorder.frames] == audio.levels
        assert [f.voice for f in recorder.frames] == audio.speech

        assert [(o.seq, o.timestamp, o.payload, o.marker) for o in sink.audio] == [
            (0, 0, b"hello-1", True),
            (1, 960, b"hello-2", False),
            (2, 1920, b"hello-3", False),
        ]
        assert sink.events == [{"type": "transcript.final", "text": "hi"}]
        assert sink.marks == [("greeting-done", 1920)]  # placed after two frames
        assert sink.clears == [2880]  # drops everything sent before the third frame's end
        assert sink.ends == []  # the relay ended it itself: no callback
        assert link.active_calls == 0
        assert server.stats.garbage == 0 and link.stats.garbage == 0


async def test_relay_control_reaches_the_handler_as_events() -> None:
    recorder = Recorder()
    sink = RecordingSink()
    async with pair(recorder) as (_, link):
        call_id = await link.start_call("call-2", sink)
        acked = link.send_barge_in(
            call_id, played_samples=24_000, dropped_frames=7, response_seq=41, timestamp=9600
        )
        assert acked is not None and await acked is True
        mark = link.send_mark(call_id, "m1", 4800)
        assert mark is not None and await mark
        link.send_event(call_id, {"type": "client.note", "n": 1})
        await until(lambda: len(recorder.events) == 3)
    assert recorder.events == [
        BargeInNotice(BargeIn(24_000, 7, 41), 9600),
        MarkReached("m1", 4800),
        RelayEvent({"type": "client.note", "n": 1}),
    ]


async def test_handler_return_error_and_hangup_end_the_call_at_the_relay() -> None:
    async def returns(call: InferenceCall) -> None:
        return None

    async def fails(call: InferenceCall) -> None:
        raise RuntimeError("model crashed")

    hung_up: list[bool] = []

    async def hangs_up(call: InferenceCall) -> None:
        hung_up.append(await call.hangup("goodbye"))
        assert call.send_audio(b"late") is False  # nothing is sent on an ended call

    for handler, reason in ((returns, "agent_done"), (fails, "agent_error"), (hangs_up, "goodbye")):
        sink = RecordingSink()
        async with pair(handler) as (_, link):
            await link.start_call("c", sink)
            await sink.wait_for(ended(sink))
            assert sink.ends == [reason]
            assert link.active_calls == 0
    assert hung_up == [True]


async def test_capacity_refusal_raises_at_start_call() -> None:
    recorder = Recorder()
    async with pair(recorder, server_kw={"max_calls": 1}) as (_, link):
        await link.start_call("first", RecordingSink())
        second = RecordingSink()
        with pytest.raises(LinkError, match=r"refused call 'second': capacity"):
            await link.start_call("second", second)
        assert second.ends == []
        assert link.active_calls == 1


async def test_start_call_fails_cleanly_when_nobody_acks() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        link = RelayLink(silent.getsockname(), rto=0.005, attempts=3)
        await link.start()
        try:
            with pytest.raises(LinkError, match=r"did not acknowledge CALL_START for 'c'"):
                await link.start_call("c", RecordingSink())
            assert link.active_calls == 0
            assert link.stats.retransmits == 2
        finally:
            await link.close()
    finally:
        silent.close()


async def test_bad_input_raises_before_anything_is_sent() -> None:
    recorder = Recorder()
    async with pair(recorder) as (_, link):
        with pytest.raises(WireError, match=r"call_start.channels: must be 1 or 2"):
            await link.start_call("c", RecordingSink(), channels=3)
        with pytest.raises(WireError, match=r"call_start.call: must be a string of 1..128"):
            await link.start_call("", RecordingSink())
        assert link.stats.datagrams_out == 0
        call_id = await link.start_call("c", RecordingSink())
        with pytest.raises(WireError, match=r"payload: an Opus frame is 1..1380 bytes, got 0"):
            link.send_audio_in(call_id, 0, 0, b"")
        with pytest.raises(WireError, match=r'payload: EVENT must be a JSON object with a non-empty "type"'):
            link.send_event(call_id, {"no": "type"})
        with pytest.raises(WireError, match=r'payload: CALL_END must be a JSON object with a "reason"'):
            await link.end_call(call_id, "")
        assert link.active_calls == 1
        await until(lambda: bool(recorder.calls))
        with pytest.raises(WireError, match=r"payload: MARK name must be 1..255 bytes"):
            recorder.calls[0].send_mark("")
        assert link.send_audio_in(12345, 0, 0, b"x") is False  # not a call of this link
        with pytest.raises(LinkError, match=r"inference.port: must be 1..65535, got 0"):
            await link.start_call("c", RecordingSink(), inference=("127.0.0.1", 0))


class LossyProxy(asyncio.DatagramProtocol):
    """Loopback UDP proxy between a relay and a server that drops or duplicates chosen datagrams."""

    def __init__(self, target: tuple[str, int], policy: Callable[[str, Message], str]) -> None:
        self.target = target
        self.policy = policy  # (direction, message) -> "pass" | "drop" | "dup"
        self.client: Any = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None
        self.dropped = 0

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        proxy = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                proxy._forward("to_relay", data)

        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        address: tuple[str, int] = self.front.get_extra_info("sockname")
        return address

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        self._forward("to_server", data)

    def _forward(self, direction: str, data: bytes) -> None:
        action = self.policy(direction, peek(data))
        if action == "drop":
            self.dropped += 1
            return
        assert self.front is not None and self.back is not None
        for _ in range(2 if action == "dup" else 1):
            if direction == "to_server":
                self.back.sendto(data, self.target)
            else:
                self.front.sendto(data, self.client)

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()


async def test_lost_control_messages_and_acks_are_retransmitted() -> None:
    seen: dict[tuple[str, MsgType], int] = {}

    def drop_first_of_each(direction: str, msg: Message) -> str:
        key = (direction, msg.type)
        seen[key] = seen.get(key, 0) + 1
        return "drop" if seen[key] == 1 and msg.type is not MsgType.AUDIO_IN else "pass"

    recorder = Recorder()
    server = InferenceServer(recorder, "127.0.0.1", 0)
    proxy = LossyProxy(await server.start(), drop_first_of_each)
    link = RelayLink(await proxy.start(), rto=0.01)
    await link.start()
    sink = RecordingSink()
    try:
        call_id = await link.start_call("lossy", sink)  # first CALL_START and first ACK both lost
        future = link.send_barge_in(call_id, played_samples=1, dropped_frames=2, response_seq=3)
        assert future is not None and await future is True
        await until(lambda: len(recorder.events) == 1)
        assert await link.end_call(call_id) is True
        await asyncio.wait_for(recorder.done.wait(), 5)
        assert len(recorder.calls) == 1  # the retransmitted CALL_START did not open a second call
        assert recorder.events == [BargeInNotice(BargeIn(1, 2, 3), 0)]
        assert link.stats.retransmits >= 3
        assert server.stats.duplicates >= 1  # a control message whose ACK was lost came again
        assert proxy.dropped >= 4
    finally:
        await link.close()
        await server.close()
        proxy.close()


async def test_duplicated_datagrams_are_acted_on_once() -> None:
    recorder = Recorder()
    server = InferenceServer(recorder, "127.0.0.1", 0)
    proxy = LossyProxy(await server.start(), lambda direction, msg: "dup")
    link = RelayLink(await proxy.start())
    await link.start()
    sink = RecordingSink()

    try:
        call_id = await link.start_call("dup", sink)
        for i in range(5):
            link.send_audio_in(call_id, i, i * 960, bytes([i + 1]))
        link.send_barge_in(call_id, played_samples=0, dropped_frames=0, response_seq=0)
        link.send_event(call_id, {"type": "x"}, reliable=True)
        await until(lambda: len(recorder.frames) == 5 and len(recorder.events) == 2)
        await asyncio.sleep(0.05)
        assert [f.seq for f in recorder.frames] == [0, 1, 2, 3, 4]
        assert len(recorder.events) == 2
        assert len(recorder.calls) == 1
        assert server.stats.audio_late == 5
        assert server.stats.duplicates >= 3
    finally:
        await link.close()
        await server.close()
        proxy.close()


async def test_late_and_reordered_audio_is_dropped() -> None:
    recorder = Recorder()
    async with pair(recorder) as (server, link):
        call_id = await link.start_call("order", RecordingSink())
        for seq in (10, 11, 9, 11, 13, 12, 14):
            link.send_audio_in(call_id, seq, seq * 960, b"f")
        await until(lambda: server.stats.datagrams_in >= 8)
        await until(lambda: len(recorder.frames) == 4)
        assert [f.seq for f in recorder.frames] == [10, 11, 13, 14]
        assert server.stats.audio_late == 3


async def test_garbage_and_strangers_do_not_disturb_a_call() -> None:
    recorder = Recorder()
    async with pair(recorder) as (server, link):
        call_id = await link.start_call("sturdy", RecordingSink())
        assert server.address is not None
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        stranger.setblocking(False)
        try:
            for junk in (b"", b"x" * 3000, bytes(20), b"\x02\x03" + bytes(18) + b"x", b"\xff" * 40):
                stranger.sendto(junk, server.address)
            # A well-formed frame for a call this stranger never started: one CALL_END back.
            stranger.sendto(wire.encode_audio(MsgType.AUDIO_IN, 999, 0, 0, b"x" * 40), server.address)
            stranger.sendto(wire.encode_audio(MsgType.AUDIO_IN, 999, 1, 960, b"x" * 40), server.address)
            # The real call's id from the wrong address is a stranger's call too.
            stranger.sendto(wire.encode_audio(MsgType.AUDIO_IN, call_id, 0, 0, b"spoof" * 8), server.address)
            link.send_audio_in(call_id, 0, 0, b"real")
            await until(lambda: len(recorder.frames) == 1)
            replies: list[Message] = []
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(5):
                while len(replies) < 2:  # bounded by the timeout
                    replies.append(peek(await loop.sock_recv(stranger, 2048)))
            assert sorted((m.call_id, m.reason()) for m in replies) == sorted(
                [(999, "unknown_call"), (call_id, "unknown_call")]
            )
        finally:
            stranger.close()
        assert [f.payload for f in recorder.frames] == [b"real"]
        assert (server.stats.garbage, server.stats.bad_version) == (2, 3)
        assert server.stats.unknown_call == 3
        assert len(recorder.calls) == 1 and not recorder.calls[0].ended


async def test_idle_call_is_dropped_and_the_relay_told() -> None:
    recorder = Recorder()
    sink = RecordingSink()
    # A relay that sends nothing at all: no audio and, with its agent watch off, no keep-alives (a
    # watching relay's keep-alives hold an idle call: tests/integration/test_agent_liveness.py).
    async with pair(recorder, server_kw={"idle_timeout": 0.2}, link_kw={"agent_timeout_s": 0}) as (_, link):
        await link.start_call("idle", sink)
        await sink.wait_for(lambda: bool(sink.ends))
        assert sink.ends == ["idle_timeout"]
        assert recorder.calls[0].end_reason == "idle_timeout"


async def test_closing_either_end_ends_the_calls() -> None:
    recorder = Recorder()
    sink = RecordingSink()
    server = InferenceServer(recorder, "127.0.0.1", 0)
    link = RelayLink(await server.start())
    await link.start()
    await link.start_call("a", sink)
    await server.close()
    await sink.wait_for(lambda: bool(sink.ends))
    assert sink.ends == ["server_closing"]
    await link.close()

    recorder = Recorder()
    sink = RecordingSink()
    server = InferenceServer(recorder, "127.0.0.1", 0)
    link = RelayLink(await server.start())
    await link.start()
    await link.start_call("b", sink)
    await link.close()
    await asyncio.wait_for(recorder.done.wait(), 5)
    assert recorder.calls[0].end_reason == "relay_closing"
    assert sink.ends == ["relay_closing"]
    await server.close()


async def test_inference_restart_is_noticed_by_the_relay() -> None:
    # The "old" inference process: a bare socket that acknowledges CALL_START and then dies.
    old = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    old.bind(("127.0.0.1", 0))
    old.setblocking(False)
    address = old.getsockname()
    sink = RecordingSink()
    link = RelayLink(address, key=KEY)
    await link.start()
    try:
        loop = asyncio.get_running_loop()
        start = asyncio.create_task(link.start_call("survivor", sink))
        async with asyncio.timeout(5):
            data, relay = await loop.sock_recvfrom(old, 2048)
        msg = peek(data)
        ack = Message(MsgType.ACK, msg.call_id, msg.seq, payload=wire.pack_ack(msg.type))
        old.sendto(AS_INFERENCE.seal(wire.encode(ack)), relay)
        call_id = await start
        old.close()
        # The new process on the same port knows nothing of the call.
        async with InferenceServer(Recorder(), *address, key=KEY) as fresh:
            link.send_audio_in(call_id, 0, 0, b"x" * 40)  # no smaller than the compact reply (37 bytes)
            await sink.wait_for(lambda: bool(sink.ends))
            assert sink.ends == ["unknown_call"]
            assert link.active_calls == 0
            assert fresh.stats.unknown_call == 1
    finally:
        old.close()
        await link.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_loopback() -> None:
    recorder = Recorder()
    sink = RecordingSink()
    async with pair(recorder, host="::1") as (server, link):
        assert server.address is not None and server.address[0] == "::1"
        call_id = await link.start_call("v6", sink)
        link.send_audio_in(call_id, 0, 0, b"v6-frame")
        await until(lambda: len(recorder.frames) == 1)
        recorder.calls[0].send_audio(b"back", marker=True)
        await sink.wait_for(lambda: len(sink.audio) == 1)
    assert sink.audio[0].payload == b"back"


def test_the_sdk_runs_on_uvloop() -> None:
    loops: list[str] = []

    async def scenario() -> None:
        loops.append(type(asyncio.get_running_loop()).__module__)
        recorder = Recorder()
        sink = RecordingSink()
        async with pair(recorder) as (_, link):
            call_id = await link.start_call("uv", sink)
            for i in range(20):
                link.send_audio_in(call_id, i, i * 960, b"frame-%d" % i)
            await until(lambda: len(recorder.frames) == 20)
            recorder.calls[0].send_audio(b"reply", marker=True)
            await sink.wait_for(lambda: len(sink.audio) == 1)

    inference.run(scenario())
    assert loops == ["uvloop"]


def test_server_settings_are_checked() -> None:
    async def noop(call: InferenceCall) -> None:
        return None

    with pytest.raises(ValueError, match=r"max_calls: must be 1..100000, got 0"):
        InferenceServer(noop, max_calls=0)
    with pytest.raises(ValueError, match=r"port: must be 0..65535, got 70000"):
        InferenceServer(noop, port=70000)
    with pytest.raises(ValueError, match=r"idle_timeout: must be 0.1..3600 seconds, got 0"):
        InferenceServer(noop, idle_timeout=0)


async def test_reliable_flag_is_required_on_the_wire() -> None:
    # Guard for the receive path: a CLEAR without FLAG_RELIABLE never reaches a sink.
    recorder = Recorder()
    sink = RecordingSink()
    async with pair(recorder) as (_, link):
        call_id = await link.start_call("flags", sink)
        await until(lambda: bool(recorder.calls))
        call = recorder.calls[0]
        raw = wire._encode_unchecked(Message(MsgType.CLEAR, call_id, 99, 0, 0))
        assert link.address is not None
        call._server.send_raw(AS_INFERENCE.seal(raw), ("127.0.0.1", link.address[1]))
        ok = AS_INFERENCE.seal(wire.encode(Message(MsgType.CLEAR, call_id, 100, 0, FLAG_RELIABLE)))
        call._server.send_raw(ok, ("127.0.0.1", link.address[1]))
        await sink.wait_for(lambda: bool(sink.clears))
        assert sink.clears == [0]
        assert link.stats.garbage == 1


async def test_a_failing_sink_does_not_disturb_other_calls(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(RecordingSink):
        def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None:
            raise RuntimeError("pipeline bug")

    async def talk(call: InferenceCall) -> None:
        for i in range(3):
            call.send_audio(b"frame-%d" % i, marker=i == 0)

    recorder = Recorder(talk)
    good = RecordingSink()
    async with pair(recorder) as (_, link):
        await link.start_call("broken", Broken())
        await link.start_call("good", good)
        await good.wait_for(lambda: len(good.audio) == 3)
        await until(lambda: link.stats.callback_errors == 3)
    assert [o.payload for o in good.audio] == [b"frame-0", b"frame-1", b"frame-2"]
    assert len([r for r in caplog.records if "call sink failed" in r.getMessage()]) == 1


async def test_refusal_survives_a_lost_call_end() -> None:
    dropped: list[MsgType] = []

    def drop_first_call_end(direction: str, msg: Message) -> str:
        if direction == "to_relay" and msg.type is MsgType.CALL_END and not dropped:
            dropped.append(msg.type)
            return "drop"
        return "pass"

    recorder = Recorder()
    server = InferenceServer(recorder, "127.0.0.1", 0, max_calls=1)
    address = await server.start()
    direct = RelayLink(address)
    await direct.start()
    proxy = LossyProxy(address, drop_first_call_end)
    link = RelayLink(await proxy.start(), rto=0.01)
    await link.start()
    try:
        await direct.start_call("first", RecordingSink())
        with pytest.raises(LinkError, match=r"refused call 'second': capacity"):
            await link.start_call("second", RecordingSink())  # its CALL_START is retransmitted meanwhile
        assert dropped == [MsgType.CALL_END]
        assert link.stats.retransmits >= 1
    finally:
        await link.close()
        await direct.close()
        await server.close()
        proxy.close()
