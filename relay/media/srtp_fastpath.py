"""The SRTP fast path: Opus RTP in and out of a connected aiortc peer without aiortc's media stack.

aiortc's audio path adds 80 ms of jitter buffer (280 ms after one loss) and decodes every frame; here
aiortc keeps ICE and DTLS, and this module takes the negotiated SRTP sessions and the ICE socket:
each inbound packet is unprotected, parsed and handed to a callback on arrival; outbound frames become
our own RTP packets. It also sends the RTCP reports (SR/RR/SDES) and reads the peer's, for loss,
jitter and round-trip time. The relay and the SFU emulator share it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pylibsrtp
from aiortc import RTCPeerConnection

from splitrelay.relay.media import aiortc_internals, native
from splitrelay.relay.media.aiortc_internals import Address, SrtpLink
from splitrelay.relay.media.consent import ConsentFreshness
from splitrelay.relay.media.impair import Impairment, ImpairStage
from splitrelay.relay.media.peer import negotiated_streams
from splitrelay.relay.media.rtcp import (
    MAX_REPORT_BLOCKS,
    NativeReceptionStats,
    ReceptionStats,
    ReportBlock,
    SourceDescription,
    build_bye,
    build_rr,
    build_sdes,
    build_sr,
    ntp_middle32,
    ntp_now,
    parse_rtcp,
)
from splitrelay.relay.media.rtp import RtpPacket, one_byte_extensions
from splitrelay.relay.media.sdp import StreamParams
from splitrelay.relay.media.shared_port import arrival_ns

logger = logging.getLogger(__name__)

OnPacket = Callable[[RtpPacket], object]
OnBye = Callable[[int], object]

_SR_MEMORY = 16  # SRs remembered for RTT (LSR -> send time); reports echo one of the last few

OWN_CONSENT_ENV = "SPLITRELAY_OWN_CONSENT"
"""``0``: leave consent freshness to aioice (the A/B of relay/media/consent.py)."""


def _own_consent_default() -> bool:
    return os.environ.get(OWN_CONSENT_ENV, "1") != "0"


class _ImpairedTransport:
    """What the fast path sends through when its outbound leg is impaired (sendto only)."""

    def __init__(self, stage: ImpairStage) -> None:
        self._stage = stage

    def sendto(self, data: bytes, addr: Address) -> None:
        self._stage(data, addr)


@dataclass(frozen=True)
class FastPathConfig:
    rtcp_interval: float = 2.5
    """Mean seconds between our RTCP reports (each wait is randomised to 0.5-1.5 times this)."""
    max_inbound_sources: int = 8
    """SSRCs tracked at once; packets from further ones are dropped and counted."""
    max_payload: int = 1200
    """Largest payload ``send`` accepts, in bytes: keeps the datagram under a 1280-byte path MTU."""
    bye_on_close: bool = True
    max_rtcp_reports: int = 1_000_000
    """Bound on the report loop (at 2.5 s, about a month)."""
    impair_out: Impairment | None = None
    """Impair what this end sends (SRTP and SRTCP; ICE and DTLS untouched): relay/media/impair.py."""
    impair_in: Impairment | None = None
    """Impair what this end receives, before decryption."""
    own_consent: bool = field(default_factory=_own_consent_default)
    """Answer and send RFC 7675 consent checks here (relay/media/consent.py) instead of in aioice."""

    def __post_init__(self) -> None:
        if not 0.05 <= self.rtcp_interval <= 60:
            raise ValueError(f"rtcp_interval must be 0.05..60 seconds, got {self.rtcp_interval}")
        if not 1 <= self.max_inbound_sources <= MAX_REPORT_BLOCKS:
            raise ValueError(
                f"max_inbound_sources must be 1..{MAX_REPORT_BLOCKS}, got {self.max_inbound_sources}"
            )
        if not 1 <= self.max_payload <= 1400:
            raise ValueError(f"max_payload must be 1..1400 bytes, got {self.max_payload}")
        if self.max_rtcp_reports < 1:
            raise ValueError(f"max_rtcp_reports must be at least 1, got {self.max_rtcp_reports}")


@dataclass(frozen=True, slots=True)
class FastPathStats:
    """A snapshot of one fast path's counters and the RTCP view of both directions."""

    packets_in: int
    bytes_in: int
    """Payload bytes received (Opus frames)."""
    packets_out: int
    bytes_out: int
    """Payload bytes sent."""
    lost_in: int
    """Inbound packets lost so far, by our own sequence tracking (RFC 3550 A.3)."""
    jitter_in_ms: float
    """Inbound interarrival jitter we measure (RFC 3550 A.8)."""
    lost_out: int
    """Our packets the peer reports lost (its last receiver report)."""
    fraction_lost_out: float
    """Fraction of our packets lost in the peer's last report interval (0..1)."""
    jitter_out_ms: float
    """Jitter the peer reports for our stream."""
    rtt_ms: float | None
    """Round trip from the peer's report blocks against our sender reports; None until measured."""
    undecryptable: int
    """SRTP/SRTCP packets that failed authentication or replay checks."""
    malformed: int
    dropped: int
    """Packets with a payload type we did not negotiate or from too many sources."""
    send_failures: int
    rtcp_in: int
    rtcp_out: int
    callback_errors: int


class _StreamState:
    """An outbound stream's sequence and sender-report counts in Python (``sr_stream``'s fields, by name)."""

    __slots__ = ("last_send_ns", "last_timestamp", "mid_acked", "octets", "packets", "sequence")


send_clock: Callable[[], int] = time.perf_counter_ns
"""When a packet left, for the sender report's RTP clock (tests set a fake one; the C path is given it)."""


class OutboundStream:
    """One negotiated SSRC we send on: own sequence numbers, counts for the sender report."""

    __slots__ = (
        "_ext_cache",
        "_fast_path",
        "audio_level_id",
        "clock_rate",
        "cname",
        "mid",
        "mid_ext_id",
        "payload_type",
        "remote_fraction_lost",
        "remote_jitter",
        "remote_lost",
        "ssrc",
        "state",
    )

    def __init__(self, fast_path: SrtpFastPath, params: StreamParams) -> None:
        self._fast_path = fast_path
        self.ssrc = params.ssrc
        self.payload_type = params.payload_type
        self.clock_rate = params.clock_rate
        self.cname = params.cname
        self.mid = params.mid
        self.audio_level_id = params.audio_level_id
        # A one-byte extension element holds at most 16 bytes; a longer MID is not sent at all.
        self.mid_ext_id = params.mid_ext_id if 0 < len(params.mid.encode()) <= 16 else None
        # The sequence and sender-report counts: in the C ``sr_stream`` the outbound C path shares when it
        # runs (one copy), else in a Python object with the same fields.
        shared = getattr(fast_path, "native_slot", None) is not None  # the outbound C path may run
        st: Any = (native.stream_state() if shared else None) or _StreamState()
        self.state: Any = st
        # Until the peer reports on us, say which m-section we are (as browsers do); then stop.
        st.mid_acked = self.mid_ext_id is None
        st.sequence = random.randrange(0x8000)  # lower half: no early wrap, as aiortc and browsers do
        st.packets = 0
        st.octets = 0
        st.last_timestamp = 0
        st.last_send_ns = 0
        self.remote_lost = 0
        self.remote_fraction_lost = 0
        self.remote_jitter = 0
        self._ext_cache: dict[int, bytes] = {}

    def send(
        self,
        payload: bytes,
        timestamp: int,
        *,
        marker: bool = False,
        sequence: int | None = None,
        audio_level: int | None = None,
        voice: bool = False,
    ) -> bool:
        """Packetize, protect and send one frame; False (counted) when the connection is gone.

        ``timestamp`` is the RTP timestamp (the caller owns the timeline); ``sequence`` overrides our
        own numbering, for forwarding that keeps the sender's gaps; ``marker`` starts a talk spurt.
        """
        fp = self._fast_path
        size = len(payload)
        if not 0 < size <= fp.max_payload:
            raise ValueError(f"payload: length must be 1..{fp.max_payload} bytes, got {size}")
        if not 0 <= timestamp <= 0xFFFFFFFF:
            raise ValueError(f"timestamp must be 0..4294967295, got {timestamp}")
        if sequence is None:
            sequence = self.sequence
        elif not 0 <= sequence <= 0xFFFF:
            raise ValueError(f"sequence must be 0..65535, got {sequence}")
        if audio_level is not None and not 0 <= audio_level <= 127:
            raise ValueError(f"audio_level must be 0..127 (-dBov), got {audio_level}")
        if fp.closed or fp.transport_closing():
            fp.send_failures += 1
            return False
        extension = (
            self._extension(audio_level, voice) if (self.audio_level_id or not self.mid_acked) else b""
        )
        protected = fp.codec.protect_rtp(
            self.payload_type, sequence, timestamp, self.ssrc, marker, extension, payload
        )
        if protected is None:
            fp.send_failures += 1
            return False
        fp.transport.sendto(protected, fp.remote_addr)
        st = self.state
        st.sequence = (sequence + 1) & 0xFFFF
        st.packets += 1
        st.octets += size
        st.last_timestamp = timestamp
        st.last_send_ns = send_clock()
        return True

    @property
    def native_state(self) -> Any:
        """The C ``sr_stream`` holding the sequence and counts (for the outbound C path), or None."""
        return None if isinstance(self.state, _StreamState) else self.state

    # The fields the outbound C path shares, as the attributes they were.

    @property
    def sequence(self) -> int:
        return int(self.state.sequence)

    @sequence.setter
    def sequence(self, value: int) -> None:
        self.state.sequence = value

    @property
    def packets(self) -> int:
        return int(self.state.packets)

    @packets.setter
    def packets(self, value: int) -> None:
        self.state.packets = value

    @property
    def octets(self) -> int:
        return int(self.state.octets)

    @octets.setter
    def octets(self, value: int) -> None:
        self.state.octets = value

    @property
    def last_timestamp(self) -> int:
        return int(self.state.last_timestamp)

    @last_timestamp.setter
    def last_timestamp(self, value: int) -> None:
        self.state.last_timestamp = value

    @property
    def last_send_ns(self) -> int:
        return int(self.state.last_send_ns)

    @last_send_ns.setter
    def last_send_ns(self, value: int) -> None:
        self.state.last_send_ns = value

    @property
    def mid_acked(self) -> bool:
        return bool(self.state.mid_acked)

    @mid_acked.setter
    def mid_acked(self, value: bool) -> None:
        self.state.mid_acked = 1 if value else 0

    def unacked_extension(self) -> bytes:
        """The extension block a frame without a level carries while the MID is not acknowledged (what C
        adds then; once acknowledged, nothing): ``send``'s choice, for the outbound C path."""
        if self.mid_ext_id is None:
            return b""
        key = 0
        block = self._ext_cache.get(key)
        if block is None:
            block = self._ext_cache[key] = one_byte_extensions([(self.mid_ext_id, self.mid.encode())])
        return block

    def _extension(self, audio_level: int | None, voice: bool) -> bytes:
        """The header extension block, cached per (level, voice, mid) so a send costs a dict lookup."""
        key = (
            ((audio_level + 1 if audio_level is not None else 0) << 2) | (2 if voice else 0) | self.mid_acked
        )
        block = self._ext_cache.get(key)
        if block is None:
            elements: list[tuple[int, bytes]] = []
            if self.mid_ext_id is not None and not self.mid_acked:
                elements.append((self.mid_ext_id, self.mid.encode()))
            if self.audio_level_id is not None and audio_level is not None:
                elements.append((self.audio_level_id, bytes(((0x80 if voice else 0) | audio_level,))))
            block = one_byte_extensions(elements) if elements else b""
            self._ext_cache[key] = block  # at most 129 * 2 * 2 entries
        return block

    def rtp_timestamp_at(self, now_ns: int) -> int:
        """Our RTP clock at ``now_ns``, extrapolated from the last packet sent (for the SR)."""
        elapsed = max(0, now_ns - self.last_send_ns)
        return (self.last_timestamp + elapsed * self.clock_rate // 1_000_000_000) & 0xFFFFFFFF


class SrtpFastPath:
    """Owns a connected peer's SRTP traffic: see the module docstring. Build it with ``attach``."""

    def __init__(
        self,
        link: SrtpLink,
        streams: Sequence[StreamParams],
        on_packet: OnPacket,
        config: FastPathConfig | None = None,
        on_bye: OnBye | None = None,
    ) -> None:
        self.config = config or FastPathConfig()
        if not streams:
            raise ValueError("streams: at least one negotiated audio stream is needed")
        self.rx = link.rx
        self.tx = link.tx
        # SRTP + RTP header in one C call per packet when built (relay/media/native), else pylibsrtp + rtp.py.
        self.codec: native.Codec = native.codec(link.rx, link.tx)
        self.transport: Any = link.transport
        self._link_transport = link.transport
        self.impair_out: ImpairStage | None = None
        self.impair_in: ImpairStage | None = None
        if self.config.impair_out is not None and self.config.impair_out.active:
            self.impair_out = ImpairStage(self.config.impair_out, self._send_impaired)
            self.transport = _ImpairedTransport(self.impair_out)
        if self.config.impair_in is not None and self.config.impair_in.active:
            self.impair_in = ImpairStage(self.config.impair_in, self._media_received)
        self.remote_addr: Address = link.remote_addr
        self._protocol = link.protocol
        self._is_closing: Callable[[], bool] = getattr(link.transport, "is_closing", lambda: False)
        self.max_payload = self.config.max_payload
        self._on_packet = on_packet
        self._on_bye = on_bye
        # The per-batch C path (relay/media/native NativeInbound) when the shared port runs it: the call's
        # slot; the owner (relay/call.py) enables it. Not with an impaired inbound leg (its stage decides).
        inbound = getattr(link.transport, "native_inbound", None)
        self.native_slot: native.InboundSlot | None = None
        if inbound is not None and isinstance(self.codec, native.NativeCodec) and self.impair_in is None:
            self.native_slot = inbound.open_slot()
        self.on_fold: Callable[[int, int, int], object] | None = None
        """Told (packets, bytes, sent to inference) the C path counted, when they are folded in."""
        self.outbound_streams: tuple[OutboundStream, ...] = ()
        self.update_streams(streams)
        self._inbound: dict[int, ReceptionStats | NativeReceptionStats] = {}
        self._sr_sent: dict[int, int] = {}
        self.closed = False
        self.packets_in = 0
        self.bytes_in = 0
        self.undecryptable = 0
        self.malformed = 0
        self.dropped = 0
        self.send_failures = 0
        self.rtcp_in = 0
        self.rtcp_out = 0
        self.callback_errors = 0
        self.rtt_ms: float | None = None
        self._handler: aiortc_internals.DatagramHandler = (
            self._datagram_received
        )  # one bound method, to unhook
        self._original = aiortc_internals.hook_datagrams(self._protocol, self._handler)
        self._set_media_claim: Callable[[Any], None] | None = getattr(link.transport, "set_media_claim", None)
        if self._set_media_claim is not None:  # a call on the shared port (relay/media/shared_port.py)
            self._set_media_claim(self._claim)
        self._connection = link.connection
        self.consent: ConsentFreshness | None = None
        """Consent freshness once taken from aioice (None: aioice runs it)."""
        self._consent_closing: asyncio.Task[None] | None = None
        credentials = (
            aiortc_internals.take_consent(link.connection)
            if self.config.own_consent and link.connection is not None
            else None
        )
        if credentials is not None:
            self.consent = ConsentFreshness(
                credentials, link.remote_addr, self._link_transport.sendto, self._consent_expired
            )
        for data in aiortc_internals.take_queued_media(link):
            self._datagram_received(data, self.remote_addr)
        self._rtcp_reports_left = self.config.max_rtcp_reports
        self._rtcp_timer: asyncio.TimerHandle | None = None
        """Our next report (a loop timer, not a task: nothing per call wakes but the report itself)."""
        self._schedule_rtcp()

    @classmethod
    def attach(
        cls,
        pc: RTCPeerConnection,
        on_packet: OnPacket,
        config: FastPathConfig | None = None,
        on_bye: OnBye | None = None,
    ) -> SrtpFastPath:
        """Take over the media of a connected, negotiated peer whose aiortc RTCP was silenced."""
        if pc.connectionState != "connected":
            raise RuntimeError(f"peer connection is {pc.connectionState!r}: attach once it is 'connected'")
        for transceiver in pc.getTransceivers():
            if not aiortc_internals.rtcp_silenced(transceiver):
                raise ValueError(
                    "aiortc's own RTCP is running on this peer: build it with VoicePeer (own_rtcp=True) "
                    "or call peer.silence_aiortc_rtcp(transceiver) before it connects"
                )
        link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(pc))
        return cls(link, negotiated_streams(pc), on_packet, config, on_bye)

    def update_streams(self, streams: Sequence[StreamParams]) -> None:
        """Take a renegotiated stream set in place (no re-attach, so no packet is missed meanwhile).

        Outbound streams whose (mid, SSRC) did not change are kept, with their sequence numbers and
        sender-report counters; new ones are added, removed ones dropped.
        """
        if not streams:
            raise ValueError("streams: at least one negotiated audio stream is needed")
        kept = {(o.mid, o.ssrc): o for o in self.outbound_streams}
        self.outbound_streams = tuple(
            kept.get((s.mid, s.ssrc)) or OutboundStream(self, s) for s in streams if s.sends
        )
        self._outbound_by_ssrc = {o.ssrc: o for o in self.outbound_streams}
        self._reporter_ssrc = streams[0].ssrc
        self._cname = streams[0].cname
        receiving = [s for s in streams if s.receives]
        self._receive_pts = frozenset(s.payload_type for s in receiving)
        self._audio_level_id = next((s.audio_level_id for s in receiving if s.audio_level_id), None)
        self._clock_rate = receiving[0].clock_rate if receiving else streams[0].clock_rate
        slot = getattr(self, "native_slot", None)
        if slot is not None and isinstance(self.codec, native.NativeCodec):
            slot.configure(self.codec.rx_pointer, self._receive_pts, self._audio_level_id)

    # --- outbound ------------------------------------------------------------------------------

    def send(
        self,
        payload: bytes,
        timestamp: int,
        *,
        marker: bool = False,
        sequence: int | None = None,
        audio_level: int | None = None,
        voice: bool = False,
    ) -> bool:
        """Send on the first outbound stream (a voice call has exactly one); see OutboundStream.send."""
        if not self.outbound_streams:
            raise RuntimeError("no outbound stream was negotiated (the peer does not receive audio)")
        return self.outbound_streams[0].send(
            payload, timestamp, marker=marker, sequence=sequence, audio_level=audio_level, voice=voice
        )

    def outbound(self, mid: str) -> OutboundStream:
        for stream in self.outbound_streams:
            if stream.mid == mid:
                return stream
        raise KeyError(f"mid {mid!r}: no outbound stream (have {[s.mid for s in self.outbound_streams]})")

    def transport_closing(self) -> bool:
        return self._is_closing()

    @property
    def impaired_out(self) -> bool:
        """True when what this end sends goes through an impairment stage (not the transport directly)."""
        return self.impair_out is not None

    # --- inbound -------------------------------------------------------------------------------

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        """Take SRTP and SRTCP (RFC 7983: first byte 128-191) and our consent checks; the rest of STUN and
        DTLS goes on to aioice/aiortc."""
        if not data or not 127 < data[0] < 192:
            consent = self.consent
            if consent is None or data[:1] not in (b"\x00", b"\x01") or not consent.handle(data, addr):
                self._original(data, addr)
            return
        if self.impair_in is not None:
            self.impair_in(data, addr)
            return
        self._media_received(data, addr)

    def _claim(self, data: bytes, addr: Address) -> bool:
        """What the shared port's demultiplexer offers SRTP/SRTCP through when several calls share the
        datagram's source address (demux.MediaClaim): take it if it authenticates under our keys."""
        if self.impair_in is not None:  # impaired: what arrives is judged later, after the stage
            self.impair_in(data, addr)
            return True
        return self._media_received(data, addr, trial=True)

    def _consent_expired(self) -> None:
        """No answer to our consent checks for as long as aioice allows: close the connection as it would."""
        logger.info("consent to send to %s:%d expired: closing the ICE connection", *self.remote_addr[:2])
        if self._connection is not None:
            self._consent_closing = aiortc_internals.expire_consent(self._connection)

    def _send_impaired(self, data: bytes, addr: Address) -> None:
        if not self.closed:
            self._link_transport.sendto(data, addr)

    def _media_received(self, data: bytes, addr: Address, *, trial: bool = False) -> bool:
        """Unprotect and handle one SRTP or SRTCP datagram; False when it did not authenticate under our
        keys (counted as undecryptable unless ``trial``: the demultiplexer is only asking)."""
        if self.closed:
            return False
        arrival = arrival_ns()  # the batched shared port's receive time, else now
        if len(data) > 1 and 191 < data[1] < 224:
            return self._srtcp_received(data, arrival, trial=trial)
        packet = self.codec.unprotect_parse(data, self._audio_level_id, arrival)
        if isinstance(packet, int):
            if packet != native.UNDECRYPTABLE:
                self.malformed += 1
                return True
            if not trial:
                self.undecryptable += 1
            return False
        if packet.payload_type not in self._receive_pts:
            self.dropped += 1
            return True
        stats = self._inbound.get(packet.ssrc)
        slot = self.native_slot
        if stats is None:
            if len(self._inbound) >= self.config.max_inbound_sources:
                self.dropped += 1
                return True
            stats = self._inbound[packet.ssrc] = self._reception_stats(packet.sequence)
        stats.update(packet.sequence, packet.timestamp, arrival)
        if slot is not None and isinstance(stats, NativeReceptionStats):
            slot.hint(addr, packet.ssrc, stats.struct)  # the next packets of this flow may stay in C
        self.packets_in += 1
        self.bytes_in += len(packet.payload)
        try:
            self._on_packet(packet)
        except Exception:
            self.callback_errors += 1
            if self.callback_errors == 1:  # once per fast path: never a log line per packet
                logger.exception("fast path on_packet callback failed (further failures only counted)")
        return True

    def _reception_stats(self, first_sequence: int) -> ReceptionStats | NativeReceptionStats:
        slot = self.native_slot
        if slot is None:
            return ReceptionStats(self._clock_rate, first_sequence)
        struct = slot.reception_stats(self._clock_rate, first_sequence)
        return NativeReceptionStats(struct, native.rx_update())

    def fold(self) -> None:
        """Take the counts the per-batch C path made into this fast path's (and ``on_fold``'s)."""
        slot = self.native_slot
        if slot is None:
            return
        packets, size, to_inference, malformed, callback_errors = slot.take_counts()
        if not (packets or malformed or callback_errors):
            return
        self.packets_in += packets
        self.bytes_in += size
        self.malformed += malformed
        if callback_errors and not self.callback_errors:
            logger.error("fast path on_packet callback failed in the C path (further failures only counted)")
        self.callback_errors += callback_errors
        if self.on_fold is not None:
            self.on_fold(packets, size, to_inference)

    def _srtcp_received(self, data: bytes, arrival: int, *, trial: bool = False) -> bool:
        try:
            plain = self.rx.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError):  # ValueError: longer than pylibsrtp's 1500-byte buffer
            if not trial:
                self.undecryptable += 1
            return False
        try:
            compound = parse_rtcp(plain)
        except ValueError:
            self.malformed += 1
            return True
        self.rtcp_in += 1
        for sr in compound.sender_reports:
            stats = self._inbound.get(sr.ssrc)
            if stats is not None:
                stats.record_sender_report(sr.ntp, arrival)
            self._read_blocks(sr.reports, arrival)
        for rr in compound.receiver_reports:
            self._read_blocks(rr.reports, arrival)
        if self._on_bye is not None:
            for bye in compound.byes:
                for ssrc in bye.ssrcs:
                    if ssrc in self._inbound:
                        self._on_bye(ssrc)
        return True

    def _read_blocks(self, blocks: Sequence[ReportBlock], arrival: int) -> None:
        for block in blocks:
            stream = self._outbound_by_ssrc.get(block.ssrc)
            if stream is None:
                continue
            stream.mid_acked = True
            stream.remote_lost = block.cumulative_lost
            stream.remote_fraction_lost = block.fraction_lost
            stream.remote_jitter = block.jitter
            sent_ns = self._sr_sent.get(block.lsr) if block.lsr else None
            if sent_ns is not None:
                # RFC 3550 6.4.1, on our monotonic clock: arrival - SR send time - peer's hold time.
                rtt_ns = arrival - sent_ns - block.dlsr * 1_000_000_000 // 65536
                if rtt_ns > -1_000_000:  # DLSR has 15 us resolution: a tiny negative is a zero RTT
                    self.rtt_ms = max(0, rtt_ns) / 1e6

    # --- RTCP out ------------------------------------------------------------------------------

    def _schedule_rtcp(self) -> None:
        """Arm the next report, 0.5-1.5 times the interval from now (RFC 3550 6.2), while any are left."""
        if self._rtcp_reports_left <= 0:
            self._rtcp_timer = None
            return
        self._rtcp_reports_left -= 1
        delay = self.config.rtcp_interval * (0.5 + random.random())
        self._rtcp_timer = asyncio.get_running_loop().call_later(delay, self._rtcp_due)

    def _rtcp_due(self) -> None:
        self._rtcp_timer = None
        if self.closed or self.transport_closing():
            return
        self.send_rtcp()
        self._schedule_rtcp()

    def send_rtcp(self, *, bye: bool = False) -> bool:
        """Send one compound report now: an SR per stream we sent on (else an RR), SDES, optional BYE."""
        if self.closed or self.transport_closing():
            return False
        now_ns = time.perf_counter_ns()
        ntp = ntp_now()
        blocks = [stats.report_block(ssrc, now_ns) for ssrc, stats in self._inbound.items()]
        parts: list[bytes] = []
        chunks: list[SourceDescription] = []
        for stream in self.outbound_streams:
            if stream.packets:
                parts.append(
                    build_sr(
                        stream.ssrc,
                        ntp,
                        stream.rtp_timestamp_at(now_ns),
                        stream.packets,
                        stream.octets,
                        blocks if not parts else (),
                    )
                )
                chunks.append(SourceDescription(stream.ssrc, stream.cname))
        if parts:
            self._sr_sent[ntp_middle32(ntp)] = now_ns
            if len(self._sr_sent) > _SR_MEMORY:
                del self._sr_sent[next(iter(self._sr_sent))]
        else:
            parts.append(build_rr(self._reporter_ssrc, blocks))
            chunks.append(SourceDescription(self._reporter_ssrc, self._cname))
        # One SDES packet per SSRC: aiortc misparses multi-chunk SDES (valid RFC 3550), browsers take both.
        parts.extend(build_sdes([chunk]) for chunk in chunks)
        if bye and self.outbound_streams:
            parts.append(build_bye([s.ssrc for s in self.outbound_streams]))
        try:
            protected = self.tx.protect_rtcp(b"".join(parts))
        except pylibsrtp.Error:
            self.send_failures += 1
            return False
        self.transport.sendto(protected, self.remote_addr)
        self.rtcp_out += 1
        return True

    # --- state ---------------------------------------------------------------------------------

    def stats(self) -> FastPathStats:
        self.fold()
        inbound = list(self._inbound.values())
        out = self.outbound_streams
        return FastPathStats(
            packets_in=self.packets_in,
            bytes_in=self.bytes_in,
            packets_out=sum(s.packets for s in out),
            bytes_out=sum(s.octets for s in out),
            lost_in=sum(s.lost for s in inbound),
            jitter_in_ms=max((s.jitter_ms for s in inbound), default=0.0),
            lost_out=sum(s.remote_lost for s in out),
            fraction_lost_out=max((s.remote_fraction_lost for s in out), default=0) / 256,
            jitter_out_ms=max((s.remote_jitter * 1000 / s.clock_rate for s in out), default=0.0),
            rtt_ms=self.rtt_ms,
            undecryptable=self.undecryptable,
            malformed=self.malformed,
            dropped=self.dropped,
            send_failures=self.send_failures,
            rtcp_in=self.rtcp_in,
            rtcp_out=self.rtcp_out,
            callback_errors=self.callback_errors,
        )

    def inbound_stats(self, ssrc: int) -> ReceptionStats | NativeReceptionStats | None:
        return self._inbound.get(ssrc)

    async def close(self) -> None:
        """Say BYE (if configured), give the socket back to aioice and end the report task. Idempotent."""
        if self.closed:
            return
        if self.config.bye_on_close:
            self.send_rtcp(bye=True)
        self.closed = True
        if self.native_slot is not None:
            self.fold()
            self.native_slot.close()
        aiortc_internals.unhook_datagrams(self._protocol, self._handler)
        if self.consent is not None:
            expired = self.consent.expired
            self.consent.close()
            if not expired and self._connection is not None:  # the call may go on without us
                aiortc_internals.give_back_consent(self._connection)
        if self._set_media_claim is not None:
            self._set_media_claim(None)
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
            self._rtcp_timer = None
