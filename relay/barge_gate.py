"""When the caller's sound during playback raises a barge-in: the onset gate, one per call.

One place for the rule the relay applies to every caller packet while the agent speaks (relay/call.py)
and the barge-in benchmark replays on recorded clips (scripts/bench/bargein.py), so the benchmark
measures the relay's own decisions.

- A barge-in is the caller *starting* to speak over the agent: ``packets`` speech packets in a row after
  at least one silent packet heard during playback. Someone already talking when the reply began does not
  interrupt it.
- After the agent rejected a candidate, the same sound raises nothing at once: it needs a silent packet
  again, or, with ``retry_packets``, that many speech packets in a row. Why: a quiet, breathy start of a
  turn can be rejected by the confirmer while the caller keeps talking; without a retry the rest of that
  turn is never judged, because continuous speech has no silent packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class OnsetGate:
    """Feed it one speech/silence verdict per packet during playback; ``feed`` says when to act."""

    packets: int = 1
    """Consecutive speech packets after a silent one that raise (1 = within one packet)."""
    retry_packets: int = 0
    """After a reject: consecutive speech packets that raise again without a silent one (0: never)."""
    _silence_seen: bool = field(default=False, init=False)
    _run: int = field(default=0, init=False)
    _since_reject: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.packets <= 50:
            raise ValueError(f"packets must be 1..50, got {self.packets}")
        if not 0 <= self.retry_packets <= 500:
            raise ValueError(f"retry_packets must be 0..500, got {self.retry_packets}")

    def reset(self) -> None:
        """Playback (re)started: what the caller did before does not count."""
        self._silence_seen = False
        self._run = 0
        self._since_reject = None

    def feed(self, speech: bool) -> bool:
        """One packet heard during playback; True when it raises (a candidate, or a flush)."""
        if not speech:
            self._silence_seen = True
            self._run = 0
            self._since_reject = None
            return False
        if self._since_reject is not None:
            self._since_reject += 1
            if self.retry_packets and self._since_reject >= self.retry_packets:
                self._since_reject = None
                return True
        if not self._silence_seen:
            return False
        self._run += 1
        if self._run >= self.packets:
            self._run = 0
            return True
        return False

    def rejected(self) -> None:
        """The agent rejected the candidate: the same sound raises nothing until a silent packet, or
        ``retry_packets`` of speech in a row."""
        self._silence_seen = False
        self._run = 0
        self._since_reject = 0
