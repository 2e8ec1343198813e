"""The relay instance's first-boot script (EC2 user data), rendered by a pure function.

What it sets up, in boot order:
- the relay bundle (infra/bundle.py: this checkout's wheel and its locked dependencies) fetched from the
  stack's private S3 object with the instance role, its sha256 checked against the value rendered here,
  and installed into /opt/splitrelay with `pip --no-index` (no public package name is resolved);
- the relay's native fast path (relay/media/native) compiled for this instance's CPU and Python with
  Ubuntu's gcc and Python headers (the wheel ships its C source; cffi builds it with the bundle's
  setuptools). A failed build does not fail the boot: the relay then runs the Python path, about 1.5-2x
  the CPU per call, and says so in its log (`fast path: Python per-datagram path: ...`); nginx;
- `splitrelay-prepare.service` (oneshot, root): claims the region's free Elastic IP slot, joins the
  slot's Global Accelerator endpoint groups when the stack uses them, writes the Origin CA TLS files
  (relay/aws_bootstrap.py `prepare`); on stop it gives the slot back (`release`);
- the kernel's per-socket UDP buffer caps raised (/etc/sysctl.d/60-splitrelay-udp.conf), so the relay's
  media and inference sockets get the buffers they ask for instead of Ubuntu's 208 KiB;
- nginx: TLS on 443 (the only control port the security group opens) in front of the relay's
  plain-HTTP control API on 127.0.0.1:8700;
- `splitrelay-relay.service` (user `splitrelay`): `splitrelay relay serve --workers <cores>` wrapped by
  `splitrelay relay bootstrap exec`, which puts the SSM secrets in the process environment only;
- `splitrelay-health.timer`: every 30 s, `splitrelay relay bootstrap check-health` reports a dead relay to the
  auto-scaling group, which replaces the instance.

No secret is in the user data (anyone with ec2:DescribeInstanceAttribute can read it): secrets come
from SSM at run time. Every value put into the script is validated by infra/settings.py and quoted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from splitrelay.infra.settings import CONTROL_PORT, MEDIA_PORT_WORKERS, METRICS_PORT

VENV = "/opt/splitrelay"
TLS_DIR = "/etc/splitrelay/tls"
MAX_USER_DATA_BYTES = 16 * 1024  # EC2's limit, before base64
DRAIN_GRACE_S = 30
UDP_BUFFER_MAX_BYTES = 16 * 1024 * 1024
"""net.core.rmem_max/wmem_max on the instance. The relay asks for 4 MiB per media socket and 2 MiB per
inference socket; Ubuntu caps every socket at 208 KiB unless these are raised, and the kernel silently
gives the cap: about 4 ms of datagrams at 1,000 calls, so any longer pause of the relay drops packets."""
"""`relay serve`'s default --drain-grace: what SIGTERM gives live calls before it closes them."""


@dataclass(frozen=True)
class RelayBoot:
    stack: str
    aws_region: str
    region_key: str
    bundle_url: str
    """The bundle's S3 object (virtual-hosted URL); fetched with the instance role, SigV4-signed by curl."""
    bundle_sha256: str
    bundle_requirement: str
    """What pip installs from the bundle's wheels, e.g. ``splitrelay[relay]==0.1.0``."""
    inference: str
    port_range: tuple[int, int]
    sfu_api_url: str
    sfu_app_id: str
    accelerator: bool
    media_port: int | None = None
    """One UDP port per worker (``--media-port``, workers capped at ``media_workers``) instead of
    ``port_range``; None: a port per call (the relayPortRange fallback)."""
    media_workers: int = MEDIA_PORT_WORKERS
    """With ``media_port``: at most this many workers, the ports the security group opens."""
    edge_url: str = ""
    """The edge's base URL (``https://<hostname>``): the relay's heartbeats and call-end notices go there,
    naming it by the slot id ``prepare`` claimed ($SPLITRELAY_RELAY_ID). Empty: no heartbeats."""


_UNIT_SAFE = re.compile(r"[A-Za-z0-9_.:/\[\]-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+/[A-Za-z0-9._/-]+")
_EDGE_URL = re.compile(r"https://[a-z0-9.-]+")
_REQUIREMENT = re.compile(r"splitrelay\[[a-z,]+\]==[0-9][0-9A-Za-z.+-]*")
IMDS_URL = "http://169.254.169.254"
BUNDLE_DIR = "/opt/splitrelay-bundle"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"""S3 wants x-amz-content-sha256 on SigV4 requests; curl before 8.x does not add it, so the script does
(for a GET, the hash of the empty body: curl signs that same value)."""


def _unit_arg(value: str, what: str) -> str:
    """Values inside systemd ExecStart lines: no spaces, quotes, `%` specifiers or `$` expansions."""
    if not _UNIT_SAFE.fullmatch(value):
        raise ValueError(f"user data: {what} {value!r} has characters unsafe in a systemd unit")
    return value


def _checked(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise ValueError(f"user data: {what} {value!r} is not of the expected form")
    return value


def relay_command(boot: RelayBoot) -> list[str]:
    """The relay's command line; PRIVATE_IP and CORES are filled in by the script at boot."""
    low, high = boot.port_range
    media = (
        ["--port-range", f"{low}-{high}"]
        if boot.media_port is None
        else ["--media-port", str(boot.media_port)]
    )
    return [
        f"{VENV}/bin/splitrelay",
        "relay",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(CONTROL_PORT),
        "--inference",
        _unit_arg(boot.inference, "inference"),
        "--candidate-address",
        "${PRIVATE_IP}",
        *media,
        "--workers",
        "${CORES}",
        "--sfu-url",
        _unit_arg(boot.sfu_api_url, "sfuApiUrl"),
        "--sfu-app-id",
        _unit_arg(boot.sfu_app_id, "SFU app id"),
        "--json",
    ]


def nginx_site() -> str:
    """nginx in front of the relay: the signed control API on 443 and nothing else; metrics and health on
    a private listener. Slow clients are cut after 10 s of headers or body (the relay's own limits)."""
    return f"""# The relay's control API for the edge (Cloudflare Origin CA certificate; Full (strict) mode).
# Only /v1/ is proxied: the relay checks the edge's signature there. Anything else is 404 here.
server {{
    listen 443 ssl default_server;
    listen [::]:443 ssl default_server;
    ssl_certificate {TLS_DIR}/origin.pem;
    ssl_certificate_key {TLS_DIR}/origin.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    # Authenticated Origin Pulls: the handshake needs Cloudflare's client certificate for this stack's
    # zone (infra/relays.py), so another Cloudflare account pointing a hostname here gets nowhere.
    ssl_client_certificate {TLS_DIR}/origin-pull-ca.pem;
    ssl_verify_client on;
    client_max_body_size 64k;
    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 10s;
    keepalive_timeout 30s;
    location /v1/ {{
        proxy_pass http://127.0.0.1:{CONTROL_PORT};
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_read_timeout 30s;
    }}
    location / {{
        return 404;
    }}
}}

# Prometheus and load balancers: /metrics, /healthz, /readyz over plain HTTP on a private port that the
# security group opens only to metricsAllowList (docs/deploy.md, "Metrics").
server {{
    listen {METRICS_PORT};
    listen [::]:{METRICS_PORT};
    client_header_timeout 10s;
    location ~ ^/(metrics|healthz|readyz)$ {{
        proxy_pass http://127.0.0.1:{CONTROL_PORT};
        proxy_http_version 1.1;
        proxy_read_timeout 10s;
    }}
    location / {{
        return 404;
    }}
}}
"""


def render_user_data(boot: RelayBoot) -> str:
    """The whole script; raises ValueError if a value is unsafe or the script exceeds EC2's 16 KB."""
    bundle_url = _checked(_URL, boot.bundle_url, "bundle URL")
    bundle_sha256 = _checked(_SHA256, boot.bundle_sha256, "bundle sha256")
    requirement = _checked(_REQUIREMENT, boot.bundle_requirement, "bundle requirement")
    aws_region = _unit_arg(boot.aws_region, "awsRegion")
    bootstrap = (
        f"{VENV}/bin/splitrelay relay bootstrap --stack {_unit_arg(boot.stack, 'stack')} "
        f"--aws-region {_unit_arg(boot.aws_region, 'awsRegion')}"
    )
    region_key = _unit_arg(boot.region_key, "region key")
    accel = " --accelerator" if boot.accelerator else ""
    relay = " ".join(relay_command(boot))
    if not 1 <= boot.media_workers <= MEDIA_PORT_WORKERS:
        raise ValueError(
            f"user data: media_workers must be 1..{MEDIA_PORT_WORKERS}, got {boot.media_workers}"
        )
    cores_cap = (
        ""
        if boot.media_port is None
        else f"# One media port per worker: the security group opens {boot.media_workers} of them.\n"
        f'if [ "$CORES" -gt {boot.media_workers} ]; then CORES={boot.media_workers}; fi'
    )
    edge_env = (
        f"Environment=SPLITRELAY_EDGE_URL={_checked(_EDGE_URL, boot.edge_url, 'edge URL')}\n"
        if boot.edge_url
        else ""
    )
    script = f"""#!/bin/bash
# splitrelay relay instance bootstrap: rendered by infra/user_data.py, do not edit on the instance.
set -euo pipefail
# Fail loudly: an instance whose boot failed must not sit EC2-healthy serving nothing. Stopping it makes
# the auto-scaling group replace it, and its registry slot never turns healthy.
boot_failed() {{
  echo "splitrelay: boot failed (line $1, exit $2); stopping this instance" >&2
  shutdown -h now || poweroff
}}
trap 'boot_failed $LINENO $?' ERR
export DEBIAN_FRONTEND=noninteractive
# unattended-upgrades may hold the dpkg lock at first boot: wait for it instead of failing.
APT="apt-get -o DPkg::Lock::Timeout=600"
$APT update -q
$APT install -y -q python3-venv python3-dev gcc nginx curl procps
# UDP socket buffers: let the relay's sockets have what they ask for (Ubuntu caps them at 208 KiB).
install -d /etc/sysctl.d
printf 'net.core.rmem_max = %s\\nnet.core.wmem_max = %s\\n' {UDP_BUFFER_MAX_BYTES} {UDP_BUFFER_MAX_BYTES} \\
  > /etc/sysctl.d/60-splitrelay-udp.conf
sysctl -q -p /etc/sysctl.d/60-splitrelay-udp.conf

# The instance metadata service (AWS_EC2_METADATA_SERVICE_ENDPOINT is botocore's own override of it).
IMDS=${{AWS_EC2_METADATA_SERVICE_ENDPOINT:-{IMDS_URL}}}
TOKEN=$(curl -fsS -X PUT $IMDS/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
imds() {{ curl -fsS -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/$1"; }}
PRIVATE_IP=$(imds local-ipv4)
CORES=$(nproc)
{cores_cap}

# The relay bundle: the stack's private S3 object, read with the instance role's credentials (curl
# signs with SigV4; the keys go to curl on stdin, never on a command line), then its hash is checked.
ROLE=$(imds iam/security-credentials/)
CREDS=$(imds "iam/security-credentials/$ROLE")
cred() {{ python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" <<<"$CREDS"; }}
install -d -m 0700 /var/lib/splitrelay
BUNDLE=/var/lib/splitrelay/bundle.tar.gz
printf 'user = "%s:%s"\\nheader = "x-amz-security-token: %s"\\nheader = "x-amz-content-sha256: %s"\\n' \\
  "$(cred AccessKeyId)" "$(cred SecretAccessKey)" "$(cred Token)" "{EMPTY_SHA256}" |
  curl -fsS --retry 5 --retry-all-errors -K - --aws-sigv4 'aws:amz:{aws_region}:s3' \\
  -o "$BUNDLE" '{bundle_url}'
unset CREDS
echo '{bundle_sha256}  '"$BUNDLE" | sha256sum --check --strict -
rm -rf {BUNDLE_DIR}
install -d {BUNDLE_DIR}
tar -xzf "$BUNDLE" -C {BUNDLE_DIR}
python3 -m venv {VENV}
{VENV}/bin/pip install --no-index --no-cache-dir --find-links {BUNDLE_DIR}/wheels '{requirement}'
# The native fast path, built here for this CPU and Python (no compiled code travels in the bundle).
{VENV}/bin/python -m splitrelay.relay.native.build ||
  echo "splitrelay: the native fast path was not built; the relay runs the Python path" >&2

id splitrelay >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin splitrelay
install -d -m 0700 {TLS_DIR}

cat > /etc/systemd/system/splitrelay-prepare.service <<EOF
[Unit]
Description=splitrelay: claim the address slot, join the accelerator, write origin TLS files
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={bootstrap} prepare --region-key {region_key} --tls-dir {TLS_DIR}{accel}
ExecStop={bootstrap} release --region-key {region_key}{accel}

[Install]
WantedBy=multi-user.target
EOF

cat > /etc/systemd/system/splitrelay-relay.service <<EOF
[Unit]
Description=splitrelay regional relay
Requires=splitrelay-prepare.service
After=splitrelay-prepare.service

[Service]
User=splitrelay
{edge_env}ExecStart={bootstrap} exec -- {relay}
Restart=always
RestartSec=2
# SIGTERM drains (the edge stops choosing this relay; live calls get up to 30 s): stop waits past that.
TimeoutStopSec={DRAIN_GRACE_S + 15}
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
EOF

cat > /etc/systemd/system/splitrelay-health.service <<EOF
[Unit]
Description=splitrelay: report a dead relay to the auto-scaling group

[Service]
Type=oneshot
ExecStart={bootstrap} check-health --url http://127.0.0.1:{CONTROL_PORT}/healthz
EOF

cat > /etc/systemd/system/splitrelay-health.timer <<EOF
[Unit]
Description=splitrelay health probe every 30 s

[Timer]
OnBootSec=5min
OnUnitActiveSec=30s

[Install]
WantedBy=timers.target
EOF

install -d /etc/systemd/system/nginx.service.d
cat > /etc/systemd/system/nginx.service.d/splitrelay.conf <<EOF
[Unit]
Requires=splitrelay-prepare.service
After=splitrelay-prepare.service
EOF

rm -f /etc/nginx/sites-enabled/default
cat > /etc/nginx/sites-enabled/splitrelay.conf <<'EOF'
{nginx_site()}EOF

systemctl daemon-reload
systemctl enable --now splitrelay-prepare.service
systemctl enable --now splitrelay-relay.service
systemctl enable nginx
systemctl restart nginx
systemctl enable --now splitrelay-health.timer
"""
    size = len(script.encode())
    if size > MAX_USER_DATA_BYTES:
        raise ValueError(f"user data is {size} bytes; EC2 allows at most {MAX_USER_DATA_BYTES}")
    return script
