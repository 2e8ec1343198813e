"""Per-step cost of the fast path's per-datagram work, Python reference vs native, in one process.

``python -m splitrelay.relay.native.micro`` times the two steps the native path replaces (SRTP
unprotect + RTP parse of a caller packet; RTP header + SRTP protect of ours) on real pylibsrtp sessions,
best of a few rounds. A micro-benchmark: the relay-level A/B is ``splitrelay bench relay``.
"""

from __future__ import annotations

import argparse
import os
import time

import pylibsrtp

from splitrelay.relay.media import native
from splitrelay.relay.media.rtp import one_byte_extensions

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=20_000, help="packets per round (1..1,000,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is reported (1..50)")
    args = parser.parse_args(argv)
    if not 1 <= args.packets <= 1_000_000 or not 1 <= args.rounds <= 50:
        parser.error("--packets must be 1..1000000 and --rounds 1..50")
    if not native.available():
        print(f"native path unavailable: {native.status()}")
        return 1
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
