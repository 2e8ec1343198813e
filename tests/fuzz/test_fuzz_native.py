"""Fuzz target: the native per-datagram path's C parser and SRTP steps, against the Python reference.

Each input is one of: a packet built through every header feature (CSRCs, padding, one- and two-byte
extensions, raw blocks), a browser-built one, either mutated at the byte level, or raw bytes behind an
RTP first byte, parsed by ``fastpath.c`` and by ``rtp.parse_rtp`` with a drawn audio-level id; or (one
in four) a differential round through fresh SRTP sessions: protect, unprotect and parse, forged and
replayed datagrams (tests/native_traffic.py). The oracle: the same packet or the same refusal from both,
and no other exception. Each input is self-contained (its own sessions), so an index replays exactly.

Long run: ``SPLITRELAY_FUZZ_EXAMPLES=1000000 pytest tests/fuzz/test_fuzz_native.py`` (docs/benchmarks.md,
"Fuzz tier"); its C side under the sanitizers is tests/unit/test_native_sanitizers.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from splitrelay.relay.media import native
from splitrelay.relay.media.rtp import RtpPacket
from tests.fuzz.engine import Source, chance, choice, run_target
from tests.native_traffic import Differential, browser_packet, built_packet, check_parse, mutate, one_round

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
