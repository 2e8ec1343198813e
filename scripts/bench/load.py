"""Load-generator worker of `splitrelay bench relay`: N callers (relay mode) or N bare UDP flows (baseline).

Relay mode: each caller is a real aiortc VoicePeer attached through the relay's signed control API.
Its media is made cheap to send and to check, so one core can drive more calls than the relay carries:

- Out: every SRTP packet the run will send (warm-up + window) is built and protected with the call's
  real SRTP session during set-up; on schedule a send is one ``sendto`` of a ready datagram.
- Back: echoes are not unprotected. The RTP header is in the clear, and each of the FRAMES Opus frames
  has its own length (CBR at 20-40 kbps), so header length and datagram length name the frame an echo
  carries; the matcher pairs it with the oldest pending send of that frame (echoes come back in order),
  which gives loss and the round trip per packet. The relay renumbers what it sends (its own SSRC,
  sequence and timeline), so the caller's (SSRC, sequence) cannot be looked up; the length can.
- Proof: one echo in SAMPLE_EVERY is unprotected with the real SRTP session (authentication and replay
  check) and its payload compared with the frame the length named; the report gives both rates.
- RTCP: the fast path's own reports and SRTCP handling stay (sender reports every RTCP_EVERY frames
  with the true counts, staggered over the callers); its reports carry no reception blocks, since
  the echoes are not fed to its receive statistics.

Shared socket (``--load-socket shared``, the default): every caller of the worker on ONE UDP socket, as
a Cloudflare POP's sessions reach the relay from one SFU address; their ICE and DTLS run through the
relay's own shared port and demultiplexer. Each 1 ms slot's packets leave in one ``sendmmsg`` from a
packet store; echoes are logged per ``recvmmsg`` batch by SSRC and length (``EchoTap``) and matched after
the run by the same matcher and counter (``settle_shared``). ``per-call``: a socket per caller, as above.

Baseline mode: each flow sends a datagram the size of the callers' SRTP packet to a bare UDP echo and,
when it comes back, one the size of the wire protocol's AUDIO_OUT: the echo then moves as many
datagrams of the same sizes as the relay does, and the round trip crosses it twice, as it crosses the
relay twice.

A child process of the benchmark (``splitrelay bench load-worker``); JSON lines both ways. stdout:
``progress`` (relay mode), ``ready``, ``result``; stdin: ``{"cmd": "run", "t0": ..., "rtt_path": ...}``
then ``{"cmd": "stop"}`` (or EOF). The schedule (warm-up, duration) is fixed at start, since the packets
are built before ``ready``. The signing key comes from $SPLITRELAY_RELAY_SIGNING_KEY, never from the
command line.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import json
import math
import os
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from splitrelay.bench.stats import percentile
from splitrelay.inference import wire

SIGNING_KEY_ENV = "SPLITRELAY_RELAY_SIGNING_KEY"
FRAME_S = 0.02
FRAME_SAMPLES = 960
SLOTS = 20  # sends are staggered over 20 slots of 1 ms per 20 ms tick
FRAMES = 50  # distinct Opus frames (one second of audio) cycled by every caller
FRAME_BYTES_MIN = 50  # frame i is FRAME_BYTES_MIN + i bytes: 50..99 (CBR 20..39.6 kbps), one length each
NOISE_DBFS = -50.0  # room noise: real-size Opus frames, below the relay's barge-in threshold (-40 dBov)
MAX_PREPARED = 20_000_000  # packets built ahead by one worker (about 3 GB): calls x seconds x 50
MAX_PENDING = 500  # echoes awaited per caller (10 s): older ones count as lost
MATCH_SEARCH = 60  # how far into the pending queue an echo is looked for
SAMPLE_EVERY = 47  # one echo in 47 is unprotected (prime to FRAMES, so the samples cover every frame)
RTCP_EVERY = 125  # frames between a caller's sender reports: 2.5 s, the fast path's default interval
DRAIN_S = 2.0  # after the last send, echoes still count for this long
SETUP_TIMEOUT_S = 30.0
CLOSE_CONCURRENCY = 50
RTP_HEADER = 12
PACKET_STRIDE = 160  # bytes per prepared packet in the shared load's store (they are at most ~140)
RECV_SIZE_LIMIT = 4096  # relay/media/native RECV_SLOT: the longest datagram the shared port delivers
CLOSED_CHECK_EVERY = 50  # ticks (1 s) between checks for callers whose transport closed (shared load)
ANNOUNCE_AFTER_S = 0.25  # after a shared-socket caller connects, before its first report
SHARED_SEND_BATCH = 256  # datagrams per sendmmsg on the shared socket (a slot holds calls / 20)
SHARED_RECV_BATCH = 64  # datagrams per recvmmsg on the shared socket
SHARED_RECV_CALLS_PER_TURN = 8  # recvmmsg calls per loop turn on the shared socket
LoadSocket = Literal["per-call", "shared"]
LOAD_SOCKETS: tuple[LoadSocket, ...] = ("shared", "per-call")


@dataclass(frozen=True)
class SrtpProfile:
    """One DTLS-SRTP profile the callers offer alone (``--srtp-profile``), so the relay must use it."""

    name: str
    """The bench's name for it (``--srtp-profile``)."""
    openssl: str
    """OpenSSL's name, what ``aiortc_internals.restrict_srtp_profiles`` takes."""
    tag_bytes: int
    """Its SRTP authentication tag: the bytes a packet grows by, and how a call proves which it uses."""


SRTP_PROFILES: dict[str, SrtpProfile] = {
    # aiortc's own first choice, what every run before ``--srtp-profile`` negotiated
    "gcm": SrtpProfile("gcm", "SRTP_AEAD_AES_256_GCM", 16),
    # what an SFU may pick instead: about twice libsrtp's instructions per packet (docs/benchmarks.md)
    "cm80": SrtpProfile("cm80", "SRTP_AES128_CM_SHA1_80", 10),
}
DEFAULT_SRTP_PROFILE = "gcm"


def srtp_profile(name: str) -> SrtpProfile:
    """The profile called ``name``; the error lists the choices."""
    profile = SRTP_PROFILES.get(name)
    if profile is None:
        raise ValueError(f"--srtp-profile: must be one of {', '.join(SRTP_PROFILES)}, got {name!r}")
    return profile


def srtp_tag_bytes(packet_bytes: int, header_bytes: int, payload_bytes: int) -> int:
    """The SRTP tag of a protected packet: what protect added to header + payload."""
    return packet_bytes - header_bytes - payload_bytes


def check_srtp_profile(profile: SrtpProfile, tag_bytes: int) -> None:
    """A call protects with the profile asked for, or the run stops here: each profile has its own tag
    length (the two GCM key sizes share one, and the callers offer exactly one profile)."""
    if tag_bytes != profile.tag_bytes:
        raise RuntimeError(
            f"SRTP profile: asked for {profile.openssl} ({profile.tag_bytes}-byte tag), but the call "
            f"protects with a {tag_bytes}-byte tag: the relay negotiated another profile"
        )


_FLOW_HEADER = struct.Struct("!BI")  # baseline datagram: leg (1 = caller-sized, 2 = wire-sized), seq


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


# --- the audio ----------------------------------------------------------------------------------------


def noise_frames(count: int = FRAMES, level_dbfs: float = NOISE_DBFS) -> list[tuple[bytes, int]]:
    """``count`` 20 ms Opus frames of white noise at ``level_dbfs`` RMS, frame i exactly
    FRAME_BYTES_MIN + i bytes long, with their RFC 6464 level.

    Noise rather than a tone: it codes to full-size frames, as speech does, while its level says "not
    speech", so the relay forwards it without triggering barge-in. Each frame comes from its own CBR
    encoder, which is what makes the lengths distinct: an echo's length names its frame without
    decrypting it.
    """
    import av

    samples = FRAME_SAMPLES
    primed = 4  # frames fed to an encoder before the one kept: past its look-ahead and start-up
    rng = np.random.default_rng(20261101)
    noise = rng.normal(0.0, 32768 * 10 ** (level_dbfs / 20), samples * (count + primed)).clip(-32768, 32767)
    pcm16 = noise.astype(np.int16)
    out: list[tuple[bytes, int]] = []
    for i in range(count):
        size = FRAME_BYTES_MIN + i
        encoder: Any = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = 48_000
        encoder.layout = "mono"
        encoder.format = "s16"
        encoder.bit_rate = size * 8 * 50  # CBR: exactly `size` bytes per 20 ms frame
        encoder.options = {"application": "voip", "vbr": "off"}
        encoder.open()
        packets: list[bytes] = []
        for j in range(primed + 1):
            chunk = pcm16[(i + j) * samples : (i + j + 1) * samples]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            frame.sample_rate = 48_000
            frame.pts = j * samples
            packets.extend(bytes(p) for p in encoder.encode(frame))
        if not packets or len(packets[-1]) != size:
            got = len(packets[-1]) if packets else 0
            raise RuntimeError(f"libopus CBR: frame {i} is {got} bytes, {size} expected")
        pcm = pcm16[(i + primed) * samples : (i + primed + 1) * samples].astype(np.float64) / 32768.0
        dbov = 10 * math.log10(max(float(np.mean(pcm * pcm)), 1e-13))
        out.append((packets[-1], min(127, max(0, round(-dbov)))))
    return out


# --- the schedule -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When flow i sends frame k: at t0 + k * 20 ms + (slot of i) ms, until warm-up + duration.

    Time is counted in whole 1 ms slots, so which packets fall in the window, and how many packets
    each flow sends (what relay mode builds in advance), is exact, not subject to float rounding.
    """

    flows: int
    warmup: float
    duration: float

    @property
    def slot_s(self) -> float:
        return FRAME_S / SLOTS

    @property
    def window_slot(self) -> int:
        return round(self.warmup / self.slot_s)

    @property
    def end_slot(self) -> int:
        return round((self.warmup + self.duration) / self.slot_s)

    def slot_of(self, i: int) -> int:
        return i * SLOTS // self.flows

    def frames_of(self, i: int) -> int:
        """Frames flow i sends over the whole run: every k with k * SLOTS + slot < end_slot."""
        return max(0, -(-(self.end_slot - self.slot_of(i)) // SLOTS))


class Flow:
    """One call or flow as the schedule drives it: sender-side counts here, receiver-side in subclasses."""

    sent = 0
    sent_window = 0
    send_failures = 0

    def send(self, k: int, in_window: bool) -> None:
        raise NotImplementedError

    def received(self) -> tuple[int, int]:
        """(echoes of window packets received, echoes that matched no packet)."""
        raise NotImplementedError

    def stop_counting(self) -> None:
        """The drain is over: later echoes no longer count."""
        raise NotImplementedError


class EchoMatcher:
    """Pairs each echo with the frame it answers, by frame index and in send order; counts what never
    came back.

    Echoes come back in order, one per frame (the relay forwards, the inference echoes), so the echo of a
    frame settles every older frame still pending: those were lost. Frame indices repeat every FRAMES
    frames, so an echo is looked for among the first MATCH_SEARCH pending frames only.
    """

    __slots__ = ("_pending", "_rtts", "counting", "lost", "received_window", "unmatched")

    def __init__(self, rtts: array.array[int]) -> None:
        self._pending: deque[tuple[int, int, bool]] = deque()  # (frame index, send ns, in window)
        self._rtts = rtts
        self.counting = True
        self.lost = 0
        self.received_window = 0
        self.unmatched = 0

    def sent(self, index: int, sent_ns: int, in_window: bool) -> None:
        pending = self._pending
        pending.append((index, sent_ns, in_window))
        if len(pending) > MAX_PENDING:
            pending.popleft()
            self.lost += 1

    def echo(self, index: int | None, arrival_ns: int) -> None:
        """One echo of frame ``index`` (None: a frame we never sent)."""
        if index is None:
            self.unmatched += 1
            return
        if not self.counting:
            return
        pending = self._pending
        for position, entry in enumerate(pending):
            if entry[0] == index:
                break
            if position >= MATCH_SEARCH:
                self.unmatched += 1
                return
        else:
            self.unmatched += 1
            return
        for _ in range(position):  # older frames never came back
            pending.popleft()
            self.lost += 1
        _, sent_ns, in_window = pending.popleft()
        if in_window:
            self.received_window += 1
            self._rtts.append(arrival_ns - sent_ns)


@dataclass
class RunResult:
    sent: int
    expected: int
    sent_window: int
    received_window: int
    unmatched: int
    send_failures: int
    lateness_p99_ms: float
    lateness_max_ms: float
    extra: dict[str, Any]

    def event(self) -> dict[str, Any]:
        return {"event": "result", **self.__dict__}


Lateness = list[tuple[int, float]]
"""(slot index since t0, seconds late) of every slot that sent."""


SlotSender = Callable[[int, int, bool], object]
"""``send_slot(slot, k, in_window)``: send frame k of every flow of a slot at once (``SharedLoad``)."""


async def drive(
    flows: Sequence[Flow], schedule: Schedule, t0: float, send_slot: SlotSender | None = None
) -> tuple[int, Lateness]:
    """Send every flow's frames on ``schedule`` from ``t0``.

    Absolute schedule: a late slot sends at once (a catch-up burst) rather than skipping, so the count
    sent is exact and lateness is measured. ``send_slot`` sends a slot's frames in one go instead of
    one ``Flow.send`` each. Returns (frames expected, lateness of each slot).
    """
    groups: list[list[Flow]] = [[] for _ in range(SLOTS)]
    for i, flow in enumerate(flows):
        groups[schedule.slot_of(i)].append(flow)
    busy = [(s, g) for s, g in enumerate(groups) if g]
    slot_s = schedule.slot_s
    window_slot = schedule.window_slot
    end_slot = schedule.end_slot
    lateness: Lateness = []
    expected = 0
    for k in range(math.ceil(end_slot / SLOTS)):  # bounded: one pass per 20 ms tick
        for slot, group in busy:
            index = k * SLOTS + slot
            if index >= end_slot:
                break
            due = t0 + index * slot_s
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append((index, max(0.0, time.monotonic() - due)))
            in_window = index >= window_slot
            if send_slot is not None:
                send_slot(slot, k, in_window)
            else:
                for flow in group:
                    flow.send(k, in_window)
            expected += len(group)
    return expected, lateness


def lateness_report(lateness: Lateness, schedule: Schedule) -> dict[str, Any]:
    """The warm-up's lateness and the run's worst slots (seconds since t0, ms late): start-up stalls show
    here without counting against the window."""
    warmup = [late for index, late in lateness if index < schedule.window_slot]
    worst = sorted(lateness, key=lambda entry: -entry[1])[:5]
    return {
        "lateness_warmup_p99_ms": round((percentile(warmup, 99) or 0.0) * 1000, 3),
        "lateness_worst": [
            [round(index * schedule.slot_s, 3), round(late * 1000, 1)] for index, late in worst
        ],
    }


def summarize(
    flows: Sequence[Flow], expected: int, lateness: Lateness, extra: dict[str, Any], schedule: Schedule
) -> RunResult:
    """Counts over the flows; lateness p99 and max over the window's slots (the warm-up's go in extra)."""
    late = [late for index, late in lateness if index >= schedule.window_slot] or [0.0]
    return RunResult(
        sent=sum(f.sent for f in flows),
        expected=expected,
        sent_window=sum(f.sent_window for f in flows),
        received_window=sum(f.received()[0] for f in flows),
        unmatched=sum(f.received()[1] for f in flows),
        send_failures=sum(f.send_failures for f in flows),
        lateness_p99_ms=round((percentile(late, 99) or 0.0) * 1000, 3),
        lateness_max_ms=round(max(late) * 1000, 3),
        extra={**extra, **lateness_report(lateness, schedule)},
    )


# --- relay mode: WebRTC callers -----------------------------------------------------------------------


def rtp_header_length(data: bytes) -> int:
    """Bytes of the (clear) RTP header of an SRTP packet, CSRCs and header extension included;
    0 when the datagram is too short to hold the header it announces."""
    size = len(data)
    if size < RTP_HEADER:
        return 0
    first = data[0]
    end = RTP_HEADER + 4 * (first & 0x0F)
    if first & 0x10:
        if end + 4 > size:
            return 0
        end += 4 + 4 * ((data[end + 2] << 8) | data[end + 3])
    return end if end <= size else 0


class EchoCounter:
    """Names the frame of each SRTP echo from its clear header and its length, without decrypting it,
    and hands it to the matcher; unprotects one echo in SAMPLE_EVERY to prove the others genuine.

    ``tag_bytes`` is the SRTP authentication tag of the negotiated profile (10 for AES-CM/HMAC-SHA1-80,
    16 for AES-GCM): ciphertext is as long as the payload, so payload + tag names the frame.
    """

    __slots__ = (
        "_frames",
        "_index_by_size",
        "_unprotect",
        "authentic",
        "echoes",
        "matched",
        "matcher",
        "samples",
    )

    def __init__(
        self,
        frames: Sequence[tuple[bytes, int]],
        tag_bytes: int,
        matcher: EchoMatcher,
        unprotect: Callable[[bytes], bytes],
    ) -> None:
        sizes = [len(payload) for payload, _ in frames]
        if len(set(sizes)) != len(sizes):
            raise ValueError("frames: every frame needs its own length, or an echo's length cannot name it")
        self._frames = frames
        self._index_by_size = {size + tag_bytes: i for i, size in enumerate(sizes)}
        self._unprotect = unprotect
        self.matcher = matcher
        self.echoes = 0
        self.samples = 0
        self.authentic = 0
        self.matched = 0

    def echo(self, data: bytes, arrival_ns: int) -> None:
        """One SRTP (not SRTCP) datagram from the relay."""
        index = self._index_by_size.get(len(data) - rtp_header_length(data))
        self.matcher.echo(index, arrival_ns)
        self.echoes += 1
        if self.echoes % SAMPLE_EVERY == 0:
            self.sample(data, index)

    @property
    def index_by_size(self) -> dict[int, int]:
        """Frame index by payload + tag length (what an echo's length names)."""
        return self._index_by_size

    def sample(self, data: bytes, index: int | None) -> None:
        """Unprotect with the call's SRTP session (authentication, replay check): genuine, and the frame
        its length named?"""
        import pylibsrtp

        from splitrelay.relay.media.rtp import parse_rtp

        self.samples += 1
        try:
            plain = self._unprotect(data)
        except pylibsrtp.Error:
            return
        self.authentic += 1
        with contextlib.suppress(ValueError):
            if index is not None and parse_rtp(plain).payload == self._frames[index][0]:
                self.matched += 1


class Caller(Flow):
    """A caller's peer, its ready-made SRTP packets and what it counts of the echoes.

    ``candidates`` None: the caller's ICE gathers its own loopback socket (``--load-socket per-call``);
    a shared-port policy puts it on the worker's one socket (``SharedLoad``).
    """

    def __init__(
        self,
        frames: list[tuple[bytes, int]],
        rtts: array.array[int],
        candidates: Any = None,
        profile: SrtpProfile | None = None,
    ) -> None:
        """``profile``: the one DTLS-SRTP profile this caller offers (None: aiortc's whole list)."""
        from splitrelay.relay.media import aiortc_internals
        from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
        from splitrelay.relay.media.srtp_fastpath import SrtpFastPath

        self.peer = VoicePeer(VoicePeerConfig(candidates=candidates or LOOPBACK))
        self.srtp_profile = profile
        if profile is not None:  # the transceiver exists; DTLS has not started
            aiortc_internals.restrict_srtp_profiles(self.peer.pc, (profile.openssl,))
        self.fast_path: SrtpFastPath | None = None
        self.matcher = EchoMatcher(rtts)
        self._frames = frames
        self._packets: list[bytes] = []
        self.echoes: EchoCounter | None = None  # built once the SRTP profile is known
        self._octets_per_cycle = sum(len(p) for p, _ in frames)
        self._rtcp_phase = 0
        self._sendto: Callable[..., object] = lambda data, addr: None
        self._closing: Callable[[], bool] = lambda: True
        self._remote: Any = None
        self._hooked: tuple[Any, Callable[[bytes, Any], None]] | None = None  # (ICE protocol, its handler)
        self.srtp_overhead = 0
        self.srtp_tag_bytes = 0
        """The tag its SRTP session adds (after prepare()): 16 for AES-GCM, 10 for AES-CM + HMAC-SHA1-80."""
        # RTP that reached the fast path's own handler, or came before prepare(): none expected.
        self.stray = 0
        self.prepared = 0
        """Packets built by prepare()."""
        self.remote_ssrcs: tuple[int, ...] = ()
        """The relay's SSRCs toward this caller (its answer's a=ssrc): how the shared socket routes echoes."""

    async def attach(self, http: Any, key: bytes, call_id: str, within: float) -> None:
        from splitrelay.contract.signing import sign_headers
        from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath

        offer = await self.peer.create_offer()
        body = json.dumps({"call_id": call_id, "mode": "direct", "offer": {"type": "offer", "sdp": offer}})
        content = body.encode()
        headers = {"content-type": "application/json", **sign_headers(key, "POST", "/v1/calls", content)}
        response = await http.post("/v1/calls", content=content, headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"attach {call_id}: HTTP {response.status_code}: {response.text[:300]}")
        await self.peer.accept_answer(response.json()["answer"]["sdp"])
        self.remote_ssrcs = self.peer.stream_params().remote_ssrcs
        await self.peer.wait_connected(within=within)
        # The fast path's own report timer is slowed to its maximum: send() paces the reports instead,
        # with the counts of what was really sent.
        self.fast_path = SrtpFastPath.attach(self.peer.pc, self._stray, FastPathConfig(rtcp_interval=60))
        self._hook()

    def _stray(self, _packet: object) -> None:
        self.stray += 1

    def _hook(self) -> None:
        """Put ``_datagram`` in front of the fast path's handler: RTP is counted here, SRTCP, STUN and DTLS
        go on to the fast path (and through it to aioice)."""
        from splitrelay.relay.media import aiortc_internals

        link = aiortc_internals.srtp_link(aiortc_internals.dtls_transport(self.peer.pc))
        handler = vars(link.protocol).get("datagram_received")
        if handler is None:
            raise RuntimeError("caller: the fast path did not hook the ICE socket")
        setattr(link.protocol, "datagram_received", self._datagram)  # noqa: B010 (shadows the method)
        self._hooked = (link.protocol, handler)

    def _unhook(self) -> None:
        if self._hooked is not None:
            protocol, handler = self._hooked
            if vars(protocol).get("datagram_received") == self._datagram:
                setattr(protocol, "datagram_received", handler)  # noqa: B010 (the fast path unhooks its own)
            self._hooked = None

    def prepare(self, count: int, rtcp_phase: int) -> None:
        """Build and protect the ``count`` RTP packets this caller will send, in sequence order.

        Exactly the packets that will be sent: SRTP must never protect two packets with the same
        sequence number, so the stream's counter moves past them.
        """
        from splitrelay.relay.media.rtp import audio_level_element, one_byte_extensions, pack_header

        fp = self.fast_path
        if fp is None:
            raise RuntimeError("caller: attach() before prepare()")
        if count < 1:
            raise ValueError(f"count: a caller sends at least one packet, got {count}")
        stream = fp.outbound_streams[0]
        level_id = stream.audio_level_id
        extensions = [
            one_byte_extensions([(level_id, audio_level_element(level, False))]) if level_id else b""
            for _, level in self._frames
        ]
        protect = fp.tx.protect
        seq0 = stream.sequence
        packets: list[bytes] = []
        for k in range(count):
            index = k % FRAMES
            header = pack_header(
                stream.payload_type,
                (seq0 + k) & 0xFFFF,
                (k * FRAME_SAMPLES) & 0xFFFFFFFF,
                stream.ssrc,
                False,
                bool(extensions[index]),
            )
            packets.append(protect(header + extensions[index] + self._frames[index][0]))
        stream.sequence = (seq0 + count) & 0xFFFF
        self._packets = packets
        self.prepared = count
        self._rtcp_phase = rtcp_phase % RTCP_EVERY
        payload0 = self._frames[0][0]
        tag = srtp_tag_bytes(len(packets[0]), RTP_HEADER + len(extensions[0]), len(payload0))
        if self.srtp_profile is not None:
            check_srtp_profile(self.srtp_profile, tag)
        self.srtp_tag_bytes = tag
        self.srtp_overhead = len(packets[0]) - len(payload0)
        self.echoes = EchoCounter(self._frames, tag, self.matcher, fp.rx.unprotect)
        transport = fp.transport
        self._sendto = transport.sendto
        self._remote = fp.remote_addr
        self._closing = fp.transport_closing

    def send(self, k: int, in_window: bool) -> None:
        if self._closing():
            self.send_failures += 1
            return
        now = time.perf_counter_ns()
        self._sendto(self._packets[k], self._remote)
        self.sent += 1
        if in_window:
            self.sent_window += 1
        self.matcher.sent(k % FRAMES, now, in_window)
        if k % RTCP_EVERY == self._rtcp_phase:
            self._report(k, now)

    def _report(self, k: int, now_ns: int) -> None:
        """A sender report with the true counts so far (k + 1 packets sent, their octets, timeline)."""
        fp = self.fast_path
        assert fp is not None
        stream = fp.outbound_streams[0]
        cycles, rest = divmod(k + 1, FRAMES)
        stream.packets = k + 1
        stream.octets = cycles * self._octets_per_cycle + sum(len(p) for p, _ in self._frames[:rest])
        stream.last_timestamp = (k * FRAME_SAMPLES) & 0xFFFFFFFF
        stream.last_send_ns = now_ns
        fp.send_rtcp()

    def _datagram(self, data: bytes, addr: Any) -> None:
        """Every datagram of the ICE socket: RTP echoes are counted here, the rest passes on."""
        if len(data) > RTP_HEADER and 127 < data[0] < 192 and not 191 < data[1] < 224:
            self.echo(data, time.perf_counter_ns())
            return
        assert self._hooked is not None
        self._hooked[1](data, addr)

    def echo(self, data: bytes, arrival_ns: int) -> None:
        """One SRTP echo from the relay (from the ICE socket, or from the shared socket's tap)."""
        echoes = self.echoes
        if echoes is None:  # an echo before prepare(): nothing was sent, so nothing can match
            self.stray += 1
            return
        echoes.echo(data, arrival_ns)

    @property
    def remote_addr(self) -> Any:
        """The relay's address for this call (after prepare())."""
        return self._remote

    def rtcp(self, data: bytes) -> None:
        """One SRTCP datagram from the relay, routed by the shared socket's tap: to the fast path."""
        if self._hooked is None:
            self.stray += 1
            return
        self._hooked[1](data, self._remote)

    def announce(self) -> None:
        """One receiver report now, from the SSRC the caller's audio will carry.

        On the shared socket every caller reaches the relay from one address, and the relay learns which
        call an SSRC belongs to from the first datagram its keys authenticate, trying its calls newest
        first: a report at set-up, when this call is the newest, costs one trial instead of a search
        over every call once a thousand callers start at the same moment.
        """
        fp = self.fast_path
        if fp is None:
            raise RuntimeError("caller: attach() before announce()")
        fp.send_rtcp()

    def received(self) -> tuple[int, int]:
        return self.matcher.received_window, self.matcher.unmatched

    def stop_counting(self) -> None:
        self.matcher.counting = False

    async def close(self) -> None:
        self._unhook()
        if self.fast_path is not None:
            await self.fast_path.close()
        await self.peer.close()


class EchoTap:
    """The shared socket's reader: ``recvmmsg`` batches (relay/media/native ``RecvBatch``) in which the
    relay's SRTP echoes are logged straight from the buffer with a few numpy operations per batch
    (caller by SSRC, frame by length, the batch's arrival time), SRTCP goes to its caller's fast path,
    and everything else (STUN, DTLS, an SSRC no caller knows) to the port's demultiplexer, in order.

    By SSRC rather than by address: a relay on one port reaches every caller from one address. The log
    is matched against the sends after the run (``SharedLoad.settle``) by the same ``EchoMatcher`` and
    ``EchoCounter`` as a caller on its own socket uses live: one in SAMPLE_EVERY logged echoes is kept
    whole and unprotected then, in each call's arrival order (so SRTP's replay check holds).
    """

    def __init__(self, fd: int, deliver: Callable[[bytes, Any], object], capacity: int) -> None:
        from splitrelay.relay.media import native

        self._recv = native.RecvBatch(fd, SHARED_RECV_BATCH)
        self._deliver = deliver
        self._names: dict[bytes, Any] = {}
        self.decisions = bytearray(SHARED_RECV_BATCH)
        """Per datagram of the last batch: 0 handled here, 1 for the demultiplexer."""
        self._decisions = np.frombuffer(self.decisions, dtype=np.uint8)
        self.receive_calls = 0
        self.errors = 0
        self.clock: Callable[[], int] = time.perf_counter_ns
        """A batch's arrival time (when ``recvmmsg`` returned)."""
        self._callers: dict[int, Caller] = {}
        self._ssrcs = np.zeros(0, dtype=np.uint32)  # sorted
        self._owners = np.zeros(0, dtype=np.int32)  # caller index of each sorted SSRC
        self._by_ssrc: dict[int, int] = {}
        self._frame_by_size = np.full(RECV_SIZE_LIMIT + 1, -1, dtype=np.int16)
        self._mem: np.ndarray[Any, Any] | None = None
        self._lengths: np.ndarray[Any, Any] | None = None
        self.log_caller = np.zeros(capacity, dtype=np.int32)
        self.log_frame = np.zeros(capacity, dtype=np.int16)
        self.log_arrival = np.zeros(capacity, dtype=np.int64)
        self.log_timestamp = np.zeros(capacity, dtype=np.uint32)
        """The echo's RTP timestamp: the relay's playout timeline (``pacing_lateness``)."""
        self.log_marker = np.zeros(capacity, dtype=np.bool_)
        """The echo's RTP marker: the relay started a new talk spurt (its timeline restarted) there."""
        self.logged = 0
        self.overflow = 0
        """Echoes past the log's capacity: counted, not matched (none expected: it holds every send)."""
        self.samples: list[tuple[int, int, bytes]] = []
        """(log position, caller index, datagram) of every SAMPLE_EVERY-th logged echo."""
        self.counting = True
        self.rtcp = 0

    def add(self, index: int, caller: Caller) -> None:
        """Route the relay's SSRCs toward caller ``index`` to it (before it sends, so before any echo):
        the log names it by ``index``."""
        if not caller.remote_ssrcs:
            raise RuntimeError("caller: the relay's answer announced no SSRC, so echoes cannot be routed")
        if caller.echoes is None:
            raise RuntimeError("caller: prepare() before the tap can name its frames")
        self._callers[index] = caller
        for ssrc in caller.remote_ssrcs:
            self._by_ssrc[ssrc] = index
        keys = sorted(self._by_ssrc)
        self._ssrcs = np.array(keys, dtype=np.uint32)
        self._owners = np.array([self._by_ssrc[k] for k in keys], dtype=np.int32)
        for size, frame in caller.echoes.index_by_size.items():
            known = int(self._frame_by_size[size])
            if known not in (-1, frame):  # every caller negotiated the same profile: one table
                raise RuntimeError(f"callers disagree on the frame of a {size}-byte payload + tag")
            self._frame_by_size[size] = frame

    def drain(self) -> None:
        """What the socket holds, within this turn's bound (the loop's reader on the port's fd)."""
        from splitrelay.inference.udp_recv import ICMP_ERRORS, sockaddr_address
        from splitrelay.relay.media.native import RECV_NAME_SLOT, RECV_SLOT

        recv, decisions, names, deliver = self._recv, self.decisions, self._names, self._deliver
        for _ in range(SHARED_RECV_CALLS_PER_TURN):
            n = recv.receive()
            self.receive_calls += 1
            if n <= 0:
                if n < 0:
                    self.errors += 1
                    if -n in ICMP_ERRORS:
                        continue  # an ICMP error took this call; datagrams may wait behind it
                break
            if self.run(recv, n, self.clock()) < n:
                lengths, name_lengths, mem, names_mem = (
                    recv.lengths,
                    recv.name_lengths,
                    recv.mem,
                    recv.names_mem,
                )
                for i in range(n):  # the rest, in arrival order
                    length = lengths[i]
                    if not decisions[i] or length < 0:
                        continue
                    at = i * RECV_NAME_SLOT
                    key = names_mem[at : at + name_lengths[i]]
                    addr = names.get(key)
                    if addr is None:
                        try:
                            addr = names[key] = sockaddr_address(key)
                        except ValueError:
                            self.errors += 1
                            continue
                    at = i * RECV_SLOT
                    deliver(mem[at : at + length], addr)
            if n < SHARED_RECV_BATCH:
                break

    def run(self, recv: Any, count: int, arrival_ns: int) -> int:
        """One batch ``recv`` (relay/media/native ``RecvBatch``) just read: how many were handled here."""
        mem, lengths = self._mem, self._lengths
        if mem is None or lengths is None:  # the reader's buffers live as long as the port
            from splitrelay.relay.media.native import RECV_SLOT

            batch = SHARED_RECV_BATCH
            mem = self._mem = np.frombuffer(recv.mem, dtype=np.uint8).reshape(batch, RECV_SLOT)
            lengths = self._lengths = np.frombuffer(recv.lengths, dtype=np.int32)
        rows = mem[:count]
        size = lengths[:count]
        b0 = rows[:, 0]
        media = (size > RTP_HEADER) & (b0 >= 128) & (b0 < 192)  # SRTP or SRTCP (RFC 7983), not cut
        b1 = rows[:, 1]
        rtcp = media & (b1 >= 192) & (b1 < 224)
        rtp = media & ~rtcp
        handled = 0
        decisions = self._decisions
        decisions[:count] = 1
        if rtp.any():
            at = np.flatnonzero(rtp)
            r = rows[at]
            ssrc = (
                (r[:, 8].astype(np.uint32) << 24)
                | (r[:, 9].astype(np.uint32) << 16)
                | (r[:, 10].astype(np.uint32) << 8)
                | r[:, 11]
            )
            known = self._ssrcs
            position = np.minimum(np.searchsorted(known, ssrc), max(len(known) - 1, 0))
            ours = known[position] == ssrc if len(known) else np.zeros(len(at), dtype=bool)
            at, r, position = at[ours], r[ours], position[ours]
            if len(at):
                first = r[:, 0].astype(np.int64)
                header = RTP_HEADER + 4 * (first & 0x0F)  # CSRCs, then the extension if X is set
                ext = (first & 0x10) != 0
                row = np.arange(len(at))
                word = np.minimum(header + 2, RECV_SIZE_LIMIT - 2)
                ext_bytes = 4 + 4 * ((r[row, word].astype(np.int64) << 8) | r[row, word + 1])
                header = header + np.where(ext, ext_bytes, 0)
                body = size[at].astype(np.int64) - header
                frame = np.where(
                    (body > 0) & (body <= RECV_SIZE_LIMIT),
                    self._frame_by_size[np.clip(body, 0, RECV_SIZE_LIMIT)],
                    -1,
                )
                decisions[at] = 0
                handled += len(at)
                if self.counting:
                    timestamp = (
                        (r[:, 4].astype(np.uint32) << 24)
                        | (r[:, 5].astype(np.uint32) << 16)
                        | (r[:, 6].astype(np.uint32) << 8)
                        | r[:, 7]
                    )
                    marker = r[:, 1] >= 128
                    self._log(self._owners[position], frame, arrival_ns, at, size, timestamp, marker)
        if rtcp.any():
            for i in np.flatnonzero(rtcp).tolist():
                data = bytes(rows[i, : size[i]])
                owner = self._by_ssrc.get(int.from_bytes(data[4:8], "big"))
                if owner is not None:
                    self.rtcp += 1
                    self._callers[owner].rtcp(data)
                    decisions[i] = 0
                    handled += 1
        return handled

    def _log(
        self,
        owners: np.ndarray[Any, Any],
        frames: np.ndarray[Any, Any],
        arrival_ns: int,
        at: np.ndarray[Any, Any],
        size: np.ndarray[Any, Any],
        timestamps: np.ndarray[Any, Any],
        markers: np.ndarray[Any, Any],
    ) -> None:
        n = len(owners)
        start = self.logged
        room = len(self.log_caller) - start
        if n > room:
            self.overflow += n - room
            n = room
        end = start + n
        self.log_caller[start:end] = owners[:n]
        self.log_frame[start:end] = frames[:n]
        self.log_arrival[start:end] = arrival_ns
        self.log_timestamp[start:end] = timestamps[:n]
        self.log_marker[start:end] = markers[:n]
        self.logged = end
        first = -(-start // SAMPLE_EVERY) * SAMPLE_EVERY  # the first log position due a sample
        mem = self._mem
        assert mem is not None
        for position in range(first, end, SAMPLE_EVERY):  # bounded: one per SAMPLE_EVERY echoes
            i = int(at[position - start])
            self.samples.append((position, int(owners[position - start]), bytes(mem[i, : size[i]])))


class _SlotSend:
    """One slot's callers as one ``sendmmsg``: the message vector is built once; each tick writes the
    tick's packet addresses and lengths into its iovecs with two numpy operations."""

    def __init__(self, ffi: Any, members: list[int], names: list[Any], store: PacketStore) -> None:
        n = len(members)
        self.members = members
        self.vec = ffi.new("struct mmsghdr[]", n)
        self.iov = ffi.new("struct iovec[]", n)
        for j, i in enumerate(members):
            hdr = self.vec[j].msg_hdr
            hdr.msg_iov = ffi.addressof(self.iov, j)
            hdr.msg_iovlen = 1
            hdr.msg_name = names[i]
            hdr.msg_namelen = len(names[i])
        self.iov_words = np.frombuffer(ffi.buffer(self.iov), dtype=np.uint64).reshape(n, 2)
        rows = np.array(members, dtype=np.uint64)
        self.base = np.uint64(store.address) + rows * np.uint64(store.row_bytes)
        self.lengths = store.lengths[members]
        self.stride = np.uint64(store.stride)

    def point(self, k: int) -> None:
        """Aim every iovec at its caller's packet k."""
        words = self.iov_words
        words[:, 0] = self.base + np.uint64(k) * self.stride
        words[:, 1] = self.lengths[:, k]


class PacketStore:
    """Every caller's prepared SRTP packets in one array (caller, frame, byte), so a slot's iovecs are
    a base address plus a stride; ``lengths[caller, frame]``."""

    def __init__(self, calls: int, frames: int) -> None:
        self.stride = PACKET_STRIDE
        self.packets = np.zeros((calls, frames, PACKET_STRIDE), dtype=np.uint8)
        self.lengths = np.zeros((calls, frames), dtype=np.uint64)
        self.address = int(self.packets.ctypes.data)
        self.row_bytes = frames * PACKET_STRIDE

    def put(self, row: int, packets: Sequence[bytes]) -> None:
        for k, packet in enumerate(packets):
            if len(packet) > self.stride:
                raise ValueError(f"a {len(packet)}-byte packet does not fit the {self.stride}-byte stride")
            self.packets[row, k, : len(packet)] = np.frombuffer(packet, dtype=np.uint8)
            self.lengths[row, k] = len(packet)


class SharedLoad:
    """Every caller of a worker on ONE UDP socket, as a Cloudflare POP's sessions reach a relay from one
    SFU address (SFU mode, the deploy default): the relay's own shared port and demultiplexer
    (relay/media/shared_port.py) do the callers' ICE and DTLS; a slot's packets leave in one
    ``sendmmsg`` straight from ``PacketStore``, and echoes arrive in ``recvmmsg`` batches that
    ``EchoTap`` logs. Loss and round trips are settled after the run from the two logs.
    """

    def __init__(self, port: Any, batch: Any, tap: EchoTap, schedule: Schedule) -> None:
        from splitrelay.inference.udp_batch import sendmmsg_binding
        from splitrelay.relay.media.peer import CandidatePolicy

        self.port = port
        self.batch = batch
        """The port's ``SendBatch``: the callers' control traffic (STUN, DTLS, SRTCP)."""
        self.tap = tap
        self.schedule = schedule
        self.policy = CandidatePolicy(addresses=(port.host,), shared_port=port)
        self.store = PacketStore(schedule.flows, schedule.frames_of(0))
        self.callers: list[Caller | None] = [None] * schedule.flows
        self.slot_ns = np.zeros((max(1, -(-schedule.end_slot // SLOTS)), SLOTS), dtype=np.int64)
        """When each (tick, slot)'s ``sendmmsg`` was made: every packet of it left at that time."""
        self.stopped: dict[int, int] = {}
        """Caller index -> the first frame not sent (its transport closed)."""
        self.queued = 0
        """Packets the socket could not take at once, sent in order through the port's queue."""
        self._ffi, self._libc = sendmmsg_binding()
        self._slots: list[_SlotSend | None] = [None] * SLOTS
        self._reports: list[list[list[int]]] = []
        self._remotes: list[Any] = []
        self._names: list[Any] = []
        self.lateness_ms = np.zeros(0, dtype=np.float64)
        """Pacing lateness of the window's echoes (``settle``; ``pacing_lateness``)."""

    @classmethod
    async def open(cls, schedule: Schedule, host: str = "127.0.0.1") -> SharedLoad:
        from splitrelay.inference.udp_batch import SendBatch
        from splitrelay.relay.media.shared_port import SharedUdpPort

        port = await SharedUdpPort.open(host, 0, batched=True)
        if not port.native or not sys.platform.startswith("linux") or port.native_media_fd() < 0:
            await port.close()
            raise RuntimeError(
                "--load-socket shared: needs the native extension's recvmmsg "
                "(python -m splitrelay.relay.native.build), or use --load-socket per-call"
            )
        batches: list[Any] = []

        def batch(transport: asyncio.DatagramTransport) -> Any:
            batches.append(SendBatch(transport, max_batch=SHARED_SEND_BATCH))
            return batches[0]

        port.batch_sends(batch)
        fd = port.native_media_fd()  # nothing is queued yet: the socket's fd
        capacity = sum(schedule.frames_of(i) for i in range(schedule.flows)) + 1024
        tap = EchoTap(fd, port.demux.datagram_received, capacity)
        asyncio.get_running_loop().add_reader(fd, tap.drain)  # in place of the port's own reader
        return cls(port, batches[0], tap, schedule)

    def add(self, i: int, caller: Caller) -> None:
        """Caller ``i`` is attached and prepared: its packets move into the store, its echoes to the tap."""
        self.store.put(i, caller._packets)
        caller._packets = []
        self.callers[i] = caller
        self.tap.add(i, caller)

    def ready(self) -> None:
        """Every caller is in: build each slot's message vector and its report schedule."""
        from splitrelay.inference.udp_batch import sockaddr

        callers = [c for c in self.callers if c is not None]
        if len(callers) != len(self.callers):
            raise RuntimeError("shared load: not every caller was added")
        self._remotes = [c.remote_addr for c in callers]
        self._names = [self._ffi.new("char[]", sockaddr(remote)) for remote in self._remotes]
        groups: list[list[int]] = [[] for _ in range(SLOTS)]
        for i in range(len(callers)):
            groups[self.schedule.slot_of(i)].append(i)
        self._slots = [_SlotSend(self._ffi, g, self._names, self.store) if g else None for g in groups]
        self._reports = [
            [[i for i in g if callers[i]._rtcp_phase == phase] for phase in range(RTCP_EVERY)] for g in groups
        ]

    def send_slot(self, slot: int, k: int, in_window: bool) -> None:
        """Send frame ``k`` of every caller of ``slot`` in one ``sendmmsg`` (``drive``'s sender)."""
        if k % CLOSED_CHECK_EVERY == 0:
            self._drop_closed(slot, k)
        sending = self._slots[slot]
        if sending is None:
            return
        sending.point(k)
        port = self.port
        fd = port.native_media_fd()  # flushes the control traffic queued before: it goes first
        now = time.perf_counter_ns()
        self.slot_ns[k, slot] = now
        total = len(sending.members)
        done = 0
        if fd >= 0:  # else the socket holds unsent data: everything goes behind it, in order
            for _ in range(total):  # each round sends at least one datagram, or gives up
                n = self._libc.sendmmsg(fd, sending.vec + done, total - done, 0)
                if n <= 0:
                    break
                done += n
                if done >= total:
                    break
        if done < total:  # the socket is full: the rest waits in the port's queue, in order
            store = self.store
            for j in range(done, total):  # bounded by the slot's callers
                i = sending.members[j]
                length = int(store.lengths[i, k])
                port.native_media_send(store.packets[i, k, :length].tobytes(), self._remotes[i])
            self.queued += total - done
        callers = self.callers
        for i in self._reports[slot][k % RTCP_EVERY]:
            caller = callers[i]
            if caller is not None and i not in self.stopped:
                caller._report(k, now)

    def _drop_closed(self, slot: int, k: int) -> None:
        """Callers whose transport closed stop here: their later frames count as send failures."""
        sending = self._slots[slot]
        if sending is None:
            return
        callers = self.callers
        closed = [i for i in sending.members if callers[i] is None or callers[i]._closing()]  # type: ignore[union-attr]
        if not closed:
            return
        for i in closed:
            self.stopped[i] = k
        members = [i for i in sending.members if i not in self.stopped]
        self._slots[slot] = _SlotSend(self._ffi, members, self._names, self.store) if members else None

    def settle(self) -> None:
        """After the drain: loss, round trips and the SRTP proof from the two logs (``settle_shared``)."""
        self.lateness_ms = settle_shared(self.callers, self.tap, self.schedule, self.slot_ns, self.stopped)

    def report(self) -> dict[str, Any]:
        stats = self.port.stats()
        return {
            **pacing_report(self.lateness_ms),
            "load_port_echoes_logged": self.tap.logged,
            "load_port_log_overflow": self.tap.overflow,
            "load_port_rtcp_routed": self.tap.rtcp,
            "load_port_to_demux": int(stats.datagrams_in),
            "load_port_receive_calls": self.tap.receive_calls,
            "load_port_send_queued": self.queued,
            "load_port_send_drops": int(stats.send_queue_drops),
        }

    async def close(self) -> None:
        await self.port.close()


RTP_CLOCK_HZ = 48_000
PACING_LATE_MS = 20.0
"""A frame later than this past its slot on the relay's timeline is a frame late (``pacing_report``)."""


def pacing_lateness(
    arrival_ns: np.ndarray[Any, Any], timestamps: np.ndarray[Any, Any], markers: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """How late (ms) each of one call's echoes reached the caller past its slot on the relay's playout
    timeline, in arrival order; negative: ahead of it.

    The relay stamps each frame with its timeline's RTP timestamp (relay/playout.py: 20 ms a frame, a
    paced frame leaves up to `lead` before its slot) and sets the marker where a talk spurt restarts
    the timeline at the wall clock, so that frame left at its slot. Against the spurt's first frame, as a
    caller's jitter buffer anchors a talk spurt: arrival minus RTP time, minus the anchor's. What the
    caller sees, whether the relay paced the frame or passed it through, and without its clock.
    """
    n = len(arrival_ns)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    ts = timestamps.astype(np.int64)
    since_first = (ts - ts[0] + (1 << 31)) % (1 << 32) - (1 << 31)  # 32-bit wrap, from the first echo
    transit = arrival_ns.astype(np.float64) - since_first * (1e9 / RTP_CLOCK_HZ)
    index = np.arange(n)
    anchor = np.maximum.accumulate(np.where(markers, index, 0))  # the first echo anchors too
    late: np.ndarray[Any, Any] = (transit - transit[anchor]) / 1e6
    return late


def pacing_report(late_ms: np.ndarray[Any, Any]) -> dict[str, Any]:
    """p50 / p99 / max lateness past the slot, and how many frames were later than PACING_LATE_MS."""
    if not len(late_ms):
        return {"pacing_frames": 0}
    return {
        "pacing_frames": len(late_ms),
        "pacing_late_p50_ms": round(float(np.percentile(late_ms, 50)), 3),
        "pacing_late_p99_ms": round(float(np.percentile(late_ms, 99)), 3),
        "pacing_late_max_ms": round(float(late_ms.max()), 3),
        "pacing_late_frames": int((late_ms > PACING_LATE_MS).sum()),
    }


def settle_shared(
    callers: Sequence[Any],
    tap: EchoTap,
    schedule: Schedule,
    slot_ns: np.ndarray[Any, Any],
    stopped: dict[int, int],
) -> np.ndarray[Any, Any]:
    """Each caller's sends (frame k of caller i left at ``slot_ns[k, slot of i]``, until ``stopped[i]``)
    and its logged echoes, merged in time order, through its ``EchoMatcher``, as they would have reached
    it live; the sampled echoes through its ``EchoCounter``, in arrival order. Sets each caller's sent,
    sent-in-window and send-failure counts. Returns the pacing lateness (``pacing_lateness``, ms) of
    the echoes that arrived from the window's first send on."""
    tap.counting = False
    n = tap.logged
    owners = tap.log_caller[:n]
    order = np.argsort(owners, kind="stable")
    bounds = np.searchsorted(owners[order], np.arange(len(callers) + 1))
    frames = tap.log_frame[:n]
    arrivals = tap.log_arrival[:n]
    window_slot = schedule.window_slot
    window_tick = slot_ns[min(window_slot // SLOTS, len(slot_ns) - 1)]
    window_ns = int(window_tick[window_tick > 0].min()) if (window_tick > 0).any() else 0
    lateness: list[np.ndarray[Any, Any]] = []
    for i, caller in enumerate(callers):
        slot = schedule.slot_of(i)
        sent = stopped.get(i, schedule.frames_of(i))
        times = slot_ns[:sent, slot].tolist()
        caller.sent = sent
        caller.sent_window = sum(1 for k in range(sent) if k * SLOTS + slot >= window_slot)
        caller.send_failures = schedule.frames_of(i) - sent
        rows = order[bounds[i] : bounds[i + 1]]
        late = pacing_lateness(arrivals[rows], tap.log_timestamp[rows], tap.log_marker[rows])
        lateness.append(late[arrivals[rows] >= window_ns])
        matcher = caller.matcher
        k = 0
        for frame, arrival in zip(frames[rows].tolist(), arrivals[rows].tolist(), strict=True):
            while k < sent and times[k] <= arrival:  # bounded by the sends
                matcher.sent(k % FRAMES, times[k], k * SLOTS + slot >= window_slot)
                k += 1
            matcher.echo(frame if frame >= 0 else None, arrival)
        for rest in range(k, sent):  # never came back (or after the drain)
            matcher.sent(rest % FRAMES, times[rest], rest * SLOTS + slot >= window_slot)
        caller.echoes.echoes = len(rows)
    for position, owner, data in tap.samples:  # in arrival order, so per call in SRTP order
        frame = int(tap.log_frame[position])
        callers[owner].echoes.sample(data, frame if frame >= 0 else None)
    return np.concatenate(lateness) if lateness else np.zeros(0, dtype=np.float64)


async def setup_callers(
    relay_url: str,
    key: bytes,
    schedule: Schedule,
    prefix: str,
    concurrency: int,
    setup_timeout: float,
    shared: SharedLoad | None = None,
    profile: SrtpProfile | None = None,
) -> tuple[list[Caller], list[tuple[bytes, int]], array.array[int]]:
    """Attach ``schedule.flows`` callers with at most ``concurrency`` set-ups in flight, each with its
    packets built; all or nothing. ``shared``: on that one socket, else each on its own. ``profile``:
    the one SRTP profile every caller offers, checked on each call's first packet (``prepare``)."""
    import httpx

    calls = schedule.flows
    frames = noise_frames()
    rtts: array.array[int] = array.array("q")
    policy = shared.policy if shared is not None else None
    callers = [Caller(frames, rtts, policy, profile) for _ in range(calls)]
    gate = asyncio.Semaphore(concurrency)
    attached = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=relay_url, timeout=setup_timeout, limits=limits) as http:

        async def one(i: int) -> None:
            nonlocal attached
            async with gate:
                try:
                    async with asyncio.timeout(setup_timeout):
                        await callers[i].attach(http, key, f"{prefix}-{i}", setup_timeout)
                except TimeoutError:
                    raise RuntimeError(
                        f"call {prefix}-{i}: not connected within {setup_timeout:g} s"
                    ) from None
            caller = callers[i]
            caller.prepare(schedule.frames_of(i), rtcp_phase=i * RTCP_EVERY // calls)
            if shared is not None:
                shared.add(i, caller)
                # Outside the gate, once the relay's side of the call surely has its fast path (it may
                # attach it a moment after this side connects): the relay then learns our SSRC while
                # this call is among the newest at our address (``Caller.announce``).
                await asyncio.sleep(ANNOUNCE_AFTER_S)
                caller.announce()
            attached += 1
            emit({"event": "progress", "attached": attached})

        try:
            async with asyncio.TaskGroup() as group:
                for i in range(calls):
                    group.create_task(one(i))
        except Exception as exc:
            await close_all(callers)
            failures = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
            first = failures[0]
            raise RuntimeError(
                f"{len(failures)} of {calls} call set-ups failed (after {attached} attached); "
                f"first: {type(first).__name__}: {first}"
            ) from None
        except BaseException:
            await close_all(callers)
            raise
    return callers, frames, rtts


async def close_all(callers: Sequence[Caller]) -> None:
    """Close every caller, a bounded number at a time, within a bounded time."""
    for start in range(0, len(callers), CLOSE_CONCURRENCY):
        batch = callers[start : start + CLOSE_CONCURRENCY]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.close() for c in batch), return_exceptions=True)


def caller_report(callers: Sequence[Caller]) -> dict[str, int]:
    """Counts summed over callers; the benchmark sums them again over workers."""
    counters = [c.echoes for c in callers if c.echoes is not None]
    return {
        "lost_tracked": sum(c.matcher.lost for c in callers),
        "echoes": sum(e.echoes for e in counters),
        "srtp_samples": sum(e.samples for e in counters),
        "srtp_samples_authentic": sum(e.authentic for e in counters),
        "srtp_samples_matched": sum(e.matched for e in counters),
        "fast_path_undecryptable": sum(c.fast_path.undecryptable for c in callers if c.fast_path),
        "stray": sum(c.stray for c in callers),
        "rtcp_sent": sum(c.fast_path.rtcp_out for c in callers if c.fast_path),
        "rtcp_received": sum(c.fast_path.rtcp_in for c in callers if c.fast_path),
    }


# --- baseline mode: bare UDP flows --------------------------------------------------------------------


class UdpFlow(Flow, asyncio.DatagramProtocol):
    """Caller-sized datagram out; on its echo, a wire-sized one; on that echo, the round trip is done."""

    def __init__(self, leg1: list[bytes], leg2: list[bytes], rtts: array.array[int]) -> None:
        self._leg1 = leg1
        self._leg2 = leg2
        self._rtts = rtts
        self._sent_ns = [0] * MAX_PENDING
        self._window = [False] * MAX_PENDING
        self._seq_sent = -1
        self.transport: asyncio.DatagramTransport | None = None
        self.counting = True
        self.received_window = 0
        self.unmatched = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        self.send_failures += 1

    def send(self, k: int, in_window: bool) -> None:
        transport = self.transport
        assert transport is not None
        slot = k % MAX_PENDING
        self._sent_ns[slot] = time.perf_counter_ns()
        self._window[slot] = in_window
        self._seq_sent = k
        transport.sendto(_FLOW_HEADER.pack(1, k) + self._leg1[k % FRAMES])
        self.sent += 1
        if in_window:
            self.sent_window += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.perf_counter_ns()
        try:
            leg, k = _FLOW_HEADER.unpack_from(data)
        except struct.error:
            self.unmatched += 1
            return
        if not 0 <= self._seq_sent - k < MAX_PENDING:
            self.unmatched += 1
            return
        if leg == 1:
            self.transport.sendto(_FLOW_HEADER.pack(2, k) + self._leg2[k % FRAMES])  # type: ignore[union-attr]
        elif leg == 2 and self.counting:
            slot = k % MAX_PENDING
            if self._window[slot]:
                self._window[slot] = False  # a duplicate must not count twice
                self.received_window += 1
                self._rtts.append(now - self._sent_ns[slot])
        else:
            self.unmatched += leg != 2

    def received(self) -> tuple[int, int]:
        return self.received_window, self.unmatched

    def stop_counting(self) -> None:
        self.counting = False


async def setup_flows(
    target: tuple[str, int], flows: int, srtp_bytes: int
) -> tuple[list[UdpFlow], array.array[int], list[asyncio.DatagramTransport]]:
    frames = noise_frames()
    pad1 = max(0, srtp_bytes - _FLOW_HEADER.size)
    pad2 = max(0, wire.HEADER_SIZE - _FLOW_HEADER.size)
    leg1 = [payload + bytes(pad1) for payload, _ in frames]
    leg2 = [payload + bytes(pad2) for payload, _ in frames]
    rtts: array.array[int] = array.array("q")
    loop = asyncio.get_running_loop()
    out: list[UdpFlow] = []
    transports: list[asyncio.DatagramTransport] = []
    try:
        for _ in range(flows):  # one socket per flow, as the relay has one per call
            flow = UdpFlow(leg1, leg2, rtts)
            transport, _ = await loop.create_datagram_endpoint(lambda f=flow: f, remote_addr=target)  # type: ignore[misc]
            transports.append(transport)
            out.append(flow)
    except BaseException:
        for t in transports:
            t.close()
        raise
    return out, rtts, transports


# --- the worker ---------------------------------------------------------------------------------------


class GcClock:
    """Time spent in the cyclic garbage collector, per generation (a hidden cost with many live peers)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1

    def report(self) -> dict[str, Any]:
        return {"gc_seconds": [round(s, 4) for s in self.seconds], "gc_collections": self.collections}


async def read_command(reader: asyncio.StreamReader, within: float) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), within)
    if not line:
        return {"cmd": "stop"}
    command = json.loads(line)
    if not isinstance(command, dict):
        raise ValueError(f"command: expected a JSON object, got {line[:80]!r}")
    return command


async def worker(args: WorkerOptions) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    callers: list[Caller] = []
    transports: list[asyncio.DatagramTransport] = []
    shared: SharedLoad | None = None
    send_slot: SlotSender | None = None
    schedule = Schedule(args.count, args.warmup, args.duration)
    try:
        flows: Sequence[Flow]
        extra: dict[str, Any] = {}
        if args.mode == "relay":
            prepared = sum(schedule.frames_of(i) for i in range(schedule.flows))
            if prepared > MAX_PREPARED:
                raise ValueError(
                    f"--count x (--warmup + --duration) x 50: {prepared} packets to build ahead, "
                    f"limit {MAX_PREPARED} per worker (use more --load-procs or a shorter run)"
                )
            key = os.environ.get(SIGNING_KEY_ENV, "").encode()
            if not key:
                raise ValueError(f"${SIGNING_KEY_ENV} is not set: the worker signs its attach requests")
            assert args.relay_url is not None  # WorkerOptions requires it in relay mode
            if args.load_socket == "shared":
                shared = await SharedLoad.open(schedule)
            profile = srtp_profile(args.srtp_profile)
            callers, frames, rtts = await setup_callers(
                args.relay_url,
                key,
                schedule,
                args.prefix,
                args.concurrency,
                args.setup_timeout,
                shared,
                profile,
            )
            flows = callers
            if shared is not None:
                shared.ready()
                send_slot = shared.send_slot
            extra["load_socket"] = args.load_socket
            extra["srtp_overhead"] = callers[0].srtp_overhead
            extra["srtp_profile"] = profile.openssl
            extra["srtp_tag_bytes"] = callers[0].srtp_tag_bytes
            extra["srtp_profile_calls"] = sum(c.srtp_tag_bytes == profile.tag_bytes for c in callers)
            extra["payload_bytes_mean"] = round(sum(len(p) for p, _ in frames) / len(frames), 1)
            extra["packets_prepared"] = sum(c.prepared for c in callers)
        else:
            assert args.target is not None  # WorkerOptions requires it in udp mode
            host, _, port = args.target.rpartition(":")
            udp_flows, rtts, transports = await setup_flows((host, int(port)), args.count, args.srtp_bytes)
            flows = udp_flows
        # Everything built so far (peers, sockets, packets) lives for the whole run: move it out of the
        # collector's reach, so full collections stop walking hundreds of peers' object graphs.
        gc.collect()
        gc.freeze()
        gc_clock = GcClock()
        gc.callbacks.append(gc_clock)
        emit({"event": "ready", "flows": len(flows)})
        command = await read_command(reader, within=3600)
        if command.get("cmd") != "run":
            return 0
        expected, lateness = await drive(flows, schedule, float(command["t0"]), send_slot)
        await asyncio.sleep(DRAIN_S)
        if shared is not None:
            shared.settle()  # before the matchers stop counting: they match the logged echoes now
        for flow in flows:
            flow.stop_counting()
        extra.update(gc_clock.report())
        if callers:
            extra.update(caller_report(callers))
        if shared is not None:
            extra.update(shared.report())
        samples = np.frombuffer(rtts, dtype=np.int64).astype(np.float64) / 1000.0  # µs
        np.save(command["rtt_path"], samples.astype(np.float32))
        emit(summarize(flows, expected, lateness, extra, schedule).event())
        await read_command(reader, within=600)  # "stop" or EOF
        return 0
    except Exception as exc:
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    finally:
        await close_all(callers)
        if shared is not None:
            await shared.close()
        for transport in transports:
            transport.close()


@dataclass(frozen=True)
class WorkerOptions:
    """One load worker's run (`splitrelay bench load-worker`); checked here, so every caller gets the same
    errors."""

    mode: Literal["relay", "udp"]
    count: int
    """Callers (relay mode) or flows (udp mode)."""
    warmup: float
    duration: float
    relay_url: str | None = None
    prefix: str = "bench"
    concurrency: int = 16
    setup_timeout: float = SETUP_TIMEOUT_S
    target: str | None = None
    srtp_bytes: int = 0
    load_socket: LoadSocket = "shared"
    """Relay mode: every caller on one UDP socket (as an SFU's sessions arrive), or one socket each."""
    srtp_profile: str = DEFAULT_SRTP_PROFILE
    """Relay mode: the one DTLS-SRTP profile the callers offer (``SRTP_PROFILES``)."""

    def __post_init__(self) -> None:
        srtp_profile(self.srtp_profile)
        if self.load_socket not in LOAD_SOCKETS:
            choices = ", ".join(LOAD_SOCKETS)
            raise ValueError(f"--load-socket: must be one of {choices}, got {self.load_socket!r}")
        if not 1 <= self.count <= 10_000:
            raise ValueError(f"--count: must be 1..10000, got {self.count}")
        if not 0 <= self.warmup <= 120:
            raise ValueError(f"--warmup: must be 0..120 seconds, got {self.warmup:g}")
        if not 1 <= self.duration <= 600:
            raise ValueError(f"--duration: must be 1..600 seconds, got {self.duration:g}")
        if self.mode == "relay" and not self.relay_url:
            raise ValueError("--relay-url is required in relay mode")
        if self.mode == "udp" and not self.target:
            raise ValueError("--target is required in udp mode")


def run_worker(options: WorkerOptions) -> int:
    """Run one worker to its end on the SDK's event loop; the exit status."""
    from splitrelay.inference.sdk import run

    return run(worker(options))
