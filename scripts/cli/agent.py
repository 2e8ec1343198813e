"""`splitrelay agent`: reference agents built on the inference SDK (today: the echo agent)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from typing import Annotated

import typer

app = typer.Typer(
    help="Reference agents built on the inference SDK (relay/inference/sdk.py).",
    no_args_is_help=True,
    add_completion=False,
)


def parse_listen(value: str) -> tuple[str, int]:
    """'host:port' or '[v6-address]:port' -> (host, port); port 0 lets the system pick one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise typer.BadParameter(f"--listen: expected HOST:PORT or [IPv6]:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise typer.BadParameter(f"--listen: put an IPv6 address in brackets, e.g. [::1]:7000, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise typer.BadParameter(f"--listen: port must be 0..65535, got {port_text!r}")
    return host, int(port_text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(json_logs: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger("splitrelay")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


@app.command("echo")
def echo(
    listen: Annotated[
        str, typer.Option(help="UDP HOST:PORT to listen on ([IPv6]:PORT; port 0 picks a free one).")
    ] = "127.0.0.1:7000",
    silence_ms: Annotated[int, typer.Option(help="Silence that ends an utterance, in ms (20..10000).")] = 500,
    threshold_dbov: Annotated[
        float, typer.Option(help="Speech threshold in dBov (-127..0); the RFC 6464 level or decoded RMS.")
    ] = -45.0,
    pre_roll_ms: Annotated[int, typer.Option(help="Audio kept before the detected speech start, ms.")] = 100,
    tail_ms: Annotated[int, typer.Option(help="Audio kept after the last speech frame, ms.")] = 100,
    lead_ms: Annotated[int, typer.Option(help="How far ahead of real time replies are sent, ms.")] = 200,
    vad: Annotated[
        bool,
        typer.Option(
            "--vad/--no-vad",
            help="End turns on Silero VAD and the level together (needs splitrelay[pipecat]).",
        ),
    ] = False,
    json_logs: Annotated[bool, typer.Option("--json", help="Log JSON lines on stderr.")] = False,
) -> None:
    """Echo agent: plays each caller utterance back after SILENCE_MS of silence (a stand-in model).

    The wire key shared with the relays comes from $SPLITRELAY_WIRE_KEY (docs/wire-protocol.md).
    """
    from rich.console import Console

    from splitrelay.inference import sdk as inference
    from splitrelay.inference.echo_agent import EchoConfig, serve
    from splitrelay.inference.wire_auth import WireKeyError, WireKeyring

    host, port = parse_listen(listen)
    try:
        key = WireKeyring.from_env()
    except WireKeyError as exc:
        raise typer.BadParameter(str(exc)) from None
    if vad:
        from splitrelay.inference.vad import SileroVad

        try:
            SileroVad()  # the model and onnxruntime are there, before any call comes
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--vad") from None
    try:
        config = EchoConfig(
            silence_ms=silence_ms,
            threshold_dbov=threshold_dbov,
            pre_roll_ms=pre_roll_ms,
            tail_ms=tail_ms,
            lead_ms=lead_ms,
            vad=vad,
        )
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        raise typer.BadParameter(f"--{name.replace('_', '-')}:{rest}") from None
    _configure_logging(json_logs)
    console = Console(highlight=False)

    def ready(address: tuple[str, int]) -> None:
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        console.print(
            f"[bold green]echo agent[/] listening on udp://{shown}:{address[1]} "
            f"(silence {config.silence_ms} ms, threshold {config.threshold_dbov:g} dBov)"
        )
        sys.stdout.flush()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(config, host, port, key=key, ready=ready, stop=stop)

    try:
        inference.run(main())
    except OSError as exc:
        raise typer.BadParameter(f"--listen: cannot bind {listen} ({exc.strerror or exc})") from None
