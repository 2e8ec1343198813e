"""Stack settings: defaults, every rejection names its key, and the cost-model mapping."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from splitrelay.infra.cost import cost_arguments, settings_from_stack_file, vcpus
from splitrelay.infra.settings import (
    InfraConfigError,
    aws_region_locations,
    cloudflare_ip_ranges,
    parse_port_range,
    parse_settings,
)

ACCOUNT = "0123456789abcdef0123456789abcdef"
ZONE = "fedcba9876543210fedcba9876543210"


def config(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "accountId": ACCOUNT,
        "zoneId": ZONE,
        "zoneName": "example.com",
        "hostname": "voice.example.com",
        "regions": [{"awsRegion": "us-east-1", "inference": "10.80.3.7:7000"}],
    }
    base.update(extra)
    return base


def test_defaults() -> None:
    s = parse_settings(config(), "prod")
    region = s.regions[0]
    assert (region.key, region.continent, region.min_count, region.max_count) == ("useast1", "NA", 1, 1)
    assert (region.latitude, region.longitude) == (39.04, -77.49)
    assert region.instance_type == "c7g.large" and region.architecture == "arm64"
    assert region.creates_vpc
    assert s.media_port == 40000 and s.media_ports(region) == (40000, 40001)  # one port per worker
    assert s.media_workers(region) == 2  # c7g.large: 2 vCPUs
    assert s.stable_address == "elastic-ip" and s.worker_code_owner == "pulumi"
    assert s.control_allow_list == cloudflare_ip_ranges()
    assert s.media_allow_list == ("0.0.0.0/0",)
    assert s.relay_hostname(region, 3) == "relay-useast1-3.example.com"
    assert s.edge_url == "https://voice.example.com"


def test_cloudflare_ranges_data_file_is_valid_and_dated() -> None:
    ranges = cloudflare_ip_ranges()
    networks = [ipaddress.ip_network(r) for r in ranges]
    assert {n.version for n in networks} == {4, 6}
    assert ipaddress.ip_network("104.16.0.0/13") in networks
    text = (Path(__file__).resolve().parents[2] / "infra" / "cloudflare_ips.toml").read_text()
    assert "source = " in text and "as_of = " in text


def test_region_locations_cover_continents() -> None:
    locations = aws_region_locations()
    assert locations["ap-southeast-2"].continent == "OC"
    assert locations["eu-central-1"].continent == "EU"
    assert all(-90 <= loc.latitude <= 90 and -180 <= loc.longitude <= 180 for loc in locations.values())


def test_architecture_by_instance_family() -> None:
    base = config()
    for instance_type, arch in [
        ("c7g.large", "arm64"),
        ("c7gn.xlarge", "arm64"),
        ("c6i.large", "amd64"),
        ("g5.xlarge", "amd64"),
    ]:
        base["regions"] = [
            {"awsRegion": "us-east-1", "inference": "10.80.0.1:7000", "instanceType": instance_type}
        ]
        assert parse_settings(base, "s").regions[0].architecture == arch


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"accountId": "nothex"}, "accountId", "32-hex-digit"),
        ({"zoneId": None}, "zoneId", "required"),
        ({"hostname": "voice.other.org"}, "hostname", "inside zoneName"),
        (
            {"packageSpec": "splitrelay==0.1.0"},
            "packageSpec",
            "no longer used: relays install this checkout's",
        ),
        ({"relayBundle": "/nonexistent/b.tar.gz"}, "relayBundle", "no such file"),
        ({"relayBundle": "relay.whl"}, "relayBundle", "must be the path of a .tar.gz"),
        ({"relayPortRange": "80-90"}, "relayPortRange", "1024 <= LOW <= HIGH <= 65535"),
        ({"relayMediaPort": "forty"}, "relayMediaPort", "port number"),
        ({"relayMediaPort": 80}, "relayMediaPort", "1024..65472"),
        ({"relayMediaPort": 65500}, "relayMediaPort", "one port per worker"),
        ({"relayPortRange": "40999-40000"}, "relayPortRange", "1024 <= LOW"),
        ({"relayPortRange": "41000-41999", "relayMediaPort": 40000}, "relayMediaPort", "not both"),
        ({"relayPortRange": "40000"}, "relayPortRange", "LOW-HIGH"),
        ({"stableAddress": "nat"}, "stableAddress", "elastic-ip, global-accelerator"),
        ({"workerCodeOwner": "me"}, "workerCodeOwner", "pulumi, wrangler"),
        ({"controlAllowList": ["10.0.0.1/8"]}, "controlAllowList[0]", "not a CIDR"),
        ({"controlAllowList": []}, "controlAllowList", "at least one"),
        ({"allowedOrigins": ["https://a.example.com/path"]}, "allowedOrigins[0]", "no path"),
        ({"regions": []}, "regions", "at least one"),
        ({"sfuApiUrl": "http://rtc.example.com"}, "sfuApiUrl", "https://"),
        ({"manageSslRule": "yes"}, "manageSslRule", "true or false"),
    ],
)
def test_bad_top_level_values_name_the_key(change: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(InfraConfigError) as info:
        parse_settings(config(**change), "prod")
    assert info.value.key == key
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"awsRegion": "mars-1"}, "regions[0].awsRegion", "AWS region"),
        ({"minCount": 3, "maxCount": 2}, "regions[0].maxCount", ">= minCount (3)"),
        ({"maxCount": 51}, "regions[0].maxCount", "[1, 50]"),
        ({"minCount": -1}, "regions[0].minCount", "[0, 50]"),
        ({"minCount": True}, "regions[0].minCount", "integer"),
        ({"inference": "10.0.0.1"}, "regions[0].inference", "HOST:PORT"),
        ({"inference": "10.0.0.1:70000"}, "regions[0].inference", "1..65535"),
        ({"vpcId": "vpc-0123456789abcdef0"}, "regions[0].subnetIds", "required"),
        ({"subnetIds": ["subnet-0123456789abcdef0"]}, "regions[0].vpcId", "required"),
        ({"vpcId": "vpc-1", "subnetIds": ["subnet-0123456789abcdef0"]}, "regions[0].vpcId", "vpc-0abc"),
        ({"continent": "XX"}, "regions[0].continent", "AF, AN"),
        ({"latitude": 91}, "regions[0].latitude", "[-90, 90]"),
        ({"instanceType": "huge"}, "regions[0].instanceType", "EC2 type"),
        ({"vpcCidr": "10.0.0.0/8"}, "regions[0].vpcCidr", "/16 to /24"),
        ({"key": "US-EAST"}, "regions[0].key", "lowercase"),
        ({"ami": "ubuntu"}, "regions[0].ami", "ami-0abc"),
        ({"pythonVersion": "3.9"}, "regions[0].pythonVersion", "3.11 or later"),
    ],
)
def test_bad_region_values_name_the_key(change: dict[str, Any], key: str, fragment: str) -> None:
    region = {"awsRegion": "us-east-1", "inference": "10.80.3.7:7000", **change}
    with pytest.raises(InfraConfigError) as info:
        parse_settings(config(regions=[region]), "prod")
    assert info.value.key == key
    assert fragment in str(info.value)


def test_unknown_region_needs_coordinates_and_duplicate_keys_are_refused() -> None:
    with pytest.raises(InfraConfigError, match=r"regions\[0\].latitude: required for xx-north-9"):
        parse_settings(
            config(regions=[{"awsRegion": "xx-north-9", "inference": "a:1", "continent": "EU"}]), "p"
        )
    ok = {"awsRegion": "xx-north-9", "inference": "a:1", "continent": "EU", "latitude": 60, "longitude": 10}
    assert parse_settings(config(regions=[ok]), "p").regions[0].latitude == 60
    twice = [{"awsRegion": "us-east-1", "inference": "a:1"}, {"awsRegion": "us-east-1", "inference": "b:1"}]
    with pytest.raises(InfraConfigError, match=r"regions\[1\].key: duplicate"):
        parse_settings(config(regions=twice), "p")


def test_port_range_matches_relay_cli_syntax() -> None:
    assert parse_port_range("40000-40999") == (40000, 40999)
    with pytest.raises(InfraConfigError, match="relayPortRange"):
        parse_port_range(40000)


def test_cost_arguments_follow_the_stable_address_choice() -> None:
    regions = [
        {"awsRegion": "us-east-1", "inference": "a:1", "minCount": 2, "maxCount": 4},
        {
            "awsRegion": "eu-central-1",
            "inference": "a:1",
            "minCount": 1,
            "maxCount": 3,
            "instanceType": "c6i.xlarge",
        },
    ]
    eip = parse_settings(config(regions=regions), "p")
    args, notes = cost_arguments(eip)
    assert args == [
        "--regions",
        "2",
        "--min-instances",
        "2",
        "--instance-type",
        "c7g.large",
        "--accelerators",
        "0",
        "--cores-per-instance",
        "2",
    ]
    assert any("c6i.xlarge" in n for n in notes) and any("Elastic IPs" in n for n in notes)
    ga = parse_settings(config(regions=regions, stableAddress="global-accelerator"), "p")
    args, _ = cost_arguments(ga)
    assert args[args.index("--accelerators") + 1] == "7"  # one per slot: 4 + 3
    assert vcpus("m7g.large") == 2 and vcpus("c7g.4xlarge") == 16 and vcpus("c7g.metal") is None


def test_cost_command_from_a_stack_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from splitrelay.cli.cost import cost_app

    example = Path(__file__).resolve().parents[2] / "infra" / "Pulumi.example.yaml"
    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(example.read_text())
    settings = settings_from_stack_file(stack_file)
    assert settings.stack == "prod" and [r.key for r in settings.regions] == ["use1", "euc1"]
    result = CliRunner().invoke(cost_app, ["from-stack", str(stack_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "splitrelay cost --regions 2 --min-instances 2 --instance-type c7g.large --accelerators 0"
    )
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config:\n  splitrelay:accountId: x\n")
    result = CliRunner().invoke(cost_app, ["from-stack", str(bad)])
    assert result.exit_code == 2
    assert "config accountId" in result.stderr


def test_cost_arguments_are_accepted_by_splitrelay_cost() -> None:
    from typer.testing import CliRunner

    from splitrelay.cli.cost import cost_app

    regions = [{"awsRegion": "us-east-1", "inference": "a:1", "minCount": 2, "maxCount": 3}]
    for choice in ("elastic-ip", "global-accelerator"):
        args, _ = cost_arguments(parse_settings(config(regions=regions, stableAddress=choice), "p"))
        result = CliRunner().invoke(cost_app, [*args, "--options", "custom", "--json"])
        assert result.exit_code == 0, result.output
        assert ('"Global Accelerator"' in result.output) == (choice == "global-accelerator")


def test_one_entry_per_aws_region() -> None:
    twice = [
        {"awsRegion": "us-east-1", "key": "a", "inference": "a:1"},
        {"awsRegion": "us-east-1", "key": "b", "inference": "b:1"},
    ]
    with pytest.raises(InfraConfigError, match=r"regions\[1\]\.awsRegion: us-east-1 is already a region"):
        parse_settings(config(regions=twice), "p")


def test_max_count_above_the_elastic_ip_quota_is_refused_until_the_quota_is_raised() -> None:
    region = {"awsRegion": "us-east-1", "inference": "10.80.3.7:7000", "maxCount": 6}
    with pytest.raises(
        InfraConfigError, match=r"regions\[0\]\.maxCount: 6 relays need 6 Elastic IPs in us-east-1"
    ):
        parse_settings(config(regions=[region]), "p")
    raised = parse_settings(config(regions=[{**region, "elasticIpQuota": 10}]), "p")
    assert raised.regions[0].elastic_ip_quota == 10
    # One accelerator per slot instead of an Elastic IP: the quota does not apply.
    accelerated = parse_settings(config(regions=[region], stableAddress="global-accelerator"), "p")
    assert accelerated.regions[0].max_count == 6


@pytest.mark.parametrize(
    ("region", "refused"),
    [
        ({"inference": "10.0.12.5:7000"}, True),  # the GPU pool's own VPC, which nothing connects to
        ({"inference": "192.168.1.5:7000"}, True),
        ({"inference": "10.80.12.5:7000"}, False),  # inside the VPC the stack creates
        ({"inference": "10.0.12.5:7000", "vpcCidr": "10.0.0.0/16"}, False),
        ({"inference": "203.0.113.0:7000"}, True),  # documentation range: private to ipaddress
        ({"inference": "8.8.4.4:7000"}, False),  # public: reached over the internet
        ({"inference": "gpu.internal.example:7000"}, False),  # a name cannot be checked offline
        (
            {
                "inference": "10.0.12.5:7000",
                "vpcId": "vpc-0123456789abcdef0",
                "subnetIds": ["subnet-0123456789abcdef0"],
            },
            False,
        ),
    ],
)
def test_an_unreachable_inference_address_is_refused(region: dict[str, Any], refused: bool) -> None:
    raw = config(regions=[{"awsRegion": "us-east-1", **region}])
    if not refused:
        assert parse_settings(raw, "p").regions[0].inference == region["inference"]
        return
    with pytest.raises(
        InfraConfigError, match=r"regions\[0\]\.inference: .* outside the VPC this stack creates"
    ):
        parse_settings(raw, "p")


def test_relay_port_range_alone_is_the_port_per_call_fallback() -> None:
    s = parse_settings(config(relayPortRange="41000-41999"), "prod")
    assert s.media_port is None and s.media_ports(s.regions[0]) == (41000, 41999)
    s = parse_settings(config(relayMediaPort=42000), "prod")
    assert s.media_port == 42000 and s.media_ports(s.regions[0]) == (42000, 42001)
