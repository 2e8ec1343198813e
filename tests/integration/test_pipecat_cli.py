"""`splitrelay agent pipecat MODULE:FACTORY` serves the documented example (a real relay link, real speech);
without the pipecat extra the command says which extra to install, and the rest of the CLI still works."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from splitrelay.devtools.utterance import load_utterance
from splitrelay.inference import wire
from splitrelay.relay.inference_link import RelayLink
from tests.recording_sink import RecordingSink

REPO = Path(__file__).resolve().parents[2]
F = 960


class VerdictSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.verdicts: list[tuple[int, bool]] = []

    def on_barge_verdict(self, candidate: int, confirm: bool) -> None:
        self.verdicts.append((candidate, confirm))
        self._changed.set()


async def test_cli_serves_the_documented_example() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "splitrelay.cli", "agent", "pipecat",
        "splitrelay.integrations.pipecat_parrot:factory", "--listen", "127.0.0.1:0", "--json",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"pipecat agent listening on udp://127\.0\.0\.1:(\d+) \(factory ", line)
        assert match, line
        utterance = load_utterance()
        frames = list(utterance.frames) + [utterance.silence_frame] * 60
        sink = VerdictSink()
        async with RelayLink(("127.0.0.1", int(match.group(1)))) as link:
            call_id = await link.start_call("cli-pipecat", sink)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, frame in enumerate(frames):  # real time, as a relay forwards a caller
                await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
                assert link.send_audio_in(call_id, i, i * F, frame, wire.audio_in_flags(marker=i == 0))
            await sink.wait_for(lambda: any(e["type"] == "parrot.reply" for e in sink.events), within=10)
            (reply,) = [e for e in sink.events if e["type"] == "parrot.reply"]
            await sink.wait_for(lambda: len(sink.audio) >= int(reply["utterance_ms"]) // 20, within=10)
            assert sink.audio[0].marker
            # The CLI answers barge-in candidates with the Silero confirmer: silence is rejected.
            n = len(frames)
            link.send_barge_candidate(call_id, 1, played_samples=0, timestamp=n * F)
            for i in range(n, n + 15):
                await asyncio.sleep(0.02)
                link.send_audio_in(call_id, i, i * F, utterance.silence_frame, wire.audio_in_flags())
            await sink.wait_for(lambda: bool(sink.verdicts), within=10)
            assert sink.verdicts == [(1, False)]
            proc.send_signal(signal.SIGTERM)
            await sink.wait_for(lambda: bool(sink.ends), within=10)
            assert sink.ends == ["server_closing"]
        async with asyncio.timeout(30):
            code = await proc.wait()
        assert code == 0, (await proc.stderr.read()).decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_without_the_extra_the_cli_names_it() -> None:
    hide_pipecat = (
        "import sys; sys.modules['pipecat'] = None; sys.argv[0] = 'splitrelay'; "
        "from splitrelay.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_pipecat, "agent", "pipecat", "bot:factory"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "pip install 'splitrelay[pipecat]'" in result.stderr
    assert "Traceback" not in result.stderr
    # And the rest of the command line works without it.
    help_text = subprocess.run(
        [sys.executable, "-c", hide_pipecat, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_text.returncode == 0 and "agent" in help_text.stdout


def test_a_factory_that_cannot_be_loaded_is_named() -> None:
    for spec, message in (
        ("no_such_bot:factory", "no module named 'no_such_bot'"),
        ("splitrelay.integrations.pipecat_parrot:nothing", "has no attribute 'nothing'"),
        ("splitrelay.integrations.pipecat_parrot:RATE", "is not callable"),
        ("just_a_module", "expected MODULE:FACTORY"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "splitrelay.cli", "agent", "pipecat", spec, "--listen", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        )  # fmt: skip
        assert result.returncode == 2, (spec, result.stderr)
        assert message in " ".join(result.stderr.replace("│", " ").split()), (spec, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_missing_wire_key_is_named_as_by_the_echo_agent() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPLITRELAY_WIRE_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "splitrelay.cli", "agent", "pipecat",
         "splitrelay.integrations.pipecat_parrot:factory", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "SPLITRELAY_WIRE_KEY" in result.stderr
    assert "Traceback" not in result.stderr
