"""Inference split by the agent's agent.stage marks (scripts/devtools/budget.py, budget_table.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from rich.console import Console

from splitrelay.devtools.budget import (
    U32,
    AgentStages,
    BudgetError,
    CallReport,
    RelayView,
    StageMark,
    StageSplit,
    TurnBudget,
    match_stages,
    turn_budget,
)
from splitrelay.devtools.budget_table import render, stage_table
from tests.unit.test_budget import scenario, summary


def stage(turn: int, name: str, ms: float, detected_at: int | None) -> dict[str, Any]:
    return {
        "event": {"type": "agent.stage", "turn": turn, "name": name, "ms": ms, "detected_at": detected_at}
    }


def with_stages(relay: RelayView, *marks: dict[str, Any], reply: bool = True) -> RelayView:
    """The scenario's relay view with these agent.stage events (and its agent.reply unless ``reply``)."""
    reply_event = {
        "type": "agent.reply",
        **{k: getattr(relay.replies[0], k) for k in ("end_of_speech_at", "detected_at")},
    }
    events = ([{"event": reply_event}] if reply else []) + list(marks)
    return RelayView.from_summary(summary(rtp_timestamp_base=relay.rtp_timestamp_base, events=events))


def test_relay_view_groups_stage_marks_by_agent_turn() -> None:
    events = [
        stage(1, "llm_first_token", 180.5, 900),
        stage(1, "stt_final", 100.0, 900),
        stage(1, "stt_final", 150.0, 900),  # a repeat: the first counts
        stage(2, "stt_final", 90, None),
        stage(1, "stt_final", 70.0, 5000),  # the call moved to another agent: it counts from 1 again
        {"event": {"type": "agent.reply", "end_of_speech_at": 100, "detected_at": 900}},
    ]
    view = RelayView.from_summary(summary(events=events))
    assert view.stages == (
        AgentStages(1, 900, (StageMark("stt_final", 100.0), StageMark("llm_first_token", 180.5))),
        AgentStages(2, None, (StageMark("stt_final", 90.0),)),
        AgentStages(1, 5000, (StageMark("stt_final", 70.0),)),
    )
    assert len(view.replies) == 1
    many = [stage(1, f"s{k}", float(k), 1) for k in range(20)]
    (bounded,) = RelayView.from_summary(summary(events=many)).stages
    assert [m.name for m in bounded.marks] == [f"s{k}" for k in range(16)]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"turn": 0, "name": "a", "ms": 1}, "turn"),
        ({"turn": True, "name": "a", "ms": 1}, "turn"),
        ({"turn": 1, "name": "", "ms": 1}, "name"),
        ({"turn": 1, "name": "x" * 41, "ms": 1}, "name"),
        ({"turn": 1, "name": "a", "ms": -1}, "ms"),
        ({"turn": 1, "name": "a", "ms": "1"}, "ms"),
        ({"turn": 1, "name": "a", "ms": 1, "detected_at": -5}, "detected_at"),
        ({"turn": 1, "name": "a", "ms": 1, "detected_at": 1.5}, "detected_at"),
    ],
)
def test_stage_events_name_the_bad_field(event: dict[str, Any], field: str) -> None:
    with pytest.raises(BudgetError, match=f"agent.stage.{field}"):
        RelayView.from_summary(summary(events=[{"event": {"type": "agent.stage", **event}}]))


def test_inference_is_split_by_the_marks_of_the_replys_decision() -> None:
    record, clock, relay = scenario(reply_delay_s=0.250)
    detected = relay.replies[0].detected_at
    view = with_stages(
        relay,
        stage(1, "stt_final", 100.0, detected),
        stage(1, "llm_first_token", 180.5, detected),
        stage(1, "tts_first_byte", 240.0, detected),
        stage(2, "stt_final", 5.0, (detected + 96_000) & U32),  # a later turn of the agent
    )
    budget = turn_budget(record, clock, view, "sfu")
    assert budget.inference_ms == pytest.approx(250.0 - 1.5 - 0.5)
    assert budget.stages == (
        StageSplit("stt_final", 100.0, 100.0),
        StageSplit("llm_first_token", 180.5, 80.5),
        StageSplit("tts_first_byte", 240.0, 59.5),
    )
    assert budget.after_last_stage_ms == pytest.approx(248.0 - 240.0)
    assert sum(s.ms for s in budget.stages) + (budget.after_last_stage_ms or 0) == pytest.approx(248.0)
    # Without the relay's base the reply's own detected_at still finds them, wherever they are in the list.
    unmapped = RelayView(**{**view.__dict__, "rtp_timestamp_base": None, "stages": view.stages[::-1]})
    found = match_stages(record, clock, unmapped, order=0, reply=view.replies[0])
    assert found is not None and found.turn == 1
    without = turn_budget(record, clock, relay, "sfu")  # the same turn, no marks: nothing changes
    assert without.stages == () and without.after_last_stage_ms is None
    assert without.inference_ms == budget.inference_ms


def test_without_an_agent_reply_marks_are_matched_on_the_callers_timeline() -> None:
    """A Pipecat agent sends no agent.reply: its decision's media time says which turn it was."""
    record, clock, relay = scenario(reply_delay_s=0.250)
    base = relay.rtp_timestamp_base
    assert base is not None and record.reply_first_at is not None
    decided = relay.replies[0].detected_at  # frame 75 ends there; the reply came 250 ms after it was due
    before = (clock.timestamp(5) - base) & U32  # before this utterance started (the previous turn)
    early = (clock.timestamp(60) - base) & U32  # a pause the agent's VAD took for the end, then speech
    after = (clock.timestamp(100) - base) & U32  # due 500 ms after the decision: after the reply arrived
    marks = [
        stage(1, "stt_final", 10.0, before),
        stage(2, "stt_final", 20.0, early),
        stage(3, "stt_final", 30.0, decided),
        stage(4, "stt_final", 40.0, after),
    ]
    view = with_stages(relay, *marks, reply=False)
    found = match_stages(record, clock, view, order=0)
    assert found is not None and found.turn == 3
    budget = turn_budget(record, clock, view, "sfu")
    assert budget.stages == (StageSplit("stt_final", 30.0, 30.0),)
    # No agent.reply: the marks' detected_at is the decision, so response and inference are still known;
    # endpointing and eos skew need agent.reply's end of speech.
    assert budget.endpointing_ms is None and budget.eos_skew_ms is None
    assert budget.response_ms == pytest.approx(250.0)
    assert budget.inference_ms == pytest.approx(248.0)
    assert budget.after_last_stage_ms == pytest.approx(218.0)
    only_after = with_stages(relay, marks[3], reply=False)
    assert match_stages(record, clock, only_after, order=0) is None
    unanswered = type(record)(**{**record.__dict__, "reply_first_at": None})
    assert match_stages(unanswered, clock, view, order=0) is None


def test_marks_without_a_media_time_or_base_are_taken_in_order() -> None:
    record, clock, relay = scenario(reply_delay_s=0.250)
    view = with_stages(relay, stage(1, "a", 1.0, None), stage(2, "b", 2.0, None), reply=False)
    first, second = view.stages
    assert match_stages(record, clock, view, order=0) == first
    assert match_stages(record, clock, view, order=1) == second
    assert match_stages(record, clock, view, order=2) is None
    unmapped = RelayView(**{**view.__dict__, "rtp_timestamp_base": None, "stages": (AgentStages(7, 3, ()),)})
    assert match_stages(record, clock, unmapped, order=0) == AgentStages(7, 3, ())
    assert match_stages(record, clock, None, order=0) is None


def budget_with(turn: int, inference: float | None, *splits: tuple[str, float]) -> TurnBudget:
    stages, at = [], 0.0
    for name, ms in splits:
        at += ms
        stages.append(StageSplit(name, at, ms))
    after = None if inference is None or not stages else inference - at
    nothing: dict[str, Any] = dict.fromkeys(
        ("voice_to_voice_ms", "endpointing_ms", "eos_skew_ms", "response_ms", "caller_rtt_ms"), None
    )
    nothing |= dict.fromkeys(("relay_rtt_ms", "network_rtt_ms", "relay_dwell_ms", "jitter_ms"), None)
    return TurnBudget(
        turn=turn,
        inference_ms=inference,
        playout_ms=0.0,
        reply_ms=None,
        reply_frames=0,
        reply_match=None,
        send_lag_ms=None,
        stages=tuple(stages),
        after_last_stage_ms=after,
        **nothing,
    )


def test_report_merges_stage_names_summarises_and_prints_them() -> None:
    report = CallReport("sfu", "c-1", "utterance.wav", 3260)
    report.turns = [
        budget_with(1, 300.0, ("stt_final", 100.0), ("tts_first_byte", 150.0)),
        budget_with(2, 400.0, ("stt_final", 120.0), ("llm_first_token", 80.0), ("tts_first_byte", 100.0)),
        budget_with(3, None, ("stt_final", 140.0)),
    ]
    assert report.stage_names() == ["stt_final", "llm_first_token", "tts_first_byte"]
    split = report.stage_summary()
    assert split["stages"]["stt_final"] == {"p50": 120.0, "p95": pytest.approx(138.0)}
    assert split["stages"]["llm_first_token"] == {"p50": 80.0, "p95": 80.0}
    assert split["stages"]["tts_first_byte"] == {"p50": 125.0, "p95": pytest.approx(147.5)}
    assert split["after_last_stage_ms"] == {"p50": 75.0, "p95": pytest.approx(97.5)}  # 50 and 100
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["turns"][1]["stages"] == [
        {"name": "stt_final", "at_ms": 120.0, "ms": 120.0},
        {"name": "llm_first_token", "at_ms": 200.0, "ms": 80.0},
        {"name": "tts_first_byte", "at_ms": 300.0, "ms": 100.0},
    ]
    assert doc["turns"][1]["after_last_stage_ms"] == 100.0 and doc["turns"][2]["after_last_stage_ms"] is None
    assert doc["stage_summary"]["after_last_stage_ms"]["p50"] == 75.0
    table = stage_table(report)
    assert table is not None
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render(report, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "inference by stage in ms" in text and "after last stage" in text
    lines = text[text.index("inference by stage in ms") :].splitlines()
    row = next(line for line in lines if line.strip().startswith("2 "))
    assert row.split()[-5:] == ["400.0", "120.0", "80.0", "100.0", "100.0"]
    row3 = next(line for line in lines if line.strip().startswith("3 "))
    assert row3.split()[-5:] == ["n/a", "140.0", "n/a", "n/a", "n/a"]


def test_without_stages_nothing_changes() -> None:
    record, clock, relay = scenario()
    report = CallReport("sfu", "c-1", "utterance.wav", 3260)
    report.turns = [turn_budget(record, clock, relay, "sfu")]
    report.relay = relay
    assert report.stage_names() == [] and report.stage_summary() == {} and stage_table(report) is None
    doc = report.to_json()
    assert "stage_summary" not in doc and "agent_stage_turns" not in doc["relay"]
    assert "stages" not in doc["turns"][0] and "after_last_stage_ms" not in doc["turns"][0]
    assert "stages" not in doc["relay"]
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render(report, console)
    assert "stage" not in console.file.getvalue()  # type: ignore[attr-defined]
