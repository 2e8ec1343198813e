"""A CallSink for tests: records what inference sent back to the relay and lets a test await it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Out:
    seq: int
    timestamp: int
    payload: bytes
    marker: bool


@dataclass
class RecordingSink:
    audio: list[Out] = field(default_factory=list)
    marks: list[tuple[str, int]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    clears: list[int] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None:
        self.audio.append(Out(seq, timestamp, payload, marker))
        self._changed.set()

    def on_mark(self, name: str, timestamp: int) -> None:
        self.marks.append((name, timestamp))
        self._changed.set()

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    def on_clear(self, timestamp: int) -> None:
        self.clears.append(timestamp)
        self._changed.set()

    def on_call_end(self, reason: str) -> None:
        self.ends.append(reason)
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until ``condition()`` holds, re-checking on every callback; fails after ``within`` s."""
        async with asyncio.timeout(within):
            while not condition():  # bounded by the timeout
                self._changed.clear()
                await self._changed.wait()
