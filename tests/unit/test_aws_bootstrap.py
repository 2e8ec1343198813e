"""relay/aws_bootstrap.py against moto (in-process AWS: SSM, EC2, Auto Scaling) and, for Global
Accelerator (which moto does not implement), botocore's Stubber with the real API's request shapes."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber
from typer.testing import CliRunner, Result

try:
    from moto import mock_aws
except ImportError:  # moto belongs to the dev extra; only a developer machine may lack it
    if os.environ.get("CI"):
        raise
    pytest.skip("moto not installed (pip install 'moto[ec2,ssm]')", allow_module_level=True)

from splitrelay.cli.main import app
from splitrelay.relay import aws_bootstrap
from splitrelay.relay.aws_bootstrap import (
    SFU_SECRET_ENV,
    SIGNING_KEY_ENV,
    TAG_REGION,
    TAG_SLOT,
    TAG_STACK,
    BootstrapError,
    check_health,
    claim_elastic_ip,
    deregister_accelerator_endpoint,
    endpoint_groups_for,
    instance_id_from_imds,
    load_origin_tls,
    load_relay_secrets,
    parameter_prefix,
    probe,
    public_ipv4_from_imds,
    register_accelerator_endpoint,
    release_elastic_ip,
    slot_parameter,
    write_origin_tls,
)


def bootstrap(args: list[str]) -> Result:
    """`splitrelay relay bootstrap ARGS`, as the instance's systemd units run it."""
    return CliRunner().invoke(app, ["relay", "bootstrap", *args])


REGION = "us-east-1"
PREFIX = "/splitrelay/prod"
SIGNING_KEY = "k" * 40
SFU_SECRET = "sfu-secret-value-0123456789"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture(autouse=True)
def no_instance_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run on loopback only: the real IMDS lookup (169.254.169.254) must never be reached."""

    async def unreachable() -> str:
        raise AssertionError("a test reached the instance metadata service")

    monkeypatch.setattr(aws_bootstrap, "_instance_id", unreachable)


@pytest.fixture(autouse=True)
def address_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """prepare's claimed-address file, kept out of the machine's /run."""
    path = tmp_path / "run" / "public-address"
    monkeypatch.setattr(aws_bootstrap, "ADDRESS_FILE", path)
    return path


@pytest.fixture(autouse=True)
def relay_id_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """prepare's relay-id file, kept out of the machine's /run."""
    path = tmp_path / "run" / "relay-id"
    monkeypatch.setattr(aws_bootstrap, "RELAY_ID_FILE", path)
    return path


WIRE_KEY = "ab" * 32  # hex of 32 bytes


def put(ssm: Any, leaf: str, value: str, secure: bool = True) -> None:
    ssm.put_parameter(Name=f"{PREFIX}/{leaf}", Value=value, Type="SecureString" if secure else "String")


def test_env_names_are_the_relay_clis() -> None:
    from splitrelay.cli import relay as relay_cli

    assert (SIGNING_KEY_ENV, SFU_SECRET_ENV) == (relay_cli.SIGNING_KEY_ENV, relay_cli.SFU_SECRET_ENV)
    assert parameter_prefix("prod") == PREFIX
    assert (
        slot_parameter(PREFIX, "use1", 2, "endpoint-groups")
        == "/splitrelay/prod/slots/use1-2/endpoint-groups"
    )
    with pytest.raises(BootstrapError, match="stack name"):
        parameter_prefix("a/b")
    with pytest.raises(BootstrapError, match="prefix must be an SSM path"):
        load_relay_secrets(None, "splitrelay/prod/")


# -- secrets -------------------------------------------------------------------------------------------


def test_load_relay_secrets_decrypts_secure_strings(aws: None) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    put(ssm, "relay-signing-key", SIGNING_KEY)
    put(ssm, "sfu-app-secret", SFU_SECRET + "\n")
    put(ssm, "wire-key", WIRE_KEY)
    assert load_relay_secrets(ssm, PREFIX) == {
        SIGNING_KEY_ENV: SIGNING_KEY,
        SFU_SECRET_ENV: SFU_SECRET,
        "SPLITRELAY_WIRE_KEY": WIRE_KEY,
    }


def test_missing_parameters_are_named_never_values(aws: None) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    with pytest.raises(BootstrapError) as info:
        load_relay_secrets(ssm, PREFIX)
    assert (
        "missing SSM parameter(s): /splitrelay/prod/relay-signing-key, /splitrelay/prod/sfu-app-secret"
        in str(info.value)
    )
    put(ssm, "relay-signing-key", SIGNING_KEY)
    put(ssm, "wire-key", WIRE_KEY)
    with pytest.raises(BootstrapError) as info:
        load_relay_secrets(ssm, PREFIX)
    assert str(info.value).startswith("missing SSM parameter(s): /splitrelay/prod/sfu-app-secret (")


def test_blank_and_short_values_are_refused_without_echoing_them(aws: None) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    put(ssm, "relay-signing-key", "short-key-value")
    put(ssm, "sfu-app-secret", "   ")
    put(ssm, "wire-key", WIRE_KEY)
    with pytest.raises(BootstrapError) as info:
        load_relay_secrets(ssm, PREFIX)
    assert "empty SSM parameter(s): /splitrelay/prod/sfu-app-secret" in str(info.value)
    ssm.put_parameter(Name=f"{PREFIX}/sfu-app-secret", Value=SFU_SECRET, Type="SecureString", Overwrite=True)
    with pytest.raises(BootstrapError) as info:
        load_relay_secrets(ssm, PREFIX)
    message = str(info.value)
    assert "relay-signing-key: signing key must be at least 32 bytes, got 15" in message
    assert "short-key-value" not in message and SFU_SECRET not in message


def test_origin_tls_files(aws: None, tmp_path: Path) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    put(ssm, "origin-tls-cert", CERT, secure=False)
    put(ssm, "origin-tls-key", "not a key")
    with pytest.raises(BootstrapError, match="origin-tls-key: not a PEM private key"):
        load_origin_tls(ssm, PREFIX)
    ssm.put_parameter(Name=f"{PREFIX}/origin-tls-key", Value=KEY, Type="SecureString", Overwrite=True)
    with pytest.raises(BootstrapError, match="origin-pull-ca"):
        write_origin_tls(ssm, PREFIX, tmp_path / "tls")  # the Authenticated Origin Pulls CA is required
    put(ssm, "origin-pull-ca", "not a certificate", secure=False)
    with pytest.raises(BootstrapError, match="origin-pull-ca: not a PEM certificate"):
        write_origin_tls(ssm, PREFIX, tmp_path / "tls")
    ssm.put_parameter(Name=f"{PREFIX}/origin-pull-ca", Value=CERT, Type="String", Overwrite=True)
    cert_path, key_path, ca_path = write_origin_tls(ssm, PREFIX, tmp_path / "tls")
    assert cert_path.read_text() == CERT and key_path.read_text() == KEY and ca_path.read_text() == CERT
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert [
        p.name for p in (tmp_path / "tls").iterdir() if p.name.startswith(".")
    ] == []  # no temp files left


# -- address slots -----------------------------------------------------------------------------------------


def instances(ec2: Any, count: int) -> list[str]:
    response = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=count, MaxCount=count, InstanceType="c7g.large"
    )
    return [i["InstanceId"] for i in response["Instances"]]


def pool(ec2: Any, count: int, stack: str = "prod", region_key: str = "use1") -> list[str]:
    ids = []
    for slot in range(count):
        tags = [
            {"Key": TAG_STACK, "Value": stack},
            {"Key": TAG_REGION, "Value": region_key},
            {"Key": TAG_SLOT, "Value": str(slot)},
        ]
        address = ec2.allocate_address(
            Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": tags}]
        )
        ids.append(address["AllocationId"])
    return ids


def test_instances_claim_the_lowest_free_slot(aws: None) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    allocations = pool(ec2, 2)
    pool(ec2, 2, stack="other")  # another stack's addresses are never touched
    a, b, c = instances(ec2, 3)
    first = claim_elastic_ip(ec2, a, "prod", "use1")
    assert (first.slot, first.allocation_id) == (0, allocations[0])
    assert claim_elastic_ip(ec2, a, "prod", "use1") == first  # a restart keeps its slot
    assert claim_elastic_ip(ec2, b, "prod", "use1").slot == 1
    with pytest.raises(BootstrapError, match="all 2 Elastic IPs of prod/use1 are in use"):
        claim_elastic_ip(ec2, c, "prod", "use1")
    assert release_elastic_ip(ec2, a, "prod", "use1") == first
    assert release_elastic_ip(ec2, a, "prod", "use1") is None
    assert claim_elastic_ip(ec2, c, "prod", "use1").slot == 0
    held = {x["AllocationId"]: x.get("InstanceId") for x in ec2.describe_addresses()["Addresses"]}
    assert (held[allocations[0]], held[allocations[1]]) == (c, b)


def test_a_lost_race_moves_on_to_the_next_slot(aws: None) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    pool(ec2, 2)
    winner, loser = instances(ec2, 2)
    stale = ec2.describe_addresses()  # what the loser saw before the winner's claim landed

    class StaleView:
        def __init__(self, client: Any) -> None:
            self.client = client

        def describe_addresses(self, **kwargs: Any) -> Any:
            return stale

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

    assert claim_elastic_ip(ec2, winner, "prod", "use1").slot == 0
    assert claim_elastic_ip(StaleView(ec2), loser, "prod", "use1").slot == 1


def test_pool_problems_are_explained(aws: None) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    (instance,) = instances(ec2, 1)
    with pytest.raises(
        BootstrapError, match="no Elastic IP tagged splitrelay:stack=prod, splitrelay:region=use1"
    ):
        claim_elastic_ip(ec2, instance, "prod", "use1")
    tags = [{"Key": TAG_STACK, "Value": "prod"}, {"Key": TAG_REGION, "Value": "use1"}]
    ec2.allocate_address(Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": tags}])
    with pytest.raises(BootstrapError, match="no integer splitrelay:slot tag"):
        claim_elastic_ip(ec2, instance, "prod", "use1")


# -- Global Accelerator --------------------------------------------------------------------------------------

GROUP = "arn:aws:globalaccelerator::123456789012:accelerator/a/listener/l/endpoint-group/g"


def test_endpoint_groups_of_a_slot(aws: None) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    name = slot_parameter(PREFIX, "use1", 0, "endpoint-groups")
    with pytest.raises(
        BootstrapError, match="missing SSM parameter /splitrelay/prod/slots/use1-0/endpoint-groups"
    ):
        endpoint_groups_for(ssm, PREFIX, "use1", 0)
    ssm.put_parameter(Name=name, Value="[1, 2]", Type="String")
    with pytest.raises(BootstrapError, match="not a JSON list of endpoint group ARNs"):
        endpoint_groups_for(ssm, PREFIX, "use1", 0)
    ssm.put_parameter(Name=name, Value=json.dumps([GROUP]), Type="String", Overwrite=True)
    assert endpoint_groups_for(ssm, PREFIX, "use1", 0) == [GROUP]


def describe(*endpoints: str) -> dict[str, Any]:
    return {
        "EndpointGroup": {
            "EndpointGroupArn": GROUP,
            "EndpointDescriptions": [
                {"EndpointId": e, "Weight": 128, "HealthState": "HEALTHY"} for e in endpoints
            ],
        }
    }


def test_register_replaces_a_previous_holder_of_the_slot() -> None:
    ga = boto3.client(
        "globalaccelerator", region_name="us-west-2", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(ga) as stub:
        stub.add_response(
            "describe_endpoint_group", describe("i-0000000000000dead"), {"EndpointGroupArn": GROUP}
        )
        stub.add_response(
            "remove_endpoints",
            {},
            {"EndpointGroupArn": GROUP, "EndpointIdentifiers": [{"EndpointId": "i-0000000000000dead"}]},
        )
        stub.add_response(
            "add_endpoints",
            {"EndpointDescriptions": [], "EndpointGroupArn": GROUP},
            {
                "EndpointGroupArn": GROUP,
                "EndpointConfigurations": [
                    {"EndpointId": "i-0123456789abcdef0", "Weight": 128, "ClientIPPreservationEnabled": True}
                ],
            },
        )
        register_accelerator_endpoint(ga, [GROUP], "i-0123456789abcdef0")
        stub.assert_no_pending_responses()
    with Stubber(ga) as stub:  # already registered: nothing to change
        stub.add_response(
            "describe_endpoint_group", describe("i-0123456789abcdef0"), {"EndpointGroupArn": GROUP}
        )
        register_accelerator_endpoint(ga, [GROUP], "i-0123456789abcdef0")
        stub.add_response(
            "describe_endpoint_group", describe("i-0123456789abcdef0"), {"EndpointGroupArn": GROUP}
        )
        stub.add_response(
            "remove_endpoints",
            {},
            {"EndpointGroupArn": GROUP, "EndpointIdentifiers": [{"EndpointId": "i-0123456789abcdef0"}]},
        )
        deregister_accelerator_endpoint(ga, [GROUP], "i-0123456789abcdef0")
        stub.assert_no_pending_responses()


# -- health ------------------------------------------------------------------------------------------------


def client_for(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_probe_retries_then_gives_up() -> None:
    answers = iter([503, 200])
    async with client_for(lambda request: httpx.Response(next(answers))) as client:
        assert await probe(client, "http://127.0.0.1:8700/healthz", attempts=2, interval=0)
    async with client_for(lambda request: httpx.Response(500)) as client:
        assert not await probe(client, "http://127.0.0.1:8700/healthz", attempts=3, interval=0)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with client_for(refuse) as client:
        assert not await probe(client, "http://127.0.0.1:8700/healthz", attempts=1, interval=0)
        with pytest.raises(ValueError, match=r"attempts must be 1\.\.10"):
            await probe(client, "http://127.0.0.1:8700/healthz", attempts=0)


async def test_a_dead_relay_is_reported_to_the_group(aws: None) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    template = ec2.create_launch_template(
        LaunchTemplateName="relay",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "c7g.large"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="relays",
        LaunchTemplate={"LaunchTemplateId": template},
        MinSize=1,
        MaxSize=1,
        AvailabilityZones=[f"{REGION}a"],
    )
    instance = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"][0]["Instances"][0][
        "InstanceId"
    ]

    async def alive() -> bool:
        return True

    async def dead() -> bool:
        return False

    def health() -> str:
        return str(
            autoscaling.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"][0][
                "HealthStatus"
            ]
        )

    assert await check_health(autoscaling, instance, alive)
    assert health().upper() == "HEALTHY"
    assert not await check_health(autoscaling, instance, dead)
    assert health().upper() == "UNHEALTHY"


# -- instance identity and the command line ------------------------------------------------------------------


async def test_instance_id_over_imdsv2() -> None:
    def imds(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path == "/latest/api/token":
            assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "60"
            return httpx.Response(200, text="TOKEN")
        assert request.headers["X-aws-ec2-metadata-token"] == "TOKEN"
        return httpx.Response(200, text="i-0123456789abcdef0\n")

    async with client_for(imds) as client:
        assert await instance_id_from_imds(client, "http://imds.test") == "i-0123456789abcdef0"
    async with client_for(lambda r: httpx.Response(200, text="<html>")) as client:
        with pytest.raises(BootstrapError, match="unexpected instance id"):
            await instance_id_from_imds(client, "http://imds.test")


def test_exec_puts_secrets_in_the_environment_only(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    put(ssm, "relay-signing-key", SIGNING_KEY)
    put(ssm, "sfu-app-secret", SFU_SECRET)
    put(ssm, "wire-key", WIRE_KEY)
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(
        "splitrelay.relay.aws_bootstrap.os.execvpe", lambda f, argv, env: calls.append((f, argv, env))
    )

    async def public_ip() -> str:
        return "52.95.110.7"

    monkeypatch.setattr(aws_bootstrap, "_public_ipv4", public_ip)
    command = ["splitrelay", "relay", "serve", "--workers", "2"]
    assert bootstrap(["--stack", "prod", "--aws-region", REGION, "exec", "--", *command]).exit_code == 0
    ((file, argv, env),) = calls
    assert (file, argv) == ("splitrelay", command)
    assert env[SIGNING_KEY_ENV] == SIGNING_KEY and env[SFU_SECRET_ENV] == SFU_SECRET
    assert not any(SIGNING_KEY in a or SFU_SECRET in a for a in argv)
    # The Elastic IP reaches the relay as --public-address (through its environment variable).
    assert env[aws_bootstrap.PUBLIC_ADDRESS_ENV] == "52.95.110.7"
    assert aws_bootstrap.RELAY_ID_ENV not in env  # prepare left no relay id: the relay sends no heartbeats


def test_exec_advertises_the_address_prepare_claimed_not_metadata(
    aws: None, monkeypatch: pytest.MonkeyPatch, address_file: Path
) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    put(ssm, "relay-signing-key", SIGNING_KEY)
    put(ssm, "sfu-app-secret", SFU_SECRET)
    put(ssm, "wire-key", WIRE_KEY)
    calls: list[dict[str, str]] = []
    monkeypatch.setattr("splitrelay.relay.aws_bootstrap.os.execvpe", lambda f, argv, env: calls.append(env))

    async def stale_metadata() -> str:
        return "52.95.110.7"  # the address before the Elastic IP association

    monkeypatch.setattr(aws_bootstrap, "_public_ipv4", stale_metadata)
    aws_bootstrap.remember_public_address(address_file, "3.120.0.9")
    assert (address_file.stat().st_mode & 0o777) == 0o644
    assert bootstrap(["--stack", "prod", "--aws-region", REGION, "exec", "--", "splitrelay"]).exit_code == 0
    assert calls[0][aws_bootstrap.PUBLIC_ADDRESS_ENV] == "3.120.0.9"
    with pytest.raises(ValueError):
        aws_bootstrap.remember_public_address(address_file, "not-an-address")
    address_file.write_text("garbage\n")
    assert aws_bootstrap.claimed_public_address(address_file) is None


async def test_public_ipv4_over_imdsv2() -> None:
    def imds(text: str, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "PUT":
                return httpx.Response(200, text="TOKEN")
            assert request.url.path == "/latest/meta-data/public-ipv4"
            return httpx.Response(status, text=text)

        return handler

    async with client_for(imds("52.95.110.7\n")) as client:
        assert await public_ipv4_from_imds(client, "http://imds.test") == "52.95.110.7"
    async with client_for(imds("", 404)) as client:
        assert await public_ipv4_from_imds(client, "http://imds.test") is None
    async with client_for(imds("<html>")) as client:
        with pytest.raises(BootstrapError, match="unexpected public-ipv4"):
            await public_ipv4_from_imds(client, "http://imds.test")


def test_prepare_claims_a_slot_and_writes_tls(
    aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, relay_id_file: Path
) -> None:
    ec2 = boto3.client("ec2", region_name=REGION)
    ssm = boto3.client("ssm", region_name=REGION)
    pool(ec2, 1)
    (instance,) = instances(ec2, 1)
    put(ssm, "origin-tls-cert", CERT, secure=False)
    put(ssm, "origin-tls-key", KEY)
    put(ssm, "origin-pull-ca", CERT, secure=False)

    async def identity() -> str:
        return instance

    monkeypatch.setattr(aws_bootstrap, "_instance_id", identity)
    base = ["--stack", "prod", "--aws-region", REGION]
    prepared = bootstrap([*base, "prepare", "--region-key", "use1", "--tls-dir", str(tmp_path)])
    assert prepared.exit_code == 0, prepared.output
    ready = json.loads(prepared.stdout)
    assert (ready["slot"], ready["instance_id"]) == (0, instance)
    assert (tmp_path / "origin.key").read_text() == KEY
    assert (tmp_path / "origin-pull-ca.pem").read_text() == CERT
    # The slot's registry id (infra/edge.py registry_entry), for exec to give the relay.
    assert relay_id_file.read_text() == "use1-0\n" and (relay_id_file.stat().st_mode & 0o777) == 0o644
    assert aws_bootstrap.claimed_relay_id(relay_id_file) == "use1-0"
    calls: list[dict[str, str]] = []
    monkeypatch.setattr("splitrelay.relay.aws_bootstrap.os.execvpe", lambda f, argv, env: calls.append(env))
    put(ssm, "relay-signing-key", SIGNING_KEY)
    put(ssm, "sfu-app-secret", SFU_SECRET)
    put(ssm, "wire-key", WIRE_KEY)
    assert bootstrap([*base, "exec", "--", "splitrelay"]).exit_code == 0
    assert calls[0][aws_bootstrap.RELAY_ID_ENV] == "use1-0"
    relay_id_file.write_text("../etc\n")
    assert aws_bootstrap.claimed_relay_id(relay_id_file) is None
    with pytest.raises(BootstrapError, match="relay id"):
        aws_bootstrap.slot_relay_id("Bad Key", 0)
    assert bootstrap([*base, "release", "--region-key", "use1"]).exit_code == 0
    assert "AssociationId" not in ec2.describe_addresses()["Addresses"][0]
    # A second stack has no addresses: a clear error and exit status 2, no traceback.
    other = bootstrap(
        [
            "--stack",
            "other",
            "--aws-region",
            REGION,
            "prepare",
            "--region-key",
            "use1",
            "--tls-dir",
            str(tmp_path),
        ]
    )
    assert other.exit_code == 2
    assert "no Elastic IP tagged splitrelay:stack=other" in other.stderr
