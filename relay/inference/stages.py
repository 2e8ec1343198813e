"""Stage timings: an agent says when each stage of a turn happened, so the budget can split "inference".

The latency budget (scripts/devtools/budget.py) can only measure inference from the outside: response minus
network and relay. An agent knows more: when its STT gave the final transcript, its LLM the first token, its
TTS the first audio. :class:`StageMarks` sends each such moment to the relay as a wire EVENT (the relay
keeps it in the call's record, where ``splitrelay call`` reads it)::

    {"type": "agent.stage", "turn": 3, "name": "llm_first_token", "ms": 182.4, "detected_at": 91200}

- ``turn``: the agent's own turn count, from 1.
- ``ms``: wall milliseconds (the agent's monotonic clock) from the turn's start to this mark.
- ``detected_at``: the turn's start as a media time, the AUDIO_IN timestamp (48 kHz) of the end of speech
  decision, the same moment as the echo agent's ``agent.reply`` ``detected_at``; null when the agent has
  none. The budget uses it to tell which of the caller's turns the marks belong to.

A turn starts when the agent decides the caller has finished (``turn_started``): that is where the budget's
"response" and "inference" start too, so the marks split them. Built only on the public SDK.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

__all__ = [
    "MAX_MARKS_PER_TURN",
    "STAGE_EVENT",
    "STAGE_NAME",
    "StageMarks",
    "check_stage_name",
]

STAGE_EVENT: Final = "agent.stage"
STAGE_NAME: Final = re.compile(r"[a-z0-9_.-]{1,40}")
MAX_MARKS_PER_TURN: Final = 16
"""A turn's marks beyond this are dropped: the relay keeps only the call's 64 latest events, and agent.reply
must stay among them."""
U32: Final = 0xFFFFFFFF

# Names the Pipecat integration reports (scripts/integrations/pipecat.py); any other valid name is fine.
STT_FINAL: Final = "stt_final"
LLM_FIRST_TOKEN: Final = "llm_first_token"
TTS_STARTED: Final = "tts_started"
TTS_FIRST_BYTE: Final = "tts_first_byte"


class EventSink(Protocol):
    """What StageMarks needs of a call: ``InferenceCall`` has it (``send_event``)."""

    def send_event(self, event: dict[str, Any], *, reliable: bool = False) -> Any: ...


def check_stage_name(name: str) -> str:
    """A stage name is 1..40 characters of ``a-z 0-9 _ . -``: fits a table column, safe in any UI."""
    if not isinstance(name, str) or STAGE_NAME.fullmatch(name) is None:
        raise ValueError(f"stage name: must be 1..40 characters of a-z, 0-9, '_', '.', '-', got {name!r}")
    return name


class StageMarks:
    """One call's stage marks: ``turn_started(detected_at)`` at each end-of-speech decision, then
    ``mark(name)`` as each stage of the reply is reached.

    A name is marked once per turn (the first STT final, the first token, the first byte: later ones are
    not stages); marks before the first turn, repeats and marks past ``max_marks`` are dropped (``mark``
    returns False and ``dropped`` counts them). Events are unreliable by default, like ``agent.reply``: a
    lost datagram loses one mark, never the call.
    """

    def __init__(
        self,
        call: EventSink,
        *,
        max_marks: int = MAX_MARKS_PER_TURN,
        reliable: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 1 <= max_marks <= MAX_MARKS_PER_TURN:
            raise ValueError(f"max_marks: must be 1..{MAX_MARKS_PER_TURN}, got {max_marks}")
        self._call = call
        self._max_marks = max_marks
        self._reliable = reliable
        self._clock = clock
        self.turn = 0
        """The current turn (0: none started yet)."""
        self.detected_at: int | None = None
        self._started = 0.0
        self._marked: dict[str, float] = {}
        self.dropped = 0

    def turn_started(self, detected_at: int | None = None) -> int:
        """A new turn starts now (the agent decided the caller finished); returns its number."""
        if detected_at is not None and (
            isinstance(detected_at, bool) or not isinstance(detected_at, int) or not 0 <= detected_at <= U32
        ):
            raise ValueError(f"detected_at: must be a u32 media timestamp or None, got {detected_at!r}")
        self.turn += 1
        self.detected_at = detected_at
        self._started = self._clock()
        self._marked = {}
        return self.turn

    def __contains__(self, name: object) -> bool:
        """Whether the current turn has marked ``name`` already (cheap: for per-frame checks)."""
        return name in self._marked

    @property
    def marks(self) -> dict[str, float]:
        """This turn's marks so far: name → ms since the turn started."""
        return dict(self._marked)

    def elapsed_ms(self) -> float | None:
        """Milliseconds since the current turn started; None before the first."""
        return None if self.turn == 0 else (self._clock() - self._started) * 1000

    def mark(self, name: str) -> bool:
        """This turn reached stage ``name`` now; sends the agent.stage EVENT. False when dropped."""
        check_stage_name(name)
        elapsed = self.elapsed_ms()
        if elapsed is None or name in self._marked or len(self._marked) >= self._max_marks:
            self.dropped += 1
            return False
        ms = round(elapsed, 3)
        self._marked[name] = ms
        event = {
            "type": STAGE_EVENT,
            "turn": self.turn,
            "name": name,
            "ms": ms,
            "detected_at": self.detected_at,
        }
        self._call.send_event(event, reliable=self._reliable)
        return True
