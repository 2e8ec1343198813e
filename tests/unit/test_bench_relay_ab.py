"""`splitrelay bench relay`'s A/B of the relay as deployed against its --ab variants (one port per call,
the pure-Python path, the unbatched shared port): the table, the 0-loss figure per variant, the JSON, the
options, and the datagrams-per-system-call figure from perf's counts (the run itself is a benchmark, not
a test)."""

from __future__ import annotations

import re
import shutil

import pytest
from rich.console import Console
from typer.testing import CliRunner

from splitrelay.bench import relay as bench_relay
from splitrelay.bench.relay import (
    PhaseResult,
    RelayBenchConfig,
    Row,
    ab_table,
    parse_ab,
    parse_perf_stat,
    per_syscall,
    variants,
    with_datagrams,
    zero_loss_calls,
)
from splitrelay.cli.bench import app
from tests.unit.test_bench_relay import _phase

DWELL = {"share_within_1ms": 1.0, "p50_ms": 0.05, "p99_ms": 0.4, "p99_above_top_bucket": False}


def _relay(cpu: float, label: str = "") -> PhaseResult:
    return _phase(
        subject_cpu=cpu, label=label, relay={"dwell_in": dict(DWELL), "dwell_out": dict(DWELL, p99_ms=0.7)}
    )


def _render(rows: list[Row]) -> str:
    console = Console(width=260, record=True, file=open("/dev/null", "w"))
    console.print(ab_table(rows))
    return console.export_text()


def test_zero_loss_calls_per_variant() -> None:
    rows = [
        Row(300, relay=_phase(), ab={"python": _phase()}, baseline=_phase(subject_cpu=20.0)),
        Row(500, relay=_phase(), ab={"python": _phase(received=900)}, baseline=_phase(subject_cpu=30.0)),
        Row(700, relay=_phase(received=999), ab={"python": _phase(received=1)}, baseline=_phase()),
    ]
    assert zero_loss_calls(rows, "relay") == 500
    assert zero_loss_calls(rows, "python") == 300
    assert zero_loss_calls(rows, "port-per-call") is None  # not run
    assert zero_loss_calls([Row(100, error="BenchError: x", relay=_phase())], "relay") is None


def test_ab_table_shows_every_variant_against_the_same_echo() -> None:
    rows = [
        Row(
            400,
            path="shared port, native",
            relay=_relay(60.0),
            ab={
                "port-per-call": _relay(90.0, "port per call"),
                "python": _relay(70.0, "shared port, python"),
            },
            baseline=_phase(subject_cpu=20.0),
        )
    ]
    text = _render(rows)
    assert "3.00x" in text and "4.50x" in text and "3.50x" in text  # 60, 90 and 70 over 20
    assert "port per call" in text and "shared port, python" in text
    assert "calls at 0 loss (of those run): shared port, native 400, port-per-call 400, python 400" in text
    as_json = rows[0].as_dict()
    assert as_json["path"] == "shared port, native"
    assert as_json["ratios"]["cpu"] == 3.0
    assert as_json["ab"]["port-per-call"]["cpu_x_echo"] == 4.5
    assert as_json["ab"]["python"]["loss"] == 0
    assert "0.050 / 0.400" in text and "0.050 / 0.700" in text  # dwell in and out, p50 / p99


def test_a_failed_row_says_so_for_every_variant() -> None:
    text = _render([Row(400, error="BenchError: relay died", ab={"python": None})])
    assert text.count("error: BenchError: relay died") == 2


# --- options ---------------------------------------------------------------------------------------------


def test_parse_ab() -> None:
    assert parse_ab("port-per-call") == ("port-per-call",)
    assert parse_ab("python, unbatched") == ("python", "unbatched")
    assert parse_ab("none") == () and parse_ab("") == ()
    with pytest.raises(ValueError, match=re.escape("--ab: 'native' is not one of")):
        parse_ab("native")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"ab": ("python", "python")}, "ab: each variant once"),
        ({"ab": ("fast",)}, "ab: 'fast' is not one of"),
        ({"port_per_call": True}, "ab: port-per-call is already phase 1"),
        ({"port_per_call": True, "ab": ("unbatched",)}, "ab: unbatched compares against"),
        ({"port_per_call": True, "ab": ("per-batch-drain",)}, "ab: per-batch-drain compares against"),
        ({"port_per_call": True, "ab": ("no-rx-stamps",)}, "ab: no-rx-stamps compares against"),
        ({"port_per_call": True, "ab": ("python-pace",)}, "ab: python-pace compares against"),
    ],
)
def test_config_refuses_ab_that_compares_nothing(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        RelayBenchConfig(**kwargs)  # type: ignore[arg-type]


def test_the_shared_port_is_the_default_and_the_command_says_otherwise() -> None:
    main, others = variants(RelayBenchConfig())
    assert main.shared_port and [v.name for v in others] == ["port-per-call"]
    assert not others[0].shared_port and others[0].env == ()
    config = RelayBenchConfig(calls=(300,), port_per_call=True, ab=("python",))
    main, others = variants(config)
    assert not main.shared_port
    assert others[0].shared_port is False and dict(others[0].env) == {"SPLITRELAY_NATIVE": "0"}
    assert config.command().endswith("--port-per-call --ab python")
    assert RelayBenchConfig(ab=()).command().endswith("--ab none")
    unbatched = variants(RelayBenchConfig(ab=("unbatched",)))[1][0]
    assert unbatched.shared_port and dict(unbatched.env) == {"SPLITRELAY_MEDIA_BATCH": "0"}
    drain = variants(RelayBenchConfig(ab=("per-batch-drain",)))[1][0]
    assert drain.shared_port and dict(drain.env) == {"SPLITRELAY_NATIVE_DRAIN": "0"}
    paced = variants(RelayBenchConfig(ab=("python-pace",)))[1][0]
    assert paced.shared_port and dict(paced.env) == {"SPLITRELAY_NATIVE_PACE": "0"}
    stamps = variants(RelayBenchConfig(ab=("no-rx-stamps",)))[1][0]
    assert stamps.shared_port and dict(stamps.env) == {"SPLITRELAY_RX_TIMESTAMPS": "0"}
    (freeze,) = variants(RelayBenchConfig(calls=(10,), port_per_call=True, ab=("no-freeze",)))[1]
    assert not freeze.shared_port and dict(freeze.env) == {"SPLITRELAY_FREEZE_CALLS": "0"}


def test_profile_is_in_the_command_and_its_table_shows_each_category_as_a_share_of_a_core() -> None:
    assert RelayBenchConfig(calls=(10,), profile=True).command().endswith(" --profile")
    assert "--profile" not in RelayBenchConfig(calls=(10,)).command()
    phase = _relay(40.0)
    phase.profile = {
        "samples": 4990,
        "shares": {"kernel": 45.0, "python interpreter": 20.0, "libsrtp (pylibsrtp)": 25.0},
        "top": [
            {"percent": 9.5, "dso": "_binding.abi3.so", "symbol": "srtp_aes_gcm_openssl_encrypt"},
            {"percent": 3.0, "dso": "libpython3.11.so.1.0", "symbol": "_PyEval_EvalFrameDefault"},
        ],
    }
    console = Console(width=260, record=True, file=open("/dev/null", "w"))
    console.print(bench_relay.profile_table(1000, phase))
    text = console.export_text()
    assert "1000 calls" in text and "4,990 samples" in text
    kernel = next(line for line in text.splitlines() if "kernel" in line and "%" in line)
    assert "45.0%" in kernel and "18.0%" in kernel  # 45% of the samples of a relay at 40% of a core
    srtp = next(line for line in text.splitlines() if "libsrtp" in line)
    assert "10.0%" in srtp and "srtp_aes_gcm_openssl_encrypt 9.5%" in srtp
    phase.profile = {"error": "perf is not installed (Debian: linux-perf)"}
    assert "perf is not installed" in str(bench_relay.profile_table(1000, phase))


def test_cli_rejects_a_bad_ab_before_starting_anything() -> None:
    result = CliRunner().invoke(app, ["relay", "--ab", "native"])
    assert result.exit_code == 2
    assert "--ab" in result.output


# --- datagrams per system call ---------------------------------------------------------------------------

PERF = """# started on Sat Dec  5
12000,,syscalls:sys_enter_recvfrom,15000000000,100.00,,
0,,syscalls:sys_enter_recvmsg,15000000000,100.00,,
3000,,syscalls:sys_enter_recvmmsg,15000000000,100.00,,
0,,syscalls:sys_enter_sendto,15000000000,100.00,,
10,,syscalls:sys_enter_sendmsg,15000000000,100.00,,
4990,,syscalls:sys_enter_sendmmsg,15000000000,100.00,,
700,,syscalls:sys_enter_epoll_wait,15000000000,100.00,,
0,,syscalls:sys_enter_epoll_pwait,15000000000,100.00,,
0,,syscalls:sys_enter_epoll_pwait2,15000000000,100.00,,
"""


def test_perf_counts_become_datagrams_per_system_call() -> None:
    counts = parse_perf_stat(PERF)
    assert counts["recv"] == 15000 and counts["send"] == 5000 and counts["poll"] == 700
    figures = with_datagrams(counts, received=60000, sent=40000)
    assert figures["datagrams_per_recv"] == 4.0 and figures["datagrams_per_send"] == 8.0
    assert per_syscall(_phase(syscalls=figures)) == "4.00 / 8.00"
    figures["media_port_per_recvmmsg"] = 16.25
    assert per_syscall(_phase(syscalls=figures)) == "4.00 / 8.00 (media port 16.2 per recvmmsg)"


def test_perf_that_could_not_count_is_an_error_not_a_zero() -> None:
    refused = PERF.replace("3000,,syscalls:sys_enter_recvmmsg", "<not counted>,,syscalls:sys_enter_recvmmsg")
    assert "recvmmsg" in parse_perf_stat(refused)["error"]
    missing = parse_perf_stat("Error:\nNo permission to enable syscalls:sys_enter_recvfrom event.\n")
    assert "gave no counts" in missing["error"]
    assert with_datagrams(missing, 1, 1) == missing
    assert per_syscall(_phase(syscalls=missing)) == "n/a"
    assert per_syscall(_phase()) == "-"


async def test_without_perf_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    counter = await bench_relay.SyscallCounter.start(1)
    assert await counter.stop() == {"error": "perf is not installed"}


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed")
async def test_perf_counts_this_process_sends() -> None:
    import asyncio
    import os
    import socket

    counter = await bench_relay.SyscallCounter.start(os.getpid())
    await asyncio.sleep(1.0)  # perf attaches to every thread of the process
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for _ in range(200):
            sock.sendto(b"x", sock.getsockname())
    counts = await counter.stop()
    if "error" in counts and "could not count" not in counts["error"]:
        pytest.skip(f"perf may not trace here: {counts['error']}")
    assert counts["sendto"] >= 200


def test_the_echo_inference_does_not_drop_a_relay_whose_audio_it_echoes_raw() -> None:
    """The raw echo bypasses the SDK's per-call receive count: with the relay_lost watch on, every call of
    a run ended 3 s after the relay's first KEEPALIVE (measured: all calls "inference ended the call:
    relay_lost", whatever the relay's path)."""
    from splitrelay.bench.servers import RawEchoServer

    server = RawEchoServer("127.0.0.1", 0, max_calls=1)
    assert server.relay_timeout == 0 and server.idle_timeout == 3600
