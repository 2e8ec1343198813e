"""`splitrelay token` and `splitrelay edge serve` (scripts/cli/edge.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from splitrelay.cli.edge import TOKEN_KEY_ENV, edge_app, token_app
from splitrelay.edge import tokens
from tests.edge_support import APP_SECRET, RELAY_KEY, TOKEN_KEY, no_secret_in

runner = CliRunner()


def test_issue_and_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_KEY_ENV, TOKEN_KEY)
    issued = runner.invoke(token_app, ["issue", "--sub", "alice", "--scope", "ice", "--ttl", "60", "--json"])
    assert issued.exit_code == 0, issued.output
    doc = json.loads(issued.output)
    claims = tokens.verify(TOKEN_KEY.encode(), doc["token"])
    assert claims.sub == "alice" and claims.scope == ("ice",) and claims.exp - claims.iat == 60
    assert no_secret_in(issued.output)
    ok = runner.invoke(token_app, ["verify", doc["token"]])
    assert ok.exit_code == 0 and json.loads(ok.output)["sub"] == "alice"
    bad = runner.invoke(token_app, ["verify", doc["token"][:-2] + "xx"])
    assert bad.exit_code == 1


def test_issue_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_KEY_ENV, raising=False)
    missing = runner.invoke(token_app, ["issue", "--sub", "alice"])
    assert missing.exit_code != 0 and TOKEN_KEY_ENV in missing.output
    monkeypatch.setenv(TOKEN_KEY_ENV, TOKEN_KEY)
    too_long = runner.invoke(token_app, ["issue", "--sub", "alice", "--ttl", "90000"])
    assert too_long.exit_code != 0 and "ttl_s: must be between 1 and 86400" in too_long.output
    scope = runner.invoke(token_app, ["issue", "--sub", "alice", "--scope", "admin"])
    assert scope.exit_code != 0 and "scope" in scope.output


def test_serve_names_the_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPLITRELAY_SFU_APP_SECRET", "SPLITRELAY_RELAY_SIGNING_KEY", TOKEN_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(
        edge_app,
        ["serve", "--sfu-url", "http://127.0.0.1:9/v1", "--sfu-app-id", "a", "--relay", "http://127.0.0.1:9"],
    )
    assert result.exit_code != 0 and "$SPLITRELAY_SFU_APP_SECRET: is required" in result.output


def test_serve_runs_and_stops(tmp_path: object) -> None:
    env = {
        **os.environ,
        "SPLITRELAY_SFU_APP_SECRET": APP_SECRET,
        "SPLITRELAY_RELAY_SIGNING_KEY": RELAY_KEY,
        TOKEN_KEY_ENV: TOKEN_KEY,
    }
    code = (
        "from splitrelay.cli.edge import edge_app; edge_app(['serve', '--sfu-url', 'http://127.0.0.1:9/v1', "
        "'--sfu-app-id', 'app', '--relay', 'http://127.0.0.1:9', '--port', '0', '--json', "
        "'--print-token', 'tester'])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        url = ready["url"]
        assert url.startswith("http://127.0.0.1:") and "#token=" in ready["page"]
        deadline = time.monotonic() + 10
        while True:
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert health.json() == {"status": "ok"}
        page = httpx.get(f"{url}/", timeout=2)
        assert page.status_code == 200 and "client.js" in page.text
        script = httpx.get(f"{url}/client.js", timeout=2)
        assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert httpx.get(f"{url}/../pyproject.toml", timeout=2).status_code == 404
        token = ready["page"].split("#token=", 1)[1]
        ice = httpx.get(f"{url}/v1/ice-servers", headers={"authorization": f"Bearer {token}"}, timeout=2)
        assert ice.json()["ice_servers"] == [{"urls": ["stun:stun.cloudflare.com:3478"]}]
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr[-2000:]
    assert no_secret_in(stderr)
