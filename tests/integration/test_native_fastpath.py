"""The native and the Python per-datagram paths on either end of a real aiortc call: each decrypts and
parses what the other protected, byte for byte (interop of the two codecs, beside the differential unit
tests). tests/integration/test_fastpath.py runs the default (native when built) against itself."""

from __future__ import annotations

import asyncio
import os

import pytest

from splitrelay.relay.media import native
from splitrelay.relay.media.srtp_fastpath import SrtpFastPath
from tests.integration.conftest import VoicePair
from tests.integration.test_fastpath import Collector, Echo
from tests.opus_fixtures import encode, tone

pytestmark = pytest.mark.integration


def _use(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "python":
        monkeypatch.setenv(native.NATIVE_ENV, "0")
    else:
        monkeypatch.delenv(native.NATIVE_ENV, raising=False)
    native.reset()
    if path == "native" and not native.available():
        if os.environ.get("CI"):
            pytest.fail(f"native fast path not available in CI: {native.status()}")
        pytest.skip(f"native fast path not built: {native.status()}")


@pytest.mark.parametrize(("relay_path", "client_path"), [("native", "python"), ("python", "native")])
async def test_each_path_reads_what_the_other_protected(
    voice_pair: VoicePair, monkeypatch: pytest.MonkeyPatch, relay_path: str, client_path: str
) -> None:
    frames = encode(tone(1000))
    _use(relay_path, monkeypatch)
    relay = Echo(voice_pair.relay.pc)
    _use(client_path, monkeypatch)
    echoed = Collector()
    client = SrtpFastPath.attach(voice_pair.client.pc, echoed)
    try:
        assert relay.fast_path.codec.native is (relay_path == "native")
        assert client.codec.native is (client_path == "native")
        for i, frame in enumerate(frames):
            assert client.send(frame, 960 * i, marker=i == 0, audio_level=i % 128, voice=i % 3 == 0)
            await asyncio.sleep(0.005)
        await echoed.wait_for_count(len(frames))
    finally:
        monkeypatch.delenv(native.NATIVE_ENV, raising=False)
        native.reset()
        await client.close()
        await relay.fast_path.close()
    assert [p.payload for p in relay.received] == frames
    assert [(p.audio_level, p.voice) for p in relay.received] == [(i % 128, i % 3 == 0) for i in range(50)]
    assert [p.payload for p in echoed.packets] == frames
    assert [p.audio_level for p in echoed.packets] == [i % 128 for i in range(50)]
    for fast_path in (relay.fast_path, client):
        stats = fast_path.stats()
        assert (stats.undecryptable, stats.malformed, stats.dropped, stats.send_failures) == (0, 0, 0, 0)
