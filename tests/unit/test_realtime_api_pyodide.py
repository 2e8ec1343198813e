"""The contract (edge/contract/) runs unchanged on Pyodide (the Python of Cloudflare Workers): its
dataclass codec, request building, response parsing, retries, TURN and the edge→relay control contract.

Needs Node and the npm ``pyodide`` package (0.28.x = Python 3.13, as in workerd), which loads offline.
It is looked up in ``$SPLITRELAY_PYODIDE`` (a directory holding ``pyodide.mjs``), then in node_modules/
of the repository and of edge/. Without it the test is skipped and says how to enable it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EDGE_FILES = (
    "__init__.py",
    "api_error.py",
    "control.py",
    "json_fields.py",
    "retry.py",
    "safety.py",
    "sfu.py",
    "sfu_http.py",
    "signing.py",
    "turn.py",
)

CHECK = r"""
import json, random, sys
sys.path.insert(0, "/home/pyodide")
from splitrelay.contract import control, retry, sfu, sfu_http, turn
from splitrelay.contract.api_error import SfuApiError
from splitrelay.contract.json_fields import SchemaError
from splitrelay.contract.safety import Secret

assert sys.version_info[:2] >= (3, 12), sys.version
app = sfu_http.SfuApp("app1", Secret("pyodide-secret-zz"))
request = sfu_http.build_new_tracks(
    app, "s1", sfu.TracksRequest(tracks=(sfu.TrackObject.remote("c", "mic", mid=sfu.mid_for_track("out")),))
)
assert json.loads(request.body_bytes) == {
    "tracks": [{"location": "remote", "mid": "#out", "sessionId": "c", "trackName": "mic"}]
}
assert "pyodide-secret-zz" not in repr(request)
assert request.header_dict()["Authorization"] == "Bearer pyodide-secret-zz"
failed = b'{"tracks": [{"mid": "1", "errorCode": "x", "errorDescription": "y"}]}'
parsed = sfu_http.parse_new_tracks(200, failed)
assert [t.mid for t in parsed.failed] == ["1"]
try:
    sfu_http.parse_get_session(429, b"")
except SfuApiError as error:
    assert error.retryable and error.code == "http_error"
else:
    raise AssertionError("429 did not raise")
try:
    sfu.TracksResponse.from_json({"tracks": [{"mid": 4}]})
except SchemaError as error:
    assert error.field == "tracks[0].mid"
else:
    raise AssertionError("bad mid accepted")
policy = retry.RetryPolicy()
delay = policy.next_delay(attempts_made=1, elapsed=0, retryable=True, rng=random.Random(1), retry_after="3")
assert delay == 3.0
assert retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def send():
    return 201, None, b'{"sessionId": "s9"}'


async def no_sleep(delay):
    raise AssertionError("no retry expected")


attempt = retry.call_with_retries(
    send, sfu_http.parse_new_session, policy, clock=lambda: 0.0, sleep=no_sleep, rng=random.Random(1)
)
try:
    attempt.send(None)  # nothing to wait for: the coroutine finishes at once
except StopIteration as done:
    assert done.value.session_id == "s9"
else:
    raise AssertionError("the retry loop waited")
ice = turn.parse_generate_ice_servers(201, b'{"iceServers": [{"urls": "stun:stun.cloudflare.com:53"}]}')
assert ice.without_port_53().ice_servers == ()
attach = control.AttachRequest.from_json(
    {"call_id": "c-1", "mode": "sfu", "sfu": {"caller_session_id": "s", "caller_track_name": "mic"}}
)
assert attach.mode is control.AttachMode.SFU and attach.to_json()["sfu"]["caller_track_name"] == "mic"
try:
    offer = {"type": "offer", "sdp": "v", "x": 1}
    control.AttachRequest.from_json({"call_id": "c-1", "mode": "direct", "offer": offer})
except SchemaError as error:
    assert error.field == "offer.x"
else:
    raise AssertionError("unknown key accepted")
print("PYODIDE-OK", sys.version.split()[0])
"""

RUNNER = """
import {{ loadPyodide }} from {module};
import fs from "node:fs";
const py = await loadPyodide();
py.FS.mkdirTree("/home/pyodide/splitrelay/contract");
py.FS.writeFile("/home/pyodide/splitrelay/__init__.py", "");
for (const name of {files}) {{
  py.FS.writeFile(`/home/pyodide/splitrelay/contract/${{name}}`, fs.readFileSync({edge} + "/" + name));
}}
py.runPython(fs.readFileSync({check}, "utf8"));
"""


def find_pyodide() -> Path | None:
    candidates = [REPO / "node_modules" / "pyodide", REPO / "edge" / "node_modules" / "pyodide"]
    override = os.environ.get("SPLITRELAY_PYODIDE")
    if override:
        candidates.insert(0, Path(override))
    return next((path for path in candidates if (path / "pyodide.mjs").is_file()), None)


def test_edge_api_runs_on_pyodide(tmp_path: Path) -> None:
    node = shutil.which("node")
    pyodide = find_pyodide()
    if node is None or pyodide is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the edge on Pyodide: `make setup` installs it from package.json")
        pytest.skip(
            "needs node and the npm pyodide package: `npm install pyodide@0.28`, or set SPLITRELAY_PYODIDE"
        )
    check = tmp_path / "check.py"
    check.write_text(CHECK, encoding="utf-8")
    runner = tmp_path / "run.mjs"
    runner.write_text(
        RUNNER.format(
            module=repr((pyodide / "pyodide.mjs").as_uri()),
            files=repr(list(EDGE_FILES)),
            edge=repr(str(REPO / "edge" / "contract")),
            check=repr(str(check)),
        ),
        encoding="utf-8",
    )
    result = subprocess.run([node, str(runner)], capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PYODIDE-OK 3.1" in result.stdout
