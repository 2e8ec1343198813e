"""Ended calls are freed by reference counting, frozen ones included; no decoder thread per call.

A real relay on loopback (per-call ports, and the shared media port with its native paths), real aiortc
callers through the signed control API, media both ways. The relay-side objects of each call are watched
through weak references; after the calls end and are released, every one must be gone with the cyclic
collector switched off, which is what makes freezing live calls safe (relay/gc_freeze.py). Before the
release existed each ended call left ~290 objects in reference cycles, and every call held an idle
``audio-decoder`` thread.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from splitrelay.inference.echo_agent import EchoAgent, EchoConfig
from splitrelay.inference.sdk import InferenceServer
from splitrelay.relay.call import Call, CallConfig
from splitrelay.relay.media import aiortc_internals
from splitrelay.relay.media.peer import LOOPBACK
from splitrelay.relay.media.srtp_fastpath import FastPathConfig
from splitrelay.relay.server import RelayServer, RelaySettings
from tests.integration.relay_harness import SIGNING_KEY, Caller, RelayStack
from tests.opus_fixtures import UTTERANCE, clip

pytestmark = pytest.mark.integration

CALLS = 3


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def freezing_relay(shared_port: bool) -> AsyncIterator[RelayStack]:
    async with InferenceServer(EchoAgent(EchoConfig(silence_ms=200)), "127.0.0.1", 0) as inference:
        assert inference.address is not None
        settings = RelaySettings(
            signing_keys={"default": SIGNING_KEY},
            inference=inference.address,
            host="127.0.0.1",
            port=0,
            candidates=LOOPBACK,
            call=CallConfig(fast_path=FastPathConfig(rtcp_interval=0.2)),
            media_port=free_udp_port() if shared_port else None,
        )
        async with RelayServer(settings) as relay, httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
            assert relay.manager is not None
            relay.manager.freezer.enabled = True  # as in a relay-only process (relay serve)
            relay.manager.freezer.release_delay_s = 0.2
            yield RelayStack(http, relay, inference)


def watch(call: Call) -> list[weakref.ref[Any]]:
    """Weak references to a relay call's main objects, its aiortc and aioice graph included."""
    pc = call.peer.pc
    dtls = aiortc_internals.dtls_transport(pc)
    objects: list[Any] = [call, call.peer, pc, call.fast_path, dtls, dtls.transport]
    for transceiver in pc.getTransceivers():
        objects += [transceiver, transceiver.sender, transceiver.receiver]
    objects.append(getattr(dtls.transport.iceGatherer, "_connection", None))
    return [weakref.ref(o) for o in objects if o is not None]


def watch_all(calls: Iterable[Call]) -> list[weakref.ref[Any]]:
    """``watch`` over every call, after checking each started without aiortc's decoder thread."""
    refs: list[weakref.ref[Any]] = []
    for call in calls:
        assert aiortc_internals.decoder_skipped(call.peer.transceiver.receiver)
        refs += watch(call)
    return refs


async def until(check: Any, what: str, within: float = 10.0) -> None:
    for _ in range(int(within / 0.02)):  # bounded
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {within} s")


@pytest.mark.parametrize("shared_port", [False, True], ids=["port-per-call", "shared-port"])
async def test_ended_frozen_calls_are_freed_without_the_collector(shared_port: bool) -> None:
    audio = clip(UTTERANCE)
    async with freezing_relay(shared_port) as stack:
        manager = stack.relay.manager
        assert manager is not None
        # One more call than ends: the link's liveness sweep keeps the last call it visited in a local
        # until its next pass, which visits the one left (relay/inference_link.py RelayLink._sweep).
        callers = [Caller() for _ in range(CALLS + 1)]
        gc_was_enabled = gc.isenabled()
        try:
            for i, caller in enumerate(callers):
                await caller.attach(stack, f"gc-{i}")
            await until(lambda: all(c.state.value == "live" for c in manager.calls.values()), "calls live")
            await asyncio.gather(*(c.speak(audio.frames[:25], audio.levels[:25]) for c in callers))
            await asyncio.gather(*(c.wait_received(5) for c in callers))
            assert not [t.name for t in threading.enumerate() if "decoder" in t.name]
            ending = [c for c in manager.calls.values() if c.call_id != f"gc-{CALLS}"]
            refs = watch_all(ending)  # no Call left in this frame's locals
            del ending
            await until(lambda: manager.freezer.freezes >= 1, "a freeze after the set-ups")
            manager.freezer.freeze_now()  # everything live now frozen (the automatic one may have come early)
            frozen_live = gc.get_freeze_count()
            gc.disable()  # from here on only reference counting frees anything
            freezes = manager.freezer.freezes
            for i in range(CALLS):
                response = await stack.request("DELETE", f"/v1/calls/gc-{i}")
                assert response.status_code == 200, response.text
            await asyncio.gather(*(c.close() for c in callers[:CALLS]))
            await until(lambda: manager.freezer.released == CALLS, "every ended call released")
            await until(lambda: manager.freezer.freezes > freezes, "a freeze after the releases")
            for _ in range(50):  # bounded: 1 s (a sweep, the last loop turns of the closes)
                alive = [type(r()).__name__ for r in refs if r() is not None]
                if not alive:
                    break
                await asyncio.sleep(0.02)
            assert alive == [], f"still alive after release, without a collection: {alive}"
            assert manager.freezer.release_failures == 0
            assert gc.get_freeze_count() < frozen_live  # the ended calls left the permanent generation
            metrics = (await stack.http.get("/metrics")).text
            assert 'splitrelay_gc_pause_seconds_count{generation="2",process="0"}' in metrics
            assert "splitrelay_gc_frozen_objects" in metrics
        finally:
            if gc_was_enabled:
                gc.enable()
            await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
            gc.unfreeze()  # give this test process its collector back
            gc.collect()


async def test_a_call_cannot_be_released_before_it_closed() -> None:
    async with freezing_relay(False) as stack:
        manager = stack.relay.manager
        assert manager is not None
        caller = Caller()
        try:
            await caller.attach(stack, "gc-early")
            (call,) = manager.calls.values()
            with pytest.raises(RuntimeError, match="after close"):
                call.release()
            summary = await call.close("test")
            call.release()
            assert call.summary() == summary and call.close_reason == "test"
            assert await call.close("again") == summary  # idempotent on a released call
        finally:
            await caller.close()
