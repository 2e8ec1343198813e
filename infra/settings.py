"""The stack's configuration, parsed and checked before any resource is declared.

`pulumi up` should fail on a typo in Pulumi.<stack>.yaml with a message that names the key and the
limit, not half-way through creating resources. Everything here is pure: a mapping in, frozen
dataclasses out (the Pulumi program feeds it `pulumi.Config`, tests feed it dicts).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

STABLE_ADDRESSES = ("elastic-ip", "global-accelerator")
CODE_OWNERS = ("pulumi", "wrangler")
EDGE_ATTACH = ("custom-domain", "route")
# Cloudflare's `request.cf.continent` codes: the edge picks relays by them.
CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
MAX_REGIONS = 20
MAX_PER_REGION = 50
DEFAULT_PORT_RANGE = (40000, 40999)
DEFAULT_MEDIA_PORT = 40000
"""``relayMediaPort`` when neither it nor ``relayPortRange`` is set: worker i of a relay on 40000 + i."""
DEFAULT_ELASTIC_IP_QUOTA = 5
"""AWS's default "EC2-VPC Elastic IPs" quota per region (Service Quotas code L-0263D0A3)."""
DEFAULT_VPC_CIDR = "10.80.0.0/16"
DEFAULT_SFU_API = "https://rtc.live.cloudflare.com/v1"
CONTROL_PORT = 8700
"""The relay's plain-HTTP control API, bound to loopback; nginx terminates TLS on 443 in front of it."""
METRICS_PORT = 9464
"""nginx's private listener for /metrics, /healthz and /readyz (open only to metricsAllowList)."""

_AWS_REGION = re.compile(r"[a-z]{2}(-gov)?-[a-z]+-\d")
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")
_KEY = re.compile(r"[a-z][a-z0-9]{0,11}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_VPC_ID = re.compile(r"vpc-[0-9a-f]{8,17}")
_SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8,17}")
_AMI_ID = re.compile(r"ami-[0-9a-f]{8,17}")
# A pip requirement or URL; it lands in a shell script (quoted), so refuse anything odd outright.
_PYTHON_VERSION = re.compile(r"3\.(1[1-9])")
DEFAULT_PYTHON = "3.12"
"""python3 on the default image (Ubuntu 24.04): the relay bundle's wheels are built for it."""


class InfraConfigError(ValueError):
    """A stack setting is missing or out of range; the message names the key (never a secret value)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config {key}: {message}")
        self.key = key


@dataclass(frozen=True)
class RegionSettings:
    """One relay region beside a GPU pool."""

    key: str
    """Short name used in resource names and relay hostnames (e.g. `use1`)."""
    aws_region: str
    continent: str
    latitude: float
    longitude: float
    instance_type: str
    min_count: int
    max_count: int
    inference: str
    """HOST:PORT of the GPU pool's inference service (UDP wire protocol), reachable inside the VPC."""
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    vpc_cidr: str = DEFAULT_VPC_CIDR
    ami: str | None = None
    elastic_ip_quota: int = DEFAULT_ELASTIC_IP_QUOTA
    """The account's Elastic IP quota in this AWS region (the AWS default unless the stack says more)."""
    python_version: str = DEFAULT_PYTHON
    """The image's python3 (3.12 on the default Ubuntu 24.04; say it with `pythonVersion` for an `ami`)."""

    @property
    def creates_vpc(self) -> bool:
        return self.vpc_id is None

    @property
    def architecture(self) -> str:
        """arm64 for Graviton families (a `g` right after the generation digit: m7g, c7gn), else amd64."""
        family = self.instance_type.split(".", 1)[0]
        return "arm64" if re.fullmatch(r"[a-z]+\d+g[a-z]*", family) else "amd64"


@dataclass(frozen=True)
class StackSettings:
    stack: str
    account_id: str
    zone_id: str
    zone_name: str
    hostname: str
    regions: tuple[RegionSettings, ...]
    relay_bundle: str | None = None
    """A bundle built beforehand (infra/bundle.py); None: `pulumi up` builds one from this checkout."""
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    """``relayPortRange``: the fallback, one UDP port per call (``relay serve --port-range``); used only
    when ``media_port`` is None (the stack set ``relayPortRange`` and not ``relayMediaPort``)."""
    media_port: int | None = DEFAULT_MEDIA_PORT
    """``relayMediaPort`` (the default): one UDP port per relay worker (``relay serve --media-port``);
    worker i uses ``media_port + i``, one worker per vCPU, at most MEDIA_PORT_WORKERS."""
    allowed_origins: tuple[str, ...] = ()
    control_allow_list: tuple[str, ...] = ()
    media_allow_list: tuple[str, ...] = ("0.0.0.0/0",)
    metrics_allow_list: tuple[str, ...] = ()
    """Who may read /metrics, /healthz and /readyz on METRICS_PORT: your Prometheus's private range."""
    stable_address: str = "elastic-ip"
    worker_code_owner: str = "pulumi"
    edge_attach: str = "custom-domain"
    sfu_api_url: str = DEFAULT_SFU_API
    relay_host_prefix: str = "relay"
    manage_ssl_rule: bool = True

    def media_workers(self, region: RegionSettings) -> int:
        """Workers (one media port each) a relay of ``region`` runs with ``relayMediaPort``: one per vCPU
        of its instance type, at most MEDIA_PORT_WORKERS (that many when the type's vCPUs are unknown)."""
        return min(vcpus(region.instance_type) or MEDIA_PORT_WORKERS, MEDIA_PORT_WORKERS)

    def media_ports(self, region: RegionSettings) -> tuple[int, int]:
        """The UDP ports ``region``'s relays receive media on: what its security group and accelerators
        open. One per worker with ``relayMediaPort``; the whole ``relayPortRange`` otherwise."""
        if self.media_port is None:
            return self.port_range
        return self.media_port, self.media_port + self.media_workers(region) - 1

    @property
    def edge_url(self) -> str:
        return f"https://{self.hostname}"

    def relay_hostname(self, region: RegionSettings, slot: int) -> str:
        """One proxied DNS name per relay slot, one label below the zone (Universal SSL covers it)."""
        return f"{self.relay_host_prefix}-{region.key}-{slot}.{self.zone_name}"

    @property
    def slot_count(self) -> int:
        return sum(r.max_count for r in self.regions)


@dataclass(frozen=True)
class RegionLocation:
    latitude: float
    longitude: float
    continent: str


def aws_region_locations() -> dict[str, RegionLocation]:
    """Where each AWS region is (aws_regions.toml), for the edge's nearest-relay choice."""
    text = resources.files("infra").joinpath("aws_regions.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    return {
        name: RegionLocation(float(v["latitude"]), float(v["longitude"]), str(v["continent"]))
        for name, v in data["regions"].items()
    }


def cloudflare_ip_ranges() -> tuple[str, ...]:
    """Cloudflare's published address ranges (cloudflare_ips.toml, with its source and date)."""
    text = resources.files("infra").joinpath("cloudflare_ips.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    return tuple(str(c) for c in [*data["ipv4"], *data["ipv6"]])


# -- field helpers -----------------------------------------------------------------------------------


def _str(raw: Mapping[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = raw.get(key, default)
    if value is None:
        raise InfraConfigError(f"{where}{key}", "is required")
    if not isinstance(value, str) or not value.strip():
        raise InfraConfigError(f"{where}{key}", f"must be a non-empty string, got {type(value).__name__}")
    return value.strip()


def _int(raw: Mapping[str, Any], key: str, where: str, low: int, high: int, default: int | None) -> int:
    value = raw.get(key, default)
    if value is None:
        raise InfraConfigError(f"{where}{key}", "is required")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InfraConfigError(f"{where}{key}", f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InfraConfigError(f"{where}{key}", f"must be in [{low}, {high}], got {value}")
    return value


def _float(raw: Mapping[str, Any], key: str, where: str, low: float, high: float, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InfraConfigError(f"{where}{key}", f"must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InfraConfigError(f"{where}{key}", f"must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise InfraConfigError(f"{where}{key}", f"must be in [{low:g}, {high:g}], got {number:g}")
    return number


def _choice(raw: Mapping[str, Any], key: str, choices: Sequence[str], default: str) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise InfraConfigError(key, f"must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise InfraConfigError(key, f"must be true or false, got {value!r}")
    return value


def _list(raw: Mapping[str, Any], key: str, where: str = "") -> list[Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InfraConfigError(f"{where}{key}", f"must be a list, got {type(value).__name__}")
    return value


def _cidrs(raw: Mapping[str, Any], key: str, default: Sequence[str]) -> tuple[str, ...]:
    items = _list(raw, key)
    if items is None:
        return tuple(default)
    if not items:
        raise InfraConfigError(key, "must list at least one CIDR block")
    if len(items) > 50:
        raise InfraConfigError(key, f"at most 50 CIDR blocks fit one security group, got {len(items)}")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=True)))
        except ValueError as exc:
            raise InfraConfigError(f"{key}[{i}]", f"not a CIDR block: {exc}") from None
    return tuple(out)


MEDIA_PORT_WORKERS: Final = 64
"""With ``relayMediaPort``: the relay runs at most this many workers (one port each); the security group
opens one port per worker of the region's instance type, ``media_port .. media_port + workers - 1``."""
_SIZE_VCPUS: Final = {"medium": 1, "large": 2, "xlarge": 4}


def vcpus(instance_type: str) -> int | None:
    """vCPUs of the common EC2 sizes (large = 2, xlarge = 4, Nxlarge = 4N); None when unknown (metal...)."""
    size = instance_type.split(".", 1)[1] if "." in instance_type else ""
    if size in _SIZE_VCPUS:
        return _SIZE_VCPUS[size]
    match = re.fullmatch(r"(\d+)xlarge", size)
    return 4 * int(match.group(1)) if match else None


def parse_media_port(value: Any, key: str = "relayMediaPort") -> int | None:
    """None (unset: a port per call), or the base UDP port, 1024..65535-63."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if not text.isdigit():
        raise InfraConfigError(key, f"must be a port number such as 40000, got {value!r}")
    port = int(text)
    if not 1024 <= port <= 65535 - (MEDIA_PORT_WORKERS - 1):
        raise InfraConfigError(
            key,
            f"must be 1024..{65535 - (MEDIA_PORT_WORKERS - 1)} (one port per worker, 64 at most), got {port}",
        )
    return port


def _media_port(raw: Mapping[str, Any]) -> int | None:
    """One port per worker unless the stack asks for the port-per-call fallback (``relayPortRange``)."""
    given_range = raw.get("relayPortRange") not in (None, "")
    given_port = raw.get("relayMediaPort") not in (None, "")
    if given_range and given_port:
        raise InfraConfigError(
            "relayMediaPort",
            "set relayMediaPort (one UDP port per worker, the default) or relayPortRange (the fallback: "
            "a port per call), not both",
        )
    if given_range:
        return None
    return parse_media_port(raw.get("relayMediaPort")) if given_port else DEFAULT_MEDIA_PORT


def parse_port_range(value: Any, key: str = "relayPortRange") -> tuple[int, int]:
    """`"LOW-HIGH"` (the relay CLI's --port-range syntax), 1024 <= LOW <= HIGH <= 65535."""
    if not isinstance(value, str):
        raise InfraConfigError(key, f"must be a string LOW-HIGH such as 40000-40999, got {value!r}")
    low, sep, high = value.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise InfraConfigError(key, f"must be LOW-HIGH such as 40000-40999, got {value!r}")
    lo, hi = int(low), int(high)
    if not 1024 <= lo <= hi <= 65535:
        raise InfraConfigError(key, f"must satisfy 1024 <= LOW <= HIGH <= 65535, got {lo}-{hi}")
    return lo, hi


def _host_port(value: str, key: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InfraConfigError(key, f"must be HOST:PORT with a port in 1..65535, got {value!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", bare):
            raise InfraConfigError(key, f"host must be an IP address or DNS name, got {host!r}") from None
    return value


def _origin(value: Any, key: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", value):
        raise InfraConfigError(
            key, f"must be an origin like https://app.example.com (no path), got {value!r}"
        )
    return value


def _region(raw: Any, index: int, locations: Mapping[str, RegionLocation]) -> RegionSettings:
    where = f"regions[{index}]."
    if not isinstance(raw, Mapping):
        raise InfraConfigError(f"regions[{index}]", f"must be an object, got {type(raw).__name__}")
    aws_region = _str(raw, "awsRegion", where)
    if not _AWS_REGION.fullmatch(aws_region):
        raise InfraConfigError(
            f"{where}awsRegion", f"must be an AWS region such as us-east-1, got {aws_region!r}"
        )
    key = _str(raw, "key", where, default=re.sub(r"[^a-z0-9]", "", aws_region)[:12])
    if not _KEY.fullmatch(key):
        raise InfraConfigError(
            f"{where}key", f"must be 1-12 lowercase letters/digits starting with a letter, got {key!r}"
        )
    known = locations.get(aws_region)
    continent = _str(raw, "continent", where, default=known.continent if known else None)
    if continent not in CONTINENTS:
        raise InfraConfigError(
            f"{where}continent", f"must be one of {', '.join(CONTINENTS)}; got {continent!r}"
        )
    if known is None and ("latitude" not in raw or "longitude" not in raw):
        raise InfraConfigError(
            f"{where}latitude", f"required for {aws_region} (not in infra/aws_regions.toml), with longitude"
        )
    latitude = _float(raw, "latitude", where, -90, 90, known.latitude if known else 0.0)
    longitude = _float(raw, "longitude", where, -180, 180, known.longitude if known else 0.0)
    instance_type = _str(raw, "instanceType", where, default="c7g.large")
    if not _INSTANCE_TYPE.fullmatch(instance_type):
        raise InfraConfigError(
            f"{where}instanceType", f"must be an EC2 type such as c7g.large, got {instance_type!r}"
        )
    min_count = _int(raw, "minCount", where, 0, MAX_PER_REGION, 1)
    max_count = _int(raw, "maxCount", where, 1, MAX_PER_REGION, max(min_count, 1))
    if max_count < min_count:
        raise InfraConfigError(f"{where}maxCount", f"must be >= minCount ({min_count}), got {max_count}")
    inference = _host_port(_str(raw, "inference", where), f"{where}inference")
    vpc_id = raw.get("vpcId")
    subnets = _list(raw, "subnetIds", where)
    if vpc_id is not None:
        if not isinstance(vpc_id, str) or not _VPC_ID.fullmatch(vpc_id):
            raise InfraConfigError(f"{where}vpcId", f"must look like vpc-0abc..., got {vpc_id!r}")
        if not subnets:
            raise InfraConfigError(
                f"{where}subnetIds", "required (at least one public subnet) when vpcId is given"
            )
    elif subnets:
        raise InfraConfigError(
            f"{where}vpcId", "required when subnetIds is given (the security group lives in it)"
        )
    subnet_ids = tuple(str(s) for s in subnets or ())
    for i, subnet in enumerate(subnet_ids):
        if not _SUBNET_ID.fullmatch(subnet):
            raise InfraConfigError(f"{where}subnetIds[{i}]", f"must look like subnet-0abc..., got {subnet!r}")
    vpc_cidr = _str(raw, "vpcCidr", where, default=DEFAULT_VPC_CIDR)
    try:
        network = ipaddress.ip_network(vpc_cidr, strict=True)
    except ValueError as exc:
        raise InfraConfigError(f"{where}vpcCidr", f"not a CIDR block: {exc}") from None
    if network.version != 4 or not 16 <= network.prefixlen <= 24:
        raise InfraConfigError(f"{where}vpcCidr", f"must be an IPv4 block from /16 to /24, got {vpc_cidr}")
    ami = raw.get("ami")
    if ami is not None and (not isinstance(ami, str) or not _AMI_ID.fullmatch(ami)):
        raise InfraConfigError(f"{where}ami", f"must look like ami-0abc..., got {ami!r}")
    python_version = _str(raw, "pythonVersion", where, default=DEFAULT_PYTHON)
    if not _PYTHON_VERSION.fullmatch(python_version):
        raise InfraConfigError(
            f"{where}pythonVersion", f"must be 3.11 or later, e.g. 3.12, got {python_version!r}"
        )
    if vpc_id is None:
        _check_reachable(inference, network, f"{where}inference")
    return RegionSettings(
        key=key,
        aws_region=aws_region,
        continent=continent,
        latitude=latitude,
        longitude=longitude,
        instance_type=instance_type,
        min_count=min_count,
        max_count=max_count,
        inference=inference,
        vpc_id=vpc_id,
        subnet_ids=subnet_ids,
        vpc_cidr=vpc_cidr,
        ami=ami,
        elastic_ip_quota=_int(raw, "elasticIpQuota", where, 1, 10_000, DEFAULT_ELASTIC_IP_QUOTA),
        python_version=python_version,
    )


def _check_reachable(inference: str, vpc: ipaddress.IPv4Network | ipaddress.IPv6Network, key: str) -> None:
    """A private inference address outside the VPC this stack creates is unreachable: nothing peers the two.

    (A DNS name cannot be checked here; a public address is reached over the internet.)
    """
    host = inference.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    if address.is_private and address not in vpc:
        raise InfraConfigError(
            key,
            f"{inference} is a private address outside the VPC this stack creates ({vpc}), and nothing "
            "connects the two: give vpcId and subnetIds of the GPU pool's VPC (or of one peered with it)",
        )


def parse_settings(raw: Mapping[str, Any], stack: str) -> StackSettings:
    """Check every key of the `splitrelay:` config namespace; raise InfraConfigError on the first bad one."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", stack):
        raise InfraConfigError("stack", f"name must be 1-40 of A-Z a-z 0-9 _ . -, got {stack!r}")
    account_id = _str(raw, "accountId", "")
    if not _HEX32.fullmatch(account_id):
        raise InfraConfigError("accountId", "must be the 32-hex-digit Cloudflare account id")
    zone_id = _str(raw, "zoneId", "")
    if not _HEX32.fullmatch(zone_id):
        raise InfraConfigError("zoneId", "must be the 32-hex-digit Cloudflare zone id")
    zone_name = _str(raw, "zoneName", "").lower()
    if not _HOSTNAME.fullmatch(zone_name):
        raise InfraConfigError("zoneName", f"must be a DNS zone such as example.com, got {zone_name!r}")
    hostname = _str(raw, "hostname", "").lower()
    if not _HOSTNAME.fullmatch(hostname) or not (hostname == zone_name or hostname.endswith("." + zone_name)):
        raise InfraConfigError(
            "hostname", f"must be a DNS name inside zoneName {zone_name}, got {hostname!r}"
        )
    if "packageSpec" in raw:
        raise InfraConfigError(
            "packageSpec",
            "no longer used: relays install this checkout's own bundle from a private S3 object "
            "(remove it; set relayBundle to use a bundle you built)",
        )
    relay_bundle = raw.get("relayBundle")
    if relay_bundle is not None:
        if not isinstance(relay_bundle, str) or not relay_bundle.endswith(".tar.gz"):
            raise InfraConfigError(
                "relayBundle", f"must be the path of a .tar.gz relay bundle, got {relay_bundle!r}"
            )
        if not Path(relay_bundle).is_file():
            raise InfraConfigError("relayBundle", f"no such file: {relay_bundle}")
    regions_raw = _list(raw, "regions")
    if not regions_raw:
        raise InfraConfigError("regions", "must list at least one region")
    if len(regions_raw) > MAX_REGIONS:
        raise InfraConfigError("regions", f"at most {MAX_REGIONS} regions, got {len(regions_raw)}")
    locations = aws_region_locations()
    regions = tuple(_region(r, i, locations) for i, r in enumerate(regions_raw))
    seen: set[str] = set()
    seen_aws: set[str] = set()
    for i, region in enumerate(regions):
        if region.key in seen:
            raise InfraConfigError(f"regions[{i}].key", f"duplicate region key {region.key!r}")
        if region.aws_region in seen_aws:
            # The stack's SSM parameters and the instance role are per AWS region: a second entry would
            # overwrite the first one's. More relays there is maxCount, not another entry.
            raise InfraConfigError(
                f"regions[{i}].awsRegion",
                f"{region.aws_region} is already a region of this stack: one entry per AWS region "
                "(raise its minCount/maxCount for more relays)",
            )
        seen.add(region.key)
        seen_aws.add(region.aws_region)
    stable_address = _choice(raw, "stableAddress", STABLE_ADDRESSES, "elastic-ip")
    if stable_address == "elastic-ip":
        for i, region in enumerate(regions):
            if region.max_count > region.elastic_ip_quota:
                raise InfraConfigError(
                    f"regions[{i}].maxCount",
                    f"{region.max_count} relays need {region.max_count} Elastic IPs in {region.aws_region}, "
                    f"above its quota of {region.elastic_ip_quota} (AWS's default is "
                    f"{DEFAULT_ELASTIC_IP_QUOTA}): raise 'EC2-VPC Elastic IPs' in Service Quotas and set "
                    "elasticIpQuota, or lower maxCount",
                )
    prefix = _str(raw, "relayHostPrefix", "", default="relay")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", prefix):
        raise InfraConfigError("relayHostPrefix", f"must be 1-16 lowercase letters/digits, got {prefix!r}")
    origins_raw = _list(raw, "allowedOrigins") or []
    if len(origins_raw) > 50:
        raise InfraConfigError("allowedOrigins", f"at most 50 origins, got {len(origins_raw)}")
    sfu_api_url = _str(raw, "sfuApiUrl", "", default=DEFAULT_SFU_API)
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._~/-]*)?", sfu_api_url):
        raise InfraConfigError("sfuApiUrl", f"must be an https:// URL, got {sfu_api_url!r}")
    return StackSettings(
        stack=stack,
        account_id=account_id,
        zone_id=zone_id,
        zone_name=zone_name,
        hostname=hostname,
        regions=regions,
        relay_bundle=relay_bundle,
        port_range=parse_port_range(raw.get("relayPortRange", "{}-{}".format(*DEFAULT_PORT_RANGE))),
        media_port=_media_port(raw),
        allowed_origins=tuple(_origin(o, f"allowedOrigins[{i}]") for i, o in enumerate(origins_raw)),
        control_allow_list=_cidrs(raw, "controlAllowList", cloudflare_ip_ranges()),
        media_allow_list=_cidrs(raw, "mediaAllowList", ("0.0.0.0/0",)),
        metrics_allow_list=_cidrs(raw, "metricsAllowList", ()) if raw.get("metricsAllowList") else (),
        stable_address=stable_address,
        worker_code_owner=_choice(raw, "workerCodeOwner", CODE_OWNERS, "pulumi"),
        edge_attach=_choice(raw, "edgeAttach", EDGE_ATTACH, "custom-domain"),
        sfu_api_url=sfu_api_url.rstrip("/"),
        relay_host_prefix=prefix,
        manage_ssl_rule=_bool(raw, "manageSslRule", True),
    )
