"""The relay link's liveness sweep (relay/inference_link.py ``RelayLink._sweep``) visits every call once per
``SWEEP_S``, a slice of the calls at a time: one pass over 1,000 calls held the loop 3-13 ms at once, and
every datagram arriving meanwhile waited in its socket (dwell measured from the kernel's receive stamp).
"""

from __future__ import annotations

import asyncio
import collections

import pytest

from splitrelay.inference.wire_auth import WireKey
from splitrelay.relay import inference_link
from splitrelay.relay.inference_link import RelayLink, _LinkCall

CALLS = 25
PASSES = 6


class Sink:
    def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None: ...

    def on_mark(self, name: str, timestamp: int) -> None: ...

    def on_event(self, event: dict[str, object]) -> None: ...

    def on_clear(self, timestamp: int) -> None: ...

    def on_call_end(self, reason: str) -> None: ...


class Visits:
    """The C slot's "sent" flag as the sweep reads it (``take_sent``): records when each call was visited."""

    def __init__(self, call: int, log: list[tuple[float, int]]) -> None:
        self.call = call
        self.log = log

    def take_sent(self) -> bool:
        self.log.append((asyncio.get_running_loop().time(), self.call))
        return True


async def test_the_sweep_visits_each_call_once_a_pass_a_slice_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inference_link, "SWEEP_S", 0.02)
    link = RelayLink(("127.0.0.1", 9), key=WireKey(bytes(32)), agent_timeout_s=60)
    loop = asyncio.get_running_loop()
    log: list[tuple[float, int]] = []
    for call_id in range(1, CALLS + 1):
        state = _LinkCall(call_id, ("127.0.0.1", 9), Sink())
        state.watched = True
        state.heard_at = state.sent_at = loop.time()
        state.native = Visits(call_id, log)
        link._calls[call_id] = state
    sweep = loop.create_task(link._sweep())
    try:
        for _ in range(2000):  # bounded: PASSES passes of 20 ms take about 120 ms
            await asyncio.sleep(0.005)
            if len(log) >= PASSES * CALLS:
                break
    finally:
        sweep.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sweep
    at_once = collections.Counter(when for when, _ in log)
    assert max(at_once.values()) <= -(-CALLS // inference_link.SWEEP_SLICES)  # a slice, never all at once
    passes = [log[k * CALLS : (k + 1) * CALLS] for k in range(PASSES)]
    for visited in passes:  # each pass visits every call once, in order
        assert [call for _, call in visited] == list(range(1, CALLS + 1))
    assert link.keepalives_sent == 0 and link.agents_lost == 0
