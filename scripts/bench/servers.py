"""The two servers the relay benchmark runs as child processes, both on uvloop.

``echo-inference``: an inference service that answers each AUDIO_IN at once with an AUDIO_OUT of the same
payload, so the relay carries a full call each way and the benchmark sees every frame's round trip.
Calls open and end through the real SDK (relay/inference/sdk.py: CALL_START, ACK, CALL_END), but AUDIO_IN
skips it: the datagram is rewritten in place (AUDIO_IN and AUDIO_OUT share the header layout) and sent
back, a few microseconds instead of a decode, a queue, a task switch and an encode, so the load side
stays cheaper than the relay it loads. ``udp-echo``: a bare uvloop UDP echo (``sendto(data, addr)``,
nothing else), the baseline: what moving the same datagrams costs with no relay logic at all.

Each prints one JSON ready line with its port, runs until SIGTERM/SIGINT or until its stdin closes (so
it never outlives the benchmark), then prints a JSON stats line.
Run: ``splitrelay bench serve-echo echo-inference|udp-echo [--listen 127.0.0.1:0]`` (a hidden command).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

from splitrelay.inference import wire
from splitrelay.inference.endpoint import Peer
from splitrelay.inference.sdk import InferenceCall, InferenceServer

SOCKET_BUFFER = 1 << 21  # the same 2 MiB the relay's wire socket asks for (relay/inference/endpoint.py)


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


async def _until_stopped() -> None:
    """Wait for SIGTERM/SIGINT or EOF on stdin (the benchmark went away)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not sys.stdin.isatty():
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def watch_stdin() -> None:
            while await reader.read(4096):  # bounded by the pipe: returns b"" at EOF
                pass
            stop.set()

        watcher = asyncio.create_task(watch_stdin())
        await stop.wait()
        watcher.cancel()
    else:
        await stop.wait()


_AUDIO_IN = int(wire.MsgType.AUDIO_IN)
_AUDIO_OUT = int(wire.MsgType.AUDIO_OUT)
_CALL_ID = struct.Struct("!Q")


def audio_out_from_audio_in(data: bytes) -> bytes:
    """The AUDIO_OUT that echoes an AUDIO_IN datagram: same call id, seq, timestamp and payload.

    Only the type byte and the flags change: AUDIO_OUT may carry MARKER alone, so the level, VOICE
    and LEVEL_PRESENT bits are cleared (the relay rejects an AUDIO_OUT with any other bit set).
    """
    out = bytearray(data)
    out[1] = _AUDIO_OUT
    out[2] = 0  # flags, high byte: the RFC 6464 level bits
    out[3] &= wire.FLAG_MARKER  # flags, low byte: MARKER stays, LEVEL_PRESENT and VOICE go
    return bytes(out)


class RawEchoServer(InferenceServer):
    """An InferenceServer whose calls the SDK opens, holds and ends, while their audio is echoed raw."""

    def __init__(self, host: str, port: int, *, max_calls: int) -> None:
        # No keepalives flow before the benchmark starts sending, so the idle timeout is at its maximum.
        # The audio echoed raw below never reaches the SDK's per-call receive count, so a relay that once
        # sent a KEEPALIVE would look silent and be dropped as relay_lost after 3 s: that watch is off.
        super().__init__(self._hold, host, port, max_calls=max_calls, idle_timeout=3600, relay_timeout=0)
        self._live: set[tuple[Peer, int]] = set()
        self.echoed = 0

    async def _hold(self, call: InferenceCall) -> None:
        """The handler: the call is echoed while it is live (its task runs right after the CALL_START
        is acknowledged, long before the relay's first AUDIO_IN can arrive)."""
        key = (call.relay, call.call_id)
        self._live.add(key)
        try:
            await call.wait_ended()
        finally:
            self._live.discard(key)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > wire.HEADER_SIZE and data[1] == _AUDIO_IN and data[0] == wire.VERSION:
            peer: Peer = (addr[0], addr[1])
            if (peer, _CALL_ID.unpack_from(data, 4)[0]) in self._live:
                self.stats.datagrams_in += 1
                # One sendmmsg per loop turn for every echo of the batch the SDK just read, as a real
                # agent's audio leaves through the SDK: the load core's headroom is what lets the bench
                # offer more calls to the relay.
                self.send_batched(audio_out_from_audio_in(data), peer)
                self.echoed += 1
                return
        super().datagram_received(data, addr)  # control messages, and anything odd, take the SDK's path


async def echo_inference(listen: tuple[str, int], max_calls: int) -> None:
    server = RawEchoServer(listen[0], listen[1], max_calls=max_calls)
    address = await server.start()
    try:
        _emit({"event": "ready", "port": address[1], "pid": os.getpid()})
        await _until_stopped()
    finally:
        stats = {**server.stats.as_dict(), "echoed": server.echoed}
        await server.close(grace=0.5)
        _emit({"event": "stats", **stats})


class _Echo(asyncio.DatagramProtocol):
    __slots__ = ("datagrams", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        self.transport.sendto(data, addr)  # type: ignore[union-attr]


async def udp_echo(listen: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    transport, protocol = await loop.create_datagram_endpoint(_Echo, local_addr=listen, family=family)
    sock = transport.get_extra_info("socket")
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    try:
        _emit({"event": "ready", "port": transport.get_extra_info("sockname")[1], "pid": os.getpid()})
        await _until_stopped()
    finally:
        transport.close()
        _emit({"event": "stats", "datagrams": protocol.datagrams})
