"""Run the Pulumi program under Pulumi's own mocks and keep every resource's inputs for inspection.

The mocks return provider-computed outputs with recognisable secret values (`SECRET-...`), so a test
can check that each one reaches the engine only inside a secret wrapper, wherever it was wired.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest


def require_infra() -> None:
    """Skip when the infra extra is absent on a developer machine; in CI (CI set) it must be there."""
    try:
        with warnings.catch_warnings():  # the providers warn about their own deprecated resources
            warnings.simplefilter("ignore", DeprecationWarning)
            import pulumi  # noqa: F401
            import pulumi_aws  # noqa: F401
            import pulumi_cloudflare  # noqa: F401
            import pulumi_random  # noqa: F401
            import pulumi_tls  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("infra extra not installed (pip install -e '.[infra]')", allow_module_level=True)


require_infra()

import pulumi  # noqa: E402
from pulumi.runtime import rpc  # noqa: E402

from splitrelay.infra.bundle import FORMAT, RelayBundle, read_bundle, write_tarball  # noqa: E402
from splitrelay.infra.program import Stack, build  # noqa: E402
from splitrelay.infra.settings import StackSettings, parse_settings  # noqa: E402
from splitrelay.infra.wrangler import WorkerSpec, load_worker_spec  # noqa: E402
from tests.infra.fixtures import write_edge  # noqa: E402

ACCOUNT = "0123456789abcdef0123456789abcdef"
ZONE = "fedcba9876543210fedcba9876543210"
SFU_SECRET = "SECRET-sfu-app-secret-0123456789"
TURN_KEY = "SECRET-turn-key-api-token-012345"
TLS_KEY = "-----BEGIN PRIVATE KEY-----\nSECRET-tls-private-key\n-----END PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\norigin-cert\n-----END CERTIFICATE-----\n"


def mock_public_ip(name: str) -> str:
    """The address the mocks give an Elastic IP: derived from its name (registration order varies)."""
    return f"198.51.{zlib.crc32(name.encode()) % 250}.{len(name)}"


def random_secret(name: str) -> str:
    return f"SECRET-{name}-".ljust(48, "x")


@dataclass
class Recorded:
    resources: list[pulumi.runtime.MockResourceArgs] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        """Sorted by name: resources register concurrently, in no fixed order."""
        return sorted((r for r in self.resources if r.typ == typ), key=lambda r: r.name)

    def one(self, typ: str) -> pulumi.runtime.MockResourceArgs:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, got {len(found)}"
        return found[0]

    def named(self, name: str) -> pulumi.runtime.MockResourceArgs:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, got {len(found)}"
        return found[0]

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.resources:
            counts[r.typ] = counts.get(r.typ, 0) + 1
        return counts

    def secret_values(self) -> set[str]:
        return {SFU_SECRET, TURN_KEY, TLS_KEY} | {
            random_secret(r.name) for r in self.of_type("random:index/randomPassword:RandomPassword")
        }


class RecordingMocks(pulumi.runtime.Mocks):
    """Echo inputs as outputs, plus what the providers would compute (ids, ARNs, secrets)."""

    def __init__(self, recorded: Recorded, deployed: Mapping[str, str] | None = None) -> None:
        self.recorded = recorded
        self.deployed = dict(deployed or {})
        """Workers already on the account: script name -> the migration tag Cloudflare last applied."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.recorded.resources.append(args)
        outputs = dict(args.inputs)
        name, typ = args.name, args.typ
        extra: dict[str, Any] = {}
        if typ == "cloudflare:index/callsSfuApp:CallsSfuApp":
            extra = {"uid": f"sfuapp{name}", "secret": SFU_SECRET}
        elif typ == "cloudflare:index/callsTurnApp:CallsTurnApp":
            extra = {"uid": f"turnkey{name}", "key": TURN_KEY}
        elif typ == "random:index/randomPassword:RandomPassword":
            extra = {"result": random_secret(name)}
        elif typ == "tls:index/privateKey:PrivateKey":
            extra = {"private_key_pem": TLS_KEY, "privateKeyPem": TLS_KEY}
        elif typ == "tls:index/certRequest:CertRequest":
            extra = {"cert_request_pem": "CSR", "certRequestPem": "CSR"}
        elif typ == "cloudflare:index/originCaCertificate:OriginCaCertificate":
            extra = {"certificate": CERT}
        elif typ in (
            "tls:index/selfSignedCert:SelfSignedCert",
            "tls:index/locallySignedCert:LocallySignedCert",
        ):
            extra = {"cert_pem": f"{CERT}{name}", "certPem": f"{CERT}{name}"}
        elif typ == "aws:ec2/eip:Eip":
            extra = {"publicIp": mock_public_ip(name), "public_ip": mock_public_ip(name)}
        elif typ == "aws:globalaccelerator/accelerator:Accelerator":
            extra = {
                "dnsName": f"{name}.awsglobalaccelerator.com",
                "arn": f"arn:aws:globalaccelerator::1:accelerator/{name}",
            }
        elif typ in (
            "aws:globalaccelerator/listener:Listener",
            "aws:globalaccelerator/endpointGroup:EndpointGroup",
        ):
            extra = {"arn": f"arn:aws:globalaccelerator::1:{name}"}
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            extra = {"latestVersion": 1}
        elif typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            extra = {"arn": f"arn:aws:iam::1:{name}", "name": name}
        elif typ == "aws:autoscaling/group:Group":
            extra = {"name": name}
        elif typ == "aws:s3/bucket:Bucket":
            bucket = f"{args.inputs.get('bucketPrefix', 'b-')}0001"
            extra = {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}"}
        outputs.update(extra)
        return f"{name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": ["zone-a", "zone-b", "zone-c"], "zoneIds": ["z1", "z2", "z3"]}, []
        if args.token == "cloudflare:index/getWorkersScripts:getWorkersScripts":
            return {"results": [worker_listing(name, tag) for name, tag in self.deployed.items()]}, []
        return {}, []


def worker_listing(name: str, migration_tag: str) -> dict[str, Any]:
    """One entry of the account's script list as the provider returns it (every required field)."""
    return {
        "id": name, "migrationTag": migration_tag, "tag": f"tag-{name}", "etag": "e", "createdOn": "",
        "modifiedOn": "", "compatibilityDate": "2026-04-01", "compatibilityFlags": ["python_workers"],
        "handlers": ["fetch"], "hasAssets": True, "hasModules": True, "lastDeployedFrom": "wrangler",
        "logpush": False, "namedHandlers": [], "placementMode": "", "placementStatus": "", "routes": [],
        "tags": [], "tailConsumers": [], "usageModel": "standard", "exports": {}, "cacheOptions": {},
        "observability": {"enabled": False, "headSamplingRate": 1, "logs": {"enabled": False,
                          "headSamplingRate": 1, "invocationLogs": False, "destinations": [],
                          "persist": False}},
        "placement": {"mode": "", "region": "", "hostname": "", "host": "", "lastAnalyzedAt": "",
                      "status": "", "target": []},
    }  # fmt: skip


def run_stack(
    settings: StackSettings, spec: WorkerSpec, deployed: Mapping[str, str] | None = None
) -> tuple[Recorded, Stack]:
    """Build the whole program under mocks; returns every registered resource once all have resolved.
    ``deployed``: Workers already on the account (name -> applied migration tag), as after an earlier up."""
    recorded = Recorded()
    pulumi.runtime.set_mocks(
        RecordingMocks(recorded, deployed), project="splitrelay", stack=settings.stack, preview=False
    )
    holder: list[Stack] = []
    patch = mock.patch("splitrelay.infra.program.build_bundle", synthetic_bundle)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[Any]:
        stack = build(settings, spec)
        holder.append(stack)
        waits: list[pulumi.Output[Any]] = [r.group.id for r in stack.regions]
        return pulumi.Output.all(*waits)

    with warnings.catch_warnings():  # lazy loading of every pulumi_cloudflare module warns about old names
        warnings.simplefilter("ignore", DeprecationWarning)
        with patch:
            program()
    return recorded, holder[0]


def synthetic_bundle(repo: Path, out_dir: Path, *, arch: str, python: str) -> RelayBundle:
    """A small but well-formed relay bundle (what infra/bundle.py builds, minus pip's wheels)."""
    del repo, out_dir
    root = Path(tempfile.mkdtemp(prefix="splitrelay-test-bundle-"))
    staging = root / "bundle"
    (staging / "wheels").mkdir(parents=True)
    (staging / "wheels" / "splitrelay-0.1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    manifest = {"format": FORMAT, "requirement": "splitrelay[relay]==0.1.0", "python": python, "arch": arch}
    (staging / "bundle.json").write_text(json.dumps(manifest))
    write_tarball(staging, root / "bundle.tar.gz")
    return read_bundle(root / "bundle.tar.gz")


# -- walking captured inputs --------------------------------------------------------------------------


def walk(value: Any, path: str = "", secret: bool = False) -> Iterator[tuple[str, Any, bool]]:
    """Every leaf of a resource's inputs with its path and whether it sits inside a secret wrapper."""
    if rpc.is_rpc_secret(value):
        yield from walk(rpc.unwrap_rpc_secret(value), path, True)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}" if path else str(key), secret)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]", secret)
    else:
        yield path, value, secret


def unwrap(value: Any) -> Any:
    """Inputs with secret wrappers removed (for comparisons that do not care about marking)."""
    if rpc.is_rpc_secret(value):
        return unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, Mapping):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unwrap(v) for v in value]
    return value


def is_secret(value: Any) -> bool:
    return bool(rpc.is_rpc_secret(value))


# -- a synthetic edge bundle and stack settings --------------------------------------------------------


def region(aws_region: str, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "awsRegion": aws_region,
        "key": key,
        "instanceType": "c7g.large",
        "minCount": 1,
        "maxCount": 2,
        "inference": "10.80.3.7:7000",
        **extra,
    }


def stack_config(regions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "accountId": ACCOUNT,
        "zoneId": ZONE,
        "zoneName": "example.com",
        "hostname": "voice.example.com",
        "allowedOrigins": ["https://app.example.com"],
        "regions": regions,
        **extra,
    }


def make_settings(regions: list[dict[str, Any]], stack: str = "test", **extra: Any) -> StackSettings:
    return parse_settings(stack_config(regions, **extra), stack)


def make_spec(root: Path, **kwargs: Any) -> WorkerSpec:
    return load_worker_spec(write_edge(root, **kwargs))
