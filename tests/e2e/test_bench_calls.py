"""`splitrelay bench calls` as a subprocess (``python -m splitrelay.cli bench calls``), tiny runs on loopback.

- SFU against direct, 4 calls each at concurrency 2 after a warm-up call: the table, summary.json,
  calls.jsonl and the histogram; no failed call, nothing left open (relay calls, emulator sessions,
  sockets), both stacks stopped cleanly, no secret in anything written.
- The same harness in a fresh network namespace (``--netns``) with two silence thresholds: the
  variant really reaches the agent (its endpointing follows the threshold).
- ``--netem``: where this machine allows netem, a tiny impaired run whose latency shows the delay;
  where it does not, exit 3 with the reason and nothing run.

The harness is always a subprocess: ``--netns``/``--netem`` move the process into a new namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from splitrelay.devtools.stack import DEV_SFU_SECRET_ENV

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_LIMIT_S = 100.0
PINNED_SECRET = "pinned-emulator-app-secret-" + os.urandom(8).hex()  # so the test knows what to look for


async def bench(*args: str, limit: float = RUN_LIMIT_S) -> tuple[int, str, str]:
    """Run the command; on overrun SIGTERM it (it stops its stacks), then SIGKILL its group."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "bench",
        "calls",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "160", DEV_SFU_SECRET_ENV: PINNED_SECRET},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        pytest.fail(f"bench calls did not finish within {limit:g} s")
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def results(out_dir: Path) -> list[dict[str, Any]]:
    lines = (out_dir / "calls.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def check_latencies(summary: dict[str, Any], endpointing_ms: float) -> None:
    """What the echo agent makes certain: voice-to-voice is its silence wait plus a little transport."""
    v2v = summary["voice_to_voice_ms"]
    assert v2v["p50"] <= v2v["p95"] <= v2v["p99"], v2v
    assert endpointing_ms <= v2v["p50"] < endpointing_ms + 100, v2v
    assert summary["endpointing_ms"]["p50"] == endpointing_ms, summary["endpointing_ms"]
    assert 0 <= summary["response_ms"]["p50"] < 100, summary["response_ms"]
    assert 0 < summary["setup_ms"]["p50"] <= summary["setup_ms"]["p99"] < 5000, summary["setup_ms"]
    assert summary["relay_dwell_ms"]["p50"] is not None and summary["relay_dwell_ms"]["p50"] >= 0


def check_closed(section: dict[str, Any], *, emulator: bool) -> None:
    leaks = section["leaks"]
    assert leaks["ok"] and leaks["errors"] == [], leaks
    assert leaks["relay_calls"] == 0 and leaks["leaked_sessions"] == 0 and leaks["leaked_sockets"] == 0, leaks
    if emulator:
        assert leaks["emulator"] == {
            "sessions": 0,
            "peer_connections": 0,
            "publications": 0,
            "subscriptions": 0,
        }
    else:
        assert leaks["emulator"] is None
    stop = section["stop"]
    assert stop["clean"] and stop["leftovers"] == [] and stop["killed"] == [], stop
    for name, pid in section["stack"]["pids"].items():  # stopped by PID: none of them still runs
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            assert b"splitrelay.cli" not in Path(f"/proc/{pid}/cmdline").read_bytes(), (
                f"{name} (pid {pid}) runs"
            )


async def test_a_tiny_sfu_against_direct_run_fails_nothing_and_leaves_nothing_open(tmp_path: Path) -> None:
    out = tmp_path / "run"
    plot = out / "v2v.png"
    code, stdout, stderr = await bench(
        "--calls", "4", "--concurrency", "2", "--block", "4", "--out", str(out), "--plot", str(plot)
    )
    assert code == 0, stdout + stderr
    for row in ("voice-to-voice p99", "setup p95", "leaked sessions", "leaked sockets", "A ÷ B"):
        assert row in stdout, stdout
    assert "ok: every call succeeded; nothing left open" in stdout, stdout

    doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert doc["ok"] and doc["exit_code"] == 0 and doc["caller_sockets"]["leaked"] == {}, doc["verdict"]
    a, b = doc["configs"]["a"], doc["configs"]["b"]
    assert (a["variant"]["mode"], b["variant"]["mode"]) == ("sfu", "direct")
    for section in (a, b):
        summary = section["summary"]
        assert (summary["calls"], summary["ok"], summary["failed"], summary["warmup_calls"]) == (4, 4, 0, 1)
        assert summary["turns"] == 4 and summary["failure_reasons"] == []
        check_latencies(summary, 500.0)
        assert section["cpu"]["stack_ms_per_call"] > 0 and section["cpu"]["caller_ms_per_call"] > 0
    check_closed(a, emulator=True)
    check_closed(b, emulator=False)
    ratio = doc["ratio_a_over_b"]["voice_to_voice_ms"]["p50"]
    assert ratio == pytest.approx(
        a["summary"]["voice_to_voice_ms"]["p50"] / b["summary"]["voice_to_voice_ms"]["p50"]
    )
    assert doc["settings"]["order"] == "A B" and doc["settings"]["namespace"] is False

    rows = results(out)
    assert len(rows) == 10  # 1 warm-up + 4 measured, per side
    for label, block in (("a", 0), ("b", 1)):
        mine = [r for r in rows if r["config"] == label]
        assert sorted(r["seq"] for r in mine) == [1, 2, 3, 4, 5]  # the file is in order of completion
        assert [r["warmup"] for r in mine].count(True) == 1
        assert {r["block"] for r in mine if not r["warmup"]} == {block}
        assert all(r["ok"] and r["error"] is None and r["report"]["ok"] for r in mine), mine
    assert len({r["call_id"] for r in rows}) == 10
    plotted = plot.read_bytes()
    assert plotted.startswith(PNG_MAGIC) and len(plotted) > 5000 and doc["plot"] == str(plot)

    # Secrets: the emulator's app secret (pinned for this run) is written nowhere; no config file on disk.
    assert not list(out.rglob("emulator.json"))
    written = [stdout, stderr] + [
        p.read_text(errors="replace")
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".log", ".json", ".jsonl")
    ]
    assert not any(PINNED_SECRET in text for text in written)
    assert not any("signing_key" in text for text in (stdout, stderr, (out / "summary.json").read_text()))


def namespaces_allowed() -> bool:
    try:
        done = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def netem_allowed() -> bool:
    probe = "ip link set lo up && tc qdisc add dev lo root netem delay 1ms"
    try:
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", probe], capture_output=True, timeout=10, check=False
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


async def test_in_its_own_network_namespace_each_variant_reaches_its_stack(tmp_path: Path) -> None:
    if not namespaces_allowed():
        pytest.skip("`unshare --net` is not permitted here (needs root or CAP_SYS_ADMIN)")
    out = tmp_path / "netns"
    code, stdout, stderr = await bench(
        "--netns", "--a", "direct", "--b", "direct,silence=300", "--calls", "1", "--concurrency", "1",
        "--block", "1", "--warmup", "0", "--json", "--out", str(out),
    )  # fmt: skip
    assert code == 0, stdout + stderr
    doc = json.loads(stdout)  # --json: stdout is the document alone, progress went to stderr
    assert doc["ok"] and doc["settings"]["namespace"] is True and doc["settings"]["netem"] is None
    a, b = doc["configs"]["a"], doc["configs"]["b"]
    assert (a["variant"]["silence_ms"], b["variant"]["silence_ms"]) == (500, 300)
    check_latencies(a["summary"], 500.0)
    check_latencies(b["summary"], 300.0)  # the threshold of configuration B reached B's agent
    check_closed(a, emulator=False)
    check_closed(b, emulator=False)
    assert [r["config"] for r in results(out)] == ["a", "b"]


async def test_netem_impairs_the_run_where_the_kernel_allows_it_and_says_why_not_elsewhere(
    tmp_path: Path,
) -> None:
    out = tmp_path / "netem"
    args = ["--a", "direct", "--b", "direct", "--calls", "1", "--concurrency", "1", "--block", "1"]
    args += ["--warmup", "0", "--json", "--out", str(out), "--netem", "delay 5ms"]
    code, stdout, stderr = await bench(*args)
    if not netem_allowed():
        assert code == 3, stdout + stderr
        doc = json.loads(stdout)
        assert doc["skipped"] is True and doc["ok"] is False and doc["exit_code"] == 3
        reason = doc["reason"]
        assert reason.startswith(("netem:", "network namespace:")) and "\n" not in reason, reason
        assert "impairment not possible here, nothing run" in " ".join(stderr.split()), stderr
        assert not (out / "calls.jsonl").exists()
        return
    assert code == 0, stdout + stderr
    doc = json.loads(stdout)
    assert doc["settings"]["netem"]["spec"] == "delay 5ms" and doc["settings"]["namespace"] is True
    for section in doc["configs"].values():
        # Direct mode: the last speech frame crosses lo twice to reach the agent, the reply twice back.
        assert section["summary"]["voice_to_voice_ms"]["p50"] >= 500 + 4 * 5 - 1, section["summary"]
        check_closed(section, emulator=False)


async def test_userspace_impairment_of_a_against_a_clean_b_in_the_same_run(tmp_path: Path) -> None:
    """`--impair` where the kernel has no netem: A's callers impair their own leg, B is the baseline."""
    out = tmp_path / "run"
    code, stdout, stderr = await bench(
        "--a", "direct", "--b", "direct", "--calls", "2", "--concurrency", "2", "--block", "2",
        "--warmup", "0", "--impair", "loss=3%,delay=30ms,jitter=10ms,seed=5",
        "--impair-relay", "loss=2%,seed=6", "--out", str(out),
    )  # fmt: skip
    assert code in (0, 1), stdout + stderr  # a lost frame may make a reply "not a run of the sent frames"
    assert "of configuration a's caller legs: loss=3%" in stdout, stdout
    assert "configuration a's relay legs" in stdout and "loss=2%" in stdout, stdout
    doc = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert doc["settings"]["impair"] == {
        "spec": "loss=3%,delay=30ms,jitter=10ms",
        "engine": "userspace",
        "where": "configuration a's caller legs",
    }
    assert doc["settings"]["impair_relay"]["spec"] == "loss=2%,delay=0ms,jitter=0ms"
    rows = results(out)
    impaired = [r["report"]["caller"] for r in rows if r["config"] == "a" and r["report"]]
    clean = [r["report"]["caller"] for r in rows if r["config"] == "b" and r["report"]]
    assert impaired and clean
    assert all(c["impaired_sent"]["lost"] > 0 and c["impaired_received"]["offered"] > 0 for c in impaired)
    assert not any("impaired_sent" in c for c in clean)
    a, b = (doc["configs"][k]["summary"]["voice_to_voice_ms"]["p50"] for k in ("a", "b"))
    if a is not None and b is not None:
        assert a > b  # 30 ms each way on A's leg, none on B's
