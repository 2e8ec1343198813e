"""The relay's end of the wire protocol: one UDP socket per relay process, many calls over it.

The per-call pipeline (``relay/call.py``) starts a call with ``start_call`` and gets back the u64
call id it uses on the per-packet path; ``send_audio_in`` is one struct pack, one dict lookup and
a place in the socket's send batch (one ``sendmmsg`` per loop turn, relay/inference/udp_batch.py). Messages
from inference are handed to the call's ``CallSink`` synchronously on the socket's callback, so
sinks must be quick (queue the frame, set a flag) and must not raise.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from typing import Any, Protocol

from splitrelay.inference import wire
from splitrelay.inference.endpoint import (
    DEFAULT_ATTEMPTS,
    DEFAULT_RTO,
    CallState,
    LinkError,
    Peer,
    WireEndpoint,
    call_end_message,
)
from splitrelay.inference.udp_batch import ObserveNs
from splitrelay.inference.wire import BargeIn, CallStart, Message, MsgType
from splitrelay.inference.wire_auth import WireKey, WireKeyring

__all__ = ["CallSink", "LinkError", "RelayLink"]

_AUDIO_OUT: int = MsgType.AUDIO_OUT.value
_AUDIO_IN: int = MsgType.AUDIO_IN.value
_AUDIO_OUT_MIN = wire.HEADER_SIZE + 1  # a header and at least one byte of Opus
_HEADER_UNPACK = wire.HEADER.unpack_from

logger = logging.getLogger("splitrelay.inference_link")


class CallSink(Protocol):
    """What the relay's per-call pipeline receives from inference. Called on the socket callback."""

    def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None: ...

    def on_mark(self, name: str, timestamp: int) -> None: ...

    def on_event(self, event: dict[str, Any]) -> None: ...

    def on_clear(self, timestamp: int) -> None: ...

    def on_call_end(self, reason: str) -> None: ...


class _LinkCall(CallState):
    __slots__ = ("end_reason", "sink", "sink_failed", "starting")

    def __init__(self, call_id: int, peer: Peer, sink: CallSink) -> None:
        super().__init__(call_id, peer)
        self.sink = sink
        self.starting = True
        self.sink_failed = False
        self.end_reason: str | None = None


async def resolve_numeric(host: str, port: int) -> tuple[Peer, socket.AddressFamily]:
    """Resolve once, up front: ``sendto`` with a host name would resolve on every packet."""
    if not 1 <= port <= 65535:
        raise LinkError(f"inference.port: must be 1..65535, got {port}")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise LinkError(f"inference.host: cannot resolve {host!r} ({exc.strerror or exc})") from None
    family, _, _, _, sockaddr = infos[0]
    return (str(sockaddr[0]), int(sockaddr[1])), socket.AddressFamily(family)


def _new_call_id(taken: dict[int, Any]) -> int:
    """A random non-zero u64 not in use: unguessable, and unlikely to meet a stale call after a restart."""
    for _ in range(16):  # a collision among 2**64 ids is vanishingly rare; 16 misses means a bug
        call_id = secrets.randbits(64)
        if call_id and call_id not in taken:
            return call_id
    raise LinkError("call_id: no free random id after 16 draws")


class RelayLink(WireEndpoint):
    """The relay side: sends AUDIO_IN, BARGE_IN and control to inference; routes its replies by call id.

    ``key`` is the wire key shared with inference (a ``WireKeyring`` during a rotation); None reads
    SPLITRELAY_WIRE_KEY from the environment and raises ``WireKeyError`` naming it when unset.
    Inference's messages are taken only from the address a call's CALL_START went to.
    """

    def __init__(
        self,
        inference: tuple[str, int],
        *,
        key: WireKey | WireKeyring | None = None,
        local_host: str | None = None,
        rto: float = DEFAULT_RTO,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        super().__init__(key=key, role="relay", rto=rto, attempts=attempts)
        self._target = inference
        self._local_host = local_host
        self._inference: Peer | None = None
        self._family = socket.AF_INET
        self._calls: dict[int, _LinkCall] = {}
        self.address: Peer | None = None

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    async def start(self) -> Peer:
        """Resolve the inference address and bind an ephemeral port of the same family."""
        self._inference, self._family = await resolve_numeric(*self._target)
        host = self._local_host or ("::" if self._family == socket.AF_INET6 else "0.0.0.0")
        self.address = await self._open((host, 0))
        return self.address

    async def close(self) -> None:
        """End every call (telling inference, without waiting long) and close the socket."""
        ends = [
            self._end(state, "relay_closing", notify=True, tell_sink=True)
            for state in list(self._calls.values())
        ]
        waiting = {f for f in ends if f is not None}
        if waiting:
            await asyncio.wait(waiting, timeout=0.5)
        await self._close_socket()

    async def __aenter__(self) -> RelayLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calls ---------------------------------------------------------------------------------

    async def start_call(
        self,
        call: str,
        sink: CallSink,
        *,
        channels: int = 1,
        metadata: dict[str, Any] | None = None,
        inference: tuple[str, int] | None = None,
    ) -> int:
        """Open a call at inference and wait for its ACK; returns the u64 call id for this call.

        Raises WireError for bad call/channels/metadata (nothing sent) and LinkError when
        inference does not acknowledge or refuses the call (e.g. "capacity"). Otherwise the sink
        may get messages before this returns (an agent can greet at once), and gets exactly one
        ``on_call_end`` unless the relay itself ends the call with ``end_call``.
        """
        if self._inference is None:
            raise LinkError("relay link: start() it before start_call()")
        payload = CallStart(
            call=call, channels=channels, metadata=metadata or {}, sent_at_ms=int(time.time() * 1000)
        ).pack()
        peer = self._inference
        if inference is not None:
            peer, family = await resolve_numeric(*inference)
            if family != self._family:
                raise LinkError(f"inference: {peer[0]} is not of the link socket's address family")
        call_id = _new_call_id(self._calls)
        state = _LinkCall(call_id, peer, sink)
        self._calls[call_id] = state
        msg = Message(MsgType.CALL_START, call_id, state.next_control_seq(), payload=payload)
        try:
            acked = await self.send_reliable(msg, peer)
        except BaseException:
            self._end(state, "relay_cancelled", notify=True, tell_sink=False)
            raise
        if state.starting:  # no message from inference reached the sink yet
            if state.ended:  # refused right after the ACK (e.g. "capacity")
                raise LinkError(f"inference at {peer[0]}:{peer[1]} refused call {call!r}: {state.end_reason}")
            if not acked:
                self._end(state, "inference_unreachable", notify=False, tell_sink=False)
                raise LinkError(
                    f"inference at {peer[0]}:{peer[1]} did not acknowledge CALL_START for {call!r}"
                )
            state.starting = False
        return call_id

    def send_audio_in(
        self,
        call_id: int,
        seq: int,
        timestamp: int,
        payload: bytes,
        flags: int = 0,
        observe: ObserveNs | None = None,
        since_ns: int = 0,
    ) -> bool:
        """Forward one caller Opus frame; ``flags`` from ``wire.audio_in_flags``. False if the call is over.

        ``seq`` should follow the RTP sequence (extended, offset to the call start) so inference
        sees upstream loss as gaps; ``timestamp`` is the RTP timestamp offset likewise. The frame
        leaves in this loop turn's batch; ``observe`` gets its wait from ``since_ns`` until it left.
        """
        state = self._calls.get(call_id)
        if state is None:
            return False
        data = wire.encode_audio(_AUDIO_IN, call_id, seq, timestamp, payload, flags)
        return self.send_batched(data, state.peer, observe, since_ns)

    def send_barge_in(
        self, call_id: int, *, played_samples: int, dropped_frames: int, response_seq: int, timestamp: int = 0
    ) -> asyncio.Future[bool] | None:
        """Tell inference the caller spoke over the response (after flushing the outbound queue)."""
        payload = BargeIn(played_samples, dropped_frames, response_seq).pack()
        return self._control(call_id, MsgType.BARGE_IN, payload, timestamp, reliable=True)

    def send_barge_candidate(
        self, call_id: int, candidate: int, *, played_samples: int, timestamp: int = 0
    ) -> asyncio.Future[bool] | None:
        """Ask inference to confirm or reject a barge-in (playout is paused meanwhile)."""
        payload = wire.BargeCandidate(candidate, played_samples).pack()
        return self._control(call_id, MsgType.BARGE_CANDIDATE, payload, timestamp, reliable=True)

    def send_mark(self, call_id: int, name: str, timestamp: int) -> asyncio.Future[bool] | None:
        """Echo a MARK once playout reached it (``timestamp`` = the mark's AUDIO_OUT position)."""
        return self._control(call_id, MsgType.MARK, wire.pack_mark(name), timestamp, reliable=True)

    def send_event(
        self, call_id: int, event: dict[str, Any], *, reliable: bool = False
    ) -> asyncio.Future[bool] | None:
        """Pass a JSON event (from the client, or the relay's own) to inference."""
        return self._control(call_id, MsgType.EVENT, wire.pack_event(event), 0, reliable=reliable)

    async def end_call(self, call_id: int, reason: str = "caller_hangup") -> bool:
        """End the call and tell inference; True once acknowledged, False if unknown or unacked."""
        wire.pack_call_end(reason)  # a bad reason raises before anything changes
        state = self._calls.get(call_id)
        if state is None:
            return False
        future = self._end(state, reason, notify=True, tell_sink=False)
        return False if future is None else await future

    def _control(
        self, call_id: int, mtype: MsgType, payload: bytes, timestamp: int, *, reliable: bool
    ) -> asyncio.Future[bool] | None:
        state = self._calls.get(call_id)
        if state is None:
            return None
        msg = Message(mtype, call_id, state.next_control_seq(), timestamp, payload=payload)
        if reliable:
            return self.send_reliable(msg, state.peer)
        self.send_control(msg, state.peer)
        return None

    def _end(
        self, state: _LinkCall, reason: str, *, notify: bool, tell_sink: bool
    ) -> asyncio.Future[bool] | None:
        if state.ended:
            return None
        future = self.send_reliable(call_end_message(state, reason), state.peer) if notify else None
        state.ended = True
        state.end_reason = reason
        if self._calls.get(state.call_id) is state:
            del self._calls[state.call_id]
        self.abandon_call(state.peer, state.call_id)  # also wakes a start_call that was refused
        self.remember_ended(state.peer, state.call_id)
        if tell_sink and not state.starting:
            try:
                state.sink.on_call_end(reason)
            except Exception:
                self._sink_failed(state)
        return future

    def _sink_failed(self, state: _LinkCall) -> None:
        """Count a sink exception; log only the first of each call (never once per packet)."""
        self.stats.callback_errors += 1
        if not state.sink_failed:
            state.sink_failed = True
            logger.exception(
                "call sink failed for call %x; further errors of this call are only counted", state.call_id
            )

    # -- receive path ----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """AUDIO_OUT, the one message that flows 50 times a second per call, skips the generic decode.

        It is checked as `wire.decode` would (version, type, size, flags, payload) straight from the
        header, then handed to its call; anything else, or anything odd, takes the full path.
        """
        size = len(data)
        if _AUDIO_OUT_MIN <= size <= wire.MAX_DATAGRAM and data[0] == wire.VERSION and data[1] == _AUDIO_OUT:
            _, _, flags, call_id, seq, timestamp = _HEADER_UNPACK(data)
            state = self._calls.get(call_id)
            if state is not None and not flags & ~wire.FLAG_MARKER and state.peer == (addr[0], addr[1]):
                self.stats.datagrams_in += 1
                state.starting = False
                if not state.audio_in_order(seq):
                    self.stats.audio_late += 1
                    return
                try:
                    state.sink.on_audio_out(seq, timestamp, data[wire.HEADER_SIZE :], bool(flags))
                except Exception:  # a sink bug must not take the socket (and every other call) down
                    self._sink_failed(state)
                return
        super().datagram_received(data, addr)

    def handle(self, msg: Message, peer: Peer, size: int, key_id: int | None) -> None:
        state = self._calls.get(msg.call_id)
        if state is None or state.peer != peer:  # audio (or anything) from another address: not the call's
            self.handle_unknown(msg, peer, size, key_id)
            return
        try:
            self._dispatch(state, msg)
        except Exception:  # a sink bug must not take the socket (and every other call) down
            self._sink_failed(state)

    def _dispatch(self, state: _LinkCall, msg: Message) -> None:
        mtype = msg.type
        if mtype is MsgType.AUDIO_OUT:
            state.starting = False
            if state.audio_in_order(msg.seq):
                state.sink.on_audio_out(msg.seq, msg.timestamp, msg.payload, msg.marker)
            else:
                self.stats.audio_late += 1
            return
        if not self.accept_control(msg, state):
            return
        if mtype is MsgType.CALL_END:
            # While starting, a CALL_END is a refusal: start_call raises and the sink hears nothing.
            self._end(state, msg.reason(), notify=False, tell_sink=True)
            return
        state.starting = False  # inference has the call, even if its ACK is still on the way
        if mtype is MsgType.MARK:
            state.sink.on_mark(msg.mark_name(), msg.timestamp)
        elif mtype is MsgType.EVENT:
            state.sink.on_event(msg.json())
        elif mtype is MsgType.CLEAR:
            state.sink.on_clear(msg.timestamp)
        elif mtype is MsgType.BARGE_VERDICT:
            verdict = msg.barge_verdict()
            on_verdict = getattr(state.sink, "on_barge_verdict", None)  # optional: older sinks lack it
            if on_verdict is not None:
                on_verdict(verdict.candidate, verdict.confirm)
        else:  # an inference-bound type sent the wrong way
            self.stats.garbage += 1

    def on_unacked(self, call_id: int, msg_type: MsgType, peer: Peer) -> None:
        state = self._calls.get(call_id)
        if msg_type is MsgType.BARGE_CANDIDATE:
            return  # a v2 peer without candidates never ACKs one; the window's default policy decides
        if state is not None and state.peer == peer and msg_type is not MsgType.CALL_START:
            self._end(state, "inference_unreachable", notify=False, tell_sink=True)
