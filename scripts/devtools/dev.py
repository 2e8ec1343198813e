"""`splitrelay dev`: the local stack until Ctrl-C or SIGTERM; with ``--call``, one measured call, then stop.

This is the glue between the process orchestration (scripts/devtools/stack.py), the headless caller
(scripts/devtools/call.py) and the terminal: it owns the signal handling, so that Ctrl-C at any moment (while
starting, during the call, while running) ends in the same clean stop of every child.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from splitrelay.devtools.budget import CallReport
from splitrelay.devtools.budget_table import render
from splitrelay.devtools.call import CallOptions, RelayAccess, run_call, run_direct_call
from splitrelay.devtools.stack import PAGE_SUBJECT, Stack, StackConfig, StackInfo, StopReport
from splitrelay.devtools.utterance import Utterance

T = TypeVar("T")
CALLER_SUBJECT = "splitrelay-call"
CALLER_TOKEN_TTL_S = 900


async def call_stack(
    info: StackInfo, utterance: Utterance, turns: int, options: CallOptions | None = None
) -> CallReport:
    """One call against a running local stack, with the relay's view (the stack file has its key)."""
    from splitrelay.edge import tokens

    relay = RelayAccess(info.relay_url, info.relay_signing_key.encode())
    if info.relay_impair:  # the stack's relays impair their leg: replies may miss frames
        options = replace(options or CallOptions(), lossy_path=True)
    if info.mode == "direct":
        return await run_direct_call(relay, utterance, turns, options=options)
    assert info.edge_url is not None  # StackInfo.load checks it for SFU mode
    token, _ = tokens.issue(info.token_signing_key.encode(), CALLER_SUBJECT, ttl_s=CALLER_TOKEN_TTL_S)
    return await run_call(info.edge_url, token, utterance, turns, relay=relay, options=options)


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """Run ``work`` until it finishes or ``stop`` is set (then cancel it): → (finished, result)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return False, None


class Announcer:
    """What the terminal (or a script, with --json) sees; never a secret beyond the page's caller token."""

    def __init__(self, console: Console, json_output: bool) -> None:
        self.console = console
        self.json = json_output

    def line(self, doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    def print(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)  # URLs and paths stay whole, whatever the width

    def ready(self, info: StackInfo, stack_file: Path, seconds: float) -> None:
        if self.json:
            self.line({"event": "ready", **info.public(), "stack_file": str(stack_file), "start_s": seconds})
            return
        c = self
        c.print(f"[bold green]splitrelay dev[/]: local stack up in {seconds:.1f} s ({info.mode} mode)")
        if info.page:
            c.print(f"  web client   {info.page}")
            c.print(f"               (a caller token for '{PAGE_SUBJECT}' is in the link's #fragment)")
        if info.edge_url:
            c.print(f"  edge         {info.edge_url}")
        c.print(f"  relay        {info.relay_url} ({info.mode} mode, inference udp://{info.agent})")
        if info.emulator_url:
            c.print(f"  emulator     {info.emulator_url} (Cloudflare Realtime stand-in)")
        if "agent" in info.pids:
            c.print(f"  echo agent   udp://{info.agent}")
        else:
            agents = ", ".join(f"udp://{a}" for a in info.agents) or f"udp://{info.agent}"
            c.print(f"  your agent   {agents} (not started here; the wire key is your $SPLITRELAY_WIRE_KEY)")
        c.print(f"  logs         {info.run_dir}")
        c.print(f"  make a call: splitrelay call --stack {stack_file}")
        if info.mode == "direct":
            c.print("  (direct mode: no edge, so no web client; callers POST offers to the relay)")

    def report(self, report: CallReport) -> None:
        if self.json:
            self.line({"event": "call", "report": report.to_json()})
        else:
            render(report, self.console)

    def stopped(self, result: StopReport) -> None:
        if self.json:
            self.line(
                {
                    "event": "stopped",
                    "clean": result.clean,
                    "exit_codes": result.exit_codes,
                    "killed": result.killed,
                    "leftovers": result.leftovers,
                }
            )
            return
        if result.clean:
            self.print("stopped: every component exited cleanly")
        else:
            self.print(
                f"[red]stopped uncleanly[/]: exit codes {result.exit_codes}, killed {result.killed}, "
                f"left over {result.leftovers}"
            )

    def error(self, message: str) -> None:
        if self.json:
            self.line({"event": "error", "message": message})
        else:
            self.print(f"[red]error:[/] {message}")


async def run_dev(
    config: StackConfig,
    announcer: Announcer,
    *,
    call_turns: int | None = None,
    utterance: Utterance | None = None,
    options: CallOptions | None = None,
) -> int:
    """Start the stack; then either make one call (``call_turns``) or wait for a signal; always stop."""
    from splitrelay.devtools.call import CallError
    from splitrelay.devtools.stack import StackError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    stack = Stack(config)
    try:
        started = time.perf_counter()
        try:
            finished, info = await _unless_stopped(stack.start(), stop)
        except StackError as exc:
            announcer.error(str(exc))
            return 1
        if not finished or info is None:
            return 0
        announcer.ready(info, stack.stack_file, time.perf_counter() - started)
        if call_turns is not None and utterance is not None:
            try:
                finished, report = await _unless_stopped(
                    call_stack(info, utterance, call_turns, options), stop
                )
            except CallError as exc:
                announcer.error(f"call: {exc}")
                return 1
            if report is not None:
                announcer.report(report)
                code = 0 if report.ok else 1
        else:
            finished, exited = await _unless_stopped(stack.wait_any_exit(), stop)
            if exited is not None:
                announcer.error(
                    f"{exited.name} exited (code {exited.process.returncode}); stopping "
                    f"(log: {exited.log_path})"
                )
                code = 1
    finally:
        result = await stack.stop()
        announcer.stopped(result)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return code if result.clean else 1
