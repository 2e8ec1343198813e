"""edge/contract/realtime_api.py and edge/contract/turn_api.py run unchanged on Pyodide (the Python of
Cloudflare Workers).

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
EDGE_FILES = ("__init__.py", "realtime_api.py", "turn_api.py")

CHECK = r"""
import json, random, sys
sys.path.insert(0, "/home/pyodide")
from splitrelay.contract import realtime_api as api, turn_api as turn

assert sys.version_info[:2] >= (3, 12), sys.version
app = api.SfuApp("app1", api.Secret("pyodide-secret-zz"))
request = api.build_new_tracks(
    app, "s1", api.TracksRequest(tracks=(api.TrackObject.remote("c", "mic", mid=api.mid_for_track("out")),))
)
assert json.loads(request.body_bytes) == {
    "tracks": [{"location": "remote", "mid": "#out", "sessionId": "c", "trackName": "mic"}]
}
assert "pyodide-secret-zz" not in repr(request)
assert request.header_dict()["Authorization"] == "Bearer pyodide-secret-zz"
parsed = api.parse_new_tracks(200, b'{"tracks": [{"mid": "1", "errorCode": "x", "errorDescription": "y"}]}')
assert [t.mid for t in parsed.failed] == ["1"]
try:
    api.parse_get_session(429, b"")
except api.SfuApiError as error:
    assert error.retryable and error.code == "http_error"
else:
    raise AssertionError("429 did not raise")
try:
    api.TracksResponse.from_json({"tracks": [{"mid": 4}]})
except api.SchemaError as error:
    assert error.field == "tracks[0].mid"
else:
    raise AssertionError("bad mid accepted")
policy = api.RetryPolicy()
delay = policy.next_delay(attempts_made=1, elapsed=0, retryable=True, rng=random.Random(1), retry_after="3")
assert delay == 3.0
assert api.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
ice = turn.parse_generate_ice_servers(201, b'{"iceServers": [{"urls": "stun:stun.cloudflare.com:53"}]}')
assert ice.without_port_53().ice_servers == ()
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
