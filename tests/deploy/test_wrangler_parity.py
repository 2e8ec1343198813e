"""The Worker Pulumi uploads is the Worker the real `wrangler deploy` uploads, field by field.

The real wrangler (node_modules) deploys this repository's wrangler.toml and edge/ to a local stand-in
for the Cloudflare API (tests/deploy/cloudflare_standin.py), which records the multipart upload; the
Pulumi program builds its `WorkersScript` from the same files under Pulumi's mocks. Both are put in the
API's own form (snake_case metadata, one part per module) and compared: a first deploy, and an update
of a Worker whose migration tag is already current (wrangler then sends no migration; neither may
Pulumi, or Cloudflare refuses with code 10079).

The only differences allowed are the ones the two ownership modes mean by design, each listed with
why in EXPECTED_DIFFERENCES.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from tests.infra.harness import make_settings, region, run_stack, unwrap  # isort: skip
from splitrelay.infra.edge import PLAIN_ENV, SECRET_ENV
from splitrelay.infra.wrangler import load_worker_spec
from tests.deploy.cloudflare_standin import CloudflareStandIn, Upload
from tests.infra.pulumi_loop import event_loop_for_pulumi  # noqa: F401 (autouse)

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
WRANGLER = REPO / "node_modules" / ".bin" / "wrangler"
ACCOUNT = "0123456789abcdef0123456789abcdef"
T_SCRIPT = "cloudflare:index/workersScript:WorkersScript"

EXPECTED_DIFFERENCES = {
    **{
        name: "a secret: Pulumi binds it as secret_text; with wrangler, `wrangler secret put`"
        for name in SECRET_ENV
    },
    **{name: "a value Pulumi takes from the stack (wrangler.toml holds a placeholder)" for name in PLAIN_ENV},
    "RELAY_REGISTRY": "the KV namespace Pulumi creates (wrangler.toml holds a placeholder id)",
}


COMPARED = {"main_module", "compatibility_date", "compatibility_flags", "migrations", "assets", "bindings"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the repository's Worker (wrangler.toml and edge/): wrangler leaves state beside it."""
    if not WRANGLER.exists():
        if os.environ.get("CI"):
            pytest.fail("CI installs wrangler (npm ci in make setup)")
        pytest.skip("needs wrangler: npm ci")
    shutil.copy(REPO / "wrangler.toml", tmp_path / "wrangler.toml")
    shutil.copytree(REPO / "edge", tmp_path / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def wrangler_deploy(project: Path, deployed_tag: str | None) -> tuple[Upload, list[str]]:
    spec = load_worker_spec(project / "wrangler.toml")
    with CloudflareStandIn(spec.name, deployed_tag) as api:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(project),
            "CLOUDFLARE_API_BASE_URL": api.base_url,
            "CLOUDFLARE_API_TOKEN": "standin-token",
            "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
            "WRANGLER_SEND_METRICS": "false",
            "CI": "1",
        }
        result = subprocess.run(
            [str(WRANGLER), "deploy"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return api.upload(), [
            f"{r.method} {r.path.split('?', 1)[0].split(ACCOUNT, 1)[-1]}" for r in api.requests
        ]


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def api_form(value: Any) -> Any:
    """Pulumi's camelCase inputs as the API's snake_case JSON (what the provider sends)."""
    if isinstance(value, dict):
        return {snake(k): api_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [api_form(v) for v in value]
    return value


def pulumi_upload(project: Path, deployed_tag: str | None) -> Upload:
    spec = load_worker_spec(project / "wrangler.toml")
    settings = make_settings([region("us-east-1", "use1")])
    deployed = {spec.name: deployed_tag} if deployed_tag else None
    recorded, _ = run_stack(settings, spec, deployed)
    script = unwrap(recorded.one(T_SCRIPT).inputs)
    metadata = {
        "main_module": script["mainModule"],
        "bindings": api_form(script["bindings"]),
        "compatibility_date": script["compatibilityDate"],
        "compatibility_flags": script["compatibilityFlags"],
    }
    if script.get("migrations"):
        metadata["migrations"] = api_form(script["migrations"])
    if script.get("assets", {}).get("config"):
        metadata["assets_config"] = api_form(script["assets"]["config"])
    modules = {script["mainModule"]: (script["contentType"], script["content"].encode())}
    for name, file in script["files"].items():
        modules[name] = (file["contentType"], base64.b64decode(file["contentBase64"]))
    return Upload(metadata, modules)


def differing_bindings(ours: Upload, theirs: Upload) -> dict[str, tuple[Any, Any]]:
    mine = {b["name"]: b for b in ours.metadata["bindings"]}
    wrangler = {b["name"]: b for b in theirs.metadata["bindings"]}
    return {
        name: (mine.get(name), wrangler.get(name))
        for name in sorted(set(mine) | set(wrangler))
        if mine.get(name) != wrangler.get(name)
    }


MIGRATION_TAGS: Final = [m.tag for m in load_worker_spec(REPO / "wrangler.toml").migrations]


@pytest.mark.parametrize(
    "deployed_tag",
    [None, MIGRATION_TAGS[0], MIGRATION_TAGS[-1]],
    ids=["first-deploy", "update-with-a-new-step", "update-current"],
)
def test_pulumi_uploads_what_wrangler_uploads(project: Path, deployed_tag: str | None) -> None:
    assert len(MIGRATION_TAGS) >= 2  # so the middle case really has a step to send
    theirs, calls = wrangler_deploy(project, deployed_tag)
    ours = pulumi_upload(project, deployed_tag)
    current = deployed_tag == MIGRATION_TAGS[-1]
    # wrangler uploads a new version of a current Worker, and the whole script when a migration is due.
    uploaded = (
        "POST /workers/scripts/splitrelay-edge/versions"
        if current
        else "PUT /workers/scripts/splitrelay-edge"
    )
    assert uploaded in calls  # wrangler really uploaded, to the stand-in
    # Modules: the same names, content types and bytes.
    assert sorted(ours.modules) == sorted(theirs.modules)
    for name, (content_type, data) in theirs.modules.items():
        assert ours.modules[name] == (content_type, data), name
    # Top-level metadata: every field wrangler sends is compared below (a new one fails here first).
    assert set(theirs.metadata) <= COMPARED, set(theirs.metadata) - COMPARED
    for key in ("main_module", "compatibility_date", "compatibility_flags"):
        assert ours.metadata[key] == theirs.metadata[key], key
    # Migrations: the full history on a first deploy, the later steps after the applied tag with it as
    # old_tag, nothing when the Worker is current.
    assert ours.metadata.get("migrations") == theirs.metadata.get("migrations")
    if current:
        assert "migrations" not in theirs.metadata
    else:
        assert theirs.metadata["migrations"]["new_tag"] == MIGRATION_TAGS[-1]
        assert theirs.metadata["migrations"].get("old_tag") == deployed_tag
    # Static assets: the same config (wrangler sends the upload session's JWT with it).
    assert ours.metadata.get("assets_config", {}) == theirs.metadata["assets"]["config"]
    # Bindings: equal but for what the ownership modes mean to differ, and those by type at least.
    differing = differing_bindings(ours, theirs)
    assert set(differing) <= set(EXPECTED_DIFFERENCES), {
        k: v for k, v in differing.items() if k not in EXPECTED_DIFFERENCES
    }
    for name, (mine, wranglers) in differing.items():
        if mine is not None and wranglers is not None:
            assert mine["type"] == wranglers["type"], name
        elif wranglers is None:
            assert name in SECRET_ENV or name == "ALLOWED_ORIGINS", name  # set outside wrangler.toml
    assert "POST /workers/scripts/splitrelay-edge/subdomain" in calls  # workers.dev stays off
