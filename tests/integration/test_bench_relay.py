"""Smoke run of `splitrelay bench relay`: 3 real calls for 2 s through a real relay process, and the baseline.

It checks the shape of the report and that its numbers agree with each other; it never asserts speed
(house rule: speed is measured in benchmarks, not in timed asserts).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_LIMIT_S = 100


async def _run_bench(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench_cli",
        "relay",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_LIMIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stderr.decode(errors="replace")
    assert stdout, f"no JSON on stdout; stderr:\n{text[-3000:]}"
    return proc.returncode or 0, json.loads(stdout), text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _check_phase(phase: dict[str, Any], calls: int) -> None:
    assert phase["flows"] == calls
    # The window is 2 s at 50 packets/s per call: every one of them was scheduled and sent.
    assert phase["sent"] == calls * 50 * 2
    assert phase["sent_all"] == phase["expected"] >= phase["sent"]
    assert 0 <= phase["received"] <= phase["sent"]
    assert phase["loss"] == phase["sent"] - phase["received"]
    assert phase["send_failures"] == 0
    rtt = phase["rtt_ms"]
    if phase["received"]:
        assert 0 < rtt["p50"] <= rtt["p99"] <= rtt["max"]
    assert phase["subject_cpu"] > 0
    assert phase["bench_cpu"] >= 0
    assert all(pct >= 0 for pct in phase["load_cpu"].values())
    assert 0 <= phase["subject_core_busy"] <= 100.5
    assert phase["window_s"] == pytest.approx(2.0, abs=0.5)
    assert isinstance(phase["load_bound"], list)


async def test_small_run_report_is_consistent() -> None:
    code, report, stderr = await _run_bench("--calls", "3", "--duration", "2", "--warmup", "1", "--json")
    assert code == 0, stderr[-3000:]
    assert report["command"] == "splitrelay bench relay --calls 3 --duration 2 --warmup 1"
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["packages"]["aiortc"] == "1.16.0"
    assert set(report["config"]["relay_cores"]).isdisjoint(report["config"]["load_cores"]) or (
        machine["cores"] == 1
    )

    (row,) = report["results"]
    assert row["calls"] == 3 and row["error"] is None
    relay, baseline = row["relay"], row["baseline"]
    _check_phase(relay, 3)
    _check_phase(baseline, 3)
    assert relay["subject"] == "relay" and baseline["subject"] == "udp echo"

    # The relay's own counters saw the traffic, and the echo came back through it.
    counters = relay["relay"]["counters"]
    assert counters["packets_in"] > 0 and counters["packets_out"] > 0
    assert counters["packets_to_inference"] <= counters["packets_in"]
    assert counters["barge_ins"] == 0  # the callers' noise is below the barge-in threshold
    assert relay["relay"]["calls_live_after"] == 3
    for direction in ("in", "out"):
        dwell = relay["relay"][f"dwell_{direction}"]
        assert dwell["count"] > 0
        assert 0 <= dwell["p50_ms"] <= dwell["p99_ms"]
        assert 0 <= dwell["share_within_1ms"] <= 1
        assert dwell["bucket_bounds_us"][:3] == [5, 10, 20]
    assert relay["workers"]["srtp_overhead"] > 0
    assert relay["workers"]["fast_path_undecryptable"] == 0

    ratios = row["ratios"]
    assert ratios["cpu"] == pytest.approx(relay["subject_cpu"] / baseline["subject_cpu"])
    if relay["rtt_ms"]["p50"] and baseline["rtt_ms"]["p50"]:
        assert ratios["rtt_p50"] == pytest.approx(relay["rtt_ms"]["p50"] / baseline["rtt_ms"]["p50"])

    # Three calls cannot say anything about the 500-call floor, and the report says so.
    assert report["floor"]["status"] == "NOT TESTED"
    assert report["floor"]["reasons"] == ["no run with 500 or more calls"]

    # The tables went to stderr, with the machine line and the verdicts.
    assert "machine" in stderr and "baseline: bare uvloop UDP echo" in stderr and "Floor" in stderr

    # Every process the benchmark started is gone.
    pids = [*relay["pids"].values(), *baseline["pids"].values()]
    assert pids and not [pid for pid in pids if pid != os.getpid() and _alive(pid)]


async def test_bad_arguments_start_nothing() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench_cli",
        "relay",
        "--calls",
        "3",
        "--duration",
        "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "duration: must be 1..600 seconds, got 0" in stderr.decode()
