"""Pause and confirm through the whole relay (issue 18): a WebRTC caller speaks over a reply, the relay
pauses within one packet and asks inference; a reject plays the reply on with nothing lost or repeated,
a confirm flushes it and BARGE_IN tells inference what was heard."""

from __future__ import annotations

import asyncio

import pytest

from splitrelay.inference.sdk import BargeCandidateNotice, BargeInNotice, CallEvent, InferenceCall
from splitrelay.relay.call import CallConfig
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from tests.integration.relay_harness import Caller, relay_stack, reply_on_first_frame
from tests.opus_fixtures import clip


@pytest.mark.parametrize("confirm", [False, True])
async def test_a_candidate_pauses_then_the_verdict_resumes_or_flushes(confirm: bool) -> None:
    events: list[CallEvent] = []
    reply = clip((("tone", 1600),)).frames  # 80 frames, sent at once (a TTS burst)
    got_first = asyncio.Event()
    candidate = asyncio.Event()
    answer = asyncio.Event()

    async def talker(call: InferenceCall) -> None:
        async def on_events() -> None:
            async for event in call.events():
                events.append(event)
                if isinstance(event, BargeCandidateNotice):
                    candidate.set()
                    await answer.wait()  # the test looks at the paused stream first
                    call.answer_barge_in(event.candidate, confirm)

        await reply_on_first_frame(call, reply, got_first, on_events())

    quiet = clip((("silence", 40),))
    loud = clip((("tone", 100),))
    config = CallConfig(barge_in_confirm_ms=2000, fast_path=FastPathConfig(rtcp_interval=0.2))
    async with relay_stack(talker, call=config) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "call-pause")
            caller.send(quiet.frames[0], quiet.levels[0], marker=True)
            await asyncio.wait_for(got_first.wait(), timeout=5)
            await caller.wait_received(10, within=5)
            for _ in range(3):
                caller.send(quiet.frames[1], quiet.levels[1])
                await asyncio.sleep(0.02)
            caller.send(loud.frames[0], loud.levels[0])  # the caller starts to speak: pause
            await asyncio.wait_for(candidate.wait(), timeout=5)
            await asyncio.sleep(0.2)
            paused_at = len(caller.received)
            await asyncio.sleep(0.3)
            assert len(caller.received) == paused_at  # nothing leaves while the candidate waits
            answer.set()
            if confirm:
                for _ in range(100):  # bounded wait for BARGE_IN
                    if any(isinstance(e, BargeInNotice) for e in events):
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                assert len(caller.received) == paused_at  # flushed: the rest never plays
                (notice,) = [e for e in events if isinstance(e, BargeInNotice)]
                assert notice.barge_in.dropped_frames == len(reply) - paused_at
                assert notice.barge_in.played_samples <= paused_at * 960
            else:
                await caller.wait_received(len(reply), within=5)
                await asyncio.sleep(0.1)
                # Nothing lost or repeated: the caller got the reply's frames exactly, in order.
                assert [p.payload for p in caller.received] == reply
                assert not any(isinstance(e, BargeInNotice) for e in events)
            info = (await stack.request("GET", "/v1/calls/call-pause")).json()
            assert info["barge_candidates"] == 1
            assert info["barge_rejected"] == (0 if confirm else 1)
            assert info["barge_ins"] == (1 if confirm else 0)
        finally:
            await caller.close()
