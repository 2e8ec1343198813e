"""The native and the Python per-datagram paths on either end of a real aiortc call: each decrypts and
parses what the other protected, byte for byte (interop of the two codecs, beside the differential unit
tests). tests/integration/test_fastpath.py runs the default (native when built) against itself."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pylibsrtp
import pytest
from aiortc import rtcdtlstransport

from splitrelay.relay.media import native
from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
from splitrelay.relay.media.srtp_fastpath import SrtpFastPath
from tests.integration.conftest import VoicePair, connect_voice_peers
from tests.integration.test_fastpath import Collector, Echo
from tests.native_traffic import CAPTURE, _session, replay_capture
from tests.opus_fixtures import encode, silence, tone

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


class _Recorder:
    """Stands in for a fast path's transport: keeps a copy of every datagram it sends, then sends it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(bytes(data))
        self.inner.sendto(data, addr)


async def test_captured_call_traffic_decodes_alike_on_both_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real call's SRTP, both directions, captured on the wire with the keys aiortc negotiated (its
    DTLS-SRTP policies, recorded), then replayed through a Python and a native codec: the same packets.
    With SPLITRELAY_WRITE_NATIVE_CAPTURE set, the capture is also written for the unit tier's replay."""
    _use("native", monkeypatch)
    policies: list[pylibsrtp.Policy] = []

    class RecordingPolicy(pylibsrtp.Policy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            policies.append(self)

    monkeypatch.setattr(rtcdtlstransport, "Policy", RecordingPolicy)
    config = VoicePeerConfig(candidates=LOOPBACK)
    client_peer, relay_peer = VoicePeer(config), VoicePeer(config)
    frames = encode(tone(600)) + encode(silence(200))
    try:
        await connect_voice_peers(client_peer, relay_peer)
        level_id = relay_peer.stream_params().audio_level_id
        assert level_id is not None and level_id == client_peer.stream_params().audio_level_id
        relay = Echo(relay_peer.pc)
        echoed = Collector()
        client = SrtpFastPath.attach(client_peer.pc, echoed)
        taps = {"client": _Recorder(client.transport), "relay": _Recorder(relay.fast_path.transport)}
        client.transport, relay.fast_path.transport = taps["client"], taps["relay"]
        for i, frame in enumerate(frames):
            assert client.send(frame, 960 * i, marker=i == 0, audio_level=20 if i < 30 else 127, voice=i < 30)
            await asyncio.sleep(0.004)
        await echoed.wait_for_count(len(frames))
        await client.close()
        await relay.fast_path.close()
    finally:
        await client_peer.close()
        await relay_peer.close()
    inbound = [p for p in policies if p.ssrc_type == pylibsrtp.Policy.SSRC_ANY_INBOUND]
    capture: dict[str, Any] = {}
    for side, tap in taps.items():
        srtp = [d for d in tap.sent if native.classify(d) == native.KIND_SRTP]
        assert len(srtp) == len(frames)
        policy = next(p for p in inbound if _opens(p, srtp[0]))
        capture[side] = {
            "key": _key(policy).hex(),
            "profile": policy.srtp_profile,
            "window": policy.window_size,
            "audio_level_id": level_id,
            "datagrams": [d.hex() for d in srtp],
        }
        packets = replay_capture(capture[side])
        assert [p.payload for p in packets] == frames
    if os.environ.get("SPLITRELAY_WRITE_NATIVE_CAPTURE"):
        CAPTURE.write_text(json.dumps(capture, indent=1) + "\n")


def _opens(policy: pylibsrtp.Policy, datagram: bytes) -> bool:
    try:
        _session(_key(policy), policy.srtp_profile, policy.window_size).unprotect(datagram)
    except pylibsrtp.Error:
        return False
    return True


def _key(policy: pylibsrtp.Policy) -> bytes:
    """The policy's master key and salt (pylibsrtp returns a cffi buffer, typed bytes | None)."""
    key = policy.key
    assert key is not None
    return bytes(key)
