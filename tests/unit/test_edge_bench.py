"""The edge benchmark's accounting (scripts/bench/edge.py, tests/pyodide/worker_host.mjs bench mode).

The split of a setup's CPU into stand-ins, Durable Object and Worker is checked on numbers worked by
hand, and a short real run in Pyodide checks that the meter sees each part where it should: the
stand-ins and the object are timed, the parts fit inside the process's CPU, and the Worker sent the
requests a call setup needs (TURN credentials minted once, then shared). Timings are not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitrelay.bench.edge import bench_env, split_setups
from splitrelay.edge import tokens
from tests.edge_support import TOKEN_KEY
from tests.pyodide import host

RECORDED = Path(host.__file__).resolve().parent / "recorded_call_setup.json"


def test_split_takes_stand_ins_and_the_object_out_of_the_plain_setup() -> None:
    plain = {"cpu_ms": [5.0, 6.0]}
    metered = {
        "cpu_ms": [5.5, 6.5],
        "worker_steps_ms": [3.0, 3.5],
        "durable_object_ms": [0.8, 1.0],
        "standin_worker_ms": [0.5, 0.6],
        "standin_durable_object_ms": [0.1, 0.2],
    }
    parts = split_setups(plain, metered)
    assert parts["standins"] == pytest.approx([0.6, 0.8])
    assert parts["durable_object"] == pytest.approx([0.7, 0.8])
    assert parts["worker"] == pytest.approx([5.0 - 0.6 - 0.7, 6.0 - 0.8 - 0.8])
    assert parts["worker_python_steps"] == pytest.approx([2.5, 2.9])
    assert parts["worker_outside_python"] == pytest.approx([5.5 - 3.0 - 0.8, 6.5 - 3.5 - 1.0])
    assert parts["worker_and_durable_object"] == pytest.approx([4.4, 5.2])


def test_split_refuses_passes_of_different_lengths() -> None:
    metered = {key: [1.0] for key in ("cpu_ms", "worker_steps_ms", "durable_object_ms")}
    metered |= {"standin_worker_ms": [0.1], "standin_durable_object_ms": [0.1]}
    with pytest.raises(ValueError):
        split_setups({"cpu_ms": [1.0, 2.0]}, metered)


def test_meter_in_pyodide(tmp_path: Path) -> None:
    recorded = json.loads(RECORDED.read_text())
    host.build_bundle(tmp_path / "bundle")
    iterations, warmup = 12, 3
    config = host.host_config(
        tmp_path / "bundle",
        bench_env(recorded),
        recorded=str(RECORDED),
        iterations=iterations,
        warmup=warmup,
        imports=5,
        token=tokens.issue(TOKEN_KEY.encode(), "bench", ttl_s=3600)[0],
    )
    report = host.run_bench(config, tmp_path)
    setups = warmup + 2 * iterations
    assert report["statuses"] == {"201": setups}
    assert report["calls"] == setups  # one Durable Object per call
    sent = report["upstream_requests"]
    app = next(item["key"] for item in recorded["exchanges"] if item["key"].endswith("/sessions/new"))
    assert sent[f"POST {app}"] == setups
    assert sum(count for key, count in sent.items() if "/generate-ice-servers" in key) == 1
    assert sum(sent.values()) == 4 * setups + 1  # session, push, relay attach, pull; TURN once
    metered = report["metered"]
    assert sum(metered["standin_durable_object_ms"]) > 0  # a few microseconds a setup: summed
    for i in range(iterations):
        assert metered["standin_worker_ms"][i] > 0
        assert metered["durable_object_ms"][i] > metered["standin_durable_object_ms"][i]
        assert metered["worker_steps_ms"][i] > metered["standin_worker_ms"][i]
        inside = metered["worker_steps_ms"][i] + metered["durable_object_ms"][i]
        assert inside <= metered["cpu_ms"][i] + 0.01  # the parts fit in the process's CPU
