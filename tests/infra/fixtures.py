"""A small Python Worker laid out like the repo's edge (no Pulumi needed to build it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

WRANGLER_TOML = """\
name = "splitrelay-edge"
main = "edge/entry.py"
base_dir = "."
compatibility_date = "{date}"
compatibility_flags = ["python_workers"]

[[durable_objects.bindings]]
name = "CALLS"
class_name = "CallRecordObject"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["CallRecordObject"]

[[kv_namespaces]]
binding = "RELAY_REGISTRY"
{kv_id}

[[ratelimits]]
name = "RATE_LIMIT"
namespace_id = "1001"
simple = {{ limit = 100, period = 60 }}

[assets]
directory = "edge/static"
binding = "ASSETS"

[vars]
{vars}
"""


def write_edge(
    root: Path, *, date: str = "2025-11-01", kv_id: str | None = None, vars: Mapping[str, str] | None = None
) -> Path:
    """A small Python Worker laid out like the repo's: edge/ package, static assets, wrangler.toml."""
    (root / "edge" / "static").mkdir(parents=True, exist_ok=True)
    (root / "edge" / "__init__.py").write_text('"""edge"""\n')
    (root / "edge" / "entry.py").write_text("from splitrelay.edge.app import handle\n")
    (root / "edge" / "app.py").write_text("def handle():\n    return 1\n")
    (root / "edge" / "static" / "index.html").write_text("<!doctype html><title>t</title>\n")
    (root / "edge" / "__pycache__").mkdir(exist_ok=True)
    (root / "edge" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    variables = {"MAX_CALL_S": "3600", **(vars or {})}
    path = root / "wrangler.toml"
    path.write_text(
        WRANGLER_TOML.format(
            date=date,
            kv_id=f'id = "{kv_id}"' if kv_id else "",
            vars="\n".join(f'{k} = "{v}"' for k, v in variables.items()),
        )
    )
    return path
