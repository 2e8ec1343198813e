"""`splitrelay dev` (the local stack) and `splitrelay call` (the headless caller with the latency budget).

Both are top-level commands (scripts/cli/main.py registers the two functions below); heavy imports (aiortc,
PyAV) happen inside them, so `splitrelay --help` stays fast. Secrets come from the stack file or the
environment, never from flags.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from splitrelay.devtools.call import CallOptions
    from splitrelay.devtools.utterance import Utterance

CALL_TOKEN_ENV = "SPLITRELAY_CALL_TOKEN"
DEFAULT_TURNS = 3

Turns = Annotated[int, typer.Option(help="Turns in the call (1..50).")]
UtterancePath = Annotated[
    Path | None,
    typer.Option(help="48 kHz mono 16-bit WAV to speak (default: scripts/devtools/assets/utterance.wav)."),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="JSON for machines instead of tables.")]
ReplyTimeout = Annotated[
    float, typer.Option(help="Seconds the agent has to start replying after the last speech frame.")
]
Impair = Annotated[
    str | None,
    typer.Option(
        help="Impair the caller's media both ways, e.g. loss=2%,burst=3,delay=40ms,jitter=30ms,reorder=1%,"
        "duplicate=0.5%,seed=7 (userspace: docs/local-stack.md).",
        show_default=False,
    ),
]


def _utterance(path: Path | None) -> Utterance:
    from splitrelay.devtools.utterance import DEFAULT_UTTERANCE, UtteranceError, load_utterance

    try:
        return load_utterance(path or DEFAULT_UTTERANCE)
    except UtteranceError as exc:
        raise typer.BadParameter(f"--utterance: {exc}") from None


def _options(reply_timeout: float, impair: str | None = None) -> CallOptions:
    from splitrelay.devtools.call import CallOptions
    from splitrelay.relay.media.impair import ImpairmentError, parse_impairment

    try:
        impairment = parse_impairment(impair) if impair is not None else None
    except ImpairmentError as exc:
        raise typer.BadParameter(f"--impair: {exc}") from None
    try:
        return CallOptions(reply_timeout_s=reply_timeout, impair=impairment)
    except ValueError as exc:
        raise typer.BadParameter(f"--reply-timeout: {exc}") from None


def _check_turns(turns: int) -> int:
    from splitrelay.devtools.call import MAX_TURNS

    if not 1 <= turns <= MAX_TURNS:
        raise typer.BadParameter(f"--turns: must be 1..{MAX_TURNS}, got {turns}")
    return turns


def dev(
    direct: Annotated[
        bool, typer.Option("--direct", help="Direct mode: caller → relay, no emulator or edge.")
    ] = False,
    call: Annotated[
        bool, typer.Option("--call", help="Make one measured call, print the budget, stop the stack.")
    ] = False,
    turns: Turns = DEFAULT_TURNS,
    utterance: UtterancePath = None,
    silence_ms: Annotated[int, typer.Option(help="The echo agent's end-of-speech silence, ms.")] = 500,
    run_dir: Annotated[
        Path | None, typer.Option(help="Directory for logs and the stack file (default: a new temp dir).")
    ] = None,
    reply_timeout: ReplyTimeout = 10.0,
    impair: Impair = None,
    relays: Annotated[
        int, typer.Option(help="Relay processes (the edge's registry: relay-0, relay-1...).")
    ] = 1,
    shared_port: Annotated[
        bool,
        typer.Option(
            "--shared-port/--port-per-call",
            help="Each relay serves every call on one UDP port (relay serve --media-port), or one port per "
            "call (the deploy's fallback, relayPortRange).",
        ),
    ] = True,
    shared_sfu_socket: Annotated[
        bool,
        typer.Option(
            "--sfu-one-socket/--sfu-socket-per-session",
            help="The emulator reaches every relay from ONE address and port, as Cloudflare's anycast SFU "
            "may (emulator serve --media-port), or gives each session a socket of its own.",
        ),
    ] = True,
    impair_relay: Annotated[
        str | None,
        typer.Option(
            help="Impair the relays' media leg (SFU↔relay) both ways in userspace, e.g. "
            "loss=2%,jitter=30ms (--impair is the caller's leg; docs/local-stack.md)."
        ),
    ] = None,
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            help="Your own agent's UDP HOST:PORT (e.g. `splitrelay agent pipecat ...`) instead of the echo "
            "agent; repeat for more. It must run with the same $SPLITRELAY_WIRE_KEY as this command.",
        ),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Run emulator, echo agent, relay and edge on loopback until Ctrl-C or SIGTERM (then stop them all).

    With --agent, the relays send calls to your agent instead of the echo agent (docs/agents.md)."""
    from rich.console import Console

    from splitrelay.devtools.dev import Announcer, run_dev
    from splitrelay.devtools.stack import StackConfig, StackError

    try:
        config = StackConfig(
            mode="direct" if direct else "sfu",
            run_dir=run_dir,
            silence_ms=silence_ms,
            relays=relays,
            external_agents=tuple(agent or ()),
            relay_impair=impair_relay,
            shared_media_port=shared_port,
            shared_sfu_socket=shared_sfu_socket,
        )
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        option = {"external_agents": "agent", "relay_impair": "impair-relay"}.get(
            name, name.replace("_", "-")
        )
        raise typer.BadParameter(f"--{option}:{rest}") from None
    spoken: Utterance | None = None
    options: CallOptions | None = None
    if call:
        _check_turns(turns)
        spoken = _utterance(utterance)
        options = _options(reply_timeout, impair)
    announcer = Announcer(Console(highlight=False), json_output)
    try:
        code = asyncio.run(
            run_dev(
                config,
                announcer,
                call_turns=turns if call else None,
                utterance=spoken,
                options=options,
            )
        )
    except StackError as exc:  # e.g. the run dir holds a live stack
        announcer.error(str(exc))
        code = 1
    raise typer.Exit(code)


def call(
    stack: Annotated[
        Path | None, typer.Option(help="Stack file printed by `splitrelay dev` (URLs and the run's keys).")
    ] = None,
    edge: Annotated[
        str | None,
        typer.Option(
            help=f"Edge URL (token: ${CALL_TOKEN_ENV}, or minted with $SPLITRELAY_TOKEN_SIGNING_KEY)."
        ),
    ] = None,
    relay: Annotated[
        str | None,
        typer.Option(help="Relay control URL (key: $SPLITRELAY_RELAY_SIGNING_KEY): its view of the call."),
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Offer straight to --relay (direct mode), no edge.")
    ] = False,
    turns: Turns = DEFAULT_TURNS,
    utterance: UtterancePath = None,
    reply_timeout: ReplyTimeout = 10.0,
    impair: Impair = None,
    json_output: JsonOutput = False,
) -> None:
    """Call through the edge as a browser does, speak N turns and print the latency budget."""
    from rich.console import Console

    from splitrelay.cli.relay import SIGNING_KEY_ENV
    from splitrelay.devtools.budget import CallReport
    from splitrelay.devtools.budget_table import render
    from splitrelay.devtools.call import CallError, RelayAccess, run_call, run_direct_call
    from splitrelay.devtools.dev import CALLER_SUBJECT, CALLER_TOKEN_TTL_S, call_stack
    from splitrelay.devtools.stack import StackError, StackInfo

    _check_turns(turns)
    spoken = _utterance(utterance)
    options = _options(reply_timeout, impair)

    def relay_access(url: str) -> RelayAccess:
        key = os.environ.get(SIGNING_KEY_ENV)
        if not key:
            raise typer.BadParameter(f"--relay: set ${SIGNING_KEY_ENV} (the relay's signing key)")
        try:
            return RelayAccess(url, key.encode())
        except ValueError as exc:
            raise typer.BadParameter(f"--relay: {exc}") from None

    async def main() -> CallReport:
        if stack is not None:
            if edge or relay or direct:
                raise typer.BadParameter("--stack: takes no --edge, --relay or --direct (the file has them)")
            try:
                info = StackInfo.load(stack)
            except StackError as exc:
                raise typer.BadParameter(f"--stack: {exc}") from None
            return await call_stack(info, spoken, turns, options)
        if direct:
            if relay is None:
                raise typer.BadParameter("--direct: needs --relay URL")
            return await run_direct_call(relay_access(relay), spoken, turns, options=options)
        if edge is None:
            raise typer.BadParameter(
                "name the target: --stack FILE (from `splitrelay dev`), --edge URL, or --direct"
            )
        token = os.environ.get(CALL_TOKEN_ENV)
        if not token:
            from splitrelay.cli.edge import token_key
            from splitrelay.edge import tokens

            try:
                token, _ = tokens.issue(token_key(None), CALLER_SUBJECT, ttl_s=CALLER_TOKEN_TTL_S)
            except typer.BadParameter:
                raise typer.BadParameter(
                    f"--edge: set ${CALL_TOKEN_ENV} (a caller token) or $SPLITRELAY_TOKEN_SIGNING_KEY"
                ) from None
        access = relay_access(relay) if relay is not None else None
        try:
            return await run_call(edge, token, spoken, turns, relay=access, options=options)
        except ValueError as exc:
            raise typer.BadParameter(f"--edge: {exc}") from None

    console = Console(highlight=False)
    try:
        report = asyncio.run(main())
    except CallError as exc:
        if json_output:
            print(json.dumps({"ok": False, "errors": [str(exc)]}))
        else:
            console.print(f"[red]call failed:[/] {exc}")
        raise typer.Exit(1) from None
    if json_output:
        print(json.dumps(report.to_json()))
    else:
        render(report, console)
    raise typer.Exit(0 if report.ok else 1)
