"""The bench's cheap load side: the shared socket's echo log and its settling, and the batched echo
inference, each against the per-datagram reference it replaces (scripts/bench/load.py, servers.py)."""

from __future__ import annotations

import array
import socket
from typing import Any

import numpy as np
import pylibsrtp
import pytest

from splitrelay.bench import load as bench_load
from splitrelay.bench.load import EchoCounter, EchoMatcher, EchoTap, Schedule, settle_shared
from splitrelay.bench.servers import BatchEcho, LiveCalls, audio_out_from_audio_in
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
