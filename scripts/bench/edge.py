"""Benchmark of the edge Worker: CPU per call setup in Pyodide, split into whose CPU it is, and import time.

The Worker runs as uploaded (the ``wrangler deploy --dry-run`` bundle) under Pyodide in Node with the
real ``workers-runtime-sdk`` (tests/pyodide/worker_host.mjs, bench mode). Every SFU, TURN and relay
response is replayed from the exchange recorded against the emulator and a real relay
(tests/pyodide/recorded_call_setup.json) and resolves at once. The window of one setup is the Worker's
``fetch`` and all its ``waitUntil`` work (relay attach, pull); process CPU (``getrusage``) over it
counts everything in the host process, so the host splits it (alternate setups run with a meter on):

- host stand-ins: the JS standing in for workerd's bindings and for the upstream services (recorded
  fetch, in-memory Durable Object namespace and storage, KV, rate limits, waitUntil), timed per call;
- the Durable Object's Python: event-loop steps of the object's own tasks, and its constructor (in
  production the object runs in its own isolate; its CPU is not the Worker's);
- the Worker: the rest. Our Python, the SDK, Pyodide's FFI and event loop, and Node's Fetch API
  objects (native code in workerd), plus V8's background threads (GC): a conservative figure.

The goal (at most 5 ms of CPU per call setup) is judged on the Worker row. The baseline in the same
run is the same setup on CPython (edge/app.py over the same recording, stand-ins included). Import
time: the first import of the main module (SDK included) and re-imports of the edge modules from
source (a cold-start proxy).

Run: ``splitrelay bench edge [--iterations 300] [--warmup 300] [--profile] [--json]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from splitrelay.bench.stats import percentile
from splitrelay.bench.support import machine_info, machine_line

GOAL_CPU_MS = 5.0
EVENT_LOOP = "Pyodide's (in Node) for the Worker; asyncio for the CPython baseline"


def _percentile(values: list[float], q: float) -> float:
    """scripts/bench/stats.py's percentile of a non-empty list (every list here has one value per setup)."""
    value = percentile(values, q)
    if value is None:
        raise ValueError("no values to summarize")
    return value


def summary(values: list[float]) -> dict[str, float]:
    return {"median": _percentile(values, 50), "p99": _percentile(values, 99), "n": float(len(values))}


async def cpython_setups(recorded: dict[str, Any], warmup: int, iterations: int) -> list[float]:
    """The same call setup on CPython: process CPU ms per setup, background relay attach included."""
    from splitrelay.devtools.local_edge import LocalRecords
    from splitrelay.edge import tokens
    from splitrelay.edge.app import build_app
    from splitrelay.edge.calls import Inbound, Outbound
    from splitrelay.edge.ratelimit import TokenBucket
    from splitrelay.edge.web import EdgeRequest
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
    for _ in range(warmup + iterations):
        started = time.process_time()
        response = await app.handle(EdgeRequest("POST", "/v1/calls", headers=headers, body=body))
        await asyncio.gather(*pending)
        pending.clear()
        cpu_ms.append((time.process_time() - started) * 1000)
        if response.status != 201:
            raise RuntimeError(f"CPython setup failed: {response.status} {response.body[:200]!r}")
    await records.aclose()
    return cpu_ms[warmup:]


def bench_env(recorded: dict[str, Any]) -> dict[str, str]:
    from tests.edge_support import edge_env

    app_id = next(item["key"] for item in recorded["exchanges"] if "/apps/" in item["key"]).split("/")[3]
    turn = next((item["key"] for item in recorded["exchanges"] if "/turn/keys/" in item["key"]), None)
    env = edge_env([{"id": "bench", "control_url": "https://relay.bench.test"}], SFU_APP_ID=app_id)
    if turn is not None:
        env["TURN_KEY_ID"] = turn.split("/")[4]
    return env


def split_setups(plain: dict[str, Any], metered: dict[str, Any]) -> dict[str, list[float]]:
    """Per setup: whose CPU it was. Setup i of the plain pass is paired with setup i of the metered pass
    (they ran back to back): the stand-ins' and the Durable Object's shares come from the meter, and
    are taken out of the plain setup's CPU, so the meter's own cost does not count against the Worker."""
    standins = [
        worker + durable
        for worker, durable in zip(
            metered["standin_worker_ms"], metered["standin_durable_object_ms"], strict=True
        )
    ]
    durable_object = [
        steps - standin
        for steps, standin in zip(
            metered["durable_object_ms"], metered["standin_durable_object_ms"], strict=True
        )
    ]
    worker = [
        total - standin - durable
        for total, standin, durable in zip(plain["cpu_ms"], standins, durable_object, strict=True)
    ]
    python_steps = [
        steps - standin
        for steps, standin in zip(metered["worker_steps_ms"], metered["standin_worker_ms"], strict=True)
    ]
    outside = [
        total - steps - durable
        for total, steps, durable in zip(
            metered["cpu_ms"], metered["worker_steps_ms"], metered["durable_object_ms"], strict=True
        )
    ]
    ours = [total - standin for total, standin in zip(plain["cpu_ms"], standins, strict=True)]
    return {
        "standins": standins,
        "durable_object": durable_object,
        "worker": worker,
        "worker_python_steps": python_steps,
        "worker_outside_python": outside,
        "worker_and_durable_object": ours,
    }


def _source_checkout() -> None:
    """The bench drives the Pyodide host of tests/pyodide: put this checkout's root on the import path
    (it is not installed with the package), or stop with a clear message outside a checkout."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "tests" / "pyodide" / "host.py").is_file():
        raise SystemExit("splitrelay bench edge: needs a source checkout (tests/pyodide is not installed)")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))


def run(iterations: int, warmup: int, imports: int, profile: bool = False) -> dict[str, Any]:
    import pytest

    _source_checkout()
    from splitrelay.edge import tokens
    from tests.edge_support import TOKEN_KEY
    from tests.pyodide import host

    recorded_path = Path(host.__file__).resolve().parent / "recorded_call_setup.json"
    recorded = json.loads(recorded_path.read_text())
    profile_text = None
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        workdir = Path(tmp)
        extra: dict[str, Any] = {"profile": str(workdir / "profile.txt")} if profile else {}
        try:
            host.build_bundle(workdir / "bundle")
            config = host.host_config(
                workdir / "bundle",
                bench_env(recorded),
                recorded=str(recorded_path),
                limits={"ip": 10**9, "token": 10**9},  # the bench's one token must never be limited
                iterations=iterations,
                warmup=warmup,
                imports=imports,
                token=tokens.issue(TOKEN_KEY.encode(), "bench", ttl_s=3600)[0],
                **extra,
            )
            pyodide = host.run_bench(config, workdir)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            raise SystemExit(f"bench edge: {exc}") from None
        if profile:
            profile_text = (workdir / "profile.txt").read_text()
    if set(pyodide["statuses"]) != {"201"}:
        raise SystemExit(f"bench edge: call setups in Pyodide did not all succeed: {pyodide['statuses']}")
    cpython = asyncio.run(cpython_setups(recorded, warmup, iterations))
    plain, metered = pyodide["plain"], pyodide["metered"]
    parts = split_setups(plain, metered)
    result: dict[str, Any] = {
        "machine": {
            **machine_info(packages=(), event_loop=EVENT_LOOP),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "loadavg_1m": os.getloadavg()[0],
        },
        "iterations": iterations,
        "warmup": warmup,
        "pyodide_version": pyodide["pyodide"],
        "process_cpu_ms": summary(plain["cpu_ms"]),
        "standins_cpu_ms": summary(parts["standins"]),
        "durable_object_cpu_ms": summary(parts["durable_object"]),
        "worker_cpu_ms": summary(parts["worker"]),
        "worker_python_steps_cpu_ms": summary(parts["worker_python_steps"]),
        "worker_outside_python_cpu_ms": summary(parts["worker_outside_python"]),
        "worker_and_durable_object_cpu_ms": summary(parts["worker_and_durable_object"]),
        "wall_ms": summary(plain["wall_ms"]),
        "metered_process_cpu_ms": summary(metered["cpu_ms"]),
        "background_threads_cpu_ms_mean": (plain["process_cpu_ms_total"] - plain["main_thread_cpu_ms_total"])
        / iterations,
        "warmup_cpu_ms": pyodide["warmup_cpu_ms"][:10],
        "healthz_cpu_ms": summary(pyodide["healthz_cpu_ms"][10:]),
        "cpython_process_cpu_ms": summary(cpython),
        "pyodide_load_ms": pyodide["load_ms"],
        "first_import_ms": pyodide["first_import_ms"],
        "reimport_ms": summary(pyodide["reimport_ms"]),
        "goal_cpu_ms": GOAL_CPU_MS,
        "profiled": profile,
    }
    result["ratio_pyodide_to_cpython"] = (
        result["process_cpu_ms"]["median"] / result["cpython_process_cpu_ms"]["median"]
    )
    result["worker_within_goal_share"] = sum(ms <= GOAL_CPU_MS for ms in parts["worker"]) / iterations
    result["worker_p90_ms"] = _percentile(parts["worker"], 90)
    result["meter_overhead_ms"] = (
        result["metered_process_cpu_ms"]["median"] - result["process_cpu_ms"]["median"]
    )
    if profile_text is not None:
        result["profile"] = profile_text
    return result


ROWS = (
    ("CPU per call setup, whole host process", "process_cpu_ms"),
    ("  host stand-ins (recorded upstream, DO/KV/limits)", "standins_cpu_ms"),
    ("  Durable Object's Python (its own isolate)", "durable_object_cpu_ms"),
    ("  Worker (the rest: the goal's row)", "worker_cpu_ms"),
    ("    of which Python event-loop steps", "worker_python_steps_cpu_ms"),
    ("    of which outside Python (JS, Fetch API, GC)", "worker_outside_python_cpu_ms"),
    ("Worker + Durable Object (all our code)", "worker_and_durable_object_cpu_ms"),
    ("wall per call setup (upstream answers at once)", "wall_ms"),
    ("CPU per GET /healthz, whole host process", "healthz_cpu_ms"),
    ("CPU per call setup, same code on CPython", "cpython_process_cpu_ms"),
    ("re-import of the edge modules", "reimport_ms"),
)


def verdict(result: dict[str, Any]) -> str:
    if result["profiled"]:
        return "not judged: cProfile was on, and its cost is in every figure"
    worker = result["worker_cpu_ms"]
    median_ok = worker["median"] <= GOAL_CPU_MS
    p99_ok = worker["p99"] <= GOAL_CPU_MS
    if median_ok and p99_ok:
        return f"met: the Worker's median and p99 are both at most {GOAL_CPU_MS:g} ms"
    if median_ok:
        return f"met at the median, not at p99 ({worker['p99']:.2f} ms)"
    return f"not met: the Worker's median is {worker['median']:.2f} ms"


def print_table(result: dict[str, Any]) -> None:
    out = sys.stderr
    machine = result["machine"]
    print(f"machine: {machine_line(machine)}, load average {machine['loadavg_1m']:.2f}", file=out)
    print(
        f"Pyodide {result['pyodide_version']}, {result['iterations']} call setups "
        f"after {result['warmup']} warm-up setups",
        file=out,
    )
    print(f"{'measure (ms)':52} {'median':>8} {'p99':>8}", file=out)
    for name, key in ROWS:
        values = result[key]
        print(f"{name:52} {values['median']:8.2f} {values['p99']:8.2f}", file=out)
    background = result["background_threads_cpu_ms_mean"]
    print(
        f"V8 background threads (in the Worker row, rough): {background:.2f} ms a setup on average; "
        f"the meter's own cost: {result['meter_overhead_ms']:.2f} ms (median, excluded)",
        file=out,
    )
    warmup = ", ".join(f"{value:.1f}" for value in result["warmup_cpu_ms"])
    print(f"first warm-up setups, whole process: {warmup}", file=out)
    print(f"first import of the main module, SDK included: {result['first_import_ms']:.0f} ms", file=out)
    print(f"Pyodide load (runtime, not our code): {result['pyodide_load_ms']:.0f} ms", file=out)
    print(f"Pyodide / CPython CPU ratio (whole process): {result['ratio_pyodide_to_cpython']:.1f}x", file=out)
    print(
        f"Worker p90: {result['worker_p90_ms']:.2f} ms; setups with the Worker at most {GOAL_CPU_MS:g} ms: "
        f"{result['worker_within_goal_share']:.0%}",
        file=out,
    )
    print(f"goal, at most {GOAL_CPU_MS:g} ms of the Worker's CPU per setup: {verdict(result)}", file=out)


def edge_command(
    iterations: Annotated[int, typer.Option(min=20, max=5000, help="Call setups measured.")] = 300,
    warmup: Annotated[
        int, typer.Option(min=0, max=5000, help="Call setups before measuring (V8 tiers up meanwhile).")
    ] = 300,
    imports: Annotated[int, typer.Option(min=5, max=500, help="Re-imports of the edge modules.")] = 30,
    profile: Annotated[
        bool,
        typer.Option("--profile", help="Print cProfile's top functions (the timings then include its cost)."),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """CPU per call setup of the edge Worker in Pyodide (recorded upstream), by owner; CPython baseline."""
    result = run(iterations, warmup, imports, profile)
    if profile:
        print(result.pop("profile"), file=sys.stderr)
    print_table(result)
    if json_output:
        print(json.dumps(result, indent=1))
