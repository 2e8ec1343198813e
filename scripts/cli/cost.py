"""`splitrelay cost`: the report (no sub-command), `refresh-prices aws` and `from-stack`.

The calculator itself is splitrelay.cost (scripts/cost/); this module is its command line only.

Every bad input ends as one line on stderr naming the flag and what it allows, exit status 2,
with nothing written: inputs are checked and outputs rendered in memory before any file is touched.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from splitrelay.cost.catalogue import (
    PriceBook,
    instance_price_flag,
    load_catalogue,
    load_price_file,
    parse_price_flag,
)
from splitrelay.cost.custom import MEASURED_CALLS_PER_CORE, Fleet
from splitrelay.cost.errors import CostInputError
from splitrelay.cost.extras import Extras
from splitrelay.cost.files import Output, check_output, write_atomic
from splitrelay.cost.options import OPTION_NAMES, choose_options
from splitrelay.cost.report import build_report, report_csv, report_json
from splitrelay.cost.traffic import Traffic, input_warnings, parse_minutes

cost_app = typer.Typer(
    help="Monthly cost of carrying voice: hosted edges against this kit's own split edge.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
refresh_app = typer.Typer(
    help="Write current provider prices into a user price file (optional; needs credentials).",
    no_args_is_help=True,
)
cost_app.add_typer(refresh_app, name="refresh-prices")

EXIT_BAD_INPUT = 2


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


@cost_app.callback(invoke_without_command=True)
def cost(
    ctx: typer.Context,
    minutes: Annotated[
        str, typer.Option("--minutes", "-m", help="Call-minutes per month: 1e6, 1M, 250k.")
    ] = "1M",
    call_minutes: Annotated[float, typer.Option(help="Mean call length in minutes.")] = 3.0,
    busy_hour_share: Annotated[
        float,
        typer.Option(help="Share of a day's minutes in its busiest hour, in (0, 1]; sets peak concurrency."),
    ] = 0.1,
    bitrate_kbps: Annotated[float, typer.Option(help="Opus bitrate, each way.")] = 32.0,
    overhead_bytes: Annotated[float, typer.Option(help="IP/UDP/RTP/SRTP bytes per packet.")] = 50.0,
    frame_ms: Annotated[float, typer.Option(help="Opus packet duration (ms).")] = 20.0,
    regions: Annotated[int, typer.Option(help="Relay regions.")] = 2,
    min_instances: Annotated[
        int, typer.Option(help="Relay instances per region, at least (redundancy).")
    ] = 2,
    calls_per_core: Annotated[
        float | None,
        typer.Option(
            help="Relay calls per core; default: the catalogue's figure for the instance's architecture "
            f"(x86: {MEASURED_CALLS_PER_CORE:g}, the worst case measured: AES-CM-80 SRTP and a bursty agent, "
            "the relay at <= 75% of its core; arm: the same figure, an assumption)."
        ),
    ] = None,
    cores_per_instance: Annotated[
        int, typer.Option(help="vCPUs per relay instance, one relay process each.")
    ] = 2,
    headroom: Annotated[float, typer.Option(help="Relay capacity over busy-hour load.")] = 1.5,
    instance_type: Annotated[
        str, typer.Option(help="Relay EC2 instance type (priced in the catalogue).")
    ] = "m7g.large",
    instance_price: Annotated[
        float | None, typer.Option(help="Relay instance USD/hour (overrides the catalogue).")
    ] = None,
    accelerators: Annotated[int, typer.Option(help="AWS Global Accelerators (0: none).")] = 1,
    engineering: Annotated[
        float, typer.Option(help="Fixed engineering/operations USD per month, custom edge.")
    ] = 0.0,
    savings_plan: Annotated[
        float | None,
        typer.Option(help="Fraction off on-demand relay hours (Savings Plan), in [0, 0.9]; default 0."),
    ] = None,
    public_ipv4: Annotated[
        bool, typer.Option(help="Each relay instance has a public IPv4 address ($0.005/h).")
    ] = True,
    nat_gateway: Annotated[
        bool, typer.Option(help="Relay media goes through a NAT gateway (per hour and per GB).")
    ] = False,
    gpu_placement: Annotated[
        str, typer.Option(help="GPUs relative to the relays: same-az (free), cross-az or cross-region.")
    ] = "same-az",
    sip_rate: Annotated[
        float | None, typer.Option(help="USD per call-minute of phone (SIP trunk) minutes, every option.")
    ] = None,
    model_rate: Annotated[
        float | None,
        typer.Option(help="Your model in USD per call-minute (all-in comparison with the realtime API)."),
    ] = None,
    gpu_hour: Annotated[
        float | None, typer.Option(help="Your model as USD per GPU-hour (needs --calls-per-gpu).")
    ] = None,
    calls_per_gpu: Annotated[
        float | None, typer.Option(help="Concurrent calls one GPU serves (with --gpu-hour).")
    ] = None,
    agent_host_hour: Annotated[
        float | None,
        typer.Option(help="USD per hour of a self-hosted agent host, on every option that does not host it."),
    ] = None,
    calls_per_agent_host: Annotated[
        float, typer.Option(help="Concurrent calls one agent host serves.")
    ] = 50.0,
    livekit_agents: Annotated[
        bool, typer.Option(help="Host the agent on LiveKit Cloud (agent-session minutes).")
    ] = False,
    with_model: Annotated[bool, typer.Option(help="Add the hosted realtime API's model tokens.")] = False,
    generic_rate: Annotated[
        float | None,
        typer.Option(help="USD per participant-minute of a generic hosted edge (adds 'generic')."),
    ] = None,
    generic_name: Annotated[str, typer.Option(help="Label of the generic edge.")] = "Generic per-minute edge",
    options: Annotated[
        str, typer.Option(help=f"all, or a comma list of: {', '.join(OPTION_NAMES)}.")
    ] = "all",
    prices_files: Annotated[
        list[Path] | None,
        typer.Option("--prices", help="User price file(s), catalogue format, applied in order."),
    ] = None,
    price: Annotated[list[str] | None, typer.Option("--price", help="Override one price: KEY=VALUE.")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the whole report as JSON instead of tables.")
    ] = False,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Write the costs as CSV to FILE.csv ('-': stdout).")
    ] = None,
    plot_out: Annotated[
        Path | None, typer.Option("--plot", help="Write a log-log plot to FILE.png or FILE.svg.")
    ] = None,
) -> None:
    """Compare hosted edges with this kit's split edge at a volume, over 1e4-1e9 minutes, with break-evens."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        traffic = Traffic(
            parse_minutes(minutes), call_minutes, busy_hour_share, bitrate_kbps, overhead_bytes, frame_ms
        )
        fleet = Fleet(
            regions,
            min_instances,
            calls_per_core,
            cores_per_instance,
            headroom,
            instance_type,
            accelerators,
            engineering,
            savings_plan,
            public_ipv4,
            nat_gateway,
            gpu_placement,
        )
        extras = Extras(sip_rate, model_rate, gpu_hour, calls_per_gpu, agent_host_hour, calls_per_agent_host)
        book = _prices(prices_files or [], price or [], instance_type, instance_price)
        models = choose_options(
            options, fleet, livekit_agents, with_model, generic_rate, generic_name, extras
        )
        csv_to_stdout = csv_out is not None and str(csv_out) == "-"
        csv_file = None if csv_out is None or csv_to_stdout else check_output(csv_out, "--csv", (".csv",))
        if csv_to_stdout and json_out:
            raise CostInputError("--csv", "'-' (stdout) cannot be combined with --json")
        if plot_out is not None:
            check_output(plot_out, "--plot", (".png", ".svg"))
        report = build_report(traffic, book, models)
        for warning in input_warnings(traffic):
            typer.echo(f"warning: {warning}", err=True)
        outputs = []
        if csv_file is not None:
            outputs.append(Output("--csv", csv_file, report_csv(report).encode()))
        if plot_out is not None:
            from splitrelay.cost.plot import plot

            outputs.append(Output("--plot", plot_out, plot(report, plot_out.suffix.lower().lstrip("."))))
        write_atomic(outputs)
    except CostInputError as exc:
        _fail(str(exc))

    if json_out:
        sys.stdout.write(report_json(report))
    elif csv_to_stdout:
        sys.stdout.write(report_csv(report))
    else:
        from splitrelay.cost.render import render

        render(report, Console())
    for out in outputs:
        typer.echo(f"wrote {out.path}", err=json_out or csv_to_stdout)


def _prices(
    files: list[Path], flags: list[str], instance_type: str, instance_price: float | None
) -> PriceBook:
    """Catalogue, then user files in order, then --price flags, then --instance-price."""
    book = load_catalogue()
    for path in files:
        book = book.with_overrides(load_price_file(path), label=path.name)
    book = book.with_overrides([parse_price_flag(flag, book) for flag in flags], label="--price")
    if instance_price is not None:
        book = book.with_overrides(
            [instance_price_flag(instance_type, instance_price)], label="--instance-price"
        )
    book.instance_hour(instance_type)  # an unpriced instance type is refused before any work
    return book


@refresh_app.command("aws")
def refresh_aws(
    region: Annotated[str, typer.Option(help="AWS region whose prices to fetch, e.g. us-east-1.")],
    instance_type: Annotated[str, typer.Option(help="EC2 instance type for the relay.")] = "m7g.large",
    out: Annotated[Path, typer.Option(help="User price file to write (merged into if it exists).")] = Path(
        "prices.aws.toml"
    ),
) -> None:
    """EC2 on-demand and internet-egress prices from the AWS Pricing API into a user price file."""
    from splitrelay.cost.aws_prices import AwsPriceError, fetch_prices, merge_price_file, pricing_client

    try:
        check_output(out, "--out", (".toml",))
        fetched = fetch_prices(pricing_client(), region, instance_type)
        today = datetime.now(UTC).date().isoformat()
        header = (
            f"AWS list prices for {region}, written by `splitrelay cost refresh-prices aws` on {today}.\n"
            f"Use with: splitrelay cost --prices {out.name} --instance-type {instance_type}"
        )
        text = merge_price_file(out, fetched, load_catalogue(), header)
        write_atomic([Output("--out", out, text.encode())])
    except (CostInputError, AwsPriceError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {len(fetched)} prices for {region} to {out}")


@cost_app.command("from-stack")
def from_stack(
    stack_file: Annotated[
        Path, typer.Argument(help="The stack's Pulumi config, e.g. infra/Pulumi.prod.yaml.")
    ],
) -> None:
    """Print the `splitrelay cost` command that prices a Pulumi stack's fleet (and what it rounded)."""
    from splitrelay.infra.cost import cost_arguments, settings_from_stack_file
    from splitrelay.infra.settings import InfraConfigError

    try:
        settings = settings_from_stack_file(stack_file)
    except InfraConfigError as exc:
        _fail(str(exc))
    flags, notes = cost_arguments(settings)
    typer.echo("splitrelay cost " + " ".join(flags))
    for note in notes:
        typer.echo(f"# note: {note}")
