"""`splitrelay dev` as a user runs it: a subprocess that starts four more, serves the page, takes a call
from `splitrelay call`, and leaves nothing behind on SIGTERM or SIGINT (processes gone, ports free).

The numbers are checked for consistency, never for speed: every turn has a reply, the reply is a
byte-identical run of the sent frames at the place the echo agent's pre-roll puts it, voice-to-voice is
at least the agent's endpointing, and the agent's end of speech maps exactly onto the caller's last
speech frame through the SFU and the relay's rebasing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

from splitrelay.devtools.stack import (
    StackConfig,
    StackError,
    StackInfo,
    agent_ready,
    group_members,
    redact,
)
from splitrelay.devtools.utterance import load_utterance
from splitrelay.inference.echo_agent import EchoConfig
from splitrelay.inference.wire import PTIME_MS
from splitrelay.relay.child import json_ready

pytestmark = pytest.mark.e2e

# `splitrelay dev` / `splitrelay call` (scripts/cli/main.py registers the same two functions).
SPLITRELAY = [sys.executable, "-m", "splitrelay.cli"]
READY_WITHIN_S = 60.0
STOP_WITHIN_S = 30.0


# --- the parts that need no processes --------------------------------------------------------


def test_ready_line_parsers() -> None:
    assert agent_ready("echo agent listening on udp://127.0.0.1:41234 (silence 500 ms)") == {
        "host": "127.0.0.1",
        "port": 41234,
    }
    assert agent_ready("echo agent listening on udp://[::1]:7000 (silence 500 ms)") == {
        "host": "::1",
        "port": 7000,
    }
    assert agent_ready("something else") is None
    parse = json_ready("ready")
    assert parse('{"event": "ready", "url": "http://127.0.0.1:1"}') == {
        "event": "ready",
        "url": "http://127.0.0.1:1",
    }
    assert parse('{"event": "started"}') is None and parse("{not json") is None and parse("text") is None
    assert redact(b'{"page": "http://127.0.0.1:1/#token=eyJ.abc-_9"}\n') == (
        b'{"page": "http://127.0.0.1:1/#token=<redacted>"}\n'
    )


def test_stack_config_and_file_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode: must be one of"):
        StackConfig(mode="p2p")
    with pytest.raises(ValueError, match=r"silence_ms: must be 20\.\.10000, got 5"):
        StackConfig(silence_ms=5)
    info = StackInfo(
        mode="sfu",
        run_dir=str(tmp_path),
        relay_url="http://127.0.0.1:2",
        agent="127.0.0.1:3",
        edge_url="http://127.0.0.1:4",
        token_signing_key="t" * 43,
        relay_signing_key="r" * 43,
    )
    path = tmp_path / "stack.json"
    info.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert StackInfo.load(path) == info
    assert "t" * 43 not in json.dumps(info.public()) and "r" * 43 not in repr(info)
    doc = json.loads(path.read_text())
    del doc["edge_url"]
    path.write_text(json.dumps(doc))
    with pytest.raises(StackError, match="field 'edge_url' is required in SFU mode"):
        StackInfo.load(path)
    with pytest.raises(StackError, match="not found"):
        StackInfo.load(tmp_path / "missing.json")


# --- the real thing -------------------------------------------------------------------------------


async def read_event(process: asyncio.subprocess.Process, event: str, within: float) -> dict[str, Any]:
    """The next JSON line with ``"event": event`` on the process's stdout (bounded in lines and time)."""
    assert process.stdout is not None
    async with asyncio.timeout(within):
        for _ in range(1000):
            line = await process.stdout.readline()
            if not line:
                raise AssertionError(f"stdout closed before a {event!r} event (exit {await process.wait()})")
            doc = json.loads(line)
            if doc.get("event") == event:
                return dict(doc)
            if doc.get("event") == "error":
                raise AssertionError(f"splitrelay dev: {doc['message']}")
    raise AssertionError(f"no {event!r} event in 1000 lines")


@contextlib.contextmanager
def stderr_file(directory: Path) -> Iterator[BinaryIO]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "dev.stderr", "wb") as stderr:
        yield stderr


@contextlib.asynccontextmanager
async def dev(tmp_path: Path, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`splitrelay dev --json` as a subprocess; whatever happens, it and its children end here."""
    run_dir = tmp_path / "run"
    with stderr_file(tmp_path) as stderr:
        process = await asyncio.create_subprocess_exec(
            *SPLITRELAY,
            "dev",
            "--json",
            "--run-dir",
            str(run_dir),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_WITHIN_S)
            except TimeoutError:
                process.kill()
                await process.wait()


def assert_gone(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped by `splitrelay dev`: not even a zombie is left
        assert name
    assert group_members(set(pids.values())) == []


def assert_ports_free(tcp: list[int], udp: list[int]) -> None:
    """Bind every port the stack listened on again: it released them all.

    SO_REUSEADDR as any server sets it: closed connections may linger in TIME_WAIT, but a socket still
    listening on the port makes the bind fail all the same.
    """
    for port in tcp:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
    for port in udp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", port))


def expected_reply() -> tuple[int, int]:
    """(index of the reply's first frame in the utterance, frames in the reply), from the WAV itself and
    the echo agent's defaults: speech start minus the pre-roll, to the last speech frame plus the tail."""
    utterance = load_utterance()
    config = EchoConfig()
    first = utterance.speech.index(True) - config.pre_roll_ms // PTIME_MS
    last = utterance.last_speech_index + config.tail_ms // PTIME_MS
    return first, last - first + 1


def check_call(report: dict[str, Any], turns: int, mode: str) -> None:
    assert report["ok"] is True, report["errors"]
    assert report["mode"] == mode and report["errors"] == []
    assert len(report["turns"]) == turns
    first, frames = expected_reply()
    for turn in report["turns"]:
        assert turn["voice_to_voice_ms"] is not None, turn
        assert turn["reply_match"] == first and turn["reply_frames"] == frames, turn
        assert turn["endpointing_ms"] == 500.0  # the agent's silence threshold, on the media clock
        assert turn["eos_skew_ms"] == 0.0  # agent and caller agree where speech ended
        assert turn["voice_to_voice_ms"] >= turn["endpointing_ms"]
        assert turn["response_ms"] is not None and turn["response_ms"] >= 0  # decided, then replied
        assert turn["send_lag_ms"] is not None
        assert turn["playout_ms"] == 0.0
        assert turn["relay_dwell_ms"] is not None and turn["relay_dwell_ms"] >= 0
    relay = report["relay"]
    assert relay["agent_replies"] == turns and relay["rtp_timestamp_base"] is not None
    assert relay["packets_out"] == turns * frames  # every reply frame went back out, none extra
    assert report["caller"]["packets_in"] == turns * frames
    assert report["caller"]["undecryptable"] == 0 and report["caller"]["packets_outside_turns"] == 0
    connect = report["connect"]
    assert 0 < connect["connect_ms"] <= connect["ready_ms"]
    assert connect["answer_to_connected_ms"] < connect["connect_ms"]
    assert "voice-to-voice p50" in report["headline"]


async def test_dev_serves_the_page_takes_a_call_and_stops_clean_on_sigterm(tmp_path: Path) -> None:
    async with dev(tmp_path) as process:
        ready = await read_event(process, "ready", READY_WITHIN_S)
        assert ready["mode"] == "sfu" and set(ready["pids"]) == {"emulator", "agent", "relay", "edge"}
        stack_file = Path(ready["stack_file"])
        keys = private_keys(stack_file)
        assert all(key and key not in json.dumps(ready) for key in keys)
        assert ready["page"].startswith(f"{ready['edge_url']}/#token=")
        async with httpx.AsyncClient(timeout=10) as http:
            page = await http.get(ready["page"])
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert (await http.get(f"{ready['edge_url']}/healthz")).json() == {"status": "ok"}

        call = await asyncio.create_subprocess_exec(
            *SPLITRELAY,
            "call",
            "--stack",
            str(stack_file),
            "--turns",
            "2",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(call.communicate(), 90)
        assert call.returncode == 0, err.decode()[-2000:]
        assert all(key not in (out + err).decode() for key in keys)
        check_call(json.loads(out), turns=2, mode="sfu")

        process.send_signal(signal.SIGTERM)
        stopped = await read_event(process, "stopped", STOP_WITHIN_S)
        assert await asyncio.wait_for(process.wait(), STOP_WITHIN_S) == 0
    assert stopped["clean"] is True and stopped["leftovers"] == [] and stopped["killed"] == []
    assert stopped["exit_codes"] == {"emulator": 0, "agent": 0, "relay": 0, "edge": 0}
    assert_gone(ready["pids"])
    assert_ports_free(ready["tcp_ports"], ready["udp_ports"])
    check_run_dir(ready, keys)


def private_keys(stack_file: Path) -> list[str]:
    """The run's keys, from the stack file that only this user may read."""
    assert stat.S_IMODE(stack_file.stat().st_mode) == 0o600
    info = StackInfo.load(stack_file)
    assert not (stack_file.parent / "emulator.json").exists()  # the emulator's config went by environment
    return [
        info.token_signing_key,
        info.relay_signing_key,
        *([info.sfu_app_secret] * bool(info.sfu_app_secret)),
    ]


def check_run_dir(ready: dict[str, Any], keys: list[str]) -> None:
    """After the stop: the stack file (with the keys) is gone; the logs stay, with no secret in them."""
    assert not Path(ready["stack_file"]).exists()
    logs = "".join(path.read_text() for path in Path(ready["run_dir"]).glob("*.log"))
    assert "#token=<redacted>" in logs and ready["page"].split("#token=")[1] not in logs
    assert all(key not in logs for key in keys)


async def test_dev_call_in_direct_mode_is_the_main_command(tmp_path: Path) -> None:
    """`splitrelay dev --direct --call`: start, one measured call, budget, stop; exit 0."""
    async with dev(tmp_path, "--direct", "--call", "--turns", "1") as process:
        ready = await read_event(process, "ready", READY_WITHIN_S)
        assert ready["mode"] == "direct" and ready["page"] is None and ready["edge_url"] is None
        assert set(ready["pids"]) == {"agent", "relay"}
        call = await read_event(process, "call", 60)
        stopped = await read_event(process, "stopped", STOP_WITHIN_S)
        assert await asyncio.wait_for(process.wait(), STOP_WITHIN_S) == 0
    check_call(call["report"], turns=1, mode="direct")
    assert call["report"]["connect"]["edge_answer_to_connected_ms"] is None
    assert stopped["clean"] is True
    assert_gone(ready["pids"])
    assert_ports_free(ready["tcp_ports"], ready["udp_ports"])


async def test_sigint_while_running_and_sigterm_while_starting_both_stop_clean(tmp_path: Path) -> None:
    async with dev(tmp_path / "a", "--direct") as process:
        ready = await read_event(process, "ready", READY_WITHIN_S)
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stopped = await read_event(process, "stopped", STOP_WITHIN_S)
        assert await asyncio.wait_for(process.wait(), STOP_WITHIN_S) == 0
    assert stopped["clean"] is True
    assert_gone(ready["pids"])
    assert_ports_free(ready["tcp_ports"], ready["udp_ports"])

    async with dev(tmp_path / "b") as process:
        # Once the first component's log exists, `dev` is inside its start sequence (its handlers are in
        # place: before that, Python itself may still be starting and SIGTERM's default action applies).
        first_log = tmp_path / "b" / "run" / "emulator.log"
        for _ in range(600):  # bounded: 60 s
            if await asyncio.to_thread(first_log.exists):
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stopped = await read_event(process, "stopped", STOP_WITHIN_S)
        assert await asyncio.wait_for(process.wait(), STOP_WITHIN_S) == 0
    assert stopped["clean"] is True and stopped["leftovers"] == [] and stopped["killed"] == []
    # A child still starting may not have its SIGTERM handler yet: then it dies of the signal itself.
    assert all(code in (0, -signal.SIGTERM) for code in stopped["exit_codes"].values()), stopped
