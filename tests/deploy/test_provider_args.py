"""Every argument the Pulumi program sets exists on the installed provider SDK, with an allowed value.

Pulumi's mocks accept any input name and value, so a misspelt argument (or a nested key, or an enum
value the provider does not know) passes every other test and fails only at `pulumi up`. The SDK's
``*Args`` classes are the reference: each property getter carries its camelCase wire name
(``pulumi.getter(name=...)``), its type hint names the nested ``*Args`` class, pulumi-cloudflare's
docstrings list enum values as ``Available values: "a", "b".`` and pulumi-aws's in prose.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# isort: off
from tests.infra.harness import make_settings, make_spec, region, run_stack, unwrap

# isort: on
from splitrelay.infra.program import WRANGLER_TOML
from splitrelay.infra.wrangler import load_worker_spec
from tests.infra.pulumi_loop import event_loop_for_pulumi  # noqa: F401 (autouse)

pytestmark = pytest.mark.deploy

PROVIDERS = {"cloudflare": "pulumi_cloudflare", "aws": "pulumi_aws"}
"""Only these two are checked (random and tls take a handful of scalar arguments)."""
ENUM = re.compile(r"Available values: (.*?)\.\s*$", re.M | re.S)
AWS_ENUM = re.compile(
    r"(?:[Vv]alid (?:values|types|tiers)(?: are| include)?:?|[Cc]an be(?: one of)?|[Oo]ne of|"
    r"[Pp]ossible values(?: are)?:?|[Ee]ither|[Tt]he only allowed value is)\s+"
    r"((?:`[^`]+`(?:,\s*|\s*,?\s*(?:and|or)\s+)?)+)"
)
"""pulumi-aws words its lists in prose: "Valid values are `a`, `b`", "Can be `a` or `b`"..."""
AWS_QUOTED = re.compile(r'^((?:"[^"]+"(?:,\s*|\s+or\s+))+"[^"]+")\.')
"""...or leads with them: `"EC2" or "ELB". Controls how...`."""


def args_class(typ: str) -> type:
    """`aws:ec2/eip:Eip` -> pulumi_aws.ec2.EipArgs; `pulumi:providers:aws` -> pulumi_aws.ProviderArgs."""
    package, module, name = typ.split(":")
    if package == "pulumi":
        provider_args: type = importlib.import_module(PROVIDERS[name]).ProviderArgs
        return provider_args
    root = importlib.import_module(PROVIDERS[package])
    folder = module.split("/")[0]
    owner = root if folder == "index" else importlib.import_module(f"{root.__name__}.{folder}")
    # Where a nested input type already has the name `<Resource>Args`, the resource's own is `InitArgs`.
    init_args = getattr(owner, f"{name}InitArgs", None)
    found = init_args if isinstance(init_args, type) else getattr(owner, f"{name}Args")
    assert isinstance(found, type)
    return found


def properties(cls: type) -> dict[str, property]:
    """Wire name (camelCase) -> the Args class's property."""
    found: dict[str, property] = {}
    for klass in cls.__mro__:
        for attr in vars(klass).values():
            if isinstance(attr, property) and hasattr(attr.fget, "_pulumi_name"):
                found.setdefault(attr.fget._pulumi_name, attr)  # type: ignore[union-attr]
    return found


def nested_class(owner: type, prop: property) -> type | None:
    """The `*Args` class a property's type hint names, if any (lists and maps of it included)."""
    hint = str(inspect.signature(prop.fget).return_annotation)  # type: ignore[arg-type]
    match = re.search(r"ForwardRef\('(\w+Args)'\)|'(\w+Args)'", hint)
    if not match:
        return None
    name = match.group(1) or match.group(2)
    module = importlib.import_module(owner.__module__)
    return getattr(module, name, None)


def allowed_values(prop: property, argument_names: set[str]) -> set[str] | None:
    """The values a property's docstring lists, if it lists any. pulumi-cloudflare escapes `_` as `*`
    (compared with `_` restored); pulumi-aws writes prose, and a list that names other arguments
    ("Either `subnet_id` or `gateway_id`") is about arguments, not values."""
    doc = inspect.getdoc(prop.fget) or ""
    match = ENUM.search(doc)
    if match:
        return {v.replace("*", "_") for v in re.findall(r'"([^"]*)"', match.group(1))}
    match = AWS_ENUM.search(doc)
    if match:
        values = {v.strip('"') for v in re.findall(r"`([^`]+)`", match.group(1))}
    else:
        quoted = AWS_QUOTED.search(doc)
        values = set(re.findall(r'"([^"]+)"', quoted.group(1))) if quoted else set()
    if not values or values & argument_names:
        return None
    return values


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def problems(cls: type, inputs: Any, path: str) -> Iterator[str]:
    if not isinstance(inputs, dict):
        return
    known = properties(cls)
    for key, value in inputs.items():
        if key not in known:
            yield f"{path}.{key}: no such argument on {cls.__name__}"
            continue
        prop = known[key]
        allowed = allowed_values(prop, {snake(name) for name in known})
        if allowed is not None and isinstance(value, str) and value not in allowed:
            yield f"{path}.{key}: {value!r} is not among {sorted(allowed)}"
        nested = nested_class(cls, prop)
        if nested is None:
            continue
        items = value if isinstance(value, list) else list(value.values()) if key == "files" else [value]
        for i, item in enumerate(items):
            yield from problems(nested, item, f"{path}.{key}[{i}]")


STACKS = [
    dict(stableAddress="elastic-ip", workerCodeOwner="pulumi", edgeAttach="custom-domain"),
    dict(stableAddress="global-accelerator", workerCodeOwner="wrangler", edgeAttach="route"),
]
REGIONS = [
    region(
        "us-east-1",
        "use1",
        vpcId="vpc-0123456789abcdef0",
        subnetIds=["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
    ),
    region("eu-central-1", "euc1"),
]


@pytest.mark.parametrize("options", STACKS, ids=lambda o: "-".join(o.values()))
def test_every_argument_exists_on_the_installed_sdk(options: dict[str, str], tmp_path: Path) -> None:
    # wrangler as code owner needs a real KV id in wrangler.toml: the repo's holds a placeholder.
    spec = (
        load_worker_spec(WRANGLER_TOML)
        if options["workerCodeOwner"] == "pulumi"
        else make_spec(tmp_path, kv_id="0123456789abcdef0123456789abcdef")
    )
    recorded, _ = run_stack(make_settings(REGIONS, **options), spec)
    checked, found = 0, []
    for resource in recorded.resources:
        if resource.typ.split(":")[0] not in PROVIDERS and not resource.typ.startswith("pulumi:providers:"):
            continue
        if resource.typ.startswith("pulumi:providers:") and resource.typ.split(":")[2] not in PROVIDERS:
            continue
        checked += 1
        found += list(problems(args_class(resource.typ), unwrap(resource.inputs), resource.name))
    assert checked > 20
    assert not found, "\n".join(found)


def test_a_misspelt_argument_and_a_bad_enum_are_caught() -> None:
    """The check itself can fail: a wrong name, a wrong nested key and an unknown binding type."""
    cls = args_class("cloudflare:index/workersScript:WorkersScript")
    bad = {"scriptNam": "x", "bindings": [{"name": "A", "type": "kv_namespace", "nameSpaceId": "1"}]}
    assert len(list(problems(cls, bad, "w"))) == 2
    assert list(problems(cls, {"bindings": [{"name": "A", "type": "kv-namespace"}]}, "w"))
    assert not list(problems(cls, {"bindings": [{"name": "A", "type": "kv_namespace"}]}, "w"))


@pytest.mark.parametrize(
    ("typ", "inputs", "fragment"),
    [
        ("aws:autoscaling/group:Group", {"healthCheckType": "EC3"}, "'EC3' is not among ['EC2', 'ELB']"),
        ("aws:autoscaling/group:Group", {"instanceRefresh": {"strategy": "Roling"}}, "'Roling' is not among"),
        (
            "aws:ec2/launchTemplate:LaunchTemplate",
            {"metadataOptions": {"httpTokens": "requried"}},
            "'requried'",
        ),
        (
            "aws:ssm/parameter:Parameter",
            {"type": "Secure"},
            "'Secure' is not among ['SecureString', 'String'",
        ),
        ("aws:globalaccelerator/listener:Listener", {"protocol": "tcp"}, "'tcp' is not among ['TCP', 'UDP']"),
    ],
)
def test_a_value_outside_aws_documented_list_is_caught(
    typ: str, inputs: dict[str, Any], fragment: str
) -> None:
    """The check reads pulumi-aws's prose lists ("Valid values are...", "Can be... or...")."""
    found = list(problems(args_class(typ), inputs, typ))
    assert len(found) == 1 and fragment in found[0], found
