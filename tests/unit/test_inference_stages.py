"""Stage marks (relay/inference/stages.py): the agent.stage events an agent sends, on a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from splitrelay.inference import wire
from splitrelay.inference.stages import MAX_MARKS_PER_TURN, StageMarks, check_stage_name


class FakeCall:
    """Records what StageMarks sends, and checks each event packs as a wire EVENT."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], bool]] = []

    def send_event(self, event: dict[str, Any], *, reliable: bool = False) -> None:
        wire.pack_event(event)
        self.sent.append((json.loads(json.dumps(event)), reliable))


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_marks_are_milliseconds_since_the_turn_started() -> None:
    call, clock = FakeCall(), Clock()
    marks = StageMarks(call, clock=clock)
    assert marks.mark("stt_final") is False and marks.dropped == 1  # no turn yet
    assert marks.turn_started(96_000) == 1
    clock.now += 0.120
    assert marks.mark("stt_final")
    clock.now += 0.0625
    assert marks.mark("llm_first_token")
    assert marks.turn_started(None) == 2
    clock.now += 0.2
    assert marks.mark("tts_first_byte")
    events = [event for event, _ in call.sent]
    assert events == [
        {"type": "agent.stage", "turn": 1, "name": "stt_final", "ms": 120.0, "detected_at": 96_000},
        {"type": "agent.stage", "turn": 1, "name": "llm_first_token", "ms": 182.5, "detected_at": 96_000},
        {"type": "agent.stage", "turn": 2, "name": "tts_first_byte", "ms": 200.0, "detected_at": None},
    ]
    assert all(reliable is False for _, reliable in call.sent)
    assert marks.marks == {"tts_first_byte": 200.0}


def test_a_name_counts_once_per_turn_and_marks_are_bounded() -> None:
    call, clock = FakeCall(), Clock()
    marks = StageMarks(call, max_marks=3, reliable=True, clock=clock)
    marks.turn_started(0)
    assert marks.mark("a") and not marks.mark("a")  # the first token is the stage; later ones are not
    assert marks.mark("b") and marks.mark("c") and not marks.mark("d")
    assert marks.dropped == 2 and [e["name"] for e, _ in call.sent] == ["a", "b", "c"]
    assert all(reliable for _, reliable in call.sent)
    marks.turn_started(0)
    assert marks.mark("a")  # a new turn, a new set


@pytest.mark.parametrize("name", ["", "LLM", "stt final", "x" * 41, "é", "a/b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="stage name"):
        check_stage_name(name)
    marks = StageMarks(FakeCall())
    marks.turn_started()
    with pytest.raises(ValueError, match="stage name"):
        marks.mark(name)


def test_good_names_and_bad_arguments() -> None:
    for name in ("stt_final", "x" * 40, "tool.weather-2"):
        assert check_stage_name(name) == name
    for bad in (-1, 1 << 32, True, 1.5):
        with pytest.raises(ValueError, match="detected_at"):
            StageMarks(FakeCall()).turn_started(bad)  # type: ignore[arg-type]
    for bad_max in (0, MAX_MARKS_PER_TURN + 1):
        with pytest.raises(ValueError, match="max_marks"):
            StageMarks(FakeCall(), max_marks=bad_max)
