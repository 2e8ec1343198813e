"""AWS, per region: network, security group, SSM secrets, relay slots with stable addresses, and the
auto-scaling group of relays; plus each slot's proxied DNS name and the shared origin certificate.

A *slot* is one relay's public identity: an Elastic IP (tagged with stack, region and slot number),
a proxied DNS name `relay-<region>-<n>.<zone>` (Workers cannot fetch IP addresses, and only port 443)
and one entry in the relay registry. A booting instance claims the lowest free slot
(relay/aws_bootstrap.py). With `stableAddress: global-accelerator` each slot also gets its own
accelerator (TCP 443 and the UDP media range), whose endpoint group the slot's instance joins with
client IPs preserved; the DNS name then points at the accelerator.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_cloudflare as cloudflare
import pulumi_tls as tls

from splitrelay.infra.bundle import RelayBundle
from splitrelay.infra.settings import METRICS_PORT, RegionSettings, StackSettings
from splitrelay.infra.user_data import RelayBoot, render_user_data
from splitrelay.relay.aws_bootstrap import (
    ORIGIN_PULL_CA_PARAM,
    SFU_SECRET_PARAM,
    SIGNING_KEY_PARAM,
    TAG_REGION,
    TAG_SLOT,
    TAG_STACK,
    TLS_CERT_PARAM,
    TLS_KEY_PARAM,
    WIRE_KEY_PARAM,
    parameter_prefix,
    slot_parameter,
)

CONTROL_TLS_PORT = 443
GA_REGION = "us-west-2"  # the Global Accelerator API lives only there
UBUNTU_AMI_PARAM = "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"


@dataclass(frozen=True)
class OriginTls:
    certificate: pulumi.Output[str]
    private_key: pulumi.Output[str]
    pull_ca: pulumi.Output[str]
    """The CA of the client certificate Cloudflare presents to the relays (Authenticated Origin Pulls)."""
    pull_certificate_id: pulumi.Output[str]
    """That client certificate, uploaded for per-hostname Authenticated Origin Pulls."""


@dataclass
class RegionRelays:
    region: RegionSettings
    security_group: aws.ec2.SecurityGroup
    launch_template: aws.ec2.LaunchTemplate
    group: aws.autoscaling.Group
    addresses: list[aws.ec2.Eip] = field(default_factory=list)
    accelerators: list[aws.globalaccelerator.Accelerator] = field(default_factory=list)
    hostnames: list[str] = field(default_factory=list)


def origin_tls(settings: StackSettings) -> OriginTls:
    """One Cloudflare Origin CA certificate for `*.<zone>`: trusted by Cloudflare's proxy only, valid
    15 years, and unchanged when slots are added (a new certificate would revoke the one relays use)."""
    key = tls.PrivateKey("relay-origin-key", algorithm="ECDSA", ecdsa_curve="P256")
    csr = tls.CertRequest(
        "relay-origin-csr",
        private_key_pem=key.private_key_pem,
        subject=tls.CertRequestSubjectArgs(common_name=f"*.{settings.zone_name}", organization="splitrelay"),
        dns_names=[f"*.{settings.zone_name}"],
    )
    cert = cloudflare.OriginCaCertificate(
        "relay-origin-cert",
        csr=csr.cert_request_pem,
        hostnames=[f"*.{settings.zone_name}"],
        request_type="origin-ecc",
        requested_validity=5475,
    )
    pull_ca, pull_certificate_id = origin_pull_certificate(settings)
    # The certificate is public, but derived from the key's CSR Pulumi would keep it marked secret.
    return OriginTls(
        pulumi.Output.unsecret(cert.certificate),
        pulumi.Output.secret(key.private_key_pem),
        pull_ca,
        pull_certificate_id,
    )


PULL_CA_HOURS = 20 * 365 * 24
"""The stack's own CA for origin pulls outlives any deploy: relays keep its file until replaced."""
PULL_CERT_HOURS = 5 * 365 * 24
PULL_CERT_RENEW_HOURS = 365 * 24
"""The client certificate is re-issued (same CA, so running relays keep accepting it) by the first
`pulumi up` in its last year."""


def origin_pull_certificate(settings: StackSettings) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """Authenticated Origin Pulls per hostname: Cloudflare presents a client certificate of this stack's
    own CA to the relay hostnames, and nginx requires it. The security group admits all of Cloudflare's
    ranges and any Cloudflare account could point a hostname at a relay; only this zone holds the key.
    Returns (CA certificate PEM, the uploaded client certificate's id)."""
    ca_key = tls.PrivateKey("relay-origin-pull-ca-key", algorithm="ECDSA", ecdsa_curve="P256")
    ca = tls.SelfSignedCert(
        "relay-origin-pull-ca",
        private_key_pem=ca_key.private_key_pem,
        is_ca_certificate=True,
        validity_period_hours=PULL_CA_HOURS,
        allowed_uses=["cert_signing", "crl_signing"],
        subject=tls.SelfSignedCertSubjectArgs(
            common_name=f"splitrelay {settings.stack} origin pull CA", organization="splitrelay"
        ),
    )
    client_key = tls.PrivateKey("relay-origin-pull-key", algorithm="ECDSA", ecdsa_curve="P256")
    request = tls.CertRequest(
        "relay-origin-pull-csr",
        private_key_pem=client_key.private_key_pem,
        subject=tls.CertRequestSubjectArgs(
            common_name=f"cloudflare origin pull {settings.zone_name}", organization="splitrelay"
        ),
    )
    client = tls.LocallySignedCert(
        "relay-origin-pull-cert",
        cert_request_pem=request.cert_request_pem,
        ca_private_key_pem=ca_key.private_key_pem,
        ca_cert_pem=ca.cert_pem,
        validity_period_hours=PULL_CERT_HOURS,
        early_renewal_hours=PULL_CERT_RENEW_HOURS,
        allowed_uses=["client_auth", "digital_signature"],
    )
    client_secret_key: pulumi.Output[str] = pulumi.Output.secret(client_key.private_key_pem)
    uploaded = cloudflare.AuthenticatedOriginPullsHostnameCertificate(
        "relay-origin-pull-upload",
        zone_id=settings.zone_id,
        certificate=client.cert_pem,
        private_key=client_secret_key,
    )
    return pulumi.Output.unsecret(ca.cert_pem), uploaded.id


def origin_pulls_for(
    settings: StackSettings, region: RegionSettings, hostnames: list[str], origin: OriginTls
) -> None:
    """Turn Authenticated Origin Pulls on for the region's relay hostnames, with the stack's certificate."""
    cloudflare.AuthenticatedOriginPulls(
        f"relay-{region.key}-origin-pulls",
        zone_id=settings.zone_id,
        configs=[
            cloudflare.AuthenticatedOriginPullsConfigArgs(
                cert_id=origin.pull_certificate_id, enabled=True, hostname=hostname
            )
            for hostname in hostnames
        ],
    )


def ssl_strict_rule(settings: StackSettings) -> cloudflare.Ruleset:
    """A configuration rule: Cloudflare verifies the relays' origin certificate (Full strict) whatever
    the zone-wide SSL mode is. A zone has one such ruleset: set manageSslRule false if yours exists."""
    hosts = " ".join(
        f'"{settings.relay_hostname(r, n)}"' for r in settings.regions for n in range(r.max_count)
    )
    return cloudflare.Ruleset(
        "relay-ssl-strict",
        zone_id=settings.zone_id,
        kind="zone",
        phase="http_config_settings",
        name="splitrelay relays: Full (strict) TLS to origin",
        rules=[
            cloudflare.RulesetRuleArgs(
                action="set_config",
                expression=f"(http.host in {{{hosts}}})",
                description="splitrelay relay control API",
                action_parameters=cloudflare.RulesetRuleActionParametersArgs(ssl="strict"),
            )
        ],
    )


def _split(cidrs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    v4 = [c for c in cidrs if ipaddress.ip_network(c).version == 4]
    v6 = [c for c in cidrs if ipaddress.ip_network(c).version == 6]
    return v4, v6


def security_group_rules(
    settings: StackSettings, region: RegionSettings
) -> tuple[list[aws.ec2.SecurityGroupIngressArgs], list[aws.ec2.SecurityGroupEgressArgs]]:
    """Ingress: HTTPS from the control allow-list, the media UDP range from the media allow-list, the
    metrics listener from the metrics allow-list (none by default), and nothing else (no SSH: use SSM
    Session Manager if you must). Egress: everything, because the relay
    needs HTTPS (SSM, PyPI, the SFU API), apt over HTTP, and UDP to the SFU and inference."""
    control_v4, control_v6 = _split(settings.control_allow_list)
    media_v4, media_v6 = _split(settings.media_allow_list)
    low, high = settings.media_ports(region)  # one port per worker (relayMediaPort), or relayPortRange
    ingress = [
        aws.ec2.SecurityGroupIngressArgs(
            description="relay control API (HTTPS) from the Worker via Cloudflare",
            protocol="tcp",
            from_port=CONTROL_TLS_PORT,
            to_port=CONTROL_TLS_PORT,
            cidr_blocks=control_v4 or None,
            ipv6_cidr_blocks=control_v6 or None,
        ),
        aws.ec2.SecurityGroupIngressArgs(
            description="relay media (ICE, DTLS, SRTP)",
            protocol="udp",
            from_port=low,
            to_port=high,
            cidr_blocks=media_v4 or None,
            ipv6_cidr_blocks=media_v6 or None,
        ),
    ]
    metrics_v4, metrics_v6 = _split(settings.metrics_allow_list)
    if metrics_v4 or metrics_v6:
        ingress.append(
            aws.ec2.SecurityGroupIngressArgs(
                description="relay metrics and health (Prometheus), private",
                protocol="tcp",
                from_port=METRICS_PORT,
                to_port=METRICS_PORT,
                cidr_blocks=metrics_v4 or None,
                ipv6_cidr_blocks=metrics_v6 or None,
            )
        )
    egress = [
        aws.ec2.SecurityGroupEgressArgs(
            description="all outbound",
            protocol="-1",
            from_port=0,
            to_port=0,
            cidr_blocks=["0.0.0.0/0"],
            ipv6_cidr_blocks=["::/0"],
        )
    ]
    return ingress, egress


def network(
    region: RegionSettings, provider: aws.Provider
) -> tuple[pulumi.Input[str], list[pulumi.Input[str]]]:
    """The given VPC and subnets, or a new VPC with two public subnets in two availability zones."""
    if region.vpc_id is not None:
        return region.vpc_id, list(region.subnet_ids)
    opts = pulumi.ResourceOptions(provider=provider)
    name = f"relays-{region.key}"
    vpc = aws.ec2.Vpc(
        f"{name}-vpc",
        cidr_block=region.vpc_cidr,
        enable_dns_hostnames=True,
        enable_dns_support=True,
        tags={"Name": name},
        opts=opts,
    )
    gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=opts)
    table = aws.ec2.RouteTable(
        f"{name}-public",
        vpc_id=vpc.id,
        routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
        opts=opts,
    )
    zones = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(provider=provider))
    blocks = list(ipaddress.ip_network(region.vpc_cidr).subnets(prefixlen_diff=2))
    subnets: list[pulumi.Input[str]] = []
    for i, zone in enumerate(zones.names[:2]):
        subnet = aws.ec2.Subnet(
            f"{name}-public-{i}",
            vpc_id=vpc.id,
            cidr_block=str(blocks[i]),
            availability_zone=zone,
            map_public_ip_on_launch=True,  # outbound before the Elastic IP is claimed (pip, SSM)
            tags={"Name": f"{name}-public-{i}"},
            opts=opts,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=table.id, opts=opts
        )
        subnets.append(subnet.id)
    return vpc.id, subnets


@dataclass(frozen=True)
class BundleObject:
    """Where a region's relays fetch the bundle: a private bucket of this stack, one object per bundle."""

    url: pulumi.Output[str]
    arn: pulumi.Output[str]
    bundle: RelayBundle


def bundle_object(region: RegionSettings, bundle: RelayBundle, provider: aws.Provider) -> BundleObject:
    """A private, encrypted bucket in the region (no cross-region fetch at boot) holding the bundle."""
    opts = pulumi.ResourceOptions(provider=provider)
    bucket = aws.s3.Bucket(
        f"relay-{region.key}-bundle",
        bucket_prefix=f"splitrelay-{region.key}-",
        force_destroy=True,
        tags={"splitrelay": "relay-bundle"},
        opts=opts,
    )
    aws.s3.BucketPublicAccessBlock(
        f"relay-{region.key}-bundle-private",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=opts,
    )
    aws.s3.BucketOwnershipControls(
        f"relay-{region.key}-bundle-owner",
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        opts=opts,
    )
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"relay-{region.key}-bundle-sse",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"
                )
            )
        ],
        opts=opts,
    )
    obj = aws.s3.BucketObjectv2(
        f"relay-{region.key}-bundle-object",
        bucket=bucket.id,
        key=bundle.object_key,
        source=pulumi.FileAsset(str(bundle.path)),
        content_type="application/gzip",
        checksum_algorithm="SHA256",
        opts=opts,
    )
    url = bucket.bucket.apply(
        lambda name: f"https://{name}.s3.{region.aws_region}.amazonaws.com/{bundle.object_key}"
    )
    arn = pulumi.Output.all(bucket.arn, obj.key).apply(lambda parts: f"{parts[0]}/{parts[1]}")
    return BundleObject(url, arn, bundle)


def instance_role(
    settings: StackSettings, region: RegionSettings, provider: aws.Provider, bundle_arn: pulumi.Output[str]
) -> aws.iam.InstanceProfile:
    """What aws_bootstrap needs, and no more: read this stack's parameters, claim addresses, report health."""
    opts = pulumi.ResourceOptions(provider=provider)
    prefix = parameter_prefix(settings.stack)
    # Only this stack's addresses, instances, groups and accelerators (each carries the stack tag).
    stack_tag = {"StringEquals": {f"aws:ResourceTag/{TAG_STACK}": settings.stack}}
    role = aws.iam.Role(
        f"relay-{region.key}-role",
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
        opts=opts,
    )
    statements: list[dict[str, object]] = [
        {
            "Effect": "Allow",
            "Action": ["ssm:GetParameters", "ssm:GetParameter"],
            "Resource": f"arn:aws:ssm:{region.aws_region}:*:parameter{prefix}/*",
        },
        # DescribeAddresses supports no resource-level permission or tag condition: "*" only.
        {"Effect": "Allow", "Action": ["ec2:DescribeAddresses"], "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": ["ec2:AssociateAddress", "ec2:DisassociateAddress"],
            "Resource": [
                f"arn:aws:ec2:{region.aws_region}:*:elastic-ip/*",
                f"arn:aws:ec2:{region.aws_region}:*:instance/*",
            ],
            "Condition": stack_tag,
        },
        {
            "Effect": "Allow",
            "Action": ["autoscaling:SetInstanceHealth"],
            "Resource": (
                f"arn:aws:autoscaling:{region.aws_region}:*:autoScalingGroup:*:autoScalingGroupName/*"
            ),
            "Condition": stack_tag,
        },
    ]
    if settings.stable_address == "global-accelerator":
        statements.append(
            {
                "Effect": "Allow",
                "Action": [
                    "globalaccelerator:DescribeEndpointGroup",
                    "globalaccelerator:AddEndpoints",
                    "globalaccelerator:RemoveEndpoints",
                ],
                # Global Accelerator is global: its ARNs carry no region.
                "Resource": "arn:aws:globalaccelerator::*:accelerator/*",
                "Condition": stack_tag,
            }
        )
    aws.iam.RolePolicy(
        f"relay-{region.key}-policy",
        role=role.id,
        # The bundle: this one object and nothing else in S3.
        policy=bundle_arn.apply(
            lambda arn: json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        *statements,
                        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": arn},
                    ],
                }
            )
        ),
        opts=opts,
    )
    return aws.iam.InstanceProfile(f"relay-{region.key}-profile", role=role.name, opts=opts)


def relay_parameters(
    settings: StackSettings,
    region: RegionSettings,
    provider: aws.Provider,
    relay_signing_key: pulumi.Output[str],
    sfu_secret: pulumi.Output[str],
    origin: OriginTls,
    wire_key: pulumi.Output[str],
) -> list[aws.ssm.Parameter]:
    """The relay's secrets as SecureString (KMS aws/ssm) parameters; the certificate is public."""
    prefix = parameter_prefix(settings.stack)
    opts = pulumi.ResourceOptions(provider=provider)
    values: list[tuple[str, pulumi.Output[str], bool]] = [
        (SIGNING_KEY_PARAM, relay_signing_key, True),
        (SFU_SECRET_PARAM, sfu_secret, True),
        (WIRE_KEY_PARAM, wire_key, True),
        (TLS_KEY_PARAM, origin.private_key, True),
        (TLS_CERT_PARAM, origin.certificate, False),
        (ORIGIN_PULL_CA_PARAM, origin.pull_ca, False),
    ]
    parameters = []
    for leaf, value, secret in values:
        stored: pulumi.Output[str] = pulumi.Output.secret(value) if secret else value
        parameters.append(
            aws.ssm.Parameter(
                f"relay-{region.key}-{leaf}",
                name=f"{prefix}/{leaf}",
                type="SecureString" if secret else "String",
                value=stored,
                tier="Standard",
                opts=opts,
            )
        )
    return parameters


def slot_accelerator(
    settings: StackSettings,
    region: RegionSettings,
    slot: int,
    ga_provider: aws.Provider,
    provider: aws.Provider,
) -> aws.globalaccelerator.Accelerator:
    """One accelerator per slot (a standard accelerator load-balances, and the edge must reach the
    relay that owns a call). The slot's instance adds itself to both endpoint groups at boot."""
    opts = pulumi.ResourceOptions(provider=ga_provider)
    name = f"relay-{region.key}-{slot}"
    accelerator = aws.globalaccelerator.Accelerator(
        f"{name}-ga",
        name=f"{settings.stack}-{name}"[:64],
        ip_address_type="IPV4",
        enabled=True,
        # The instance role may change endpoints only on accelerators with this stack's tag.
        tags={TAG_STACK: settings.stack, TAG_REGION: region.key, TAG_SLOT: str(slot)},
        opts=opts,
    )
    low, high = settings.media_ports(region)
    groups = []
    for protocol, ports in (("TCP", (CONTROL_TLS_PORT, CONTROL_TLS_PORT)), ("UDP", (low, high))):
        listener = aws.globalaccelerator.Listener(
            f"{name}-ga-{protocol.lower()}",
            accelerator_arn=accelerator.arn,
            protocol=protocol,
            client_affinity="SOURCE_IP",
            port_ranges=[aws.globalaccelerator.ListenerPortRangeArgs(from_port=ports[0], to_port=ports[1])],
            opts=opts,
        )
        groups.append(
            aws.globalaccelerator.EndpointGroup(
                f"{name}-ga-{protocol.lower()}-group",
                listener_arn=listener.arn,
                endpoint_group_region=region.aws_region,
                health_check_protocol="TCP",
                health_check_port=CONTROL_TLS_PORT,
                opts=pulumi.ResourceOptions(provider=ga_provider, ignore_changes=["endpoint_configurations"]),
            )
        )
    aws.ssm.Parameter(
        f"{name}-endpoint-groups",
        name=slot_parameter(parameter_prefix(settings.stack), region.key, slot, "endpoint-groups"),
        type="String",
        value=pulumi.Output.all(*[g.arn for g in groups]).apply(lambda arns: json.dumps(list(arns))),
        opts=pulumi.ResourceOptions(provider=provider),
    )
    return accelerator


def build_region(
    settings: StackSettings,
    region: RegionSettings,
    relay_signing_key: pulumi.Output[str],
    sfu_app_id: pulumi.Output[str],
    sfu_secret: pulumi.Output[str],
    origin: OriginTls,
    ga_provider: aws.Provider | None,
    bundle: RelayBundle,
    wire_key: pulumi.Output[str],
) -> RegionRelays:
    provider = aws.Provider(f"aws-{region.key}", region=region.aws_region)
    opts = pulumi.ResourceOptions(provider=provider)
    vpc_id, subnet_ids = network(region, provider)
    ingress, egress = security_group_rules(settings, region)
    group_sg = aws.ec2.SecurityGroup(
        f"relay-{region.key}-sg",
        vpc_id=vpc_id,
        description="splitrelay relays: HTTPS control from the allow-list, UDP media range",
        ingress=ingress,
        egress=egress,
        opts=opts,
    )
    shipped = bundle_object(region, bundle, provider)
    profile = instance_role(settings, region, provider, shipped.arn)
    parameters = relay_parameters(settings, region, provider, relay_signing_key, sfu_secret, origin, wire_key)
    tags = {TAG_STACK: settings.stack, TAG_REGION: region.key}
    result_addresses: list[aws.ec2.Eip] = []
    accelerators: list[aws.globalaccelerator.Accelerator] = []
    hostnames: list[str] = []
    for slot in range(region.max_count):
        hostname = settings.relay_hostname(region, slot)
        hostnames.append(hostname)
        eip = aws.ec2.Eip(
            f"relay-{region.key}-{slot}-eip", domain="vpc", tags={**tags, TAG_SLOT: str(slot)}, opts=opts
        )
        result_addresses.append(eip)
        if settings.stable_address == "global-accelerator":
            assert ga_provider is not None
            accelerator = slot_accelerator(settings, region, slot, ga_provider, provider)
            accelerators.append(accelerator)
            record_type, content = "CNAME", accelerator.dns_name
        else:
            record_type, content = "A", eip.public_ip
        cloudflare.DnsRecord(
            f"relay-{region.key}-{slot}-dns",
            zone_id=settings.zone_id,
            name=hostname,
            type=record_type,
            content=content,
            proxied=True,
            ttl=1,
            comment=f"splitrelay {settings.stack} relay slot {region.key}-{slot}",
        )
    origin_pulls_for(settings, region, hostnames, origin)
    user_data = pulumi.Output.all(sfu_app_id, shipped.url).apply(
        lambda values: base64.b64encode(
            render_user_data(
                RelayBoot(
                    stack=settings.stack,
                    aws_region=region.aws_region,
                    region_key=region.key,
                    bundle_url=values[1],
                    bundle_sha256=bundle.sha256,
                    bundle_requirement=bundle.requirement,
                    inference=region.inference,
                    port_range=settings.port_range,
                    media_port=settings.media_port,
                    media_workers=settings.media_workers(region),
                    sfu_api_url=settings.sfu_api_url,
                    sfu_app_id=values[0],
                    accelerator=settings.stable_address == "global-accelerator",
                    edge_url=settings.edge_url,
                )
            ).encode()
        ).decode()
    )
    image = region.ami or f"resolve:ssm:{UBUNTU_AMI_PARAM.format(arch=region.architecture)}"
    template = aws.ec2.LaunchTemplate(
        f"relay-{region.key}-lt",
        image_id=image,
        instance_type=region.instance_type,
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
        # A public address from launch: apt and pip run before prepare claims the Elastic IP, and a
        # subnet given by vpcId/subnetIds may not map public addresses on its own.
        network_interfaces=[
            aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                device_index=0,
                associate_public_ip_address="true",
                delete_on_termination="true",
                security_groups=[group_sg.id],
            )
        ],
        user_data=user_data,
        update_default_version=True,
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
        ),
        tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(
                resource_type="instance", tags={**tags, "Name": f"relay-{region.key}"}
            )
        ],
        opts=pulumi.ResourceOptions(provider=provider, depends_on=parameters),
    )
    group = aws.autoscaling.Group(
        f"relay-{region.key}-asg",
        min_size=region.min_count,
        max_size=region.max_count,
        desired_capacity=region.min_count,
        vpc_zone_identifiers=subnet_ids,
        launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
            id=template.id, version=template.latest_version.apply(str)
        ),
        health_check_type="EC2",
        health_check_grace_period=600,
        tags=[
            aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True) for k, v in tags.items()
        ],
        instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
            strategy="Rolling",
            preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(min_healthy_percentage=50),
        ),
        opts=opts,
    )
    return RegionRelays(region, group_sg, template, group, result_addresses, accelerators, hostnames)
