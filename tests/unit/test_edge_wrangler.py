"""``wrangler deploy --dry-run`` on the repo's wrangler.toml: it validates offline, and the upload holds
exactly the edge's modules (nothing from relay/, infra/, scripts/ or tests/) plus the bindings we expect."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.pyodide import host

EDGE = host.REPO / "edge"


def test_dry_run_bundle_is_exactly_the_edge(tmp_path: Path) -> None:
    version = subprocess.run(
        [str(host.wrangler()), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.strip().endswith("4.86.0"), version.stdout
    output = host.build_bundle(tmp_path)
    uploaded = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    python = sorted(name for name in uploaded if name.endswith(".py"))
    # The edge's modules and the contract's (edge/contract/), which the Worker mounts as splitrelay.contract.
    assert python == sorted(p.relative_to(EDGE).as_posix() for p in EDGE.rglob("*.py")), python
    assert "contract/signing.py" in python
    # wrangler's default Text rule (**/*.html) also uploads the page as a module; it cannot be removed
    # without wrangler erroring on the file (docs/edge.md). Everything else is the edge's Python.
    others = [name for name in uploaded if not name.endswith(".py") and name != "README.md"]
    assert others == ["static/index.html"], others
    assert (tmp_path / "entry.py").read_bytes() == (EDGE / "entry.py").read_bytes()
    for forbidden in ("relay", "infra", "scripts", "tests", "sfu_emulator", "node_modules"):
        assert not any(name.startswith(forbidden + "/") for name in uploaded)
    for binding in (
        "env.CALLS (CallRecordObject)",
        "Durable Object",
        "env.RELAY_REGISTRY",
        "KV Namespace",
        "env.IP_RATE_LIMIT (120 requests/60s)",
        "env.TOKEN_RATE_LIMIT",
        "env.ASSETS",
        "env.RELAYS",
    ):
        assert binding in output, binding  # fmt: skip
    for secret in (
        "SFU_APP_SECRET",
        "RELAY_SIGNING_KEY",
        "TOKEN_SIGNING_KEY",
        "TURN_KEY_API_TOKEN",
        "API_KEY",
    ):
        assert f"env.{secret} " not in output  # secrets are `wrangler secret put`, never vars


def test_no_edge_module_shadows_the_standard_library() -> None:
    # wrangler uploads edge/ flat, so each module is also a top-level name in the Worker; the contract's
    # modules keep clear of the standard library's names too (``signing``, not ``secrets``).
    import sys

    modules = [*EDGE.glob("*.py"), *EDGE.glob("contract/*.py")]
    clashes = sorted(p.stem for p in modules if p.stem in sys.stdlib_module_names)
    assert clashes == [], clashes


def test_wrangler_toml_documents_every_secret() -> None:
    text = (host.REPO / "wrangler.toml").read_text()
    from splitrelay.edge.config import SECRET_NAMES

    for name in SECRET_NAMES:
        assert re.search(rf"wrangler secret put {name}\b", text), name
