"""A headless WebRTC caller that stays on the line: the fault tests' and `bench failover`'s caller.

`splitrelay call` (devtools/call.py) measures turns and hangs up; a fault test needs a caller that keeps
its one peer connection while relays and agents die under it, sends a frame every 20 ms (silence, or an
utterance when told), hands every agent packet to a callback, and can read the edge's record of its
call. It dials exactly as the browser page does (devtools/call.py's ``EdgeSignalling``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx

from splitrelay.devtools.budget import SendClock
from splitrelay.devtools.call import CallError, EdgeSignalling, Receiver, Sender
from splitrelay.devtools.stack import StackInfo
from splitrelay.devtools.utterance import Utterance, load_utterance
from splitrelay.edge import tokens
from splitrelay.relay.media.peer import LOOPBACK, VoicePeer, VoicePeerConfig
from splitrelay.relay.media.rtp import RtpPacket
from splitrelay.relay.media.srtp_fastpath import FastPathConfig, SrtpFastPath

CONNECT_S: Final = 20.0
MAX_CALL_FRAMES: Final = 50 * 3600  # an hour of 20 ms frames: the sender's bound
POLL_S: Final = 0.02


@dataclass
class LiveCaller:
    """One caller through the edge; ``close()`` hangs up and releases the peer."""

    signalling: EdgeSignalling
    peer: VoicePeer
    call_id: str
    sender_task: asyncio.Task[None]
    fast_path: SrtpFastPath
    sender: Sender
    receiver: Receiver
    offer_sdp: str

    async def record(self) -> dict[str, Any]:
        """The edge's record of the call (GET /v1/calls/{id}, what the page reads)."""
        return await self.signalling.record(self.call_id)

    @property
    def renegotiated(self) -> bool:
        """True if the caller's local description changed since its one offer (it never should)."""
        local = self.peer.pc.localDescription
        return local is None or local.sdp != self.offer_sdp

    async def wait_closed(self, within: float) -> tuple[dict[str, Any], float]:
        """→ (the closed record, seconds waited); CallError if still open after ``within``."""
        started = time.perf_counter()
        record: dict[str, Any] = {}
        for _ in range(int(within / POLL_S) + 1):  # bounded
            record = await self.record()
            if record["state"] == "closed":
                return record, time.perf_counter() - started
            await asyncio.sleep(POLL_S)
        raise CallError(f"call {self.call_id} still {record.get('state')!r} after {within} s")

    async def wait_moved(self, from_relay: str, within: float) -> tuple[dict[str, Any], float]:
        """→ (the record once the call runs on another relay, seconds waited). CallError if the call
        closed instead, or is still on ``from_relay`` after ``within``."""
        started = time.perf_counter()
        record: dict[str, Any] = {}
        for _ in range(int(within / POLL_S) + 1):  # bounded
            record = await self.record()
            if record["state"] != "connected":
                raise CallError(f"call {self.call_id} is {record['state']}: {record.get('close_reason')}")
            if record["relay"]["id"] != from_relay:
                return record, time.perf_counter() - started
            await asyncio.sleep(POLL_S)
        raise CallError(f"call {self.call_id} still on {from_relay} after {within} s")

    async def hears_the_agent(self, within: float, frames: int = 10) -> float:
        """Speak the utterance once; → seconds from its end until ``frames`` agent packets arrived."""
        speech = self.sender.speak()
        await asyncio.wait_for(speech.done.wait(), timeout=30)
        before, done_at = self.receiver.packets, time.perf_counter()
        for _ in range(int(within / POLL_S) + 1):  # bounded
            if self.receiver.packets >= before + frames:
                return time.perf_counter() - done_at
            await asyncio.sleep(POLL_S)
        raise CallError(f"no answer from the agent within {within} s of the utterance's end")

    async def close(self) -> None:
        self.sender_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.sender_task
        with contextlib.suppress(Exception):
            await self.signalling.hang_up(self.call_id)
        await self.fast_path.close()
        await self.peer.close()


class _TappedReceiver(Receiver):
    """devtools/call.py's receiver, also telling ``tap`` of every packet."""

    def __init__(self, tap: Callable[[RtpPacket], object] | None) -> None:
        super().__init__()
        self._tap = tap

    def on_packet(self, packet: RtpPacket) -> None:
        super().on_packet(packet)
        if self._tap is not None:
            self._tap(packet)


async def dial(
    http: httpx.AsyncClient,
    info: StackInfo,
    *,
    subject: str = "live-caller",
    on_packet: Callable[[RtpPacket], object] | None = None,
    utterance: Utterance | None = None,
) -> LiveCaller:
    """Call through the stack's edge, connect, start sending, and wait until the edge says the relay's
    path is up (the record is connected)."""
    if info.edge_url is None:
        raise CallError("the stack has no edge (direct mode): a live caller needs SFU mode")
    token = tokens.issue(info.token_signing_key.encode(), subject, ttl_s=3600)[0]
    signalling = EdgeSignalling(http, info.edge_url, token)
    peer = VoicePeer(VoicePeerConfig(ice_servers=tuple(await signalling.ice_servers()), candidates=LOOPBACK))
    attached: list[SrtpFastPath] = []
    receiver = _TappedReceiver(on_packet)

    def on_state() -> None:
        if peer.pc.connectionState == "connected" and not attached:
            attached.append(SrtpFastPath.attach(peer.pc, receiver.on_packet, FastPathConfig()))

    peer.pc.on("connectionstatechange", on_state)
    try:
        offer = await peer.create_offer()
        call_id, answer = await signalling.create(offer)
        await peer.accept_answer(answer)
        await peer.wait_connected(within=CONNECT_S)
        if not attached:
            raise CallError("the caller's fast path did not attach")
        clock = SendClock(random.randrange(1 << 32), time.perf_counter())
        sender = Sender(attached[0], utterance or load_utterance(), clock, max_frames=MAX_CALL_FRAMES)
        task = asyncio.create_task(sender.run())
        await signalling.wait_path(call_id, time.perf_counter() + CONNECT_S)
    except BaseException:
        for fast_path in attached:
            await fast_path.close()
        await peer.close()
        raise
    local = peer.pc.localDescription
    return LiveCaller(
        signalling, peer, call_id, task, attached[0], sender, receiver, local.sdp if local else offer
    )
