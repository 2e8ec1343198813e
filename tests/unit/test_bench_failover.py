"""`bench failover`'s arithmetic (scripts/bench/failover.py) and the metronome's tags, on made-up arrivals."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import typer

from splitrelay.bench.failover import CallTrace, command
from splitrelay.bench.metronome import FRAME_BYTES, frame, read_tag

MS = 1_000_000  # ns


@dataclass
class Packet:
    payload: bytes
    arrival_ns: int


def trace_of(arrivals: list[tuple[int, int]], streams: list[int] | None = None) -> CallTrace:
    trace = CallTrace()
    for index, (at_ms, tick) in enumerate(arrivals):
        trace.on_packet(Packet(frame(1, tick, streams[index] if streams else 9), at_ms * MS))
    return trace


def test_tags_round_trip_and_other_payloads_are_ignored() -> None:
    tagged = frame(7, 123_456_789, stream=42)
    assert len(tagged) == FRAME_BYTES
    tag = read_tag(tagged)
    assert tag is not None and (tag.agent_id, tag.tick, tag.stream) == (7, 123_456_789, 42)
    assert read_tag(b"\xfc" * 80) is None and read_tag(b"MTRN") is None
    trace = CallTrace()
    trace.on_packet(Packet(b"\x78" * 60, 5))  # real Opus from another agent: not counted
    assert trace.arrivals == []


def test_a_clean_stream_has_the_frame_interval_as_its_gap() -> None:
    trace = trace_of([(20 * i, 1000 + i) for i in range(50)])
    window = trace.window(100 * MS, 900 * MS)
    assert window.gap_ms == 20 and window.lost == 0 and window.duplicated == 0 and window.frames == 40


def test_a_failover_gap_counts_the_silence_and_the_ticks_never_heard() -> None:
    """Frames every 20 ms until 200 ms, then nothing until 1,100 ms (ticks 10..54 never came)."""
    before = [(20 * i, i) for i in range(10)]
    after = [(1100 + 20 * i, 55 + i) for i in range(20)]
    window = trace_of(before + after).window(190 * MS, 1500 * MS)
    assert window.gap_ms == 1100 - 180 and window.lost == 45 and window.duplicated == 0


def test_the_old_leg_heard_after_the_new_one_is_duplicated_audio() -> None:
    """Stream 1 until a switch to stream 2; one frame of stream 1 comes after stream 2 began."""
    arrivals = [(0, 1), (20, 2), (40, 3), (60, 3), (80, 4), (100, 5)]
    streams = [1, 1, 1, 2, 1, 2]
    window = trace_of(arrivals, streams).window(10 * MS, 500 * MS)
    assert window.duplicated == 1 and window.lost == 0
    assert window.gap_ms == 400  # silent from 100 ms to the window's end
    clean = trace_of(arrivals, [1, 1, 1, 2, 2, 2]).window(10 * MS, 120 * MS)
    assert clean.duplicated == 0  # tick 3 from both legs, one after the other: not duplicated audio


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"calls": 0}, "--calls"),
        ({"faults": 501}, "--faults"),
        ({"kinds": "relay-kill,meteor"}, "--kinds"),
        ({"kinds": ""}, "--kinds"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        command(**kwargs)  # type: ignore[arg-type]
