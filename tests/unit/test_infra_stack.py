"""The Pulumi program under Pulumi's own mocks: every resource and its wiring, for one and three regions,
plus the checks mocks cannot make (binding types, flags, port ranges, secret marking, closed ports).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

# isort: off
# The harness first: it skips this module when the infra extra is absent (never in CI).
from tests.infra.harness import (
    ACCOUNT,
    CERT,
    SFU_SECRET,
    TLS_KEY,
    TURN_KEY,
    ZONE,
    Recorded,
    RecordingMocks,
    is_secret,
    make_settings,
    mock_public_ip,
    make_spec,
    random_secret,
    region,
    run_stack,
    synthetic_bundle,
    unwrap,
    walk,
)

# isort: on
from splitrelay.edge.config import SECRET_NAMES, VAR_NAMES, load_config
from splitrelay.edge.relays import parse_registry
from splitrelay.infra.edge import PLAIN_ENV, REGISTRY_KEY, SECRET_ENV
from splitrelay.infra.program import WRANGLER_TOML, relay_bundles
from splitrelay.infra.settings import METRICS_PORT, InfraConfigError, StackSettings, cloudflare_ip_ranges
from splitrelay.infra.wrangler import (
    Migration,
    WorkerSpec,
    WranglerConfigError,
    load_worker_spec,
    pending_migrations,
)
from splitrelay.relay.aws_bootstrap import (
    SFU_SECRET_PARAM,
    SIGNING_KEY_PARAM,
    TAG_REGION,
    TAG_SLOT,
    TAG_STACK,
)
from tests.infra.pulumi_loop import event_loop_for_pulumi  # noqa: F401 (autouse)

T_SCRIPT = "cloudflare:index/workersScript:WorkersScript"
T_KV = "cloudflare:index/workersKv:WorkersKv"
T_KV_NS = "cloudflare:index/workersKvNamespace:WorkersKvNamespace"
T_DNS = "cloudflare:index/dnsRecord:DnsRecord"
T_SG = "aws:ec2/securityGroup:SecurityGroup"
T_SSM = "aws:ssm/parameter:Parameter"
T_EIP = "aws:ec2/eip:Eip"
T_LT = "aws:ec2/launchTemplate:LaunchTemplate"
T_ASG = "aws:autoscaling/group:Group"
T_GA = "aws:globalaccelerator/accelerator:Accelerator"

ONE_REGION = [region("us-east-1", "use1", minCount=1, maxCount=2)]
THREE_REGIONS = [
    region(
        "us-east-1",
        "use1",
        minCount=2,
        maxCount=3,
        vpcId="vpc-0123456789abcdef0",
        subnetIds=["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
    ),
    region("eu-central-1", "euc1", minCount=1, maxCount=2, instanceType="c6i.large"),
    region("ap-southeast-2", "apse2", minCount=0, maxCount=1),
]


T_AOP_CERT = (
    "cloudflare:index/authenticatedOriginPullsHostnameCertificate:AuthenticatedOriginPullsHostnameCertificate"
)


@pytest.fixture
def spec(tmp_path: Path) -> WorkerSpec:
    return make_spec(tmp_path)


def bindings(recorded: Recorded) -> dict[str, dict[str, Any]]:
    script = recorded.one(T_SCRIPT)
    return {b["name"]: b for b in unwrap(script.inputs["bindings"])}


def bound_env(recorded: Recorded) -> dict[str, str]:
    """What the Worker's `env` holds as strings: every plain_text and secret_text binding."""
    return {n: b["text"] for n, b in bindings(recorded).items() if b["type"] in ("plain_text", "secret_text")}


# -- every resource ------------------------------------------------------------------------------------


def test_one_region_stack_has_every_resource(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(ONE_REGION), spec)
    assert recorded.type_counts() == {
        # Cloudflare: apps, generated keys, registry, Worker, domain, origin TLS, SSL rule
        "cloudflare:index/callsSfuApp:CallsSfuApp": 1,
        "cloudflare:index/callsTurnApp:CallsTurnApp": 1,
        "random:index/randomPassword:RandomPassword": 4,  # three edge keys and the wire key
        T_KV_NS: 1,
        T_KV: 1,
        T_SCRIPT: 1,
        "cloudflare:index/workersScriptSubdomain:WorkersScriptSubdomain": 1,
        "cloudflare:index/workersCustomDomain:WorkersCustomDomain": 1,
        "tls:index/privateKey:PrivateKey": 3,
        "tls:index/certRequest:CertRequest": 2,
        "cloudflare:index/originCaCertificate:OriginCaCertificate": 1,
        # Authenticated Origin Pulls: the stack's CA, the client certificate, its upload, per-hostname use
        "tls:index/selfSignedCert:SelfSignedCert": 1,
        "tls:index/locallySignedCert:LocallySignedCert": 1,
        T_AOP_CERT: 1,
        "cloudflare:index/authenticatedOriginPulls:AuthenticatedOriginPulls": 1,
        "cloudflare:index/ruleset:Ruleset": 1,
        # AWS in us-east-1: a new VPC (two public subnets), SG, IAM, SSM, slots, template, group
        "pulumi:providers:aws": 1,
        "aws:ec2/vpc:Vpc": 1,
        "aws:ec2/internetGateway:InternetGateway": 1,
        "aws:ec2/routeTable:RouteTable": 1,
        "aws:ec2/subnet:Subnet": 2,
        "aws:ec2/routeTableAssociation:RouteTableAssociation": 2,
        T_SG: 1,
        "aws:iam/role:Role": 1,
        "aws:iam/rolePolicy:RolePolicy": 1,
        "aws:iam/instanceProfile:InstanceProfile": 1,
        T_SSM: 6,
        T_EIP: 2,
        T_DNS: 2,
        T_LT: 1,
        T_ASG: 1,
        # the relay bundle: a private, encrypted bucket of this region with one object
        "aws:s3/bucket:Bucket": 1,
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": 1,
        "aws:s3/bucketOwnershipControls:BucketOwnershipControls": 1,
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": 1,
        "aws:s3/bucketObjectv2:BucketObjectv2": 1,
    }


def test_three_region_stack_with_global_accelerator(spec: WorkerSpec) -> None:
    settings = make_settings(THREE_REGIONS, stableAddress="global-accelerator")
    recorded, stack = run_stack(settings, spec)
    counts = recorded.type_counts()
    slots = 3 + 2 + 1
    assert counts["pulumi:providers:aws"] == 3 + 1  # one per region, one for the Global Accelerator API
    assert counts["aws:ec2/vpc:Vpc"] == 2  # us-east-1 uses the given VPC
    assert counts["aws:ec2/subnet:Subnet"] == 4
    assert counts[T_SG] == counts[T_LT] == counts[T_ASG] == counts["aws:iam/role:Role"] == 3
    assert counts[T_EIP] == counts[T_DNS] == counts[T_GA] == slots
    assert counts["aws:globalaccelerator/listener:Listener"] == 2 * slots
    assert counts["aws:globalaccelerator/endpointGroup:EndpointGroup"] == 2 * slots
    assert counts[T_SSM] == 6 * 3 + slots  # secrets per region + one endpoint-group list per slot
    assert counts[T_SCRIPT] == counts[T_KV] == 1
    ga_provider = recorded.named("aws-global-accelerator")
    assert ga_provider.inputs["region"] == "us-west-2"
    assert [r.region.key for r in stack.regions] == ["use1", "euc1", "apse2"]


# -- the Worker ----------------------------------------------------------------------------------------


def test_worker_is_uploaded_as_wrangler_describes_it(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(ONE_REGION), spec)
    script = unwrap(recorded.one(T_SCRIPT).inputs)
    assert script["accountId"] == ACCOUNT
    assert script["scriptName"] == spec.name == "splitrelay-edge"
    assert script["mainModule"] == "entry.py"
    assert script["contentType"] == "text/x-python"
    assert script["content"] == spec.main_module.read().decode()
    assert script["compatibilityDate"] == spec.compatibility_date
    assert script["compatibilityFlags"] == ["python_workers"]
    files = script["files"]
    assert sorted(files) == [m.name for m in spec.modules]
    for module in spec.modules:
        assert base64.b64decode(files[module.name]["contentBase64"]) == module.read()
        assert files[module.name]["contentType"] == module.content_type
        assert files[module.name]["contentSha256"] == module.sha256()
    assert script["migrations"] == {"newTag": "v1", "steps": [{"newSqliteClasses": ["CallRecordObject"]}]}
    directory = script["assets"]["directory"]
    assert not Path(directory).is_absolute() and Path(directory).resolve() == spec.assets_directory
    by_name = bindings(recorded)
    assert by_name["CALLS"] == {
        "name": "CALLS",
        "type": "durable_object_namespace",
        "className": "CallRecordObject",
    }
    namespace = recorded.one(T_KV_NS)
    assert by_name["RELAY_REGISTRY"] == {
        "name": "RELAY_REGISTRY",
        "type": "kv_namespace",
        "namespaceId": f"{namespace.name}-id",
    }
    assert by_name["RATE_LIMIT"]["type"] == "ratelimit"
    assert by_name["RATE_LIMIT"]["simple"] == {"limit": 100, "period": 60}
    assert by_name["ASSETS"] == {"name": "ASSETS", "type": "assets"}
    assert by_name["MAX_CALL_S"] == {"name": "MAX_CALL_S", "type": "plain_text", "text": "3600"}
    allowed = {"durable_object_namespace", "kv_namespace", "ratelimit", "assets", "plain_text", "secret_text"}
    assert {b["type"] for b in by_name.values()} <= allowed
    assert len(by_name) == len(unwrap(recorded.one(T_SCRIPT).inputs["bindings"]))  # no duplicate names


def test_worker_env_is_what_the_edge_reads(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(ONE_REGION), spec)
    assert set(SECRET_ENV) == set(SECRET_NAMES)
    assert set(PLAIN_ENV) - {"ALLOWED_ORIGINS"} <= set(VAR_NAMES)  # ALLOWED_ORIGINS: not read by the edge yet
    env = bound_env(recorded)
    sfu = recorded.one("cloudflare:index/callsSfuApp:CallsSfuApp")
    turn = recorded.one("cloudflare:index/callsTurnApp:CallsTurnApp")
    assert env["SFU_APP_ID"] == f"sfuapp{sfu.name}" and env["SFU_APP_SECRET"] == SFU_SECRET
    assert env["TURN_KEY_ID"] == f"turnkey{turn.name}" and env["TURN_KEY_API_TOKEN"] == TURN_KEY
    assert env["SFU_API_URL"] == "https://rtc.live.cloudflare.com/v1"
    assert env["ALLOWED_ORIGINS"] == "https://app.example.com"
    config = load_config(env)  # the edge's own reader accepts what Pulumi binds
    assert config.sfu.app_id == env["SFU_APP_ID"] and config.turn is not None
    assert config.relay_signing_key == random_secret("relay-signing-key").encode()
    assert config.token_signing_key == random_secret("token-signing-key").encode()


def test_the_repo_wrangler_toml_deploys(tmp_path: Path) -> None:
    if not WRANGLER_TOML.exists():
        pytest.skip("wrangler.toml not written yet (the edge lands it)")
    spec = load_worker_spec(WRANGLER_TOML)
    recorded, _ = run_stack(make_settings(ONE_REGION), spec)
    env = bound_env(recorded)
    load_config(env)
    assert env["SFU_APP_ID"].startswith("sfuapp")  # wrangler.toml's placeholder is replaced
    assert parse_registry(env["RELAYS"])[0].id == "use1-0"  # and so is its example registry
    assert unwrap(recorded.one(T_SCRIPT).inputs)["mainModule"] == spec.main_module.name
    # Only on the configured hostname: not also public on workers.dev (wrangler.toml workers_dev = false).
    subdomain = unwrap(recorded.one("cloudflare:index/workersScriptSubdomain:WorkersScriptSubdomain").inputs)
    assert subdomain == {
        "accountId": ACCOUNT, "scriptName": "splitrelay-edge", "enabled": False, "previewsEnabled": False
    }  # fmt: skip


def test_a_change_to_wrangler_toml_shows_up_in_the_resources(tmp_path: Path) -> None:
    settings = make_settings(ONE_REGION)
    before, _ = run_stack(settings, make_spec(tmp_path / "a"))
    make_spec(tmp_path / "b", date="2026-02-02", vars={"TURN_TTL_S": "900"})
    path = tmp_path / "b" / "wrangler.toml"
    path.write_text(
        path.read_text().replace(
            'compatibility_flags = ["python_workers"]', 'compatibility_flags = ["python_workers", "x"]'
        )
        + '\n[[migrations]]\ntag = "v2"\n'
        + 'renamed_classes = [{ from = "CallRecordObject", to = "CallRecord" }]\n'
    )
    path.write_text(path.read_text().replace('class_name = "CallRecordObject"', 'class_name = "CallRecord"'))
    (tmp_path / "b" / "edge" / "extra.py").write_text("X = 1\n")
    after, _ = run_stack(settings, load_worker_spec(path))
    old, new = unwrap(before.one(T_SCRIPT).inputs), unwrap(after.one(T_SCRIPT).inputs)
    assert (old["compatibilityDate"], new["compatibilityDate"]) == ("2025-11-01", "2026-02-02")
    assert new["compatibilityFlags"] == ["python_workers", "x"]
    assert "edge/extra.py" in new["files"] and "edge/extra.py" not in old["files"]
    assert new["migrations"]["newTag"] == "v2"
    assert new["migrations"]["steps"][1] == {
        "renamedClasses": [{"from": "CallRecordObject", "to": "CallRecord"}]
    }
    assert bindings(after)["CALLS"]["className"] == "CallRecord"
    assert bindings(after)["TURN_TTL_S"]["text"] == "900" and "TURN_TTL_S" not in bindings(before)


def test_wrangler_ships_the_code_in_the_other_workflow(tmp_path: Path) -> None:
    kv_id = "0123456789abcdef0123456789abcdef"
    settings = make_settings(ONE_REGION, workerCodeOwner="wrangler")
    recorded, stack = run_stack(settings, make_spec(tmp_path / "w", kv_id=kv_id))
    assert recorded.of_type(T_SCRIPT) == [] and recorded.of_type(T_KV_NS) == []
    assert recorded.one(T_KV).inputs["namespaceId"] == kv_id  # the namespace wrangler.toml binds
    domain = recorded.one("cloudflare:index/workersCustomDomain:WorkersCustomDomain")
    assert domain.inputs["service"] == "splitrelay-edge" and domain.inputs["hostname"] == "voice.example.com"
    with pytest.raises(ValueError, match="workerCodeOwner=wrangler needs"):
        run_stack(settings, make_spec(tmp_path / "placeholder"))
    assert {v.name for v in stack.edge.env if v.secret} == set(SECRET_NAMES)


def test_route_instead_of_custom_domain(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(ONE_REGION, edgeAttach="route"), spec)
    route = recorded.one("cloudflare:index/workersRoute:WorkersRoute")
    assert route.inputs == {
        "zoneId": route.inputs["zoneId"],
        "pattern": "voice.example.com/*",
        "script": "splitrelay-edge",
    }
    assert recorded.of_type("cloudflare:index/workersCustomDomain:WorkersCustomDomain") == []


# -- secrets ---------------------------------------------------------------------------------------------


def test_secrets_reach_the_engine_only_as_secrets(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(THREE_REGIONS, stableAddress="global-accelerator"), spec)
    secrets = recorded.secret_values()
    assert len(secrets) == 7  # + the wire key
    seen: dict[str, int] = {}
    for resource in recorded.resources:
        for path, value, secret in walk(resource.inputs):
            if not isinstance(value, str):
                continue
            for s in secrets:
                if s in value:
                    assert secret, f"{resource.typ} {resource.name}.{path} carries a secret unmarked"
                    seen[s] = seen.get(s, 0) + 1
            if not secret:
                assert "SECRET-" not in value, f"{resource.name}.{path}"
    assert set(seen) == secrets  # every secret is wired somewhere
    # In the Worker: every secret is a secret_text binding, and no plain_text binding holds one.
    by_name = bindings(recorded)
    assert {n for n, b in by_name.items() if b["type"] == "secret_text"} == set(SECRET_ENV)
    assert all(by_name[n]["text"] in secrets for n in SECRET_ENV)
    assert not [n for n, b in by_name.items() if b["type"] == "plain_text" and b["text"] in secrets]
    # In SSM: the relay's secrets and the TLS key are SecureString; the certificate is a String.
    for param in recorded.of_type(T_SSM):
        leaf = unwrap(param.inputs["name"]).rsplit("/", 1)[1]
        if leaf in (SIGNING_KEY_PARAM, SFU_SECRET_PARAM, "origin-tls-key", "wire-key"):
            assert param.inputs["type"] == "SecureString" and is_secret(param.inputs["value"]), leaf
        else:  # (pulumi_aws marks every parameter value secret in state, whatever its type)
            assert param.inputs["type"] == "String", leaf
    # User data goes to EC2 in the clear: it must carry none.
    for template in recorded.of_type(T_LT):
        text = base64.b64decode(unwrap(template.inputs["userData"])).decode()
        assert not any(s in text for s in secrets)


def test_edge_and_relays_share_the_signing_key_and_sfu_app(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(THREE_REGIONS), spec)
    env = bound_env(recorded)
    params = {unwrap(p.inputs["name"]): unwrap(p.inputs["value"]) for p in recorded.of_type(T_SSM)}
    for key in ("use1", "euc1", "apse2"):
        assert params[f"/splitrelay/test/{SIGNING_KEY_PARAM}"] == env["RELAY_SIGNING_KEY"]
        assert params[f"/splitrelay/test/{SFU_SECRET_PARAM}"] == env["SFU_APP_SECRET"]
        template = recorded.named(f"relay-{key}-lt")
        text = base64.b64decode(unwrap(template.inputs["userData"])).decode()
        assert f"--sfu-app-id {env['SFU_APP_ID']}" in text
    assert params["/splitrelay/test/origin-tls-key"] == TLS_KEY
    assert params["/splitrelay/test/origin-tls-cert"] == CERT


# -- AWS: security groups, slots, template, group ---------------------------------------------------------


def test_security_groups_open_only_https_and_the_media_range(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(THREE_REGIONS, relayPortRange="41000-41999"), spec)
    v4 = [c for c in cloudflare_ip_ranges() if ":" not in c]
    v6 = [c for c in cloudflare_ip_ranges() if ":" in c]
    groups = recorded.of_type(T_SG)
    assert len(groups) == 3
    for group in groups:
        ingress = {
            (
                r["protocol"],
                r["fromPort"],
                r["toPort"],
                tuple(r.get("cidrBlocks", ())),
                tuple(r.get("ipv6CidrBlocks", ())),
            )
            for r in unwrap(group.inputs["ingress"])
        }
        assert ingress == {
            ("tcp", 443, 443, tuple(v4), tuple(v6)),
            ("udp", 41000, 41999, ("0.0.0.0/0",), ()),
        }
        egress = unwrap(group.inputs["egress"])
        assert [(e["protocol"], e["cidrBlocks"], e["ipv6CidrBlocks"]) for e in egress] == [
            ("-1", ["0.0.0.0/0"], ["::/0"])
        ]
    vpcs = {unwrap(g.inputs["vpcId"]) for g in groups}
    assert "vpc-0123456789abcdef0" in vpcs and len(vpcs) == 3


def test_a_media_port_opens_one_port_per_worker_and_the_relay_uses_it(spec: WorkerSpec) -> None:
    """relayMediaPort (the default, 40000): each region's group opens one port per worker of its
    instance type (c7g.large: 2; c7g.4xlarge: 16; an unknown size: 64), and the user data runs `relay
    serve --media-port base` with the workers capped at that many, instead of a port range."""
    cases: list[tuple[dict[str, Any], str, tuple[int, int], int]] = [
        ({}, "c7g.large", (40000, 40001), 2),
        ({"relayMediaPort": 42000}, "c7g.4xlarge", (42000, 42015), 16),
        ({"relayMediaPort": 42000}, "c7g.metal", (42000, 42063), 64),
    ]
    for extra, instance_type, ports, cap in cases:
        regions = [{**ONE_REGION[0], "instanceType": instance_type}]
        recorded, _ = run_stack(make_settings(regions, **extra), spec)
        (group,) = recorded.of_type(T_SG)
        rules = unwrap(group.inputs["ingress"])
        udp = [(r["fromPort"], r["toPort"]) for r in rules if r["protocol"] == "udp"]
        assert udp == [ports]
        for template in recorded.of_type(T_LT):
            text = base64.b64decode(unwrap(template.inputs["userData"])).decode()
            assert f"--media-port {ports[0]}" in text and "--port-range" not in text
            assert f'if [ "$CORES" -gt {cap} ]; then CORES={cap}; fi' in text


def test_relay_port_range_is_the_explicit_fallback(spec: WorkerSpec) -> None:
    """relayPortRange alone: a port per call (`--port-range`), the whole range open, no worker cap."""
    recorded, _ = run_stack(make_settings(ONE_REGION, relayPortRange="41000-41099"), spec)
    (group,) = recorded.of_type(T_SG)
    udp = [(r["fromPort"], r["toPort"]) for r in unwrap(group.inputs["ingress"]) if r["protocol"] == "udp"]
    assert udp == [(41000, 41099)]
    for template in recorded.of_type(T_LT):
        text = base64.b64decode(unwrap(template.inputs["userData"])).decode()
        assert "--port-range 41000-41099" in text and "--media-port" not in text
        assert 'if [ "$CORES" -gt' not in text


def test_configured_allow_lists_replace_the_defaults(spec: WorkerSpec) -> None:
    settings = make_settings(
        ONE_REGION, controlAllowList=["203.0.113.0/24"], mediaAllowList=["198.51.100.0/24", "2001:db8::/32"]
    )
    recorded, _ = run_stack(settings, spec)
    rules = unwrap(recorded.one(T_SG).inputs["ingress"])
    assert [(r["protocol"], r.get("cidrBlocks"), r.get("ipv6CidrBlocks")) for r in rules] == [
        ("tcp", ["203.0.113.0/24"], None),
        ("udp", ["198.51.100.0/24"], ["2001:db8::/32"]),
    ]


def test_metrics_are_closed_unless_a_scraper_range_is_given(spec: WorkerSpec) -> None:
    closed, _ = run_stack(make_settings(ONE_REGION), spec)
    assert [r["fromPort"] for r in unwrap(closed.one(T_SG).inputs["ingress"])] == [443, 40000]
    settings = make_settings(ONE_REGION, metricsAllowList=["10.80.0.0/16"])
    recorded, _ = run_stack(settings, spec)
    (metrics,) = [r for r in unwrap(recorded.one(T_SG).inputs["ingress"]) if r["fromPort"] == METRICS_PORT]
    assert (metrics["protocol"], metrics["toPort"], metrics["cidrBlocks"]) == (
        "tcp",
        METRICS_PORT,
        ["10.80.0.0/16"],
    )


def test_slots_addresses_and_names(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(ONE_REGION), spec)
    eips = recorded.of_type(T_EIP)
    assert [e.inputs["tags"] for e in eips] == [
        {TAG_STACK: "test", TAG_REGION: "use1", TAG_SLOT: "0"},
        {TAG_STACK: "test", TAG_REGION: "use1", TAG_SLOT: "1"},
    ]
    records = recorded.of_type(T_DNS)
    assert [
        (r.inputs["name"], r.inputs["type"], r.inputs["content"], r.inputs["proxied"]) for r in records
    ] == [
        ("relay-use1-0.example.com", "A", mock_public_ip("relay-use1-0-eip"), True),
        ("relay-use1-1.example.com", "A", mock_public_ip("relay-use1-1-eip"), True),
    ]
    rule = unwrap(recorded.one("cloudflare:index/ruleset:Ruleset").inputs)
    assert rule["phase"] == "http_config_settings"
    assert rule["rules"][0]["actionParameters"] == {"ssl": "strict"}
    assert (
        rule["rules"][0]["expression"]
        == '(http.host in {"relay-use1-0.example.com" "relay-use1-1.example.com"})'
    )
    cert = recorded.one("cloudflare:index/originCaCertificate:OriginCaCertificate")
    assert cert.inputs["hostnames"] == ["*.example.com"] and cert.inputs["requestType"] == "origin-ecc"


def test_accelerated_slots_point_their_names_at_the_accelerator(spec: WorkerSpec) -> None:
    settings = make_settings(ONE_REGION, stableAddress="global-accelerator", relayPortRange="40000-40099")
    recorded, _ = run_stack(settings, spec)
    records = recorded.of_type(T_DNS)
    assert [(r.inputs["type"], r.inputs["content"]) for r in records] == [
        ("CNAME", "relay-use1-0-ga.awsglobalaccelerator.com"),
        ("CNAME", "relay-use1-1-ga.awsglobalaccelerator.com"),
    ]
    listeners = {
        r.name: (r.inputs["protocol"], unwrap(r.inputs["portRanges"]))
        for r in recorded.of_type("aws:globalaccelerator/listener:Listener")
    }
    assert listeners["relay-use1-0-ga-tcp"] == ("TCP", [{"fromPort": 443, "toPort": 443}])
    assert listeners["relay-use1-0-ga-udp"] == ("UDP", [{"fromPort": 40000, "toPort": 40099}])
    groups = recorded.of_type("aws:globalaccelerator/endpointGroup:EndpointGroup")
    assert {g.inputs["endpointGroupRegion"] for g in groups} == {"us-east-1"}
    assert all("endpointConfigurations" not in g.inputs for g in groups)  # the instance registers itself
    slot_params = {unwrap(p.inputs["name"]): unwrap(p.inputs["value"]) for p in recorded.of_type(T_SSM)}
    arns = json.loads(slot_params["/splitrelay/test/slots/use1-0/endpoint-groups"])
    assert arns == [
        "arn:aws:globalaccelerator::1:relay-use1-0-ga-tcp-group",
        "arn:aws:globalaccelerator::1:relay-use1-0-ga-udp-group",
    ]


def test_launch_template_and_group(spec: WorkerSpec) -> None:
    recorded, _ = run_stack(make_settings(THREE_REGIONS), spec)
    template = unwrap(recorded.named("relay-use1-lt").inputs)
    assert template["instanceType"] == "c7g.large"
    assert template["imageId"] == (
        "resolve:ssm:/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
    )
    assert unwrap(recorded.named("relay-euc1-lt").inputs)["imageId"].endswith("/amd64/hvm/ebs-gp3/ami-id")
    (interface,) = template["networkInterfaces"]
    assert interface == {
        "deviceIndex": 0,
        "associatePublicIpAddress": "true",  # apt and pip need egress before the Elastic IP is claimed
        "deleteOnTermination": "true",
        "securityGroups": ["relay-use1-sg-id"],
    }
    assert "vpcSecurityGroupIds" not in template
    assert template["iamInstanceProfile"] == {"arn": "arn:aws:iam::1:relay-use1-profile"}
    assert template["metadataOptions"]["httpTokens"] == "required"
    text = base64.b64decode(template["userData"]).decode()
    assert "--stack test --aws-region us-east-1 prepare --region-key use1" in text
    assert "--inference 10.80.3.7:7000" in text
    group = unwrap(recorded.named("relay-use1-asg").inputs)
    assert (group["minSize"], group["maxSize"], group["desiredCapacity"]) == (2, 3, 2)
    assert group["vpcZoneIdentifiers"] == ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
    assert group["launchTemplate"] == {"id": "relay-use1-lt-id", "version": "1"}
    assert {t["key"]: t["value"] for t in group["tags"]} == {TAG_STACK: "test", TAG_REGION: "use1"}
    created = unwrap(recorded.named("relay-euc1-asg").inputs)
    assert created["vpcZoneIdentifiers"] == ["relays-euc1-public-0-id", "relays-euc1-public-1-id"]
    zones = [unwrap(s.inputs)["availabilityZone"] for s in recorded.of_type("aws:ec2/subnet:Subnet")][:2]
    assert zones == ["zone-a", "zone-b"]


def test_instance_role_reads_only_this_stacks_parameters(spec: WorkerSpec) -> None:
    for choice, has_ga in (("elastic-ip", False), ("global-accelerator", True)):
        recorded, _ = run_stack(make_settings(ONE_REGION, stableAddress=choice), spec)
        policy = json.loads(unwrap(recorded.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"]))
        by_action = {a: s["Resource"] for s in policy["Statement"] for a in s["Action"]}
        assert by_action["ssm:GetParameters"] == "arn:aws:ssm:us-east-1:*:parameter/splitrelay/test/*"
        assert "ec2:AssociateAddress" in by_action and "autoscaling:SetInstanceHealth" in by_action
        assert ("globalaccelerator:AddEndpoints" in by_action) == has_ga
        assert not [a for a in by_action if a.endswith("*")]


ONLY_ON_STAR = {"ec2:DescribeAddresses": "EC2 Describe* calls support no resource-level permission"}
"""Actions AWS authorizes only on Resource "*", each with why (every other action names ARNs)."""
TAGGED_TYPES = {"ec2:": T_EIP, "autoscaling:": T_ASG, "globalaccelerator:": T_GA}
"""Per action prefix, the resource type whose tags the policy's conditions match."""


def _stack_tag_of(inputs: dict[str, Any]) -> str | None:
    tags = unwrap(inputs.get("tags"))
    if isinstance(tags, list):  # the auto-scaling group's tags are {key, value, propagateAtLaunch}
        return next((t["value"] for t in tags if t["key"] == "splitrelay:stack"), None)
    return None if tags is None else tags.get("splitrelay:stack")


def test_instance_role_acts_only_on_this_stacks_tagged_resources(spec: WorkerSpec) -> None:
    """Least privilege: an action on "*" is one AWS allows on "*" only; every write names ARNs and is
    conditioned on the stack tag, which the program sets on the very resources it acts on."""
    for choice in ("elastic-ip", "global-accelerator"):
        settings = make_settings(ONE_REGION, stableAddress=choice)
        recorded, _ = run_stack(settings, spec)
        policy = json.loads(unwrap(recorded.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"]))
        for statement in policy["Statement"]:
            resources = statement["Resource"]
            resources = [resources] if isinstance(resources, str) else resources
            for action in statement["Action"]:
                if action.startswith(("ssm:", "s3:")):
                    continue  # under the stack prefix; the bundle object: tests of their own
                if "*" in resources:
                    assert action in ONLY_ON_STAR, f"{action} on * (AWS supports resource ARNs for it)"
                    continue
                assert all(r.startswith("arn:aws:") for r in resources), (action, resources)
                condition = statement.get("Condition")
                assert condition == {"StringEquals": {"aws:ResourceTag/splitrelay:stack": "test"}}, action
                typ = next(t for prefix, t in TAGGED_TYPES.items() if action.startswith(prefix))
                tagged = recorded.of_type(typ)
                assert tagged and all(_stack_tag_of(r.inputs) == "test" for r in tagged), (action, typ)
        if choice == "elastic-ip":
            assert not recorded.of_type(T_GA)
        template = unwrap(recorded.one(T_LT).inputs)
        instance_tags = [t for t in template["tagSpecifications"] if t["resourceType"] == "instance"]
        assert instance_tags[0]["tags"]["splitrelay:stack"] == "test"  # AssociateAddress checks the instance


# -- Authenticated Origin Pulls --------------------------------------------------------------------------


def test_only_this_zones_cloudflare_gets_past_the_relays_tls_handshake(spec: WorkerSpec) -> None:
    """Per-hostname Authenticated Origin Pulls with the stack's own CA: every relay hostname, in every
    region, uses the uploaded client certificate; the relays get the CA (public) through SSM."""
    recorded, stack = run_stack(make_settings(THREE_REGIONS), spec)
    ca = unwrap(recorded.one("tls:index/selfSignedCert:SelfSignedCert").inputs)
    assert ca["isCaCertificate"] is True and set(ca["allowedUses"]) == {"cert_signing", "crl_signing"}
    client = unwrap(recorded.one("tls:index/locallySignedCert:LocallySignedCert").inputs)
    assert client["allowedUses"] == ["client_auth", "digital_signature"]
    assert client["caCertPem"] == f"{CERT}relay-origin-pull-ca"
    assert client["validityPeriodHours"] > client["earlyRenewalHours"] > 0 < ca["validityPeriodHours"]
    assert ca["validityPeriodHours"] >= 4 * client["validityPeriodHours"]  # the CA outlives renewals
    upload = recorded.one(T_AOP_CERT)
    assert is_secret(upload.inputs["privateKey"]) and unwrap(upload.inputs["zoneId"]) == ZONE
    assert unwrap(upload.inputs["certificate"]) == f"{CERT}relay-origin-pull-cert"
    configured = {
        c["hostname"]: c
        for r in recorded.of_type("cloudflare:index/authenticatedOriginPulls:AuthenticatedOriginPulls")
        for c in unwrap(r.inputs)["configs"]
    }
    assert set(configured) == {h for r in stack.regions for h in r.hostnames}
    assert all(
        c == {"certId": "relay-origin-pull-upload-id", "enabled": True, "hostname": h}
        for h, c in configured.items()
    )
    cas = [
        unwrap(p.inputs)
        for p in recorded.of_type(T_SSM)
        if unwrap(p.inputs)["name"].endswith("/origin-pull-ca")
    ]
    assert len(cas) == 3 and all(
        p["value"] == f"{CERT}relay-origin-pull-ca" and p["type"] == "String" for p in cas
    )


# -- the relay bundle --------------------------------------------------------------------------------------


def test_relays_install_this_checkouts_bundle_from_one_private_object(spec: WorkerSpec) -> None:
    """No public package name at boot: the bundle's own S3 object, readable by the relay role alone,
    hash-checked by user data before pip installs it with --no-index."""
    recorded, _ = run_stack(make_settings(ONE_REGION), spec)
    obj = unwrap(recorded.one("aws:s3/bucketObjectv2:BucketObjectv2").inputs)
    bucket = unwrap(recorded.one("aws:s3/bucket:Bucket").inputs)
    name = f"{bucket['bucketPrefix']}0001"
    assert bucket["bucketPrefix"] == "splitrelay-use1-" and bucket["forceDestroy"] is True
    private = unwrap(recorded.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs)
    assert all(
        private[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    owner = unwrap(recorded.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls").inputs)
    assert owner["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    sse = unwrap(
        recorded.one(
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
        ).inputs
    )
    assert sse["rules"] == [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]
    assert obj["key"].startswith("relay/splitrelay-arm64-py3.12-") and obj["key"].endswith(".tar.gz")
    policy = json.loads(unwrap(recorded.one("aws:iam/rolePolicy:RolePolicy").inputs["policy"]))
    s3 = [s for s in policy["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert s3 == [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::{name}/{obj['key']}"}
    ]
    template = unwrap(recorded.one(T_LT).inputs)
    text = base64.b64decode(template["userData"]).decode()
    sha = obj["key"].rsplit("-", 1)[1].removesuffix(".tar.gz")
    (line,) = [line for line in text.splitlines() if "sha256sum --check" in line]
    assert line.startswith(f"echo '{sha}") and len(line.split("'")[1].split()[0]) == 64
    assert f"'https://{name}.s3.us-east-1.amazonaws.com/{obj['key']}'" in text
    (pip,) = [line for line in text.splitlines() if "bin/pip install" in line]
    assert "--no-index" in pip and pip.endswith("'splitrelay[relay]==0.1.0'")
    assert text.index("sha256sum --check") < text.index("tar -xzf") < text.index("bin/pip install")


def test_an_unchanged_bundle_leaves_the_user_data_unchanged(spec: WorkerSpec, tmp_path: Path) -> None:
    """A second `pulumi up` with the same checkout renders the same launch template: no instance refresh."""
    bundle = synthetic_bundle(tmp_path, tmp_path, arch="arm64", python="3.12")
    settings = make_settings(ONE_REGION, relayBundle=str(bundle.path))
    first = unwrap(run_stack(settings, spec)[0].one(T_LT).inputs)["userData"]
    second = unwrap(run_stack(settings, spec)[0].one(T_LT).inputs)["userData"]
    assert first == second and bundle.sha256 in base64.b64decode(first).decode()


def test_a_given_bundle_for_another_platform_is_refused(spec: WorkerSpec, tmp_path: Path) -> None:
    bundle = synthetic_bundle(tmp_path, tmp_path, arch="amd64", python="3.12")
    settings = make_settings(ONE_REGION, relayBundle=str(bundle.path))  # c7g: arm64
    with pytest.raises(
        InfraConfigError, match=r"relayBundle: is for amd64 / Python 3.12, but a region needs arm64"
    ):
        relay_bundles(settings)


# -- the relay registry -------------------------------------------------------------------------------------


def test_registry_is_what_the_edge_parses(spec: WorkerSpec) -> None:
    settings: StackSettings = make_settings(THREE_REGIONS)
    recorded, _ = run_stack(settings, spec)
    entry = recorded.one(T_KV)
    assert entry.inputs["keyName"] == REGISTRY_KEY
    relays = parse_registry(entry.inputs["value"], "RELAY_REGISTRY:relays")
    assert [r.id for r in relays] == ["use1-0", "use1-1", "use1-2", "euc1-0", "euc1-1", "apse2-0"]
    assert [r.health for r in relays] == ["healthy", "healthy", "down", "healthy", "down", "down"]
    names = {f"https://{r.inputs['name']}" for r in recorded.of_type(T_DNS)}
    assert {r.control_url for r in relays} == names
    sydney = relays[-1]
    assert (sydney.region, sydney.continent, sydney.latitude) == ("ap-southeast-2", "OC", -33.87)
    assert bound_env(recorded)["RELAYS"] == entry.inputs["value"]


# -- stack configuration as Pulumi hands it over -----------------------------------------------------------


def test_settings_from_pulumi_config_match_the_stack_file(tmp_path: Path) -> None:
    import pulumi
    import yaml

    from splitrelay.infra.cost import settings_from_stack_file
    from splitrelay.infra.program import settings_from_pulumi
    from splitrelay.infra.settings import InfraConfigError

    example = Path(__file__).resolve().parents[2] / "infra" / "Pulumi.example.yaml"
    document = yaml.safe_load(example.read_text())["config"]
    # Pulumi passes every value as a string; lists and objects as JSON.
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in document.items()}
    stack_file = tmp_path / "Pulumi.test.yaml"
    stack_file.write_text(example.read_text())
    pulumi.runtime.set_mocks(RecordingMocks(Recorded()), project="splitrelay", stack="test", preview=False)
    try:
        pulumi.runtime.set_all_config(config)
        assert settings_from_pulumi() == settings_from_stack_file(stack_file)
        pulumi.runtime.set_all_config({**config, "splitrelay:regions": "us-east-1"})
        with pytest.raises(InfraConfigError, match="config regions: must be a list or object"):
            settings_from_pulumi()
    finally:
        pulumi.runtime.set_all_config({})


# -- Durable Object migrations across updates (wrangler's rule: only the steps after the applied tag) --


def _with_v2(root: Path) -> WorkerSpec:
    make_spec(root)
    path = root / "wrangler.toml"
    path.write_text(path.read_text() + '\n[[migrations]]\ntag = "v2"\nnew_sqlite_classes = ["Extra"]\n')
    return load_worker_spec(path)


def test_an_update_of_a_current_worker_sends_no_migration(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    recorded, _ = run_stack(make_settings(ONE_REGION), spec, deployed={spec.name: "v1"})
    assert "migrations" not in unwrap(recorded.one(T_SCRIPT).inputs)


def test_an_added_class_sends_only_the_later_step_with_old_tag(tmp_path: Path) -> None:
    spec = _with_v2(tmp_path)
    recorded, _ = run_stack(make_settings(ONE_REGION), spec, deployed={spec.name: "v1"})
    assert unwrap(recorded.one(T_SCRIPT).inputs)["migrations"] == {
        "oldTag": "v1",
        "newTag": "v2",
        "steps": [{"newSqliteClasses": ["Extra"]}],
    }


def test_a_worker_that_wrangler_deployed_first_is_taken_as_it_is(tmp_path: Path) -> None:
    spec = _with_v2(tmp_path)
    # wrangler already applied both steps: Pulumi's upload must not repeat either (code 10079).
    recorded, _ = run_stack(make_settings(ONE_REGION), spec, deployed={spec.name: "v2", "other-worker": "v9"})
    assert "migrations" not in unwrap(recorded.one(T_SCRIPT).inputs)


def test_an_applied_tag_missing_from_wrangler_toml_is_refused_by_name() -> None:
    steps = (Migration("v1", new_sqlite_classes=("CallRecordObject",)),)
    with pytest.raises(WranglerConfigError, match=r"migrations: Cloudflare has applied migration tag 'v7'"):
        pending_migrations(steps, "v7", "splitrelay-edge")
    assert pending_migrations(steps, None, "splitrelay-edge") == (None, steps)
    assert pending_migrations(steps, "", "splitrelay-edge") == (None, steps)
    assert pending_migrations(steps, "v1", "splitrelay-edge") == ("v1", ())
