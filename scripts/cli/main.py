"""The `splitrelay` console script: one entry point, one sub-command group per job.

Each group lives in its own module and imports its heavy dependencies (aiortc, matplotlib, boto3)
inside its commands, so `splitrelay --help` and `splitrelay cost` start fast.
"""

from __future__ import annotations

import typer

from splitrelay.cli.agent import app as agent_app
from splitrelay.cli.agent_pipecat import pipecat as agent_pipecat
from splitrelay.cli.bench import app as bench_app
from splitrelay.cli.cost import cost_app
from splitrelay.cli.edge import edge_app, token_app
from splitrelay.cli.emulator import app as emulator_app
from splitrelay.cli.relay import app as relay_app
from splitrelay.cli.stack import call as call_command
from splitrelay.cli.stack import dev as dev_command
from splitrelay.devtools.fuzz import fuzz as fuzz_command

app = typer.Typer(
    name="splitrelay",
    help="Low-latency voice AI on Cloudflare's edge plus a regional relay next to your GPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Sub-command groups (one line each; keep this list sorted by name).
# -- groups --
agent_app.command("pipecat")(agent_pipecat)
app.add_typer(agent_app, name="agent")
app.add_typer(bench_app, name="bench")
app.add_typer(cost_app, name="cost")
app.add_typer(edge_app, name="edge")
app.add_typer(emulator_app, name="emulator")
app.add_typer(relay_app, name="relay")
app.add_typer(token_app, name="token")
app.command("call")(call_command)
app.command("dev")(dev_command)
app.command("fuzz")(fuzz_command)
