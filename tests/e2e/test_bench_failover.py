"""`splitrelay bench failover` as a subprocess, a tiny run: one call through one relay kill and one drain.

What must hold whatever the machine's speed: no call is lost, a drained call hears no tick twice, the
relay kill's gap is longer than the drain's (the edge waits out a missed heartbeat before it moves the
call), and nothing is left open afterwards. The figures themselves are for docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUN_LIMIT_S = 150.0


async def test_one_kill_and_one_drain_lose_no_call_and_leave_nothing() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "splitrelay.cli", "bench", "failover", "--calls", "1", "--faults", "2",
        "--json",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_LIMIT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"bench failover did not finish within {RUN_LIMIT_S:g} s")
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    report = json.loads(out)
    print(json.dumps(report["kinds"]), report["baseline"])
    kinds = {k["kind"]: k for k in report["kinds"]}
    assert set(kinds) == {"relay-kill", "relay-drain"}
    for kind in kinds.values():
        assert kind["faults"] == 1 and kind["calls_hit"] == 1 and kind["calls_lost"] == 0, kind
        assert kind["gap_p50_ms"] is not None and kind["notes"] == [], kind
    assert kinds["relay-drain"]["duplicated_frames"] == 0
    assert kinds["relay-kill"]["gap_p50_ms"] > kinds["relay-drain"]["gap_p50_ms"]
    assert kinds["relay-kill"]["lost_ticks"] > 0  # a killed relay's audio in flight is gone
    leaks = report["leaks"]
    assert leaks["relay_calls"] == 0 and leaks["leaked_sockets"] == 0 and leaks["leftover_processes"] == 0
    assert leaks["emulator"] == {"sessions": 0, "peer_connections": 0, "publications": 0, "subscriptions": 0}
    assert leaks["errors"] == []
