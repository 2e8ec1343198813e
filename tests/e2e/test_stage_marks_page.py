"""Stage marks reach the caller's page (issue 18): agent → relay → edge → the record the page reads.

An agent of our own on the SDK (`splitrelay dev --agent`-style: the stack starts none) marks two stages
of a turn with StageMarks; the relay passes them to the edge (signed, one POST per turn), the call's
record keeps them, and GET /v1/calls/{id}, the page's once-a-second read, returns them in order.
"""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest

from splitrelay.devtools.live_caller import dial
from splitrelay.devtools.stack import Stack, StackConfig
from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.inference.stages import StageMarks
from splitrelay.inference.wire_auth import WireKey

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]


async def staging_agent(call: InferenceCall) -> None:
    """After 25 caller frames (half a second), one turn with two marks; then keep the call open."""
    marks = StageMarks(call, reliable=True)
    count = 0
    async for _ in call.frames():
        count += 1
        if count == 25:
            marks.turn_started(None)
            await asyncio.sleep(0.05)
            marks.mark("stt_final")
            await asyncio.sleep(0.05)
            marks.mark("llm_first_token")


async def test_the_agents_stage_marks_show_in_the_callers_record(monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_hex(32)
    monkeypatch.setenv("SPLITRELAY_WIRE_KEY", key)
    async with InferenceServer(staging_agent, "127.0.0.1", 0, key=WireKey.parse(key)) as agent:
        assert agent.address is not None
        stack = Stack(StackConfig(external_agents=(f"{agent.address[0]}:{agent.address[1]}",)))
        info = await stack.start()
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                caller = await dial(http, info, subject="stage-marks")
                try:
                    stages: list[dict[str, object]] = []
                    for _ in range(150):  # bounded: 3 s
                        stages = (await caller.record()).get("stages", [])
                        if len(stages) == 2:
                            break
                        await asyncio.sleep(0.02)
                    assert [s["name"] for s in stages] == ["stt_final", "llm_first_token"], stages
                    assert all(s["turn"] == 1 for s in stages)
                    first, second = (float(str(s["ms"])) for s in stages)
                    assert 40 <= first < second < 2000
                finally:
                    await caller.close()
        finally:
            await stack.stop()
