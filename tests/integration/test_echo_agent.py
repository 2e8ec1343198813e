"""The echo agent end to end: a fake relay made of the real RelayLink, real Opus, loopback UDP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from splitrelay.inference import wire
from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.endpoint import LinkError
from splitrelay.inference.sdk import InferenceServer
from splitrelay.inference.wire_auth import WIRE_KEY_ENV, WireKey, generate_text
from splitrelay.relay.inference_link import RelayLink
from tests.opus_fixtures import UTTERANCE, OpusClip, clip
from tests.recording_sink import RecordingSink
from tests.wire_keys import KEY

F = 960
REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def echo_pair(config: EchoConfig | None = None) -> AsyncIterator[tuple[InferenceServer, RelayLink]]:
    async with InferenceServer(EchoAgent(config), "127.0.0.1", 0, key=KEY) as server:
        assert server.address is not None
        async with RelayLink(server.address, key=KEY) as link:
            yield server, link


async def send_clip(
    link: RelayLink, call_id: int, audio: OpusClip, *, levels: bool, pace: float = 0.0, first: int = 0
) -> None:
    """Send the clip as AUDIO_IN, with RFC 6464 levels or without (then the agent decodes Opus)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(audio.frames):
        if pace:
            await asyncio.sleep(max(0.0, start + i * pace - loop.time()))
        flags = wire.audio_in_flags(marker=i == 0, level=audio.levels[i] if levels else None)
        assert link.send_audio_in(call_id, first + i, (first + i) * F, frame, flags)


def reply_events(sink: RecordingSink) -> list[dict[str, object]]:
    return [e for e in sink.events if e["type"] == "agent.reply"]


async def test_utterance_comes_back_byte_identical_in_order() -> None:
    audio = clip(UTTERANCE)
    # UTTERANCE in 20 ms frames: 0-9 silence, 10-24 tone, 25-29 silence, 30-39 tone, 40-69 silence.
    # Expected reply: 100 ms pre-roll (5-9), the speech with its short pause (10-39), 100 ms tail (40-44).
    expected = audio.frames[5:45]
    sink = RecordingSink()
    async with echo_pair() as (_, link):
        call_id = await link.start_call("echo-1", sink)
        await send_clip(link, call_id, audio, levels=True, pace=0.02)  # real time, like a caller
        await sink.wait_for(lambda: len(sink.audio) == len(expected))
        await asyncio.sleep(0.1)
        assert [o.payload for o in sink.audio] == expected
        assert [o.seq for o in sink.audio] == list(range(len(expected)))
        assert [o.timestamp for o in sink.audio] == [i * F for i in range(len(expected))]
        assert [o.marker for o in sink.audio] == [True] + [False] * (len(expected) - 1)
        (event,) = reply_events(sink)
        detected_at = event.pop("detected_at")
        assert event == {
            "type": "agent.reply",
            "utterance_ms": 800,
            "end_of_speech_at": 40 * F,  # end of the last tone frame
            "reply_seq": 0,
        }
        # 500 ms of silence later: exactly, by the frames' timestamps, unless the machine stalled
        # long enough for the wall-clock fallback to fire first (then within 100 ms).
        assert isinstance(detected_at, int) and 65 * F <= detected_at <= 65 * F + 4800
        assert await link.end_call(call_id)


async def test_without_audio_levels_the_agent_decodes_opus() -> None:
    audio = clip(UTTERANCE)
    sink = RecordingSink()
    async with echo_pair() as (_, link):
        call_id = await link.start_call("echo-2", sink)
        await send_clip(link, call_id, audio, levels=False)  # a burst: media time comes from timestamps
        await sink.wait_for(lambda: bool(reply_events(sink)))
        n = int(str(reply_events(sink)[0]["utterance_ms"])) // 20
        await sink.wait_for(lambda: len(sink.audio) == n)
    # Decoded, the last tone frame's tail spills into the next frame (Opus look-ahead), so the
    # detected end may be one frame later than the source; the start is exact.
    assert n in (40, 41)
    assert [o.payload for o in sink.audio] == audio.frames[5 : 5 + n]


async def test_end_of_speech_when_packets_stop() -> None:
    audio = clip((("silence", 200), ("tone", 400)))  # the caller's client stops sending (DTX, mute)
    sink = RecordingSink()
    async with echo_pair(EchoConfig(silence_ms=300)) as (_, link):
        call_id = await link.start_call("echo-3", sink)
        await send_clip(link, call_id, audio, levels=True)
        await sink.wait_for(lambda: len(sink.audio) == 25)
        await asyncio.sleep(0.05)
    assert [o.payload for o in sink.audio] == audio.frames[5:30]
    (event,) = reply_events(sink)
    assert event["end_of_speech_at"] == 30 * F
    assert isinstance(event["detected_at"], int) and event["detected_at"] >= 30 * F + 300 * 48


async def test_barge_in_stops_the_reply() -> None:
    audio = clip((("silence", 100), ("tone", 3000), ("silence", 600)))
    total = 5 + 150 + 5  # pre-roll, speech, tail
    sink = RecordingSink()
    async with echo_pair() as (_, link):
        call_id = await link.start_call("echo-4", sink)
        await send_clip(link, call_id, audio, levels=True)
        await sink.wait_for(lambda: len(sink.audio) >= 5)
        # The caller talks over the reply: the relay flushes its queue and tells the agent.
        heard = sink.audio[-1].seq
        ack = link.send_barge_in(
            call_id, played_samples=(heard + 1) * F, dropped_frames=0, response_seq=heard, timestamp=0
        )
        assert ack is not None and await ack
        await sink.wait_for(lambda: any(e["type"] == "agent.interrupted" for e in sink.events))
        stopped_at = len(sink.audio)
        await asyncio.sleep(0.3)  # the reply would carry on at 50 frames/s if it were still running
        assert len(sink.audio) == stopped_at
        assert stopped_at < total
        assert [o.payload for o in sink.audio] == audio.frames[0:stopped_at]  # pre-roll starts at frame 0
        interrupted = next(e for e in sink.events if e["type"] == "agent.interrupted")
        assert interrupted["played_ms"] == (heard + 1) * 20

        # The agent still listens: the next utterance gets its own reply, marked as a new response.
        again = clip((("tone", 200), ("silence", 600)))
        sink.audio.clear()
        await send_clip(link, call_id, again, levels=True, first=len(audio.frames))
        await sink.wait_for(lambda: len(sink.audio) == 20)
        assert sink.audio[0].marker
        # Its pre-roll reaches back into the last frames of the previous clip's silence.
        assert [o.payload for o in sink.audio] == audio.frames[180:185] + again.frames[:15]


def test_echo_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"silence_ms: must be 20..10000, got 10"):
        EchoConfig(silence_ms=10)
    with pytest.raises(ValueError, match=r"threshold_dbov: must be -127..0 dBov, got 1"):
        EchoConfig(threshold_dbov=1)
    with pytest.raises(ValueError, match=r"lead_ms: must be a multiple of 20 in 0..2000, got 30"):
        EchoConfig(lead_ms=30)


async def test_cli_runs_the_echo_agent_until_sigterm() -> None:
    key_text = generate_text()  # this agent's own key: the test's relay must use it to get in
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "agent",
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--silence-ms",
        "300",
        "--json",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", WIRE_KEY_ENV: key_text},
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"echo agent listening on udp://127\.0\.0\.1:(\d+) \(silence 300 ms", line)
        assert match, line
        port = int(match.group(1))
        audio = clip((("silence", 100), ("tone", 200), ("silence", 400)))
        sink = RecordingSink()
        async with RelayLink(
            ("127.0.0.1", port), key=KEY
        ) as stranger:  # the test run's key: not this agent's
            with pytest.raises(LinkError, match=r"did not acknowledge CALL_START"):
                await stranger.start_call("wrong-key", RecordingSink())
        async with RelayLink(("127.0.0.1", port), key=WireKey.parse(key_text)) as link:
            call_id = await link.start_call("cli-call", sink)
            await send_clip(link, call_id, audio, levels=True)
            await sink.wait_for(lambda: len(sink.audio) == 5 + 10 + 5)
            assert [o.payload for o in sink.audio] == audio.frames[0:20]
            proc.send_signal(signal.SIGTERM)
            await sink.wait_for(lambda: bool(sink.ends))
            assert sink.ends == ["server_closing"]
        async with asyncio.timeout(30):
            code = await proc.wait()
            logs = (await proc.stderr.read()).decode().splitlines()
            out = line + (await proc.stdout.read()).decode()
        assert code == 0, logs
        secret = base64.urlsafe_b64decode(key_text + "=")
        for shown in (key_text, secret.hex(), repr(secret)):  # the key is in no output, in any spelling
            assert shown not in out and all(shown not in entry for entry in logs)
        records = [json.loads(entry) for entry in logs]
        assert any(r["msg"].startswith("call cli-call started") for r in records), records
        assert all(set(r) >= {"ts", "level", "logger", "msg"} for r in records)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("key_text", "pattern"),
    [
        (None, r"SPLITRELAY_WIRE_KEY: not set"),
        ("", r"SPLITRELAY_WIRE_KEY: not set"),
        ("c0ffee" * 5, r"SPLITRELAY_WIRE_KEY: must be hex or base64url of 32..256 bytes, got 15 bytes"),
    ],
)
def test_cli_refuses_to_start_without_a_good_key(key_text: str | None, pattern: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != WIRE_KEY_ENV}
    if key_text is not None:
        env[WIRE_KEY_ENV] = key_text
    result = subprocess.run(
        [sys.executable, "-m", "splitrelay.cli", "agent", "echo", "--listen", "127.0.0.1:0"],
        cwd=REPO, env=env | {"COLUMNS": "300"}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert re.search(pattern, " ".join(result.stderr.split())), result.stderr
    if key_text:
        assert key_text not in result.stdout + result.stderr
