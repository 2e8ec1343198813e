"""The local stack as deployed against an anycast SFU: the emulator reaches every relay call from ONE
address and port (``emulator serve --media-port``), and the relay serves every call on ONE port
(``relay serve --media-port``), both the stack's defaults (issue 17).

Eight callers dial through the edge at once, each sending frames that carry its own tag byte; every
echo a caller hears must be its own. Two more calls are set up and two hung up while the others talk.
Real processes, real WebRTC; stopped by PID with the stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from splitrelay.devtools.live_caller import LiveCaller, dial
from splitrelay.devtools.stack import Stack, StackConfig, StackInfo
from splitrelay.devtools.utterance import Utterance, load_utterance
from splitrelay.relay.media.rtp import RtpPacket

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CALLS = 8


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Stack, StackInfo]]:
    running = Stack(StackConfig(run_dir=tmp_path_factory.mktemp("stack"), sfu_reconnect_window_s=1.0))
    info = await running.start()
    try:
        yield running, info
    finally:
        report = await running.stop()
        assert not report.leftovers


class Tagged:
    """A caller whose every frame starts with ``tag``; ``heard`` keeps what the agent sent it."""

    def __init__(self, tag: int, base: Utterance) -> None:
        self.tag = tag
        self.utterance = dataclasses.replace(
            base,
            frames=tuple(bytes([tag]) + f for f in base.frames),
            silence_frame=bytes([tag]) + base.silence_frame,
        )
        self.heard: list[bytes] = []
        self.caller: LiveCaller | None = None
        self.http: httpx.AsyncClient | None = None

    def on_packet(self, packet: RtpPacket) -> None:
        self.heard.append(packet.payload)

    async def dial(self, info: StackInfo) -> None:
        # Each caller from its own loopback address: the edge limits requests per client address, as
        # Cloudflare does, and eight pages polling from one address would be throttled.
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{10 + self.tag % 200}")
        self.http = httpx.AsyncClient(timeout=60, transport=transport)
        self.caller = await dial(
            self.http, info, subject=f"shared-{self.tag}", on_packet=self.on_packet, utterance=self.utterance
        )

    async def hang_up(self) -> None:
        caller, self.caller = self.caller, None
        try:
            if caller is not None:
                await caller.close()
        finally:
            if self.http is not None:
                await self.http.aclose()
                self.http = None

    async def talk(self) -> None:
        assert self.caller is not None
        await self.caller.hears_the_agent(within=20)

    def check(self, base: Utterance, tags: set[int]) -> int:
        """How many of its own frames it heard; fails on any frame another caller sent."""
        known = {*base.frames, base.silence_frame}
        own = sum(1 for p in self.heard if p[:1] == bytes([self.tag]) and p[1:] in known)
        foreign = sorted({p[0] for p in self.heard if p and p[0] in tags - {self.tag} and p[1:] in known})
        assert not foreign, f"caller {self.tag} heard callers {foreign}: cross-talk"
        return own


async def test_eight_calls_through_one_sfu_socket_to_one_relay_port_hear_only_themselves(
    stack: tuple[Stack, StackInfo],
) -> None:
    running, info = stack
    emulator = next(c for c in running.components if c.name == "emulator")
    relay = next(c for c in running.components if c.name == "relay")
    assert emulator.ready.get("media_address"), "the stack's emulator has no shared media socket"
    assert "--media-port" in relay.args, "the stack's relay has no shared media port"
    base = load_utterance()
    callers = [Tagged(0x40 + i, base) for i in range(CALLS + 2)]
    tags = {c.tag for c in callers}
    first, later = callers[:CALLS], callers[CALLS:]
    try:
        await asyncio.gather(*(c.dial(info) for c in first))  # eight set-ups at once
        talking = asyncio.gather(*(c.talk() for c in first))
        await asyncio.gather(*(c.dial(info) for c in later))  # two more while eight talk
        await talking
        for gone in first[:2]:  # two hang up while the rest go on
            await gone.hang_up()
        await asyncio.gather(*(c.talk() for c in first[2:] + later))
        for c in callers:
            assert c.check(base, tags) >= 10, f"caller {c.tag} heard too little of its own echo"
    finally:
        for c in callers:
            await c.hang_up()
