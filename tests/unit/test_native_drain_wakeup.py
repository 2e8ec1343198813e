"""relay/media/native ``drain_wakeup``: the loop both readers run around C's drain, with a scripted C side
(what each ``sr_drain_*`` call reports), so every branch is driven: full batches, Python's share, a receive
error, a reader that stops."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from splitrelay.relay.media import native

BATCH = 4


class ScriptedDrain:
    """Plays one ``(status, calls, delivered, n, c_sent)`` per C call, as ``Drain.run`` would report them."""

    def __init__(self, script: list[tuple[int, int, int, int, int]]) -> None:
        self.state = SimpleNamespace(calls=0, delivered=0, n=0, sent=[0, 0])
        self._script = list(script)
        self.turns_asked: list[int] = []

    def run(self, drain: Any, turns: int) -> int:
        assert drain is self
        self.turns_asked.append(turns)
        status, calls, delivered, n, c_sent = self._script.pop(0)
        self.state.calls, self.state.delivered, self.state.n = calls, delivered, n
        self.state.sent = [0, c_sent]
        return int(status)


def _wakeup(drain: ScriptedDrain, turns: int, **kwargs: Any) -> tuple[int, int, list[tuple[int, bool]]]:
    python: list[tuple[int, bool]] = []

    def python_batch(n: int, c_sent: bool) -> int:
        python.append((n, c_sent))
        return n

    delivered, calls = native.drain_wakeup(
        drain,  # type: ignore[arg-type]
        drain.run,
        turns,
        BATCH,
        kwargs.pop("on_error", lambda _errno: False),
        python_batch,
        kwargs.pop("stopped", None),
    )
    return delivered, calls, python


def test_c_done_in_one_call_delivers_what_c_counted() -> None:
    drain = ScriptedDrain([(native.DRAIN_DONE, 3, 10, 2, 2)])
    assert _wakeup(drain, 4) == (10, 3, [])
    assert drain.turns_asked == [4]


def test_a_batch_for_python_goes_to_python_and_the_wake_up_goes_on_with_the_turns_left() -> None:
    # C drained a full batch, then handed back a full one with 1 of 4 finished in C; then the socket ran dry.
    drain = ScriptedDrain([(native.DRAIN_PYTHON, 2, 4, BATCH, 1), (native.DRAIN_DONE, 1, 2, 2, 2)])
    assert _wakeup(drain, 4) == (4 + BATCH + 2, 3, [(BATCH, True)])
    assert drain.turns_asked == [4, 2]


def test_only_datagrams_c_made_went_back_python_delivers_nothing() -> None:
    drain = ScriptedDrain([(native.DRAIN_PYTHON, 1, 0, 3, 3)])  # C finished all 3; the socket held data
    assert _wakeup(drain, 4) == (3, 1, [])  # a short batch: the socket is empty


def test_a_receive_error_is_read_past_only_when_the_reader_says_so_and_turns_remain() -> None:
    script = [(-111, 1, 0, -111, 0), (native.DRAIN_DONE, 1, 5, 1, 1)]  # ECONNREFUSED, then data
    assert _wakeup(ScriptedDrain(script), 4, on_error=lambda errno: errno == 111) == (5, 2, [])
    assert _wakeup(ScriptedDrain(script), 4, on_error=lambda _errno: False) == (0, 1, [])
    assert _wakeup(ScriptedDrain(script[:1]), 1, on_error=lambda _errno: True) == (0, 1, [])


def test_a_reader_that_stopped_reads_no_further_batch() -> None:
    script = [(native.DRAIN_PYTHON, 1, 0, BATCH, 0), (native.DRAIN_DONE, 1, 4, 4, 4)]
    assert _wakeup(ScriptedDrain(script), 4, stopped=lambda: True) == (BATCH, 1, [(BATCH, False)])
    assert _wakeup(ScriptedDrain(script), 4, stopped=lambda: False)[:2] == (BATCH + 4, 2)


def test_the_loop_is_bounded_by_the_turns_even_when_c_keeps_handing_back() -> None:
    drain = ScriptedDrain([(native.DRAIN_PYTHON, 1, 0, BATCH, 0)] * 10)
    delivered, calls, python = _wakeup(drain, 3)
    assert (delivered, calls, len(python)) == (3 * BATCH, 3, 3)
