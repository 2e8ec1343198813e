"""The whole stack: settings -> Cloudflare edge -> relays in every region -> stack outputs.

`infra/__main__.py` calls `run()`; tests call `build()` with settings and a wrangler.toml of their own
under Pulumi's mocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from splitrelay.infra.bundle import BundleError, RelayBundle, build_bundle, read_bundle
from splitrelay.infra.cost import CONFIG_NAMESPACE, cost_arguments
from splitrelay.infra.edge import Edge, build_edge, generated_key, worker_secrets_json, worker_vars
from splitrelay.infra.quotas import fill_elastic_ip_quotas
from splitrelay.infra.relays import GA_REGION, RegionRelays, build_region, origin_tls, ssl_strict_rule
from splitrelay.infra.settings import InfraConfigError, StackSettings, parse_settings
from splitrelay.infra.wrangler import WorkerSpec, load_worker_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
WRANGLER_TOML = REPO_ROOT / "wrangler.toml"
BUNDLE_DIR = REPO_ROOT / "build" / "relay-bundles"
_SCALARS = (
    "accountId",
    "zoneId",
    "zoneName",
    "hostname",
    "packageSpec",  # refused with a clear message: relays install their bundle from S3
    "relayBundle",
    "relayPortRange",
    "relayMediaPort",
    "stableAddress",
    "workerCodeOwner",
    "edgeAttach",
    "sfuApiUrl",
    "relayHostPrefix",
    "manageSslRule",
)
_STRUCTURED = ("regions", "allowedOrigins", "controlAllowList", "mediaAllowList")


@dataclass
class Stack:
    settings: StackSettings
    spec: WorkerSpec
    edge: Edge
    regions: list[RegionRelays]


def settings_from_pulumi() -> StackSettings:
    """The `splitrelay:` namespace of the stack config: strings as given, lists and objects from JSON."""
    config = pulumi.Config(CONFIG_NAMESPACE)
    raw: dict[str, Any] = {}
    for key in _SCALARS:
        text = config.get(key)
        if text is not None:
            raw[key] = text
    for key in _STRUCTURED:
        try:
            value = config.get_object(key)
        except pulumi.ConfigTypeError:
            raise InfraConfigError(key, "must be a list or object (set it with --path or in YAML)") from None
        if value is not None:
            raw[key] = value
    if raw.get("stableAddress", "elastic-ip") == "elastic-ip":
        fill_elastic_ip_quotas(raw, _service_quotas_client)
    return parse_settings(raw, pulumi.get_stack())


def _service_quotas_client(aws_region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
    return boto3.session.Session(region_name=aws_region).client("service-quotas", config=config)


def relay_bundles(settings: StackSettings) -> dict[tuple[str, str], RelayBundle]:
    """One bundle per (architecture, Python) the regions need: the user's, or built from this checkout."""
    needed = sorted({(r.architecture, r.python_version) for r in settings.regions})
    try:
        if settings.relay_bundle is not None:
            given = read_bundle(Path(settings.relay_bundle))
            for arch, python in needed:
                if (given.arch, given.python) != (arch, python):
                    raise InfraConfigError(
                        "relayBundle",
                        f"is for {given.arch} / Python {given.python}, but a region needs {arch} / Python "
                        f"{python}: leave relayBundle unset to build one per platform",
                    )
            return {key: given for key in needed}
        return {
            (arch, python): build_bundle(REPO_ROOT, BUNDLE_DIR, arch=arch, python=python)
            for arch, python in needed
        }
    except BundleError as exc:
        raise InfraConfigError("relayBundle", str(exc)) from None


def build(settings: StackSettings, spec: WorkerSpec) -> Stack:
    edge = build_edge(settings, spec)
    origin = origin_tls(settings)
    if settings.manage_ssl_rule:
        ssl_strict_rule(settings)
    ga_provider = (
        aws.Provider("aws-global-accelerator", region=GA_REGION)
        if settings.stable_address == "global-accelerator"
        else None
    )
    bundles = relay_bundles(settings)
    # One wire key for the stack: every relay signs with it; give the same to inference (`wireKey` output).
    wire_key = generated_key("wire-key")
    regions = [
        build_region(
            settings,
            region,
            edge.relay_signing_key,
            edge.sfu.uid,
            edge.sfu.secret,
            origin,
            ga_provider,
            bundles[(region.architecture, region.python_version)],
            wire_key,
        )
        for region in settings.regions
    ]
    pulumi.export("edgeUrl", settings.edge_url)
    pulumi.export("wireKey", wire_key)  # secret: SPLITRELAY_WIRE_KEY for the inference service
    pulumi.export("sfuAppId", edge.sfu.uid)
    pulumi.export("turnKeyId", edge.turn.uid)
    pulumi.export("kvNamespaceId", edge.kv_namespace_id)
    pulumi.export("workerCodeOwner", settings.worker_code_owner)
    pulumi.export("workerSecrets", worker_secrets_json(edge.env))
    pulumi.export("workerVars", worker_vars(edge.env))
    pulumi.export(
        "relayEndpoints",
        {
            r.region.key: {
                "awsRegion": r.region.aws_region,
                "controlUrls": [f"https://{h}" for h in r.hostnames],
                "addresses": [eip.public_ip for eip in r.addresses],
                "accelerators": [a.dns_name for a in r.accelerators],
                "autoScalingGroup": r.group.name,
            }
            for r in regions
        },
    )
    flags, notes = cost_arguments(settings)
    pulumi.export("costCommand", "splitrelay cost " + " ".join(flags))
    pulumi.export("costNotes", notes)
    return Stack(settings, spec, edge, regions)


def run() -> None:
    build(settings_from_pulumi(), load_worker_spec(WRANGLER_TOML))
