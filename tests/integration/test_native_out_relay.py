"""The relay's call scenarios again with the outbound C path (relay/media/native ``NativeOutbound``,
fastpath.c ``sr_batch_out``): inference's AUDIO_OUT that the playout passes straight through is finished in
C (header checks, playout timeline, RTP header, SRTP protect, sendmmsg toward the caller). Echo bytes,
loss, barge-in (flush and candidates), marks and CLEAR, close and many calls must come out as on the Python
path; each test fails if C finished no AUDIO_OUT (it would only have retested the Python path)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import socket
from collections.abc import Iterator

import pytest

from splitrelay.inference.sdk import InferenceCall
from splitrelay.relay.inference_link import RelayLink
from splitrelay.relay.media import native
from splitrelay.relay.server import RelaySettings
from tests.integration import relay_harness
from tests.integration.relay_harness import Caller, relay_stack
from tests.integration.test_barge_relay import (
    test_a_candidate_pauses_then_the_verdict_resumes_or_flushes as test_candidate_with_c_out,
)
from tests.integration.test_relay import (
    test_barge_in_flushes_the_reply_and_tells_inference_what_was_heard as test_barge_in_with_c_out,
)
from tests.integration.test_relay import (
    test_clear_and_marks_follow_inferences_outbound_positions as test_marks_with_c_out,
)
from tests.integration.test_relay import (
    test_close_is_idempotent_and_telemetry_survives_in_metrics as test_close_with_c_out,
)
from tests.integration.test_relay import (
    test_echo_through_the_relay_is_byte_identical as test_echo_with_c_out,
)
from tests.integration.test_relay import (
    test_loss_on_the_callers_link_never_holds_packets_back as test_loss_with_c_out,
)
from tests.integration.test_relay import (
    test_many_calls_at_once_each_get_their_own_echo as test_many_calls_with_c_out,
)
from tests.integration.test_relay import (
    test_talking_through_the_reply_start_is_not_a_barge_in as test_talking_with_c_out,
)

BURSTY = ("echo_with", "loss_with", "many_calls_with", "close_with")
"""Scenarios whose agent answers with a burst (the echo agent sends its whole reply at once): every frame
but the first waits in the playout's queue for its slot, so Python paces them and C rightly finishes none."""

__all__ = [
    "test_barge_in_with_c_out",
    "test_candidate_with_c_out",
    "test_close_with_c_out",
    "test_echo_with_c_out",
    "test_loss_with_c_out",
    "test_many_calls_with_c_out",
    "test_marks_with_c_out",
    "test_talking_with_c_out",
]

FINISHED: list[int] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def out_path(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    """Every relay of these tests runs a shared port with both C paths; the test fails if the outbound C
    path finished no datagram from inference."""
    if not native.available():
        pytest.skip(f"native path not built: {native.status()}")
    monkeypatch.delenv(native.NATIVE_OUT_ENV, raising=False)
    monkeypatch.setattr(
        relay_harness, "RelaySettings", functools.partial(RelaySettings, media_port=free_port())
    )
    original, drain = RelayLink.run_native_out, RelayLink.drain_native_out
    FINISHED.clear()

    def counting(self: RelayLink, *args: object) -> int:
        finished = original(self, *args)  # type: ignore[arg-type]
        FINISHED.append(finished)
        return finished

    def counting_drains(self: RelayLink, state: native.Drain, turns: int) -> int:
        status = drain(self, state, turns)
        FINISHED.append(int(state.state.finished))
        return status

    monkeypatch.setattr(RelayLink, "run_native_out", counting)  # one C call per batch
    monkeypatch.setattr(RelayLink, "drain_native_out", counting_drains)  # one per wake-up (the default)
    yield
    if not any(name in request.node.name for name in BURSTY):
        assert sum(FINISHED) > 0, "the outbound C path finished no AUDIO_OUT"


FRAMES = 60


async def test_a_real_time_reply_is_finished_in_c_with_one_timeline_across_python_turns() -> None:
    """An agent that answers each caller frame at once (real-time audio: the playout passes it through).
    A MARK and a CLEAR in the middle send a frame or two through Python; the caller must still get every
    frame byte for byte, with one marker, contiguous sequence numbers and 20 ms timestamps (C and Python
    share one timeline and one sequence), and the call's counters must count every frame once."""

    async def agent(call: InferenceCall) -> None:
        n = 0
        async for frame in call.frames():
            call.send_audio(frame.payload, marker=n == 0)
            n += 1
            if n == FRAMES // 3:
                call.send_mark("third")
            if n == FRAMES // 2:
                call.clear()  # clears nothing queued; the next frame goes through Python's CLEAR check

    payloads = [os.urandom(40 + i % 50) for i in range(FRAMES)]
    async with relay_stack(agent) as stack:
        caller = Caller()
        try:
            await caller.attach(stack, "call-c-out")
            await caller.speak(payloads, [127] * FRAMES)  # silence by level: no barge-in question
            await caller.wait_received(FRAMES, within=10)
            await asyncio.sleep(0.1)
            back = caller.received
            assert [p.payload for p in back] == payloads
            assert all((b.sequence - a.sequence) & 0xFFFF == 1 for a, b in itertools.pairwise(back))
            # After the CLEAR the next frame may not catch up (playout.py: a CLEAR forgets the position),
            # so if it came a little late it starts a new talk spurt at the wall clock; nowhere else.
            jumps = [
                i + 1
                for i, (a, b) in enumerate(itertools.pairwise(back))
                if (b.timestamp - a.timestamp) & 0xFFFFFFFF != 960
            ]
            assert jumps in ([], [FRAMES // 2]), jumps
            assert all((back[i].timestamp - back[i - 1].timestamp) & 0xFFFFFFFF > 960 for i in jumps)
            assert [i for i, p in enumerate(back) if p.marker] == [0, *jumps]
            info = (await stack.request("GET", "/v1/calls/call-c-out")).json()
            assert info["packets_out"] == FRAMES
            assert info["frames_from_inference"] == FRAMES
            assert info["dwell_out_p99_ms"] is not None
        finally:
            await caller.close()
    assert sum(FINISHED) >= FRAMES // 2, f"C finished {sum(FINISHED)} of {FRAMES} frames"
    assert sum(FINISHED) < FRAMES, "the CLEAR should have sent a frame through Python"
