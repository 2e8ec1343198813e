"""Cloudflare: the Realtime SFU and TURN apps, generated keys, the relay registry KV, the Worker.

The Worker's shape comes from wrangler.toml (infra/wrangler.py); this module only adds what differs
per account: the SFU/TURN app ids and secrets, the generated signing keys, the KV namespace id and the
hostname. Who uploads the script is a stack setting (`workerCodeOwner`, docs/deploy.md):

- `pulumi`: a `WorkersScript` with every module, binding, migration and secret (secret_text bindings).
- `wrangler`: `wrangler deploy` ships the script from the same wrangler.toml; Pulumi exports the
  secrets as one secret JSON object (`workerSecrets`, for `wrangler secret bulk`) and the plain
  per-stack values (`workerVars`, for `wrangler deploy --var`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_cloudflare as cloudflare
import pulumi_random as random

from splitrelay.infra.settings import StackSettings
from splitrelay.infra.wrangler import WorkerSpec, pending_migrations

REGISTRY_BINDING = "RELAY_REGISTRY"
REGISTRY_KEY = "relays"
"""edge/relays.py reads the registry document from this key of the KV namespace bound as RELAY_REGISTRY."""
SIGNING_KEY_CHARS = 48  # edge/contract/signing.py needs >= 32 bytes; 48 alphanumerics are ~285 bits
# Stack-level values the edge reads besides wrangler.toml's vars (edge/config.py SECRET_NAMES/VAR_NAMES).
SECRET_ENV = ("SFU_APP_SECRET", "TURN_KEY_API_TOKEN", "RELAY_SIGNING_KEY", "TOKEN_SIGNING_KEY", "API_KEY")
PLAIN_ENV = ("SFU_APP_ID", "SFU_API_URL", "TURN_KEY_ID", "RELAYS", "ALLOWED_ORIGINS")
"""RELAYS: the same registry document as the KV key (the edge's fallback when KV is unreadable).
ALLOWED_ORIGINS: space-separated origins from the stack config; the edge answers their CORS (edge/app.py)."""


@dataclass(frozen=True)
class EdgeValue:
    name: str
    value: pulumi.Output[str]
    secret: bool


@dataclass
class Edge:
    sfu: cloudflare.CallsSfuApp
    turn: cloudflare.CallsTurnApp
    relay_signing_key: pulumi.Output[str]
    env: list[EdgeValue]
    kv_namespace_id: pulumi.Output[str]
    script: cloudflare.WorkersScript | None
    domain: pulumi.CustomResource | None


def generated_key(name: str) -> pulumi.Output[str]:
    """A random key kept in Pulumi state (encrypted); stable across `pulumi up` runs."""
    password = random.RandomPassword(name, length=SIGNING_KEY_CHARS, special=False)
    return pulumi.Output.secret(password.result)


def edge_env(
    settings: StackSettings,
    sfu: cloudflare.CallsSfuApp,
    turn: cloudflare.CallsTurnApp,
    relay_signing_key: pulumi.Output[str],
    registry: str,
) -> list[EdgeValue]:
    """Every per-stack value of the Worker's env, each marked secret or not, in one place."""
    secrets: Mapping[str, pulumi.Output[str]] = {
        "SFU_APP_SECRET": sfu.secret,
        "TURN_KEY_API_TOKEN": turn.key,
        "RELAY_SIGNING_KEY": relay_signing_key,
        "TOKEN_SIGNING_KEY": generated_key("token-signing-key"),
        "API_KEY": generated_key("edge-api-key"),
    }
    plain: Mapping[str, pulumi.Output[str]] = {
        "SFU_APP_ID": sfu.uid,
        "SFU_API_URL": pulumi.Output.from_input(settings.sfu_api_url),
        "TURN_KEY_ID": turn.uid,
        "RELAYS": pulumi.Output.from_input(registry),
        "ALLOWED_ORIGINS": pulumi.Output.from_input(" ".join(settings.allowed_origins)),
    }
    return [EdgeValue(n, pulumi.Output.secret(secrets[n]), True) for n in SECRET_ENV] + [
        EdgeValue(n, plain[n], False) for n in PLAIN_ENV
    ]


def worker_bindings(
    spec: WorkerSpec, env: Sequence[EdgeValue], kv_namespace_id: pulumi.Input[str]
) -> list[cloudflare.WorkersScriptBindingArgs]:
    """wrangler.toml's bindings plus the stack's env; a stack value replaces a var of the same name."""
    stack_names = {v.name for v in env}
    bindings = [
        cloudflare.WorkersScriptBindingArgs(
            name=do.name, type="durable_object_namespace", class_name=do.class_name
        )
        for do in spec.durable_objects
    ]
    for kv in spec.kv_namespaces:
        if kv.binding != REGISTRY_BINDING:
            raise ValueError(
                f"wrangler.toml kv_namespaces: only {REGISTRY_BINDING} is provisioned, got {kv.binding}"
            )
        bindings.append(
            cloudflare.WorkersScriptBindingArgs(
                name=kv.binding, type="kv_namespace", namespace_id=kv_namespace_id
            )
        )
    for rl in spec.ratelimits:
        bindings.append(
            cloudflare.WorkersScriptBindingArgs(
                name=rl.name,
                type="ratelimit",
                namespace_id=rl.namespace_id,
                simple=cloudflare.WorkersScriptBindingSimpleArgs(limit=rl.limit, period=rl.period),
            )
        )
    if spec.assets_binding is not None:
        bindings.append(cloudflare.WorkersScriptBindingArgs(name=spec.assets_binding, type="assets"))
    for name, text in sorted(spec.vars.items()):
        if name not in stack_names:
            bindings.append(cloudflare.WorkersScriptBindingArgs(name=name, type="plain_text", text=text))
    for value in env:
        bindings.append(
            cloudflare.WorkersScriptBindingArgs(
                name=value.name, type="secret_text" if value.secret else "plain_text", text=value.value
            )
        )
    return bindings


def worker_migrations(
    spec: WorkerSpec, applied_tag: str | None
) -> cloudflare.WorkersScriptMigrationsArgs | None:
    """The Durable Object migrations of one upload: only the steps after ``applied_tag``, with it as
    ``old_tag`` (wrangler's rule, infra/wrangler.py ``pending_migrations``); None when it is current."""
    old_tag, steps = pending_migrations(spec.migrations, applied_tag, spec.name)
    if not steps:
        return None
    return cloudflare.WorkersScriptMigrationsArgs(
        old_tag=old_tag,
        new_tag=steps[-1].tag,
        steps=[
            cloudflare.WorkersScriptMigrationsStepArgs(
                new_classes=list(m.new_classes) or None,
                new_sqlite_classes=list(m.new_sqlite_classes) or None,
                deleted_classes=list(m.deleted_classes) or None,
                renamed_classes=[
                    cloudflare.WorkersScriptMigrationsStepRenamedClassArgs(from_=a, to=b)
                    for a, b in m.renamed_classes
                ]
                or None,
            )
            for m in steps
        ],
    )


def applied_migration_tag(account_id: str, script_name: str) -> pulumi.Output[str | None]:
    """The migration tag Cloudflare last applied to the script (the provider's scripts data source), or None
    for a script that does not exist yet or has none; read at every preview and update."""
    scripts = cloudflare.get_workers_scripts_output(account_id=account_id)
    return scripts.results.apply(
        lambda results: next((r.migration_tag or None for r in results if r.id == script_name), None)
    )


def worker_script(
    settings: StackSettings, spec: WorkerSpec, env: Sequence[EdgeValue], kv_namespace_id: pulumi.Input[str]
) -> cloudflare.WorkersScript:
    """The Python Worker exactly as wrangler would upload it (same modules, names and content types)."""
    main = spec.main_module
    files = {
        m.name: cloudflare.WorkersScriptFilesArgs(
            content_type=m.content_type,
            content_base64=base64.b64encode(m.read()).decode(),
            content_sha256=m.sha256(),
        )
        for m in spec.modules
    }
    assets = None
    if spec.assets_directory is not None:
        config = spec.assets_config
        assets = cloudflare.WorkersScriptAssetsArgs(
            # Relative to where `pulumi up` runs (infra/, also the provider's working directory): an
            # absolute path would put this machine's layout in the state and differ on every machine.
            directory=os.path.relpath(spec.assets_directory),
            config=cloudflare.WorkersScriptAssetsConfigArgs(
                not_found_handling=config.get("not_found_handling"),
                html_handling=config.get("html_handling"),
                run_worker_first=config.get("run_worker_first"),
            )
            if config
            else None,
        )
    return cloudflare.WorkersScript(
        "worker",
        account_id=settings.account_id,
        script_name=spec.name,
        content=main.read().decode("utf-8"),
        content_type=main.content_type,
        main_module=main.name,
        files=files,
        compatibility_date=spec.compatibility_date,
        compatibility_flags=list(spec.compatibility_flags),
        bindings=worker_bindings(spec, env, kv_namespace_id),
        migrations=applied_migration_tag(settings.account_id, spec.name).apply(
            lambda tag: worker_migrations(spec, tag)
        ),
        assets=assets,
        observability=(
            cloudflare.WorkersScriptObservabilityArgs(enabled=spec.observability)
            if spec.observability is not None
            else None
        ),
        placement=cloudflare.WorkersScriptPlacementArgs(mode=spec.placement_mode)
        if spec.placement_mode
        else None,
        limits=cloudflare.WorkersScriptLimitsArgs(cpu_ms=spec.cpu_ms) if spec.cpu_ms is not None else None,
    )


def worker_subdomain(
    settings: StackSettings, spec: WorkerSpec, script: cloudflare.WorkersScript
) -> cloudflare.WorkersScriptSubdomain:
    """Whether the Worker is also public on workers.dev, as wrangler.toml's workers_dev/preview_urls say
    (wrangler deploy sets the same through the script's subdomain endpoint)."""
    return cloudflare.WorkersScriptSubdomain(
        "worker-subdomain",
        account_id=settings.account_id,
        script_name=script.script_name,
        enabled=spec.workers_dev,
        previews_enabled=spec.preview_urls,
    )


def registry_kv_namespace(settings: StackSettings, spec: WorkerSpec) -> pulumi.Output[str]:
    """The namespace id wrangler.toml names (so both deploy paths bind the same one), else a new one."""
    bound = [kv for kv in spec.kv_namespaces if kv.binding == REGISTRY_BINDING]
    if not bound:
        raise ValueError(
            f"wrangler.toml: no [[kv_namespaces]] with binding = {REGISTRY_BINDING!r} for the relay registry"
        )
    if bound[0].namespace_id is not None:
        return pulumi.Output.from_input(bound[0].namespace_id)
    if settings.worker_code_owner == "wrangler":
        raise ValueError(
            f"wrangler.toml kv_namespaces.{REGISTRY_BINDING}: workerCodeOwner=wrangler needs the "
            "namespace id in wrangler.toml (`npx wrangler kv namespace create RELAY_REGISTRY`)"
        )
    namespace = cloudflare.WorkersKvNamespace(
        "relay-registry", account_id=settings.account_id, title=f"{spec.name}-{settings.stack}-relay-registry"
    )
    return namespace.id


def registry_document(entries: Sequence[Mapping[str, object]]) -> str:
    """The JSON edge/relays.py `parse_registry` reads; sorted keys so an unchanged fleet makes no diff."""
    return json.dumps({"relays": list(entries)}, sort_keys=True, separators=(",", ":"))


def registry_entry(settings: StackSettings, region_index: int, slot: int) -> dict[str, object]:
    region = settings.regions[region_index]
    return {
        "id": f"{region.key}-{slot}",
        "control_url": f"https://{settings.relay_hostname(region, slot)}",
        "region": region.aws_region,
        "continent": region.continent,
        "latitude": region.latitude,
        "longitude": region.longitude,
        # The group keeps minCount instances, and a booting instance claims the lowest free slot: slots
        # below minCount are the live ones; the rest exist for replacement overlap (docs/deploy.md).
        "health": "healthy" if slot < region.min_count else "down",
        "load": 0.0,
    }


def fleet_registry(settings: StackSettings) -> str:
    """Every relay slot of every region, in config order (the edge's fallback order)."""
    return registry_document(
        [
            registry_entry(settings, i, slot)
            for i, region in enumerate(settings.regions)
            for slot in range(region.max_count)
        ]
    )


def write_registry(
    settings: StackSettings, namespace_id: pulumi.Input[str], document: str
) -> cloudflare.WorkersKv:
    return cloudflare.WorkersKv(
        "relay-registry-entries",
        account_id=settings.account_id,
        namespace_id=namespace_id,
        key_name=REGISTRY_KEY,
        value=document,
    )


def edge_domain(
    settings: StackSettings, script_name: str, depends_on: Sequence[pulumi.Resource]
) -> pulumi.CustomResource:
    if settings.edge_attach == "custom-domain":
        return cloudflare.WorkersCustomDomain(
            "edge-domain",
            account_id=settings.account_id,
            zone_id=settings.zone_id,
            hostname=settings.hostname,
            service=script_name,
            opts=pulumi.ResourceOptions(depends_on=list(depends_on)),
        )
    return cloudflare.WorkersRoute(
        "edge-route",
        zone_id=settings.zone_id,
        pattern=f"{settings.hostname}/*",
        script=script_name,
        opts=pulumi.ResourceOptions(depends_on=list(depends_on)),
    )


def build_edge(settings: StackSettings, spec: WorkerSpec) -> Edge:
    """Every Cloudflare resource of the edge (relay DNS names and TLS are in infra/relays.py)."""
    sfu = cloudflare.CallsSfuApp("sfu", account_id=settings.account_id, name=f"{spec.name}-{settings.stack}")
    turn = cloudflare.CallsTurnApp(
        "turn", account_id=settings.account_id, name=f"{spec.name}-{settings.stack}"
    )
    relay_key = generated_key("relay-signing-key")
    registry = fleet_registry(settings)
    env = edge_env(settings, sfu, turn, relay_key, registry)
    namespace_id = registry_kv_namespace(settings, spec)
    write_registry(settings, namespace_id, registry)
    script = None
    if settings.worker_code_owner == "pulumi":
        script = worker_script(settings, spec, env, namespace_id)
        worker_subdomain(settings, spec, script)
    domain = edge_domain(settings, spec.name, [script] if script is not None else [])
    return Edge(sfu, turn, relay_key, env, namespace_id, script, domain)


def worker_secrets_json(env: Sequence[EdgeValue]) -> pulumi.Output[str]:
    """The Worker's secrets as one JSON object (itself secret), the input `wrangler secret bulk` takes."""
    secrets = [v for v in env if v.secret]
    names = [v.name for v in secrets]
    return pulumi.Output.secret(
        pulumi.Output.all(*[v.value for v in secrets]).apply(
            lambda values: json.dumps(dict(zip(names, values, strict=True)), sort_keys=True)
        )
    )


def worker_vars(env: Sequence[EdgeValue]) -> pulumi.Output[dict[str, str]]:
    """The per-stack plain values, for wrangler.toml's [vars] when wrangler ships the code."""
    plain = [v for v in env if not v.secret]
    names = [v.name for v in plain]
    return pulumi.Output.all(*[v.value for v in plain]).apply(
        lambda values: dict(zip(names, values, strict=True))
    )
