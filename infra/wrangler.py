"""What the Worker is, read from the repo's wrangler.toml and the files wrangler uploads.

`pulumi up` and `wrangler deploy` must ship the same Worker. So the Pulumi program never repeats the
Worker's name, main module, compatibility date and flags, Durable Object classes and migrations, KV and
rate-limit bindings, vars or assets directory: it reads them here. The module list follows wrangler's
own rules for a Python Worker (every `*.py`, and `*.txt`/`*.html`/`*.sql` as text, `*.bin` as data,
`*.wasm` as WebAssembly, under the main module's directory, or `base_dir`), which
tests/unit/test_infra_wrangler.py checks against `wrangler deploy --dry-run --outdir`.

Keys this module does not understand are refused, so a binding added to wrangler.toml can never be
silently missing from Pulumi's upload.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# wrangler's default module rules (type by extension) and the multipart content type of each.
MODULE_TYPES: Mapping[str, str] = {
    ".py": "python",
    ".txt": "text",
    ".html": "text",
    ".sql": "text",
    ".bin": "data",
    ".wasm": "wasm",
}
CONTENT_TYPES: Mapping[str, str] = {
    "python": "text/x-python",
    "text": "text/plain",
    "data": "application/octet-stream",
    "wasm": "application/wasm",
}
# Top-level keys that change nothing in the upload (wrangler-only settings) or that are read below.
_READ = {
    "name",
    "main",
    "base_dir",
    "compatibility_date",
    "compatibility_flags",
    "durable_objects",
    "migrations",
    "kv_namespaces",
    "vars",
    "assets",
    "ratelimits",
    "observability",
    "placement",
    "limits",
    "workers_dev",
    "preview_urls",
}
_IGNORED = {
    "account_id",
    "dev",
    "env",
    "routes",
    "route",
    "keep_vars",
    "$schema",
}
MAX_MODULES = 500
MAX_BUNDLE_BYTES = 10 * 1024 * 1024  # Workers Paid: 10 MB compressed; uncompressed here is stricter


class WranglerConfigError(ValueError):
    """wrangler.toml (or the files it points at) cannot be deployed the same way by Pulumi."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"wrangler.toml {key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Module:
    name: str
    """Name in the upload: relative to the base directory, '/'-separated (what Python imports see);
    the main module is named by its file name alone, as wrangler does."""
    path: Path
    kind: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.kind]

    def read(self) -> bytes:
        return self.path.read_bytes()

    def sha256(self) -> str:
        return hashlib.sha256(self.read()).hexdigest()


@dataclass(frozen=True)
class DurableObjectBinding:
    name: str
    class_name: str


@dataclass(frozen=True)
class Migration:
    tag: str
    new_classes: tuple[str, ...] = ()
    new_sqlite_classes: tuple[str, ...] = ()
    deleted_classes: tuple[str, ...] = ()
    renamed_classes: tuple[tuple[str, str], ...] = ()


def pending_migrations(
    migrations: Sequence[Migration], applied_tag: str | None, script: str
) -> tuple[str | None, tuple[Migration, ...]]:
    """``(old_tag, steps)`` to upload, as wrangler computes them: the steps after the tag Cloudflare last
    applied to ``script`` (all of them for a new script), checked against that tag. Cloudflare rejects an
    upload that repeats an applied tag (code 10079), so a current script gets no steps at all.
    """
    tags = [m.tag for m in migrations]
    if not applied_tag:
        return None, tuple(migrations)
    if applied_tag not in tags:
        raise WranglerConfigError(
            "migrations",
            f"Cloudflare has applied migration tag {applied_tag!r} to Worker {script!r}, which is not among "
            f"wrangler.toml's [[migrations]] tags {tags}: keep every applied step in wrangler.toml, in order",
        )
    return applied_tag, tuple(migrations[tags.index(applied_tag) + 1 :])


@dataclass(frozen=True)
class KvBinding:
    binding: str
    namespace_id: str | None
    """None when wrangler.toml has no id, or a placeholder (anything but 32 hex digits)."""


@dataclass(frozen=True)
class RateLimitBinding:
    name: str
    namespace_id: str
    limit: int
    period: int


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    main_module: Module
    modules: tuple[Module, ...]
    """Every other module, sorted by name."""
    compatibility_date: str
    compatibility_flags: tuple[str, ...]
    durable_objects: tuple[DurableObjectBinding, ...] = ()
    migrations: tuple[Migration, ...] = ()
    kv_namespaces: tuple[KvBinding, ...] = ()
    ratelimits: tuple[RateLimitBinding, ...] = ()
    vars: Mapping[str, str] = field(default_factory=dict)
    assets_directory: Path | None = None
    assets_binding: str | None = None
    assets_config: Mapping[str, Any] = field(default_factory=dict)
    """not_found_handling, html_handling, run_worker_first: as wrangler.toml gives them."""
    observability: bool | None = None
    placement_mode: str | None = None
    cpu_ms: int | None = None
    workers_dev: bool = True
    """Public on `<name>.<account>.workers.dev` too (wrangler's default when no route is configured)."""
    preview_urls: bool = True
    """Preview URLs on workers.dev (wrangler's default follows workers_dev)."""

    @property
    def all_module_names(self) -> tuple[str, ...]:
        return (self.main_module.name, *(m.name for m in self.modules))


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise WranglerConfigError(key, f"must be a table, got {type(value).__name__}")
    return value


def _tables(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise WranglerConfigError(key, "must be an array of tables ([[...]])")
    return value


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
        raise WranglerConfigError(key, f"must be an identifier (binding/class name), got {value!r}")
    return value


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WranglerConfigError(key, "must be an array of strings")
    return tuple(value)


def collect_modules(base: Path, exclude: Path | None = None) -> list[Module]:
    """Files under `base` that wrangler's default rules upload, sorted by name; `exclude` is the main."""
    if not base.is_dir():
        raise WranglerConfigError("main", f"module directory {base} does not exist")
    found: list[Module] = []
    for path in sorted(base.rglob("*")):
        kind = MODULE_TYPES.get(path.suffix)
        if kind is None or not path.is_file() or path == exclude:
            continue
        if "__pycache__" in path.relative_to(base).parts:
            continue
        found.append(Module(path.relative_to(base).as_posix(), path, kind))
        if len(found) > MAX_MODULES:
            raise WranglerConfigError("main", f"more than {MAX_MODULES} modules under {base}")
    return found


def load_worker_spec(wrangler_toml: Path) -> WorkerSpec:
    """Parse wrangler.toml and list the modules; every problem names the key it comes from."""
    try:
        raw = tomllib.loads(wrangler_toml.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WranglerConfigError("(file)", f"cannot read {wrangler_toml}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise WranglerConfigError("(file)", f"not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - _READ - _IGNORED)
    if unknown:
        raise WranglerConfigError(
            unknown[0],
            "is not supported by infra/wrangler.py: add it there so Pulumi uploads the same Worker",
        )
    root = wrangler_toml.parent
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        raise WranglerConfigError("name", f"must be a Worker name (lowercase, digits, -), got {name!r}")
    main = raw.get("main")
    if not isinstance(main, str) or not main.endswith(".py"):
        raise WranglerConfigError("main", f"must be the Python entry module (*.py), got {main!r}")
    main_path = (root / main).resolve()
    if not main_path.is_file():
        raise WranglerConfigError("main", f"{main} does not exist")
    base_dir = raw.get("base_dir")
    base = (root / base_dir).resolve() if isinstance(base_dir, str) else main_path.parent
    if not main_path.is_relative_to(base):
        raise WranglerConfigError("base_dir", f"{base_dir} must contain main ({main})")
    date = raw.get("compatibility_date")
    if not isinstance(date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise WranglerConfigError("compatibility_date", f"must be YYYY-MM-DD, got {date!r}")
    flags = _strings(raw.get("compatibility_flags", []), "compatibility_flags")
    if "python_workers" not in flags:
        raise WranglerConfigError("compatibility_flags", "must include python_workers for a Python Worker")

    durable = _table(raw, "durable_objects")
    dos = tuple(
        DurableObjectBinding(
            _name(b.get("name"), f"durable_objects.bindings[{i}].name"),
            _name(b.get("class_name"), f"durable_objects.bindings[{i}].class_name"),
        )
        for i, b in enumerate(_tables(durable, "bindings"))
    )
    for i, b in enumerate(_tables(durable, "bindings")):
        if "script_name" in b:
            raise WranglerConfigError(
                f"durable_objects.bindings[{i}].script_name",
                "Durable Objects of other Workers are not supported",
            )
    migrations = []
    for i, m in enumerate(_tables(raw, "migrations")):
        tag = m.get("tag")
        if not isinstance(tag, str) or not tag:
            raise WranglerConfigError(f"migrations[{i}].tag", "is required")
        renamed = []
        for j, r in enumerate(m.get("renamed_classes", [])):
            if (
                not isinstance(r, Mapping)
                or not isinstance(r.get("from"), str)
                or not isinstance(r.get("to"), str)
            ):
                raise WranglerConfigError(f"migrations[{i}].renamed_classes[{j}]", "needs from and to")
            renamed.append((str(r["from"]), str(r["to"])))
        extra = sorted(
            set(m) - {"tag", "new_classes", "new_sqlite_classes", "deleted_classes", "renamed_classes"}
        )
        if extra:
            raise WranglerConfigError(f"migrations[{i}].{extra[0]}", "is not supported by infra/wrangler.py")
        migrations.append(
            Migration(
                tag=tag,
                new_classes=_strings(m.get("new_classes", []), f"migrations[{i}].new_classes"),
                new_sqlite_classes=_strings(
                    m.get("new_sqlite_classes", []), f"migrations[{i}].new_sqlite_classes"
                ),
                deleted_classes=_strings(m.get("deleted_classes", []), f"migrations[{i}].deleted_classes"),
                renamed_classes=tuple(renamed),
            )
        )
    declared = {
        c
        for m in migrations
        for c in (*m.new_classes, *m.new_sqlite_classes, *(t for _, t in m.renamed_classes))
    }
    for i, do in enumerate(dos):
        if do.class_name not in declared:
            raise WranglerConfigError(
                f"durable_objects.bindings[{i}].class_name",
                f"{do.class_name} is created by no [[migrations]] entry",
            )
    kvs = []
    for i, k in enumerate(_tables(raw, "kv_namespaces")):
        namespace_id = k.get("id")
        if namespace_id is not None and not isinstance(namespace_id, str):
            raise WranglerConfigError(f"kv_namespaces[{i}].id", "must be a namespace id string")
        real_id = namespace_id if namespace_id and re.fullmatch(r"[0-9a-f]{32}", namespace_id) else None
        kvs.append(KvBinding(_name(k.get("binding"), f"kv_namespaces[{i}].binding"), real_id))
    limits = []
    for i, r in enumerate(_tables(raw, "ratelimits")):
        simple = r.get("simple")
        if not isinstance(simple, Mapping):
            raise WranglerConfigError(f"ratelimits[{i}].simple", "must be {limit = N, period = 10|60}")
        limit, period = simple.get("limit"), simple.get("period")
        if not isinstance(limit, int) or limit < 1:
            raise WranglerConfigError(
                f"ratelimits[{i}].simple.limit", f"must be a positive integer, got {limit!r}"
            )
        if period not in (10, 60):
            raise WranglerConfigError(f"ratelimits[{i}].simple.period", f"must be 10 or 60, got {period!r}")
        namespace_id = r.get("namespace_id")
        if not isinstance(namespace_id, str | int) or not str(namespace_id).isdigit():
            raise WranglerConfigError(
                f"ratelimits[{i}].namespace_id", f"must be a number, got {namespace_id!r}"
            )
        limits.append(
            RateLimitBinding(_name(r.get("name"), f"ratelimits[{i}].name"), str(namespace_id), limit, period)
        )
    variables = _table(raw, "vars")
    for key, value in variables.items():
        _name(key, f"vars.{key}")
        if not isinstance(value, str):
            raise WranglerConfigError(
                f"vars.{key}", "only string vars are supported (JSON vars would need json bindings)"
            )
    assets = _table(raw, "assets")
    assets_dir = None
    if assets:
        extra = sorted(
            set(assets) - {"directory", "binding", "not_found_handling", "html_handling", "run_worker_first"}
        )
        if extra:
            raise WranglerConfigError(f"assets.{extra[0]}", "is not supported by infra/wrangler.py")
        directory = assets.get("directory")
        if not isinstance(directory, str) or not (root / directory).is_dir():
            raise WranglerConfigError("assets.directory", f"must be an existing directory, got {directory!r}")
        assets_dir = (root / directory).resolve()
    binding = assets.get("binding")
    observability = _table(raw, "observability").get("enabled")
    placement = _table(raw, "placement").get("mode")
    cpu_ms = _table(raw, "limits").get("cpu_ms")
    workers_dev = raw.get("workers_dev", True)
    preview_urls = raw.get("preview_urls", workers_dev)
    for key, flag in (("workers_dev", workers_dev), ("preview_urls", preview_urls)):
        if not isinstance(flag, bool):
            raise WranglerConfigError(key, f"must be true or false, got {flag!r}")

    modules = collect_modules(base, exclude=main_path)
    # wrangler names the main module by its file name alone, whatever base_dir is (deploy-bundle code).
    main_module = Module(main_path.name, main_path, "python")
    size = sum(m.path.stat().st_size for m in (main_module, *modules))
    if size > MAX_BUNDLE_BYTES:
        raise WranglerConfigError("main", f"modules total {size} bytes, above {MAX_BUNDLE_BYTES}")
    return WorkerSpec(
        name=name,
        main_module=main_module,
        modules=tuple(modules),
        compatibility_date=date,
        compatibility_flags=flags,
        durable_objects=dos,
        migrations=tuple(migrations),
        kv_namespaces=tuple(kvs),
        ratelimits=tuple(limits),
        vars={str(k): str(v) for k, v in variables.items()},
        assets_directory=assets_dir,
        assets_binding=_name(binding, "assets.binding") if binding is not None else None,
        assets_config={k: v for k, v in assets.items() if k not in ("directory", "binding")},
        observability=bool(observability) if observability is not None else None,
        placement_mode=str(placement) if placement is not None else None,
        cpu_ms=int(cpu_ms) if isinstance(cpu_ms, int) else None,
        workers_dev=bool(workers_dev),
        preview_urls=bool(preview_urls),
    )
