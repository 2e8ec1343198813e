"""The outbound C path (relay/media/native ``NativeOutbound``, fastpath.c ``sr_batch_out``) against the
Python path it short-cuts: the same AUDIO_OUT traffic from inference, read batch by batch on a fake clock
by two relays that differ only in ``SPLITRELAY_NATIVE_OUT``, must give the same SRTP bytes toward each
caller in the same order, the same call, stream, playout and link counters, the same playout state, the
same dwell histogram and the same sender-report figures.

Each relay is a real ``RelayLink`` (its socket read by hand), a real batched ``SharedUdpPort`` (its send
batch flushed by the loop) and real ``Call`` objects whose fast paths send on that port toward real
caller sockets. Traffic: in-order frames, markers, gaps, late and repeated frames, bursts that queue,
frames from the wrong address, with wrong flags or version, truncated, too long for a packet, for an
unknown call, sealed MARKs between a call's frames in one batch; between batches pause, resume,
barge-in, CLEAR, the MID acknowledged, timers firing, stalls, and calls closing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from splitrelay.inference import wire
from splitrelay.inference.udp_batch import SendBatch
from splitrelay.inference.wire import Message, MsgType
from splitrelay.inference.wire_auth import Sealer, WireKey, resolve_keyring
from splitrelay.relay.call import Call, CallConfig, CallState
from splitrelay.relay.inference_link import RelayLink, _LinkCall, _NativeLinkReader
from splitrelay.relay.media import native, srtp_fastpath
from splitrelay.relay.media.aiortc_internals import SrtpLink
from splitrelay.relay.media.sdp import StreamParams
from splitrelay.relay.media.shared_port import SharedUdpPort
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath
from splitrelay.relay.telemetry import DwellHistogram
from tests.native_traffic import sessions

pytestmark = pytest.mark.skipif(not native.available(), reason="native path not built")

PT = 111
CALLS = 4
KEYS = [bytes([k]) * 30 for k in range(1, CALLS + 1)]
WIRE_KEY = WireKey(bytes(range(32)))


class Clock:
    def __init__(self) -> None:
        self.now = 5_000_000_000_000

    def read(self) -> int:
        return self.now


class Timers:
    """The playouts' ``schedule``: wake-ups fired by hand when the fake clock passes them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.heap: list[tuple[int, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.failed = 0

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.heap, (self.clock.now + round(delay * 1e9), next(self.order), fn))

    def fire(self) -> None:
        for _ in range(len(self.heap)):
            if not self.heap or self.heap[0][0] > self.clock.now:
                return
            fn = heapq.heappop(self.heap)[2]
            try:
                fn()
            except ValueError:  # a queued frame too long for a packet: SharedPacer counts it likewise
                self.failed += 1


class Peer:
    """The call's peer connection: only its close is used here."""

    async def close(self) -> None:
        pass


class Ice(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        pass


@dataclass
class World:
    link: RelayLink
    port: SharedUdpPort
    calls: list[Call]
    callers: list[socket.socket]
    timers: Timers
    heard: list[list[bytes]] = field(default_factory=list)
    """What the callers heard, step by step."""

    def drain_callers(self) -> list[list[bytes]]:
        got: list[list[bytes]] = []
        for sock in self.callers:
            mine: list[bytes] = []
            for _ in range(10_000):
                try:
                    mine.append(sock.recv(4096))
                except BlockingIOError:
                    break
            got.append(mine)
        return got


DRAINS = ("per-batch", "drain", "drain-small", "drain-back")
"""How the C world reads inference's socket: one C call per batch (``SPLITRELAY_NATIVE_DRAIN=0``); one per
wake-up (``Drain``); the same in batches of 4, up to 16 per wake-up (C runs several batches in one call);
and one per wake-up with every datagram C made handed back (as when the media socket holds data)."""


@asynccontextmanager
async def relay(
    native_out: bool,
    clock: Clock,
    inference: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    drain: str = "drain",
    pace: bool = False,
) -> AsyncIterator[World]:
    monkeypatch.setenv(native.NATIVE_OUT_ENV, "1" if native_out else "0")
    monkeypatch.setenv(native.NATIVE_PACE_ENV, "1" if pace else "0")
    monkeypatch.setenv(native.NATIVE_DRAIN_ENV, "0" if drain == "per-batch" else "1")
    loop = asyncio.get_running_loop()
    link = RelayLink(inference.getsockname(), key=WIRE_KEY, agent_timeout_s=0)
    link.batch_receive = True
    await link.start()
    link.clock = clock.read
    port = await SharedUdpPort.open("127.0.0.1", 0, batched=True)
    assert port._sock is not None
    loop.remove_reader(port._sock.fileno())
    port.batch_sends(lambda transport: SendBatch(transport, max_batch=64))
    if native_out and drain == "drain-small":
        reader = link.receiver
        assert isinstance(reader, _NativeLinkReader)
        reader.batch, reader.calls_per_turn = 4, 16
        reader._recv = native.RecvBatch(reader._sock.fileno(), 4, timed=True, stamps=reader._recv.stamps)
    if native_out and drain == "drain-back":
        media_fd = port.native_media_fd
        monkeypatch.setattr(port, "native_media_fd", lambda: min(media_fd(), -1))
    assert port.forward_inbound(link)
    assert (link.native_out is not None) == native_out
    assert (link.native_drain is not None) == (native_out and drain != "per-batch")
    receiver = link.receiver
    assert receiver is not None
    loop.remove_reader(link._transport.get_extra_info("socket").fileno())  # type: ignore[union-attr]
    timers = Timers(clock)
    if pace:
        link.pace_schedule = timers.schedule  # frames that wait for their slot wait in C (sr_pace)
    calls: list[Call] = []
    callers: list[socket.socket] = []
    for index in range(CALLS):
        caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        caller.bind(("127.0.0.1", 0))
        caller.setblocking(False)
        callers.append(caller)
        config = CallConfig(fast_path=FastPathConfig(bye_on_close=False, rtcp_interval=60))
        call = Call(f"c{index}", "direct", cast(Any, Peer()), link, config=config)
        playout = call.playout
        playout._clock = clock.read
        playout._schedule = timers.schedule
        playout.state.t0 = playout.state.timeline_ns = clock.now
        ufrag = port.mint_ufrag(f"c{index}")
        transport = port.attach(ufrag, "pw" * 12, Ice(), "127.0.0.1")
        rx, tx = sessions(KEYS[index])
        mid_ext = 3 if index % 2 else None  # odd calls announce their MID until it is acknowledged
        stream = StreamParams("0", PT, 48000, 1, 0x7000 + index, "relay", (), 1, mid_ext, True, True)
        fp = SrtpFastPath(
            SrtpLink(Ice(), transport, caller.getsockname(), rx, tx, None),
            [stream],
            call._on_rtp,
            config.fast_path,
        )
        fp.outbound_streams[0].sequence = 1000 * (index + 1)
        call.fast_path = fp
        call._take_fast_path(fp)
        wire_id = 0x100 + index
        state = _LinkCall(wire_id, inference.getsockname(), call)
        state.starting = False
        link._calls[wire_id] = state
        call.wire_id = wire_id
        call.state = CallState.LIVE
        call._sync_native()
        if native_out:
            assert call._out is not None and call._out.enabled
        assert (playout.held is not None) == pace
        calls.append(call)
    try:
        yield World(link, port, calls, callers, timers)
    finally:
        for call in calls:
            if call.state is not CallState.CLOSED:
                call.wire_id = None
                await call.close("test over")
        await link.close()
        await port.close()
        for caller in callers:
            caller.close()


@dataclass
class Agent:
    """Inference's side: per call its AUDIO_OUT position and control sequence."""

    seq: list[int] = field(default_factory=lambda: [0] * CALLS)
    ts: list[int] = field(default_factory=lambda: [0] * CALLS)
    control: list[int] = field(default_factory=lambda: [0] * CALLS)
    sealer: Sealer = field(default_factory=lambda: Sealer(resolve_keyring(WIRE_KEY), "inference"))

    def frame(self, rng: random.Random, call: int, *, marker: bool = False, flags: int = 0) -> bytes:
        payload = rng.randbytes(rng.choice((1, 3, 40, 120, 200)))
        data = wire.encode_audio(
            MsgType.AUDIO_OUT,
            0x100 + call,
            self.seq[call] & wire.U32,
            self.ts[call] & wire.U32,
            payload,
            flags | (wire.FLAG_MARKER if marker else 0),
        )
        self.seq[call] = (self.seq[call] + 1) & wire.U32
        self.ts[call] = (self.ts[call] + 960) & wire.U32
        return data

    def mark(self, call: int, name: str) -> bytes:
        msg = Message(
            MsgType.MARK, 0x100 + call, self.control[call], self.ts[call], payload=wire.pack_mark(name)
        )
        self.control[call] += 1
        return self.sealer.seal(wire.encode(msg))


Step = tuple[list[tuple[int, bytes]], list[tuple[str, int, int]], int]
"""(datagrams as (socket index: 0 inference, 1 a stranger; data), operations before the batch, clock step)"""


def traffic(seed: int) -> list[Step]:
    rng = random.Random(seed)
    agent = Agent()
    steps: list[Step] = []
    for _ in range(260):
        ops: list[tuple[str, int, int]] = []
        for _ in range(rng.choice((0, 0, 0, 1))):
            op = rng.choice(("pause", "resume", "resume", "barge", "clear", "ack", "fire"))
            call = rng.randrange(CALLS)
            ops.append((op, call, (agent.ts[call] - rng.choice((0, 0, 1920))) & wire.U32))
        batch: list[tuple[int, bytes]] = []
        for _ in range(rng.randint(1, 12)):
            if len(batch) >= 24:
                break
            call = rng.randrange(CALLS)
            roll = rng.random()
            if roll < 0.62:
                batch.append((0, agent.frame(rng, call, marker=rng.random() < 0.05)))
            elif roll < 0.66:
                skip = rng.randint(1, 5)
                agent.seq[call] += skip
                agent.ts[call] = (agent.ts[call] + skip * 960) & wire.U32
                batch.append((0, agent.frame(rng, call)))
            elif roll < 0.70:  # late: an old position again
                agent.seq[call] -= 3
                batch.append((0, agent.frame(rng, call)))
                agent.seq[call] += 3
            elif roll < 0.73:  # a repeat of the newest
                agent.seq[call] -= 1
                agent.ts[call] -= 960
                batch.append((0, agent.frame(rng, call)))
            elif roll < 0.78:  # a burst: queues behind the first
                batch.extend((0, agent.frame(rng, call)) for _ in range(rng.randint(3, 6)))
            elif roll < 0.80:
                batch.append((1, agent.frame(rng, call)))  # from another address
            elif roll < 0.82:
                batch.append((0, agent.frame(rng, call, flags=0x0002)))
            elif roll < 0.83:
                versioned = bytearray(agent.frame(rng, call))
                versioned[0] = 1
                batch.append((0, bytes(versioned)))
            elif roll < 0.85:
                batch.append((0, agent.frame(rng, call)[: rng.choice((5, 19, 20))]))
            elif roll < 0.86:
                data = wire.encode_audio(MsgType.AUDIO_OUT, 0x999, 1, 0, b"x", 0)
                batch.append((0, data))
            elif roll < 0.87:  # longer than the fast path's max_payload: the call's sink raises
                data = wire.encode_audio(
                    MsgType.AUDIO_OUT,
                    0x100 + call,
                    agent.seq[call] & wire.U32,
                    agent.ts[call] & wire.U32,
                    rng.randbytes(1300),
                )
                agent.seq[call] += 1
                agent.ts[call] += 960
                batch.append((0, data))
            elif roll < 0.93:
                batch.append((0, agent.mark(call, f"m{rng.randrange(100)}")))
                batch.append((0, agent.frame(rng, call)))
            else:
                batch.append((0, agent.frame(rng, call, marker=True)))
        advance = rng.choice((0, 1_000_000, 10_000_000, 20_000_000, 20_000_000, 40_000_000, 250_000_000))
        steps.append((batch, ops, advance))
    return steps


def apply(world: World, op: str, index: int, timestamp: int) -> None:
    call = world.calls[index]
    if call.state is CallState.CLOSED:
        return
    playout = call.playout
    if op == "pause":
        playout.pause()
    elif op == "resume":
        playout.resume()
    elif op == "barge":
        call._barge_in(0)
    elif op == "clear":
        call.on_clear(timestamp)
    elif op == "ack":
        assert call.fast_path is not None
        call.fast_path.outbound_streams[0].mid_acked = True
    elif op == "fire":
        world.timers.fire()


PACED_APART = ("timer_pending", "queued")
"""What differs while C holds a call's waiting frames: Python's queue and wake-up are then C's ring and the
link's one wake-up (``queued_frames``, which counts both, is compared)."""


def snapshot(world: World, *, paced: bool = False) -> dict[str, Any]:
    """Everything both paths must agree on (and the link's "heard" flags, taken as its sweep takes them).
    ``paced``: the world's C holds waiting frames, so its wake-ups and Python queue differ
    (``PACED_APART``)."""
    out: dict[str, Any] = {
        "timers": (None if paced else len(world.timers.heap), world.timers.failed),
        "link": (
            world.link.stats.datagrams_in,
            world.link.stats.audio_late,
            world.link.stats.callback_errors,
            world.link.stats.garbage,
        ),
    }
    for call in world.calls:
        summary = call.summary()
        playout = call.playout
        st = playout.state
        fp = call.fast_path
        assert fp is not None
        stream = fp.outbound_streams[0]
        state = world.link._calls.get(0x100 + int(call.call_id[1:]))
        heard = None
        if state is not None:  # the liveness sweep's view: something came from the agent since last time
            taken = state.out is not None and state.out.take_heard()
            heard = state.heard or taken
            state.heard = False
        slot = call._slot
        assert slot is not None
        out[call.call_id] = {
            "heard": heard,
            "playing_until": int(slot.c.playing_until),
            "counters": (summary["packets_out"], summary["bytes_out"], summary["frames_from_inference"]),
            "playout": {
                name: int(getattr(st, name))
                for name in (
                    "t0",
                    "timeline_ns",
                    "ts0",
                    "new_spurt",
                    "interrupted",
                    "paused",
                    "closed",
                    "timer_pending",
                    "queued",
                    "has_clear_before",
                    "clear_before",
                    "has_next_position",
                    "next_position",
                    "response_frames",
                    "response_seq",
                    "frames_sent",
                    "frames_caught_up",
                )
                if not (paced and name in PACED_APART)
            }
            | {
                "queued_frames": playout.queued_frames,
                "dropped": (
                    playout.frames_dropped_full,
                    playout.frames_dropped_interrupted,
                    playout.frames_dropped_cleared,
                ),
                "pauses": playout.pauses,
            },
            "stream": (
                stream.sequence,
                stream.packets,
                stream.octets,
                stream.last_timestamp,
                stream.last_send_ns,
                stream.mid_acked,
            ),
            "sender_report": (stream.packets, stream.octets, stream.rtp_timestamp_at(world.timers.clock.now)),
            "dwell_out": (
                call.dwell_out.counts(),
                call.dwell_out.count,
                call.dwell_out.sum_ns,
                call.dwell_out.max_ns,
            ),
            "send_failures": fp.send_failures,
        }
    return out


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two snapshots differ (the leaves), for the failure message."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d for key in a.keys() | b.keys() for d in differences(a.get(key), b.get(key), f"{path}.{key}")
        ]
    return [] if a == b else [f"{path}: C {a!r} != Python {b!r}"]


@pytest.mark.parametrize(
    ("seed", "drain", "pace"),
    [(1, "drain", False), (2, "drain", False), (3, "drain", False), (1, "per-batch", False),
     (2, "drain-small", False), (3, "drain-small", False), (1, "drain-back", False),
     (1, "drain", True), (2, "drain", True), (3, "per-batch", True), (4, "drain-small", True),
     (5, "drain-back", True)],
)  # fmt: skip
async def test_the_c_path_and_the_python_path_send_the_same_bytes_and_count_the_same(
    seed: int, drain: str, pace: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(srtp_fastpath, "send_clock", clock.read)
    inference = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inference.bind(("127.0.0.1", 0))
    inference.setblocking(False)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    sockets = (inference, stranger)
    steps = traffic(seed)
    close_at = {80: 1, 170: 2}  # step -> call closed before it
    try:
        async with (
            relay(True, clock, inference, monkeypatch, drain, pace) as c_world,
            relay(False, clock, inference, monkeypatch) as py_world,
        ):
            worlds = (c_world, py_world)
            for number, (batch, ops, advance) in enumerate(steps):
                clock.now += advance
                for world in worlds:
                    world.timers.fire()
                    if number in close_at:
                        call = world.calls[close_at[number]]
                        await call.close("caller hung up")
                    for op, index, timestamp in ops:
                        try:
                            apply(world, op, index, timestamp)
                        except ValueError:  # resume pumped a queued frame too long for a packet
                            world.timers.failed += 1
                    address = world.link.address
                    assert address is not None
                    for which, data in batch:
                        sockets[which].sendto(data, address)
                    await asyncio.sleep(0.002)  # loopback delivery
                    receiver = world.link.receiver
                    assert receiver is not None
                    receiver.drain()
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)  # the send batches' flush
                await asyncio.sleep(0.002)
                got = [world.drain_callers() for world in worlds]
                assert got[0] == got[1], f"step {number}: the callers heard different datagrams"
                c_state, py_state = snapshot(c_world, paced=pace), snapshot(py_world, paced=pace)
                assert c_state == py_state, f"step {number}: {differences(c_state, py_state)}"
                c_world.heard.extend(got[0])
                for _ in range(10_000):  # what the links sent inference (events, barge-ins): not compared
                    try:
                        inference.recv(4096)
                    except BlockingIOError:
                        break
            assert snapshot(c_world, paced=pace) == snapshot(py_world, paced=pace)
            out = c_world.link.native_out
            assert out is not None
            assert out.finished > 100, f"C finished only {out.finished} datagrams"
            if pace:
                assert out.paced > 50, f"C paced only {out.paced} frames"
            assert py_world.link.native_out is None
            assert sum(len(h) for h in c_world.heard) > out.finished  # C's and Python's packets both
    finally:
        inference.close()
        stranger.close()


# --- NativeOutbound on hand-filled batches: the call-id table, and the sanitizer run's rounds ---------


class OutBench:
    """``NativeOutbound`` over batches written straight into a ``RecvBatch``'s buffers, with entries bound
    to real playout and stream structs and real SRTP sessions (tests/unit/test_native_sanitizers.py)."""

    PEER = ("127.0.0.1", 40_000)

    def __init__(self, calls: int = CALLS, ids: int = 64, *, pace: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.out = native.NativeOutbound(32, ids=ids)
        self.recv = native.RecvBatch(self.sock.fileno(), 32, timed=True)
        ffi = self.out.ffi
        _protect, _unprotect, srtp_ffi = native._srtp_functions()
        self.sessions = [sessions(KEYS[i % len(KEYS)])[1] for i in range(calls)]
        self.entries: list[native.OutboundEntry] = []
        self.until = ffi.new("int64_t[]", calls)
        for i in range(calls):
            playout, stream = native.playout_state(), native.stream_state()
            assert playout is not None and stream is not None
            playout.lead_ns, playout.tail_ns, playout.catch_up_ns = 60_000_000, 120_000_000, 200_000_000
            entry = self.out.open_entry()
            assert entry.bind(
                playout=playout,
                stream=stream,
                playing_until=self.until + i,
                tx_pointer=native._session_pointer(self.sessions[i], srtp_ffi),
                payload_type=PT,
                ssrc=0x7000 + i,
                max_payload=1200,
                extension=b"\xbe\xde\x00\x01\x30\x30\x00\x00" if i % 2 else b"",
                remote=("127.0.0.1", 9),
            )
            assert self.out.map(entry, 0x100 + i, self.PEER)
            entry.enable()
            if pace:
                assert entry.pace_in_c()  # frames that must wait are held and paced in C (sr_pace)
            self.entries.append(entry)
        self.names = {
            "peer": native.raw_sockaddr(self.PEER),
            "other": native.raw_sockaddr(("127.0.0.1", 40_001)),
            "v6": native.raw_sockaddr(("::1", 40_000)),
        }

    def run(
        self, datagrams: list[tuple[bytes, bytes, int]], now: int, fd: int = -1, ages: list[int] | None = None
    ) -> tuple[int, int, int]:
        """(data, source sockaddr, its length field) per datagram; a negative length is a cut datagram.
        Datagram i arrived ``ages[i]`` ns before ``now`` (None: all at ``now``)."""
        recv = self.recv
        for i, (data, name, name_length) in enumerate(datagrams):
            recv.arrivals[i] = now - (ages[i] if ages is not None else 0)
            start = i * native.RECV_SLOT
            recv.mem[start : start + len(data)] = data
            recv.lengths[i] = len(data) if name_length >= 0 else -1
            start = i * native.RECV_NAME_SLOT
            recv.names_mem[start : start + len(name)] = name
            recv.name_lengths[i] = abs(name_length)
        return self.out.run(recv, len(datagrams), now, now, fd)

    def close(self) -> None:
        for entry in self.entries:
            self.out.close_entry(entry)
        self.sock.close()


def out_round(rng: random.Random, bench: OutBench, now: int, fd: int) -> int:
    """One batch of well-formed, odd and random datagrams, with the entries' playout states shaken."""
    for entry in bench.entries:
        p = entry.c.playout
        for name in ("queued", "paused", "timer_pending", "closed", "has_clear_before", "interrupted"):
            setattr(p, name, 1 if rng.random() < 0.05 else 0)
        p.timeline_ns = now + rng.choice((-300_000_000, -100_000_000, 0, 59_000_000, 61_000_000, 1 << 40))
        p.t0 = now - rng.randrange(1 << 40)
        p.has_next_position = rng.random() < 0.7
        entry.c.stream.mid_acked = rng.random() < 0.5
        entry.c.enabled = rng.random() < 0.9
    datagrams: list[tuple[bytes, bytes, int]] = []
    for _ in range(rng.randint(0, 32)):
        call = rng.randrange(len(bench.entries) + 1)
        head = wire.HEADER.pack(
            2 if rng.random() < 0.95 else 1,
            4 if rng.random() < 0.9 else rng.choice((3, 9)),
            rng.choice((0, 0, 0, 0, 1, 1, 2, 0xFFFF)),
            0x100 + call,
            rng.randrange(1 << 32),
            rng.randrange(1 << 32),
        )
        size = rng.choice((0, 1, 2, 160, 160, 160, 1199, 1200, 1201, 1380, 2000))
        data = (head + rng.randbytes(size))[: rng.choice((5, 20, 21, 5000, 5000, 5000, 5000))]
        if rng.random() < 0.1:
            data = rng.randbytes(rng.randint(0, 64))
        source = bench.names["peer" if rng.random() < 0.85 else rng.choice(("other", "v6"))]
        name_length = len(source) if rng.random() < 0.9 else rng.choice((0, 1, 7, -len(source)))
        datagrams.append((data, source, name_length))
    ages = [rng.choice((0, 0, 1, 70_000_000, 400_000_000)) for _ in datagrams]
    made = bench.run(datagrams, now, fd, ages)[0]
    for entry in bench.entries:
        if entry.held() and rng.random() < 0.05:
            entry.take_held()  # Python took the frames back
    if rng.random() < 0.5:  # the paced frames' wake-up, on time, late or early
        later = now + rng.choice((0, 1, 20_000_000, 60_000_000, 1_000_000_000, -5_000_000))
        made += bench.out.pace(later, later, fd)[0]
    return made


def test_each_frame_s_dwell_counts_from_its_own_arrival_or_its_slot() -> None:
    """``sr_batch_out``: a frame's dwell runs from when it arrived in the host (its kernel stamp), or from
    its slot on the timeline when that is later (a frame that came early waits for it); the batch's time
    for all would hide the wait in the socket."""
    bench = OutBench(calls=2)
    try:
        now = 10**12
        for entry in bench.entries:
            entry.c.playout.timeline_ns = now  # real time: due = now - lead, long before any arrival
        agent = Agent()
        rng = random.Random(3)
        frames = [agent.frame(rng, 0), agent.frame(rng, 1), agent.frame(rng, 0)]
        ages = [3_000_000, 40_000, 0]
        peer = bench.names["peer"]
        done = now + 500_000
        bench.out.set_clock(lambda event: done if event == native.CLOCK_DONE else now)
        histograms = [DwellHistogram(), DwellHistogram()]
        for entry, histogram in zip(bench.entries, histograms, strict=True):
            entry.set_dwell(histogram)
        made, _, finished = bench.run([(f, peer, len(peer)) for f in frames], now, ages=ages)
        assert made == finished == 3
        assert list(bench.out.out_due[:3]) == [now - age for age in ages]
        assert histograms[0].sum_ns == (done - (now - ages[0])) + (done - now)
        assert histograms[1].max_ns == done - (now - ages[1])
        # a frame that arrived before its slot: its dwell starts at the slot (as the Python playout's)
        lead = bench.entries[0].c.playout.lead_ns
        bench.entries[0].c.playout.timeline_ns = now + lead - 1_000
        made, _, _ = bench.run([(agent.frame(rng, 0), peer, len(peer))], now, ages=[2_000_000])
        assert made == 1 and bench.out.out_due[0] == now - 1_000
    finally:
        bench.close()


def test_the_call_id_table_finds_what_was_entered_through_churn() -> None:
    """fastpath.c's call-id table (linear probing, backward-shift deletion) against a dict, in a small
    table so chains collide and it fills up (a full table refuses, the call stays in Python)."""
    out = native.NativeOutbound(4, ids=16)
    entries = [out.open_entry() for _ in range(12)]
    rng = random.Random(5)
    model: dict[int, native.OutboundEntry] = {}
    for _ in range(3000):
        entry = rng.choice(entries)
        if rng.random() < 0.5:
            wire_id = rng.choice((rng.randrange(1, 1 << 64), rng.randrange(1, 40)))
            if model.get(wire_id, entry) is not entry:
                continue  # a wire call id names one call
            before = entry.wire_id
            ok = out.map(entry, wire_id, ("127.0.0.1", 1))
            if before is not None:
                model.pop(before, None)
            if ok:
                model[wire_id] = entry
            else:
                assert len(model) >= 8  # refused only when half the table is used
        else:
            if entry.wire_id is not None:
                model.pop(entry.wire_id, None)
            out.unmap(entry)
        assert out.mapped == len(model)
        for wire_id, mapped in model.items():
            assert out.lib.sr_out_get(out.table, wire_id) == mapped.c
    assert out.lib.sr_out_get(out.table, 0) == out.ffi.NULL


def test_hand_filled_batches_make_datagrams_and_defer_the_rest() -> None:
    """The rounds the sanitizer run uses, on the optimized build: C makes packets for well-formed frames
    and leaves every other datagram (and everything after one it left, per call) to Python."""
    bench = OutBench()
    rng = random.Random(9)
    made = 0
    try:
        for step in range(400):
            made += out_round(rng, bench, 10**12 + step * 20_000_000, -1)
            decisions = bench.out.decisions
            for entry in bench.entries:
                assert 0 <= entry.c.stream.sequence <= 0xFFFF
            assert all(d in (0, 1) for d in decisions[:32])
    finally:
        bench.close()
    assert made > 100


def test_bench_relay_ab_runs_the_python_outbound_path_as_python_out() -> None:
    """``splitrelay bench relay --ab python-out``: the shared port with the outbound C path off."""
    from splitrelay.bench.relay import RelayBenchConfig, parse_ab, variants

    assert parse_ab("python-out,per-datagram") == ("python-out", "per-datagram")
    (variant,) = variants(RelayBenchConfig(ab=("python-out",)))[1]
    assert variant.shared_port and dict(variant.env) == {native.NATIVE_OUT_ENV: "0"}
    with pytest.raises(ValueError, match="python-out compares against"):
        RelayBenchConfig(port_per_call=True, ab=("python-out",))
