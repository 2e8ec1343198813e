"""Per-step cost of the fast path's per-datagram work, Python reference vs native, in one process.

``python -m splitrelay.relay.native.micro`` times the two steps the native path replaces (SRTP
unprotect + RTP parse of a caller packet; RTP header + SRTP protect of ours) on real pylibsrtp sessions,
best of a few rounds. ``--wakeups N`` times instead the shared port's reader per wake-up (4 SRTP packets
of 2 calls read, finished in C and sent to a local socket) with one C call per batch and with one per
wake-up (``Drain``), and with ``--stamps`` per wake-up without and with kernel receive timestamps (what
reading each datagram's stamp costs); under ``valgrind --tool=callgrind`` it gives instruction counts. A
micro-benchmark: the relay-level A/B is ``splitrelay bench relay``.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import pylibsrtp

from splitrelay.relay.media import native
from splitrelay.relay.media.rtp import audio_level_element, build_rtp, one_byte_extensions
from splitrelay.relay.media.shared_port import BatchReader, NativeForward
from splitrelay.relay.telemetry import DwellHistogram

PAYLOAD = bytes(range(80))  # about a 32 kb/s Opus frame
EXTENSION = one_byte_extensions([(1, bytes((0x80 | 30,)))])


def _sessions(key: bytes) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    policy = pylibsrtp.Policy
    rx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_INBOUND))
    tx = pylibsrtp.Session(policy(key=key, ssrc_type=policy.SSRC_ANY_OUTBOUND))
    return rx, tx


def measure(codec_kind: str, packets: int, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` microseconds per packet for each step with one codec kind."""
    best = {"protect_us": float("inf"), "unprotect_parse_us": float("inf")}
    for r in range(rounds):
        key = os.urandom(30)
        rx, tx = _sessions(key)
        codec = native.NativeCodec(rx, tx) if codec_kind == "native" else native.PythonCodec(rx, tx)
        sender = _sessions(key)[1]
        ssrc = 1000 + r
        started = time.perf_counter()
        for seq in range(packets):
            codec.protect_rtp(111, seq, seq * 960, ssrc, False, EXTENSION, PAYLOAD)
        protect = (time.perf_counter() - started) / packets * 1e6
        wire = [
            sender.protect(b"\x90\x6f" + seq.to_bytes(2, "big") + bytes(8) + EXTENSION + PAYLOAD)
            for seq in range(packets)
        ]
        started = time.perf_counter()
        for datagram in wire:
            codec.unprotect_parse(datagram, 1, 0)
        unprotect = (time.perf_counter() - started) / packets * 1e6
        best["protect_us"] = min(best["protect_us"], protect)
        best["unprotect_parse_us"] = min(best["unprotect_parse_us"], unprotect)
    return best


class _Demux:
    """The counters ``NativeForward`` adds to (relay/media/demux.py ``Demux``'s)."""

    datagrams_in = 0
    routed_by_flow = 0


class _Sink:
    """The inference socket as ``NativeForward`` sees it: C sends on ``fd``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def native_fd(self) -> int:
        return self.fd

    def native_send(self, data: bytes, peer: tuple[str, int]) -> None:
        raise AssertionError("the sink socket took everything")

    def native_sent(self, count: int) -> None:
        pass


def measure_wakeups(drain: bool, wakeups: int, *, stamps: bool = False) -> float:
    """Microseconds per ``BatchReader.drain`` of a wake-up of 4 packets (2 calls), C finishing all of them;
    ``stamps``: the socket gives kernel receive timestamps and the reader reads them."""
    rx, tx, sink = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    try:
        for sock in (rx, tx, sink):
            sock.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        sink.setblocking(False)
        stamped = stamps and native.rx_timestamps(rx.fileno())
        reader = BatchReader(rx, lambda _data, _addr: None, native_path=True, stamps=stamped)
        inbound = native.NativeInbound(reader.batch, calls=4, flows=64)
        recv = reader._recv if drain else None
        forward = reader.forward = NativeForward(inbound, _Sink(sink.fileno()), _Demux(), recv)  # type: ignore[arg-type]
        assert (forward.drain is not None) == drain
        keep: list[object] = []
        senders = []
        for index in range(2):
            key = bytes([index + 1]) * 30
            rx_session, tx_session = _sessions(key)
            codec = native.NativeCodec(rx_session, tx_session)
            slot = inbound.open_slot()
            assert slot is not None
            slot.configure(codec.rx_pointer, [111], 1)
            stats = slot.reception_stats(48000, 0)
            slot.hint(tx.getsockname(), 0x700 + index, stats)
            slot.enable(0xA0 + index, sink.getsockname())
            slot.set_playing_until(0)
            histogram = DwellHistogram()
            slot.set_dwell(histogram)
            keep += [codec, stats, histogram]
            senders.append(_sessions(key)[1])
        level = one_byte_extensions([(1, audio_level_element(40, False))])
        spent = 0
        for wake in range(wakeups):
            for k in range(4):
                seq = (2 * wake + k // 2) & 0xFFFF
                plain = build_rtp(111, seq, seq * 960, 0x700 + k % 2, PAYLOAD, extension=level)
                tx.sendto(senders[k % 2].protect(plain), rx.getsockname())
            started = time.perf_counter_ns()
            reader.drain()
            spent += time.perf_counter_ns() - started
            for _ in range(4):
                try:
                    sink.recv(4096)
                except BlockingIOError:
                    break
        assert forward.finished == 4 * wakeups, forward.finished
        return spent / wakeups / 1000
    finally:
        for sock in (rx, tx, sink):
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=20_000, help="packets per round (1..1,000,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is reported (1..50)")
    parser.add_argument(
        "--wakeups", type=int, default=0, help="time the port reader per wake-up instead (1..1,000,000)"
    )
    parser.add_argument(
        "--stamps", action="store_true", help="with --wakeups: per wake-up without and with kernel timestamps"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.packets <= 1_000_000 or not 1 <= args.rounds <= 50 or not 0 <= args.wakeups <= 1_000_000:
        parser.error("--packets must be 1..1000000, --rounds 1..50 and --wakeups 0..1000000")
    if not native.available():
        print(f"native path unavailable: {native.status()}")
        return 1
    if args.wakeups and args.stamps:
        plain = min(measure_wakeups(True, args.wakeups) for _ in range(args.rounds))
        stamped = min(measure_wakeups(True, args.wakeups, stamps=True) for _ in range(args.rounds))
        print(f"{'reader, 4 packets a wake-up':<34}{'no stamp':>10}{'stamped':>10}{'cost':>8}")
        print(f"{'us per wake-up':<34}{plain:>10.2f}{stamped:>10.2f}{stamped - plain:>8.2f}")
        return 0
    if args.wakeups:
        per_batch = min(measure_wakeups(False, args.wakeups) for _ in range(args.rounds))
        per_wakeup = min(measure_wakeups(True, args.wakeups) for _ in range(args.rounds))
        print(f"{'reader, 4 packets a wake-up':<34}{'per batch':>10}{'per wake':>10}{'saved':>8}")
        print(f"{'us per wake-up':<34}{per_batch:>10.2f}{per_wakeup:>10.2f}{per_batch - per_wakeup:>8.2f}")
        return 0
    python, fast = measure("python", args.packets, args.rounds), measure("native", args.packets, args.rounds)
    print(f"{'step':<34}{'python us':>10}{'native us':>10}{'saved':>8}")
    for step, label in (
        ("unprotect_parse_us", "SRTP unprotect + RTP parse (in)"),
        ("protect_us", "RTP header + SRTP protect (out)"),
    ):
        print(f"{label:<34}{python[step]:>10.2f}{fast[step]:>10.2f}{python[step] - fast[step]:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
