"""The bench's cheap load side: the shared socket's echo log and its settling, and the batched echo
inference, each against the per-datagram reference it replaces (scripts/bench/load.py, servers.py)."""

from __future__ import annotations

import array
import socket
import time
from typing import Any

import numpy as np
import pylibsrtp
import pytest

from splitrelay.bench import load as bench_load
from splitrelay.bench.load import EchoCounter, EchoMatcher, EchoTap, Schedule, settle_shared
from splitrelay.bench.servers import (
    BatchEcho,
    BurstHold,
    LiveCalls,
    audio_out_from_audio_in,
    first_response_frames,
)
from splitrelay.inference import wire
from splitrelay.relay.media import native
from splitrelay.relay.media.rtp import build_rtp, one_byte_extensions

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native extension: {native.status()}")

FRAMES = [(bytes([i]) * (50 + i), 60) for i in range(bench_load.FRAMES)]
MS = 1_000_000


def _session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    direction = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
    return pylibsrtp.Session(pylibsrtp.Policy(key, direction))


class _Caller:
    """What settle_shared and the tap use of a Caller: its relay SSRC, matcher, counter and counts."""

    def __init__(self, n: int) -> None:
        self.remote_ssrcs = (0x5000 + n,)
        self.relay_tx = _session(bytes([n + 1]) * 30, outbound=True)  # each call its own keys
        self.rtts: array.array[int] = array.array("q")
        self.matcher = EchoMatcher(self.rtts)
        self.echoes = EchoCounter(FRAMES, 10, self.matcher, _session(bytes([n + 1]) * 30, False).unprotect)
        self.sent = self.sent_window = self.send_failures = 0
        self.rtcp_seen: list[bytes] = []
        self.seq = 1000 * n

    def rtcp(self, data: bytes) -> None:
        self.rtcp_seen.append(data)

    def echo(self, k: int) -> bytes:
        """What the relay sends back for this caller's frame k: its own SSRC, sequence and MID extension."""
        self.seq += 1
        mid = one_byte_extensions([(4, b"0")])
        payload = FRAMES[k % bench_load.FRAMES][0]
        return self.relay_tx.protect(
            build_rtp(111, self.seq, 960 * k, self.remote_ssrcs[0], payload, extension=mid)
        )


@pytest.fixture
def sockets() -> Any:
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    load = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (relay, load):
        sock.bind(("127.0.0.1", 0))
    load.setblocking(False)
    yield relay, load
    relay.close()
    load.close()


def test_the_tap_logs_echoes_by_caller_and_settling_matches_them_as_live(sockets: Any) -> None:
    """Callers attach in any order: the log names each by its schedule index, so every echo is matched
    against its own caller's send times (round trip per slot), loss is found, the samples are unprotected
    with that caller's keys, and what is not an echo goes on to the demultiplexer in arrival order."""
    relay, load = sockets
    target = load.getsockname()
    callers = [_Caller(n) for n in range(3)]
    delivered: list[tuple[bytes, Any]] = []
    ticks = 20
    tap = EchoTap(load.fileno(), lambda data, addr: delivered.append((data, addr)), capacity=1000)
    for i in (2, 0, 1):  # set-ups finish out of order
        tap.add(i, callers[i])  # type: ignore[arg-type]
    schedule = Schedule(3, warmup=0.0, duration=ticks * bench_load.FRAME_S)
    slots = [schedule.slot_of(i) for i in range(3)]
    assert slots == [0, 6, 13]
    slot_ns = np.zeros((ticks, bench_load.SLOTS), dtype=np.int64)
    for k in range(ticks):
        slot_ns[k, :] = k * 20 * MS + np.arange(bench_load.SLOTS) * MS
    stun = b"\x00\x01\x00\x00" + bytes(16)
    stranger = _Caller(9).echo(0)  # an SSRC no caller knows
    for k in range(ticks):
        if k == 3:
            relay.sendto(stun, target)
            relay.sendto(stranger, target)
        for i, caller in enumerate(callers):
            echo = caller.echo(k)
            if k == 0 and i == 0:  # the first echo logged is a sample: a flipped bit fails it
                echo = echo[:30] + bytes([echo[30] ^ 1]) + echo[31:]
            if (k, i) == (5, 1):
                continue  # lost on the way
            relay.sendto(echo, target)
        tap.clock = lambda k=k: k * 20 * MS + 19 * MS  # type: ignore[misc]
        tap.drain()
    assert tap.logged == 3 * ticks - 1 and tap.overflow == 0
    assert [data for data, _ in delivered] == [stun, stranger]
    assert delivered[0][1] == relay.getsockname()

    settle_shared(callers, tap, schedule, slot_ns, {})
    for i, caller in enumerate(callers):
        assert (caller.sent, caller.sent_window, caller.send_failures) == (ticks, ticks, 0)
        assert set(caller.rtts) == {(19 - slots[i]) * MS}  # its own slot's send times, not another's
    assert [c.matcher.received_window for c in callers] == [ticks, ticks - 1, ticks]
    assert [c.matcher.lost for c in callers] == [0, 1, 0]
    assert sum(c.echoes.echoes for c in callers) == tap.logged
    samples = [(c.echoes.samples, c.echoes.authentic, c.echoes.matched) for c in callers]
    assert sum(s[0] for s in samples) == len(range(0, tap.logged, bench_load.SAMPLE_EVERY)) == 2
    assert samples[0][0] >= 1 and sum(s[1] for s in samples) == 1  # the flipped one failed
    assert sum(s[2] for s in samples) == 1


def test_the_tap_routes_rtcp_to_its_caller_and_stops_logging_after_the_drain(sockets: Any) -> None:
    relay, load = sockets
    caller = _Caller(0)
    tap = EchoTap(load.fileno(), lambda data, addr: None, capacity=10)
    tap.add(0, caller)  # type: ignore[arg-type]
    report = caller.relay_tx.protect_rtcp(
        bytes([0x80, 201, 0, 1]) + caller.remote_ssrcs[0].to_bytes(4, "big")
    )
    relay.sendto(report, load.getsockname())
    tap.drain()
    assert caller.rtcp_seen == [report] and tap.rtcp == 1
    tap.counting = False
    relay.sendto(caller.echo(0), load.getsockname())
    tap.drain()
    assert tap.logged == 0


def test_a_caller_whose_transport_closed_counts_what_it_did_not_send(sockets: Any) -> None:
    _, load = sockets
    caller = _Caller(0)
    tap = EchoTap(load.fileno(), lambda data, addr: None, capacity=10)
    tap.add(0, caller)  # type: ignore[arg-type]
    schedule = Schedule(1, warmup=0.04, duration=0.16)  # 10 frames, the window from frame 2
    slot_ns = np.arange(10, dtype=np.int64).reshape(10, 1) * np.ones((1, bench_load.SLOTS), dtype=np.int64)
    settle_shared([caller], tap, schedule, slot_ns, {0: 6})
    assert (caller.sent, caller.sent_window, caller.send_failures) == (6, 4, 4)
    assert caller.matcher.received_window == 0


# --- the batched echo inference ------------------------------------------------------------------------


def test_batch_echo_answers_as_the_per_datagram_reference(sockets: Any) -> None:
    """Each AUDIO_IN of a live call comes back as exactly ``audio_out_from_audio_in`` makes it, in order;
    everything else (another call, control, a short datagram) reaches the SDK's path unchanged, in order."""
    relay, echo_sock = sockets
    relay.settimeout(2)
    peer = relay.getsockname()
    delivered: list[tuple[bytes, Any]] = []
    echo = BatchEcho(
        echo_sock, LiveCalls({(peer, 7)}), lambda d, a: delivered.append((d, a)), lambda: True, batch=8
    )
    sent: list[bytes] = []
    others: list[bytes] = []
    for seq in range(20):
        level = None if seq % 3 else seq
        flags = wire.audio_in_flags(
            marker=seq % 5 == 0, level=level, voice=level is not None and seq % 2 == 0
        )
        audio = wire.encode_audio(wire.MsgType.AUDIO_IN, 7, seq, 960 * seq, bytes([seq]) * (40 + seq), flags)
        relay.sendto(audio, echo_sock.getsockname())
        sent.append(audio)
        if seq % 6 == 1:
            other = wire.encode_audio(wire.MsgType.AUDIO_IN, 8, seq, 0, b"x", 0)  # a call not live here
            relay.sendto(other, echo_sock.getsockname())
            others.append(other)
        if seq == 10:
            for odd in (b"\x01\x02", bytes([wire.VERSION, int(wire.MsgType.KEEPALIVE)]) + bytes(30)):
                relay.sendto(odd, echo_sock.getsockname())
                others.append(odd)
    for _ in range(10):  # bounded: 8 per recvmmsg, 4 calls per turn
        echo.drain()
        if len(delivered) == len(others) and echo.echoed == len(sent):
            break
    got = [relay.recv(2048) for _ in sent]
    assert got == [audio_out_from_audio_in(a) for a in sent]
    assert [d for d, _ in delivered] == others and all(a == peer for _, a in delivered)
    assert echo.echoed == len(sent) and echo.send_errors == 0


def test_batch_echo_falls_back_behind_unsent_data(sockets: Any) -> None:
    """While the socket holds unsent data the echoes go through the transport's queue, after it."""
    relay, echo_sock = sockets
    relay.settimeout(2)
    queued: list[tuple[bytes, Any]] = []
    echo = BatchEcho(echo_sock, LiveCalls({(relay.getsockname(), 3)}), lambda d, a: None, lambda: False)
    echo.fallback = lambda data, peer: queued.append((data, peer))
    audio = wire.encode_audio(wire.MsgType.AUDIO_IN, 3, 1, 960, b"abc", wire.audio_in_flags(level=20))
    relay.sendto(audio, echo_sock.getsockname())
    echo.drain()
    assert queued == [(audio_out_from_audio_in(audio), relay.getsockname())]


# --- the burst agent (--agent burst) ------------------------------------------------------------------


def _audio_in(call_id: int, seq: int, marker: bool = False) -> bytes:
    flags = wire.audio_in_flags(marker=marker, level=30)
    return wire.encode_audio(wire.MsgType.AUDIO_IN, call_id, seq, 960 * seq, bytes([seq % 256]) * 60, flags)


def _audio_out_of_response(audio_in: bytes, first: bool) -> bytes:
    """What the burst agent sends for an AUDIO_IN: the reference AUDIO_OUT, MARKER on a response's first
    frame only."""
    out = bytearray(audio_out_from_audio_in(audio_in))
    out[3] = wire.FLAG_MARKER if first else 0
    return bytes(out)


def _burst_echo(echo_sock: Any, live: set[tuple[Any, int]], frames: int, quiet_s: float = 5.0) -> BatchEcho:
    echo = BatchEcho(echo_sock, LiveCalls(live), lambda d, a: None, lambda: True, batch=16)
    echo.hold = BurstHold(echo, 8, frames=frames, quiet_s=quiet_s)
    return echo


def _drain_all(echo: BatchEcho, expected_in: int) -> None:
    assert echo.hold is not None
    for _ in range(20):  # bounded: 16 per recvmmsg, 4 calls per turn
        echo.drain()
        if echo.hold.taken + echo.echoed >= expected_in:
            return


def test_burst_agent_holds_a_response_and_sends_it_whole_in_order(sockets: Any) -> None:
    """Nothing comes back until a call's response is whole; then all of it at once, in order, each the
    reference AUDIO_OUT with MARKER on the response's first frame only (so the relay sees a new response
    ahead of real time and must pace it). A call's first response is shorter by its own phase."""
    relay, echo_sock = sockets
    relay.settimeout(0.2)
    peer = relay.getsockname()
    frames = 5
    call_id = 7
    first = first_response_frames(call_id, frames)
    assert 1 <= first <= frames
    echo = _burst_echo(echo_sock, {(peer, call_id)}, frames)
    sent = [_audio_in(call_id, seq, marker=seq == 2) for seq in range(first + frames)]
    for audio in sent[: first - 1]:
        relay.sendto(audio, echo_sock.getsockname())
    _drain_all(echo, first - 1)
    with pytest.raises(TimeoutError):  # held: the response is not whole yet
        relay.recv(2048)
    for audio in sent[first - 1 :]:
        relay.sendto(audio, echo_sock.getsockname())
    _drain_all(echo, len(sent))
    got = [relay.recv(2048) for _ in sent]
    starts = {0, first}  # the first response, then a whole one
    assert got == [_audio_out_of_response(a, i in starts) for i, a in enumerate(sent)]
    hold = echo.hold
    assert hold is not None
    assert hold.responses == 2 and hold.released == len(sent) and hold.short_responses == 0
    assert echo.echoed == 0  # nothing left at once


def test_burst_agent_ends_a_short_response_when_the_call_goes_quiet(sockets: Any) -> None:
    """The run's last response is short: it leaves once the call has been quiet, so every frame is
    answered; another call's frames in the same batches keep their own rows and order."""
    relay, echo_sock = sockets
    relay.settimeout(1)
    peer = relay.getsockname()
    frames = 50  # longer than anything sent: only the quiet check releases
    echo = _burst_echo(echo_sock, {(peer, 11), (peer, 12)}, frames, quiet_s=0.05)
    hold = echo.hold
    assert hold is not None
    count = {cid: min(3, first_response_frames(cid, frames) - 1) for cid in (11, 12)}
    sent = {cid: [_audio_in(cid, seq) for seq in range(n)] for cid, n in count.items()}
    for seq in range(3):
        for cid in (11, 12):
            if seq < count[cid]:
                relay.sendto(sent[cid][seq], echo_sock.getsockname())
    _drain_all(echo, sum(count.values()))
    assert hold.flush_quiet(time.monotonic_ns()) == 0  # not quiet yet
    assert hold.flush_quiet(time.monotonic_ns() + 10**8) == sum(1 for n in count.values() if n)
    got = [relay.recv(2048) for _ in range(sum(count.values()))]
    by_call: dict[int, list[bytes]] = {11: [], 12: []}
    for data in got:
        by_call[int.from_bytes(data[4:12], "big")].append(data)
    for cid in (11, 12):
        assert by_call[cid] == [_audio_out_of_response(a, i == 0) for i, a in enumerate(sent[cid])]
    assert hold.short_responses == sum(1 for n in count.values() if n) and not hold.held.any()


def test_burst_agent_keeps_two_frames_of_one_call_in_one_batch_in_order(sockets: Any) -> None:
    """Two frames of one call in the same recvmmsg batch: both held, in arrival order."""
    relay, echo_sock = sockets
    relay.settimeout(1)
    peer = relay.getsockname()
    call_id = 3
    frames = 4
    first = first_response_frames(call_id, frames)
    echo = _burst_echo(echo_sock, {(peer, call_id)}, frames)
    sent = [_audio_in(call_id, seq) for seq in range(first + frames)]
    for audio in sent:  # all in one batch (16 per recvmmsg)
        relay.sendto(audio, echo_sock.getsockname())
    _drain_all(echo, len(sent))
    got = [relay.recv(2048) for _ in sent]
    assert got == [_audio_out_of_response(a, i in (0, first)) for i, a in enumerate(sent)]


def test_burst_rows_follow_the_live_calls() -> None:
    """A call that ends frees its row (what it held is dropped); calls beyond the rows are answered at
    once (row -1); a new call's first response length is its own phase."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        echo = BatchEcho(sock, LiveCalls(), lambda d, a: None, lambda: True, batch=4)
        hold = BurstHold(echo, 2, frames=50)
        rows = hold.rows_for(np.array([5, 6, 9], dtype=np.uint64))
        assert sorted(rows.tolist()[:2]) == [0, 1] and rows[2] == -1
        hold.held[rows[0]] = 3
        again = hold.rows_for(np.array([6, 9], dtype=np.uint64))
        assert again[0] == rows[1] and again[1] == rows[0] and hold.held[rows[0]] == 0
        assert hold.target[again[1]] == first_response_frames(9, 50)
    finally:
        sock.close()
    phases = {first_response_frames(call_id) for call_id in range(1000)}
    assert len(phases) > 40  # a thousand calls' bursts spread over (nearly) every 20 ms of the second


# --- pacing lateness ------------------------------------------------------------------------------------


def test_pacing_lateness_is_against_the_relays_timeline_from_each_spurt() -> None:
    """Frames paced a lead ahead of their slots read negative; a frame sent late past its slot reads its
    lateness; a new talk spurt (marker) restarts the anchor, whatever the timestamp jump; the 32-bit
    timestamp may wrap."""
    ts0 = 2**32 - 960 * 2  # wraps after two frames
    arrivals, stamps, markers = [], [], []
    t = 10**12
    for j in range(6):  # spurt 1: frame 0 at its slot, 1..3 at once (ahead), then one a frame, paced
        arrivals.append(t + max(0, j - 3) * 20 * MS)
        stamps.append((ts0 + 960 * j) % 2**32)
        markers.append(j == 0)
    arrivals[5] += 35 * MS  # frame 5 leaves 35 ms after it was due (its slot less the lead): still ahead
    arrivals.append(t + 6 * 20 * MS + 30 * MS)  # frame 6: 30 ms past its slot, a lead and a half late
    stamps.append((ts0 + 960 * 6) % 2**32)
    markers.append(False)
    arrivals.append(t + 5 * 10**9)  # a new spurt 5 s later, its RTP time jumped by 2 s only
    stamps.append((ts0 + 96_000) % 2**32)
    markers.append(True)
    arrivals.append(t + 5 * 10**9 + 20 * MS + 5 * MS)  # its next frame 5 ms past its slot
    stamps.append((ts0 + 96_000 + 960) % 2**32)
    markers.append(False)
    late = bench_load.pacing_lateness(
        np.array(arrivals, dtype=np.int64), np.array(stamps, dtype=np.uint32), np.array(markers)
    )
    assert late.tolist() == pytest.approx([0, -20, -40, -60, -60, -25, 30, 0, 5], abs=1e-6)
    report = bench_load.pacing_report(late)
    assert report["pacing_frames"] == 9 and report["pacing_late_frames"] == 1  # only frame 6: > 20 ms
    assert report["pacing_late_max_ms"] == pytest.approx(30)


def test_the_tap_logs_each_echos_rtp_timestamp_and_marker_for_pacing(sockets: Any) -> None:
    """settle_shared reads the relay's timeline from the echoes it logged: a caller's echoes paced one a
    frame read 0 (at their slots), one held back 25 ms past its slot reads 25."""
    relay, load = sockets
    caller = _Caller(0)
    tap = EchoTap(load.fileno(), lambda data, addr: None, capacity=100)
    tap.add(0, caller)  # type: ignore[arg-type]
    clock = iter(range(10**12, 10**12 + 100 * 20 * MS, 20 * MS))
    mid = one_byte_extensions([(4, b"0")])
    schedule = Schedule(flows=1, warmup=0.0, duration=0.2)
    for k in range(6):
        payload = FRAMES[k][0]
        packet = build_rtp(111, k, 5000 + 960 * k, 0x5000, payload, extension=mid, marker=k == 0)
        relay.sendto(caller.relay_tx.protect(packet), load.getsockname())
        arrival = next(clock) + (25 * MS if k == 4 else 0)
        tap.clock = lambda a=arrival: a  # type: ignore[misc]
        for _ in range(5):  # bounded
            tap.drain()
            if tap.logged > k:
                break
    assert tap.logged == 6 and tap.log_marker[:6].tolist() == [True] + [False] * 5
    slot_ns = np.zeros((schedule.end_slot // bench_load.SLOTS + 1, bench_load.SLOTS), dtype=np.int64)
    slot_ns[:, 0] = 10**12 - MS
    late = settle_shared([caller], tap, schedule, slot_ns, {})
    assert late.tolist() == pytest.approx([0, 0, 0, 0, 25, 0], abs=1e-6)
