"""`splitrelay agent pipecat MODULE:FACTORY`: serve a user's Pipecat pipeline factory, one pipeline per call.

Registered on the `agent` group by scripts/cli/main.py. Pipecat is imported inside the command, so
`splitrelay --help` stays fast and works without the `pipecat` extra.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from splitrelay.cli.agent import _configure_logging, parse_listen

if TYPE_CHECKING:
    from splitrelay.integrations.pipecat import PipelineFactory

EXTRA_HINT = "pip install 'splitrelay[pipecat]'"
PIPECAT_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def load_factory(spec: str) -> PipelineFactory:
    """'package.module:attribute' -> the pipeline factory it names (the current directory is importable)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise typer.BadParameter(
            f"expected MODULE:FACTORY, e.g. bot:factory, got {spec!r}", param_hint="FACTORY"
        )
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)  # like uvicorn: a bot.py next to where the command runs
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise typer.BadParameter(f"no module named {module_name!r}", param_hint="FACTORY") from None
        raise
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise typer.BadParameter(f"{module_name} has no attribute {attribute!r}", param_hint="FACTORY")
        target = getattr(target, part)
    if not callable(target):
        raise typer.BadParameter(f"{spec} is not callable", param_hint="FACTORY")
    factory: PipelineFactory = target
    return factory


def _route_pipecat_logs(level: str) -> None:
    """Pipecat logs through loguru: send its records at ``level`` and above to our log handler."""
    from loguru import logger as loguru_logger

    target = logging.getLogger("splitrelay.pipecat")

    def sink(message: Any) -> None:
        record = message.record
        target.log(record["level"].no, "%s: %s", record["name"], record["message"])

    loguru_logger.remove()
    loguru_logger.add(sink, level=level, format="{message}")


def pipecat(
    factory: Annotated[
        str,
        typer.Argument(
            help="The pipeline factory, MODULE:ATTRIBUTE: async def factory(transport, call) returning a "
            "Pipeline or PipelineWorker (docs/agents.md)."
        ),
    ],
    listen: Annotated[
        str, typer.Option(help="UDP HOST:PORT to listen on ([IPv6]:PORT; port 0 picks a free one).")
    ] = "127.0.0.1:7000",
    max_calls: Annotated[
        int, typer.Option(help="Concurrent calls (pipelines) at most; more are refused.")
    ] = 100,
    pipecat_log_level: Annotated[
        str, typer.Option(help=f"Pipecat's own log level ({', '.join(PIPECAT_LOG_LEVELS)}).")
    ] = "WARNING",
    confirm_barge_in: Annotated[
        bool,
        typer.Option(
            "--confirm-barge-in/--no-confirm-barge-in",
            help="Answer the relay's barge-in candidates with Silero VAD (relay/inference/vad.py).",
        ),
    ] = True,
    json_logs: Annotated[bool, typer.Option("--json", help="Log JSON lines on stderr.")] = False,
) -> None:
    """Serve a Pipecat pipeline factory behind the relay: one pipeline per call, many calls per process."""
    host, port = parse_listen(listen)
    _configure_logging(json_logs)
    if not 1 <= max_calls <= 10_000:
        raise typer.BadParameter(f"must be 1..10000, got {max_calls}", param_hint="--max-calls")
    level = pipecat_log_level.upper()
    if level not in PIPECAT_LOG_LEVELS:
        raise typer.BadParameter(
            f"must be one of {', '.join(PIPECAT_LOG_LEVELS)}, got {pipecat_log_level!r}",
            param_hint="--pipecat-log-level",
        )
    from splitrelay.inference.wire_auth import WireKeyError, WireKeyring

    try:  # as `splitrelay agent echo`: a missing or short key is named before anything starts
        key = WireKeyring.from_env()
    except WireKeyError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        _route_pipecat_logs(level)  # before Pipecat's import logs its banner
        import pipecat.frames  # noqa: F401  (the extra's presence, checked before anything else)
    except ImportError as exc:
        typer.echo(f"splitrelay agent pipecat needs Pipecat: {EXTRA_HINT} ({exc})", err=True)
        raise typer.Exit(1) from None
    user_factory = load_factory(factory)

    from splitrelay.inference import sdk as inference
    from splitrelay.integrations.pipecat import PipecatAgent

    agent = PipecatAgent(user_factory)
    confirmer = None
    if confirm_barge_in:
        from splitrelay.inference.vad import SileroVad, VadConfirmer

        SileroVad()  # the model loads before any call comes (the extra ships it and onnxruntime)

        def confirmer(call: inference.InferenceCall) -> VadConfirmer:
            return VadConfirmer(channels=call.info.channels)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with inference.InferenceServer(
            agent, host, port, key=key, max_calls=max_calls, confirmer=confirmer
        ) as server:
            assert server.address is not None
            address = server.address
            shown = f"[{address[0]}]" if ":" in address[0] else address[0]
            typer.echo(f"pipecat agent listening on udp://{shown}:{address[1]} (factory {factory})")
            sys.stdout.flush()
            await stop.wait()

    try:
        inference.run(main())
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot bind {listen} ({exc.strerror or exc})", param_hint="--listen"
        ) from None
