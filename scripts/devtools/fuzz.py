"""`splitrelay fuzz`: the fuzz tier's long run (tests/fuzz), one target at a time, from a source checkout.

Each target is one pytest test of tests/fuzz run in a child process with ``SPLITRELAY_FUZZ_EXAMPLES`` set:
at 5,000 inputs and more the tier's seeded loop runs instead of hypothesis (tests/fuzz/engine.py) and
writes a JSON report per target, which this command sums up. The default ``pytest`` run is the bounded
run (300 inputs per target); this is the long one (docs/benchmarks.md, "Fuzz tier").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
TARGETS: Final[dict[str, str]] = {
    "wire": "test_fuzz_wire.py::test_wire_decoder_raises_only_wire_error_and_round_trips",
    "edge-token": "test_fuzz_edge.py::test_edge_tokens_never_5xx",
    "edge-body": "test_fuzz_edge.py::test_edge_json_bodies_never_5xx",
    "edge-path": "test_fuzz_edge.py::test_edge_paths_never_5xx",
    "edge-sdp": "test_fuzz_edge_sdp.py::test_edge_sdp_offers_never_5xx",
    "relay": "test_fuzz_relay.py::test_relay_control_api_never_5xx",
    "emulator": "test_fuzz_emulator.py::test_emulator_api_never_5xx",
    "native": "test_fuzz_native.py::test_native_parser_and_srtp_match_the_reference",
    "native-batch": "test_fuzz_native.py::test_native_batch_path_matches_the_reference",
}
"""Target name -> its test in tests/fuzz (the report file is named after the target)."""
LONG_RUN_FROM: Final = 5000  # tests/fuzz/engine.py: below this, hypothesis runs (no report)


def run_target(
    name: str, inputs: int, seed: int, report_dir: Path, time_limit_s: float | None
) -> dict[str, object]:
    """One target in a child pytest; its report (or a stand-in saying why there is none)."""
    env = dict(os.environ)
    env.update(
        SPLITRELAY_FUZZ_EXAMPLES=str(inputs),
        SPLITRELAY_FUZZ_SEED=str(seed),
        SPLITRELAY_FUZZ_REPORT=str(report_dir),
    )
    if time_limit_s is not None:
        env["SPLITRELAY_FUZZ_TIME_LIMIT_S"] = str(time_limit_s)
    report_file = report_dir / f"{name}.json"
    report_file.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--timeout=0",
        str(REPO / "tests" / "fuzz" / TARGETS[name]),
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, check=False)
    if report_file.is_file():
        doc: dict[str, object] = json.loads(report_file.read_text())
    else:
        doc = {
            "target": name,
            "inputs": 0,
            "seconds": round(time.perf_counter() - started, 1),
            "failures": [],
        }
    doc["exit_code"] = result.returncode
    return doc


def fuzz(
    target: str = "all",
    inputs: int = 1_000_000,
    seed: int = 1,
    report_dir: Path = Path("test-artifacts/fuzz"),
    time_limit_s: float = 0.0,
) -> None:
    """Run the fuzz tier's long run: TARGET (one of wire, edge-token, edge-body, edge-path, edge-sdp, relay,
    emulator, native, native-batch; or all) with INPUTS inputs each (from SEED: input i of a run is replayed
    by the same seed). A JSON report per target lands in REPORT_DIR; TIME_LIMIT_S > 0 stops a target early
    (and says so)."""
    if not (REPO / "tests" / "fuzz" / "engine.py").is_file():
        raise SystemExit(
            "splitrelay fuzz: needs a source checkout (tests/fuzz is not installed with the package)"
        )
    if inputs < LONG_RUN_FROM:
        raise SystemExit(
            f"splitrelay fuzz: --inputs must be at least {LONG_RUN_FROM} (fewer: run pytest tests/fuzz)"
        )
    names = list(TARGETS) if target == "all" else [target]
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        raise SystemExit(f"splitrelay fuzz: unknown target {unknown[0]!r} (known: {', '.join(TARGETS)}, all)")
    report_dir = report_dir if report_dir.is_absolute() else Path.cwd() / report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    reports = [run_target(name, inputs, seed, report_dir, time_limit_s or None) for name in names]
    print(f"\n{'target':<12} {'inputs':>9} {'seconds':>8} {'inputs/s':>9}  failures  known open bugs hit")
    failed = False
    for doc in reports:
        failures = doc.get("failures") or []
        assert isinstance(failures, list)
        failed = failed or bool(failures) or doc["exit_code"] != 0
        rate = doc.get("inputs_per_s", "-")
        print(
            f"{doc['target']!s:<12} {doc['inputs']!s:>9} {doc['seconds']!s:>8} {rate!s:>9}"
            f"  {len(failures):>8}  {doc.get('known') or '-'}"
            + ("  (stopped by the time limit)" if doc.get("stopped_by_time") else "")
        )
        for failure in failures:
            assert isinstance(failure, dict)
            print(f"    {failure['count']} x {failure['signature']} (first at input {failure['index']})")
    print(f"reports: {report_dir}")
    if failed:
        raise SystemExit(1)
