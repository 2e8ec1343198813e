"""The relay instance's user data: what it installs and runs, checked against the real CLIs it calls."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer

from splitrelay.infra.settings import CONTROL_PORT, METRICS_PORT
from splitrelay.infra.user_data import (
    DRAIN_GRACE_S,
    MAX_USER_DATA_BYTES,
    UDP_BUFFER_MAX_BYTES,
    RelayBoot,
    relay_command,
    render_user_data,
)

BOOT = RelayBoot(
    stack="prod",
    aws_region="us-east-1",
    region_key="use1",
    bundle_url="https://splitrelay-use1-0001.s3.us-east-1.amazonaws.com/relay/splitrelay-arm64-py3.12-0123.tar.gz",
    bundle_sha256="0123456789abcdef" * 4,
    bundle_requirement="splitrelay[relay]==0.1.0",
    inference="10.0.3.7:7000",
    port_range=(40000, 40999),
    sfu_api_url="https://rtc.live.cloudflare.com/v1",
    sfu_app_id="0123456789abcdef0123456789abcdef",
    accelerator=False,
    edge_url="https://voice.example.com",
)


def exec_start(script: str, unit: str) -> list[str]:
    block = script.split(f"/etc/systemd/system/{unit} <<EOF", 1)[1].split("\nEOF\n", 1)[0]
    return [
        line.split("=", 1)[1] for line in block.splitlines() if line.startswith(("ExecStart=", "ExecStop="))
    ]


def test_installs_the_hash_checked_bundle_offline_and_nginx() -> None:
    script = render_user_data(BOOT)
    assert script.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script
    assert (
        "/opt/splitrelay/bin/pip install --no-index --no-cache-dir "
        "--find-links /opt/splitrelay-bundle/wheels 'splitrelay[relay]==0.1.0'"
    ) in script
    assert f"echo '{BOOT.bundle_sha256}  '\"$BUNDLE\" | sha256sum --check --strict -" in script
    assert "--aws-sigv4 'aws:amz:us-east-1:s3'" in script and f"'{BOOT.bundle_url}'" in script
    assert "pip install --upgrade" not in script  # nothing from a public index
    assert "$APT install -y -q python3-venv python3-dev gcc nginx curl procps" in script
    # The native fast path is compiled once the bundle is installed, and a failed compile is not fatal.
    install = script.index("/opt/splitrelay/bin/pip install --no-index")
    native = script.index("/opt/splitrelay/bin/python -m splitrelay.relay.native.build ||\n")
    assert install < native < script.index("useradd")
    assert 'APT="apt-get -o DPkg::Lock::Timeout=600"' in script  # waits for unattended-upgrades


def test_the_kernel_lets_the_relays_sockets_have_the_buffers_they_ask_for() -> None:
    """Ubuntu caps a socket's buffer at net.core.rmem_max (208 KiB) and gives the cap without an error."""
    from splitrelay.inference.endpoint import SOCKET_BUFFER as INFERENCE_SOCKET_BUFFER
    from splitrelay.relay.media import shared_port

    media_socket_buffer = getattr(shared_port, "_SOCKET_BUFFER")  # noqa: B009 (the relay's own request)
    assert UDP_BUFFER_MAX_BYTES >= max(media_socket_buffer, INFERENCE_SOCKET_BUFFER)
    script = render_user_data(BOOT)
    conf = "/etc/sysctl.d/60-splitrelay-udp.conf"
    assert (
        f"net.core.rmem_max = %s\\nnet.core.wmem_max = %s\\n' {UDP_BUFFER_MAX_BYTES} {UDP_BUFFER_MAX_BYTES}"
        in script
    )
    applied = script.index(f"sysctl -q -p {conf}")
    assert (
        script.index(f"> {conf}") < applied < script.index("systemctl enable --now splitrelay-relay.service")
    )


def test_relay_runs_with_one_worker_per_core_on_the_private_address() -> None:
    (line,) = exec_start(render_user_data(BOOT), "splitrelay-relay.service")
    argv = shlex.split(line)
    wrapper, relay = argv[: argv.index("--") + 1], argv[argv.index("--") + 1 :]
    assert wrapper == [
        "/opt/splitrelay/bin/splitrelay",
        "relay",
        "bootstrap",
        "--stack",
        "prod",
        "--aws-region",
        "us-east-1",
        "exec",
        "--",
    ]
    assert relay == relay_command(BOOT)
    opts = dict(zip(relay[3::2], relay[4::2], strict=False))
    assert opts["--workers"] == "${CORES}"
    assert opts["--candidate-address"] == "${PRIVATE_IP}"
    assert opts["--port-range"] == "40000-40999"
    assert (opts["--host"], opts["--port"]) == ("127.0.0.1", str(CONTROL_PORT))
    assert opts["--inference"] == "10.0.3.7:7000"
    assert opts["--sfu-app-id"] == BOOT.sfu_app_id


def test_the_relay_beats_to_the_edge_and_drains_within_its_stop_timeout() -> None:
    """The unit gives the relay the edge's URL (prepare's slot id comes by `bootstrap exec`); systemd's
    stop timeout outlasts the drain grace that SIGTERM gives live calls."""
    script = render_user_data(BOOT)
    block = script.split("/etc/systemd/system/splitrelay-relay.service <<EOF", 1)[1].split("\nEOF\n", 1)[0]
    lines = block.splitlines()
    assert "Environment=SPLITRELAY_EDGE_URL=https://voice.example.com" in lines
    (timeout,) = [line for line in lines if line.startswith("TimeoutStopSec=")]
    assert int(timeout.split("=")[1]) > DRAIN_GRACE_S
    no_edge = render_user_data(replace(BOOT, edge_url=""))
    assert "SPLITRELAY_EDGE_URL" not in no_edge


def test_the_unit_stop_timeout_covers_the_cli_default_drain_grace() -> None:
    """The unit does not pass --drain-grace: the CLI's default is the grace SIGTERM gives, so it must
    be the one the stop timeout was computed from."""
    import inspect

    from splitrelay.cli.relay import serve

    default = inspect.signature(serve).parameters["drain_grace"].default
    assert default == DRAIN_GRACE_S
    assert "--drain-grace" not in render_user_data(BOOT)


def test_relay_options_exist_in_the_relay_cli() -> None:
    """Every option the unit passes is one `splitrelay relay serve` really has."""
    from splitrelay.cli.main import app

    command = typer.main.get_command(app)
    relay = command.commands["relay"]  # type: ignore[attr-defined]
    serve = relay.commands["serve"] if hasattr(relay, "commands") else relay
    assert serve.name == "serve"
    known = {opt for param in serve.params for opt in param.opts}
    used = [a for a in relay_command(BOOT) if a.startswith("--")]
    assert used and set(used) <= known, set(used) - known


def test_bootstrap_commands_parse_with_the_bootstrap_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each unit's `splitrelay relay bootstrap ...` line reaches the bootstrap step it names, with its
    options (the steps themselves are replaced: they need AWS)."""
    from typer.testing import CliRunner

    from splitrelay.cli.main import app
    from splitrelay.relay import aws_bootstrap

    calls: list[tuple[str, tuple[Any, ...]]] = []

    def record(name: str) -> Any:
        def step(*args: Any) -> Any:
            calls.append((name, args))
            return {} if name == "prepare" else True

        return step

    for name in ("prepare", "release", "check_health_once"):
        monkeypatch.setattr(aws_bootstrap, name, record(name))
    script = render_user_data(replace(BOOT, accelerator=True))
    lines = [
        *exec_start(script, "splitrelay-prepare.service"),
        *exec_start(script, "splitrelay-health.service"),
    ]
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "/opt/splitrelay/bin/splitrelay"
        result = CliRunner().invoke(app, argv[1:])
        assert result.exit_code == 0, result.output
    prepare, release, health = calls
    assert prepare == ("prepare", ("prod", "us-east-1", "use1", Path("/etc/splitrelay/tls"), True))
    assert release == ("release", ("prod", "us-east-1", "use1", True))
    assert health == (
        "check_health_once",
        ("prod", "us-east-1", f"http://127.0.0.1:{CONTROL_PORT}/healthz", 3),
    )
    plain = render_user_data(BOOT)
    assert "--accelerator" not in plain


def test_nginx_terminates_tls_on_443_in_front_of_the_control_api() -> None:
    script = render_user_data(BOOT)
    conf = script.split("sites-enabled/splitrelay.conf <<'EOF'", 1)[1].split("\nEOF\n", 1)[0]
    assert "listen 443 ssl default_server;" in conf
    assert f"proxy_pass http://127.0.0.1:{CONTROL_PORT};" in conf
    assert "ssl_certificate /etc/splitrelay/tls/origin.pem;" in conf
    assert "$host" in conf  # quoted heredoc: nginx variables are not expanded by bash
    assert "rm -f /etc/nginx/sites-enabled/default" in script


def _site_conf() -> str:
    return (
        render_user_data(BOOT).split("sites-enabled/splitrelay.conf <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    )


def test_nginx_proxies_only_the_signed_api_publicly_and_health_on_a_private_port() -> None:
    public, private = _site_conf().split("\nserver {", 2)[1:]
    # 443: /v1/ (the relay verifies the edge's signature there) and a 404 for everything else.
    assert re.findall(r"location (\S+) \{", public) == ["/v1/", "/"]
    assert "return 404;" in public and public.count("proxy_pass") == 1
    for limit in ("client_header_timeout 10s;", "client_body_timeout 10s;", "client_max_body_size 64k;"):
        assert limit in public
    # The metrics port serves /metrics, /healthz and /readyz only.
    assert f"listen {METRICS_PORT};" in private and "ssl" not in private
    assert "location ~ ^/(metrics|healthz|readyz)$ {" in private


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None
    subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={name}", "-days", "1", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return key, cert


def _client_cert(folder: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
             "-CAcreateserial", "-days", "1", "-out", str(cert))  # fmt: skip
    return cert, key


def _get(port: int, client: tuple[Path, Path] | None) -> int | str:
    """GET / over TLS (server certificate not checked: a throwaway one), with or without a client cert."""
    import http.client
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        connection.close()


def test_the_real_nginx_serves_only_cloudflares_client_certificate_for_this_zone(tmp_path: Path) -> None:
    """The rendered site in the real nginx (``nginx -t``, then serving on loopback): a request without
    the Authenticated Origin Pulls client certificate, or with one of another CA (another Cloudflare
    account's zone), is refused; with this stack's certificate it reaches the locations (404 at /)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the nginx config: .ci/run installs Debian's nginx")
        pytest.skip("needs nginx (apt-get install nginx)")
    tls = tmp_path / "tls"
    tls.mkdir()
    origin = _ca(tls, "origin")  # the server certificate (Cloudflare's Origin CA signs it on AWS)
    pull_ca = _ca(tls, "origin-pull-ca")
    ours = _client_cert(tls, "cloudflare-for-this-zone", pull_ca)
    theirs = _client_cert(tls, "cloudflare-for-another-zone", _ca(tls, "another-ca"))
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        port, metrics = a.getsockname()[1], b.getsockname()[1]
    site = (
        _site_conf()
        .replace("/etc/splitrelay/tls", str(tls))
        .replace("listen 443 ssl default_server;", f"listen 127.0.0.1:{port} ssl default_server;")
        .replace("listen [::]:443 ssl default_server;", "")
        .replace(f"listen {METRICS_PORT};", f"listen 127.0.0.1:{metrics};")
        .replace(f"listen [::]:{METRICS_PORT};", "")
    )
    assert origin[1].name == "origin.pem" and pull_ca[1].name == "origin-pull-ca.pem"
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log off;\n include {tmp_path}/site.conf;\n}}\n"
    )
    command = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr
    server = subprocess.Popen([*command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):  # bounded: 5 s for nginx to listen
            if _get(port, ours) == 404:
                break
            time.sleep(0.05)
        assert _get(port, ours) == 404  # past the handshake: "/" is not proxied
        assert _get(port, None) == 400  # nginx: "No required SSL certificate was sent"
        assert _get(port, theirs) == 400  # "The SSL certificate error"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_no_secret_travels_in_user_data() -> None:
    script = render_user_data(BOOT)
    assert "SIGNING_KEY" not in script and "APP_SECRET" not in script and "WIRE_KEY" not in script
    assert not re.search(r"EnvironmentFile=", script)
    # The one environment line is the edge's public URL, not a secret.
    assert re.findall(r"Environment=([A-Z_]+)=", script) == ["SPLITRELAY_EDGE_URL"]


def test_script_is_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n"], input=render_user_data(BOOT).encode(), check=True)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"inference": "10.0.0.1:7000 --evil"}, "inference"),
        ({"sfu_app_id": "abc%n"}, "SFU app id"),
        ({"stack": "a$b"}, "stack"),
        ({"bundle_sha256": "abc"}, "bundle sha256"),
        ({"bundle_url": "https://x/a b'; rm -rf /"}, "bundle URL"),
        ({"bundle_requirement": "evil==1; rm"}, "bundle requirement"),
        ({"edge_url": "https://x.example.com\nExecStartPre=/bin/evil"}, "edge URL"),
        ({"edge_url": "http://x.example.com"}, "edge URL"),
    ],
)
def test_unsafe_values_are_refused(change: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        render_user_data(replace(BOOT, **change))


def test_size_limit() -> None:
    assert len(render_user_data(BOOT).encode()) < MAX_USER_DATA_BYTES
    with pytest.raises(ValueError, match="at most 16384"):
        render_user_data(replace(BOOT, sfu_app_id="x" * 17000))


def _run_with_stubs(tmp_path: Path, failing: str) -> tuple[subprocess.CompletedProcess[bytes], str]:
    """Run the rendered script for real in bash, every command it calls stubbed on PATH: each stub logs
    its name and arguments, ``failing`` exits 1. Nothing on the machine is touched."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    commands = (
        "apt-get python3 curl nproc id useradd install shutdown poweroff systemctl nginx cat ln rm "
        "sha256sum tar"
    )
    for name in commands.split():
        code = 1 if name == failing else 0
        # Stubs use only shell built-ins (``cat`` itself is stubbed: the script's heredocs go nowhere).
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {code}\n')
        (stubs / name).chmod(0o755)
    script = render_user_data(BOOT).replace("/opt/splitrelay", str(tmp_path / "opt"))
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run(
        [bash, "-c", script], env={"PATH": str(stubs)}, capture_output=True, timeout=30, check=False
    )
    return result, log.read_text() if log.exists() else ""


def test_a_failed_boot_stops_the_instance_instead_of_idling_healthy(tmp_path: Path) -> None:
    result, calls = _run_with_stubs(tmp_path, failing="apt-get")
    assert result.returncode != 0
    assert b"splitrelay: boot failed" in result.stderr
    lines = calls.splitlines()
    assert lines[0].startswith("apt-get -o DPkg::Lock::Timeout=600 update")
    assert lines[-1] == "shutdown -h now"  # nothing after the failure runs but the stop
    assert not any(line.startswith("systemctl") for line in lines)
