"""The turn-by-turn latency budget: raw measurements in, per-turn components and p50/p95 out.

Pure arithmetic, no I/O, so every definition in docs/local-stack.md has a unit test. The caller
(scripts/devtools/call.py) measures on its own monotonic clock and RTP timeline; the relay's record of the
call gives inference's media timestamps (rebased to the caller's first packet that reached the relay)
and the relay's own telemetry. A component nobody measured stays None (shown as n/a): never filled in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from splitrelay.bench.stats import percentile

U32: Final = 0xFFFFFFFF
CLOCK_RATE: Final = 48_000
FRAME_TS: Final = 960  # RTP timestamp units per 20 ms frame
MODES: Final = ("sfu", "direct")
STAGE_EVENT: Final = "agent.stage"  # relay/inference/stages.py
MAX_STAGES_PER_TURN: Final = 16  # as the SDK bounds them
MAX_STAGE_TURNS: Final = 256  # more than the relay's record keeps (64 events)

# Per-turn metrics summarised as p50/p95, in the order tables show them.
TURN_METRICS: Final = (
    "voice_to_voice_ms",
    "endpointing_ms",
    "eos_skew_ms",
    "response_ms",
    "network_rtt_ms",
    "relay_dwell_ms",
    "inference_ms",
    "playout_ms",
    "jitter_ms",
    "reply_ms",
)


class BudgetError(ValueError):
    """A record from the relay or the caller does not have the expected shape (the field is named)."""


def ts_diff(a: int, b: int) -> int:
    """a - b on the u32 RTP clock, wrap-safe (RFC 1982): positive when a is later."""
    return ((a - b + 0x80000000) & U32) - 0x80000000


def ts_ms(samples: int) -> float:
    return samples * 1000 / CLOCK_RATE


def relay_to_caller_ts(relay_ts: int, base: int) -> int:
    """Inference's media timestamp (AUDIO_IN, rebased by the relay) back on the caller's RTP timeline.

    The SFU forwards RTP timestamps unchanged and the relay subtracts the timestamp of the first packet
    it saw (its ``rtp_timestamp_base``), so adding that base back gives the caller's own timestamp.
    """
    for name, value in (("relay_ts", relay_ts), ("base", base)):
        if not 0 <= value <= U32:
            raise BudgetError(f"{name}: must be a u32 RTP timestamp, got {value}")
    return (relay_ts + base) & U32


class SendClock:
    """The caller's outbound timeline: frame k carries timestamp ``first + 960 k``, is due at
    ``start + 20 ms * k`` (the absolute schedule a capture clock would give) and left at ``sent[k]``.

    Every frame the caller sends is recorded (speech and silence), so any media timestamp the agent
    reports can be turned into the moment that audio was due and the moment it actually left.
    """

    def __init__(self, first_timestamp: int, start: float, *, max_frames: int = 360_000) -> None:
        if not 0 <= first_timestamp <= U32:
            raise BudgetError(f"first_timestamp: must be a u32 RTP timestamp, got {first_timestamp}")
        self.first_timestamp = first_timestamp
        self.start = start
        self.max_frames = max_frames  # two hours of 20 ms frames
        self._sent: list[float] = []

    def __len__(self) -> int:
        return len(self._sent)

    def timestamp(self, index: int) -> int:
        return (self.first_timestamp + index * FRAME_TS) & U32

    def due(self, index: int) -> float:
        return self.start + index * FRAME_TS / CLOCK_RATE

    def record(self, sent_at: float) -> int:
        """Record the next frame's send time; returns its RTP timestamp."""
        if len(self._sent) >= self.max_frames:
            raise BudgetError(f"send clock: more than {self.max_frames} frames in one call")
        if self._sent and sent_at < self._sent[-1]:
            raise BudgetError("sent_at: the monotonic clock went backwards")
        self._sent.append(sent_at)
        return self.timestamp(len(self._sent) - 1)

    def index_of(self, timestamp: int) -> int | None:
        """The frame whose 20 ms contain ``timestamp``, if the caller has sent it."""
        offset = ts_diff(timestamp, self.first_timestamp)
        index = offset // FRAME_TS
        return index if 0 <= index < len(self._sent) else None

    def sent_at(self, timestamp: int) -> float | None:
        index = self.index_of(timestamp)
        return None if index is None else self._sent[index]

    def due_at(self, timestamp: int) -> float | None:
        index = self.index_of(timestamp)
        return None if index is None else self.due(index)

    def max_lag(self, timestamp: int, until: float) -> float | None:
        """Most any frame from ``timestamp`` on, sent before ``until``, left behind its due time (s)."""
        first = self.index_of(timestamp)
        if first is None:
            return None
        lag = 0.0
        for index in range(first, len(self._sent)):  # bounded by the frames sent
            if self._sent[index] > until:
                break
            lag = max(lag, self._sent[index] - self.due(index))
        return lag


@dataclass(frozen=True)
class AgentReply:
    """The echo agent's ``agent.reply`` event: media times (48 kHz, relay-rebased) of one turn."""

    end_of_speech_at: int
    """Just after the last frame the agent took as speech."""
    detected_at: int
    """End of the frame at which the agent's silence threshold was reached (it then replied)."""
    utterance_ms: int | None = None

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> AgentReply:
        values: dict[str, int] = {}
        for name in ("end_of_speech_at", "detected_at"):
            value = event.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U32:
                raise BudgetError(f"agent.reply.{name}: must be a u32 media timestamp, got {value!r}")
            values[name] = value
        utterance = event.get("utterance_ms")
        if utterance is not None and (isinstance(utterance, bool) or not isinstance(utterance, int)):
            raise BudgetError(f"agent.reply.utterance_ms: must be an integer, got {utterance!r}")
        return cls(values["end_of_speech_at"], values["detected_at"], utterance)

    @property
    def endpointing_ms(self) -> float:
        return ts_ms(ts_diff(self.detected_at, self.end_of_speech_at))


@dataclass(frozen=True)
class StageMark:
    """One ``agent.stage`` mark: a named stage reached ``at_ms`` after the agent's turn started."""

    name: str
    at_ms: float


@dataclass(frozen=True)
class AgentStages:
    """One agent turn's ``agent.stage`` marks (relay/inference/stages.py), in the order they were reached.

    ``detected_at`` is the turn's start as a media time (the same moment as ``agent.reply``'s), or None.
    """

    turn: int
    detected_at: int | None
    marks: tuple[StageMark, ...]

    @staticmethod
    def parse(event: Mapping[str, Any]) -> tuple[int, int | None, StageMark]:
        """(turn, detected_at, mark) of one agent.stage event; BudgetError names a bad field."""
        turn = event.get("turn")
        if isinstance(turn, bool) or not isinstance(turn, int) or not 1 <= turn <= U32:
            raise BudgetError(f"agent.stage.turn: must be a positive integer, got {turn!r}")
        name = event.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 40:
            raise BudgetError(f"agent.stage.name: must be a string of 1..40 characters, got {name!r}")
        at = event.get("ms")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
            raise BudgetError(f"agent.stage.ms: must be a number >= 0, got {at!r}")
        detected = event.get("detected_at")
        if detected is not None and (
            isinstance(detected, bool) or not isinstance(detected, int) or not 0 <= detected <= U32
        ):
            raise BudgetError(
                f"agent.stage.detected_at: must be a u32 media timestamp or null, got {detected!r}"
            )
        return turn, detected, StageMark(name, float(at))

    @classmethod
    def from_events(cls, events: list[Mapping[str, Any]]) -> tuple[AgentStages, ...]:
        """Group agent.stage events by (turn, detected_at), in order of appearance: a call that moved to
        another agent restarts its turn count, and its detected_at tells the turns apart. Within a turn the
        first mark of a name counts, marks are sorted by time, at most MAX_STAGES_PER_TURN are kept."""
        groups: dict[tuple[int, int | None], list[StageMark]] = {}
        for event in events[: MAX_STAGE_TURNS * MAX_STAGES_PER_TURN]:
            turn, detected, mark = cls.parse(event)
            marks = groups.get((turn, detected))
            if marks is None:
                if len(groups) >= MAX_STAGE_TURNS:
                    continue
                marks = groups[(turn, detected)] = []
            if len(marks) < MAX_STAGES_PER_TURN and all(m.name != mark.name for m in marks):
                marks.append(mark)
        return tuple(
            cls(turn, detected, tuple(sorted(marks, key=lambda m: m.at_ms)))
            for (turn, detected), marks in groups.items()
        )


@dataclass(frozen=True)
class StageSplit:
    """One stage of a turn's inference: reached ``at_ms`` after the turn started, ``ms`` after the previous
    mark (the first: after the turn started). A turn's splits sum to its last ``at_ms``."""

    name: str
    at_ms: float
    ms: float


def stage_splits(stages: AgentStages) -> tuple[StageSplit, ...]:
    out = []
    previous = 0.0
    for mark in stages.marks:
        out.append(StageSplit(mark.name, mark.at_ms, mark.at_ms - previous))
        previous = mark.at_ms
    return tuple(out)


def _opt_float(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BudgetError(f"relay summary.{key}: must be a number or null, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RelayView:
    """What the relay's record of the call (GET /v1/calls/{id}) says, as far as the budget needs."""

    rtt_ms: float | None
    """RTCP round trip on the relay's own WebRTC leg (to the SFU, or to the caller in direct mode)."""
    jitter_in_ms: float | None
    dwell_in_p50_ms: float | None
    dwell_in_p99_ms: float | None
    dwell_out_p50_ms: float | None
    dwell_out_p99_ms: float | None
    rtp_timestamp_base: int | None
    replies: tuple[AgentReply, ...]
    packets_in: int | None = None
    packets_out: int | None = None
    lost_in: int | None = None
    state: str | None = None
    stages: tuple[AgentStages, ...] = ()
    """The agent's agent.stage marks, one entry per agent turn (empty: it reported none)."""

    @classmethod
    def from_summary(cls, doc: Mapping[str, Any]) -> RelayView:
        base = doc.get("rtp_timestamp_base")
        if base is not None and (isinstance(base, bool) or not isinstance(base, int) or not 0 <= base <= U32):
            raise BudgetError(f"relay summary.rtp_timestamp_base: must be a u32 or null, got {base!r}")
        events = doc.get("events") or []
        if not isinstance(events, list):
            raise BudgetError("relay summary.events: must be a list")
        replies = []
        stage_events: list[Mapping[str, Any]] = []
        for item in events:
            event = item.get("event") if isinstance(item, dict) else None
            if isinstance(event, dict) and event.get("type") == "agent.reply":
                replies.append(AgentReply.from_event(event))
            elif isinstance(event, dict) and event.get("type") == STAGE_EVENT:
                stage_events.append(event)
        counts = {}
        for key in ("packets_in", "packets_out", "lost_in"):
            value = doc.get(key)
            counts[key] = value if isinstance(value, int) and not isinstance(value, bool) else None
        state = doc.get("state")
        return cls(
            rtt_ms=_opt_float(doc, "rtt_ms"),
            jitter_in_ms=_opt_float(doc, "jitter_in_ms"),
            dwell_in_p50_ms=_opt_float(doc, "dwell_in_p50_ms"),
            dwell_in_p99_ms=_opt_float(doc, "dwell_in_p99_ms"),
            dwell_out_p50_ms=_opt_float(doc, "dwell_out_p50_ms"),
            dwell_out_p99_ms=_opt_float(doc, "dwell_out_p99_ms"),
            rtp_timestamp_base=base,
            replies=tuple(replies),
            state=state if isinstance(state, str) else None,
            stages=AgentStages.from_events(stage_events),
            **counts,
        )


@dataclass(frozen=True)
class TurnRecord:
    """What the caller measured in one turn (its clock is ``time.perf_counter``, in seconds)."""

    index: int
    first_frame_ts: int
    """RTP timestamp of the utterance's first frame in this turn."""
    frames: int
    """Frames in the utterance."""
    last_speech_ts: int
    """RTP timestamp of the utterance's last speech frame."""
    last_speech_due: float
    """When that frame was due on the send schedule: the moment the caller stopped speaking."""
    reply_first_at: float | None
    """Arrival of the first packet of the agent's reply (None: no reply)."""
    reply_last_at: float | None
    reply_frames: int = 0
    reply_match: int | None = None
    """Where the reply's frames sit in the utterance (the index of its first frame); None: no exact run."""
    caller_rtt_ms: float | None = None
    """RTCP round trip on the caller's leg at the end of the turn."""
    caller_jitter_ms: float | None = None
    """RFC 3550 interarrival jitter of the agent's stream, as the caller measures it."""


@dataclass(frozen=True)
class TurnBudget:
    """One turn's components in milliseconds; None where nothing measured it."""

    turn: int
    voice_to_voice_ms: float | None
    endpointing_ms: float | None
    eos_skew_ms: float | None
    response_ms: float | None
    caller_rtt_ms: float | None
    relay_rtt_ms: float | None
    network_rtt_ms: float | None
    relay_dwell_ms: float | None
    inference_ms: float | None
    playout_ms: float
    jitter_ms: float | None
    reply_ms: float | None
    reply_frames: int
    reply_match: int | None
    send_lag_ms: float | None
    """Most a frame left behind schedule between the last speech frame and the reply (a CPU stall)."""
    stages: tuple[StageSplit, ...] = ()
    """Inference split by the agent's agent.stage marks (empty: it reported none for this turn)."""
    after_last_stage_ms: float | None = None
    """inference - the last mark's at_ms: what follows the last stage (and what nobody measures)."""


def match_reply(record: TurnRecord, relay: RelayView | None, order: int) -> AgentReply | None:
    """The agent.reply of this turn: the one whose end of speech falls inside the turn's utterance.

    Without the relay's timestamp base the replies can only be taken in order (``order``: this turn's
    position among the turns).
    """
    if relay is None or not relay.replies:
        return None
    base = relay.rtp_timestamp_base
    if base is None:
        return relay.replies[order] if order < len(relay.replies) else None
    span = record.frames * FRAME_TS
    for reply in relay.replies:
        offset = ts_diff(relay_to_caller_ts(reply.end_of_speech_at, base), record.first_frame_ts)
        if 0 < offset <= span:
            return reply
    return None


def match_stages(
    record: TurnRecord,
    clock: SendClock,
    relay: RelayView | None,
    order: int,
    reply: AgentReply | None = None,
) -> AgentStages | None:
    """The agent.stage marks of this turn.

    1. The agent turn whose ``detected_at`` is the matched agent.reply's (the same decision).
    2. With the relay's timestamp base, the last agent turn whose decision falls after this utterance
       started and whose audio was due before the reply arrived (an agent decides before it replies).
    3. Marks without ``detected_at``, or no base: in order (``order``: this turn's position).
    """
    if relay is None or not relay.stages:
        return None
    if reply is not None:
        for stages in relay.stages:
            if stages.detected_at is not None and stages.detected_at == reply.detected_at:
                return stages
    base = relay.rtp_timestamp_base
    if base is None or any(s.detected_at is None for s in relay.stages):
        return relay.stages[order] if order < len(relay.stages) else None
    if record.reply_first_at is None:
        return None
    found = None
    for stages in relay.stages:
        assert stages.detected_at is not None
        caller_ts = relay_to_caller_ts(stages.detected_at, base)
        if ts_diff(caller_ts, record.first_frame_ts) <= 0:
            continue
        # On the caller's clock the decision's audio existed when the frame ending there was due.
        due = clock.due_at((caller_ts - FRAME_TS) & U32)
        if due is not None and due <= record.reply_first_at:
            found = stages
    return found


def _sum(*parts: float | None) -> float | None:
    return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


def turn_budget(
    record: TurnRecord, clock: SendClock, relay: RelayView | None, mode: str, *, order: int = 0
) -> TurnBudget:
    """Derive one turn's budget (definitions: docs/local-stack.md, "The budget")."""
    if mode not in MODES:
        raise BudgetError(f"mode: must be one of {MODES}, got {mode!r}")
    v2v = lag = None
    if record.reply_first_at is not None:
        v2v = (record.reply_first_at - record.last_speech_due) * 1000
        frame_lag = clock.max_lag(record.last_speech_ts, record.reply_first_at)
        lag = None if frame_lag is None else frame_lag * 1000
    reply = match_reply(record, relay, order)
    stages = match_stages(record, clock, relay, order, reply)
    endpointing = reply.endpointing_ms if reply is not None else None
    # The agent's decision: agent.reply's detected_at, else (an agent that sends none, e.g. Pipecat's)
    # the detected_at of its stage marks: the same moment.
    decided = reply.detected_at if reply is not None else stages.detected_at if stages is not None else None
    eos_skew = response = None
    if relay is not None and relay.rtp_timestamp_base is not None:
        base = relay.rtp_timestamp_base
        if reply is not None:
            caller_eos = relay_to_caller_ts(reply.end_of_speech_at, base)
            eos_skew = ts_ms(ts_diff(caller_eos, (record.last_speech_ts + FRAME_TS) & U32))
        if decided is not None:
            # The agent's silence threshold was met at media time detected_at: on the caller's clock, that
            # audio existed when the frame ending there was due. The agent cannot decide earlier (on that
            # frame's arrival, or on its wall clock when packets pause), so response >= 0 and
            # voice-to-voice = endpointing + eos skew + response, exactly.
            detect_frame = (relay_to_caller_ts(decided, base) - FRAME_TS) & U32
            detect_due = clock.due_at(detect_frame)
            if detect_due is not None and record.reply_first_at is not None:
                response = (record.reply_first_at - detect_due) * 1000
    relay_rtt = relay.rtt_ms if relay is not None else None
    # Direct mode has one WebRTC leg, seen from both ends; through the SFU there are two.
    network = record.caller_rtt_ms if mode == "direct" else _sum(record.caller_rtt_ms, relay_rtt)
    dwell = _sum(relay.dwell_in_p50_ms, relay.dwell_out_p50_ms) if relay is not None else None
    inference = None
    if response is not None and network is not None and dwell is not None:
        inference = response - network - dwell
    splits = stage_splits(stages) if stages is not None else ()
    after_last = inference - splits[-1].at_ms if splits and inference is not None else None
    reply_ms = None
    if record.reply_first_at is not None and record.reply_last_at is not None:
        reply_ms = (record.reply_last_at - record.reply_first_at) * 1000
    return TurnBudget(
        turn=record.index,
        voice_to_voice_ms=v2v,
        endpointing_ms=endpointing,
        eos_skew_ms=eos_skew,
        response_ms=response,
        caller_rtt_ms=record.caller_rtt_ms,
        relay_rtt_ms=relay_rtt,
        network_rtt_ms=network,
        relay_dwell_ms=dwell,
        inference_ms=inference,
        playout_ms=0.0,  # the headless caller plays nothing: it measures at packet arrival
        jitter_ms=record.caller_jitter_ms,
        reply_ms=reply_ms,
        reply_frames=record.reply_frames,
        reply_match=record.reply_match,
        send_lag_ms=lag,
        stages=splits,
        after_last_stage_ms=after_last,
    )


@dataclass(frozen=True)
class ConnectTimes:
    """Call set-up on the caller's clock, in milliseconds."""

    signalling_ms: float
    """POST /v1/calls sent → its answer received."""
    answer_to_connected_ms: float
    """Answer applied → ICE and DTLS connected (the caller's own peer)."""
    connect_ms: float
    """POST sent → ICE and DTLS connected: from here the caller's audio can leave."""
    ready_ms: float
    """POST sent → the whole path is up (edge record ``connected`` and the relay's call ``live``)."""
    edge_answer_to_connected_ms: float | None = None
    """The edge's own record: its answer → the relay's voice pulled into the caller's transceiver."""


@dataclass
class CallReport:
    """Everything one call measured; ``to_json`` is what ``splitrelay call --json`` prints."""

    mode: str
    call_id: str | None
    utterance: str
    utterance_ms: int
    connect: ConnectTimes | None = None
    turns: list[TurnBudget] = field(default_factory=list)
    relay: RelayView | None = None
    caller: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.errors and bool(self.turns) and all(t.voice_to_voice_ms is not None for t in self.turns)
        )

    def summary(self) -> dict[str, dict[str, float | None]]:
        """p50 and p95 over the turns of every per-turn metric (None values left out)."""
        out: dict[str, dict[str, float | None]] = {}
        for name in TURN_METRICS:
            values = [v for t in self.turns if (v := getattr(t, name)) is not None]
            out[name] = {"p50": percentile(values, 50), "p95": percentile(values, 95)}
        return out

    def stage_names(self) -> list[str]:
        """Every stage any turn reported, merged in the order the turns reached them (a stage one turn
        skipped keeps its place between the ones around it)."""
        names: list[str] = []
        for turn in self.turns:
            at = -1
            for split in turn.stages:  # bounded: MAX_STAGES_PER_TURN each
                if split.name in names:
                    at = names.index(split.name)
                else:
                    at += 1
                    names.insert(at, split.name)
        return names

    def stage_summary(self) -> dict[str, Any]:
        """p50 and p95 over the turns of each stage's ``ms`` and of after_last_stage_ms; {} without stages."""
        names = self.stage_names()
        if not names:
            return {}
        stages: dict[str, dict[str, float | None]] = {}
        for name in names:
            values = [s.ms for t in self.turns for s in t.stages if s.name == name]
            stages[name] = {"p50": percentile(values, 50), "p95": percentile(values, 95)}
        after = [v for t in self.turns if (v := t.after_last_stage_ms) is not None]
        return {
            "stages": stages,
            "after_last_stage_ms": {"p50": percentile(after, 50), "p95": percentile(after, 95)},
        }

    def headline(self) -> str:
        """One line: voice-to-voice p50 and how much of it is the agent's endpointing wait."""
        stats = self.summary()
        v2v = stats["voice_to_voice_ms"]["p50"]
        if v2v is None:
            return "no turn got a reply: no voice-to-voice latency"
        line = f"voice-to-voice p50 {v2v:.0f} ms"
        endpointing = stats["endpointing_ms"]["p50"]
        if endpointing is not None:
            line += f", of which endpointing {endpointing:.0f} ms (the echo agent's silence threshold)"
        elif self.relay is not None and not self.relay.replies:
            line += " (endpointing n/a: the agent sent no agent.reply event)"
        else:
            line += " (endpointing n/a: the relay's record of the call was not available)"
        return line

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, milliseconds rounded to microseconds."""
        relay = None
        if self.relay is not None:
            relay = {k: v for k, v in asdict(self.relay).items() if k not in ("replies", "stages")}
            relay["agent_replies"] = len(self.relay.replies)
            if self.relay.stages:
                relay["agent_stage_turns"] = len(self.relay.stages)
        turns = []
        for t in self.turns:
            turn = asdict(t)
            if not t.stages:  # where no stages were reported the JSON is as before
                del turn["stages"], turn["after_last_stage_ms"]
            turns.append(turn)
        stage_summary = self.stage_summary()
        doc: dict[str, Any] = _rounded(
            {
                "ok": self.ok,
                "mode": self.mode,
                "call_id": self.call_id,
                "utterance": {"name": self.utterance, "ms": self.utterance_ms},
                "connect": asdict(self.connect) if self.connect is not None else None,
                "turns": turns,
                "summary": self.summary(),
                **({"stage_summary": stage_summary} if stage_summary else {}),
                "relay": relay,
                "caller": self.caller,
                "headline": self.headline(),
                "errors": list(self.errors),
            }
        )
        return doc


def _rounded(value: Any) -> Any:
    """Floats to 3 decimals, recursively: milliseconds to the microsecond, no false precision."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value
