"""The per-batch C path (relay/media/native ``NativeInbound``, fastpath.c ``sr_batch_in``) against the
per-datagram path it short-cuts: the same datagrams through a real batched shared port, once with C and
once without, must give the same AUDIO_IN bytes per call in the same order, the same fast-path counters,
RTCP reception reports, call counters and demultiplexer counts, and the same dwell histograms (C observes
into the call's own: on the fake clock each batch's dwell sits either side of a bucket bound). Each datagram
has its own arrival (as a kernel receive stamp gives it), the same in both runs: dwell, RTCP jitter and
barge-in use it on both paths.

Traffic: several calls on their own remote addresses (two calls from one address, told apart by SSRC, at
the ``NativeInbound`` level below), valid packets with RFC 6464 levels, then forged, replayed, truncated,
reordered, padded (and badly padded), new-SSRC, wrong-PT, empty-payload and large datagrams, loss and
sequence jumps, STUN and DTLS from known addresses, and datagrams from an unknown one. Each batch is read
by hand on a fake clock, so both runs see the same batches at the same arrival times. Barge-in: the gate
modes decide which packets C may finish during playback.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from splitrelay.inference import wire
from splitrelay.relay.call import SequenceUnwrapper
from splitrelay.relay.media import native
from splitrelay.relay.media import shared_port as shared_port_module
from splitrelay.relay.media.aiortc_internals import SrtpLink
from splitrelay.relay.media.rtp import RtpPacket, audio_level_element, build_rtp, one_byte_extensions
from splitrelay.relay.media.sdp import StreamParams
from splitrelay.relay.media.shared_port import SharedUdpPort
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath
from splitrelay.relay.native.micro import measure_wakeups
from splitrelay.relay.telemetry import DWELL_BUCKETS_US, DwellHistogram
from tests.native_traffic import sessions

pytestmark = pytest.mark.skipif(not native.available(), reason="native path not built")

PT = 111
LEVEL_ID = 1
INFERENCE = ("127.0.0.1", 9)  # never sent to: the sink records
BATCH_NS = 20_000_000


DWELL_STEPS = (
    0, 4_999, 5_000, 5_999, 6_000, 10_999, 11_000, 74_999, 99_999, 300_999, 301_000, 2_500_000, 150_000_000,
)  # fmt: skip
"""Dwell a batch's packets are given (ns): either side of bucket bounds (floor to microseconds, then the
first bound at or above), so a C bucket off by one from DwellHistogram's fails the comparison."""


ARRIVAL_STEPS = (0, 0, 1, 999, 1_000, 60_000, 249_999, 250_000, 700_000, 3_000_000, -5, 11_000_000_000)
"""How long before its batch was read a datagram arrived (ns): the kernel stamp a fake clock gives it. A
negative one (after the read) and one older than fastpath.c's SR_STAMP_MAX_AGE_NS fall back to the
batch's time."""


class Clock:
    """``time`` for shared_port and the clock C and the port's ``RecvBatch`` read (``c_clock``): ``now`` is
    when the current batch was read; ``ages`` how long before it each of its datagrams arrived (as their
    kernel stamps say: ``CLOCK_RECEIVED``, asked in datagram order after the batch's ``CLOCK_ARRIVAL``);
    ``done`` is when its AUDIO_IN leaves (the end of its dwell)."""

    def __init__(self) -> None:
        self.now = 1_000_000_000_000
        self.done = self.now
        self.ages: list[int] = [0]
        self._next = 0

    def perf_counter_ns(self) -> int:
        return self.now

    def c_clock(self, event: int) -> int:
        if event == native.CLOCK_DONE:
            return self.done
        if event == native.CLOCK_RECEIVED:
            age = self.ages[self._next % len(self.ages)]
            self._next += 1
            return self.now - age
        self._next = 0  # CLOCK_ARRIVAL: a batch was read
        return self.now


@dataclass
class Log:
    """What left for inference, in order, and what reached the calls' ICE protocols."""

    wire: list[bytes] = field(default_factory=list)
    other: list[tuple[str, bytes]] = field(default_factory=list)
    inference: socket.socket | None = None
    """Where C sends AUDIO_IN itself (the "send" runs): read into ``wire`` before anything else is logged,
    so the log keeps the order in which datagrams left (loopback delivers at once)."""

    def add(self, data: bytes) -> None:
        self.pull()
        self.wire.append(data)

    def pull(self) -> None:
        sock = self.inference
        for _ in range(100_000):
            if sock is None:
                return
            try:
                self.wire.append(sock.recv(4096))
            except BlockingIOError:
                return

    def per_call(self) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for data in self.wire:
            out.setdefault(int.from_bytes(data[4:12], "big"), []).append(data)
        return out


class Sink:
    """The inference socket as the C path sees it: every datagram through ``native_send``, in order."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.sent = 0

    def native_fd(self) -> int:
        inference = self.log.inference
        return -1 if inference is None else inference.fileno()

    def native_send(self, data: bytes, peer: tuple[str, int]) -> None:
        assert peer == inference_address(self.log)
        self.log.add(data)

    def native_sent(self, count: int) -> None:
        self.sent += count


class IceProtocol(asyncio.DatagramProtocol):
    def __init__(self, name: str, log: Log) -> None:
        self.name = name
        self.log = log

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.log.other.append((self.name, data))


class MiniCall:
    """relay/call.py ``Call._on_rtp``'s inbound half (counters, timestamp base, unwrapping, flags, framing),
    with the same use of the C slot; the link records instead of sending."""

    def __init__(self, wire_id: int, log: Log, clock: Clock) -> None:
        self.wire_id = wire_id
        self.log = log
        self.clock = clock
        self.dwell = DwellHistogram()
        self.packets_in = self.bytes_in = self.to_inference = 0
        self.seq: SequenceUnwrapper | native.InboundSlot = SequenceUnwrapper()
        self.ts0: int | None = None
        self.slot: native.InboundSlot | None = None
        self.callback_errors = 0

    def attach(self, fp: SrtpFastPath) -> None:
        slot = fp.native_slot
        if slot is None:
            return
        self.slot = self.seq = slot
        slot.set_dwell(self.dwell)
        fp.on_fold = self.fold
        slot.set_playing_until(0)
        slot.set_gate(native.GATE_PYTHON, 40, False)
        slot.enable(self.wire_id, inference_address(self.log))

    def fold(self, packets: int, size: int, to_inference: int) -> None:
        self.packets_in += packets
        self.bytes_in += size
        self.to_inference += to_inference

    def on_rtp(self, pkt: RtpPacket) -> None:
        self.packets_in += 1
        self.bytes_in += len(pkt.payload)
        if self.slot is not None:
            ts0 = self.slot.base(pkt.timestamp)
            self.slot.take_idle()
        else:
            if self.ts0 is None:
                self.ts0 = pkt.timestamp
            ts0 = self.ts0
        level = pkt.audio_level
        flags = wire.audio_in_flags(marker=pkt.marker, level=level, voice=pkt.voice and level is not None)
        seq = self.seq.extend(pkt.sequence) & 0xFFFFFFFF
        data = wire.encode_audio(
            wire.MsgType.AUDIO_IN, self.wire_id, seq, (pkt.timestamp - ts0) & wire.U32, pkt.payload, flags
        )
        self.log.add(data)
        self.to_inference += 1
        if pkt.arrival_ns:  # as Call: the dwell ends when the batch leaves for inference
            self.dwell.observe_ns(self.clock.done - pkt.arrival_ns)


def inference_address(log: Log) -> tuple[str, int]:
    if log.inference is None:
        return INFERENCE
    host, port = log.inference.getsockname()
    return host, port


@dataclass
class Flow:
    """One caller stream: an SRTP sender for one call, from one source socket."""

    call: int
    ssrc: int
    sock: socket.socket
    tx: Any
    seq: int
    ts: int
    sent: list[bytes] = field(default_factory=list)

    def packet(self, payload: bytes, level: int | None = 30, *, pt: int = PT, marker: bool = False) -> bytes:
        ext = (
            one_byte_extensions([(LEVEL_ID, audio_level_element(level, False))]) if level is not None else b""
        )
        plain = build_rtp(pt, self.seq, self.ts, self.ssrc, payload, marker=marker, extension=ext)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 960) & 0xFFFFFFFF
        data: bytes = self.tx.protect(plain)
        self.sent.append(data)
        return data

    def padded(self, payload: bytes, count: int = 3) -> bytes:
        plain = bytearray(build_rtp(PT, self.seq, self.ts, self.ssrc, payload + bytes((0, 0, count))))
        plain[0] |= 0x20
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + 960) & 0xFFFFFFFF
        data: bytes = self.tx.protect(bytes(plain))
        return data


KEYS = [bytes([k]) * 30 for k in range(1, 6)]


def traffic(
    seed: int, flows: list[Flow], stranger: socket.socket
) -> Iterator[list[tuple[socket.socket, bytes]]]:
    """Batches (at most 32 datagrams) of what the callers send, the same for a given seed."""
    rng = random.Random(seed)
    batch: list[tuple[socket.socket, bytes]] = []
    for step in range(400):
        flow = rng.choice(flows)
        roll = rng.random()
        payload = rng.randbytes(rng.choice((1, 2, 3, 40, 80, 160)))
        if roll < 0.70:
            level = rng.choice((10, 30, 60, 127, None))
            data = flow.packet(payload, level, marker=rng.random() < 0.05)
        elif roll < 0.74:
            data = rng.choice(flow.sent) if flow.sent else flow.packet(payload)  # replayed
        elif roll < 0.77:
            data = flow.packet(payload)[: rng.randint(0, 20)]  # truncated
        elif roll < 0.80:
            data = bytes((0x80 | rng.randrange(64),)) + rng.randbytes(rng.randint(11, 60))  # forged
        elif roll < 0.83:
            data = flow.packet(payload, pt=PT + 1)  # a payload type not negotiated
        elif roll < 0.86:
            flow.seq = (flow.seq + rng.choice((2, 5, 4000, 30000))) & 0xFFFF  # loss, a jump
            data = flow.packet(payload)
        elif roll < 0.88:
            first = flow.packet(payload)
            second = flow.packet(payload)
            batch.append((flow.sock, second))  # reordered
            data = first
        elif roll < 0.90:
            data = flow.padded(payload, rng.choice((3, 3, 0)))  # 0: malformed padding
        elif roll < 0.91:
            data = flow.packet(b"")  # an empty payload: AUDIO_IN refuses it (the call's callback raises)
        elif roll < 0.92:
            data = flow.packet(rng.randbytes(1300))  # near the SRTP buffer
        elif roll < 0.94:
            data = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + rng.randbytes(12)  # STUN-ish: the call's ICE
        elif roll < 0.96:
            data = bytes((22, 254, 253)) + rng.randbytes(20)  # DTLS
        elif roll < 0.98:
            batch.append((stranger, flow.packet(payload)))  # an unknown address
            continue
        else:
            old, flow.ssrc = flow.ssrc, rng.randrange(1, 1 << 32)  # the caller restarted its stream
            data = flow.packet(payload)
            if rng.random() < 0.5:
                flow.ssrc = old
        batch.append((flow.sock, data))
        if len(batch) >= rng.randint(1, 31) or step == 399:
            yield batch
            batch = []


@asynccontextmanager
async def relay_side(
    batch: bool, log: Log, clock: Clock, calls: int, recv_batch: int = shared_port_module.RECV_BATCH
) -> AsyncIterator[tuple[SharedUdpPort, list[SrtpFastPath], list[MiniCall], list[Any]]]:
    port = await SharedUdpPort.open("127.0.0.1", 0, batched=True)
    loop = asyncio.get_running_loop()
    assert port._sock is not None and port._reader is not None
    loop.remove_reader(port._sock.fileno())  # read by hand, one batch at a time
    assert port._reader._recv is not None and port._reader._recv.stamps  # kernel stamps on by default
    if recv_batch != port._reader.batch:  # smaller batches: several per wake-up
        port._reader.batch = recv_batch
        port._reader._recv = native.RecvBatch(port._sock.fileno(), recv_batch, timed=True, stamps=True)
    port._reader._recv.set_clock(clock.c_clock)  # both runs: the same arrival per datagram
    if batch:
        assert port.forward_inbound(Sink(log))
        assert port.forwarding is not None
        port.forwarding.inbound.set_clock(clock.c_clock)
    fps, minis, protocols = [], [], []
    for index in range(calls):
        protocol = IceProtocol(f"call{index}", log)
        ufrag = port.mint_ufrag(f"c{index}")
        transport = port.attach(ufrag, "pw" * 12, protocol, "127.0.0.1")
        rx, tx = sessions(KEYS[index])
        mini = MiniCall(0x1000 + index, log, clock)
        stream = StreamParams("0", PT, 48000, 1, 0x5000 + index, "relay", (), LEVEL_ID, None, True, True)
        link = SrtpLink(protocol, transport, ("127.0.0.1", 1), rx, tx, None)
        fp = SrtpFastPath(link, [stream], mini.on_rtp, FastPathConfig(bye_on_close=False, rtcp_interval=60))
        mini.attach(fp)
        fps.append(fp)
        minis.append(mini)
        protocols.append(port.demux._calls[ufrag])
    try:
        yield port, fps, minis, protocols
    finally:
        for fp in fps:
            await fp.close()
        await port.close()


PATHS = ("python", "per-batch", "drain", "drain-send")
"""How the port is read: the Python path (the reference); one C call per batch
(``SPLITRELAY_NATIVE_DRAIN=0``); one per wake-up (``Drain``) with every AUDIO_IN handed back to Python (the
socket "held data"); and one per wake-up with C sending AUDIO_IN itself, so C reads, runs and sends batch
after batch."""


async def run(path: str, seed: int, group: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The seeded traffic through a port read by ``path``, ``group`` chunks per wake-up (then in batches
    of 4, up to 16 per wake-up: C drains several batches in one call where nothing stops it)."""
    log, clock = Log(), Clock()
    monkeypatch.setattr(shared_port_module, "time", clock)
    monkeypatch.setenv(native.NATIVE_DRAIN_ENV, "0" if path == "per-batch" else "1")
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    if path == "drain-send":
        log.inference = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        log.inference.bind(("127.0.0.1", 0))
        log.inference.setblocking(False)
    try:
        recv_batch = 4 if group > 1 else shared_port_module.RECV_BATCH
        async with relay_side(path != "python", log, clock, 4, recv_batch) as (port, fps, minis, demux_calls):
            for call, sock in zip(demux_calls, sockets, strict=False):
                port.demux._learn(call, sock.getsockname())  # as an authenticated STUN check would
            flows = [Flow(i, 0x100 + i, sockets[i], sessions(KEYS[i])[1], 1000 * i, 7 * i) for i in range(4)]
            reader = port._reader
            assert reader is not None
            reader.calls_per_turn = 16 if group > 1 else 1
            forwarding = port.forwarding
            assert (forwarding is not None and forwarding.drain is not None) == path.startswith("drain")
            dwell = random.Random(seed)
            chunks = list(traffic(seed, flows, sockets[4]))
            for start in range(0, len(chunks), group):
                clock.now += BATCH_NS
                clock.done = clock.now + dwell.choice(DWELL_STEPS)
                clock.ages = [dwell.choice(ARRIVAL_STEPS) for _ in range(7)]
                for chunk in chunks[start : start + group]:
                    for sock, data in chunk:
                        sock.sendto(data, port.address)
                reader.drain()
                log.pull()
            stats = port.demux.stats()
            out = {
                "wire": log.per_call(),
                "other": log.other,
                "fast_paths": [fp.stats() for fp in fps],
                "calls": [(m.packets_in, m.bytes_in, m.to_inference) for m in minis],
                "dwell": [(m.dwell.counts(), m.dwell.count, m.dwell.sum_ns, m.dwell.max_ns) for m in minis],
                "reports": [
                    sorted(s.report_block(ssrc, clock.now) for ssrc, s in fp._inbound.items()) for fp in fps
                ],
                "demux": (stats.datagrams_in, stats.routed_by_flow, stats.unknown, stats.malformed),
                "reader": (reader.datagrams, reader.oversize, reader.errors),
                "finished": port.forwarding.finished if port.forwarding else 0,
                "batches": port.forwarding.batches if port.forwarding else 0,
                "receive_calls": reader.calls,
            }
    finally:
        for sock in sockets:
            sock.close()
        if log.inference is not None:
            log.inference.close()
    return out


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_the_batch_path_gives_what_the_per_datagram_path_gives(
    seed: int, group: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per batch, per wake-up, and per wake-up sending itself, C gives what the Python path gives."""
    reference = await run("python", seed, group, monkeypatch)
    assert reference["finished"] == 0
    per_batch = None
    for path in PATHS[1:]:
        batched = await run(path, seed, group, monkeypatch)
        assert batched["finished"] > 100, "C finished too few datagrams to compare anything"
        past_first = sum(count for m in batched["dwell"] for count in m[0][1:])
        assert past_first > 100, "too few dwells past the first bucket to compare"
        for key in ("wire", "other", "fast_paths", "calls", "reports", "demux", "dwell", "reader"):
            assert batched[key] == reference[key], (path, key)
        if per_batch is None:
            per_batch = batched
        else:  # the same batches, and no more receive calls than Python made per batch
            assert (batched["finished"], batched["batches"]) == (per_batch["finished"], per_batch["batches"])
            assert batched["receive_calls"] == per_batch["receive_calls"], path


# --- NativeInbound alone: two calls behind one address, the barge-in gate, order ------------------------


class Bench:
    """One NativeInbound over a socket, two calls whose callers share one source address."""

    def __init__(self) -> None:
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.rx.setblocking(False)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind(("127.0.0.1", 0))
        self.recv = native.RecvBatch(self.rx.fileno(), 32, timed=True)
        self.inbound = native.NativeInbound(32, calls=4, flows=64)
        self.keep: list[Any] = []
        self.slots = []
        self.senders = []
        for index in range(2):
            rx, tx = sessions(KEYS[index])
            codec = native.codec(rx, tx)
            assert isinstance(codec, native.NativeCodec)
            slot = self.inbound.open_slot()
            assert slot is not None
            slot.configure(codec.rx_pointer, [PT], LEVEL_ID)
            stats = slot.reception_stats(48000, 0)
            slot.hint(self.tx.getsockname(), 0x700 + index, stats)
            slot.enable(0xA0 + index, INFERENCE)
            slot.set_playing_until(0)
            self.keep += [rx, tx, codec, stats]
            self.slots.append(slot)
            self.senders.append(Flow(index, 0x700 + index, self.tx, tx, 0, 0))

    def run(self, datagrams: list[bytes], arrival: int | list[int] = 10**12) -> tuple[list[int], list[bytes]]:
        """The datagrams as one batch, arriving at ``arrival`` (one time, or one per datagram)."""
        for data in datagrams:
            self.tx.sendto(data, self.rx.getsockname())
        n = self.recv.receive()
        assert n == len(datagrams)
        arrivals = [arrival] * n if isinstance(arrival, int) else arrival
        for i, at in enumerate(arrivals):
            self.recv.arrivals[i] = at
        nout, sent, finished = self.inbound.run(self.recv, n, -1)
        assert sent == 0 and finished == sum(1 for d in self.inbound.decisions[:n] if d == 0)
        return list(self.inbound.decisions[:n]), [self.inbound.out(k) for k in range(nout)]

    def close(self) -> None:
        for slot in self.slots:
            slot.close()
        self.rx.close()
        self.tx.close()


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    yield b
    b.close()


def call_of(data: bytes) -> int:
    return int.from_bytes(data[4:12], "big")


def test_two_calls_behind_one_address_are_told_apart_by_ssrc(bench: Bench) -> None:
    a, b = bench.senders
    decisions, out = bench.run([a.packet(b"a1"), b.packet(b"b1"), a.packet(b"a2"), b.packet(b"b2")])
    assert decisions == [0, 0, 0, 0]
    assert [call_of(d) for d in out] == [0xA0, 0xA1, 0xA0, 0xA1]
    assert [d[20:] for d in out] == [b"a1", b"b1", b"a2", b"b2"]
    assert bench.inbound.flows == 2


def test_once_a_datagram_of_an_address_goes_to_python_the_rest_of_the_batch_does(bench: Bench) -> None:
    a, b = bench.senders
    forged = bytes((0x80, PT)) + b"\x00" * 6 + (0x700).to_bytes(4, "big") + b"x" * 30
    unknown_ssrc = Flow(0, 0x999, bench.tx, a.tx, 50, 0).packet(b"n")
    decisions, out = bench.run([a.packet(b"a1"), forged, b.packet(b"b1"), a.packet(b"a2")])
    assert decisions == [0, 1, 1, 1]  # same address: call b's packet waits behind the forged one too
    assert [d[20:] for d in out] == [b"a1"]
    decisions, _ = bench.run([unknown_ssrc, a.packet(b"a3")])
    assert decisions == [1, 1]


def test_wrong_payload_type_padding_and_disabled_calls_go_to_python(bench: Bench) -> None:
    a, b = bench.senders
    bench.slots[1].disable()
    decisions, _ = bench.run([a.packet(b"p", pt=PT + 1)])
    assert decisions == [1]
    decisions, _ = bench.run([a.padded(b"p")])
    assert decisions == [1]
    decisions, out = bench.run([b.packet(b"b")])
    assert decisions == [1] and out == []


@pytest.mark.parametrize(
    ("mode", "level", "finished"),
    [
        (native.GATE_PYTHON, 80, False),
        (native.GATE_PYTHON, 10, False),
        (native.GATE_SILENT, 80, True),  # silence by level: the gate stays as it is
        (native.GATE_SILENT, 10, False),  # speech: could raise a barge-in, Python decides
        (native.GATE_TALKING, 10, True),
        (native.GATE_TALKING, 80, False),
        (native.GATE_SILENT, None, False),  # no level: only a decode can tell
    ],
)
def test_during_playback_only_packets_that_leave_the_gate_as_it_is_stay_in_c(
    bench: Bench, mode: int, level: int | None, finished: bool
) -> None:
    a, _ = bench.senders
    slot = bench.slots[0]
    slot.set_gate(mode, native.threshold_level(-40.0), False)
    slot.set_playing_until(native.PLAYING_ALWAYS)
    decisions, _ = bench.run([a.packet(b"x", level)])
    assert decisions == [0 if finished else 1]
    assert not slot.take_idle()
    slot.set_playing_until(10**12)  # playback ended before this arrival: C takes it, and says so
    decisions, _ = bench.run([a.packet(b"y", level)], arrival=10**12)
    assert decisions == [0]
    assert slot.take_idle() and bench.slots[0].c.gate_mode == native.GATE_PYTHON


def test_each_datagram_s_own_arrival_decides_whether_playback_was_on(bench: Bench) -> None:
    """Barge-in asks whether playback was on when the packet arrived: per datagram, not per batch (a packet
    that waited in the socket while the reply started still arrived before it)."""
    a, _ = bench.senders
    slot = bench.slots[0]
    slot.set_gate(native.GATE_PYTHON, native.threshold_level(-40.0), False)
    slot.set_playing_until(10**12)
    decisions, out = bench.run([a.packet(b"1"), a.packet(b"2")], arrival=[10**12, 10**12 - 1])
    assert decisions == [0, 1]  # the first arrived after playback: C; the second during it: Python decides
    assert [d[20:] for d in out] == [b"1"]


def test_c_observes_each_datagram_s_dwell_from_its_own_arrival(bench: Bench) -> None:
    """Dwell runs from each datagram's arrival (its kernel stamp) until the batch left, and the RFC 3550
    jitter takes the same arrival: the batch's time for all of them would hide the wait in the socket."""
    from splitrelay.relay.media.rtcp import NativeReceptionStats, ReceptionStats

    a, _ = bench.senders
    histogram = DwellHistogram()
    bench.slots[0].set_dwell(histogram)
    done = 10**12 + 1_000_000
    bench.inbound.set_clock(lambda event: done if event == native.CLOCK_DONE else 10**12)
    arrivals = [10**12 - 400_000, 10**12 - 20_000, 10**12]
    first_seq = a.seq
    packets = [a.packet(b"x"), a.packet(b"y"), a.packet(b"z")]
    decisions, _ = bench.run(packets, arrival=arrivals)
    assert decisions == [0, 0, 0]
    reference = DwellHistogram()
    for at in arrivals:
        reference.observe_ns(done - at)
    assert (histogram.counts(), histogram.sum_ns, histogram.max_ns) == (
        reference.counts(),
        reference.sum_ns,
        reference.max_ns,
    )
    stats = ReceptionStats(48000, first_seq)
    for k, at in enumerate(arrivals):
        stats.update((first_seq + k) & 0xFFFF, 960 * k, at)
    flow = bench.inbound.lib.sr_flow_slot  # the call's stats: the struct the slot's flow points at
    assert flow(bench.inbound.table, native.flow_key(bench.tx.getsockname()), a.ssrc) == 0
    ours = NativeReceptionStats(bench.keep[3], native.rx_update())
    assert (ours.jitter, ours.last_transit) == (stats.jitter, stats.last_transit)


def test_the_kernel_stamp_is_each_datagram_s_arrival() -> None:
    """With ``rx_timestamps`` on a socket, ``RecvBatch`` gives each datagram the time it entered the host,
    on ``perf_counter_ns``'s clock: a datagram that waited in the socket shows its wait. Off, every
    datagram gets the batch's time."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        plain = native.RecvBatch(rx.fileno(), 8, timed=True)
        tx.sendto(b"unstamped", rx.getsockname())
        time.sleep(0.01)
        assert plain.receive() == 1 and plain.arrivals[0] == plain.batch_ns
        assert native.rx_timestamps(rx.fileno())
        stamped = native.RecvBatch(rx.fileno(), 8, timed=True, stamps=True)
        time.sleep(0.05)  # the kernel turns its receive timestamps on in the background
        sent = time.perf_counter_ns()
        tx.sendto(b"first", rx.getsockname())
        time.sleep(0.03)
        tx.sendto(b"second", rx.getsockname())
        time.sleep(0.001)
        assert stamped.receive() == 2
        read = time.perf_counter_ns()
        first, second, batch = stamped.arrivals[0], stamped.arrivals[1], stamped.batch_ns
        assert sent - 1_000_000 <= first <= sent + 5_000_000  # when it was sent, not when it was read
        assert first + 25_000_000 <= second <= batch <= read
        assert batch - first >= 30_000_000
    finally:
        rx.close()
        tx.close()


def test_stamps_become_arrivals_on_the_dwell_clock_within_bounds() -> None:
    """fastpath.c ``sr_arrivals``: a CLOCK_REALTIME stamp moves to CLOCK_MONOTONIC by one offset per batch;
    no stamp, a stamp after the batch was read, or one more than 10 s old (a clock step) give the batch's
    time; a fake clock answers ``CLOCK_RECEIVED`` per stamped datagram instead, under the same bounds."""
    assert native.available()
    ffi, lib = native._native.ffi, native._native.lib
    real = time.time_ns()
    stamps = ffi.new(
        "int64_t[]", [real - 5_000_000, 0, real + 1_000_000_000, real - 20_000_000_000, real - 1]
    )
    arrivals = ffi.new("int64_t[]", 5)
    before = time.perf_counter_ns()
    batch = lib.sr_arrivals(ffi.NULL, stamps, 5, arrivals)
    assert before <= batch <= time.perf_counter_ns()
    assert 5_000_000 <= batch - arrivals[0] <= 5_000_000 + (batch - before) + 1_000_000
    assert list(arrivals)[1:4] == [batch, batch, batch]
    assert 0 <= batch - arrivals[4] <= 1_000_000 + (batch - before)
    answers = iter([999, 1_001, 500, 1_000, 1])
    fake = ffi.callback(
        "int64_t(int32_t)", lambda event: 1_000 if event == native.CLOCK_ARRIVAL else next(answers)
    )
    assert lib.sr_arrivals(fake, stamps, 5, arrivals) == 1_000
    # stamped: 0 (999), 2 (1_001: after the batch), 3 (500), 4 (1_000); 1 has no stamp
    assert list(arrivals) == [999, 1_000, 1_000, 500, 1_000]
    lib.sr_arrivals(fake, ffi.NULL, 5, arrivals)
    assert list(arrivals) == [1_000] * 5


def test_a_drained_batch_counts_the_wait_in_the_socket() -> None:
    """The drain (one C call per wake-up) with kernel stamps: a packet that waited 30 ms in the socket has a
    dwell of at least 30 ms; the batch's time would say microseconds."""
    rx, tx, sink = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    keep: list[Any] = []
    try:
        for sock in (rx, tx, sink):
            sock.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        sink.setblocking(False)
        assert native.rx_timestamps(rx.fileno())
        recv = native.RecvBatch(rx.fileno(), 8, timed=True, stamps=True)
        inbound = native.NativeInbound(8, calls=2, flows=16)
        rx_session, tx_session = sessions(KEYS[0])
        codec = native.codec(rx_session, tx_session)
        assert isinstance(codec, native.NativeCodec)
        slot = inbound.open_slot()
        assert slot is not None
        slot.configure(codec.rx_pointer, [PT], LEVEL_ID)
        stats = slot.reception_stats(48000, 0)
        slot.hint(tx.getsockname(), 0x700, stats)
        slot.enable(0xA0, sink.getsockname())
        slot.set_playing_until(0)
        histogram = DwellHistogram()
        slot.set_dwell(histogram)
        keep += [rx_session, tx_session, codec, stats]
        drain = inbound.drain_for(recv)
        flow = Flow(0, 0x700, tx, sessions(KEYS[0])[1], 0, 0)
        time.sleep(0.05)  # the kernel turns its receive timestamps on in the background
        tx.sendto(flow.packet(b"waited"), rx.getsockname())
        time.sleep(0.03)
        assert drain.run(1, sink.fileno()) == native.DRAIN_DONE
        assert drain.state.finished == 1 and sink.recv(4096)[20:] == b"waited"
        assert histogram.count == 1 and histogram.max_ns >= 30_000_000
        assert drain.state.arrival_ns - recv.arrivals[0] >= 30_000_000
    finally:
        for sock in (rx, tx, sink):
            sock.close()


def test_the_wire_type_is_audio_in() -> None:
    assert native.WIRE_AUDIO_IN == int(wire.MsgType.AUDIO_IN)
    assert native.WIRE_OUT_SLOT == wire.HEADER_SIZE + wire.MAX_PAYLOAD


def test_closing_a_slot_forgets_its_flows_and_keeps_the_others(bench: Bench) -> None:
    a, b = bench.senders
    bench.slots[0].close()
    assert bench.inbound.flows == 1
    decisions, out = bench.run([a.packet(b"a"), b.packet(b"b")])
    assert decisions == [1, 1]  # a: unknown flow now; b: same address as a, after it
    decisions, out = bench.run([b.packet(b"b2")])
    assert decisions == [0] and call_of(out[0]) == 0xA1


@pytest.mark.parametrize("seed", range(6))
def test_reception_statistics_in_c_are_the_reference_s(seed: int) -> None:
    """RFC 3550 A.1/A.3/A.8 in C (``NativeReceptionStats``) against ``ReceptionStats``, report by report."""
    from splitrelay.relay.media.rtcp import NativeReceptionStats, ReceptionStats

    rng = random.Random(seed)
    inbound = native.NativeInbound(1, calls=1, flows=16)
    slot = inbound.open_slot()
    assert slot is not None
    first = rng.randrange(65536)
    reference = ReceptionStats(48000, first)
    ours = NativeReceptionStats(slot.reception_stats(48000, first), native.rx_update())
    seq, ts, now = first, rng.randrange(1 << 32), rng.randrange(1 << 50)
    for step in range(3000):
        roll = rng.random()
        seq = (seq + (1 if roll < 0.8 else rng.choice((0, -1, -5, 2, 50, 3000, 40000, 65000)))) & 0xFFFF
        ts = (ts + 960 + rng.randint(-200, 200)) & 0xFFFFFFFF
        now += rng.randint(0, 40_000_000)
        assert ours.update(seq, ts, now) == reference.update(seq, ts, now)
        if step % 97 == 0:
            assert ours.report_block(1, now) == reference.report_block(1, now)
            assert ours.jitter == reference.jitter and ours.last_transit == reference.last_transit
    assert (ours.lost, ours.expected, ours.received, ours.jitter_ms) == (
        reference.lost,
        reference.expected,
        reference.received,
        reference.jitter_ms,
    )


def test_sequence_unwrapping_in_the_slot_is_the_calls() -> None:
    rng = random.Random(5)
    inbound = native.NativeInbound(1, calls=1, flows=16)
    slot = inbound.open_slot()
    assert slot is not None
    reference = SequenceUnwrapper()
    seq = rng.randrange(65536)
    for _ in range(5000):
        seq = (seq + rng.choice((1, 1, 1, 2, -1, -3, 700, 30000, 40000))) & 0xFFFF
        assert slot.extend(seq) == reference.extend(seq)
    assert slot.base(123) == 123 and slot.base(456) == 123 and slot.ts0 == 123


def flow_table_round(rng: random.Random, inbound: native.NativeInbound, slots: int) -> int:
    """Fill a small table with random flows of several slots, drop one slot: every other flow is still
    found (linear probing's backward-shift deletion keeps the chains), the dropped ones are not."""
    ffi, lib = inbound.ffi, inbound.lib
    entries: dict[tuple[bytes, int], int] = {}
    for _ in range(rng.randint(1, int(inbound.table.capacity) // 2)):
        key = bytes((4,)) + rng.randbytes(2) + rng.choice((b"\x7f\x00\x00\x01", rng.randbytes(4))) + bytes(12)
        ssrc, slot = rng.randrange(1 << 32), rng.randrange(slots)
        if lib.sr_flow_set(inbound.table, key, ssrc, slot, ffi.NULL) == 0:
            entries[key, ssrc] = slot
    gone = rng.randrange(slots)
    removed = lib.sr_flow_drop_slot(inbound.table, gone)
    assert removed == sum(1 for s in entries.values() if s == gone)
    for (key, ssrc), slot in entries.items():
        assert lib.sr_flow_slot(inbound.table, key, ssrc) == (-1 if slot == gone else slot)
    for other in range(slots):
        lib.sr_flow_drop_slot(inbound.table, other)
    assert inbound.flows == 0
    return len(entries)


def test_the_flow_table_keeps_every_flow_when_a_call_leaves() -> None:
    rng = random.Random(9)
    inbound = native.NativeInbound(1, calls=5, flows=64)
    assert sum(flow_table_round(rng, inbound, 5) for _ in range(300)) > 3000


# --- the dwell histograms C observes into (relay/telemetry.py DwellHistogram's state) ----------------


def dwell_values(seed: int) -> list[int]:
    """Dwells either side of every bucket bound (floor to microseconds), and random ones, some negative."""
    rng = random.Random(seed)
    steps = (-1001, -1000, -1, 0, 1, 999, 1000, 1001)
    edges = [bound * 1000 + d for bound in DWELL_BUCKETS_US for d in steps]
    return edges + [rng.randrange(-2_000_000, 300_000_000) for _ in range(3000)] + [0, -1, 1 << 40]


def figures(h: DwellHistogram) -> tuple[list[int], int, int, int, float | None, float | None]:
    return h.counts(), h.count, h.sum_ns, h.max_ns, h.quantile_ms(0.5), h.quantile_ms(0.99)


def test_c_buckets_dwell_by_the_same_bounds_as_dwell_histogram() -> None:
    """fastpath.c ``sr_dwell_bounds_us`` is ``DWELL_BUCKETS_US``: the bounds C's bucketing implies, read
    microsecond by microsecond, are the Python table's (finer between 200 us and 2 ms, where p99 sits)."""
    assert native.available()
    bucket = native._native.lib.sr_dwell_bucket
    implied = [us for us in range(DWELL_BUCKETS_US[-1] + 1) if bucket((us + 1) * 1000) > bucket(us * 1000)]
    assert tuple(implied) == DWELL_BUCKETS_US
    assert bucket(10**15) == len(DWELL_BUCKETS_US)
    assert {250, 400, 600, 1_500} <= set(DWELL_BUCKETS_US)


def test_c_observes_dwell_into_the_buckets_dwell_histogram_does() -> None:
    reference, in_c = DwellHistogram(), DwellHistogram()
    state = native.dwell_state(in_c)
    lib = native._native.lib
    for ns in dwell_values(7):
        reference.observe_ns(ns)
        lib.sr_dwell_observe(state, ns)
        assert lib.sr_dwell_bucket(ns) == bisect.bisect_left(DWELL_BUCKETS_US, ns // 1000), ns
    assert len(state.counts) == len(DWELL_BUCKETS_US) + 1
    assert figures(in_c) == figures(reference)
    assert in_c.buckets() == reference.buckets()


def test_a_histogram_keeps_one_copy_when_c_takes_it_over() -> None:
    """What was observed before moves into the C state; Python and C then observe into the same figures,
    and the histogram merges and reads as before."""
    values = dwell_values(8)
    reference, shared = DwellHistogram(), DwellHistogram()
    for ns in values[:100]:
        reference.observe_ns(ns)
        shared.observe_ns(ns)
    state = native.dwell_state(shared)
    assert native.dwell_state(shared) is state  # adopted once
    lib = native._native.lib
    for k, ns in enumerate(values[100:]):
        reference.observe_ns(ns)
        if k % 2:
            shared.observe_ns(ns)  # the Python path of a call C also serves
        else:
            lib.sr_dwell_observe(state, ns)
    assert figures(shared) == figures(reference)
    total, expected = DwellHistogram(), DwellHistogram()
    total.merge(shared)
    expected.merge(reference)
    assert figures(total) == figures(expected)


def test_the_slot_and_the_entry_point_c_at_the_call_histogram_until_they_go() -> None:
    inbound = native.NativeInbound(4, calls=2, flows=16)
    slot = inbound.open_slot()
    assert slot is not None
    histogram = DwellHistogram()
    slot.set_dwell(histogram)  # what relay/call.py hands over
    assert slot.c.dwell == native.dwell_state(histogram)
    inbound.release(slot)
    assert slot.c.dwell == native._native.ffi.NULL
    outbound = native.NativeOutbound(4)
    entry = outbound.open_entry()
    entry.set_dwell(histogram)
    assert entry.c.dwell == native.dwell_state(histogram)
    outbound.close_entry(entry)
    assert entry.c.dwell == native._native.ffi.NULL and entry._dwell is None


def test_the_wakeup_micro_benchmark_runs_both_ways() -> None:
    """``python -m splitrelay.relay.native.micro --wakeups`` (it checks C finished every packet itself)."""
    assert measure_wakeups(True, 20) > 0
    assert measure_wakeups(False, 20) > 0
    assert measure_wakeups(True, 20, stamps=True) > 0
