"""`splitrelay bench`: benchmarks that print the machine, medians and p99s, and a same-run baseline.

Each command is one function here that imports its module lazily, so `splitrelay --help` stays fast
and a new benchmark (e.g. `bench emulator`) is one more function beside `relay`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from splitrelay.bench.calls import calls_command
from splitrelay.bench.edge import edge_command
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
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON on stdout (tables go to stderr).")
    ] = False,
) -> None:
    """N calls at 50 packets/s each way through one relay process on one core, beside a bare UDP echo."""
    from splitrelay.bench.relay import RelayBenchConfig, parse_calls, run

    try:
        config = RelayBenchConfig(
            calls=parse_calls(calls),
            duration=duration,
            warmup=warmup,
            relay_core=relay_core,
            load_procs=load_procs,
            setup_concurrency=setup_concurrency,
            setup_timeout=setup_timeout,
        )
        from splitrelay.bench.support import split_cores

        split_cores(relay_core)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run(config, json_output=json_output))


app.command("calls")(calls_command)
app.command("edge")(edge_command)
app.command("emulator")(emulator_command)


if __name__ == "__main__":
    app()
