"""The relay's call scenarios again on the shared port, where the per-batch C path (relay/media/native
``NativeInbound``) finishes caller packets that need no decision: echo bytes, loss, barge-in (flush and
candidates), marks and CLEAR, close, many calls must come out as on the per-datagram path."""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator

import pytest

from splitrelay.relay.media import native
from splitrelay.relay.media.shared_port import NativeForward
from splitrelay.relay.server import RelaySettings
from tests.integration import relay_harness
from tests.integration.test_barge_relay import (
    test_a_candidate_pauses_then_the_verdict_resumes_or_flushes as test_candidate_on_the_batch_path,
)
from tests.integration.test_relay import (
    test_barge_in_flushes_the_reply_and_tells_inference_what_was_heard as test_barge_in_on_the_batch_path,
)
from tests.integration.test_relay import (
    test_clear_and_marks_follow_inferences_outbound_positions as test_marks_on_the_batch_path,
)
from tests.integration.test_relay import (
    test_close_is_idempotent_and_telemetry_survives_in_metrics as test_close_on_the_batch_path,
)
from tests.integration.test_relay import (
    test_echo_through_the_relay_is_byte_identical as test_echo_on_the_batch_path,
)
from tests.integration.test_relay import (
    test_loss_on_the_callers_link_never_holds_packets_back as test_loss_on_the_batch_path,
)
from tests.integration.test_relay import (
    test_many_calls_at_once_each_get_their_own_echo as test_many_calls_on_the_batch_path,
)
from tests.integration.test_relay import (
    test_talking_through_the_reply_start_is_not_a_barge_in as test_talking_on_the_batch_path,
)

__all__ = [
    "test_barge_in_on_the_batch_path",
    "test_candidate_on_the_batch_path",
    "test_close_on_the_batch_path",
    "test_echo_on_the_batch_path",
    "test_loss_on_the_batch_path",
    "test_many_calls_on_the_batch_path",
    "test_marks_on_the_batch_path",
    "test_talking_on_the_batch_path",
]

FINISHED: list[int] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def batch_path(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    """Every relay of these tests runs a shared port (a free port) with the C path; the test
    fails if C finished no caller packet (it would then only have retested the Python path), except
    where every packet needs Python: no RFC 6464 level during playback (the barge-in question then
    needs a decode), or a caller that sends one packet (the first of a flow is always Python's)."""
    if not native.available():
        pytest.skip(f"native path not built: {native.status()}")
    monkeypatch.setattr(
        relay_harness, "RelaySettings", functools.partial(RelaySettings, media_port=free_port())
    )
    original, drain = NativeForward.run, NativeForward.run_drain
    FINISHED.clear()

    def counting(self: NativeForward, *args: object) -> int:
        finished = original(self, *args)  # type: ignore[arg-type]
        FINISHED.append(finished)
        return finished

    def counting_drains(self: NativeForward, state: native.Drain, turns: int) -> int:
        status = drain(self, state, turns)
        FINISHED.append(int(state.state.finished))
        return status

    monkeypatch.setattr(NativeForward, "run", counting)  # one C call per batch
    monkeypatch.setattr(NativeForward, "run_drain", counting_drains)  # one per wake-up (the default)
    yield
    if "opus-decode" not in request.node.name and "marks" not in request.node.name:
        assert sum(FINISHED) > 0, "the per-batch C path finished no packet"
