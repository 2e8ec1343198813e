"""The relay's first boot, rehearsed for real on this machine as far as it allows.

The rendered user data runs in bash with the real curl, sha256sum, tar, python3 -m venv and pip. The
stand-ins are moto's server for S3 and SSM, a small instance-metadata server (IMDSv2 tokens, role
credentials) and a recording proxy in front of moto. Only what needs root on a real instance is
stubbed (apt-get, useradd, systemctl, shutdown), and the paths it writes (/opt, /etc, /var/lib) are
moved under a temporary directory. Then the relay is started the way the systemd unit starts it
(`splitrelay relay bootstrap exec -- splitrelay relay serve ...`) and must answer /healthz.

What stays unproven here (docs/deploy.md, "Not verified offline"): Ubuntu's own packages and systemd
starting the units, and real S3 checking the signature (botocore's signer is the reference instead).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pytest

from splitrelay.infra.bundle import RelayBundle, build_bundle
from splitrelay.infra.settings import CONTROL_PORT
from splitrelay.infra.user_data import RelayBoot, render_user_data
from splitrelay.relay.aws_bootstrap import SECRET_ENV_BY_PARAM, parameter_prefix

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = (
    "ASIAREHEARSAL0000001",
    "rehearsal-secret-" + "s" * 23,
    "token-" + "t" * 40,
)
ROLE = "splitrelay-relay-role"
BUCKET, STACK, REGION = "splitrelay-use1-rehearsal", "rehearsal", "us-east-1"
STUBBED = "apt-get id useradd systemctl shutdown poweroff"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def system_python() -> tuple[str, str]:
    """(X.Y, glibc X.Y) of the python3 the user data will run: the bundle must be built for it."""
    if (
        not SYSTEM_PYTHON.exists()
        or subprocess.run([SYSTEM_PYTHON, "-c", "import venv, ensurepip"]).returncode
    ):
        pytest.skip("needs the system python3 with venv and ensurepip (Debian: python3-venv)")
    code = (
        "import os, sys; v = sys.version_info; "
        "print(f'{v[0]}.{v[1]}', os.confstr('CS_GNU_LIBC_VERSION').split()[1])"
    )
    version, glibc = subprocess.run(
        [SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return version, glibc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> RelayBundle:
    python, glibc = system_python()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    return build_bundle(REPO, tmp_path_factory.mktemp("bundles"), arch=arch, python=python, glibc=glibc)


class Imds(http.server.BaseHTTPRequestHandler):
    """IMDSv2 as the script and `splitrelay relay bootstrap` use it: a token first, then metadata."""

    token: ClassVar[str] = "imds-token-" + secrets.token_hex(8)
    paths: ClassVar[dict[str, str]] = {
        "/latest/meta-data/local-ipv4": "127.0.0.1",
        "/latest/meta-data/public-ipv4": "52.94.236.248",  # advertised only, never contacted
        "/latest/meta-data/instance-id": "i-0123456789abcdef0",
        "/latest/meta-data/iam/security-credentials/": ROLE,
        f"/latest/meta-data/iam/security-credentials/{ROLE}": json.dumps(
            {
                "Code": "Success",
                "AccessKeyId": ACCESS_KEY,
                "SecretAccessKey": SECRET_KEY,
                "Token": SESSION_TOKEN,
            }
        ),
    }

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, self.token)
        else:
            self._send(400, "bad token request")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self._send(401, "")
        elif self.path in self.paths:
            self._send(200, self.paths[self.path])
        else:
            self._send(404, "")

    def _send(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class RecordingProxy(http.server.BaseHTTPRequestHandler):
    """In front of moto (which checks no signature): keeps each request's headers for the SigV4 check."""

    upstream: ClassVar[str] = ""
    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def do_GET(self) -> None:
        RecordingProxy.seen.append((self.path, dict(self.headers)))
        with urllib.request.urlopen(self.upstream + self.path, timeout=30) as response:
            body = response.read()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def aws(bundle: RelayBundle) -> Iterator[dict[str, str]]:
    """moto's server with the stack's bucket, bundle object and SSM secrets; IMDS; the S3 proxy."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    s3 = session.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(bundle.path), BUCKET, bundle.object_key)
    ssm = session.client("ssm", endpoint_url=endpoint)
    for leaf in SECRET_ENV_BY_PARAM:
        ssm.put_parameter(
            Name=f"{parameter_prefix(STACK)}/{leaf}", Value=secrets.token_hex(32), Type="SecureString"
        )
    imds = serve(Imds)
    RecordingProxy.upstream = endpoint
    proxy = serve(RecordingProxy)
    try:
        yield {
            "endpoint": endpoint,
            "imds": f"http://127.0.0.1:{imds.server_address[1]}",
            "proxy": f"http://127.0.0.1:{proxy.server_address[1]}",
        }
    finally:
        proxy.shutdown()
        imds.shutdown()
        moto.stop()


def boot_script(bundle: RelayBundle, aws: dict[str, str], root: Path, sha256: str | None = None) -> str:
    boot = RelayBoot(
        stack=STACK,
        aws_region=REGION,
        region_key="use1",
        bundle_url=f"{aws['proxy']}/{BUCKET}/{bundle.object_key}",
        bundle_sha256=sha256 or bundle.sha256,
        bundle_requirement=bundle.requirement,
        inference="127.0.0.1:7000",
        port_range=(40000, 40099),
        sfu_api_url="https://rtc.live.cloudflare.com/v1",
        sfu_app_id="0123456789abcdef0123456789abcdef",
        accelerator=False,
    )
    script = render_user_data(boot)
    for path in ("/opt/splitrelay", "/etc/", "/var/lib/splitrelay"):
        script = script.replace(path, f"{root}{path}")
    return script


def run_boot(
    script: str, root: Path, aws: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    stubs = root / "stubs"
    stubs.mkdir(parents=True)
    log = root / "stubbed.log"
    for name in STUBBED.split():
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (stubs / name).chmod(0o755)
    for folder in ("etc/systemd/system", "etc/nginx/sites-enabled"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "HOME": str(root),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": aws["imds"],
        "PIP_CONFIG_FILE": os.devnull,  # nothing but the bundle: --no-index must be enough on its own
    }
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    return result, log.read_text().splitlines() if log.exists() else []


def expected_authorization(path: str, headers: dict[str, str], host: str) -> str:
    """What botocore's S3 SigV4 signer gives for the same request at the same instant."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="GET",
        url=f"http://{host}{path}",
        headers={k: headers[k] for k in ("x-amz-content-sha256", "x-amz-security-token")},
    )
    when = dt.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "s3", REGION).add_auth(request)
    return str(request.headers["Authorization"])


@dataclass
class Booted:
    root: Path
    result: subprocess.CompletedProcess[str]
    stubbed: list[str]
    requests: list[tuple[str, dict[str, str]]]


@pytest.fixture(scope="module")
def booted(bundle: RelayBundle, aws: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Booted:
    """One real run of the rendered user data (pip installs the whole relay: about a minute)."""
    root = tmp_path_factory.mktemp("instance")
    RecordingProxy.seen.clear()
    result, stubbed = run_boot(boot_script(bundle, aws, root), root, aws)
    return Booted(root, result, stubbed, list(RecordingProxy.seen))


def test_the_user_data_installs_the_checked_bundle_and_the_unit_starts_a_healthy_relay(
    bundle: RelayBundle, aws: dict[str, str], booted: Booted
) -> None:
    result, stubbed, tmp_path = booted.result, booted.stubbed, booted.root
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert SECRET_KEY not in output and SESSION_TOKEN not in output
    # The one S3 request: signed exactly as AWS's own SDK signs it, with the instance role's session.
    ((path, headers),) = booted.requests
    assert path == f"/{BUCKET}/{bundle.object_key}"
    assert headers["Authorization"] == expected_authorization(path, headers, headers["Host"])
    assert f"Credential={ACCESS_KEY}/" in headers["Authorization"]
    # Installed from the bundle alone, the version the bundle pins.
    venv = tmp_path / "opt" / "splitrelay"
    shown = subprocess.run(
        [venv / "bin" / "pip", "show", "splitrelay"], capture_output=True, text=True, check=True
    )
    assert "Version: " + bundle.requirement.rsplit("==", 1)[1] in shown.stdout
    assert "systemctl enable --now splitrelay-relay.service" in stubbed
    assert stubbed[-1] == "systemctl enable --now splitrelay-health.timer"
    unit = (tmp_path / "etc" / "systemd" / "system" / "splitrelay-relay.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    # The relay, started the way the unit starts it (systemd fills PRIVATE_IP and CORES from the script).
    port = free_port()
    argv = shlex.split(exec_start.replace("${PRIVATE_IP}", "127.0.0.1").replace("${CORES}", "1"))
    argv[argv.index("--port") + 1] = str(port)
    assert f"--port {CONTROL_PORT}" in exec_start
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": aws["endpoint"],
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": aws["imds"],
    }
    log = open(tmp_path / "relay.log", "w")
    relay = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = None
        for _ in range(300):  # bounded: 60 s
            if relay.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(0.2)
        assert status == 200, (tmp_path / "relay.log").read_text()[-3000:]
    finally:
        if relay.poll() is None:
            os.killpg(relay.pid, 15)
        relay.wait(timeout=30)
        log.close()


def test_a_bundle_whose_hash_does_not_match_is_never_installed(
    bundle: RelayBundle, aws: dict[str, str], tmp_path: Path
) -> None:
    result, stubbed = run_boot(boot_script(bundle, aws, tmp_path, sha256="0" * 64), tmp_path, aws)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr  # sha256sum's own verdict
    assert stubbed[-1] == "shutdown -h now"
    assert not (tmp_path / "opt" / "splitrelay").exists()
    assert not any(line.startswith("systemctl") for line in stubbed)


def test_the_bundle_is_reproducible_and_holds_every_wheel_the_relay_needs(
    bundle: RelayBundle, tmp_path: Path
) -> None:
    python, glibc = system_python()
    again = build_bundle(REPO, tmp_path, arch=bundle.arch, python=python, glibc=glibc)  # no cache here
    assert again.sha256 == bundle.sha256
    import tarfile

    with tarfile.open(bundle.path) as tar:
        manifest = json.loads(tar.extractfile("bundle.json").read())  # type: ignore[union-attr]
    names = {name.split("-", 1)[0].lower() for name in manifest["wheels"]}
    assert {
        "splitrelay",
        "aiortc",
        "aioice",
        "pylibsrtp",
        "av",
        "uvicorn",
        "fastapi",
        "boto3",
        "typer",
    } <= names
    assert all(len(digest) == 64 for digest in manifest["wheels"].values())


def test_shellcheck_passes_on_the_rendered_user_data(bundle: RelayBundle, tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None and os.environ.get("CI"):
        pytest.fail("CI installs shellcheck (.ci/run)")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    aws = {"proxy": "https://splitrelay-use1-0001.s3.us-east-1.amazonaws.com"}
    script = boot_script(bundle, aws, Path("/"))
    (tmp_path / "user-data.sh").write_text(script)
    result = subprocess.run(
        [shellcheck, "--severity=warning", str(tmp_path / "user-data.sh")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_systemd_analyze_verifies_the_rendered_units(booted: Booted) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None  # Debian's systemd package; .ci/run's image has it
    assert booted.result.returncode == 0, booted.result.stderr[-2000:]
    units = sorted((booted.root / "etc" / "systemd" / "system").glob("splitrelay-*"))
    assert len(units) == 4
    checked = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if "splitrelay" in line and "User=splitrelay" not in line  # the user exists on the instance only
    ]
    assert not problems, "\n".join(problems)
