"""Barge-in candidates over real loopback UDP: relay link -> inference SDK -> verdict back (issue 18)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from splitrelay.inference.sdk import BargeCandidateNotice, CallEvent, InferenceCall, InferenceServer
from splitrelay.inference.wire import MsgType
from splitrelay.relay.inference_link import RelayLink
from tests.recording_sink import RecordingSink
from tests.wire_keys import KEY


class VerdictSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.verdicts: list[tuple[int, bool]] = []
        self.got = asyncio.Event()

    def on_barge_verdict(self, candidate: int, confirm: bool) -> None:
        self.verdicts.append((candidate, confirm))
        self.got.set()


class Fixed:
    """A confirmer that decides on the candidate at once (what a real one does after some audio)."""

    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict
        self.audio = 0

    def on_audio(self, seq: int, timestamp: int, payload: bytes) -> bool | None:
        self.audio += 1
        return None

    def on_candidate(self, onset_timestamp: int) -> bool | None:
        return self.verdict


async def _run(
    server_kw: dict[str, Any], handler: Any
) -> tuple[VerdictSink, RelayLink, int, InferenceServer]:
    server = InferenceServer(handler, "127.0.0.1", 0, key=KEY, **server_kw)
    address = await server.start()
    link = RelayLink(address, key=KEY)
    await link.start()
    sink = VerdictSink()
    call_id = await link.start_call("c1", sink)
    return sink, link, call_id, server


async def _idle(call: InferenceCall) -> None:
    await call.wait_ended()


async def test_the_sdk_confirmer_answers_a_candidate_and_the_verdict_reaches_the_call() -> None:
    for verdict in (True, False):

        def factory(call: InferenceCall, v: bool = verdict) -> Fixed:
            return Fixed(v)

        sink, link, call_id, server = await _run({"confirmer": factory}, _idle)
        try:
            link.send_audio_in(call_id, 0, 0, b"\x78" * 20)
            acked = link.send_barge_candidate(call_id, 1, played_samples=4800, timestamp=960)
            assert acked is not None and await acked
            await asyncio.wait_for(sink.got.wait(), 2.0)
            assert sink.verdicts == [(1, verdict)]
            assert link.active_calls == 1
        finally:
            await link.close()
            await server.close()


async def test_without_a_confirmer_the_handler_sees_the_candidate_and_may_answer() -> None:
    seen: list[CallEvent] = []

    async def handler(call: InferenceCall) -> None:
        assert call.confirmer is None
        async for event in call.events():
            seen.append(event)
            if isinstance(event, BargeCandidateNotice):
                call.answer_barge_in(event.candidate, False)

    sink, link, call_id, server = await _run({}, handler)
    try:
        acked = link.send_barge_candidate(call_id, 7, played_samples=9600, timestamp=1920)
        assert acked is not None and await acked
        await asyncio.wait_for(sink.got.wait(), 2.0)
        assert seen == [BargeCandidateNotice(7, 9600, 1920)]
        assert sink.verdicts == [(7, False)]
    finally:
        await link.close()
        await server.close()


async def test_an_unacknowledged_candidate_or_verdict_does_not_end_the_call() -> None:
    """A v2 peer without candidates drops them unacknowledged: the call goes on (the window decides)."""
    sink, link, call_id, server = await _run({}, _idle)
    try:
        (call,) = server.calls
        link.on_unacked(call_id, MsgType.BARGE_CANDIDATE, link._calls[call_id].peer)
        server.on_unacked(call_id, MsgType.BARGE_VERDICT, call.relay)
        assert link.active_calls == 1 and not call.ended and sink.ends == []
        link.on_unacked(call_id, MsgType.BARGE_IN, link._calls[call_id].peer)  # can fail: this one ends it
        assert link.active_calls == 0
    finally:
        await link.close()
        await server.close()


async def test_with_vad_the_echo_server_answers_barge_in_candidates() -> None:
    import numpy as np

    from splitrelay.inference import wire
    from splitrelay.inference.echo_agent import EchoConfig, serve
    from tests.opus_fixtures import encode

    pytest.importorskip("onnxruntime")

    ready: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(EchoConfig(vad=True), "127.0.0.1", 0, key=KEY, ready=ready.put_nowait, stop=stop)
    )
    try:
        address = await asyncio.wait_for(ready.get(), 10)
        silence = encode(np.zeros(960 * 20, dtype=np.int16))
        async with RelayLink(address, key=KEY) as link:
            sink = VerdictSink()
            call_id = await link.start_call("echo-vad", sink)
            link.send_barge_candidate(call_id, 1, played_samples=0, timestamp=0)
            for i, frame in enumerate(silence):
                link.send_audio_in(call_id, i, i * 960, frame, wire.audio_in_flags())
                await asyncio.sleep(0.005)
            await asyncio.wait_for(sink.got.wait(), 10)
            assert sink.verdicts == [(1, False)]  # silence: rejected, playout would resume
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
