"""The web client's files (edge/static): its turn logic under Node's test runner, and that every file
the page loads is there and served with a type a browser accepts (module scripts need a JavaScript type).
The page itself runs in Chromium in tests/e2e/test_browser_client.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from splitrelay.devtools.local_edge import LocalEdge
from tests.edge_support import edge_env

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "edge" / "static"
TURNS_TEST = REPO / "tests" / "browser" / "turns.test.mjs"
NODE_LIMIT_S = 60.0


def referenced(page: str) -> set[str]:
    """Paths the page and its scripts load: src/href attributes and ES module imports."""
    found = set(re.findall(r'(?:src|href)="(/[^"]*)"', page))
    for script in STATIC.glob("*.js"):
        found |= set(re.findall(r'^import .* from "(/[^"]+)";$', script.read_text(), re.MULTILINE))
    return found


async def test_turn_logic_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the web client's Node tests: node is not on PATH")
        pytest.skip("needs node on PATH (apt-get install nodejs npm)")
    process = await asyncio.create_subprocess_exec(
        node,
        "--experimental-detect-module",
        "--disable-warning=MODULE_TYPELESS_PACKAGE_JSON",
        "--test",
        str(TURNS_TEST),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), NODE_LIMIT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"node --test did not finish within {NODE_LIMIT_S:g} s")
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    passed = re.search(r"^# pass (\d+)$", text, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) >= 4 and "# fail 0" in text, text


async def test_every_file_the_page_loads_is_served_with_its_type() -> None:
    edge = LocalEdge(edge_env())
    try:
        check_served(edge)
    finally:
        await edge.aclose()


def check_served(edge: LocalEdge) -> None:
    page = edge.static("/")
    assert page is not None and page.header("content-type") == "text/html"
    paths = referenced(page.body.decode())
    assert {"/client.css", "/client.js", "/stats.js", "/turns.js"} <= paths, paths
    wanted = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",)}
    for path in sorted(paths):
        served = edge.static(path)
        assert served is not None, f"{path}: referenced by the page, not in edge/static"
        assert served.header("content-type") in wanted[Path(path).suffix], (path, served.headers)


async def test_hostile_paths_are_404_not_500_on_the_local_edge() -> None:
    """GET /%00 and an 8,000-character path made the file lookup raise (a 500) before any route ran."""
    edge = LocalEdge(edge_env())
    try:
        transport = httpx.ASGITransport(app=edge)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
            for path in ("/%00", "/a%00b.js", "/" + "a" * 8_000, "/v1/calls/%00", "/v1/calls/" + "b" * 8_000):
                response = await client.get(path)
                # No route (404), or an API route that wants a token first (401): never a 500.
                assert response.status_code in (401, 404), (path[:20], response.status_code)
                assert response.json()["error"]["code"] in ("not_found", "unauthorized")
    finally:
        await edge.aclose()
