"""The relay freezes its start-up heap so full collections scan only what its calls hold."""

from __future__ import annotations

import subprocess
import sys


def test_freeze_startup_heap_moves_the_startup_objects_out_of_the_collectors_reach() -> None:
    script = (
        "import gc, splitrelay.relay.server as s\n"
        "before = len(gc.get_objects())\n"
        "s.freeze_startup_heap()\n"
        "print(before, gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen, after = (int(x) for x in out.stdout.split())
    assert frozen >= 0.9 * before  # (a fresh process: nothing else to freeze it with)
    assert after < 0.05 * before  # what a collection still scans
