"""A relay on loopback for integration tests: a real control API, real inference link, real WebRTC caller.

`relay_stack()` starts an inference server (the echo agent, or a recording handler) and a `RelayServer`
on 127.0.0.1 with ephemeral ports, and stops both at exit. `Caller` is an aiortc peer that attaches
through the signed control API exactly as the edge would, and speaks over the SRTP fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from splitrelay.contract.signing import sign_headers
from splitrelay.inference.sdk import InferenceCall, InferenceServer
from splitrelay.relay.call import CallConfig
from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath
from splitrelay.relay.server import RelayServer, RelaySettings

SIGNING_KEY = b"integration-test-signing-key-0123456789"
FRAME_TS = 960


@dataclass
class SignedApi:
    """Signed requests to a relay's control API, as the edge sends them."""

    http: httpx.AsyncClient

    async def request(
        self, method: str, path: str, body: Any = None, *, key: bytes = SIGNING_KEY, sign: bool = True
    ) -> httpx.Response:
        content = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"content-type": "application/json"}
        if sign:
            headers.update(sign_headers(key, method, path, content))
        return await self.http.request(method, path, content=content, headers=headers)


@dataclass
class RelayStack(SignedApi):
    relay: RelayServer
    inference: InferenceServer


@asynccontextmanager
async def relay_stack(
    handler: Callable[[InferenceCall], Awaitable[None]],
    *,
    call: CallConfig | None = None,
) -> AsyncIterator[RelayStack]:
    async with InferenceServer(handler, "127.0.0.1", 0) as inference:
        assert inference.address is not None
        settings = RelaySettings(
            signing_keys={"default": SIGNING_KEY},
            inference=inference.address,
            host="127.0.0.1",
            port=0,
            candidates=LOOPBACK,
            call=call or CallConfig(fast_path=FastPathConfig(rtcp_interval=0.2)),
        )
        async with RelayServer(settings) as relay, httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
            yield RelayStack(http, relay, inference)


@dataclass
class Caller:
    """A caller's WebRTC peer: sends Opus with RFC 6464 levels, records what comes back."""

    peer: VoicePeer = field(default_factory=lambda: VoicePeer(VoicePeerConfig(candidates=LOOPBACK)))
    received: list[RtpPacket] = field(default_factory=list)
    fast_path: SrtpFastPath | None = None
    _ts: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def attach(self, stack: SignedApi, call_id: str) -> dict[str, Any]:
        offer = await self.peer.create_offer()
        response = await stack.request(
            "POST",
            "/v1/calls",
            {"call_id": call_id, "mode": "direct", "offer": {"type": "offer", "sdp": offer}},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        await self.peer.accept_answer(body["answer"]["sdp"])
        await self.peer.wait_connected(within=10)
        self.fast_path = SrtpFastPath.attach(self.peer.pc, self._on_packet, FastPathConfig(rtcp_interval=0.2))
        return body

    def _on_packet(self, pkt: RtpPacket) -> None:
        self.received.append(pkt)
        self._arrived.set()

    def send(self, payload: bytes, level: int | None, *, marker: bool = False, skip: int = 0) -> None:
        """Send one 20 ms frame; `skip` frames before it are 'lost' (numbers and time skipped)."""
        assert self.fast_path is not None
        stream = self.fast_path.outbound_streams[0]
        if skip:
            stream.sequence = (stream.sequence + skip) & 0xFFFF
            self._ts += skip * FRAME_TS
        self.fast_path.send(payload, self._ts & 0xFFFFFFFF, marker=marker, audio_level=level, voice=False)
        self._ts += FRAME_TS

    async def speak(self, frames: list[bytes], levels: list[int], *, pace_s: float = 0.02) -> None:
        """Send frames in real time (absolute schedule, so pacing does not drift)."""
        start = time.perf_counter()
        for i, (payload, level) in enumerate(zip(frames, levels, strict=True)):
            self.send(payload, level, marker=i == 0)
            delay = start + (i + 1) * pace_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    async def wait_received(self, count: int, *, within: float = 10.0) -> None:
        """Wait until at least `count` packets have come back (bounded in time)."""
        deadline = time.perf_counter() + within
        while len(self.received) < count:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"received {len(self.received)} of {count} packets within {within} s")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                pass

    async def close(self) -> None:
        if self.fast_path is not None:
            await self.fast_path.close()
        await self.peer.close()


@asynccontextmanager
async def relay_towards(inference: tuple[str, int]) -> AsyncIterator[SignedApi]:
    """A relay whose inference runs elsewhere (another process, another virtual environment)."""
    settings = RelaySettings(
        signing_keys={"default": SIGNING_KEY},
        inference=inference,
        host="127.0.0.1",
        port=0,
        candidates=LOOPBACK,
        call=CallConfig(fast_path=FastPathConfig(rtcp_interval=0.2)),
    )
    async with RelayServer(settings) as relay, httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        yield SignedApi(http)


async def reply_on_first_frame(
    call: InferenceCall, reply: list[bytes], got_first: asyncio.Event, watch: Coroutine[Any, Any, None]
) -> None:
    """An agent's body in the barge-in tests: send ``reply`` when the caller's first frame arrives, then
    read the caller's frames to the end; ``watch`` (reading ``call.events()``) runs alongside."""
    task = asyncio.create_task(watch)
    try:
        async for _frame in call.frames():
            if not got_first.is_set():
                got_first.set()
                for i, payload in enumerate(reply):
                    call.send_audio(payload, marker=i == 0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
