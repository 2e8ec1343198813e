"""RTP packet parse/build (relay/media/rtp.py), checked against RFC layouts and aiortc's own codec."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap
from aiortc.rtp import RtpPacket as AiortcRtpPacket
from hypothesis import given
from hypothesis import strategies as st

from splitrelay.relay.media.rtp import (
    AUDIO_LEVEL_URI,
    MID_URI,
    audio_level_element,
    build_rtp,
    find_extension,
    is_rtcp,
    one_byte_extensions,
    parse_rtp,
    two_byte_extensions,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
pt = st.integers(0, 127)
payloads = st.binary(min_size=0, max_size=300)


def aiortc_map(audio_level_id: int, mid_id: int = 1) -> HeaderExtensionsMap:
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=mid_id, uri=MID_URI),
                RTCRtpHeaderExtensionParameters(id=audio_level_id, uri=AUDIO_LEVEL_URI),
            ]
        )
    )
    return ext_map


def test_header_layout_matches_rfc3550() -> None:
    data = build_rtp(111, 0x1234, 0xDEADBEEF, 0xCAFEBABE, b"opus", marker=True)
    assert data == bytes([0x80, 0x80 | 111]) + struct.pack("!HII", 0x1234, 0xDEADBEEF, 0xCAFEBABE) + b"opus"


def test_parse_plain_packet() -> None:
    pkt = parse_rtp(build_rtp(96, 7, 960, 42, b"\x01\x02\x03"), arrival_ns=5)
    assert (pkt.payload_type, pkt.marker, pkt.sequence, pkt.timestamp, pkt.ssrc) == (96, False, 7, 960, 42)
    assert pkt.payload == b"\x01\x02\x03"
    assert pkt.audio_level is None and pkt.voice is False and pkt.csrc_count == 0 and pkt.arrival_ns == 5


def test_audio_level_one_byte_extension_with_mid_before_it() -> None:
    ext = one_byte_extensions([(1, b"0"), (2, audio_level_element(33, True))])
    pkt = parse_rtp(build_rtp(96, 1, 2, 3, b"x", extension=ext), audio_level_id=2)
    assert pkt.audio_level == 33 and pkt.voice is True and pkt.payload == b"x"


def test_audio_level_ignored_when_not_negotiated() -> None:
    ext = one_byte_extensions([(2, audio_level_element(10, True))])
    assert parse_rtp(build_rtp(96, 1, 2, 3, b"x", extension=ext)).audio_level is None
    assert parse_rtp(build_rtp(96, 1, 2, 3, b"x", extension=ext), audio_level_id=5).audio_level is None


def test_one_byte_padding_bytes_between_elements_are_skipped() -> None:
    body = bytes([0x10, ord("a"), 0x00, 0x00, 0x20, 0x85, 0x00, 0x00])  # mid "a", 2 pad, level 5 V=1
    ext = struct.pack("!HH", 0xBEDE, 2) + body
    pkt = parse_rtp(build_rtp(96, 1, 2, 3, b"p", extension=ext), audio_level_id=2)
    assert (pkt.audio_level, pkt.voice) == (5, True)


def test_two_byte_extension_audio_level() -> None:
    ext = two_byte_extensions([(200, b"long-value-" * 2), (9, audio_level_element(90, False))])
    pkt = parse_rtp(build_rtp(96, 1, 2, 3, b"p", extension=ext), audio_level_id=9)
    assert (pkt.audio_level, pkt.voice) == (90, False)


def test_find_extension_stops_on_reserved_id_15_and_truncation() -> None:
    data = bytes([0xF0, 0x20, 0x05])
    assert find_extension(data, 0, len(data), 0xBEDE, 2) is None
    truncated = bytes([0x23, 0x01])  # claims 4 bytes, has 1
    assert find_extension(truncated, 0, len(truncated), 0xBEDE, 2) is None
    assert find_extension(b"\x02\x05ab", 0, 4, 0x1000, 2) is None  # two-byte: length runs past
    assert find_extension(b"\x02\x01\x07\x00", 0, 4, 0x1234, 2) is None  # unknown profile


def test_csrcs_and_padding() -> None:
    base = build_rtp(96, 9, 10, 11, b"payload", csrcs=[1, 2, 3])
    padded = bytes([base[0] | 0x20]) + base[1:] + b"\x00\x00\x03"
    pkt = parse_rtp(padded)
    assert pkt.csrc_count == 3 and pkt.payload == b"payload"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x60\x00", "below the 12-byte header"),
        (b"\x40" + bytes(11), "version 1"),
        (bytes([0xA0]) + bytes(10) + b"\x00", "zero padding count"),
        (bytes([0x90]) + bytes(11) + b"\xbe\xde", "extension runs past"),
        (bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x05", "5 words runs past"),
        (bytes([0x84]) + bytes(11), "4 CSRCs and padding exceed"),
        (bytes([0xA0]) + bytes(11) + b"\x40", "exceed the length"),
    ],
)
def test_parse_errors_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rtp(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"payload_type": 128}, "payload_type must be 0..127"),
        ({"sequence": 65536}, "sequence must be 0..65535"),
        ({"timestamp": -1}, "timestamp must be 0..4294967295"),
        ({"ssrc": 1 << 32}, "ssrc must be 0..4294967295"),
        ({"csrcs": list(range(16))}, "at most 15"),
        ({"extension": b"\xbe\xde\x00"}, "multiple of 4"),
    ],
)
def test_build_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"payload_type": 96, "sequence": 1, "timestamp": 1, "ssrc": 1, "payload": b"x"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_rtp(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: audio_level_element(128, False), "audio_level must be 0..127"),
        (lambda: one_byte_extensions([(15, b"x")]), "id must be 1..14"),
        (lambda: one_byte_extensions([(1, b"")]), "value length must be 1..16"),
        (lambda: one_byte_extensions([(1, b"x" * 17)]), "value length must be 1..16"),
        (lambda: two_byte_extensions([(0, b"x")]), "id must be 1..255"),
        (lambda: two_byte_extensions([(1, b"x" * 256)]), "value length must be 0..255"),
        (lambda: two_byte_extensions([], appbits=16), "appbits must be 0..15"),
    ],
)
def test_extension_builder_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_is_rtcp_uses_rfc5761_range() -> None:
    assert is_rtcp(bytes([0x80, 200])) and is_rtcp(bytes([0x80, 223]))
    assert not is_rtcp(bytes([0x80, 111])) and not is_rtcp(bytes([0x80, 224])) and not is_rtcp(b"\x80")


@given(
    pt,
    st.booleans(),
    u16,
    u32,
    u32,
    payloads,
    st.lists(u32, max_size=15),
    st.one_of(st.none(), st.tuples(st.integers(1, 14), st.integers(0, 127), st.booleans())),
)
def test_round_trip(
    payload_type: int,
    marker: bool,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    csrcs: list[int],
    level: tuple[int, int, bool] | None,
) -> None:
    ext = b""
    level_id = None
    if level is not None:
        level_id, value, voice = level
        ext = one_byte_extensions([(level_id, audio_level_element(value, voice))])
    data = build_rtp(
        payload_type, sequence, timestamp, ssrc, payload, marker=marker, extension=ext, csrcs=csrcs
    )
    pkt = parse_rtp(data, level_id)
    assert (pkt.payload_type, pkt.marker, pkt.sequence, pkt.timestamp, pkt.ssrc) == (
        payload_type,
        marker,
        sequence,
        timestamp,
        ssrc,
    )
    assert pkt.payload == payload and pkt.csrc_count == len(csrcs)
    if level is not None:
        assert (pkt.audio_level, pkt.voice) == (level[1], level[2])


@given(pt, st.booleans(), u16, u32, u32, payloads, st.integers(0, 127), st.booleans(), st.integers(2, 14))
def test_aiortc_builds_what_we_parse(
    payload_type: int,
    marker: bool,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    level: int,
    voice: bool,
    level_id: int,
) -> None:
    theirs = AiortcRtpPacket(payload_type, int(marker), sequence, timestamp, ssrc, payload)
    theirs.extensions.mid = "0"
    theirs.extensions.audio_level = (voice, level)
    pkt = parse_rtp(theirs.serialize(aiortc_map(level_id)), level_id)
    assert (pkt.payload_type, pkt.marker, pkt.sequence, pkt.timestamp, pkt.ssrc, pkt.payload) == (
        payload_type,
        marker,
        sequence,
        timestamp,
        ssrc,
        payload,
    )
    assert (pkt.audio_level, pkt.voice) == (level, voice)


@given(pt, st.booleans(), u16, u32, u32, payloads, st.integers(0, 127), st.booleans(), st.integers(2, 14))
def test_we_build_what_aiortc_parses(
    payload_type: int,
    marker: bool,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    level: int,
    voice: bool,
    level_id: int,
) -> None:
    ext = one_byte_extensions([(1, b"0"), (level_id, audio_level_element(level, voice))])
    data = build_rtp(payload_type, sequence, timestamp, ssrc, payload, marker=marker, extension=ext)
    theirs = AiortcRtpPacket.parse(data, aiortc_map(level_id))
    assert (
        theirs.payload_type,
        bool(theirs.marker),
        theirs.sequence_number,
        theirs.timestamp,
        theirs.ssrc,
    ) == (
        payload_type,
        marker,
        sequence,
        timestamp,
        ssrc,
    )
    assert theirs.payload == payload
    assert theirs.extensions.audio_level == (voice, level)
    assert theirs.extensions.mid == "0"


@given(st.binary(max_size=64), st.one_of(st.none(), st.integers(1, 14)))
def test_garbage_never_raises_anything_but_value_error(data: bytes, level_id: int | None) -> None:
    try:
        parse_rtp(data, level_id)
    except ValueError:
        pass
