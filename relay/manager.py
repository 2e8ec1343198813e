"""The in-process call manager: the `CallBackend` one relay process serves its calls from.

It builds each call's peer (direct: answer the caller's offer; SFU: see relay/sfu_attach.py), starts the
call in the background so the answer goes back at once, tracks live calls, drains, and exports
telemetry. One manager per process; relay/workers.py runs one per core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from splitrelay.contract.control import AttachMode, AttachRequest, AttachResult, Continuation
from splitrelay.contract.sfu import SessionDescription
from splitrelay.inference import wire
from splitrelay.inference.endpoint import Peer
from splitrelay.relay.backend import AttachRefused
from splitrelay.relay.call import Call, CallConfig, CallState
from splitrelay.relay.gc_freeze import CallFreezer
from splitrelay.relay.inference_link import RelayLink
from splitrelay.relay.media.peer import VoicePeer, VoicePeerConfig
from splitrelay.relay.playout import SharedPacer
from splitrelay.relay.sfu_attach import SfuAttacher
from splitrelay.relay.telemetry import RelayCollector

log = logging.getLogger("splitrelay.relay.manager")

MAX_CALLS_DEFAULT = 1_000


def wire_continuation(continues: Continuation | None) -> wire.Continuation | None:
    """The edge's continuation (a relay failover or drain hand-over) as CALL_START carries it."""
    if continues is None:
        return None
    return wire.Continuation(continues.previous_relay, continues.reason.value, continues.attempt)


class CallManager:
    """Owns the live calls of one relay process."""

    def __init__(
        self,
        link: RelayLink,
        *,
        peer_config: VoicePeerConfig | None = None,
        call_config: CallConfig | None = None,
        sfu: SfuAttacher | None = None,
        max_calls: int = MAX_CALLS_DEFAULT,
        process: str = "0",
        inference_endpoints: tuple[Peer, ...] = (),
        relay_id: str = "relay",
    ) -> None:
        """``inference_endpoints``: resolved, in the order each call tries them (relay/call.py); empty
        or one: every call goes to the link's endpoint and an agent lost mid-call ends it."""
        self.link = link
        self.inference_endpoints = inference_endpoints if len(inference_endpoints) > 1 else ()
        self.relay_id = relay_id
        self.peer_config = peer_config or VoicePeerConfig()
        self.call_config = call_config or CallConfig()
        self.sfu = sfu
        self.max_calls = max_calls
        self.calls: dict[str, Call] = {}
        self._attaching: dict[str, str | None] = {}
        """Calls whose attach is in flight (not in ``calls`` yet) → the reason of a close that came
        meanwhile: the attach then undoes itself instead of leaving a call nobody will close."""
        self.pacer = SharedPacer()  # one playout timer for every call of this process
        link.pace_schedule = self.pacer.schedule  # and for the frames the outbound C path paces
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self.on_stage: Callable[[str, dict[str, Any]], object] | None = None
        """Told (call id, event) of each agent stage mark of any call (relay/edge_link.py)."""
        self.on_ended: Callable[[str, str], object] | None = None
        """Told (call id, close reason) when a call ends, whoever ended it (relay/edge_link.py)."""
        self.freezer = CallFreezer(self._settled, lambda: len(self.calls))
        """Releases ended calls and freezes live ones (relay/gc_freeze.py; SPLITRELAY_FREEZE_CALLS=0: off)."""
        self.collector = RelayCollector(lambda: [c.sample() for c in self.calls.values()], process)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    @property
    def draining(self) -> bool:
        return self._draining

    async def attach(self, request: AttachRequest) -> AttachResult:
        if request.call_id in self.calls or request.call_id in self._attaching:
            raise AttachRefused(409, f"call {request.call_id!r} is already attached to this relay")
        if len(self.calls) + len(self._attaching) >= self.max_calls:
            raise AttachRefused(503, f"relay is full: {self.max_calls} live calls (max_calls)")
        self._attaching[request.call_id] = None
        try:
            return await self._attach(request)
        finally:
            self._attaching.pop(request.call_id, None)

    async def _attach(self, request: AttachRequest) -> AttachResult:
        started = time.perf_counter()
        peer = VoicePeer(self.peer_config)
        result: AttachResult
        try:
            if request.mode is AttachMode.DIRECT:
                assert request.offer is not None  # AttachRequest refuses a direct attach without one
                try:
                    answer = await peer.accept_offer(request.offer.sdp)
                except ValueError:
                    raise  # our own checks of the offer: their message names the problem
                except Exception as exc:
                    # aiortc fails on a truncated or garbled offer with bare AssertionError, KeyError,
                    # AttributeError...: it is this caller's SDP, so a 400 that says so, not a 502.
                    log.info("offer for %s not negotiable: %s: %s", request.call_id, type(exc).__name__, exc)
                    detail = str(exc)[:120] or "malformed SDP"
                    raise AttachRefused(
                        400, f"offer: cannot be negotiated ({type(exc).__name__}: {detail})"
                    ) from None
                result = AttachResult(
                    call_id=request.call_id,
                    mode=AttachMode.DIRECT,
                    answer=SessionDescription.answer(answer),
                    setup_ms=0.0,
                )
            else:
                if self.sfu is None:
                    raise AttachRefused(400, "mode 'sfu': this relay has no SFU configured (--sfu-url)")
                assert request.sfu is not None
                session_id, track_name = await self.sfu.attach(
                    peer, request.call_id, request.sfu.caller_session_id, request.sfu.caller_track_name
                )
                result = AttachResult(
                    call_id=request.call_id,
                    mode=AttachMode.SFU,
                    sfu_session_id=session_id,
                    sfu_track_name=track_name,
                    setup_ms=0.0,
                )
        except AttachRefused:
            await peer.close()
            raise
        except ValueError as exc:
            await peer.close()
            raise AttachRefused(400, f"offer: {exc}") from None
        except Exception as exc:
            await peer.close()
            log.warning("attach of %s failed: %s", request.call_id, exc)
            raise AttachRefused(502, f"attach failed: {type(exc).__name__}: {exc}") from None
        closed_by = self._attaching.get(request.call_id)
        if closed_by is not None:  # closed while attaching: undo, or the call would live on unclosed
            await peer.close()
            if self.sfu is not None:
                await self.sfu.detach(request.call_id)
            raise AttachRefused(409, f"call {request.call_id!r} was closed while it attached ({closed_by})")
        call = Call(
            request.call_id,
            request.mode.value,
            peer,
            self.link,
            config=self.call_config,
            metadata=request.metadata,
            on_closed=self._forget,
            pacer=self.pacer,
            endpoints=self.inference_endpoints,
            relay_id=self.relay_id,
            continues=wire_continuation(request.continues),
        )
        call.on_stage = self.on_stage
        self.calls[request.call_id] = call
        task = asyncio.get_running_loop().create_task(self._run(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return replace(result, setup_ms=round((time.perf_counter() - started) * 1000, 2))

    async def _run(self, call: Call) -> None:
        try:
            await call.start()
        except Exception as exc:  # start() closed the call already; the reason is in its summary
            log.info("call %s did not start: %s", call.call_id, exc)
            return
        self.collector.record_setup(call.counters.setup_ms)
        self.freezer.call_live()

    def _settled(self) -> bool:
        """No call is being set up or torn down: what is alive now stays alive until a call ends."""
        return not self._attaching and all(c.state is CallState.LIVE for c in self.calls.values())

    def _forget(self, call: Call) -> None:
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
            self.collector.record_ended(call.sample())
            if self.on_ended is not None:
                self.on_ended(call.call_id, call.close_reason or "ended")
            self.freezer.call_ended(call.release)
        if self.sfu is not None:
            task = asyncio.get_running_loop().create_task(self.sfu.detach(call.call_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self, call_id: str, reason: str) -> dict[str, Any] | None:
        call = self.calls.get(call_id)
        if call is None:
            if call_id not in self._attaching:
                return None
            self._attaching[call_id] = reason  # the attach in flight undoes itself when it returns
            return {"call_id": call_id, "state": "closed", "close_reason": reason}
        return await call.close(reason, wire_reason="caller_hangup")

    async def list_calls(self) -> list[dict[str, Any]]:
        return [c.summary() for c in self.calls.values()]

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        call = self.calls.get(call_id)
        return None if call is None else call.summary(with_events=True)

    async def drain(self) -> int:
        """Take no new calls; live calls finish on their own. Returns how many are still live."""
        self._draining = True
        return len(self.calls)

    async def undrain(self) -> int:
        """Take new calls again (a drain called off). Returns how many are live."""
        self._draining = False
        return len(self.calls)

    async def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    async def shutdown(self) -> None:
        """Close every call and wait for background work, bounded in time."""
        self._draining = True
        await asyncio.gather(*(c.close("relay shutting down") for c in list(self.calls.values())))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        self.freezer.close()
        self.pacer.close()
