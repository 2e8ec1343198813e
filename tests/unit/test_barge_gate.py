"""The onset gate: when the caller's sound during playback raises a barge-in (relay/barge_gate.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitrelay.relay.barge_gate import OnsetGate


def _raises(gate: OnsetGate, pattern: str) -> list[int]:
    """Indexes of the packets that raise; ``pattern``: 's' speech, '.' silence, 'r' a reject here."""
    raised: list[int] = []
    for i, c in enumerate(pattern):
        if c == "r":
            gate.rejected()
        elif gate.feed(c == "s"):
            raised.append(i)
    return raised


def test_an_onset_after_silence_raises_within_one_packet() -> None:
    assert _raises(OnsetGate(), "..s") == [2]


def test_talking_when_playback_began_raises_nothing_until_a_silence() -> None:
    assert _raises(OnsetGate(), "ssss.s") == [5]


def test_more_packets_need_that_many_in_a_row() -> None:
    assert _raises(OnsetGate(packets=3), ".ss.sss") == [6]


def test_after_a_reject_the_same_sound_needs_a_silence_without_retry() -> None:
    assert _raises(OnsetGate(), ".sr" + "s" * 40 + ".s") == [1, 44]


def test_after_a_reject_continuous_speech_raises_again_with_retry() -> None:
    gate = OnsetGate(retry_packets=5)
    assert _raises(gate, ".sr" + "s" * 12) == [1, 7]  # five packets after the reject
    assert _raises(OnsetGate(retry_packets=5), ".sr" + "ss.s") == [1, 6]  # a silence: the onset rule


def test_a_reset_forgets_the_silence_heard_before() -> None:
    gate = OnsetGate()
    gate.feed(False)
    gate.reset()
    assert not gate.feed(True)


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match=r"packets must be 1\.\.50"):
        OnsetGate(packets=0)
    with pytest.raises(ValueError, match=r"retry_packets must be 0\.\.500"):
        OnsetGate(retry_packets=501)


@given(st.text(alphabet="s.r", max_size=200), st.integers(1, 4))
def test_without_retry_nothing_raises_without_a_silence_since_the_last_reject_or_raise(
    pattern: str, packets: int
) -> None:
    """The rule before retries existed: a raise always follows a silent packet with no reject between."""
    gate = OnsetGate(packets=packets)
    armed = False
    for c in pattern:
        if c == "r":
            gate.rejected()
            armed = False
        elif c == ".":
            gate.feed(False)
            armed = True
        elif gate.feed(True):
            assert armed
