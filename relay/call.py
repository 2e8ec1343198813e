"""One call's media pipeline: caller RTP ⇄ the SRTP fast path ⇄ the wire protocol ⇄ inference.

Inbound, each caller packet is forwarded to inference on arrival (no decode, no jitter buffer) and, while
assistant audio is playing, checked for speech so a barge-in flushes the outbound queue within one
packet. Outbound, inference's frames go through `Playout`, which paces them onto the caller's RTP
timeline. The call owns its peer connection, fast path and playout; the manager owns the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from splitrelay.contract.control import MAX_CONTINUATIONS
from splitrelay.inference import wire
from splitrelay.inference.endpoint import Peer
from splitrelay.inference.speech import SpeechDetector
from splitrelay.inference.stages import STAGE_EVENT
from splitrelay.inference.wire import Continuation
from splitrelay.relay.barge_gate import OnsetGate
from splitrelay.relay.inference_link import AGENT_LOST, LinkError, RelayLink
from splitrelay.relay.media import native
from splitrelay.relay.media.impair import Impairment
from splitrelay.relay.media.peer import VoicePeer
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath
from splitrelay.relay.playout import SAMPLES_PER_FRAME, Playout, SharedPacer
from splitrelay.relay.telemetry import CallCounters, CallSample, DwellHistogram

log = logging.getLogger("splitrelay.relay.call")

END_CALL_WAIT_S = 0.25
MAX_EARLY_PACKETS = 50  # one second of audio may arrive before inference acknowledged the call
MAX_EVENTS = 64  # the most recent inference events kept per call
CLEARED_EVENT = "relay.cleared"  # the EVENT that answers an agent's CLEAR with the heard position
SWITCH_START_WAIT_S = 1.0
"""How long a mid-call retry waits for the next agent's ACK (a live one answers in milliseconds; the link's
full retransmission schedule would hold the caller ~3 s per dead endpoint)."""
AGENT_GONE_REASONS = frozenset({AGENT_LOST, "unknown_call", "inference_unreachable"})
"""Why inference ended a call when its agent, not the conversation, is gone: another endpoint may take it."""


class CallState(StrEnum):
    """A relay call's lifecycle; summaries carry the value (``"live"``...)."""

    CONNECTING = "connecting"  # attached; media and inference not both up yet
    LIVE = "live"
    CLOSED = "closed"


@dataclass(frozen=True)
class CallConfig:
    """Per-call tunables; defaults suit 20 ms Opus voice."""

    connect_timeout_s: float = 10.0
    playout_lead_ms: int = 60
    playout_tail_ms: int = 120
    playout_catch_up_ms: int = 200
    """How far behind the wall clock a stalled response may fall and still catch up (see relay/playout.py)."""
    barge_in_threshold_dbov: float = -40.0
    barge_in_packets: int = 1
    """Consecutive speech packets that count as a barge-in (1 = within one packet)."""
    barge_in_confirm_ms: int = 0
    """How long a barge-in candidate waits for inference's verdict (BARGE_VERDICT) with playout paused;
    0 flushes at once on the onset, without asking (the behaviour before candidates)."""
    barge_in_candidate_dbov: float = -50.0
    """With a window, the level at which a packet raises a candidate: lower than the flush threshold,
    because a pause costs little (a reject resumes with nothing lost) and the confirmer filters noise."""
    barge_in_sustain_ms: int = 100
    """Default policy when inference gives no verdict within the window: confirm if the level detector
    heard at least this much speech since the onset (onset packet included), else resume."""
    barge_in_retry_ms: int = 0
    """With a window: after a rejected candidate, speech by the candidate level for this long without a
    silent packet raises a new candidate (0: only a silence and a new onset do; relay/barge_gate.py)."""
    heard_lag_ms: int = 20
    """The part of the path the relay cannot measure, taken off the heard position at a barge-in along
    with the measured RTCP round trip: the far leg in SFU mode (SFU → caller) and the caller's jitter
    buffer. 20 ms is the floor: a receiver plays a 20 ms frame only once all of it has arrived."""
    fast_path: FastPathConfig = field(default_factory=FastPathConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.barge_in_packets <= 50:
            raise ValueError(f"barge_in_packets must be 1..50, got {self.barge_in_packets}")
        if not 0 <= self.barge_in_confirm_ms <= 2000:
            raise ValueError(f"barge_in_confirm_ms must be 0..2000, got {self.barge_in_confirm_ms}")
        if not -127.0 <= self.barge_in_candidate_dbov <= 0.0:
            raise ValueError(
                f"barge_in_candidate_dbov must be -127..0 dBov, got {self.barge_in_candidate_dbov}"
            )
        if not 20 <= self.barge_in_sustain_ms <= 2000:
            raise ValueError(f"barge_in_sustain_ms must be 20..2000, got {self.barge_in_sustain_ms}")
        if self.barge_in_retry_ms and not 100 <= self.barge_in_retry_ms <= 5000:
            raise ValueError(f"barge_in_retry_ms must be 0 or 100..5000, got {self.barge_in_retry_ms}")
        if not 0 <= self.heard_lag_ms <= 1000:
            raise ValueError(f"heard_lag_ms must be 0..1000, got {self.heard_lag_ms}")
        if not 0 < self.connect_timeout_s <= 120:
            raise ValueError(f"connect_timeout_s must be in (0, 120], got {self.connect_timeout_s}")


def impaired(config: CallConfig, impairment: Impairment | None) -> CallConfig:
    """``config`` with every call's media leg impaired both ways (``relay serve --impair``): the relay's
    SFU leg in SFU mode, the caller's leg in direct mode (relay/media/impair.py)."""
    if impairment is None or not impairment.active:
        return config
    return replace(config, fast_path=replace(config.fast_path, impair_in=impairment, impair_out=impairment))


class SequenceUnwrapper:
    """Extends 16-bit RTP sequence numbers to a count from the call's first packet (RFC 3550 A.1)."""

    __slots__ = ("_ext", "_last")

    def __init__(self) -> None:
        self._last: int | None = None
        self._ext = 0

    def state(self) -> tuple[int, int] | None:
        """(last 16-bit sequence, extended count), or None before the first packet."""
        return None if self._last is None else (self._last, self._ext)

    def extend(self, seq: int) -> int:
        if self._last is None:
            self._last = seq
            return 0
        delta = (seq - self._last) & 0xFFFF
        if delta < 0x8000:
            self._ext += delta
            self._last = seq
            return self._ext
        return self._ext - (0x10000 - delta)  # a late packet: behind the newest, no state change


@dataclass(slots=True)
class _Candidate:
    """A barge-in candidate in flight: playout is paused until a verdict or the window's end."""

    number: int
    onset_timestamp: int  # AUDIO_IN timestamp of the voiced packet that raised it
    speech_frames: int = 1  # the onset packet was speech by level
    timer: asyncio.TimerHandle | None = None


class Call:
    """A live call. Build with a negotiated `VoicePeer`, then `await start()`; `close()` is idempotent."""

    def __init__(
        self,
        call_id: str,
        mode: str,
        peer: VoicePeer,
        link: RelayLink,
        *,
        config: CallConfig | None = None,
        metadata: dict[str, Any] | None = None,
        on_closed: Callable[[Call], object] = lambda _c: None,
        pacer: SharedPacer | None = None,
        endpoints: tuple[Peer, ...] = (),
        relay_id: str = "relay",
        continues: Continuation | None = None,
    ) -> None:
        """``endpoints``: the inference endpoints in the order the call tries them (empty: the link's one);
        ``continues``: the call this attach continues (a relay failover), passed on in CALL_START."""
        self.call_id = call_id
        self.mode = mode
        self.peer = peer
        self.link = link
        self.config = config or CallConfig()
        self.metadata = metadata or {}
        self._on_closed = on_closed
        self.state = CallState.CONNECTING
        self.created_at = time.time()
        self._t0 = time.perf_counter()
        self.counters = CallCounters()
        self.dwell_in = DwellHistogram()
        self.dwell_out = DwellHistogram()
        self.fast_path: SrtpFastPath | None = None
        self.wire_id: int | None = None
        self.close_reason: str | None = None
        self.early_packets = 0
        self._early: list[RtpPacket] = []
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.on_stage: Callable[[str, dict[str, Any]], object] | None = None
        """Told (call id, event) of each ``agent.stage`` mark (the manager wires it to the edge link)."""
        self._seq: SequenceUnwrapper | native.InboundSlot = SequenceUnwrapper()
        self._ts0_py: int | None = None
        self._slot: native.InboundSlot | None = None
        """The call's slot in the shared port's per-batch C path (relay/media/native), when it runs: it
        then holds the sequence unwrapping and timestamp base, and finishes packets that need no decision."""
        self._playback_started = False
        self._gate = OnsetGate(
            self.config.barge_in_packets,
            self.config.barge_in_retry_ms // wire.PTIME_MS if self.config.barge_in_confirm_ms else 0,
        )
        self._detector = SpeechDetector(self.config.barge_in_threshold_dbov)
        # What raises a candidate (more sensitive; the default policy still counts by _detector).
        self._trigger = (
            SpeechDetector(self.config.barge_in_candidate_dbov)
            if self.config.barge_in_confirm_ms
            else self._detector
        )
        self._candidate: _Candidate | None = None
        self._candidates = 0
        self.barge_rejected = 0
        self.barge_by_policy = 0  # candidates the window's end decided (inference did not answer)
        self.endpoints = endpoints
        self.relay_id = relay_id
        self.continues = continues
        self._endpoint = 0  # index in ``endpoints`` of the agent that has the call
        self._attempt = continues.attempt if continues is not None else 0  # the call's moves so far
        self.agent_switches = 0
        self._switch_task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        # With the link's outbound C path (relay/media/native NativeOutbound) the playout keeps its timeline
        # in a C struct that path shares, so C and Python can play this call's frames in turn.
        self._out: native.OutboundEntry | None = None
        self.playout = Playout(
            self._send_frame,
            self._mark_reached,
            loop.call_later if pacer is None else pacer.schedule,
            lead_ms=self.config.playout_lead_ms,
            tail_ms=self.config.playout_tail_ms,
            catch_up_ms=self.config.playout_catch_up_ms,
            observe_dwell_ns=self.dwell_out.observe_ns,
            state=native.playout_state() if getattr(link, "native_out", None) is not None else None,
        )
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._final: dict[str, Any] | None = None
        """The summary at close, what ``summary()`` returns once the call was released."""

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect media and open the call at inference, in parallel; raise (and close) on failure.

        The fast path is attached inside the connection-state callback, before the event loop can hand
        aiortc a single media packet; packets that arrive before inference acknowledged the call wait in
        a small bounded buffer (set-up only, never during the call).
        """
        pc = self.peer.pc
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            self._on_connection_state()
            self.wire_id = await self._open_first_agent()
            early, self._early = self._early, []
            for pkt in early:
                self._on_rtp(pkt)
            self._sync_native()
            await self.peer.wait_connected(within=self.config.connect_timeout_s)
            if self.fast_path is None:
                raise ConnectionError("peer connected but the fast path did not attach")
        except (LinkError, ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
            await self.close(f"setup failed: {exc}")
            raise
        self.state = CallState.LIVE
        self.counters.setup_ms = (time.perf_counter() - self._t0) * 1000

    async def _open_first_agent(self) -> int:
        """CALL_START on the first endpoint that takes it. No ``agent_lost`` continuation here: no agent
        had this call's conversation yet (a relay failover's own continuation is passed on as it came)."""
        metadata = dict(self.metadata, mode=self.mode)
        if not self.endpoints:
            return await self.link.start_call(self.call_id, self, metadata=metadata, continues=self.continues)
        failure: LinkError | None = None
        for index, endpoint in enumerate(self.endpoints):  # bounded: each endpoint once
            try:
                wire_id = await self.link.start_call(
                    self.call_id, self, metadata=metadata, inference=endpoint, continues=self.continues
                )
            except LinkError as exc:
                log.warning("call %s: inference %s:%d did not take it: %s", self.call_id, *endpoint, exc)
                failure = exc
                continue
            self._endpoint = index
            return wire_id
        assert failure is not None
        raise failure

    def _on_connection_state(self) -> None:
        state = self.peer.pc.connectionState
        if state == "connected" and self.fast_path is None and self.state is not CallState.CLOSED:
            fp = self.fast_path = SrtpFastPath.attach(
                self.peer.pc, self._on_rtp, self.config.fast_path, on_bye=self._on_bye
            )
            self._take_fast_path(fp)
        elif state in ("failed", "closed") and self.state is CallState.LIVE:
            self.schedule_close(f"peer connection {state}")

    def _take_fast_path(self, fp: SrtpFastPath) -> None:
        """Wire the call to its fast path's per-batch C slots (tests call it with a fast path of theirs)."""
        slot = fp.native_slot
        if slot is not None:
            # Media aioice queued during the DTLS hand-shake went through _on_rtp inside attach:
            # the slot takes over the state it left.
            if isinstance(self._seq, SequenceUnwrapper):
                slot.adopt(self._seq.state(), self._ts0_py)
            self._slot = self._seq = slot
            slot.set_dwell(self.dwell_in)
            fp.on_fold = self._fold
            self.playout.publish = slot.set_playing_until
            slot.set_playing_until(self.playout.playing_until_ns())
            self._publish_gate()
            self._open_native_out(fp, slot)
            self._sync_native()

    def _on_bye(self, _ssrc: int) -> None:
        self.schedule_close("caller sent RTCP BYE")

    def schedule_close(self, reason: str) -> None:
        if self._close_task is None and self.state is not CallState.CLOSED:
            self._close_task = asyncio.get_running_loop().create_task(self._close_quietly(reason))

    async def _close_quietly(self, reason: str) -> None:
        await self.close(reason)

    async def close(self, reason: str, *, wire_reason: str = "relay_closed") -> dict[str, Any]:
        """End the call everywhere (inference, fast path, peer) and return its summary. Idempotent.

        `reason` is for people (logs, the summary); `wire_reason` is the CALL_END reason inference gets.
        """
        if self.state is CallState.CLOSED:
            return self._final if self._final is not None else self.summary()
        self.state = CallState.CLOSED
        self.close_reason = reason
        self._sync_native()
        self.playout.close()
        outbound: native.NativeOutbound | None = getattr(self.link, "native_out", None)
        if self._out is not None and outbound is not None:
            self._fold_out()
            outbound.close_entry(self._out)  # before the fast path (and its slot) goes
        self._drop_candidate()
        switching = self._switch_task
        if switching is not None and not switching.done() and switching is not asyncio.current_task():
            switching.cancel()  # a CALL_START in flight is ended by start_call itself
        if self.wire_id is not None:
            # Tell inference, but do not hold the hang-up for its ACK: the link keeps retransmitting
            # in the background (shielded) if the first datagram is lost.
            end = self.link.end_call(self.wire_id, wire_reason)
            with contextlib.suppress(LinkError, wire.WireError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(end), timeout=END_CALL_WAIT_S)
        if self.fast_path is not None:
            await self.fast_path.close()
        await self.peer.close()
        summary = self._final = self.summary()
        log.info("call ended %s", _json(summary))
        self._closed.set()
        self._on_closed(self)
        return summary

    def release(self) -> int:
        """After close: break the reference cycles the call's objects form, so reference counting frees
        them; → how many objects were cleared. Only ``state``, ``close_reason``, ``summary()`` and
        ``wait_closed()`` work afterwards.

        An ended call's few hundred objects (its aiortc peer, fast path, playout) point at each other;
        without this they wait for a full collection, and if they were frozen (relay/gc_freeze.py) they
        would never be freed. Call it once nothing of the call runs any more (the manager waits a moment
        after the close).
        """
        if self.state is not CallState.CLOSED or self._final is None:
            raise RuntimeError("release() a call after close()")
        cleared = 0
        peer = vars(self).get("peer")
        if isinstance(peer, VoicePeer):
            cleared += peer.release()
        for part in (vars(self).get("fast_path"), vars(self).get("playout")):
            state = getattr(part, "__dict__", None)  # the fast path: its streams, consent, codec point back
            if isinstance(state, dict):
                state.clear()
                cleared += 1
        kept = {name: vars(self)[name] for name in _KEPT_AFTER_RELEASE if name in vars(self)}
        vars(self).clear()
        vars(self).update(kept)
        return cleared + 1

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- inbound: caller → inference -------------------------------------------------------------

    @property
    def _ts0(self) -> int | None:
        """The caller's first RTP timestamp that reached the relay (AUDIO_IN timestamps count from it)."""
        return self._slot.ts0 if self._slot is not None else self._ts0_py

    def _sync_native(self) -> None:
        """Let the C path finish this call's packets exactly while the Python path would forward them
        to a live link call with nothing held back (not before the early packets are flushed, never after
        the call or its link call ended)."""
        self._sync_native_out()
        slot = self._slot
        if slot is None:
            return
        wire_id = self.wire_id
        peer = self.link.call_peer(wire_id) if wire_id is not None else None
        if wire_id is None or peer is None or self.state is CallState.CLOSED or self._early:
            slot.disable()
            return
        slot.enable(wire_id, peer)
        self.link.watch_native(wire_id, slot)

    def _open_native_out(self, fp: SrtpFastPath, slot: native.InboundSlot) -> None:
        """An entry in the link's outbound C path for this call, when its playout, stream and codec can
        share their state with C (the shared port's native paths run, and nothing impairs our sends)."""
        outbound: native.NativeOutbound | None = getattr(self.link, "native_out", None)
        if outbound is None or fp.impaired_out or not fp.outbound_streams:
            return
        codec, stream = fp.codec, fp.outbound_streams[0]
        if not isinstance(codec, native.NativeCodec):
            return
        entry = outbound.open_entry()
        if not entry.bind(
            playout=self.playout.native_state,
            stream=stream.native_state,
            playing_until=slot.playing_until_pointer(),
            tx_pointer=codec.tx_pointer,
            payload_type=stream.payload_type,
            ssrc=stream.ssrc,
            max_payload=fp.max_payload,
            extension=stream.unacked_extension(),
            remote=fp.remote_addr,
        ):
            outbound.close_entry(entry)
            return
        entry.set_dwell(self.dwell_out)
        if getattr(self.link, "pace_schedule", None) is not None and entry.pace_in_c():
            self.playout.held = entry  # frames that wait for their slot wait in C (sr_pace)
        slot.outbound = entry
        self._out = entry

    def _sync_native_out(self) -> None:
        """Let C finish this call's AUDIO_OUT exactly while the Python path would send it straight to the
        caller: a live link call, an open fast path whose transport is not closing, a call not closed.
        Whether each frame passes through the playout C decides from the shared state."""
        entry = self._out
        if entry is None:
            return
        fp = self.fast_path
        wire_id = self.wire_id
        if (
            wire_id is None
            or fp is None
            or fp.closed
            or fp.transport_closing()
            or self.state is CallState.CLOSED
            or not self.link.map_native_out(wire_id, entry)
        ):
            self.playout.take_back()  # C paces only an enabled entry's frames
            entry.disable()
            return
        entry.enable()

    def _fold_out(self) -> None:
        """Take what the outbound C path counted into the call's counters."""
        entry = self._out
        if entry is None:
            return
        frames, packets, size = entry.take_counts()
        if frames or packets:
            counters = self.counters
            counters.frames_from_inference += frames
            counters.packets_out += packets
            counters.bytes_out += size

    def _fold(self, packets: int, size: int, to_inference: int) -> None:
        counters = self.counters
        counters.packets_in += packets
        counters.bytes_in += size
        counters.packets_to_inference += to_inference

    def _publish_gate(self) -> None:
        """Tell the C slot which packets heard during playback leave the onset gate as it is (those C may
        finish); any other goes to Python, so barge-in decides exactly as before."""
        slot = self._slot
        if slot is None:
            return
        mode = native.GATE_PYTHON
        if self._candidate is None and self._playback_started:
            gate = self._gate
            probe = copy.copy(gate)
            if not probe.feed(False) and probe == gate:
                mode = native.GATE_SILENT
            else:
                probe = copy.copy(gate)
                if not probe.feed(True) and probe == gate:
                    mode = native.GATE_TALKING
        trigger = self._trigger
        slot.set_gate(mode, native.threshold_level(trigger.threshold_dbov), trigger.use_voice_bit)

    def _on_rtp(self, pkt: RtpPacket) -> None:
        counters = self.counters
        counters.packets_in += 1
        counters.bytes_in += len(pkt.payload)
        wire_id = self.wire_id
        if wire_id is None:
            if len(self._early) < MAX_EARLY_PACKETS and self.state is CallState.CONNECTING:
                counters.packets_in -= 1  # counted again when flushed
                counters.bytes_in -= len(pkt.payload)
                self._early.append(pkt)
            else:
                self.early_packets += 1
            return
        slot = self._slot
        if slot is not None:
            ts0 = slot.base(pkt.timestamp)
            if slot.take_idle():  # C forwarded a packet while nothing played
                self._playback_started = False
        else:
            if self._ts0_py is None:
                self._ts0_py = pkt.timestamp
            ts0 = self._ts0_py
        level = pkt.audio_level
        flags = wire.audio_in_flags(marker=pkt.marker, level=level, voice=pkt.voice and level is not None)
        timestamp = (pkt.timestamp - ts0) & 0xFFFFFFFF
        arrival = pkt.arrival_ns
        if self.link.send_audio_in(
            wire_id,
            self._seq.extend(pkt.sequence) & 0xFFFFFFFF,
            timestamp,
            pkt.payload,
            flags,
            self.dwell_in.observe_ns if arrival else None,  # dwell ends when the batch leaves
            arrival,
        ):
            counters.packets_to_inference += 1
        if self._candidate is not None:
            if self._detector.is_speech(pkt.payload, level, pkt.voice):
                self._candidate.speech_frames += 1
        elif self.playout.playing(arrival or None):
            self._watch_for_barge_in(pkt, level, timestamp)
        else:
            self._playback_started = False
        if slot is not None:
            self._publish_gate()

    def _watch_for_barge_in(self, pkt: RtpPacket, level: int | None, timestamp: int) -> None:
        """A barge-in is the caller *starting* to speak over assistant audio (the onset gate's rule,
        relay/barge_gate.py): someone already talking when the reply began does not interrupt it."""
        if not self._playback_started:
            self._playback_started = True
            self._gate.reset()
        if self._gate.feed(self._trigger.is_speech(pkt.payload, level, pkt.voice)):
            if self.config.barge_in_confirm_ms:
                self._raise_candidate(timestamp)
            else:
                self._barge_in(timestamp)

    def _raise_candidate(self, timestamp: int) -> None:
        """Pause at once and ask inference; the window's timer applies the default policy."""
        self.playout.pause()
        self._candidates = number = (self._candidates % wire.U32) + 1
        candidate = self._candidate = _Candidate(number, timestamp)
        candidate.timer = asyncio.get_running_loop().call_later(
            self.config.barge_in_confirm_ms / 1000, self._candidate_expired, number
        )
        if self.wire_id is not None:
            report = self.playout.heard(self._heard_lag_ns())
            self.link.send_barge_candidate(self.wire_id, number, played_samples=report, timestamp=timestamp)

    def _candidate_expired(self, number: int) -> None:
        candidate = self._candidate
        if candidate is None or candidate.number != number or self.state is CallState.CLOSED:
            return
        self.barge_by_policy += 1
        sustained_ms = candidate.speech_frames * wire.PTIME_MS
        self._decide(candidate, confirm=sustained_ms >= self.config.barge_in_sustain_ms)

    def on_barge_verdict(self, number: int, confirm: bool) -> None:
        """Inference's answer to a candidate; a late or unknown one (the window decided) is ignored."""
        candidate = self._candidate
        if candidate is None or candidate.number != number:
            return
        self._decide(candidate, confirm=confirm)

    def _decide(self, candidate: _Candidate, *, confirm: bool) -> None:
        self._drop_candidate()
        if confirm:
            self._barge_in(candidate.onset_timestamp)
        else:
            self.barge_rejected += 1
            self._gate.rejected()  # the same sound does not raise a new candidate at once
            self.playout.resume()
        self._publish_gate()

    def _drop_candidate(self) -> None:
        candidate, self._candidate = self._candidate, None
        if candidate is not None and candidate.timer is not None:
            candidate.timer.cancel()
        self._publish_gate()

    def _heard_lag_ns(self) -> int:
        """How far behind the relay's send the caller's ear was when the onset left the caller's mouth:
        the round trip (the reply's way down, the onset's way up; RTCP-measured on the relay's leg) plus
        ``heard_lag_ms`` for what the relay cannot measure."""
        rtt_ms = self.fast_path.rtt_ms if self.fast_path is not None else None
        return round(((rtt_ms or 0.0) + self.config.heard_lag_ms) * 1_000_000)

    def _barge_in(self, timestamp: int) -> None:
        report = self.playout.barge_in(self._heard_lag_ns())
        self.counters.barge_ins += 1
        self.counters.frames_dropped_barge_in += report.dropped_frames
        if self.wire_id is not None:
            self.link.send_barge_in(
                self.wire_id,
                played_samples=report.played_samples,
                dropped_frames=report.dropped_frames,
                response_seq=report.response_seq,
                timestamp=timestamp,
            )

    # -- outbound: inference → caller (CallSink) -------------------------------------------------

    def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None:
        self.counters.frames_from_inference += 1
        self.playout.push_frame(payload, seq, marker, timestamp)

    def on_mark(self, name: str, timestamp: int) -> None:
        self.playout.push_mark(name, timestamp)

    def on_event(self, event: dict[str, Any]) -> None:
        """Keep inference's JSON events (transcripts, tool status, agent timings) for the call's record;
        stage marks also go to ``on_stage`` (the edge, for the caller's page: relay/edge_link.py)."""
        self.events.append({"at_ms": round((time.perf_counter() - self._t0) * 1000, 3), "event": event})
        if self.on_stage is not None and event.get("type") == STAGE_EVENT:
            self.on_stage(self.call_id, event)

    def on_clear(self, timestamp: int) -> None:
        """The agent interrupted itself; tell it what the caller heard of the cleared response, as
        BARGE_IN does: every frame already sent reaches the caller (a CLEAR cannot recall it)."""
        dropped = self.playout.clear_before(timestamp)
        if self.wire_id is not None:
            event = {
                "type": CLEARED_EVENT,
                "timestamp": timestamp,
                "heard_samples": self.playout.response_frames * SAMPLES_PER_FRAME,
                "dropped_frames": dropped,
            }
            with contextlib.suppress(wire.WireError):
                self.link.send_event(self.wire_id, event, reliable=True)

    def on_call_end(self, reason: str) -> None:
        self.wire_id = None  # inference already knows; do not send it CALL_END back
        self._sync_native()
        if reason in AGENT_GONE_REASONS and self.state is CallState.LIVE:
            if len(self.endpoints) > 1 and self._switch_task is None:
                self._switch_task = asyncio.get_running_loop().create_task(self._switch_agent(reason))
                return
            if reason == AGENT_LOST:
                silent = f"silent for {self.link.agent_timeout_s:g} s"
                self.schedule_close(self._agent_lost_reason(f"{silent}; no other inference endpoint"))
                return
        self.schedule_close(f"inference ended the call: {reason}")

    def _agent_lost_reason(self, why: str) -> str:
        # "inference ended the call" + "unknown_call" is what relay/edge_link.py's end_code maps to the
        # edge's agent_lost (the caller's page says so): a silent agent is one that no longer has the call.
        return f"inference ended the call: unknown_call (agent lost: {why})"

    async def _switch_agent(self, reason: str) -> None:
        """The agent is gone mid-call: CALL_START with ``continues`` (agent_lost, the call's next attempt)
        on each other endpoint in turn, the first that takes it carries on; else the call ends."""
        self._drop_candidate()
        dropped = self.playout.new_source()  # the lost agent's queued reply would never be finished
        count = len(self.endpoints)
        lost = self.endpoints[self._endpoint]
        log.warning("call %s: agent %s:%d gone (%s); trying the other endpoints", self.call_id, *lost, reason)
        try:
            for step in range(1, count):  # bounded: every other endpoint once
                if self._attempt >= MAX_CONTINUATIONS or self.state is CallState.CLOSED:
                    break
                index = (self._endpoint + step) % count
                self._attempt += 1
                continuation = Continuation(self.relay_id, AGENT_LOST, self._attempt)
                try:
                    wire_id = await asyncio.wait_for(
                        self.link.start_call(
                            self.call_id,
                            self,
                            metadata=dict(self.metadata, mode=self.mode),
                            inference=self.endpoints[index],
                            continues=continuation,
                        ),
                        timeout=SWITCH_START_WAIT_S,
                    )
                except (LinkError, TimeoutError) as exc:
                    log.warning(
                        "call %s: inference %s:%d did not take it: %s",
                        self.call_id,
                        *self.endpoints[index],
                        str(exc) or f"no ACK within {SWITCH_START_WAIT_S:g} s",
                    )
                    continue
                if self._closed.is_set() or self.close_reason is not None:  # the caller hung up meanwhile
                    with contextlib.suppress(LinkError, wire.WireError):
                        await self.link.end_call(wire_id, "relay_closed")
                    return
                self._endpoint = index
                self.continues = continuation
                self.wire_id = wire_id
                self._sync_native()
                self.agent_switches += 1
                log.info(
                    "call %s continues on inference %s:%d (attempt %d; %d frames of the lost agent dropped)",
                    self.call_id,
                    *self.endpoints[index],
                    self._attempt,
                    dropped,
                )
                return
        finally:
            self._switch_task = None
        self.schedule_close(self._agent_lost_reason(f"{reason}; no other inference endpoint took the call"))

    def _send_frame(self, payload: bytes, timestamp: int, marker: bool) -> None:
        fp = self.fast_path
        if fp is None or fp.closed:
            return
        if fp.send(payload, timestamp, marker=marker):
            self.counters.packets_out += 1
            self.counters.bytes_out += len(payload)

    def _mark_reached(self, name: str, timestamp: int) -> None:
        if self.wire_id is not None:
            self.link.send_mark(self.wire_id, name, timestamp)

    # -- introspection ---------------------------------------------------------------------------

    def sample(self) -> CallSample:
        self._fold_out()
        stats = self.fast_path.stats() if self.fast_path else None
        return CallSample(
            counters=self.counters,
            dwell_in=self.dwell_in,
            dwell_out=self.dwell_out,
            lost=stats.lost_in if stats else 0,
            jitter_ms=stats.jitter_in_ms if stats else None,
            rtt_ms=stats.rtt_ms if stats else None,
        )

    def summary(self, *, with_events: bool = False) -> dict[str, Any]:
        """The call's telemetry as JSON-able data: logged at hang-up, served by the control API."""
        if "peer" not in vars(self) and self._final is not None:  # released: what it was at close
            return self._final
        self._fold_out()
        stats = self.fast_path.stats() if self.fast_path else None
        c = self.counters
        return {
            "call_id": self.call_id,
            "mode": self.mode,
            "state": self.state,
            "close_reason": self.close_reason,
            "setup_ms": round(c.setup_ms, 2),
            "duration_s": round(time.time() - self.created_at, 3),
            "packets_in": c.packets_in,
            "bytes_in": c.bytes_in,
            "packets_out": c.packets_out,
            "bytes_out": c.bytes_out,
            "packets_to_inference": c.packets_to_inference,
            "frames_from_inference": c.frames_from_inference,
            "barge_ins": c.barge_ins,
            "barge_candidates": self._candidates,
            "barge_rejected": self.barge_rejected,
            "barge_decided_by_policy": self.barge_by_policy,
            "frames_dropped_barge_in": c.frames_dropped_barge_in,
            "frames_dropped_after_barge_in": self.playout.frames_dropped_interrupted,
            "frames_dropped_cleared": self.playout.frames_dropped_cleared,
            "frames_caught_up": self.playout.frames_caught_up,
            "speech_frames_decoded": self._detector.decoded_frames,
            "lost_in": stats.lost_in if stats else 0,
            "jitter_in_ms": round(stats.jitter_in_ms, 2) if stats else None,
            "lost_out": stats.lost_out if stats else 0,
            "jitter_out_ms": round(stats.jitter_out_ms, 2) if stats else None,
            "rtt_ms": round(stats.rtt_ms, 2) if stats and stats.rtt_ms is not None else None,
            "undecryptable": stats.undecryptable if stats else 0,
            # AUDIO_IN timestamps are offsets from this RTP timestamp (the caller's first packet that
            # reached the relay): with it a caller maps inference's media times onto its own timeline.
            "rtp_timestamp_base": self._ts0,
            "dwell_in_p50_ms": _round(self.dwell_in.quantile_ms(0.5)),
            "dwell_in_p99_ms": _round(self.dwell_in.quantile_ms(0.99)),
            "dwell_out_p50_ms": _round(self.dwell_out.quantile_ms(0.5)),
            "dwell_out_p99_ms": _round(self.dwell_out.quantile_ms(0.99)),
            "events_kept": len(self.events),
            "agent_switches": self.agent_switches,
            "inference": "{}:{}".format(*self.endpoints[self._endpoint]) if self.endpoints else None,
        } | ({"events": list(self.events)} if with_events else {})


_KEPT_AFTER_RELEASE = (
    "call_id",
    "mode",
    "state",
    "close_reason",
    "created_at",
    "counters",
    "metadata",
    "_closed",
    "_close_task",
    "_final",
)
"""What a released call keeps (``Call.release``): its identity, how it ended, its final summary."""


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))
