"""infra/wrangler.py reads the Worker from wrangler.toml exactly as wrangler uploads it.

The module list is checked against wrangler itself (`wrangler deploy --dry-run --outdir`, offline),
on a synthetic Worker and on the repo's own wrangler.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from splitrelay.infra.wrangler import WranglerConfigError, load_worker_spec
from tests.infra.fixtures import write_edge

REPO = Path(__file__).resolve().parents[2]
WRANGLER = REPO / "node_modules" / ".bin" / "wrangler"


def test_spec_from_wrangler_toml(tmp_path: Path) -> None:
    spec = load_worker_spec(write_edge(tmp_path, date="2025-12-01", vars={"TURN_TTL_S": "900"}))
    assert spec.name == "splitrelay-edge"
    assert spec.main_module.name == "entry.py" and spec.main_module.content_type == "text/x-python"
    assert [m.name for m in spec.modules] == ["edge/__init__.py", "edge/app.py", "edge/static/index.html"]
    assert {m.name: m.content_type for m in spec.modules}["edge/static/index.html"] == "text/plain"
    assert spec.compatibility_date == "2025-12-01" and spec.compatibility_flags == ("python_workers",)
    assert [(d.name, d.class_name) for d in spec.durable_objects] == [("CALLS", "CallRecordObject")]
    assert [(m.tag, m.new_sqlite_classes) for m in spec.migrations] == [("v1", ("CallRecordObject",))]
    assert [(k.binding, k.namespace_id) for k in spec.kv_namespaces] == [("RELAY_REGISTRY", None)]
    assert [(r.name, r.limit, r.period) for r in spec.ratelimits] == [("RATE_LIMIT", 100, 60)]
    assert spec.vars == {"MAX_CALL_S": "3600", "TURN_TTL_S": "900"}
    assert (
        spec.assets_binding == "ASSETS" and spec.assets_directory == (tmp_path / "edge" / "static").resolve()
    )


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: t + '\n[[d1_databases]]\nbinding = "DB"\n', "d1_databases"),
        (lambda t: t.replace('["python_workers"]', '["nodejs_compat"]'), "compatibility_flags"),
        (
            lambda t: t.replace(
                'new_sqlite_classes = ["CallRecordObject"]', 'new_sqlite_classes = ["Other"]'
            ),
            "durable_objects.bindings[0].class_name",
        ),
        (lambda t: t.replace("period = 60", "period = 30"), "ratelimits[0].simple.period"),
        (lambda t: t.replace('main = "edge/entry.py"', 'main = "edge/missing.py"'), "main"),
        (
            lambda t: t.replace('compatibility_date = "2025-11-01"', 'compatibility_date = "soon"'),
            "compatibility_date",
        ),
        (lambda t: t.replace("[vars]", "[vars]\nLIMITS = 3"), "vars.LIMITS"),
        (
            lambda t: t + '\n[[migrations]]\ntag = "v2"\ntransferred_classes = []\n',
            "migrations[1].transferred_classes",
        ),
        (lambda t: t.replace("[assets]", "[assets]\nexperimental = true"), "assets.experimental"),
        (lambda t: "name = [", "(file)"),
    ],
)
def test_unsupported_or_wrong_keys_are_named(tmp_path: Path, edit: object, key: str) -> None:
    path = write_edge(tmp_path)
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(WranglerConfigError) as info:
        load_worker_spec(path)
    assert info.value.key == key


def _wrangler_modules(config: Path, out: Path) -> set[str]:
    if not WRANGLER.exists() or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("wrangler is not installed (make setup runs npm install)")
        pytest.skip("wrangler not installed (npm install)")
    env = {**os.environ, "WRANGLER_SEND_METRICS": "false", "CI": "true"}
    result = subprocess.run(
        [str(WRANGLER), "deploy", "--dry-run", "--outdir", str(out), "--config", str(config)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "README.md"}


def test_module_list_matches_wrangler_dry_run(tmp_path: Path) -> None:
    config = write_edge(tmp_path / "worker", kv_id="0123456789abcdef0123456789abcdef")
    (tmp_path / "worker" / "edge" / "notes.txt").write_text("text module\n")
    (tmp_path / "worker" / "edge" / "README.md").write_text("not a module\n")
    spec = load_worker_spec(config)
    assert set(spec.all_module_names) == _wrangler_modules(config, tmp_path / "out")
    assert "edge/notes.txt" in spec.all_module_names


def test_repo_wrangler_toml_matches_wrangler_dry_run(tmp_path: Path) -> None:
    config = REPO / "wrangler.toml"
    if not config.exists():
        if os.environ.get("CI"):
            pytest.fail("the repo has no wrangler.toml: infra/ deploys the Worker it describes")
        pytest.skip("wrangler.toml not written yet (the edge lands it)")
    spec = load_worker_spec(config)
    assert set(spec.all_module_names) == _wrangler_modules(config, tmp_path / "out")
    assert not any(n.startswith(("relay/", "infra/", "tests/", "scripts/")) for n in spec.all_module_names)
