"""`splitrelay bench`: benchmarks that print the machine, medians and p99s, and a same-run baseline.

Each command is one function here that imports its module lazily, so `splitrelay --help` stays fast
and a new benchmark (e.g. `bench emulator`) is one more function beside `relay`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from splitrelay.bench.bargein import command as bargein_command
from splitrelay.bench.calls import calls_command
from splitrelay.bench.churn import churn_command
from splitrelay.bench.edge import edge_command
from splitrelay.bench.failover import command as failover_command
from splitrelay.bench.track_switch import command as track_switch_command
from splitrelay.cli.agent import parse_listen
from splitrelay.emulator.bench import command as emulator_command

app = typer.Typer(
    help="Benchmarks: each prints the machine, median and p99, and a baseline from the same run.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def bench() -> None:
    """Benchmarks: each prints the machine, median and p99, and a baseline from the same run."""
    # A callback keeps `bench` a group even while it has a single command.


@app.command("relay")
def relay(
    calls: Annotated[
        str, typer.Option(help="Concurrent calls per run, comma-separated; each value runs in turn.")
    ] = "100,500,1000",
    duration: Annotated[float, typer.Option(help="Steady-state window measured, seconds (1..600).")] = 20.0,
    warmup: Annotated[float, typer.Option(help="Traffic before the window opens, seconds (0..120).")] = 5.0,
    relay_core: Annotated[int, typer.Option(help="Core the relay (and the baseline echo) is pinned to.")] = 0,
    load_procs: Annotated[
        int, typer.Option(help="Load-generator worker processes (0 = one per remaining core).")
    ] = 0,
    setup_concurrency: Annotated[int, typer.Option(help="Call set-ups in flight at once (1..64).")] = 16,
    setup_timeout: Annotated[float, typer.Option(help="Seconds one call may take to connect.")] = 30.0,
    port_per_call: Annotated[
        bool, typer.Option(help="Relay with one UDP port per call, not one for all (--media-port).")
    ] = False,
    ab: Annotated[
        str,
        typer.Option(
            help="A/B variants after the baseline: port-per-call, python, unbatched, per-datagram, "
            "python-out, per-batch-drain, no-rx-stamps, no-freeze, python-pace (or none)."
        ),
    ] = "port-per-call",
    load_socket: Annotated[
        str,
        typer.Option(
            help="Callers on one UDP socket, as an SFU's sessions reach the relay (shared), or one "
            "socket per caller (per-call, the load before issue 17's load work)."
        ),
    ] = "shared",
    srtp_profile: Annotated[
        str,
        typer.Option(
            help="The one DTLS-SRTP profile the callers offer, so the relay uses it: gcm "
            "(AEAD_AES_256_GCM, aiortc's choice) or cm80 (AES_CM_128_HMAC_SHA1_80, as an SFU may pick).",
        ),
    ] = "gcm",
    agent: Annotated[
        str,
        typer.Option(
            help="How the echo inference answers: realtime (each frame as it comes) or burst (a TTS "
            "agent: one-second responses sent at once, which the relay paces).",
        ),
    ] = "realtime",
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="perf record the relay over the window at each N and print where its CPU went "
            "(kernel, interpreter, libsrtp, our C...). Needs perf.",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON on stdout (tables go to stderr).")
    ] = False,
) -> None:
    """N calls at 50 packets/s each way through one relay process on one core, beside a bare UDP echo."""
    from splitrelay.bench.relay import RelayBenchConfig, parse_ab, parse_calls, run

    try:
        config = RelayBenchConfig(
            calls=parse_calls(calls),
            duration=duration,
            warmup=warmup,
            relay_core=relay_core,
            load_procs=load_procs,
            setup_concurrency=setup_concurrency,
            setup_timeout=setup_timeout,
            port_per_call=port_per_call,
            ab=parse_ab(ab),
            load_socket=load_socket,  # type: ignore[arg-type]  # checked by RelayBenchConfig
            profile=profile,
            srtp_profile=srtp_profile,
            agent=agent,
        )
        from splitrelay.bench.support import split_cores

        split_cores(relay_core)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run(config, json_output=json_output))


app.command("bargein")(bargein_command)
app.command("calls")(calls_command)
app.command("churn")(churn_command)
app.command("edge")(edge_command)
app.command("emulator")(emulator_command)
app.command("track-switch")(track_switch_command)
app.command("failover")(failover_command)


@app.command("wire")
def wire(
    calls: Annotated[int, typer.Option(help="Calls in the loopback echo, 50 frames/s each.")] = 200,
    seconds: Annotated[float, typer.Option(help="Seconds of the loopback echo.")] = 3.0,
) -> None:
    """The wire path: codec and speech-detection cost per call, and a loopback echo's round trip and CPU."""
    from splitrelay.bench.wire import run

    run(calls, seconds)


# -- child processes of the benchmarks (hidden: the benchmarks start them) ----------------------------


class LoadMode(StrEnum):
    relay = "relay"
    udp = "udp"


@app.command("load-worker", hidden=True)
def load_worker(
    mode: Annotated[LoadMode, typer.Option(help="relay: WebRTC callers; udp: bare flows (baseline).")],
    count: Annotated[int, typer.Option(help="Callers or flows.")],
    warmup: Annotated[float, typer.Option(help="Seconds of traffic before the window.")],
    duration: Annotated[float, typer.Option(help="Seconds of the measured window.")],
    relay_url: Annotated[str | None, typer.Option(help="Relay control API (relay mode).")] = None,
    prefix: Annotated[str, typer.Option(help="Call id prefix (relay mode).")] = "bench",
    concurrency: Annotated[int, typer.Option(help="Set-ups in flight (relay mode).")] = 16,
    setup_timeout: Annotated[float, typer.Option(help="Seconds one call may take to connect.")] = 30.0,
    target: Annotated[str | None, typer.Option(help="HOST:PORT of the UDP echo (udp mode).")] = None,
    srtp_bytes: Annotated[int, typer.Option(help="SRTP overhead to mimic (udp mode).")] = 0,
    load_socket: Annotated[
        str, typer.Option(help="Relay mode: shared (every caller on one UDP socket) or per-call.")
    ] = "shared",
    srtp_profile: Annotated[
        str, typer.Option(help="Relay mode: the one DTLS-SRTP profile the callers offer (gcm, cm80).")
    ] = "gcm",
) -> None:
    """One load-generator process of `bench relay`: JSON lines on stdout and stdin (scripts/bench/load.py)."""
    from splitrelay.bench.load import WorkerOptions, run_worker

    try:
        options = WorkerOptions(
            mode.value,
            count,
            warmup,
            duration,
            relay_url,
            prefix,
            concurrency,
            setup_timeout,
            target,
            srtp_bytes,
            load_socket,  # type: ignore[arg-type]  # checked by WorkerOptions
            srtp_profile,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run_worker(options))


class EchoServer(StrEnum):
    echo_inference = "echo-inference"
    udp_echo = "udp-echo"


@app.command("serve-echo", hidden=True)
def serve_echo(
    server: Annotated[EchoServer, typer.Argument(help="echo-inference, or udp-echo (the baseline).")],
    listen: Annotated[
        str, typer.Option(help="UDP HOST:PORT to listen on (port 0 picks one).")
    ] = "127.0.0.1:0",
    max_calls: Annotated[int, typer.Option(help="Calls the echo inference takes (1..100000).")] = 1000,
    batch: Annotated[
        bool, typer.Option(help="Echo inference: answer audio per recvmmsg batch (else per datagram).")
    ] = True,
    agent: Annotated[
        str, typer.Option(help="Echo inference: realtime, or burst (one-second responses at once; --batch).")
    ] = "realtime",
) -> None:
    """An echo server of `bench relay` on uvloop: a JSON ready line, stats on exit (bench/servers.py)."""
    import uvloop

    from splitrelay.bench.servers import AGENTS, echo_inference, udp_echo

    address = parse_listen(listen)
    if server is EchoServer.echo_inference:
        if not 1 <= max_calls <= 100_000:
            raise typer.BadParameter(f"--max-calls: must be 1..100000, got {max_calls}")
        if agent not in AGENTS or (agent == "burst" and not batch):
            raise typer.BadParameter(
                f"--agent: one of {', '.join(AGENTS)} (burst with --batch), got {agent!r}"
            )
        uvloop.run(echo_inference(address, max_calls, batch, agent))
    else:
        uvloop.run(udp_echo(address))


@app.command("bare-forwarder", hidden=True)
def bare_forwarder() -> None:
    """The bare UDP forwarder `bench emulator` compares the emulator with (sfu_emulator/bench.py)."""
    from splitrelay.emulator.bench import bare_forwarder_main

    bare_forwarder_main()
