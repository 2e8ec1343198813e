"""Benchmark of the edge Worker: CPU per call setup in the Worker's Python, and module import time.

The Worker runs as uploaded (the ``wrangler deploy --dry-run`` bundle) under Pyodide in Node with the
real ``workers-runtime-sdk`` (tests/pyodide/worker_host.mjs, bench mode). Every SFU, TURN and relay
response is replayed from the exchange recorded against the emulator and a real relay
(tests/pyodide/recorded_call_setup.json), and resolves at once, so the CPU measured per setup
(``process.cpuUsage`` around the request and its ``waitUntil`` work) is the Worker's own: routing,
token check, relay choice, the Durable Object commands, request building, response parsing. The
baseline in the same run is the same setup on CPython (edge/app.py over the same recording), so the
ratio shows what running in Pyodide costs. Import time: the first import of the main module (SDK
included) and repeated re-imports of the edge modules from source (a cold-start proxy).

Run: ``splitrelay bench edge [--iterations 300] [--json]`` (or ``python -m scripts.bench_edge``).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

GOAL_CPU_MS = 5.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p99": percentile(values, 0.99), "n": float(len(values))}


async def cpython_setups(recorded: dict[str, Any], iterations: int) -> list[float]:
    """The same call setup on CPython: process CPU ms per setup, background relay attach included."""
    from edge import tokens
    from edge.app import build_app
    from edge.calls import Inbound, Outbound
    from edge.local import LocalRecords
    from edge.ratelimit import TokenBucket
    from edge.web import EdgeRequest
    from tests.edge_support import TOKEN_KEY
    from tests.pyodide.host import recorded_key

    table: dict[str, dict[str, Any]] = {}
    for item in recorded["exchanges"]:
        table.setdefault(f"{item['method']} {item['key']}", item)

    async def replay(request: Outbound) -> Inbound:
        item = table[f"{request.method} {recorded_key(request.method, request.url, request.body)}"]
        body = b"" if item["body"] is None else json.dumps(item["body"]).encode()
        return Inbound(item["status"], {"content-type": "application/json"}, body)

    pending: list[asyncio.Task[None]] = []

    def defer(coro: Coroutine[Any, Any, None]) -> None:
        pending.append(asyncio.get_running_loop().create_task(coro))

    records = LocalRecords()
    app = build_app(
        bench_env(recorded),
        fetch=replay,
        records=records,
        defer=defer,
        ip_limiter=TokenBucket(rate=1e6, burst=1e6),
        token_limiter=TokenBucket(rate=1e6, burst=1e6),
    )
    token = tokens.issue(TOKEN_KEY.encode(), "bench")[0]
    body = json.dumps({"offer": {"type": "offer", "sdp": recorded["offer"]}}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    cpu_ms: list[float] = []
    for _ in range(iterations):
        started = time.process_time()
        response = await app.handle(EdgeRequest("POST", "/v1/calls", headers=headers, body=body))
        await asyncio.gather(*pending)
        pending.clear()
        cpu_ms.append((time.process_time() - started) * 1000)
        if response.status != 201:
            raise RuntimeError(f"CPython setup failed: {response.status} {response.body[:200]!r}")
    await records.aclose()
    return cpu_ms


def bench_env(recorded: dict[str, Any]) -> dict[str, str]:
    from tests.edge_support import edge_env

    app_id = next(item["key"] for item in recorded["exchanges"] if "/apps/" in item["key"]).split("/")[3]
    turn = next((item["key"] for item in recorded["exchanges"] if "/turn/keys/" in item["key"]), None)
    env = edge_env([{"id": "bench", "control_url": "https://relay.bench.test"}], SFU_APP_ID=app_id)
    if turn is not None:
        env["TURN_KEY_ID"] = turn.split("/")[4]
    return env


def run(iterations: int, imports: int) -> dict[str, Any]:
    import pytest

    from edge import tokens
    from tests.edge_support import TOKEN_KEY
    from tests.pyodide import host

    recorded_path = Path(host.__file__).resolve().parent / "recorded_call_setup.json"
    recorded = json.loads(recorded_path.read_text())
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        workdir = Path(tmp)
        try:
            host.build_bundle(workdir / "bundle")
            config = host.host_config(
                workdir / "bundle",
                bench_env(recorded),
                recorded=str(recorded_path),
                iterations=iterations,
                imports=imports,
                token=tokens.issue(TOKEN_KEY.encode(), "bench", ttl_s=3600)[0],
            )
            pyodide = host.run_bench(config, workdir)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            raise SystemExit(f"bench edge: {exc}") from None
    if set(pyodide["statuses"]) != {"201"}:
        raise SystemExit(f"bench edge: call setups in Pyodide did not all succeed: {pyodide['statuses']}")
    cpython = asyncio.run(cpython_setups(recorded, iterations))
    warm = pyodide["setup_cpu_ms"][min(10, iterations // 10) :]  # the first setups warm the JIT-less caches
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "iterations": iterations,
        "pyodide_version": pyodide["pyodide"],
        "pyodide_setup_cpu_ms": summary(warm),
        "pyodide_first_setups_cpu_ms": pyodide["setup_cpu_ms"][: min(10, iterations // 10)],
        "pyodide_setup_wall_ms": summary(pyodide["setup_wall_ms"]),
        "pyodide_healthz_cpu_ms": summary(pyodide["healthz_cpu_ms"][10:]),
        "cpython_setup_cpu_ms": summary(cpython[min(10, iterations // 10) :]),
        "pyodide_load_ms": pyodide["load_ms"],
        "first_import_ms": pyodide["first_import_ms"],
        "reimport_ms": summary(pyodide["reimport_ms"]),
        "goal_cpu_ms": GOAL_CPU_MS,
    }
    result["ratio_pyodide_to_cpython"] = (
        result["pyodide_setup_cpu_ms"]["median"] / result["cpython_setup_cpu_ms"]["median"]
    )
    return result


def print_table(result: dict[str, Any]) -> None:
    out = sys.stderr
    machine = result["machine"]
    print(
        f"machine: {machine['cpus']} cpus, {machine['platform']}, host Python {machine['python']}", file=out
    )
    print(f"Pyodide {result['pyodide_version']}, {result['iterations']} call setups", file=out)
    print(f"{'measure':44} {'median':>9} {'p99':>9}", file=out)
    rows = [
        ("CPU per call setup, Worker in Pyodide (ms)", result["pyodide_setup_cpu_ms"]),
        ("wall per call setup, Worker in Pyodide (ms)", result["pyodide_setup_wall_ms"]),
        ("CPU per GET /healthz, Worker in Pyodide (ms)", result["pyodide_healthz_cpu_ms"]),
        ("CPU per call setup, same code on CPython (ms)", result["cpython_setup_cpu_ms"]),
        ("re-import of the edge modules (ms)", result["reimport_ms"]),
    ]
    for name, values in rows:
        print(f"{name:44} {values['median']:9.2f} {values['p99']:9.2f}", file=out)
    print(f"first import of the main module, SDK included: {result['first_import_ms']:.0f} ms", file=out)
    print(f"Pyodide load (runtime, not our code): {result['pyodide_load_ms']:.0f} ms", file=out)
    print(f"Pyodide / CPython CPU ratio: {result['ratio_pyodide_to_cpython']:.1f}x", file=out)
    verdict = "meets" if result["pyodide_setup_cpu_ms"]["p99"] <= GOAL_CPU_MS else "misses"
    print(f"goal: at most {GOAL_CPU_MS:g} ms CPU per setup: p99 {verdict} it", file=out)


def edge_command(
    iterations: Annotated[int, typer.Option(min=20, max=5000, help="Call setups measured.")] = 300,
    imports: Annotated[int, typer.Option(min=5, max=500, help="Re-imports of the edge modules.")] = 30,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """CPU per call setup of the edge Worker in Pyodide (recorded upstream), import time, CPython baseline."""
    result = run(iterations, imports)
    print_table(result)
    if json_output:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    typer.run(edge_command)
