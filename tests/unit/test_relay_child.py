"""relay/child.py with real child processes: the ready line, a timeout, an early exit, stop escalation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from splitrelay.relay.child import ChildError, ChildProcess, cli_command, json_ready

pytestmark = pytest.mark.timeout(60)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def gone(pid: int) -> bool:
    """True when ``pid`` is no longer a process (reaped), not even a zombie."""
    return not Path(f"/proc/{pid}").exists()


def test_json_ready_accepts_only_the_named_event() -> None:
    parse = json_ready("ready")
    assert parse('{"event": "ready", "port": 7}') == {"event": "ready", "port": 7}
    assert parse('{"event": "progress"}') is None
    assert parse("listening on udp://127.0.0.1:7000") is None
    assert parse("{not json") is None
    assert json_ready(None)('{"base_url": "x"}') == {"base_url": "x"}
    assert cli_command("relay", "worker")[1:] == ["-m", "splitrelay.cli", "relay", "worker"]


async def test_the_ready_line_comes_after_other_lines_and_stop_reaps(tmp_path: Path) -> None:
    code = (
        "import json, os, sys, time\n"
        "print('starting up', flush=True)\n"
        "print('oops', file=sys.stderr, flush=True)\n"  # before the ready line: stop() may follow it at once
        "print(json.dumps({'event': 'ready', 'pid': os.getpid()}), flush=True)\n"
        "time.sleep(60)\n"
    )
    seen: list[bytes] = []
    child = await ChildProcess.start("sleeper", python(code), stderr=tmp_path / "sleeper.stderr")
    try:
        ready = await child.wait_ready(within=20, on_line=seen.append)
        assert ready == {"event": "ready", "pid": child.pid}
        assert seen[0] == b"starting up\n" and len(seen) == 2
        assert os.getpgid(child.pid) == child.pid  # its own session and process group
    finally:
        code_ = await child.stop(grace=5)
    assert code_ == -15 and not child.killed
    assert gone(child.pid)
    assert "oops" in child.stderr_tail()


async def test_a_caller_given_parser_reads_a_human_line() -> None:
    def parse(line: str) -> dict[str, int] | None:
        return {"port": int(line.rsplit(":", 1)[1])} if line.startswith("listening on") else None

    child = await ChildProcess.start("human", python("print('listening on 127.0.0.1:7000', flush=True)"))
    try:
        assert await child.wait_ready(parse, within=20) == {"port": 7000}
    finally:
        await child.stop(grace=5)


async def test_no_ready_line_in_time_is_an_error_naming_the_child() -> None:
    child = await ChildProcess.start("silent", python("import time; time.sleep(60)"))
    try:
        with pytest.raises(ChildError, match=r"silent: no ready line within 0.5 s"):
            await child.wait_ready(within=0.5)
    finally:
        await child.stop(grace=5)
    assert gone(child.pid)


async def test_a_child_that_dies_before_ready_reports_its_exit_code() -> None:
    child = await ChildProcess.start("crasher", python("print('bye', flush=True); raise SystemExit(3)"))
    with pytest.raises(ChildError, match=r"crasher: exited with code 3 before it was ready"):
        await child.wait_ready(within=20)
    assert await child.stop() == 3


async def test_too_many_lines_without_ready_is_an_error() -> None:
    child = await ChildProcess.start(
        "chatty", python("import time\nfor i in range(50): print(i)\ntime.sleep(60)")
    )
    try:
        with pytest.raises(ChildError, match="10 lines without a ready line"):
            await child.wait_ready(within=20, max_lines=10)
    finally:
        await child.stop(grace=5)


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored() -> None:
    code = (
        "import json, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print(json.dumps({'event': 'ready'}), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = await ChildProcess.start("stubborn", python(code))
    try:
        await child.wait_ready(within=20)
    finally:
        status = await child.stop(grace=0.5)
    assert status == -9 and child.killed
    assert gone(child.pid)
    assert await child.stop() == -9  # idempotent


async def test_stdin_pipe_and_group_stop() -> None:
    code = (
        "import json, sys\n"
        "print(json.dumps({'event': 'ready'}), flush=True)\n"
        "print(json.dumps({'echo': sys.stdin.readline().strip()}), flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = await ChildProcess.start("echo", python(code), stdin=True, env={**os.environ, "X": "1"})
    try:
        await child.wait_ready(within=20)
        assert child.process.stdin is not None
        child.process.stdin.write(b"hello\n")
        await child.process.stdin.drain()
        assert json.loads(await child.read_line(20)) == {"echo": "hello"}
    finally:
        assert await child.stop(grace=5, group=True) == -15


async def test_a_missing_program_is_a_child_error() -> None:
    with pytest.raises(ChildError, match="nothing: cannot start /nonexistent/program"):
        await ChildProcess.start("nothing", ["/nonexistent/program"])
