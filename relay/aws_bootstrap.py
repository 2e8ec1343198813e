"""The relay's AWS runtime on an auto-scaled instance: secrets from SSM, a stable address, self-health.

`infra/` (Pulumi) writes the SSM parameters, tags a pool of Elastic IPs per region (one per relay slot,
each with its own proxied DNS name and registry entry) and renders a systemd unit that runs this
module. At boot an instance claims a free address of its region (an atomic EC2 call: two instances
cannot hold one slot), registers with the slot's Global Accelerator endpoint groups when the stack
uses them, writes the origin TLS files for nginx, and starts `splitrelay relay serve` with its secrets
in the process environment only (`exec`: never on disk, never on the command line). A timer checks
the relay's /healthz and tells the auto-scaling group to replace an instance whose relay is dead.

Secret values never appear in errors or logs: messages name the SSM parameter, not its value.
`splitrelay relay bootstrap --help` lists the sub-commands the user data calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("splitrelay.relay.aws_bootstrap")

AwsClient = Any
"""A boto3 client (ssm, ec2, autoscaling, globalaccelerator); typed loosely, boto3 builds them at run time."""

# The relay CLI reads these (scripts/cli/relay.py: SIGNING_KEY_ENV, SFU_SECRET_ENV). Kept as literals so
# the instance bootstrap does not import the CLI; tests/unit/test_aws_bootstrap.py checks they agree.
SIGNING_KEY_ENV = "SPLITRELAY_RELAY_SIGNING_KEY"
SFU_SECRET_ENV = "SPLITRELAY_SFU_APP_SECRET"

SIGNING_KEY_PARAM = "relay-signing-key"
SFU_SECRET_PARAM = "sfu-app-secret"
TLS_KEY_PARAM = "origin-tls-key"
TLS_CERT_PARAM = "origin-tls-cert"
ORIGIN_PULL_CA_PARAM = "origin-pull-ca"
"""CA of the client certificate Cloudflare presents to relay hostnames (Authenticated Origin Pulls)."""
WIRE_KEY_PARAM = "wire-key"
"""The key that authenticates the wire link to inference (docs/wire-protocol.md); inference needs it too."""
SECRET_ENV_BY_PARAM: Mapping[str, str] = {
    SIGNING_KEY_PARAM: SIGNING_KEY_ENV,
    SFU_SECRET_PARAM: SFU_SECRET_ENV,
    WIRE_KEY_PARAM: "SPLITRELAY_WIRE_KEY",
}
"""SSM parameter (under the stack prefix) -> environment variable of `splitrelay relay serve`."""

TAG_STACK = "splitrelay:stack"
TAG_REGION = "splitrelay:region"
TAG_SLOT = "splitrelay:slot"
MIN_SIGNING_KEY_BYTES = 32  # edge/contract/signing.py MIN_KEY_BYTES; the relay refuses shorter keys at start.
_PREFIX = re.compile(r"/[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
IMDS_URL = "http://169.254.169.254"
IMDS_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
"""botocore's own override of the metadata address; the user data and these commands honour it too."""


def imds_url() -> str:
    return os.environ.get(IMDS_ENDPOINT_ENV, "").rstrip("/") or IMDS_URL


class BootstrapError(Exception):
    """The instance cannot become a working relay; the message says which parameter or resource, no value."""


def parameter_prefix(stack: str) -> str:
    """The SSM path every parameter of one Pulumi stack lives under (also used by infra/)."""
    if not _NAME.fullmatch(stack):
        raise BootstrapError(f"stack name must be 1-64 of A-Z a-z 0-9 _ . -, got {stack!r}")
    return f"/splitrelay/{stack}"


def slot_parameter(prefix: str, region_key: str, slot: int, leaf: str) -> str:
    """Per-slot parameters, e.g. the Global Accelerator endpoint groups a slot's instance joins."""
    return f"{check_prefix(prefix)}/slots/{region_key}-{slot}/{leaf}"


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix) or len(prefix) > 900:
        raise BootstrapError(
            f"prefix must be an SSM path such as /splitrelay/prod (no trailing /), got {prefix!r}"
        )
    return prefix


# -- secrets -----------------------------------------------------------------------------------------


def _get_parameters(ssm: AwsClient, prefix: str, leaves: Sequence[str]) -> dict[str, str]:
    """Values by leaf name, decrypted; every missing or empty parameter is named in one error."""
    names = [f"{check_prefix(prefix)}/{leaf}" for leaf in leaves]
    response = ssm.get_parameters(Names=names, WithDecryption=True)
    missing = sorted(response.get("InvalidParameters", []))
    values = {p["Name"]: p.get("Value", "") for p in response.get("Parameters", [])}
    empty = sorted(name for name in names if name in values and not values[name].strip())
    if missing or empty:
        parts = []
        if missing:
            parts.append("missing SSM parameter(s): " + ", ".join(missing))
        if empty:
            parts.append("empty SSM parameter(s): " + ", ".join(empty))
        raise BootstrapError("; ".join(parts) + " (run `pulumi up` for this stack, or check the IAM role)")
    return {leaf: values[name] for leaf, name in zip(leaves, names, strict=True)}


def load_relay_secrets(ssm: AwsClient, prefix: str) -> dict[str, str]:
    """The relay's secrets as environment variables for `splitrelay relay serve`.

    SecureString parameters are decrypted (the instance role needs ssm:GetParameters on the prefix).
    """
    values = _get_parameters(ssm, prefix, list(SECRET_ENV_BY_PARAM))
    key = values[SIGNING_KEY_PARAM].strip()
    if len(key.encode()) < MIN_SIGNING_KEY_BYTES:
        raise BootstrapError(
            f"SSM parameter {prefix}/{SIGNING_KEY_PARAM}: signing key must be at least "
            f"{MIN_SIGNING_KEY_BYTES} bytes, got {len(key.encode())}"
        )
    return {SECRET_ENV_BY_PARAM[leaf]: value.strip() for leaf, value in values.items()}


def load_origin_tls(ssm: AwsClient, prefix: str) -> tuple[str, str]:
    """(certificate PEM, private key PEM) of the Cloudflare Origin CA certificate nginx serves."""
    values = _get_parameters(ssm, prefix, [TLS_CERT_PARAM, TLS_KEY_PARAM])
    cert, key = values[TLS_CERT_PARAM], values[TLS_KEY_PARAM]
    if "BEGIN CERTIFICATE" not in cert:
        raise BootstrapError(f"SSM parameter {prefix}/{TLS_CERT_PARAM}: not a PEM certificate")
    if "PRIVATE KEY" not in key:
        raise BootstrapError(f"SSM parameter {prefix}/{TLS_KEY_PARAM}: not a PEM private key")
    return cert, key


def write_private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Write whole or not at all (temp file + rename), readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_origin_tls(ssm: AwsClient, prefix: str, directory: Path) -> tuple[Path, Path, Path]:
    """nginx's TLS files: the origin certificate and key, and the CA it checks Cloudflare's client
    certificate against (only this stack's zone, not any Cloudflare account, gets past the handshake)."""
    cert, key = load_origin_tls(ssm, prefix)
    pull_ca = _get_parameters(ssm, prefix, [ORIGIN_PULL_CA_PARAM])[ORIGIN_PULL_CA_PARAM]
    if "BEGIN CERTIFICATE" not in pull_ca:
        raise BootstrapError(f"SSM parameter {prefix}/{ORIGIN_PULL_CA_PARAM}: not a PEM certificate")
    cert_path, key_path = directory / "origin.pem", directory / "origin.key"
    ca_path = directory / "origin-pull-ca.pem"
    write_private_file(key_path, key, 0o600)
    write_private_file(cert_path, cert, 0o644)
    write_private_file(ca_path, pull_ca, 0o644)
    return cert_path, key_path, ca_path


# -- the stable address: one Elastic IP slot per instance ---------------------------------------------


@dataclass(frozen=True)
class Slot:
    allocation_id: str
    public_ip: str
    slot: int


def _slot_of(address: Mapping[str, Any]) -> int:
    tags = {t["Key"]: t["Value"] for t in address.get("Tags", [])}
    try:
        return int(tags[TAG_SLOT])
    except (KeyError, ValueError):
        raise BootstrapError(
            f"Elastic IP {address.get('AllocationId')} has no integer {TAG_SLOT} tag "
            "(created outside infra/?)"
        ) from None


def _pool(ec2: AwsClient, stack: str, region_key: str) -> list[dict[str, Any]]:
    response = ec2.describe_addresses(
        Filters=[
            {"Name": f"tag:{TAG_STACK}", "Values": [stack]},
            {"Name": f"tag:{TAG_REGION}", "Values": [region_key]},
        ]
    )
    return sorted(response.get("Addresses", []), key=_slot_of)


def claim_elastic_ip(ec2: AwsClient, instance_id: str, stack: str, region_key: str) -> Slot:
    """Associate the lowest free address of this stack and region with `instance_id`.

    Idempotent (an instance that already holds one keeps it). AllowReassociation=False makes the claim
    atomic: when two booting instances race for one address, AWS refuses the second and it moves on.
    Each address is tried once, so the loop is bounded by the pool size.
    """
    pool = _pool(ec2, stack, region_key)
    if not pool:
        raise BootstrapError(
            f"no Elastic IP tagged {TAG_STACK}={stack}, {TAG_REGION}={region_key} (run `pulumi up` first)"
        )
    for address in pool:
        if address.get("InstanceId") == instance_id:
            return Slot(address["AllocationId"], address["PublicIp"], _slot_of(address))
    for address in pool:
        if address.get("AssociationId"):
            continue
        try:
            ec2.associate_address(
                AllocationId=address["AllocationId"], InstanceId=instance_id, AllowReassociation=False
            )
        except Exception as exc:  # botocore ClientError; the code says whether someone else won the race
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("Resource.AlreadyAssociated", "InvalidAddress.InUse"):
                log.info("address slot %s taken meanwhile, trying the next", _slot_of(address))
                continue
            raise
        return Slot(address["AllocationId"], address["PublicIp"], _slot_of(address))
    raise BootstrapError(
        f"all {len(pool)} Elastic IPs of {stack}/{region_key} are in use: the auto-scaling group's maxCount "
        "must not exceed the address pool (both come from the same stack setting)"
    )


def release_elastic_ip(ec2: AwsClient, instance_id: str, stack: str, region_key: str) -> Slot | None:
    """Give this instance's address back to the pool (graceful stop); None if it held none."""
    for address in _pool(ec2, stack, region_key):
        if address.get("InstanceId") == instance_id and address.get("AssociationId"):
            ec2.disassociate_address(AssociationId=address["AssociationId"])
            return Slot(address["AllocationId"], address["PublicIp"], _slot_of(address))
    return None


# -- Global Accelerator (stableAddress: global-accelerator) -------------------------------------------


def endpoint_groups_for(ssm: AwsClient, prefix: str, region_key: str, slot: int) -> list[str]:
    """The slot's endpoint group ARNs, written by infra/ as a JSON list."""
    name = slot_parameter(prefix, region_key, slot, "endpoint-groups")
    response = ssm.get_parameters(Names=[name])
    if response.get("InvalidParameters") or not response.get("Parameters"):
        raise BootstrapError(f"missing SSM parameter {name} (stableAddress is global-accelerator?)")
    try:
        arns = json.loads(response["Parameters"][0]["Value"])
    except json.JSONDecodeError:
        raise BootstrapError(f"SSM parameter {name}: not a JSON list of endpoint group ARNs") from None
    if not isinstance(arns, list) or not all(isinstance(a, str) and a.startswith("arn:") for a in arns):
        raise BootstrapError(f"SSM parameter {name}: not a JSON list of endpoint group ARNs")
    return arns


def register_accelerator_endpoint(ga: AwsClient, group_arns: Sequence[str], instance_id: str) -> None:
    """Make `instance_id` the only endpoint of each group (client IPs preserved, so the security
    group's Cloudflare allow-list still applies). A previous holder of the slot is removed."""
    for arn in group_arns:
        group = ga.describe_endpoint_group(EndpointGroupArn=arn)["EndpointGroup"]
        stale = [
            {"EndpointId": d["EndpointId"]}
            for d in group.get("EndpointDescriptions", [])
            if d["EndpointId"] != instance_id
        ]
        if stale:
            ga.remove_endpoints(EndpointGroupArn=arn, EndpointIdentifiers=stale)
        if not any(d["EndpointId"] == instance_id for d in group.get("EndpointDescriptions", [])):
            ga.add_endpoints(
                EndpointGroupArn=arn,
                EndpointConfigurations=[
                    {"EndpointId": instance_id, "Weight": 128, "ClientIPPreservationEnabled": True}
                ],
            )


def deregister_accelerator_endpoint(ga: AwsClient, group_arns: Sequence[str], instance_id: str) -> None:
    for arn in group_arns:
        group = ga.describe_endpoint_group(EndpointGroupArn=arn)["EndpointGroup"]
        if any(d["EndpointId"] == instance_id for d in group.get("EndpointDescriptions", [])):
            ga.remove_endpoints(EndpointGroupArn=arn, EndpointIdentifiers=[{"EndpointId": instance_id}])


# -- health ------------------------------------------------------------------------------------------


async def probe(client: httpx.AsyncClient, url: str, *, attempts: int = 3, interval: float = 5.0) -> bool:
    """True as soon as one GET of `url` answers 2xx; at most `attempts` tries, `interval` s apart."""
    if not 1 <= attempts <= 10:
        raise ValueError(f"attempts must be 1..10, got {attempts}")
    if not 0 <= interval <= 60:
        raise ValueError(f"interval must be 0..60 s, got {interval}")
    for attempt in range(attempts):
        try:
            response = await client.get(url, timeout=5.0)
            if response.is_success:
                return True
            log.warning("health probe %s: HTTP %d", url, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("health probe %s: %s", url, type(exc).__name__)
        if attempt + 1 < attempts:
            await asyncio.sleep(interval)
    return False


async def check_health(
    autoscaling: AwsClient, instance_id: str, is_healthy: Callable[[], Awaitable[bool]]
) -> bool:
    """One health round; a dead relay marks the instance Unhealthy so the group replaces it.

    ShouldRespectGracePeriod keeps a booting instance (pip install, first start) from being killed.
    """
    if await is_healthy():
        return True
    autoscaling.set_instance_health(
        InstanceId=instance_id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=True
    )
    log.error(
        "relay on %s failed its health probe: reported Unhealthy to the auto-scaling group", instance_id
    )
    return False


# -- instance identity -------------------------------------------------------------------------------


async def _imds_get(client: httpx.AsyncClient, path: str, base_url: str) -> httpx.Response:
    """One IMDSv2 read (session token first; the launch template requires tokens)."""
    token = await client.put(
        f"{base_url}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}, timeout=2.0
    )
    token.raise_for_status()
    return await client.get(
        f"{base_url}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token.text}, timeout=2.0
    )


async def instance_id_from_imds(client: httpx.AsyncClient, base_url: str = IMDS_URL) -> str:
    """The instance id from the instance metadata service."""
    response = await _imds_get(client, "instance-id", base_url)
    response.raise_for_status()
    instance_id = response.text.strip()
    if not re.fullmatch(r"i-[0-9a-f]{8,17}", instance_id):
        raise BootstrapError(f"instance metadata returned an unexpected instance id {instance_id[:40]!r}")
    return instance_id


async def public_ipv4_from_imds(client: httpx.AsyncClient, base_url: str = IMDS_URL) -> str | None:
    """The instance's public IPv4 (its Elastic IP once `prepare` claimed one); None when it has none."""
    response = await _imds_get(client, "public-ipv4", base_url)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    address = response.text.strip()
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise BootstrapError(
            f"instance metadata returned an unexpected public-ipv4 {address[:40]!r}"
        ) from None
    return address


PUBLIC_ADDRESS_ENV = "SPLITRELAY_PUBLIC_ADDRESS"


# -- the sub-commands the user data's systemd units run (`splitrelay relay bootstrap`, scripts/cli/relay.py)


async def _instance_id() -> str:
    async with httpx.AsyncClient() as client:
        return await instance_id_from_imds(client, imds_url())


async def _public_ipv4() -> str | None:
    async with httpx.AsyncClient() as client:
        return await public_ipv4_from_imds(client, imds_url())


def _session(aws_region: str) -> Any:
    import boto3  # only on the instance; the module's functions take clients

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return boto3.session.Session(region_name=aws_region)


def _accelerator_client() -> AwsClient:
    import boto3

    return boto3.session.Session(region_name="us-west-2").client("globalaccelerator")


ADDRESS_FILE = Path("/run/splitrelay/public-address")
"""Where ``prepare`` (root) leaves the address it claimed for ``exec`` (the relay's user) to advertise."""


def remember_public_address(path: Path, address: str) -> None:
    """Write the claimed address for the relay (not a secret: world-readable, in a root-owned folder)."""
    ipaddress.ip_address(address)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(address + "\n", encoding="utf-8")
    path.chmod(0o644)


RELAY_ID_FILE = Path("/run/splitrelay/relay-id")
"""The relay id ``prepare`` derives from the slot it claimed (``<region key>-<slot>``: the id infra gives the
slot in the edge's registry), for ``exec`` to hand the relay, which names itself so in its heartbeats."""
RELAY_ID_ENV = "SPLITRELAY_RELAY_ID"
_RELAY_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def slot_relay_id(region_key: str, slot: int) -> str:
    """The registry id of a region's slot (infra/edge.py ``registry_entry`` names slots the same way)."""
    relay_id = f"{region_key}-{slot}"
    if not _RELAY_ID.fullmatch(relay_id):
        raise BootstrapError(f"relay id {relay_id[:70]!r}: must be 1..64 of a-z, 0-9 and '-'")
    return relay_id


def remember_relay_id(path: Path, relay_id: str) -> None:
    """Write the relay id for ``exec`` (not a secret: world-readable, in a root-owned folder)."""
    if not _RELAY_ID.fullmatch(relay_id):
        raise ValueError(f"relay id {relay_id[:70]!r}: must be 1..64 of a-z, 0-9 and '-'")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(relay_id + "\n", encoding="utf-8")
    path.chmod(0o644)


def claimed_relay_id(path: Path) -> str | None:
    """The relay id ``prepare`` left on this boot, or None (none, or not an id)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if _RELAY_ID.fullmatch(text) else None


def claimed_public_address(path: Path) -> str | None:
    """The address ``prepare`` claimed on this boot, or None if it left none (or an unreadable one)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        ipaddress.ip_address(text)
    except (OSError, ValueError):
        return None
    return text


def prepare(stack: str, aws_region: str, region_key: str, tls_dir: Path, accelerator: bool) -> dict[str, Any]:
    """Claim an address slot, join its accelerator, write the origin TLS files; returns the claim."""
    prefix = parameter_prefix(stack)
    session = _session(aws_region)
    instance_id = asyncio.run(_instance_id())
    slot = claim_elastic_ip(session.client("ec2"), instance_id, stack, region_key)
    if accelerator:
        arns = endpoint_groups_for(session.client("ssm"), prefix, region_key, slot.slot)
        register_accelerator_endpoint(_accelerator_client(), arns, instance_id)
    write_origin_tls(session.client("ssm"), prefix, tls_dir)
    # The relay advertises this address; metadata read right after the association can still be stale.
    remember_public_address(ADDRESS_FILE, slot.public_ip)
    remember_relay_id(RELAY_ID_FILE, slot_relay_id(region_key, slot.slot))
    return {"slot": slot.slot, "public_ip": slot.public_ip, "instance_id": instance_id}


def release(stack: str, aws_region: str, region_key: str, accelerator: bool) -> None:
    """Leave the accelerator and give the address back."""
    prefix = parameter_prefix(stack)
    session = _session(aws_region)
    instance_id = asyncio.run(_instance_id())
    slot = release_elastic_ip(session.client("ec2"), instance_id, stack, region_key)
    if accelerator and slot is not None:
        arns = endpoint_groups_for(session.client("ssm"), prefix, region_key, slot.slot)
        deregister_accelerator_endpoint(_accelerator_client(), arns, instance_id)


def exec_with_secrets(stack: str, aws_region: str, command: Sequence[str]) -> None:
    """Load the relay's secrets (and the public IP) into the environment and exec ``command``."""
    if not command:
        raise BootstrapError("exec: give the command after --")
    prefix = parameter_prefix(stack)
    session = _session(aws_region)
    env = {**os.environ, **load_relay_secrets(session.client("ssm"), prefix)}
    # The address prepare claimed; instance metadata only when it left none (a relay started by hand).
    public_ip = claimed_public_address(ADDRESS_FILE) or asyncio.run(_public_ipv4())
    if public_ip is not None:  # the relay advertises it as its 1:1 NAT address (--public-address)
        env[PUBLIC_ADDRESS_ENV] = public_ip
    relay_id = claimed_relay_id(RELAY_ID_FILE)
    if relay_id is not None:  # its heartbeats to the edge name it so (with $SPLITRELAY_EDGE_URL)
        env[RELAY_ID_ENV] = relay_id
    os.execvpe(command[0], list(command), env)  # replaces this process (returns only under a test)


def check_health_once(stack: str, aws_region: str, url: str, attempts: int) -> bool:
    """Probe the relay once; report the instance Unhealthy when it is dead. True when healthy."""
    parameter_prefix(stack)  # the same validation as the other sub-commands
    session = _session(aws_region)
    instance_id = asyncio.run(_instance_id())

    async def healthy() -> bool:
        async with httpx.AsyncClient() as client:
            return await probe(client, url, attempts=attempts)

    return asyncio.run(check_health(session.client("autoscaling"), instance_id, healthy))
