"""The `splitrelay` namespace over the repository's folders, and the rules between its layers.

pyproject.toml's ``[tool.setuptools.package-dir]`` is the one map from import names to folders (scripts/
is the root package; edge/, edge/contract/, relay/, relay/inference/, sfu_emulator/ and infra/ are mapped
in). Everything here derives from it:

- :func:`module_files`: every module of the namespace and its file, nested mappings kept apart (edge/
  does not also own ``splitrelay.edge.contract``).
- :func:`build_link_tree`: the namespace as a tree of symlinks. mypy cannot follow setuptools' editable
  import hook, so ``make lint`` type-checks this tree (``mypy -p splitrelay -p tests``).
- :func:`check_imports`: the layering contracts (:data:`RULES`), checked on every import statement with
  ``ast``. A hand-written check because import-linter's graph builder walks a package's own folder and so
  cannot see a namespace whose sub-packages live in other folders; this is about 150 lines and exact.

``make lint`` runs ``main(["check-imports"])`` and ``main(["mypy", ...])``.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT_PACKAGE: Final = "splitrelay"
# Top-level names the folders had before the namespace: nothing may import them any more.
OLD_TOP_LEVEL: Final = frozenset({"edge", "relay", "scripts", "sfu_emulator", "infra"})
SKIP_DIRS: Final = frozenset({"__pycache__", "node_modules", "static", "assets"})


@dataclass(frozen=True)
class Rule:
    """Modules under ``layer`` may not import anything that starts with one of ``forbidden``.

    ``only`` (when given) is an allow-list instead: every import must be the standard library or start
    with one of its prefixes. ``top_level_only`` applies the rule to module-level imports alone (an
    import inside a function is the accepted way to make a dependency optional).
    """

    layer: str
    why: str
    forbidden: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    top_level_only: bool = False


RULES: Final[tuple[Rule, ...]] = (
    Rule(
        "splitrelay.contract",
        "the contract is stdlib only: the Worker (Pyodide) and the relay both import it",
        only=("splitrelay.contract",),
    ),
    Rule(
        "splitrelay.edge",
        "the edge never imports the relay side, nor HTTP client or server libraries",
        forbidden=(
            "splitrelay.relay",
            "splitrelay.inference",
            "splitrelay.emulator",
            "splitrelay.cli",
            "splitrelay.devtools",
            "splitrelay.bench",
            "httpx",
            "fastapi",
            "uvicorn",
            "starlette",
            "pydantic",
        ),
    ),
    Rule(
        "splitrelay.relay.media",
        "media is below the relay: the emulator shares it without the relay's control plane (the SDK's "
        "light UDP helpers, stdlib and cffi only, are the one thing it shares with the inference side)",
        only=(
            "splitrelay.relay.media",
            "splitrelay.inference.udp_recv",
            "aiortc",
            "aioice",
            "pylibsrtp",
            "av",
            "numpy",
        ),
    ),
    Rule(
        "splitrelay.relay",
        "the relay never imports the edge (shared models live in splitrelay.contract)",
        forbidden=("splitrelay.edge",),
    ),
    Rule(
        "splitrelay.inference",
        "the inference SDK installs light: stdlib, cffi, uvloop and the contract at import time",
        only=("splitrelay.inference", "splitrelay.contract", "cffi", "uvloop"),
        top_level_only=True,
    ),
    Rule(
        "splitrelay.integrations",
        "framework integrations build on the SDK's public API, never on the relay, the edge or the tooling",
        forbidden=(
            "splitrelay.relay",
            "splitrelay.edge",
            "splitrelay.emulator",
            "splitrelay.cli",
            "splitrelay.devtools",
            "splitrelay.bench",
        ),
    ),
    Rule(
        "splitrelay.inference",
        "the SDK never imports the relay, the edge or the tooling",
        forbidden=(
            "splitrelay.relay",
            "splitrelay.edge",
            "splitrelay.emulator",
            "splitrelay.cli",
            "splitrelay.devtools",
            "splitrelay.bench",
        ),
    ),
)


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    module: str
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.imported} ({self.why})"


def package_dirs(repo: Path) -> dict[str, Path]:
    """Import name -> folder, from pyproject.toml (the wheel is built from the same table)."""
    with open(repo / "pyproject.toml", "rb") as file:
        table = tomllib.load(file)["tool"]["setuptools"]["package-dir"]
    return {name: repo / folder for name, folder in table.items()}


def module_files(repo: Path) -> Iterator[tuple[str, Path]]:
    """Every module of the namespace (package ``__init__`` as the package name) and its file."""
    mapping = package_dirs(repo)
    claimed = {folder.resolve() for folder in mapping.values()}
    for package, folder in sorted(mapping.items()):
        yield from _walk(package, folder, claimed)


def _walk(package: str, folder: Path, claimed: set[Path]) -> Iterator[tuple[str, Path]]:
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            if entry.name in SKIP_DIRS or entry.resolve() in claimed or not (entry / "__init__.py").is_file():
                continue
            yield from _walk(f"{package}.{entry.name}", entry, claimed)
        elif entry.suffix == ".py":
            yield (package if entry.stem == "__init__" else f"{package}.{entry.stem}"), entry


def build_link_tree(repo: Path, dest: Path) -> Path:
    """``dest/splitrelay/...`` (and ``dest/tests``) as symlinks to the real files; rebuilt from scratch."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for module, path in module_files(repo):
        parts = module.split(".")
        target = dest.joinpath(*parts, "__init__.py") if path.stem == "__init__" else dest.joinpath(*parts)
        if path.stem != "__init__":
            target = target.with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    (dest / "tests").symlink_to((repo / "tests").resolve(), target_is_directory=True)
    return dest


def imports_of(path: Path, module: str) -> Iterator[tuple[int, str, bool]]:
    """(line, imported name, at module level) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.stem == "__init__"
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            at_top = id(node) in top_level or _under_type_checking(tree, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if _is_namespace_module(full) else base, at_top


def _is_namespace_module(name: str) -> bool:
    return name.startswith(ROOT_PACKAGE + ".")


def _under_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    """Imports under ``if TYPE_CHECKING:`` never run; they count as module-level for layering only."""
    for statement in tree.body:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            if any(child is node for child in ast.walk(statement)):
                return True
    return False


def _is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


def _starts(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_imports(repo: Path) -> list[Violation]:
    """Every import that breaks a rule in :data:`RULES`, or names a pre-namespace top-level package."""
    found: list[Violation] = []
    files = list(module_files(repo))
    tests = repo / "tests"
    if tests.is_dir():
        files += [(f"tests.{p.relative_to(tests).with_suffix('')}".replace(os.sep, "."), p)
                  for p in sorted(tests.rglob("*.py"))]  # fmt: skip
    for module, path in files:
        for line, name, at_top in imports_of(path, module):
            rel = path.relative_to(repo)
            head = name.split(".")[0]
            if head in OLD_TOP_LEVEL:
                found.append(Violation(rel, line, module, name, "every import name is under splitrelay."))
                continue
            if _starts(name, ("splitrelay.edge.contract", "splitrelay.relay.inference")):
                found.append(Violation(rel, line, module, name, "a mapped package has one name only"))
                continue
            for rule in RULES:
                if not _starts(module, (rule.layer,)) or (rule.top_level_only and not at_top):
                    continue
                if rule.only is not None:
                    if not _is_stdlib(name) and not _starts(name, rule.only):
                        found.append(Violation(rel, line, module, name, rule.why))
                elif _starts(name, rule.forbidden):
                    found.append(Violation(rel, line, module, name, rule.why))
    return found


def run_mypy(repo: Path, tree: Path, extra: Sequence[str] = ()) -> int:
    """mypy over the link tree, its output mapped back to the repository's paths."""
    build_link_tree(repo, tree)
    links = {str(p.relative_to(tree)): str(p.resolve().relative_to(repo.resolve()))
             for p in tree.rglob("*.py") if p.is_symlink()}  # fmt: skip
    config = ["--config-file", str(repo / "pyproject.toml"), "--cache-dir", str(repo / ".mypy_cache")]
    command = [sys.executable, "-m", "mypy", *config, "-p", ROOT_PACKAGE, "-p", "tests", *extra]
    try:
        result = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    for line in (result.stdout + result.stderr).splitlines():
        path, sep, rest = line.partition(":")
        print(f"{links.get(path, path)}{sep}{rest}")
    return result.returncode


def main(argv: Sequence[str] | None = None) -> None:
    """``check-imports`` or ``mypy [ARGS]``, from the repository root (make lint)."""
    args = list(sys.argv[1:] if argv is None else argv)
    repo = Path.cwd()
    if args[:1] == ["check-imports"]:
        violations = check_imports(repo)
        for violation in violations:
            print(violation)
        print(f"import rules: {len(violations)} violation(s) in {sum(1 for _ in module_files(repo))} modules")
        raise SystemExit(1 if violations else 0)
    if args[:1] == ["mypy"]:
        # One tree per run: two developers' lint runs in one checkout must not share it.
        raise SystemExit(run_mypy(repo, repo / "build" / f"typecheck-{os.getpid()}", args[1:]))
    raise SystemExit("usage: layout check-imports | mypy [ARGS]")
