"""The latency budget's arithmetic (scripts/devtools/budget.py): percentiles, the timestamp mapping, each
component."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from splitrelay.bench.stats import percentile
from splitrelay.devtools.budget import (
    U32,
    AgentReply,
    BudgetError,
    CallReport,
    ConnectTimes,
    RelayView,
    SendClock,
    TurnRecord,
    match_reply,
    relay_to_caller_ts,
    ts_diff,
    turn_budget,
)

# --- percentiles ----------------------------------------------------------------------------------


def test_percentile_small_cases() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 95) == pytest.approx(3.85)
    assert percentile([1.0, 2.0, 3.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0], 100) == 3.0


def test_percentile_agrees_with_numpy() -> None:
    rng = random.Random(7)
    for _ in range(200):
        values = [rng.uniform(-50, 900) for _ in range(rng.randint(1, 40))]
        for q in (0, 5, 50, 90, 95, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_refuses_q_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match=r"q: must be 0\.\.100"):
        percentile([1.0], q)


# --- the timestamp mapping -----------------------------------------------------------------------


def test_ts_diff_is_wrap_safe() -> None:
    assert ts_diff(5, U32 - 4) == 10
    assert ts_diff(U32 - 4, 5) == -10
    assert ts_diff(48_000, 0) == 48_000


def test_relay_timestamps_map_back_onto_the_callers_timeline() -> None:
    # The relay rebased to the first packet it saw (caller timestamp 0xFFFFFF00): 0x200 after it wraps.
    assert relay_to_caller_ts(0x200, 0xFFFFFF00) == 0x100
    assert relay_to_caller_ts(0, 12345) == 12345
    with pytest.raises(BudgetError, match="relay_ts: must be a u32"):
        relay_to_caller_ts(-1, 0)
    with pytest.raises(BudgetError, match="base: must be a u32"):
        relay_to_caller_ts(0, 1 << 32)


def test_send_clock_finds_the_frame_holding_a_timestamp() -> None:
    clock = SendClock(U32 - 959, 10.0)  # the second frame's timestamp wraps to 0
    sent = [10.0 + k * 0.02 + 0.001 * (k == 2) for k in range(5)]
    assert [clock.record(t) for t in sent] == [U32 - 959, 0, 960, 1920, 2880]
    assert len(clock) == 5
    assert clock.sent_at(0) == sent[1]
    assert clock.sent_at(959) == sent[1]  # inside the frame
    assert clock.sent_at(960) == sent[2]
    assert clock.due_at(960) == pytest.approx(10.04)
    assert clock.sent_at(U32 - 959) == sent[0]
    assert clock.sent_at(U32 - 960) is None  # before the first frame
    assert clock.sent_at(3840) is None and clock.due_at(3840) is None  # not sent yet
    assert clock.index_of(2880) == 4
    assert clock.max_lag(0, until=20.0) == pytest.approx(0.001)  # frame 2 left 1 ms late
    assert clock.max_lag(1920, until=20.0) == pytest.approx(0.0)
    assert clock.max_lag(0, until=10.03) == pytest.approx(0.0)  # frame 2 had not left by then
    assert clock.max_lag(3840, until=20.0) is None


def test_send_clock_refuses_a_clock_going_backwards_and_too_many_frames() -> None:
    clock = SendClock(0, 1.0, max_frames=2)
    clock.record(1.0)
    with pytest.raises(BudgetError, match="went backwards"):
        clock.record(0.5)
    clock.record(1.02)
    with pytest.raises(BudgetError, match="more than 2 frames"):
        clock.record(1.04)
    with pytest.raises(BudgetError, match="first_timestamp"):
        SendClock(-1, 0.0)


# --- the relay's record -----------------------------------------------------------------------


def test_agent_reply_from_event_and_its_endpointing() -> None:
    reply = AgentReply.from_event(
        {"type": "agent.reply", "end_of_speech_at": U32 - 4799, "detected_at": 19_200, "utterance_ms": 900}
    )
    assert reply.endpointing_ms == pytest.approx(500.0)  # 24000 samples across the wrap
    assert reply.utterance_ms == 900


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"detected_at": 1}, "end_of_speech_at"),
        ({"end_of_speech_at": 1, "detected_at": True}, "detected_at"),
        ({"end_of_speech_at": 1, "detected_at": 1 << 32}, "detected_at"),
        ({"end_of_speech_at": "1", "detected_at": 1}, "end_of_speech_at"),
        ({"end_of_speech_at": 1, "detected_at": 2, "utterance_ms": 1.5}, "utterance_ms"),
    ],
)
def test_agent_reply_names_the_bad_field(event: dict[str, object], field: str) -> None:
    with pytest.raises(BudgetError, match=f"agent.reply.{field}"):
        AgentReply.from_event(event)


def summary(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "state": "live",
        "rtt_ms": 0.5,
        "jitter_in_ms": 0.3,
        "dwell_in_p50_ms": 0.2,
        "dwell_in_p99_ms": 0.9,
        "dwell_out_p50_ms": 0.3,
        "dwell_out_p99_ms": 1.1,
        "packets_in": 500,
        "packets_out": 140,
        "lost_in": 0,
        "rtp_timestamp_base": 7680,
        "events": [],
    }
    doc.update(overrides)
    return doc


def test_relay_view_reads_the_summary_and_keeps_only_agent_replies() -> None:
    events = [
        {"at_ms": 1.0, "event": {"type": "transcript.final", "text": "hi"}},
        {"at_ms": 2.0, "event": {"type": "agent.reply", "end_of_speech_at": 100, "detected_at": 24100}},
        "not an event",
    ]
    view = RelayView.from_summary(summary(events=events, rtt_ms=None))
    assert view.replies == (AgentReply(100, 24100, None),)
    assert view.rtt_ms is None and view.dwell_out_p50_ms == 0.3 and view.rtp_timestamp_base == 7680
    assert view.state == "live" and view.packets_in == 500


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rtt_ms": "fast"}, "rtt_ms"),
        ({"dwell_in_p50_ms": float("nan")}, "dwell_in_p50_ms"),
        ({"rtp_timestamp_base": -3}, "rtp_timestamp_base"),
        ({"events": {"type": "agent.reply"}}, "events"),
    ],
)
def test_relay_view_names_the_bad_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(BudgetError, match=field):
        RelayView.from_summary(summary(**overrides))


# --- one turn ------------------------------------------------------------------------------------

FIRST_TS = U32 - 20 * 960  # the caller's timeline wraps during the turn
T0 = 100.0


def sent_clock(frames: int = 120, late: dict[int, float] | None = None) -> SendClock:
    """Frames sent on schedule, a little jitter on some; ``late`` frames (index → s) and the ones after
    them catch up with the schedule the way the caller's absolute schedule does."""
    clock = SendClock(FIRST_TS, T0)
    behind = 0.0
    for k in range(frames):
        behind = max((late or {}).get(k, 0.0), behind - 0.02)  # a stall, then a burst back on time
        clock.record(clock.due(k) + max(behind, 0.0005 if k % 3 else 0.0))
    return clock


def scenario(
    *,
    eos_frame: int = 50,
    reply_delay_s: float = 0.004,
    base_frame: int = 3,
    late: dict[int, float] | None = None,
) -> tuple[TurnRecord, SendClock, RelayView]:
    """Utterance frames 10..59, last speech frame 50; the relay's first packet was frame ``base_frame``;
    the agent ends speech after frame ``eos_frame`` and replies 500 ms later."""
    clock = sent_clock(late=late)
    base = clock.timestamp(base_frame)
    eos = (clock.timestamp(eos_frame + 1) - base) & U32  # relay media time just after the last speech frame
    detected = (eos + 24_000) & U32
    detect_frame = eos_frame + 25  # the frame that ends at detected_at
    sent_detect = clock.sent_at(clock.timestamp(detect_frame))
    assert sent_detect is not None
    record = TurnRecord(
        index=1,
        first_frame_ts=clock.timestamp(10),
        frames=50,
        last_speech_ts=clock.timestamp(50),
        last_speech_due=clock.due(50),
        reply_first_at=sent_detect + reply_delay_s,
        reply_last_at=sent_detect + reply_delay_s + 2.0,
        reply_frames=101,
        reply_match=5,
        caller_rtt_ms=1.0,
        caller_jitter_ms=0.4,
    )
    relay = RelayView.from_summary(
        summary(
            rtp_timestamp_base=base,
            events=[{"event": {"type": "agent.reply", "end_of_speech_at": eos, "detected_at": detected}}],
        )
    )
    return record, clock, relay


def test_turn_budget_through_the_sfu() -> None:
    record, clock, relay = scenario()
    budget = turn_budget(record, clock, relay, "sfu")
    assert budget.voice_to_voice_ms == pytest.approx(504.0)  # frame 75 left on time (75 % 3 == 0)
    assert budget.send_lag_ms == pytest.approx(0.5)
    assert budget.endpointing_ms == pytest.approx(500.0)
    assert budget.eos_skew_ms == 0.0
    assert budget.response_ms == pytest.approx(4.0)
    assert budget.caller_rtt_ms == 1.0 and budget.relay_rtt_ms == 0.5
    assert budget.network_rtt_ms == pytest.approx(1.5)  # two WebRTC legs: caller-SFU and SFU-relay
    assert budget.relay_dwell_ms == pytest.approx(0.5)
    assert budget.inference_ms == pytest.approx(4.0 - 1.5 - 0.5)
    assert budget.playout_ms == 0.0
    assert budget.jitter_ms == 0.4
    assert budget.reply_ms == pytest.approx(2000.0)
    assert (budget.reply_frames, budget.reply_match) == (101, 5)


def test_turn_budget_in_direct_mode_counts_one_leg() -> None:
    record, clock, relay = scenario()
    budget = turn_budget(record, clock, relay, "direct")
    assert budget.network_rtt_ms == 1.0
    assert budget.inference_ms == pytest.approx(4.0 - 1.0 - 0.5)


def test_a_stalled_sender_does_not_shorten_voice_to_voice() -> None:
    """The last speech frame left 8 ms late and the next ones caught up: voice-to-voice still counts
    from when the speech ended (the schedule), and the stall shows as send lag."""
    record, clock, relay = scenario(late={50: 0.008})
    budget = turn_budget(record, clock, relay, "sfu")
    assert budget.voice_to_voice_ms == pytest.approx(504.0)
    assert budget.endpointing_ms is not None and budget.voice_to_voice_ms is not None
    assert budget.voice_to_voice_ms >= budget.endpointing_ms
    assert budget.send_lag_ms == pytest.approx(8.0)
    stalled_detect, clock2, relay2 = scenario(late={75: 0.008})  # the frame the agent decided on was late
    later = turn_budget(stalled_detect, clock2, relay2, "sfu")
    assert later.response_ms == pytest.approx(12.0)  # its 8 ms late start is part of the response
    assert later.voice_to_voice_ms == pytest.approx(512.0)  # = endpointing + skew + response, exactly


def test_an_agent_ending_speech_later_shows_as_skew_not_as_endpointing() -> None:
    record, clock, relay = scenario(eos_frame=51)  # the agent took one more frame as speech
    budget = turn_budget(record, clock, relay, "sfu")
    assert budget.eos_skew_ms == pytest.approx(20.0)
    assert budget.endpointing_ms == pytest.approx(500.0)
    assert budget.response_ms == pytest.approx(4.5)  # frame 76 left 0.5 ms late
    assert budget.voice_to_voice_ms == pytest.approx(500.0 + 20.0 + 4.5)


def test_what_nobody_measured_stays_none() -> None:
    record, clock, relay = scenario()
    alone = turn_budget(record, clock, None, "sfu")
    assert alone.voice_to_voice_ms is not None
    for name in (
        "endpointing_ms",
        "eos_skew_ms",
        "response_ms",
        "relay_dwell_ms",
        "inference_ms",
        "relay_rtt_ms",
    ):
        assert getattr(alone, name) is None, name
    assert alone.network_rtt_ms is None  # the relay leg is unknown: no half sum
    no_base = RelayView.from_summary(summary(rtp_timestamp_base=None, events=[{"event": vars_of(relay)}]))
    budget = turn_budget(record, clock, no_base, "sfu")
    assert budget.endpointing_ms == pytest.approx(500.0)  # a difference: no mapping needed
    assert budget.eos_skew_ms is None and budget.response_ms is None and budget.inference_ms is None
    silent = TurnRecord(
        1, record.first_frame_ts, 50, record.last_speech_ts, record.last_speech_due, None, None
    )
    assert turn_budget(silent, clock, relay, "sfu").voice_to_voice_ms is None
    with pytest.raises(BudgetError, match="mode"):
        turn_budget(record, clock, relay, "p2p")


def vars_of(relay: RelayView) -> dict[str, object]:
    reply = relay.replies[0]
    return {
        "type": "agent.reply",
        "end_of_speech_at": reply.end_of_speech_at,
        "detected_at": reply.detected_at,
    }


def test_match_reply_picks_the_reply_whose_end_of_speech_is_in_the_turn() -> None:
    record, clock, relay = scenario()
    base = relay.rtp_timestamp_base
    assert base is not None
    other = AgentReply((clock.timestamp(100) - base) & U32, (clock.timestamp(125) - base) & U32)
    mine = relay.replies[0]
    both = RelayView(**{**relay.__dict__, "replies": (other, mine)})
    assert match_reply(record, both, order=0) == mine
    assert match_reply(record, RelayView(**{**relay.__dict__, "replies": (other,)}), order=0) is None
    unmapped = RelayView(**{**relay.__dict__, "replies": (other, mine), "rtp_timestamp_base": None})
    assert match_reply(record, unmapped, order=1) == mine  # without a base: in order
    assert match_reply(record, unmapped, order=2) is None


# --- the call report ------------------------------------------------------------------------------


def test_report_summary_headline_and_json() -> None:
    record, clock, relay = scenario()
    turns = [turn_budget(record, clock, relay, "sfu")]
    slower, clock2, relay2 = scenario(reply_delay_s=0.010)
    turns.append(turn_budget(slower, clock2, relay2, "sfu"))
    report = CallReport("sfu", "call-1", "utterance.wav", 3260, ConnectTimes(80.0, 30.0, 110.0, 220.0, 90.0))
    report.turns = turns
    report.relay = relay
    stats = report.summary()
    assert stats["response_ms"]["p50"] == pytest.approx(7.0)
    assert stats["response_ms"]["p95"] == pytest.approx(4.0 + 6.0 * 0.95)
    assert stats["endpointing_ms"] == {"p50": pytest.approx(500.0), "p95": pytest.approx(500.0)}
    assert report.ok
    headline = report.headline()
    assert headline.startswith("voice-to-voice p50 50") and "endpointing 500 ms" in headline
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["ok"] is True and len(doc["turns"]) == 2 and doc["relay"]["agent_replies"] == 1
    assert "replies" not in doc["relay"]
    assert doc["turns"][0]["response_ms"] == round(turns[0].response_ms or 0, 3)
    report.errors.append("turn 3: no reply")
    assert not report.ok


def test_report_without_replies() -> None:
    report = CallReport("direct", None, "u.wav", 1000)
    assert not report.ok
    assert report.headline().startswith("no turn got a reply")
    assert report.summary()["voice_to_voice_ms"] == {"p50": None, "p95": None}
