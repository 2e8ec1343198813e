"""RTCP (RFC 3550): SR/RR/SDES/BYE build and parse, NTP time, and the reception statistics behind a report.

SR and RR are serialized by aiortc (public ``aiortc.rtp``); parsing (per packet), SDES and BYE stay here,
each saying why in its docstring.

The relay sends its own reports because aiortc's never see the packets the fast path carries; the
arithmetic follows RFC 3550 appendices A.1 (sequence tracking), A.3 (loss) and A.8 (jitter).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket, RtcpSenderInfo, RtcpSrPacket

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
SDES_CNAME = 1
MAX_REPORT_BLOCKS = 31

NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01

_COMMON = struct.Struct("!BBH")
_SR_BODY = struct.Struct("!IIIIII")  # ssrc, ntp sec, ntp frac, rtp ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # ssrc, fraction|lost, ext highest seq, jitter, lsr, dlsr
_U32 = struct.Struct("!I")


# --- NTP time -----------------------------------------------------------------------------------


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) for a Unix time."""
    return int((seconds + NTP_EPOCH_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def unix_from_ntp(ntp: int) -> float:
    """Unix time of a 64-bit NTP timestamp (no era handling: valid until 2036)."""
    return ntp / (1 << 32) - NTP_EPOCH_OFFSET


def ntp_now() -> int:
    return ntp_from_unix(time.time())


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field of a report block."""
    return (ntp >> 16) & 0xFFFFFFFF


# --- packets ------------------------------------------------------------------------------------


class ReportBlock(NamedTuple):
    """One reception report block (RFC 3550 section 6.4.1)."""

    ssrc: int
    fraction_lost: int
    """Fraction lost since the previous report, in 1/256 (0..255)."""
    cumulative_lost: int
    """Packets lost since the start (signed 24 bits: duplicates can make it negative)."""
    highest_sequence: int
    """Extended highest sequence number received (cycles << 16 | seq)."""
    jitter: int
    """Interarrival jitter in RTP timestamp units."""
    lsr: int
    """Middle 32 bits of the last SR's NTP timestamp from this source (0: none yet)."""
    dlsr: int
    """Delay since that SR, in 1/65536 s."""


class SenderReport(NamedTuple):
    ssrc: int
    ntp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


class ReceiverReport(NamedTuple):
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


class Bye(NamedTuple):
    ssrcs: tuple[int, ...]
    reason: str = ""


class SourceDescription(NamedTuple):
    ssrc: int
    cname: str | None


class RtcpCompound(NamedTuple):
    """What a compound RTCP packet says; packet types the relay does not use are only counted."""

    sender_reports: tuple[SenderReport, ...] = ()
    receiver_reports: tuple[ReceiverReport, ...] = ()
    source_descriptions: tuple[SourceDescription, ...] = ()
    byes: tuple[Bye, ...] = ()
    other_packets: int = 0


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be 0..4294967295, got {value}")


def _check_blocks(reports: Sequence[ReportBlock]) -> list[RtcpReceiverInfo]:
    """Range-check report blocks (aiortc's struct.pack would fail without naming the field)."""
    if len(reports) > MAX_REPORT_BLOCKS:
        raise ValueError(f"reports: at most {MAX_REPORT_BLOCKS} report blocks per packet, got {len(reports)}")
    out = []
    for r in reports:
        _check_u32("report ssrc", r.ssrc)
        if not 0 <= r.fraction_lost <= 255:
            raise ValueError(f"fraction_lost must be 0..255, got {r.fraction_lost}")
        if not -0x800000 <= r.cumulative_lost <= 0x7FFFFF:
            raise ValueError(f"cumulative_lost must be -8388608..8388607, got {r.cumulative_lost}")
        for name in ("highest_sequence", "jitter", "lsr", "dlsr"):
            _check_u32(name, getattr(r, name))
        out.append(
            RtcpReceiverInfo(
                ssrc=r.ssrc,
                fraction_lost=r.fraction_lost,
                packets_lost=r.cumulative_lost,
                highest_sequence=r.highest_sequence,
                jitter=r.jitter,
                lsr=r.lsr,
                dlsr=r.dlsr,
            )
        )
    return out


def build_sr(
    ssrc: int,
    ntp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    """A sender report, serialized by aiortc (sent once per report interval, off the per-packet path).

    Counts wrap at 32 bits as RFC 3550 says; the other fields are range-checked here by name.
    """
    _check_u32("ssrc", ssrc)
    _check_u32("rtp_timestamp", rtp_timestamp)
    if not 0 <= ntp <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"ntp must be a 64-bit unsigned value, got {ntp}")
    sender_info = RtcpSenderInfo(
        ntp_timestamp=ntp,
        rtp_timestamp=rtp_timestamp,
        packet_count=packet_count & 0xFFFFFFFF,
        octet_count=octet_count & 0xFFFFFFFF,
    )
    return bytes(RtcpSrPacket(ssrc=ssrc, sender_info=sender_info, reports=_check_blocks(reports)))


def build_rr(ssrc: int, reports: Sequence[ReportBlock] = ()) -> bytes:
    """A receiver report, serialized by aiortc (off the per-packet path); fields range-checked by name."""
    _check_u32("ssrc", ssrc)
    return bytes(RtcpRrPacket(ssrc=ssrc, reports=_check_blocks(reports)))


def build_sdes(chunks: Sequence[SourceDescription]) -> bytes:
    """SDES with one CNAME item per chunk (the only item WebRTC needs).

    Hand-written because aiortc's RtcpSdesPacket pads once per packet, not per chunk (RFC 3550 6.5),
    and adds a word when the CNAME length is 1 mod 4: using it would change what the relay sends.
    """
    if not 1 <= len(chunks) <= 31:
        raise ValueError(f"SDES chunks: 1..31, got {len(chunks)}")
    body = bytearray()
    for chunk in chunks:
        _check_u32("sdes ssrc", chunk.ssrc)
        body += _U32.pack(chunk.ssrc)
        if chunk.cname is not None:
            cname = chunk.cname.encode("utf-8")
            if not 1 <= len(cname) <= 255:
                raise ValueError(f"cname must be 1..255 bytes of UTF-8, got {len(cname)}")
            body += bytes((SDES_CNAME, len(cname))) + cname
        body += b"\x00" * (4 - len(body) % 4)  # null item terminator, padded to a word
    length = (4 + len(body)) // 4 - 1
    return _COMMON.pack(0x80 | len(chunks), RTCP_SDES, length) + bytes(body)


def build_bye(ssrcs: Sequence[int], reason: str = "") -> bytes:
    """BYE; hand-written because aiortc's RtcpByePacket has no reason field."""
    if not 1 <= len(ssrcs) <= 31:
        raise ValueError(f"BYE ssrcs: 1..31, got {len(ssrcs)}")
    body = bytearray()
    for s in ssrcs:
        _check_u32("bye ssrc", s)
        body += _U32.pack(s)
    if reason:
        encoded = reason.encode("utf-8")
        if len(encoded) > 255:
            raise ValueError(f"BYE reason must be at most 255 bytes of UTF-8, got {len(encoded)}")
        body += bytes((len(encoded),)) + encoded
        body += b"\x00" * (-len(body) % 4)
    length = (4 + len(body)) // 4 - 1
    return _COMMON.pack(0x80 | len(ssrcs), RTCP_BYE, length) + bytes(body)


def _parse_blocks(data: bytes, offset: int, count: int, end: int) -> tuple[ReportBlock, ...]:
    if offset + count * 24 > end:
        raise ValueError(f"RTCP: {count} report blocks do not fit the packet length")
    blocks = []
    for i in range(count):
        ssrc, lost_word, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, offset + 24 * i)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def parse_rtcp(data: bytes) -> RtcpCompound:
    """Parse an (unprotected) compound RTCP packet; raise ValueError naming what is malformed.

    Runs for every SRTCP datagram the fast path receives, so it stays hand-written: it is faster than
    aiortc's RtcpPacket.parse (docs/benchmarks.md, "Media parsers: ours vs aiortc"), accepts padding and
    profile-specific extensions, and names the malformed field.
    """
    srs: list[SenderReport] = []
    rrs: list[ReceiverReport] = []
    sdes: list[SourceDescription] = []
    byes: list[Bye] = []
    other = 0
    pos = 0
    size = len(data)
    if size < 4:
        raise ValueError(f"RTCP: length {size} is below the 4-byte header")
    while pos < size:  # each step advances by at least 4 bytes
        if pos + 4 > size:
            raise ValueError(f"RTCP: {size - pos} trailing bytes at offset {pos}")
        b0, packet_type, words = _COMMON.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise ValueError(f"RTCP: version {b0 >> 6} at offset {pos}, expected 2")
        end = pos + 4 * (words + 1)
        if end > size:
            raise ValueError(
                f"RTCP: packet at offset {pos} claims {4 * (words + 1)} bytes, {size - pos} left"
            )
        count = b0 & 0x1F
        body_end = end
        if b0 & 0x20:
            padding = data[end - 1]
            if padding == 0 or padding > end - pos - 4:
                raise ValueError(f"RTCP: bad padding count {padding} at offset {pos}")
            body_end -= padding
        if packet_type == RTCP_SR:
            if pos + 28 > body_end:
                raise ValueError(f"RTCP SR at offset {pos} is shorter than 28 bytes")
            ssrc, ntp_hi, ntp_lo, rtp_ts, packets, octets = _SR_BODY.unpack_from(data, pos + 4)
            blocks = _parse_blocks(data, pos + 28, count, body_end)
            srs.append(SenderReport(ssrc, (ntp_hi << 32) | ntp_lo, rtp_ts, packets, octets, blocks))
        elif packet_type == RTCP_RR:
            if pos + 8 > body_end:
                raise ValueError(f"RTCP RR at offset {pos} is shorter than 8 bytes")
            (ssrc,) = _U32.unpack_from(data, pos + 4)
            rrs.append(ReceiverReport(ssrc, _parse_blocks(data, pos + 8, count, body_end)))
        elif packet_type == RTCP_SDES:
            sdes.extend(_parse_sdes(data, pos + 4, count, body_end))
        elif packet_type == RTCP_BYE:
            if pos + 4 + 4 * count > body_end:
                raise ValueError(f"RTCP BYE at offset {pos}: {count} SSRCs do not fit")
            ssrcs = tuple(_U32.unpack_from(data, pos + 4 + 4 * i)[0] for i in range(count))
            reason = ""
            r = pos + 4 + 4 * count
            if r < body_end:
                n = data[r]
                reason = data[r + 1 : min(r + 1 + n, body_end)].decode("utf-8", "replace")
            byes.append(Bye(ssrcs, reason))
        else:
            other += 1
        pos = end
    return RtcpCompound(tuple(srs), tuple(rrs), tuple(sdes), tuple(byes), other)


def _parse_sdes(data: bytes, pos: int, count: int, end: int) -> list[SourceDescription]:
    out: list[SourceDescription] = []
    for _ in range(count):
        if pos + 4 > end:
            raise ValueError("RTCP SDES: chunk runs past the packet")
        (ssrc,) = _U32.unpack_from(data, pos)
        pos += 4
        cname: str | None = None
        while pos < end:  # items; each step consumes at least one byte
            item = data[pos]
            if item == 0:
                pos += 1
                break
            if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                raise ValueError("RTCP SDES: item runs past the packet")
            n = data[pos + 1]
            if item == SDES_CNAME:
                cname = data[pos + 2 : pos + 2 + n].decode("utf-8", "replace")
            pos += 2 + n
        pos += -pos % 4
        out.append(SourceDescription(ssrc, cname))
    return out


# --- reception statistics -----------------------------------------------------------------------

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100


class _Report:
    """RFC 3550 A.3 arithmetic over a source's counters, shared by the Python and the C-backed state."""

    __slots__ = ()
    base_seq: int
    max_seq: int
    cycles: int
    received: int
    received_prior: int
    expected_prior: int
    jitter: float
    clock_rate: int
    last_sr_ntp: int
    last_sr_arrival_ns: int

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost, clamped to the 24-bit signed field of a report block."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.clock_rate

    def record_sender_report(self, ntp: int, arrival_ns: int) -> None:
        self.last_sr_ntp = ntp  # type: ignore[misc]  # subclasses give the slots
        self.last_sr_arrival_ns = arrival_ns  # type: ignore[misc]

    def report_block(self, ssrc: int, now_ns: int) -> ReportBlock:
        """The next report block; advances the interval used for the fraction lost (A.3)."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected  # type: ignore[misc]  # subclasses give the slots
        received_interval = self.received - self.received_prior
        self.received_prior = self.received  # type: ignore[misc]
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lsr = dlsr = 0
        if self.last_sr_arrival_ns:
            lsr = ntp_middle32(self.last_sr_ntp)
            dlsr = min(0xFFFFFFFF, max(0, (now_ns - self.last_sr_arrival_ns) * 65536 // 1_000_000_000))
        return ReportBlock(
            ssrc, fraction, self.lost, self.extended_max & 0xFFFFFFFF, int(self.jitter), lsr, dlsr
        )


class ReceptionStats(_Report):
    """Per-source receive state for one SSRC: RFC 3550 A.1 sequence tracking, A.3 loss, A.8 jitter.

    ``update`` runs once per packet, so it is plain integer arithmetic on slots. No probation: the
    packets are SRTP-authenticated, so a "new source" cannot be noise.
    """

    __slots__ = (
        "bad_seq",
        "base_seq",
        "clock_rate",
        "cycles",
        "expected_prior",
        "jitter",
        "last_sr_arrival_ns",
        "last_sr_ntp",
        "last_transit",
        "max_seq",
        "received",
        "received_prior",
    )

    def __init__(self, clock_rate: int, first_sequence: int) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        self.clock_rate = clock_rate
        self.jitter = 0.0
        self.last_transit: int | None = None
        self.last_sr_ntp = 0
        self.last_sr_arrival_ns = 0
        self._init_seq(first_sequence)

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update(self, seq: int, timestamp: int, arrival_ns: int) -> bool:
        """Account one packet; False when it was taken as a stray (a big jump not yet confirmed)."""
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.received == 0 and seq == self.base_seq:
            pass  # the first packet
        elif udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                self._init_seq(seq)  # two sequential packets after a jump: the source restarted
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted but not moving max_seq
        self.received += 1
        # A.8: transit difference in RTP units, taken modulo 2^32 so timestamp wrap is harmless.
        transit = (arrival_ns * self.clock_rate // 1_000_000_000 - timestamp) & 0xFFFFFFFF
        last = self.last_transit
        self.last_transit = transit
        if last is not None:
            d = ((transit - last + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if d < 0:
                d = -d
            self.jitter += (d - self.jitter) / 16.0
        return True


def _field(name: str) -> Any:
    """A property over one field of the C struct (``sr_rx_stats``)."""
    return property(lambda self: getattr(self.struct, name), lambda self, v: setattr(self.struct, name, v))


class NativeReceptionStats(_Report):
    """``ReceptionStats`` whose counters live in a C struct (relay/media/native ``sr_rx_stats``): the one
    copy both the per-batch C path and the Python path update, so RTCP reports read one state."""

    __slots__ = ("_update", "last_sr_arrival_ns", "last_sr_ntp", "struct")

    def __init__(self, struct: Any, update: Callable[[Any, int, int, int], int]) -> None:
        self.struct = struct
        self._update = update
        self.last_sr_ntp = 0
        self.last_sr_arrival_ns = 0

    base_seq = _field("base_seq")
    max_seq = _field("max_seq")
    bad_seq = _field("bad_seq")
    cycles = _field("cycles")
    received = _field("received")
    received_prior = _field("received_prior")
    expected_prior = _field("expected_prior")
    jitter = _field("jitter")
    clock_rate = _field("clock_rate")

    @property
    def last_transit(self) -> int | None:
        value = int(self.struct.last_transit)
        return None if value < 0 else value

    def update(self, seq: int, timestamp: int, arrival_ns: int) -> bool:
        """As ``ReceptionStats.update``, in C (fastpath.c ``sr_rx_update``)."""
        return bool(self._update(self.struct, seq, timestamp, arrival_ns))
