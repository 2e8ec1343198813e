"""Opus forwarding between sessions, without decoding: publications, subscriptions and the per-packet path.

A publisher session's fast path hands each unprotected RTP packet to :meth:`Inbound.on_packet`, which
finds the publication by SSRC and gives the packet to every subscription; a subscription rewrites SSRC
and payload type (those of the subscriber's outbound stream), shifts the sequence number by a fixed
offset (so the publisher's gaps stay visible to the subscriber's jitter buffer) and sends on the
subscriber's fast path. Timestamps pass unchanged on a transceiver's first source. When a transceiver
that has already played something gets another source (tracks/update, or a pull after the old source
ended), the subscriber sees one stream go on: the same SSRC, the next sequence number, and a timestamp
advanced by the wall-clock time since the last packet sent, in whole 20 ms frames (at least one). A
clock that followed the wall clock keeps the receiver's jitter estimate and playout delay where they
were; advancing by one frame after a long gap would look like a delay spike and grow its buffer.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from splitrelay.bench.stats import percentile
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import OutboundStream

DWELL_SAMPLES = 1 << 16
OPUS_FRAME_TICKS = 960  # 20 ms at 48 kHz: the unit of the timestamp step across a source switch


class DwellRecorder:
    """The last ``DWELL_SAMPLES`` forwarding dwell times (arrival at the emulator to send), in ns."""

    __slots__ = ("count", "samples")

    def __init__(self) -> None:
        self.samples = array("q", bytes(8 * DWELL_SAMPLES))
        self.count = 0

    def record(self, dwell_ns: int) -> None:
        self.samples[self.count & (DWELL_SAMPLES - 1)] = dwell_ns
        self.count += 1

    def percentiles(self, *quantiles: float) -> tuple[float | None, ...]:
        """Dwell in ms at each quantile (0..1) over the retained samples; None when there are none."""
        kept = self.samples[: min(self.count, DWELL_SAMPLES)].tolist()
        values = (percentile(kept, q * 100) for q in quantiles)  # the benchmarks' one definition
        return tuple(None if v is None else v / 1e6 for v in values)

    def reset(self) -> None:
        self.count = 0


@dataclass(frozen=True, slots=True)
class ForwardingStats:
    packets_in: int
    packets_forwarded: int
    packets_unrouted: int
    """Received on a session but matching no publication (unknown SSRC, closed track)."""
    send_failures: int
    dwell_p50_ms: float | None
    dwell_p99_ms: float | None
    dwell_samples: int


class Publication:
    """A track a session publishes (location local): where its packets come from and who gets them."""

    __slots__ = (
        "active",
        "last_media",
        "mid",
        "packets",
        "session_id",
        "ssrcs",
        "subscriptions",
        "track_name",
    )

    def __init__(self, session_id: str, track_name: str, mid: str, now: float) -> None:
        self.session_id = session_id
        self.track_name = track_name
        self.mid = mid
        self.ssrcs: tuple[int, ...] = ()
        self.subscriptions: list[Subscription] = []
        self.last_media = now
        self.packets = 0
        self.active = True


class Subscription:
    """One subscriber transceiver (session, mid) playing one publication."""

    __slots__ = ("mid", "packets", "publication", "seq_offset", "session_id", "stream", "ts_offset")

    def __init__(self, session_id: str, mid: str, publication: Publication) -> None:
        self.session_id = session_id
        self.mid = mid
        self.publication = publication
        self.stream: OutboundStream | None = None
        self.seq_offset: int | None = None
        self.ts_offset = 0
        self.packets = 0

    def switch_to(self, publication: Publication) -> None:
        """Play another source on the same transceiver: numbering and clock continue where they were."""
        self.publication = publication
        self.seq_offset = None

    def forward(self, packet: RtpPacket) -> bool:
        stream = self.stream
        if stream is None:
            return False
        seq_offset = self.seq_offset
        if seq_offset is None:
            seq_offset = self._continue(stream, packet)
        sequence = (packet.sequence + seq_offset) & 0xFFFF
        timestamp = (packet.timestamp + self.ts_offset) & 0xFFFFFFFF
        if not stream.send(
            packet.payload,
            timestamp,
            marker=packet.marker,
            sequence=sequence,
            audio_level=packet.audio_level,
            voice=packet.voice,
        ):
            return False
        self.packets += 1
        return True

    def _continue(self, stream: OutboundStream, packet: RtpPacket) -> int:
        """The first packet of a source: number on from the stream, and on a played stream move the
        clock on by the wall-clock gap (see the module docstring). Returns the sequence offset."""
        seq_offset = self.seq_offset = (stream.sequence - packet.sequence) & 0xFFFF
        if not stream.packets:
            self.ts_offset = 0
            return seq_offset
        gap_ns = time.perf_counter_ns() - stream.last_send_ns
        frames = max(1, round(gap_ns * stream.clock_rate / (1e9 * OPUS_FRAME_TICKS)))
        self.ts_offset = (stream.last_timestamp + frames * OPUS_FRAME_TICKS - packet.timestamp) & 0xFFFFFFFF
        return seq_offset


class Forwarder:
    """Counters and dwell shared by every session of one emulator."""

    __slots__ = ("dwell", "packets_forwarded", "packets_in", "packets_unrouted", "send_failures")

    def __init__(self) -> None:
        self.dwell = DwellRecorder()
        self.packets_in = 0
        self.packets_forwarded = 0
        self.packets_unrouted = 0
        self.send_failures = 0

    def reset(self) -> None:
        """Start counting afresh (a benchmark between scenarios)."""
        self.dwell.reset()
        self.packets_in = self.packets_forwarded = self.packets_unrouted = self.send_failures = 0

    def stats(self) -> ForwardingStats:
        p50, p99 = self.dwell.percentiles(0.5, 0.99)
        return ForwardingStats(
            packets_in=self.packets_in,
            packets_forwarded=self.packets_forwarded,
            packets_unrouted=self.packets_unrouted,
            send_failures=self.send_failures,
            dwell_p50_ms=p50,
            dwell_p99_ms=p99,
            dwell_samples=min(self.dwell.count, DWELL_SAMPLES),
        )


class Inbound:
    """The on_packet callback of one session's fast path: SSRC -> publication -> subscriptions."""

    __slots__ = ("_by_ssrc", "_clock", "_forwarder", "_publications")

    def __init__(self, forwarder: Forwarder, clock: Callable[[], float] = time.monotonic) -> None:
        self._forwarder = forwarder
        self._by_ssrc: dict[int, Publication] = {}
        self._publications: list[Publication] = []
        self._clock = clock

    def set_publications(self, publications: list[Publication]) -> None:
        """Route by the SSRCs each publication's m-section announced (after every negotiation)."""
        self._publications = [p for p in publications if p.active]
        self._by_ssrc = {ssrc: p for p in self._publications for ssrc in p.ssrcs}

    def on_packet(self, packet: RtpPacket) -> None:
        forwarder = self._forwarder
        forwarder.packets_in += 1
        publication = self._by_ssrc.get(packet.ssrc)
        if publication is None:
            publication = self._learn(packet.ssrc)
            if publication is None:
                forwarder.packets_unrouted += 1
                return
        if not publication.active:
            forwarder.packets_unrouted += 1
            return
        publication.last_media = self._clock()
        publication.packets += 1
        arrival = packet.arrival_ns
        for subscription in publication.subscriptions:
            if subscription.forward(packet):
                forwarder.packets_forwarded += 1
                forwarder.dwell.record(time.perf_counter_ns() - arrival)
            elif subscription.stream is not None:
                forwarder.send_failures += 1

    def _learn(self, ssrc: int) -> Publication | None:
        """An SDP without a=ssrc (MID-only senders): with one publication lacking SSRCs, it is that one."""
        unknown = [p for p in self._publications if not p.ssrcs]
        if len(unknown) != 1:
            return None
        publication = unknown[0]
        publication.ssrcs = (ssrc,)
        self._by_ssrc[ssrc] = publication
        return publication
