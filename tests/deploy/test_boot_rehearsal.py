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

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from splitrelay.infra.bundle import RelayBundle, build_bundle
from splitrelay.infra.settings import CONTROL_PORT
from splitrelay.infra.user_data import UDP_BUFFER_MAX_BYTES
from tests.deploy.boot_support import (
    ACCESS_KEY,
    BUCKET,
    REPO,
    SECRET_KEY,
    SESSION_TOKEN,
    RecordingProxy,
    boot_script,
    expected_authorization,
    free_media_port,
    free_port,
    relay_health,
    run_boot,
    system_python,
)

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]


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
    # The native fast path was compiled at boot (Ubuntu's gcc and Python headers), and the installed relay
    # loads it: without it the relay would run the Python path at about twice the CPU per call.
    (install,) = [line for line in stubbed if line.startswith("apt-get") and " install " in line]
    assert {"gcc", "python3-dev"} <= set(install.split())
    assert "native fast path built" in result.stdout
    probe = "from splitrelay.relay.media import native; print(native.status())"
    loaded = subprocess.run(
        [venv / "bin" / "python", "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "native", loaded.stdout + loaded.stderr
    # The kernel lets the relay's sockets have the buffers they ask for, before the relay starts.
    sysctl_conf = tmp_path / "etc" / "sysctl.d" / "60-splitrelay-udp.conf"
    limits = dict(line.split(" = ") for line in sysctl_conf.read_text().splitlines())
    assert limits == {
        "net.core.rmem_max": str(UDP_BUFFER_MAX_BYTES),
        "net.core.wmem_max": str(UDP_BUFFER_MAX_BYTES),
    }
    applied = stubbed.index(f"sysctl -q -p {sysctl_conf}")
    assert applied < stubbed.index("systemctl enable --now splitrelay-relay.service")
    assert "systemctl enable --now splitrelay-relay.service" in stubbed
    assert stubbed[-1] == "systemctl enable --now splitrelay-health.timer"
    unit = (tmp_path / "etc" / "systemd" / "system" / "splitrelay-relay.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    # The relay, started the way the unit starts it (systemd fills PRIVATE_IP and CORES from the script).
    port = free_port()
    assert "--port-range" not in exec_start  # one UDP port per worker, not a port per call
    assert 'if [ "$CORES" -gt 2 ]; then CORES=2; fi' in boot_script(bundle, aws, None)
    command = free_media_port(exec_start.replace("${PRIVATE_IP}", "127.0.0.1").replace("${CORES}", "1"))
    argv = shlex.split(command)
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
    status = relay_health(argv, port, tmp_path / "relay.log", env)
    assert status == 200, (tmp_path / "relay.log").read_text()[-3000:]


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
    """Two builds from one snapshot of the checkout (HEAD: the working tree may be changing) are
    byte-identical, without the build cache."""
    python, glibc = system_python()
    source = tmp_path / "src"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    first, second = (
        build_bundle(source, tmp_path / name, arch=bundle.arch, python=python, glibc=glibc)
        for name in ("1", "2")
    )
    assert first.sha256 == second.sha256 and first.path.read_bytes() == second.path.read_bytes()
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
        "setuptools",  # cffi's compiler driver for the native build at boot (Python 3.12: no distutils)
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
