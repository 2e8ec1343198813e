"""`splitrelay token` (caller tokens for the edge) and `splitrelay edge serve` (the edge on CPython).

Secrets come from files or the environment, never from flags (flags show up in `ps` and shell history),
and are never printed: `token issue` prints the token it signs, not the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from splitrelay.cli.relay import SFU_SECRET_ENV, SIGNING_KEY_ENV, read_secret

token_app = typer.Typer(help="Caller tokens for the edge: short-lived HS256 JWTs (docs/edge.md).")
edge_app = typer.Typer(help="The edge (Cloudflare Worker logic) on this machine, for the local stack.")


@token_app.callback()
def token_group() -> None:
    """Caller tokens for the edge: short-lived HS256 JWTs (docs/edge.md)."""


@edge_app.callback()
def edge_group() -> None:
    """The edge (Cloudflare Worker logic) on this machine, for the local stack."""
    # Callbacks keep both groups groups while each has few commands.


TOKEN_KEY_ENV = "SPLITRELAY_TOKEN_SIGNING_KEY"
TURN_TOKEN_ENV = "SPLITRELAY_TURN_KEY_API_TOKEN"
API_KEY_ENV = "SPLITRELAY_EDGE_API_KEY"


def token_key(key_file: Path | None) -> bytes:
    key = read_secret(TOKEN_KEY_ENV, key_file, "token signing key")
    if key is None:
        raise typer.BadParameter(f"no token signing key: set ${TOKEN_KEY_ENV} or pass --key-file")
    return key.encode("utf-8")


@token_app.command("issue")
def issue(
    sub: Annotated[str, typer.Option(help="Who the caller is (1-128 chars of A-Z a-z 0-9 _ . : @ -).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(help="Scope: 'calls' (default; includes ICE servers) or 'ice'. Repeat."),
    ] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds (at most 86400).")] = 900,
    key_file: Annotated[
        Path | None, typer.Option(help=f"File with the signing key (default: ${TOKEN_KEY_ENV}).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Edge URL: also print the test-call page link with the token.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print token and claims as JSON.")] = False,
) -> None:
    """Sign a caller token with the edge's TOKEN_SIGNING_KEY."""
    from splitrelay.edge import tokens

    try:
        token, claims = tokens.issue(token_key(key_file), sub, scope or [tokens.SCOPE_CALLS], ttl_s=ttl)
    except (tokens.TokenError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    link = f"{url.rstrip('/')}/#token={token}" if url else None
    if json_output:
        print(json.dumps({"token": token, "claims": claims.to_json(), "page": link}))
        return
    print(token)
    if link:
        print(f"test-call page: {link}", file=sys.stderr)


@token_app.command("verify")
def verify(
    token: Annotated[str, typer.Argument(help="The token to check.")],
    key_file: Annotated[
        Path | None, typer.Option(help=f"File with the signing key (default: ${TOKEN_KEY_ENV}).")
    ] = None,
) -> None:
    """Check a token as the edge would; print its claims, or why it is refused (exit 1)."""
    from splitrelay.edge import tokens

    try:
        claims = tokens.verify(token_key(key_file), token)
    except tokens.TokenError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(json.dumps(claims.to_json()))


def relay_registry(relays_file: Path | None, relay_url: list[str] | None) -> str:
    if relays_file is not None:
        try:
            return relays_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise typer.BadParameter(f"--relays {relays_file}: {exc.strerror}") from None
    if not relay_url:
        raise typer.BadParameter("name the relays: --relay URL (repeat) or --relays FILE (JSON registry)")
    items = [{"id": f"relay-{index}", "control_url": url} for index, url in enumerate(relay_url)]
    return json.dumps({"relays": items})


@edge_app.command("serve")
def serve(
    sfu_url: Annotated[str, typer.Option(help="Realtime SFU API base (the emulator's, locally).")],
    sfu_app_id: Annotated[str, typer.Option(help=f"Realtime SFU app id (secret: ${SFU_SECRET_ENV}).")],
    relay: Annotated[list[str] | None, typer.Option(help="A relay's control URL (repeat).")] = None,
    relays: Annotated[Path | None, typer.Option(help="Relay registry JSON file (docs/edge.md).")] = None,
    turn_key_id: Annotated[
        str | None, typer.Option(help=f"TURN key id (token: ${TURN_TOKEN_ENV}); default STUN only.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8787,
    print_token: Annotated[
        str | None, typer.Option(help="Also print a test-call page link with a token for this subject.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON 'ready' line.")] = False,
) -> None:
    """Serve the edge's API and test-call page until SIGINT or SIGTERM (secrets from the environment)."""
    from splitrelay.devtools.local_edge import LocalEdge
    from splitrelay.edge import tokens
    from splitrelay.edge.config import ConfigError
    from splitrelay.relay.server import ControlServer

    env: dict[str, Any] = {
        "SFU_APP_ID": sfu_app_id,
        "SFU_APP_SECRET": os.environ.get(SFU_SECRET_ENV, ""),
        "SFU_API_URL": sfu_url,
        "RELAY_SIGNING_KEY": os.environ.get(SIGNING_KEY_ENV, ""),
        "TOKEN_SIGNING_KEY": os.environ.get(TOKEN_KEY_ENV, ""),
        "API_KEY": os.environ.get(API_KEY_ENV, ""),
        "RELAYS": relay_registry(relays, relay),
    }
    if turn_key_id:
        env.update(TURN_KEY_ID=turn_key_id, TURN_KEY_API_TOKEN=os.environ.get(TURN_TOKEN_ENV, ""))
    names = {"SFU_APP_SECRET": SFU_SECRET_ENV, "RELAY_SIGNING_KEY": SIGNING_KEY_ENV}
    names.update(TOKEN_SIGNING_KEY=TOKEN_KEY_ENV, API_KEY=API_KEY_ENV, TURN_KEY_API_TOKEN=TURN_TOKEN_ENV)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            edge = LocalEdge(env)
        except ConfigError as exc:
            message = str(exc)
            for name, variable in names.items():
                message = message.replace(f"{name}:", f"${variable}:")
            raise typer.BadParameter(message) from None
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(edge.aclose)
            server = ControlServer(edge, host, port)
            await server.start()
            stack.push_async_callback(server.stop)
            ready: dict[str, Any] = {"event": "ready", "url": server.url, "pid": os.getpid()}
            if print_token:
                token, _ = tokens.issue(env["TOKEN_SIGNING_KEY"].encode(), print_token, ttl_s=3600)
                ready["page"] = f"{server.url}/#token={token}"
            if json_output:
                print(json.dumps(ready), flush=True)
            else:
                print(f"edge on {server.url}; Ctrl-C stops", flush=True)
                if "page" in ready:
                    print(f"test-call page: {ready['page']}", flush=True)
            await stop.wait()

    asyncio.run(main())
