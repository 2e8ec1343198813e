"""The relay end to end on loopback: caller (aiortc) → control API → fast path → wire → inference → back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.sdk import AudioFrame, BargeInNotice, InferenceCall, MarkReached
from tests.integration.relay_harness import Caller, relay_stack, reply_on_first_frame
from tests.opus_fixtures import UTTERANCE, clip

pytestmark = pytest.mark.integration


def _contiguous_run(needle: list[bytes], haystack: list[bytes]) -> int:
    """Index where `needle` occurs as one contiguous run in `haystack`, or -1."""
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if haystack[i : i + n] == needle:
            return i
    return -1


async def test_echo_through_the_relay_is_byte_identical() -> None:
    audio = clip(UTTERANCE)
    async with relay_stack(EchoAgent(EchoConfig(silence_ms=400))) as stack:
        caller = Caller()
        try:
            body = await caller.attach(stack, "call-echo-1")
            assert body["mode"] == "direct" and body["setup_ms"] >= 0
            await caller.speak(audio.frames, audio.levels)
            speech_frames = sum(audio.speech)
            await caller.wait_received(speech_frames, within=10)
            await asyncio.sleep(0.4)  # the rest of the reply (tail), paced at 20 ms a frame
            back = [p.payload for p in caller.received]
            # The reply is one contiguous run of what the caller said, byte for byte, covering all speech.
            start = _contiguous_run(back, audio.frames)
            assert start >= 0, "reply is not a contiguous, byte-identical run of the utterance"
            spoken = [i for i, s in enumerate(audio.speech) if s]
            assert start <= spoken[0] and start + len(back) > spoken[-1]
            # RTP framing on the way back: our SSRC, contiguous sequence and 20 ms timestamps, one marker.
            seqs = [p.sequence for p in caller.received]
            assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
            ts = [p.timestamp for p in caller.received]
            assert all((b - a) & 0xFFFFFFFF == 960 for a, b in itertools.pairwise(ts))
            assert caller.received[0].marker and not any(p.marker for p in caller.received[1:])
            assert len({p.ssrc for p in caller.received}) == 1

            info = (await stack.request("GET", "/v1/calls/call-echo-1")).json()
            assert info["state"] == "live"
            assert info["packets_in"] == len(audio.frames)
            assert info["packets_to_inference"] == len(audio.frames)
            assert info["packets_out"] == len(back)
            assert info["dwell_in_p99_ms"] is not None
            # Inference's events are kept on the call's record, e.g. the echo agent's turn timings.
            (reply,) = [e["event"] for e in info["events"] if e["event"]["type"] == "agent.reply"]
            assert reply["utterance_ms"] == len(back) * 20
        finally:
            await caller.close()


async def test_loss_on_the_callers_link_never_holds_packets_back() -> None:
    """Each packet reaches inference before the next one is even sent, through and after gaps."""
    frames: list[AudioFrame] = []
    arrived = asyncio.Event()

    async def record(call: InferenceCall) -> None:
        async for frame in call.frames():
            frames.append(frame)
            arrived.set()

    audio = clip((("tone", 600),))
    async with relay_stack(record) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "call-loss")
            skips = [0, 0, 3, 0, 1, 0, 0, 5, 0, 2] * 3
            for i, skip in enumerate(skips):
                arrived.clear()
                caller.send(audio.frames[i], audio.levels[i], marker=i == 0, skip=skip)
                await asyncio.wait_for(arrived.wait(), timeout=5)  # delivered on arrival, no buffering
                assert frames[-1].payload == audio.frames[i]
            # Inference sees the caller's loss as gaps in the sequence, not as waiting.
            gaps = [b.seq - a.seq - 1 for a, b in itertools.pairwise(frames)]
            assert gaps == skips[1:]
            info = (await stack.request("GET", "/v1/calls/call-loss")).json()
            assert info["packets_in"] == len(skips)
        finally:
            await caller.close()


@pytest.mark.parametrize("with_levels", [True, False], ids=["rfc6464-level", "opus-decode"])
async def test_barge_in_flushes_the_reply_and_tells_inference_what_was_heard(with_levels: bool) -> None:
    """With the RFC 6464 level the relay decides from the header; without it, by decoding that frame."""
    notices: list[BargeInNotice] = []
    reply = clip((("tone", 2000),)).frames  # a long assistant reply, sent all at once (a TTS burst)
    got_first = asyncio.Event()

    async def talker(call: InferenceCall) -> None:
        async def events() -> None:
            async for event in call.events():
                if isinstance(event, BargeInNotice):
                    notices.append(event)

        await reply_on_first_frame(call, reply, got_first, events())

    quiet = clip((("silence", 40),))
    loud = clip((("tone", 100),))
    async with relay_stack(talker) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "call-barge")
            caller.send(
                quiet.frames[0], quiet.levels[0] if with_levels else None, marker=True
            )  # silence: wakes the agent
            await asyncio.wait_for(got_first.wait(), timeout=5)
            await caller.wait_received(10, within=5)  # ~200 ms of the reply is playing
            for _ in range(10):  # silence while listening: no barge-in
                caller.send(quiet.frames[1], quiet.levels[1] if with_levels else None)
                await asyncio.sleep(0.02)
            assert notices == []
            before = len(caller.received)
            caller.send(loud.frames[0], loud.levels[0] if with_levels else None)  # the caller starts to speak
            for _ in range(100):  # bounded wait for the BARGE_IN to reach inference
                if notices:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            after = len(caller.received) - before
            # Flushed within one packet: only what was already sent ahead (the 60 ms lead + one frame
            # in flight) arrives after the caller spoke; the rest of the 2 s reply never does.
            assert after <= 5, f"{after} frames arrived after the barge-in"
            assert len(caller.received) < len(reply) // 2
            (notice,) = notices
            heard_ms = notice.barge_in.played_samples / 48
            sent_ms = len(caller.received) * 20
            assert sent_ms - 100 <= heard_ms <= sent_ms
            assert notice.barge_in.dropped_frames >= len(reply) - len(caller.received) - 5
            info = (await stack.request("GET", "/v1/calls/call-barge")).json()
            assert (
                info["barge_ins"] == 1 and info["frames_dropped_barge_in"] == notice.barge_in.dropped_frames
            )
        finally:
            await caller.close()


async def test_close_is_idempotent_and_telemetry_survives_in_metrics() -> None:
    async with relay_stack(EchoAgent()) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "call-close")
            audio = clip((("tone", 200),))
            await caller.speak(audio.frames, audio.levels)
            for _ in range(100):
                info = (await stack.request("GET", "/v1/calls/call-close")).json()
                if info["packets_to_inference"] == len(audio.frames):
                    break
                await asyncio.sleep(0.01)
            listed = (await stack.request("GET", "/v1/calls")).json()["calls"]
            assert [c["call_id"] for c in listed] == ["call-close"]
            live = (await stack.http.get("/metrics")).text
            assert 'splitrelay_calls_live{process="0"} 1.0' in live
            assert "splitrelay_live_rtt_ms" in live and "splitrelay_live_jitter_ms" in live
            assert "splitrelay_dwell_in_seconds_bucket" in live
            first = await stack.request("DELETE", "/v1/calls/call-close")
            assert first.status_code == 200 and first.json()["closed"] is True
            summary = first.json()["summary"]
            assert summary["state"] == "closed" and summary["packets_in"] == len(audio.frames)
            second = await stack.request("DELETE", "/v1/calls/call-close")
            assert second.status_code == 200 and second.json()["closed"] is False
            assert (await stack.request("GET", "/v1/calls/call-close")).status_code == 404
            metrics = (await stack.http.get("/metrics")).text
            assert "splitrelay_calls_live" in metrics
            assert f'splitrelay_packets_in_total{{process="0"}} {float(len(audio.frames))}' in metrics
            assert 'splitrelay_calls_ended_total{process="0"} 1.0' in metrics
        finally:
            await caller.close()
        assert stack.relay.manager is not None and stack.relay.manager.calls == {}


async def test_many_calls_at_once_each_get_their_own_echo() -> None:
    audio = clip(UTTERANCE)
    async with relay_stack(EchoAgent(EchoConfig(silence_ms=300))) as stack:
        callers = [Caller() for _ in range(4)]
        try:
            await asyncio.gather(*(c.attach(stack, f"call-many-{i}") for i, c in enumerate(callers)))
            await asyncio.gather(*(c.speak(audio.frames, audio.levels) for c in callers))
            await asyncio.gather(*(c.wait_received(sum(audio.speech), within=10) for c in callers))
            for c in callers:
                assert _contiguous_run([p.payload for p in c.received], audio.frames) >= 0
        finally:
            await asyncio.gather(*(c.close() for c in callers))


async def test_clear_and_marks_follow_inferences_outbound_positions() -> None:
    """CLEAR drops what inference sent before it (queued or late), keeps what follows; marks echo once
    playout reaches them, and a mark in cleared audio is never echoed."""
    first = [bytes([0xF8, 1, i]) for i in range(30)]  # distinct Opus-shaped payloads
    second = [bytes([0xF8, 2, i]) for i in range(10)]
    reached: list[str] = []
    done = asyncio.Event()
    release = asyncio.Event()

    async def talker(call: InferenceCall) -> None:
        async def events() -> None:
            async for event in call.events():
                if isinstance(event, MarkReached):
                    reached.append(event.name)
                    if event.name == "end":
                        done.set()

        task = asyncio.create_task(events())
        try:
            async for _frame in call.frames():
                for i, payload in enumerate(first):
                    call.send_audio(payload, marker=i == 0)
                    if i == 5:
                        call.send_mark("inside-cleared")
                call.clear()
                for i, payload in enumerate(second):
                    call.send_audio(payload, marker=i == 0)
                call.send_mark("end")
                break
            await release.wait()  # keep the call up while the test reads the relay's record
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    quiet = clip((("silence", 20),))
    async with relay_stack(talker) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "call-clear")
            caller.send(quiet.frames[0], quiet.levels[0], marker=True)
            await asyncio.wait_for(done.wait(), timeout=10)
            await asyncio.sleep(0.1)
            got = [p.payload for p in caller.received]
            assert got[-len(second) :] == second  # the new response plays whole, in order
            head = got[: -len(second)]
            assert head == first[: len(head)] and len(head) <= 5  # only what left before the CLEAR
            assert reached == ["end"]
            info = (await stack.request("GET", "/v1/calls/call-clear")).json()
            assert info["frames_dropped_cleared"] == len(first) - len(head)
        finally:
            release.set()
            await caller.close()


async def test_talking_through_the_reply_start_is_not_a_barge_in() -> None:
    """Full duplex: the caller was already speaking when assistant audio began, so nothing is cut."""

    async def echo_each_frame(call: InferenceCall) -> None:
        async for frame in call.frames():
            call.send_audio(frame.payload)

    loud = clip((("tone", 600),))
    async with relay_stack(echo_each_frame) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "call-duplex")
            await caller.speak(loud.frames, loud.levels)
            await caller.wait_received(len(loud.frames), within=5)
            assert [p.payload for p in caller.received] == loud.frames
            info = (await stack.request("GET", "/v1/calls/call-duplex")).json()
            assert info["barge_ins"] == 0
        finally:
            await caller.close()


async def test_a_close_that_comes_while_the_call_attaches_undoes_the_attach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge may hang up before the relay has answered its attach: the call must not live on."""
    from splitrelay.relay.media.peer import VoicePeer

    entered, release = asyncio.Event(), asyncio.Event()
    accept = VoicePeer.accept_offer
    peers: list[VoicePeer] = []

    async def held_accept(self: VoicePeer, sdp: str) -> str:
        peers.append(self)
        answer = await accept(self, sdp)
        entered.set()
        await asyncio.wait_for(release.wait(), 10)
        return answer

    monkeypatch.setattr(VoicePeer, "accept_offer", held_accept)

    async def idle(call: InferenceCall) -> None:
        async for _ in call.frames():
            pass

    async with relay_stack(idle) as stack:
        caller = Caller()
        try:
            offer = await caller.peer.create_offer()
            body = {"call_id": "call-early-close", "mode": "direct", "offer": {"type": "offer", "sdp": offer}}
            attach = asyncio.create_task(stack.request("POST", "/v1/calls", body))
            await asyncio.wait_for(entered.wait(), 10)
            again = await stack.request("POST", "/v1/calls", body)
            assert again.status_code == 409  # one attach per call, even in flight
            closed = await stack.request("DELETE", "/v1/calls/call-early-close")
            assert closed.status_code == 200, closed.text
            release.set()
            response = await asyncio.wait_for(attach, 10)
            assert response.status_code == 409, response.text
            assert "closed while it attached" in response.text
            listed = (await stack.request("GET", "/v1/calls")).json()
            assert listed == {"calls": []}
            assert [p.pc.connectionState for p in peers] == ["closed"]
        finally:
            release.set()
            await caller.close()
