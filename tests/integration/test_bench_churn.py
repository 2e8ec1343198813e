"""Smoke run of `bench churn` (scripts/bench/churn.py): 4 real calls, a short idle window and 2 s of churn,
through a real relay process each way (frozen, not frozen), in a child process stopped by PID.

It checks the report's shape and what the two policies must differ in (what a full collection scans per
call, what is frozen); it never asserts speed (house rule: speed is measured in benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_LIMIT_S = 150
SCRIPT = (
    "from splitrelay.bench.churn import ChurnConfig, run\n"
    "config = ChurnConfig(calls=4, churn_per_s=3, duration=2, idle=1, ab=True)\n"
    "raise SystemExit(run(config, json_output=True))\n"
)


async def _run() -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_LIMIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()  # by PID; its relay and echo children are stopped by the bench itself
            await proc.wait()
    text = stderr.decode(errors="replace")
    assert stdout, f"no JSON on stdout; stderr:\n{text[-3000:]}"
    return proc.returncode or 0, json.loads(stdout), text


async def test_churn_runs_both_policies_and_reports_every_phase() -> None:
    code, report, text = await _run()
    assert code == 0, text[-3000:]
    assert "Collection pauses by phase" in text and "What each live call costs" in text
    frozen, plain = report["results"]
    assert (frozen["variant"], plain["variant"]) == ("frozen", "not frozen")
    for result in (frozen, plain):
        churn = result["churn"]
        assert churn["hang_ups"] >= 3 and churn["set_ups"] == churn["hang_ups"]
        assert churn["failed_set_ups"] == 0 and churn["failed_hang_ups"] == 0
        assert churn["live_calls_after"] == 4
        for phase in ("ramp", "idle", "churn"):
            assert set(result[phase]) >= {"gen0", "gen1", "gen2", "seconds"}
        assert result["per_call"]["threads"] == 0  # no aiortc decoder thread per call
        assert result["per_call"]["idle_cpu_us_per_s"] is not None
    # Frozen, a live call's objects are out of the collector's reach; not frozen, it scans them.
    assert frozen["per_call"]["frozen_objects"] > 100
    assert frozen["per_call"]["tracked_objects"] < 50
    assert plain["per_call"]["tracked_objects"] > 100
    assert abs(plain["per_call"]["frozen_objects"]) < 50
    # The ended calls gave their frozen objects back: after churn, the frozen heap is where it was.
    objects = frozen["relay"]["frozen_objects"]
    assert abs(objects["after_churn"] - objects["live"]) < 0.5 * (objects["live"] - objects["empty"])
    assert report["machine"]["cores"] >= 1 and "--ab" in report["command"]
