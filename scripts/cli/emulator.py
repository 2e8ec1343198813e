"""`splitrelay emulator`: run the Cloudflare Realtime emulator (SFU + TURN credential API) on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

CONFIG_ENV = "SPLITRELAY_EMULATOR_CONFIG"
"""An environment variable holding the JSON config (removed from the environment once read)."""
STDIN = "-"

app = typer.Typer(
    help="A local Cloudflare Realtime SFU/TURN emulator with real WebRTC (see docs/emulator.md).",
    no_args_is_help=True,
    add_completion=False,
)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, secret = value.partition("=")
        if not sep or not key or not secret:
            raise typer.BadParameter(f"{option}: expected ID=SECRET")
        out[key] = secret
    return out


@app.command()
def serve(
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="TOML or JSON config file (apps, turn_keys, timers, limits); '-' reads JSON from stdin "
            f"(then closes it). Without --config, the JSON in ${CONFIG_ENV} is used if set: neither "
            "leaves a secrets file behind.",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port; 0 picks a free one (default 8790).")] = None,
    stun_port: Annotated[
        int | None, typer.Option(help="UDP port of the STUN responder; 0 picks one.")
    ] = None,
    apps: Annotated[
        list[str] | None,
        typer.Option("--app", help="APP_ID=SECRET (repeatable). Prefer --config: flags show in `ps`."),
    ] = None,
    turn_keys: Annotated[
        list[str] | None, typer.Option("--turn-key", help="KEY_ID=TOKEN (repeatable).")
    ] = None,
    media_port: Annotated[
        int | None,
        typer.Option(
            help="Put every session on ONE UDP socket at this port (0: any free one), as an anycast SFU "
            "reaches all its peers from one address; needs exactly one --candidate-address."
        ),
    ] = None,
    candidate_addresses: Annotated[
        list[str] | None,
        typer.Option(
            "--candidate-address", help="ICE host candidate address (repeatable; default 127.0.0.1)."
        ),
    ] = None,
    track_idle_timeout: Annotated[
        float | None, typer.Option(help="Seconds without media before a track is dropped.")
    ] = None,
    reconnect_window: Annotated[float | None, typer.Option(help="Seconds a failed session is kept.")] = None,
    connect_wait: Annotated[
        float | None, typer.Option(help="Seconds operations wait for a connection.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON start line (for scripts).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """Serve the Realtime API at http://HOST:PORT/v1 until interrupted (Ctrl-C or SIGTERM)."""
    from dataclasses import replace

    from splitrelay.contract.safety import Secret
    from splitrelay.emulator.config import ConfigError, config_from_mapping
    from splitrelay.relay.media.peer import CandidatePolicy

    if log_level not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("--log-level: one of debug, info, warning, error")
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        base: dict[str, Any] = {}
        config = _read_config(config_file)
        flag_apps = _pairs(apps or [], "--app")
        flag_keys = _pairs(turn_keys or [], "--turn-key")
        if config is None:
            base["apps"] = flag_apps
            base["turn_keys"] = flag_keys
            config = config_from_mapping(base)
        elif flag_apps or flag_keys:
            merged_apps = dict(config.apps) | {k: Secret(v, field=f"--app {k}") for k, v in flag_apps.items()}
            merged_keys = dict(config.turn_keys) | {
                k: Secret(v, field=f"--turn-key {k}") for k, v in flag_keys.items()
            }
            config = replace(config, apps=merged_apps, turn_keys=merged_keys)
        changes: dict[str, Any] = {}
        if host is not None:
            changes["host"] = host
        if port is not None:
            changes["port"] = port
        if stun_port is not None:
            changes["stun_port"] = stun_port
        if candidate_addresses:
            changes["candidates"] = CandidatePolicy(addresses=tuple(candidate_addresses))
        if media_port is not None:
            changes["media_port"] = media_port
        timer_changes = {
            name: value
            for name, value in (
                ("track_idle_timeout", track_idle_timeout),
                ("reconnect_window", reconnect_window),
                ("connect_wait", connect_wait),
            )
            if value is not None
        }
        if timer_changes:
            changes["timers"] = replace(config.timers, **timer_changes)
        if changes:
            config = replace(config, **changes)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _run(config, json_output)


def _read_config(option: str | None) -> Any:
    """The config from a file, stdin (``-``) or $SPLITRELAY_EMULATOR_CONFIG; None when none is given."""
    import os

    from splitrelay.emulator.config import load_config, load_config_json

    if option == STDIN:
        data = sys.stdin.buffer.read()
        sys.stdin.close()
        return load_config_json(data, "stdin")
    if option is not None:
        return load_config(Path(option))
    text = os.environ.pop(CONFIG_ENV, None)  # not inherited by anything this process starts
    if text is not None:
        return load_config_json(text.encode(), f"${CONFIG_ENV}")
    return None


def _run(config: Any, json_output: bool) -> None:
    import uvloop

    try:
        uvloop.run(_serve(config, json_output))
    except OSError as exc:
        typer.echo(f"error: cannot start the emulator: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


async def _serve(config: Any, json_output: bool) -> None:
    from splitrelay.emulator.config import EmulatorConfig
    from splitrelay.emulator.server import EmulatorServer

    assert isinstance(config, EmulatorConfig)
    server = EmulatorServer(config)
    info = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if json_output:
            sys.stdout.write(json.dumps(info.to_json()) + "\n")
        else:
            apps = ", ".join(
                f"{app_id} (secret {secret})" for app_id, secret in config.describe()["apps"].items()
            )
            sys.stdout.write(
                f"Realtime emulator: {info.base_url}\n  apps: {apps}\n"
                f"  STUN: {info.stun_url} (no TURN relay)\n"
                + (f"  media: every session on {info.media_address}\n" if info.media_address else "")
                + "  Ctrl-C to stop.\n"
            )
        sys.stdout.flush()
        await stop.wait()
    finally:
        await server.stop()
