"""`splitrelay relay serve --barge-in-confirm-ms ...` (issue 18): pause-and-confirm barge-in switched on
from the command line, in a real relay process (and in the workers of `--workers 2`): a WebRTC caller
speaks over a reply, the agent gets a BARGE_CANDIDATE and its verdict confirms or rejects it. Without the
flags the same speech flushes at once (BARGE_IN, no candidate), so the flags are what made the difference.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import httpx
import pytest

from splitrelay.inference.sdk import (
    BargeCandidateNotice,
    BargeInNotice,
    CallEvent,
    InferenceCall,
    InferenceServer,
)
from splitrelay.relay.child import ChildProcess, cli_command, json_ready
from tests.integration.relay_harness import SIGNING_KEY, Caller, SignedApi, reply_on_first_frame
from tests.opus_fixtures import clip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _dead_udp_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


FLAGS = ["--barge-in-confirm-ms", "1500", "--barge-in-candidate-dbov", "-50", "--barge-in-sustain-ms", "100"]


@pytest.mark.parametrize(
    ("workers", "verdict"),
    [(1, None), (1, True), (2, False)],
    ids=["flags-off", "confirm", "reject-in-a-worker"],
)
async def test_the_barge_in_flags_turn_pause_and_confirm_on(
    workers: int, verdict: bool | None, tmp_path: Path
) -> None:
    events: list[CallEvent] = []
    reply = clip((("tone", 1600),)).frames  # 80 frames at once: 1.6 s of playout
    got_first = asyncio.Event()

    async def talker(call: InferenceCall) -> None:
        async def on_events() -> None:
            async for event in call.events():
                events.append(event)
                if isinstance(event, BargeCandidateNotice) and verdict is not None:
                    call.answer_barge_in(event.candidate, verdict)

        await reply_on_first_frame(call, reply, got_first, on_events())

    async with InferenceServer(talker, "127.0.0.1", 0) as agent:
        assert agent.address is not None
        args = ["relay", "serve", "--port", "0", "--json", "--candidate-address", "127.0.0.1"]
        inference = f"{agent.address[0]}:{agent.address[1]}"
        if workers > 1:  # the workers get every --inference too: a first endpoint nobody answers is skipped
            inference = f"{_dead_udp_port()},{inference}"
        args += ["--inference", inference, "--workers", str(workers)]
        relay = await ChildProcess.start(
            "relay",
            cli_command(*args, *(FLAGS if verdict is not None else [])),
            env=dict(os.environ, SPLITRELAY_RELAY_SIGNING_KEY=SIGNING_KEY.decode()),
            stderr=tmp_path / "relay.log",
        )
        try:
            ready = await relay.wait_ready(json_ready("ready"), within=60)
            async with httpx.AsyncClient(base_url=str(ready["url"]), timeout=15) as http:
                api = SignedApi(http)
                caller = Caller()
                try:
                    await caller.attach(api, "call-flags")
                    quiet, loud = clip((("silence", 40),)), clip((("tone", 100),))
                    caller.send(quiet.frames[0], quiet.levels[0], marker=True)
                    await asyncio.wait_for(got_first.wait(), timeout=15)
                    await caller.wait_received(10, within=10)
                    for _ in range(3):
                        caller.send(quiet.frames[1], quiet.levels[1])
                        await asyncio.sleep(0.02)
                    for index in range(5):  # the caller starts to speak over the reply
                        caller.send(loud.frames[index], loud.levels[index])
                        await asyncio.sleep(0.02)
                    info: dict[str, object] = {}
                    for _ in range(150):  # bounded: 3 s for the decision to land
                        info = (await api.request("GET", "/v1/calls/call-flags")).json()
                        if info.get("barge_ins") or info.get("barge_rejected"):
                            break
                        await asyncio.sleep(0.02)
                    candidates = [e for e in events if isinstance(e, BargeCandidateNotice)]
                    if verdict is None:
                        assert candidates == [] and info["barge_candidates"] == 0
                        assert info["barge_ins"] == 1
                    else:
                        assert len(candidates) == 1 and info["barge_candidates"] == 1, info
                        assert info["barge_rejected"] == (0 if verdict else 1), info
                        assert info["barge_ins"] == (1 if verdict else 0), info
                        assert info["barge_decided_by_policy"] == 0  # the agent's verdict decided
                    for _ in range(50):  # bounded: BARGE_IN reaches the agent
                        if any(isinstance(e, BargeInNotice) for e in events) or verdict is False:
                            break
                        await asyncio.sleep(0.02)
                    assert any(isinstance(e, BargeInNotice) for e in events) is (verdict is not False)
                finally:
                    await caller.close()
        finally:
            await relay.stop(10.0)
