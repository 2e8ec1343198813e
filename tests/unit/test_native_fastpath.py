"""The native per-datagram path (relay/media/native) against its Python reference: same bytes, same decisions.

Both codecs get the same traffic (browser-built packets over real Opus, packets built through every
header feature, then truncated, flipped, forged, replayed, oversize) on SRTP sessions of one key, and
must return the same packet or the same decision for each datagram, and identical protected bytes.
In CI the extension must be built (``make setup``): these tests fail there rather than skip.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitrelay.inference import wire
from splitrelay.inference.speech import SpeechDetector
from splitrelay.relay.media import native
from splitrelay.relay.media.rtp import RtpPacket, one_byte_extensions
from splitrelay.relay.native import build as native_build
from tests.fuzz.engine import HypothesisSource, RandomSource
from tests.native_traffic import (
    AUDIO_LEVEL_ID,
    CAPTURE,
    Differential,
    _session,
    browser_packet,
    built_packet,
    check_parse,
    mutate,
    one_round,
    replay_capture,
    sessions,
)


@pytest.fixture(autouse=True)
def _native_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs the native path: built in CI, else skipped with the reason."""
    monkeypatch.delenv(native.NATIVE_ENV, raising=False)
    native.reset()
    if not native.available():
        if os.environ.get("CI"):
            pytest.fail(f"native fast path not available in CI: {native.status()}")
        pytest.skip(f"native fast path not built: {native.status()}")


def test_a_stream_of_browser_packets_gives_identical_packets_and_decisions() -> None:
    """250 frames in order, with loss, reordering and duplicates, as a caller's network delivers them."""
    rng = random.Random(17)
    source = RandomSource(rng)
    diff = Differential()
    protected = [diff.sender.protect(browser_packet(source, seq)) for seq in range(250)]
    order = list(range(250))
    for _ in range(20):  # local reordering
        i = rng.randrange(249)
        order[i], order[i + 1] = order[i + 1], order[i]
    delivered = [protected[i] for i in order if rng.random() > 0.05]
    delivered += rng.sample(protected, 10)  # duplicates: replays both must refuse
    results = [diff.check_inbound(d) for d in delivered]
    assert sum(isinstance(r, RtpPacket) for r in results) >= 200
    assert native.UNDECRYPTABLE in results
    levels = {r.audio_level for r in results if isinstance(r, RtpPacket)}
    assert None in levels and len(levels) > 2  # with and without the RFC 6464 extension


def test_seeded_mixed_traffic_on_one_session_pair() -> None:
    """3,000 rounds of every kind of datagram on one pair of sessions (replay windows carry over)."""
    source = RandomSource(random.Random(3))
    diff = Differential()
    for seq in range(3000):
        one_round(source, diff, seq)
    assert diff.compared >= 6000


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_generated_traffic_gives_identical_results(data: st.DataObject) -> None:
    source = HypothesisSource(data)
    diff = Differential()
    for seq in range(source.integer(1, 4)):
        one_round(source, diff, seq)


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_parser_matches_parse_rtp_on_built_and_mutated_packets(data: st.DataObject) -> None:
    source = HypothesisSource(data)
    packet = built_packet(source, source.integer(0, 0xFFFF))
    if source.integer(0, 1):
        packet = mutate(source, packet)
    check_parse(packet, data.draw(st.sampled_from([AUDIO_LEVEL_ID, None, 0, 2, 7, 14, 15, 255])))


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(blob=st.binary(max_size=80), level_id=st.sampled_from([AUDIO_LEVEL_ID, None, 0, 15]))
def test_parser_matches_parse_rtp_on_raw_bytes(blob: bytes, level_id: int | None) -> None:
    check_parse(blob, level_id)
    check_parse(bytes((0x90 | (blob[0] & 0x2F),)) + blob[1:] if blob else b"\x90", level_id)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    type_=st.sampled_from([3, 4, 0, 255, 256, -1]),
    call_id=st.sampled_from([1, 2**64 - 1, 2**64, -1, 12345]),
    seq=st.integers(-1, 2**32),
    timestamp=st.integers(-1, 2**32),
    payload=st.binary(max_size=1400),
    flags=st.sampled_from([0, 1, 0x7F06, 0xFFFF, 0x10000, -1]),
)
def test_wire_audio_framing_matches_encode_audio(
    type_: int, call_id: int, seq: int, timestamp: int, payload: bytes, flags: int
) -> None:
    try:
        expected: bytes | type[ValueError] = wire.encode_audio(type_, call_id, seq, timestamp, payload, flags)
    except ValueError:
        expected = ValueError
    try:
        got: bytes | type[ValueError] = native.encode_audio(type_, call_id, seq, timestamp, payload, flags)
    except ValueError:
        got = ValueError
    assert got == expected


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    level=st.one_of(st.none(), st.integers(0, 127)),
    voice=st.booleans(),
    use_voice_bit=st.booleans(),
    threshold=st.one_of(st.integers(-127, 0).map(float), st.floats(-127.0, 0.0)),
    size=st.integers(1, 4),
)
def test_speech_hint_matches_the_detector_without_decoding(
    level: int | None, voice: bool, use_voice_bit: bool, threshold: float, size: int
) -> None:
    hint = native.speech_hint(level, voice, use_voice_bit, threshold, size)
    assert hint == native.py_speech_hint(level, voice, use_voice_bit, threshold, size)
    detector = SpeechDetector(threshold, use_voice_bit=use_voice_bit)
    if hint == native.HINT_DECODE:
        assert level is None and size > 2
    else:  # decided without a decode: exactly what the detector says (a DTX frame needs no decoder)
        assert (hint == native.HINT_SPEECH) == detector.is_speech(b"\xf8" * size, level, voice)


def test_oversize_payload_is_refused_by_both_paths_alike() -> None:
    diff = Differential()
    ext = one_byte_extensions([(AUDIO_LEVEL_ID, b"\x1e")])
    assert diff.check_outbound(111, 1, 960, 7, False, ext, b"x" * 1400) is None  # ValueError from both
    assert diff.check_outbound(111, 2, 960, 7, False, ext, b"x" * 100) is not None


def test_the_differential_catches_a_native_codec_that_differs() -> None:
    """The comparison can fail: a native codec on another key disagrees on the first packet."""
    diff = Differential()
    diff.native = native.NativeCodec(*sessions(os.urandom(30)))
    datagram = diff.sender.protect(built_packet(RandomSource(random.Random(1)), 1))
    with pytest.raises(AssertionError, match="native -1 != python RtpPacket"):
        diff.check_inbound(datagram)


def test_forcing_the_python_path_and_saying_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    native.reset()
    rx, tx = sessions(os.urandom(30))
    with caplog.at_level(logging.INFO, logger="splitrelay.native"):
        codecs = [native.codec(rx, tx) for _ in range(3)]
    assert all(isinstance(c, native.PythonCodec) for c in codecs)
    lines = [r.getMessage() for r in caplog.records if r.name == "splitrelay.native"]
    assert lines == [f"fast path: Python per-datagram path: {native.NATIVE_ENV}=0 forces the Python path"]
    monkeypatch.delenv(native.NATIVE_ENV)
    native.reset()
    assert isinstance(native.codec(rx, tx), native.NativeCodec)


def test_a_missing_extension_falls_back_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "splitrelay.relay.media.native._fastpath", None)  # import fails
    native.reset()
    assert not native.available()
    assert "extension not built" in native.status()
    rx, tx = sessions(os.urandom(30))
    assert isinstance(native.codec(rx, tx), native.PythonCodec)
    assert native.parse_rtp(b"\x80\x6f\x00\x01" + bytes(8) + b"x").payload == b"x"  # the reference serves


def test_sessions_that_are_not_pylibsrtp_get_the_python_codec() -> None:
    class Fake:
        def unprotect(self, data: bytes) -> bytes:
            return data

    assert isinstance(native.codec(Fake(), Fake()), native.PythonCodec)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_the_c_source_compiles_without_a_warning() -> None:
    result = subprocess.run(
        [
            "gcc",
            "-fsyntax-only",
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Wconversion",
            "-Werror",
            str(native_build.SOURCE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _capture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CAPTURE.read_text())
    return data


def test_a_captured_call_gives_identical_packets_both_ways() -> None:
    """Real SRTP from a loopback call (tests/unit/data/native_capture.json, with its negotiated keys)."""
    for side, expected_levels in (("client", {20, 127}), ("relay", {20, 127})):
        packets = replay_capture(_capture()[side])
        assert len(packets) == 40
        assert {p.audio_level for p in packets} == expected_levels, side
        assert len({p.sequence for p in packets}) == 40


def test_a_captured_call_mutated_gives_identical_decisions() -> None:
    """Every captured datagram mutated (cut, flipped, junk appended) before the original: same results."""
    source = RandomSource(random.Random(5))
    for side in _capture().values():
        key, profile, window = bytes.fromhex(side["key"]), int(side["profile"]), int(side["window"])
        diff = Differential()
        diff.python = native.PythonCodec(_session(key, profile, window), None)
        diff.native = native.NativeCodec(_session(key, profile, window), _session(key, profile, window))
        decisions = []
        for text in side["datagrams"]:
            datagram = bytes.fromhex(text)
            decisions.append(diff.check_inbound(mutate(source, datagram), side["audio_level_id"]))
            decisions.append(diff.check_inbound(datagram, side["audio_level_id"]))
        assert native.UNDECRYPTABLE in decisions
        assert sum(isinstance(d, RtpPacket) for d in decisions) >= 40
