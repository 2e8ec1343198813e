"""The headless caller as a library (what `splitrelay bench calls` imports) and as a command.

In-process here: a real relay in direct mode and a real agent on loopback, so the caller's API is
exercised without the subprocess stack (tests/e2e/test_dev_stack.py runs that): a full turn, an agent
that never answers (the report says so, the call still hangs up), and the command's input checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from splitrelay.cli.main import app
from splitrelay.devtools.call import CallOptions, RelayAccess, run_direct_call
from splitrelay.devtools.utterance import load_utterance
from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.inference.wire import PTIME_MS
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.server import RelayServer, RelaySettings

pytestmark = pytest.mark.e2e

KEY = "call-harness-relay-signing-key-0123456789"
Handler = Callable[[InferenceCall], Awaitable[None]]


@asynccontextmanager
async def relay_with(handler: Handler) -> AsyncIterator[RelayServer]:
    async with InferenceServer(handler, "127.0.0.1", 0) as inference:
        assert inference.address is not None
        settings = RelaySettings(
            signing_keys={"default": KEY.encode()}, inference=inference.address, port=0, candidates=LOOPBACK
        )
        async with RelayServer(settings) as relay:
            yield relay


async def test_run_direct_call_measures_a_turn_and_hangs_up() -> None:
    utterance = load_utterance()
    async with relay_with(EchoAgent(EchoConfig())) as relay:
        report = await run_direct_call(RelayAccess(relay.url, KEY.encode()), utterance, turns=1)
        assert relay.manager is not None and relay.manager.calls == {}  # the caller's DELETE ended it
    assert report.ok, report.errors
    (turn,) = report.turns
    pre_roll = EchoConfig().pre_roll_ms // PTIME_MS
    assert turn.reply_match == utterance.speech.index(True) - pre_roll
    assert turn.eos_skew_ms == 0.0 and turn.endpointing_ms == 500.0
    assert turn.voice_to_voice_ms is not None and turn.voice_to_voice_ms >= turn.endpointing_ms
    assert report.relay is not None and len(report.relay.replies) == 1
    assert report.connect is not None and report.connect.edge_answer_to_connected_ms is None
    assert report.caller["packets_in"] == turn.reply_frames


async def test_an_agent_that_never_answers_is_reported_not_invented() -> None:
    async def mute(call: InferenceCall) -> None:
        async for _ in call.frames():
            pass

    async with relay_with(mute) as relay:
        report = await run_direct_call(
            RelayAccess(relay.url, KEY.encode()),
            load_utterance(),
            turns=1,
            options=CallOptions(reply_timeout_s=1.0),
        )
        assert relay.manager is not None and relay.manager.calls == {}
    assert not report.ok
    assert report.errors == ["turn 1: no reply within 1 s of the last speech frame"]
    (turn,) = report.turns
    assert turn.voice_to_voice_ms is None and turn.endpointing_ms is None and turn.inference_ms is None
    assert turn.reply_frames == 0
    assert report.headline().startswith("no turn got a reply")


def flat(output: str) -> str:
    """The command's error text without the box rich draws around it, on one line."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call"], "name the target"),
        (["call", "--turns", "0", "--direct"], "--turns: must be 1..50, got 0"),
        (["call", "--direct"], "--direct: needs --relay URL"),
        (["call", "--edge", "http://127.0.0.1:9"], "SPLITRELAY_CALL_TOKEN"),
        (["call", "--stack", "/nonexistent/stack.json"], "not found"),
        (
            ["call", "--reply-timeout", "0.1", "--direct"],
            "--reply-timeout: reply_timeout_s: must be 1.0..120.0 s",
        ),
        (["dev", "--silence-ms", "5"], "--silence-ms: must be 20..10000, got 5"),
    ],
)
def test_command_input_errors_name_the_option(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SPLITRELAY_CALL_TOKEN", "SPLITRELAY_TOKEN_SIGNING_KEY", "SPLITRELAY_RELAY_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output), result.output


def test_a_bad_utterance_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "u.wav").write_text("nope")
    result = CliRunner().invoke(app, ["dev", "--call", "--utterance", str(tmp_path / "u.wav")])
    assert result.exit_code == 2
    assert "not a PCM WAV file (too short for a WAV header)" in flat(result.output)
