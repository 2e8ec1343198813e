"""The relay's inference socket read with ``recvmmsg`` when the per-batch path runs (relay/inference_link.py
``RelayLink._open``): the AUDIO_OUT fast-path scenario (good, duplicate, bad-flag, empty, torn, old-version,
unknown-call and wrong-sender datagrams) gives the same result read in batches as through uvloop."""

from __future__ import annotations

import pytest

from splitrelay.relay.inference_link import RelayLink
from splitrelay.relay.media import native
from splitrelay.relay.media.shared_port import NATIVE_BATCH_ENV
from tests.integration.test_relay_link_audio import test_audio_out_fast_path_matches_the_decoder

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "uvloop"])
async def test_the_inference_socket_reads_in_batches(monkeypatch: pytest.MonkeyPatch, batched: bool) -> None:
    if batched and not native.available():
        pytest.skip(f"native path not built: {native.status()}")
    monkeypatch.setenv(NATIVE_BATCH_ENV, "1" if batched else "0")
    monkeypatch.setattr(RelayLink, "batch_receive", True)  # as the relay sets it with a shared port
    reads: list[int] = []
    close = RelayLink._close_socket

    async def counting(self: RelayLink) -> None:
        reads.append(self.receive_calls)
        await close(self)

    monkeypatch.setattr(RelayLink, "_close_socket", counting)
    await test_audio_out_fast_path_matches_the_decoder()
    assert len(reads) == 1 and (reads[0] > 0) == batched
