"""Fuzz target: the native per-datagram path's C parser and SRTP steps, against the Python reference.

Each input is one of: a packet built through every header feature (CSRCs, padding, one- and two-byte
extensions, raw blocks), a browser-built one, either mutated at the byte level, or raw bytes behind an
RTP first byte, parsed by ``fastpath.c`` and by ``rtp.parse_rtp`` with a drawn audio-level id; or (one
in four) a differential round through fresh SRTP sessions: protect, unprotect and parse, forged and
replayed datagrams (tests/native_traffic.py). The oracle: the same packet or the same refusal from both,
and no other exception. Each input is self-contained (its own sessions), so an index replays exactly.

A second target drives the per-batch C path (fastpath.c ``sr_batch_in``: two calls behind one address, a
batch of valid, padded, truncated, mutated and raw datagrams, each with its own drawn arrival, a drawn
barge-in gate and playback state) against the reference: every datagram C finished must unprotect, parse
and frame to the same AUDIO_IN bytes through the Python codec on a twin session of the same key, with the
call's unwrapping and timestamp base, in the same order, and the same reception statistics (taking each
datagram's own arrival) at the end.

Long run: ``SPLITRELAY_FUZZ_EXAMPLES=1000000 pytest tests/fuzz/test_fuzz_native.py`` (docs/benchmarks.md,
"Fuzz tier"); its C side under the sanitizers is tests/unit/test_native_sanitizers.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from splitrelay.inference import wire
from splitrelay.relay.call import SequenceUnwrapper
from splitrelay.relay.media import native
from splitrelay.relay.media.rtcp import NativeReceptionStats, ReceptionStats
from splitrelay.relay.media.rtp import RtpPacket
from tests.fuzz.engine import Source, chance, choice, run_target
from tests.native_traffic import (
    Differential,
    browser_packet,
    built_packet,
    check_parse,
    mutate,
    one_round,
    sessions,
)
from tests.unit.test_native_batch import KEYS, LEVEL_ID, PT, Bench

pytestmark = pytest.mark.fuzz

LEVEL_IDS = (1, None, 0, 2, 14, 15, 255)


@pytest.fixture(autouse=True)
def _native_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.NATIVE_ENV, raising=False)
    native.reset()
    if not native.available():
        if os.environ.get("CI"):
            pytest.fail(f"native fast path not available in CI: {native.status()}")
        pytest.skip(f"native fast path not built: {native.status()}")


async def one_input(source: Source) -> None:
    """One fuzz input (see the module docstring)."""
    kind = source.integer(0, 7)
    if kind < 2:
        diff = Differential()
        seq = source.integer(0, 0xFFFF)
        for _ in range(source.integer(1, 3)):  # forward, sometimes by a jump (libsrtp's index estimate)
            one_round(source, diff, seq)
            seq += source.integer(1, 3000) if chance(source, 4) else 1
        return
    if kind < 5:
        data = built_packet(source, source.integer(0, 0xFFFF))
    elif kind == 5:
        data = browser_packet(source, source.integer(0, 0xFFFF))
    else:
        data = bytes((source.integer(128, 191),)) + source.blob(0, 120)
    if chance(source, 2):
        data = mutate(source, data)
    check_parse(data, choice(source, LEVEL_IDS))


def test_native_parser_and_srtp_match_the_reference() -> None:
    with asyncio.Runner() as runner:
        run_target("native", runner, one_input)


def test_the_oracle_catches_a_parser_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target can fail: a native parser that drops the marker bit is caught."""
    real = native.parse_rtp

    def wrong(data: bytes, audio_level_id: int | None = None, arrival_ns: int = 0) -> RtpPacket:
        return real(data, audio_level_id, arrival_ns)._replace(marker=False)

    monkeypatch.setattr(native, "parse_rtp", wrong)
    with asyncio.Runner() as runner, pytest.raises(AssertionError, match="parse: native"):
        run_target("native-injected", runner, one_input, examples=300)


def batch_input(source: Source) -> None:
    """One per-batch input (see the module docstring); raises AssertionError when C and the reference
    part."""
    bench = Bench()
    try:
        twins = [native.PythonCodec(sessions(KEYS[i])[0], None) for i in range(2)]
        unwrap = [SequenceUnwrapper() for _ in range(2)]
        ts0: list[int | None] = [None, None]
        stats: list[ReceptionStats | None] = [None, None]
        for slot in bench.slots:
            slot.set_gate(source.integer(0, 2), source.integer(0, 127), chance(source, 2))
            slot.set_playing_until(choice(source, (0, native.PLAYING_ALWAYS, 10**12)))
        datagrams = []
        for _ in range(source.integer(1, 32)):
            sender = choice(source, bench.senders)
            kind = source.integer(0, 5)
            if kind < 3:
                level = choice(source, (None, 0, 30, 90, 127))
                data = sender.packet(source.blob(0, 200), level, marker=chance(source, 8))
            elif kind == 3:
                data = sender.padded(source.blob(0, 20), source.integer(0, 30))
            elif kind == 4:
                data = bytes((source.integer(128, 191),)) + source.blob(0, 120)
            else:
                data = sender.packet(b"\x01\x02\x03")
            if chance(source, 4):
                data = mutate(source, data)
            datagrams.append(data)
        arrivals = [choice(source, (10**12 - 1, 10**12, 10**12 + 1, 10**12 - 400_000)) for _ in datagrams]
        decisions, out = bench.run(datagrams, arrivals)  # each datagram's own arrival (its kernel stamp)
        expected: list[bytes] = []
        for data, decision, arrival in zip(datagrams, decisions, arrivals, strict=True):
            if decision:
                continue
            index = int.from_bytes(data[8:12], "big") - 0x700
            assert index in (0, 1), "C finished a datagram of no flow"
            packet = twins[index].unprotect_parse(data, LEVEL_ID, arrival)
            assert not isinstance(packet, int) or packet == native.MALFORMED, (
                "C took what does not authenticate"
            )
            if isinstance(packet, int):
                continue
            assert packet.payload_type == PT
            reception = stats[index]
            if reception is None:
                reception = stats[index] = ReceptionStats(48000, 0)
            reception.update(packet.sequence, packet.timestamp, arrival)
            if ts0[index] is None:
                ts0[index] = packet.timestamp
            base = ts0[index]
            assert base is not None
            level = packet.audio_level
            flags = wire.audio_in_flags(
                marker=packet.marker, level=level, voice=packet.voice and level is not None
            )
            seq = unwrap[index].extend(packet.sequence) & wire.U32
            try:
                expected.append(
                    wire.encode_audio(
                        wire.MsgType.AUDIO_IN,
                        0xA0 + index,
                        seq,
                        (packet.timestamp - base) & wire.U32,
                        packet.payload,
                        flags,
                    )
                )
            except wire.WireError:
                pass  # the call's callback raises on the Python path: C counts it, sends nothing
        assert out == expected, "per-batch: native framing differs from the reference"
        for index, reference in enumerate(stats):
            if reference is not None:
                ours = NativeReceptionStats(bench.keep[4 * index + 3], native.rx_update())
                assert ours.received == reference.received and ours.jitter == reference.jitter
                assert ours.extended_max == reference.extended_max
    finally:
        bench.close()


async def one_batch_input(source: Source) -> None:
    batch_input(source)


def test_native_batch_path_matches_the_reference() -> None:
    with asyncio.Runner() as runner:
        run_target("native-batch", runner, one_batch_input)
