"""RTCP build/parse, NTP helpers and RFC 3550 reception statistics (relay/media/rtcp.py)."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)
from hypothesis import given
from hypothesis import strategies as st

from splitrelay.relay.media.rtcp import (
    NTP_EPOCH_OFFSET,
    Bye,
    ReceiverReport,
    ReceptionStats,
    ReportBlock,
    SenderReport,
    SourceDescription,
    build_bye,
    build_rr,
    build_sdes,
    build_sr,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    unix_from_ntp,
)

u32 = st.integers(0, 0xFFFFFFFF)
blocks = st.builds(
    ReportBlock,
    u32,
    st.integers(0, 255),
    st.integers(-0x800000, 0x7FFFFF),
    u32,
    u32,
    u32,
    u32,
)
MS = 1_000_000  # ns


def test_ntp_conversions() -> None:
    assert ntp_from_unix(0.0) == NTP_EPOCH_OFFSET << 32
    assert ntp_from_unix(1.5) == ((NTP_EPOCH_OFFSET + 1) << 32) | (1 << 31)
    assert unix_from_ntp(ntp_from_unix(1_700_000_000.25)) == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert ntp_middle32(0x1122334455667788) == 0x33445566


@given(u32, st.integers(0, (1 << 64) - 1), u32, u32, u32, st.lists(blocks, max_size=31))
def test_sr_round_trip(
    ssrc: int, ntp: int, ts: int, packets: int, octets: int, reports: list[ReportBlock]
) -> None:
    parsed = parse_rtcp(build_sr(ssrc, ntp, ts, packets, octets, reports))
    assert parsed.sender_reports == (SenderReport(ssrc, ntp, ts, packets, octets, tuple(reports)),)
    assert parsed.receiver_reports == () and parsed.other_packets == 0


@given(u32, st.lists(blocks, max_size=31))
def test_rr_round_trip_and_aiortc_agrees(ssrc: int, reports: list[ReportBlock]) -> None:
    data = build_rr(ssrc, reports)
    assert parse_rtcp(data).receiver_reports == (ReceiverReport(ssrc, tuple(reports)),)
    (theirs,) = RtcpPacket.parse(data)
    assert isinstance(theirs, RtcpRrPacket) and theirs.ssrc == ssrc
    assert [
        (r.ssrc, r.fraction_lost, r.packets_lost, r.highest_sequence, r.jitter, r.lsr, r.dlsr)
        for r in theirs.reports
    ] == [tuple(r) for r in reports]


@given(u32, st.integers(0, (1 << 64) - 1), u32, u32, u32, st.lists(blocks, max_size=5))
def test_aiortc_sr_parses(
    ssrc: int, ntp: int, ts: int, packets: int, octets: int, reports: list[ReportBlock]
) -> None:
    theirs = RtcpSrPacket(
        ssrc=ssrc,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=ntp, rtp_timestamp=ts, packet_count=packets, octet_count=octets
        ),
        reports=[RtcpReceiverInfo(*r) for r in reports],
    )
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, b"cname-1")])])
    parsed = parse_rtcp(bytes(theirs) + bytes(sdes))
    assert parsed.sender_reports == (SenderReport(ssrc, ntp, ts, packets, octets, tuple(reports)),)
    assert parsed.source_descriptions == (SourceDescription(ssrc, "cname-1"),)


def test_compound_sr_sdes_bye_parses_in_aiortc_too() -> None:
    """The shape the fast path sends: SR, one single-chunk SDES per SSRC, BYE.

    One chunk per SDES packet because aiortc's parser misreads a chunk that ends in a single null octet
    followed by another chunk (valid RFC 3550); single-chunk packets parse everywhere.
    """
    block = ReportBlock(7, 12, -3, 70000, 55, 0x11112222, 6553)
    data = (
        build_sr(1, ntp_from_unix(1e9), 4800, 10, 1000, [block])
        + build_sdes([SourceDescription(1, "relay")])
        + build_sdes([SourceDescription(2, "other")])
        + build_bye([1, 2], "bye now")
    )
    ours = parse_rtcp(data)
    assert ours.source_descriptions == (SourceDescription(1, "relay"), SourceDescription(2, "other"))
    assert ours.byes == (Bye((1, 2), "bye now"),)
    sr, sdes1, sdes2, bye = RtcpPacket.parse(data)
    assert (
        isinstance(sr, RtcpSrPacket)
        and sr.sender_info.packet_count == 10
        and sr.reports[0].packets_lost == -3
    )
    assert isinstance(sdes1, RtcpSdesPacket) and [c.items for c in sdes1.chunks] == [[(1, b"relay")]]
    assert isinstance(sdes2, RtcpSdesPacket) and [c.items for c in sdes2.chunks] == [[(1, b"other")]]
    assert isinstance(bye, RtcpByePacket) and bye.sources == [1, 2]


def test_multi_chunk_sdes_is_word_aligned_per_chunk() -> None:
    data = build_sdes([SourceDescription(1, "relay"), SourceDescription(2, None), SourceDescription(3, "ab")])
    assert len(data) % 4 == 0
    assert data[4:16] == struct.pack("!I", 1) + b"\x01\x05relay\x00"  # one null ends the chunk on a word
    assert parse_rtcp(data).source_descriptions == (
        SourceDescription(1, "relay"),
        SourceDescription(2, None),
        SourceDescription(3, "ab"),
    )


@given(
    st.lists(st.tuples(u32, st.one_of(st.none(), st.text(min_size=1, max_size=60))), min_size=1, max_size=31)
)
def test_sdes_round_trip(chunks: list[tuple[int, str | None]]) -> None:
    descriptions = [SourceDescription(s, c) for s, c in chunks]
    assert parse_rtcp(build_sdes(descriptions)).source_descriptions == tuple(descriptions)


def test_unknown_packet_types_are_counted_and_padding_honoured() -> None:
    nack = struct.pack("!BBHII", 0x81, 205, 3, 1, 2) + struct.pack("!HH", 10, 0)
    padded_rr = bytes([0xA0, 201]) + struct.pack("!H", 2) + struct.pack("!I", 9) + b"\x00\x00\x00\x04"
    parsed = parse_rtcp(build_rr(5) + nack + padded_rr)
    assert parsed.other_packets == 1
    assert parsed.receiver_reports == (ReceiverReport(5), ReceiverReport(9))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc8", "below the 4-byte header"),
        (b"\x40\xc9\x00\x01" + bytes(4), "version 1"),
        (b"\x80\xc9\x00\x05" + bytes(4), "claims 24 bytes"),
        (build_rr(1) + b"\x80\xc9", "trailing bytes"),
        (b"\x81\xc9\x00\x01" + bytes(4), "1 report blocks do not fit"),
        (b"\x80\xc8\x00\x01" + bytes(4), "shorter than 28"),
        (b"\x80\xc9\x00\x00", "shorter than 8"),
        (b"\xa0\xc9\x00\x01\x00\x00\x00\x09", "bad padding count 9"),
        (b"\x82\xcb\x00\x01" + bytes(4), "2 SSRCs do not fit"),
        (b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x09\x00\x00", "item runs past"),
        (b"\x82\xca\x00\x01\x00\x00\x00\x01", "chunk runs past"),
    ],
)
def test_parse_errors_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rtcp(data)


@given(st.binary(max_size=80))
def test_garbage_raises_only_value_error(data: bytes) -> None:
    try:
        parse_rtcp(data)
    except ValueError:
        pass


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_sr(1 << 32, 0, 0, 0, 0), "ssrc must be"),
        (lambda: build_sr(1, 1 << 64, 0, 0, 0), "ntp must be"),
        (lambda: build_sr(1, 0, -1, 0, 0), "rtp_timestamp must be"),
        (lambda: build_rr(1, [ReportBlock(1, 0, 0, 0, 0, 0, 0)] * 32), "at most 31"),
        (lambda: build_rr(1, [ReportBlock(1, 256, 0, 0, 0, 0, 0)]), "fraction_lost must be"),
        (lambda: build_rr(1, [ReportBlock(1, 0, 1 << 23, 0, 0, 0, 0)]), "cumulative_lost must be"),
        (lambda: build_rr(1, [ReportBlock(1, 0, 0, 0, -1, 0, 0)]), "jitter must be"),
        (lambda: build_sdes([]), "SDES chunks: 1..31"),
        (lambda: build_sdes([SourceDescription(1, "x" * 256)]), "cname must be 1..255"),
        (lambda: build_bye([]), "BYE ssrcs: 1..31"),
        (lambda: build_bye([1], "r" * 256), "reason must be at most 255"),
    ],
)
def test_build_errors_name_the_field(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_counts_wrap_at_32_bits() -> None:
    (sr,) = parse_rtcp(build_sr(1, 0, 0, (1 << 32) + 5, (1 << 32) + 7)).sender_reports
    assert (sr.packet_count, sr.octet_count) == (5, 7)


# --- reception statistics ------------------------------------------------------------------------


def feed(stats: ReceptionStats, seqs: list[int], *, step_ns: int = 20 * MS, ts_step: int = 960) -> None:
    for i, seq in enumerate(seqs):
        stats.update(seq & 0xFFFF, (i * ts_step) & 0xFFFFFFFF, i * step_ns)


def test_in_order_no_loss() -> None:
    stats = ReceptionStats(48000, 100)
    feed(stats, list(range(100, 150)))
    assert (stats.expected, stats.received, stats.lost, stats.extended_max) == (50, 50, 0, 149)
    assert stats.jitter == 0.0


def test_loss_counted_and_fraction_per_interval() -> None:
    stats = ReceptionStats(48000, 0)
    feed(stats, [s for s in range(0, 100) if s % 4 != 1])  # 25 of 100 missing
    assert stats.lost == 25
    block = stats.report_block(0xABC, 0)
    assert block.cumulative_lost == 25 and block.fraction_lost == 25 * 256 // 100
    assert block.highest_sequence == 99 and block.ssrc == 0xABC
    stats.update(100, 0, 0)
    assert stats.report_block(0xABC, 0).fraction_lost == 0  # the next interval had no loss


def test_sequence_wrap_extends_the_highest_sequence() -> None:
    stats = ReceptionStats(48000, 65530)
    feed(stats, list(range(65530, 65546)))
    assert stats.cycles == 1 << 16 and stats.extended_max == 65545 and stats.lost == 0


def test_reordered_and_duplicate_packets() -> None:
    stats = ReceptionStats(48000, 10)
    feed(stats, [10, 12, 11, 13, 13])
    assert stats.extended_max == 13 and stats.received == 5 and stats.lost == -1  # duplicate: -1, as RFC 3550


def test_big_jump_needs_two_sequential_packets_to_restart() -> None:
    stats = ReceptionStats(48000, 0)
    feed(stats, [0, 1, 2])
    assert stats.update(20000, 0, 0) is False
    assert stats.update(20001, 0, 0) is True
    assert stats.base_seq == 20001 and stats.received == 1


def test_jitter_of_alternating_delay_converges_to_rfc_value() -> None:
    stats = ReceptionStats(48000, 0)
    for i in range(400):
        delay = 0 if i % 2 == 0 else 2 * MS  # transit differs by 96 RTP units every packet
        stats.update(i, i * 960, i * 20 * MS + delay)
    assert stats.jitter == pytest.approx(96, rel=0.01)
    assert stats.jitter_ms == pytest.approx(2.0, rel=0.01)


def test_jitter_survives_timestamp_wrap() -> None:
    stats = ReceptionStats(48000, 0)
    start = 0xFFFFFFFF - 960 * 5
    for i in range(20):
        stats.update(i, (start + i * 960) & 0xFFFFFFFF, i * 20 * MS)
    assert stats.jitter < 1.0


def test_lsr_and_dlsr_from_the_last_sender_report() -> None:
    stats = ReceptionStats(48000, 0)
    stats.update(0, 0, 0)
    assert stats.report_block(1, 0)[5:] == (0, 0)
    ntp = 0x0102030405060708
    stats.record_sender_report(ntp, 1_000 * MS)
    block = stats.report_block(1, 1_500 * MS)
    assert block.lsr == 0x03040506 and block.dlsr == 32768  # 0.5 s in 1/65536 s


def test_clock_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="clock_rate must be positive"):
        ReceptionStats(0, 0)


@given(st.integers(0, 0xFFFF), st.lists(st.booleans(), min_size=1, max_size=400))
def test_lost_equals_missing_for_any_in_order_subset(start: int, keep: list[bool]) -> None:
    keep[0] = True  # the first packet defines the base
    seqs = [(start + i) & 0xFFFF for i, k in enumerate(keep) if k]
    last = max(i for i, k in enumerate(keep) if k)
    stats = ReceptionStats(48000, seqs[0])
    feed(stats, seqs)
    assert stats.lost == sum(1 for k in keep[: last + 1] if not k)
    assert stats.extended_max - stats.base_seq == last
