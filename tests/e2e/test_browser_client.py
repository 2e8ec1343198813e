"""The web client (edge/static) in Debian's headless Chromium, end to end through the local stack.

Chromium's fake microphone plays scripts/devtools/assets/utterance.wav in a loop (padded here with silence so
the echo agent's 500 ms end-of-speech and a barge-in both happen every loop). The call goes page →
local edge → Realtime emulator → relay (SFU mode) → echo agent and back. The test reads what the page
measured (window.splitrelay: stats, turns, barge-ins), the relay's call record and what is left open
after hang-up; it keeps a screenshot in test-artifacts/browser-client.png.

Everything runs in a fresh network namespace (tests/browser/scenario.py says why) so every packet of
the call stays on 127.0.0.1. Without chromium the test skips on a developer machine; under CI it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.edge_support import no_secret_in

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
UTTERANCE = REPO / "scripts" / "devtools" / "assets" / "utterance.wav"
CHROMIUM = Path("/usr/bin/chromium")
PLAYWRIGHT = REPO / "node_modules" / "playwright-core" / "package.json"
ARTIFACT = REPO / "test-artifacts" / "browser-client.png"
# The WAV ends with ~0.45 s of silence: too short for the echo agent's 500 ms end of speech. With 1.5 s
# more, each loop is one turn, and the next loop starts while the reply (~2.7 s) still plays: a barge-in.
PAD_S = 1.5
SCENARIO_LIMIT_S = 90.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def need(condition: bool, what: str) -> None:
    """Skip on a developer machine, fail under CI: CI must run the browser test."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser client test: {what}")
    pytest.skip(what)


def padded_wav(source: Path, target: Path, pad_s: float) -> None:
    """A copy of the utterance with ``pad_s`` seconds of digital silence appended."""
    with wave.open(str(source), "rb") as reader:
        params = reader.getparams()
        frames = reader.readframes(params.nframes)
    if (params.framerate, params.nchannels, params.sampwidth) != (48_000, 1, 2):
        raise ValueError(f"{source}: must be 48 kHz mono 16-bit, got {params}")
    with wave.open(str(target), "wb") as writer:
        writer.setparams(params)
        writer.writeframes(frames + bytes(int(pad_s * params.framerate) * params.sampwidth))


def namespace_command() -> list[str]:
    """``unshare --net``; unprivileged users map themselves to root in a user namespace first."""
    command = ["unshare", "--net"]
    if os.geteuid() != 0:
        command.append("--map-root-user")
    return command


async def run_scenario(
    config_path: Path, module: str = "tests.browser.scenario", limit_s: float = SCENARIO_LIMIT_S
) -> tuple[int, str]:
    """Run a browser scenario module in its own network namespace; its exit status and output."""
    process = await asyncio.create_subprocess_exec(
        *namespace_command(),
        sys.executable,
        "-m",
        module,
        str(config_path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # the scenario, node and Chromium share one process group: ours to end
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), limit_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        pytest.fail(f"the browser scenario {module} did not finish within {limit_s:g} s")
    return process.returncode or 0, output.decode(errors="replace")


def check_page(page: dict[str, Any]) -> None:
    first, later = page["first"], page["later"]
    assert later["state"] == "connected" and later["error"] is None, later
    stats = later["stats"]
    assert stats["packetsReceived"] > 0, stats
    assert stats["bytesReceived"] > first["stats"]["bytesReceived"], "received bytes did not grow"
    assert stats["rttMs"] is not None and stats["rttMs"] >= 0, stats
    assert stats["jitterMs"] is not None and stats["jitterMs"] >= 0, stats
    assert stats["packetsLost"] is not None and stats["playoutDelayMs"] is not None, stats
    path = stats["path"]
    assert path["local"]["address"] == "127.0.0.1" and path["remote"]["address"] == "127.0.0.1", path
    assert later["turns"], "no turn measured"
    for turn in later["turns"]:
        # The echo agent replies after 500 ms of silence: far less means the page measured something else.
        assert turn["voiceToVoiceMs"] >= 250, turn
        assert turn["callerSpokeMs"] > 0, turn
    assert later["bargeIns"] and later["bargeIns"][0]["agentPlayedMs"] > 0, later["bargeIns"]
    closed = page["closed"]
    assert closed["state"] == "closed" and closed["record"] == "closed" and closed["error"] is None, closed


def check_relay(record: dict[str, Any], page: dict[str, Any]) -> None:
    assert record["mode"] == "sfu" and record["state"] == "live", record
    assert record["packets_in"] > 0 and record["packets_to_inference"] > 0, record
    assert record["frames_from_inference"] > 0 and record["packets_out"] > 0, record
    # The relay's count was read after the page's: the page cannot have received more than was sent.
    assert record["packets_out"] >= page["later"]["stats"]["packetsReceived"], record
    assert record["barge_ins"] >= 1, record
    kinds = [event["event"]["type"] for event in record["events"]]
    assert "agent.reply" in kinds and "agent.interrupted" in kinds, kinds


def prepare(tmp_path: Path) -> tuple[Path, Path]:
    """Check the tools, pad the utterance, write the scenario's config; (config, report) paths."""
    need(CHROMIUM.exists(), f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    node = shutil.which("node")
    need(node is not None, "needs node on PATH (apt-get install nodejs npm)")
    need(PLAYWRIGHT.is_file(), "needs playwright-core from package.json: `make setup` (npm install)")
    need(shutil.which("unshare") is not None, "needs unshare (util-linux) for a loopback-only namespace")
    wav = tmp_path / "utterance-padded.wav"
    padded_wav(UTTERANCE, wav, PAD_S)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.unlink(missing_ok=True)
    report_path = tmp_path / "report.json"
    config = {
        "wav": str(wav),
        "screenshot": str(ARTIFACT),
        "work_dir": str(tmp_path),
        "report": str(report_path),
        "chromium": str(CHROMIUM),
        "node": node,
    }
    config_path = tmp_path / "scenario.json"
    config_path.write_text(json.dumps(config))
    return config_path, report_path


def load_report(report_path: Path, status: int, output: str) -> dict[str, Any]:
    if status != 0 and not report_path.exists():
        need("unshare failed" not in output, f"cannot create a network namespace here: {output[-300:]}")
        pytest.fail(f"the browser scenario exited {status} without a report:\n{output[-3000:]}")
    text = report_path.read_text()
    assert no_secret_in(text) and no_secret_in(output), "a secret reached the report or the output"
    report: dict[str, Any] = json.loads(text)
    assert status == 0 and "error" not in report, f"{report.get('error')}\n{json.dumps(report)[-3000:]}"
    return report


def check_cleanup(report: dict[str, Any]) -> None:
    """Hang-up left nothing open: no relay call, no emulator session, peer or track; edge record closed."""
    assert report["live_in_call"]["relay_calls"] == 1, report["live_in_call"]
    after = report["live_after_hangup"]
    emulator = after["emulator"]
    assert after["relay_calls"] == 0, after
    assert all(emulator[key] == 0 for key in ("sessions", "peer_connections", "subscriptions")), after
    assert report["edge_record_after"]["state"] == "closed", report["edge_record_after"]


async def test_browser_client_call(tmp_path: Path) -> None:
    config_path, report_path = prepare(tmp_path)
    status, output = await run_scenario(config_path)
    report = load_report(report_path, status, output)

    assert report["interfaces"] == ["lo"], report["interfaces"]
    page = report["page"]
    check_page(page)
    check_relay(report["relay_record"], page)
    problems = [line for line in report["driver_log"] if line["event"] in ("pageerror", "console")]
    assert not problems, problems
    assert report["driver_exit"] == 0, report["driver_exit"]
    check_cleanup(report)
    assert ARTIFACT.read_bytes()[:8] == PNG_MAGIC, f"no screenshot at {ARTIFACT}"

    turns = ", ".join(f"{t['voiceToVoiceMs']} ms" for t in page["later"]["turns"])
    stats = page["later"]["stats"]
    print(
        f"\nvoice-to-voice in the page: {turns}; RTT {stats['rttMs']} ms, jitter {stats['jitterMs']} ms, "
        f"playout delay {stats['playoutDelayMs']} ms; barge-ins {len(page['later']['bargeIns'])}"
    )
