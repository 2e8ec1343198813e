"""The namespace map and the layering rules (scripts/devtools/layout.py), and the lock file's coverage."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from splitrelay.devtools import layout

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = """
[tool.setuptools.package-dir]
"splitrelay" = "scripts"
"splitrelay.contract" = "edge/contract"
"splitrelay.edge" = "edge"
"splitrelay.relay" = "relay"
"splitrelay.inference" = "relay/inference"
"""


def _tree(root: Path, files: dict[str, str]) -> Path:
    (root / "pyproject.toml").write_text(PYPROJECT)
    for folder in ("scripts", "edge", "edge/contract", "relay", "relay/media", "relay/inference"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_the_repository_keeps_every_rule() -> None:
    assert layout.check_imports(REPO) == []


def test_nested_mappings_have_one_name_each() -> None:
    modules = dict(layout.module_files(REPO))
    assert "splitrelay.contract.signing" in modules and "splitrelay.edge.contract.signing" not in modules
    assert "splitrelay.inference.wire" in modules and "splitrelay.relay.inference.wire" not in modules
    assert modules["splitrelay.relay.media.rtp"] == REPO / "relay" / "media" / "rtp.py"


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("edge/app.py", "from splitrelay.relay import call\n", "the edge never imports the relay side"),
        ("edge/app.py", "import httpx\n", "HTTP client or server libraries"),
        ("relay/call.py", "from splitrelay.edge.app import x\n", "the relay never imports the edge"),
        ("edge/contract/models.py", "import pydantic\n", "the contract is stdlib only"),
        ("relay/media/rtp.py", "from splitrelay.relay import manager\n", "media is below the relay"),
        ("relay/inference/sdk.py", "import numpy\n", "the inference SDK installs light"),
        ("relay/inference/sdk.py", "def f():\n    from splitrelay.relay import call\n", "imports the relay"),
        ("relay/call.py", "from relay import wire\n", "every import name is under splitrelay."),
        ("relay/call.py", "import splitrelay.edge.contract.signing\n", "one name only"),
    ],
)
def test_a_forbidden_import_fails_the_check(tmp_path: Path, name: str, text: str, why: str) -> None:
    root = _tree(tmp_path, {name: text})
    (violation,) = layout.check_imports(root)
    assert why in violation.why
    assert str(violation).startswith(f"{name}:{text.count(chr(10))}: ")


def test_optional_imports_inside_functions_are_allowed_in_the_sdk(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"relay/inference/speech.py": "def decode():\n    import av\n    return av\n"})
    assert layout.check_imports(root) == []


def test_the_link_tree_mirrors_the_namespace(tmp_path: Path) -> None:
    tree = layout.build_link_tree(REPO, tmp_path / "tree")
    assert (tree / "splitrelay" / "contract" / "signing.py").resolve() == REPO / "edge/contract/signing.py"
    assert not (tree / "splitrelay" / "edge" / "contract").exists()
    assert (tree / "splitrelay" / "__init__.py").resolve() == REPO / "scripts" / "__init__.py"


def test_the_lock_pins_every_declared_requirement() -> None:
    with open(REPO / "pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += [Requirement(r) for r in extra]
    pinned: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[name.lower().replace("_", "-")] = version
    for requirement in declared:
        key = requirement.name.lower().replace("_", "-")
        if key == "splitrelay":
            continue
        assert key in pinned, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pinned[key], prereleases=True), (requirement, pinned[key])
