"""The relay's first boot in a throwaway Debian root file system, with the image's own packages.

debootstrap builds a minimal Debian (bookworm, this machine's release: the registries reachable here
are Debian's, not Ubuntu's) and the rendered user data runs inside it unchanged, as root, in a chroot
in a private mount namespace: the real apt-get installs python3-venv, nginx and curl from Debian's
archive, the real useradd creates the relay's user, and the bundle comes from moto's S3 through the
recording proxy with its hash checked. Only systemd is missing (no init in a chroot): `systemctl` and
`shutdown` are stubs that log. The relay is then started inside the root as the unit starts it, as
the `splitrelay` user, and must answer /healthz.

Needs root, debootstrap and unshare (CI has all three; .ci/run installs debootstrap). About two
minutes, most of it debootstrap and apt.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from splitrelay.infra.bundle import RelayBundle
from splitrelay.infra.settings import CONTROL_PORT
from tests.deploy.boot_support import SECRET_KEY, boot_script, free_media_port, free_port, relay_health

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

SUITE = "bookworm"
PACKAGES = "python3-venv,curl,ca-certificates,passwd"


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else Debian's CDN."""
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                return next(word for word in line.split()[1:] if word.startswith("http"))
    return "http://deb.debian.org/debian"


def root_command(
    root: Path, command: str, *, user: str | None = None, env: dict[str, str] | None = None
) -> list[str]:
    """``command`` (bash) in the chroot, in a mount namespace of its own with /proc mounted there."""
    variables = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    userspec = f"--userspec={user}:{user} " if user else ""
    inner = (
        f"mount -t proc proc {shlex.quote(str(root / 'proc'))} && "
        f"exec chroot {userspec}{shlex.quote(str(root))} /usr/bin/env -i "
        f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root {variables} "
        f"bash -c {shlex.quote(command)}"
    )
    return ["unshare", "--mount", "--fork", "sh", "-c", inner]


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0 or not shutil.which("debootstrap") or not shutil.which("unshare"):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root with debootstrap (.ci/run installs it) and unshare")
        pytest.skip("needs root, debootstrap and unshare")
    root = tmp_path_factory.mktemp("debian") / "root"
    built = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(root), debian_mirror()],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")  # packages start no service
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    # No init in a chroot; and sysctl would set the host's own kernel limits (the network namespace is the
    # host's), so it only logs here: the file it would apply is checked instead.
    for name in ("systemctl", "shutdown", "poweroff", "sysctl"):
        stub = root / "usr/local/sbin" / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> /var/log/stubbed.log\n')
        stub.chmod(0o755)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    return root


def test_the_user_data_boots_a_relay_in_a_real_debian_root(
    debian_root: Path, bundle: RelayBundle, aws: dict[str, str]
) -> None:
    root = debian_root
    (root / "root/user-data.sh").write_text(boot_script(bundle, aws, None))
    booted = subprocess.run(
        root_command(root, "bash /root/user-data.sh", env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": aws["imds"]}),
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = booted.stdout + booted.stderr
    assert booted.returncode == 0, output[-4000:]
    assert SECRET_KEY not in output
    assert "bundle.tar.gz: OK" in output  # sha256sum's verdict
    stubbed = (root / "var/log/stubbed.log").read_text().splitlines()
    assert "systemctl enable --now splitrelay-relay.service" in stubbed
    sysctl_conf = "/etc/sysctl.d/60-splitrelay-udp.conf"
    assert stubbed.index(f"sysctl -q -p {sysctl_conf}") < stubbed.index(
        "systemctl enable --now splitrelay-relay.service"
    )
    assert "net.core.rmem_max = " in (root / sysctl_conf.lstrip("/")).read_text()
    assert (root / "usr/sbin/sysctl").exists()  # apt really installed procps (the stub shadows it)
    assert (root / "usr/sbin/nginx").exists()  # apt really installed it
    assert "splitrelay:" in (root / "etc/passwd").read_text()  # useradd really ran
    assert (root / "etc/nginx/sites-enabled/splitrelay.conf").exists()
    assert not (root / "etc/nginx/sites-enabled/default").exists()
    unit = (root / "etc/systemd/system/splitrelay-relay.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert "User=splitrelay" in unit
    port = free_port()
    command = free_media_port(exec_start.replace("${PRIVATE_IP}", "127.0.0.1").replace("${CORES}", "1"))
    command = command.replace(f"--port {CONTROL_PORT}", f"--port {port}")
    env = {
        "AWS_ENDPOINT_URL": aws["endpoint"],
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": aws["imds"],
        "HOME": "/tmp",
    }
    command_line = root_command(root, f"exec {command}", user="splitrelay", env=env)
    status = relay_health(command_line, port, root / "tmp/relay.log")
    assert status == 200, (root / "tmp/relay.log").read_text()[-3000:]
