"""What the boot rehearsals share: AWS and instance-metadata stand-ins, the rendered script, SigV4."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pytest

from splitrelay.infra.bundle import RelayBundle
from splitrelay.infra.user_data import RelayBoot, render_user_data

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = (
    "ASIAREHEARSAL0000001",
    "rehearsal-secret-" + "s" * 23,
    "token-" + "t" * 40,
)
ROLE = "splitrelay-relay-role"
BUCKET, STACK, REGION = "splitrelay-use1-rehearsal", "rehearsal", "us-east-1"
STUBBED = "apt-get id useradd systemctl shutdown poweroff sysctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MEDIA_PORT = 40000
"""The deploy's default relayMediaPort, rendered into the user data; the runs below move it to a free one."""


def free_media_port(command: str) -> str:
    """``command`` with its ``--media-port`` moved to a free UDP port (one worker: CORES is 1 here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    assert f"--media-port {MEDIA_PORT}" in command, command
    return command.replace(f"--media-port {MEDIA_PORT}", f"--media-port {port}")


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


def boot_script(
    bundle: RelayBundle, aws: dict[str, str], root: Path | None, sha256: str | None = None
) -> str:
    """The rendered user data; with ``root``, the paths it writes (/opt, /etc, /var/lib) moved under it."""
    boot = RelayBoot(
        stack=STACK,
        aws_region=REGION,
        region_key="use1",
        bundle_url=f"{aws['proxy']}/{BUCKET}/{bundle.object_key}",
        bundle_sha256=sha256 or bundle.sha256,
        bundle_requirement=bundle.requirement,
        inference="127.0.0.1:7000",
        port_range=(40000, 40099),
        media_port=MEDIA_PORT,  # the deploy's default: one UDP port per worker
        media_workers=2,  # c7g.large
        sfu_api_url="https://rtc.live.cloudflare.com/v1",
        sfu_app_id="0123456789abcdef0123456789abcdef",
        accelerator=False,
    )
    script = render_user_data(boot)
    for path in () if root is None else ("/opt/splitrelay", "/etc/", "/var/lib/splitrelay"):
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


def relay_health(
    command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None
) -> int | None:
    """Start a relay the way its unit does, wait (bounded, 60 s) for GET /healthz on ``port``, then stop
    its whole process group; returns the status it answered, None if it never did."""
    with open(log_path, "w") as log:
        relay = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            for _ in range(300):
                if relay.poll() is not None:
                    return None
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                        return int(response.status)
                except OSError:
                    time.sleep(0.2)
            return None
        finally:
            if relay.poll() is None:
                os.killpg(relay.pid, 15)
            relay.wait(timeout=30)
