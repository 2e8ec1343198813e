"""Headless Chromium against the Realtime emulator, as Cloudflare's own browser clients call the real service.

A page served from one loopback port calls the emulator's API on another (cross-origin, with an
Authorization header: preflighted), pushes two tracks from one session and pulls them into a second,
then closes the first track the standard way (``transceiver.stop()``, a new offer, ``tracks/close``
with ``force: false``) and later pushes a third track (Chromium recycles the stopped m-line). Both
renegotiations move Chromium's BUNDLE group to a new transport; the emulator must answer so that the
page ends in ``stable`` with media flowing. tests/browser/emulator_scenario.py runs it all in a fresh
network namespace; this module asserts on its report. Without chromium the tests skip on a developer
machine; under CI they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_browser_client import CHROMIUM, PLAYWRIGHT, namespace_command, need

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCENARIO_LIMIT_S = 120.0


def _sections(sdp: str) -> tuple[list[str], dict[str, list[str]]]:
    """The session-level lines and each m-section's lines by mid."""
    head: list[str] = []
    by_mid: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = [line]
        elif current is None:
            head.append(line)
            continue
        else:
            current.append(line)
        mid = next((x[len("a=mid:") :] for x in current if x.startswith("a=mid:")), None)
        if mid is not None:
            by_mid[mid] = current
    return head, by_mid


def _bundle(head: list[str]) -> list[str]:
    line = next((x for x in head if x.startswith("a=group:BUNDLE")), "a=group:BUNDLE")
    return line.split()[1:]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need(CHROMIUM.exists(), f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    node = shutil.which("node")
    need(node is not None, "needs node on PATH (apt-get install nodejs npm)")
    need(PLAYWRIGHT.is_file(), "needs playwright-core from package.json: `make setup` (npm install)")
    need(shutil.which("unshare") is not None, "needs unshare (util-linux) for a loopback-only namespace")
    work = tmp_path_factory.mktemp("emulator-browser")
    report_path = work / "report.json"
    config = {"work_dir": str(work), "report": str(report_path), "chromium": str(CHROMIUM), "node": node}
    config_path = work / "scenario.json"
    config_path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [*namespace_command(), sys.executable, "-m", "tests.browser.emulator_scenario", str(config_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the scenario, node and Chromium share one process group: ours to end
    )
    try:
        output, _ = process.communicate(timeout=SCENARIO_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the emulator browser scenario did not finish within {SCENARIO_LIMIT_S:g} s")
    text = output.decode(errors="replace")
    if not report_path.exists():
        need("unshare failed" not in text, f"cannot create a network namespace here: {text[-300:]}")
        pytest.fail(f"the scenario exited {process.returncode} without a report:\n{text[-3000:]}")
    body = report_path.read_text()
    assert "emulator-test-secret" not in body and "emulator-test-secret" not in text, "the app secret leaked"
    doc: dict[str, Any] = json.loads(body)
    assert process.returncode == 0 and "error" not in doc, f"{doc.get('error')}\n{body[-3000:]}"
    assert doc["interfaces"] == ["lo"], doc["interfaces"]
    return doc


def test_a_page_on_another_origin_calls_the_api(report: dict[str, Any]) -> None:
    """CORS: the page's origin is another port; sessions/new and tracks/new from it succeed."""
    result = report["result"]
    assert result["origin"] == f"http://127.0.0.1:{report['page_port']}"
    assert report["page_port"] != report["api_port"]
    assert result["steps"]["cors"] == {"ok": True, "sessionId": True}, result
    assert "mids" in result["steps"].get("close", {}), result  # tracks/new from the page worked too


def test_transceiver_stop_and_renegotiation_close_a_track(report: dict[str, Any]) -> None:
    result = report["result"]
    close = result["steps"]["close"]
    assert "setRemoteError" not in close, close.get("setRemoteError")
    assert close["signalingState"] == "stable", close
    assert close["stoppedCurrentDirection"] == "stopped", close
    assert close["response"]["tracks"] == [{"mid": close["mids"][0]}], close["response"]
    stopped, kept = close["mids"]
    head, sections = _sections(close["answer"])
    assert sections[stopped][0].split()[1] == "0", sections[stopped][0]  # port 0: rejected
    assert "a=inactive" in sections[stopped]
    assert stopped not in _bundle(head) and kept in _bundle(head), head
    # The remaining track still flows: out of the page, and through the emulator into the other session.
    before, after = close["outboundTwo"]
    assert after > before, close["outboundTwo"]
    before, after = close["inboundTwo"]
    assert after > before, close["inboundTwo"]
    assert {"mid": stopped, "trackName": "one", "status": "inactive"} in close["sessionTracks"]
    assert {"mid": kept, "trackName": "two", "status": "active"} in close["sessionTracks"]
    assert "error" not in result, result.get("error")


def test_a_new_track_after_the_close_recycles_the_m_line(report: dict[str, Any]) -> None:
    again = report["result"]["steps"]["again"]
    assert again["signalingState"] == "stable", again
    _, offered = _sections(again["offer"])
    assert again["mid"] in offered
    for pair in (again["outboundThree"], again["outboundTwo"]):
        assert pair[1] > pair[0], again


def test_tracks_update_keeps_chromium_playing_without_renegotiation(report: dict[str, Any]) -> None:
    """Relay failover's SFU step in a browser (issue 15): B's transceiver playing "two" is pointed at
    "three" by tracks/update. B sends no offer, stays connected, and its receiver goes on: the same
    SSRC, packets and decoded samples growing for 2 s (50 packets/s, 48 kHz), few concealed."""
    update = report["result"]["steps"]["update"]
    response = update["response"]
    assert response["requiresImmediateRenegotiation"] is False, response
    assert [("errorCode" in t, t.get("trackName")) for t in response["tracks"]] == [(False, "three")], (
        response
    )
    assert update["sameDescriptions"] is True and update["signalingState"] == "stable", update
    assert update["connectionState"] == "connected" and update["changes"] == [], update
    before, after = update["before"], update["after"]
    assert before is not None and after is not None, update
    assert after["ssrc"] == before["ssrc"], update
    assert after["packetsReceived"] - before["packetsReceived"] >= 75, update
    assert after["packetsLost"] - before["packetsLost"] <= 3, update
    decoded = after["totalSamplesReceived"] - before["totalSamplesReceived"]
    concealed = after["concealedSamples"] - before["concealedSamples"]
    assert decoded >= 48_000 * 1.5 and concealed <= 0.1 * decoded, update
    active = [t for t in update["sessionTracks"] if t["status"] == "active"]
    assert [(t["sessionId"], t["trackName"]) for t in active] == [("A", "three")], update["sessionTracks"]
