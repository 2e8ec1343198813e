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
_VERSION = wire.VERSION
_HEADER_SIZE = wire.HEADER_SIZE
_MARKER = wire.FLAG_MARKER
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


ECHO_BATCH = 64  # datagrams per recvmmsg
ECHO_CALLS_PER_TURN = 4  # recvmmsg calls per loop turn: this socket is the process's only work


class LiveCalls(set[tuple[Peer, int]]):
    """The (relay, call id) pairs the echo answers, with a version that moves on every change (so
    ``BatchEcho`` rebuilds its array of live ids only when a call starts or ends)."""

    version = 0

    def add(self, key: tuple[Peer, int]) -> None:
        super().add(key)
        self.version += 1

    def discard(self, key: object) -> None:
        super().discard(key)
        self.version += 1


class BatchEcho:
    """The echo inference's audio path per ``recvmmsg`` batch, in place: each AUDIO_IN of a live call is
    rewritten to its AUDIO_OUT in the receive buffer and leaves from there, the batch's echoes in one
    ``sendmmsg`` to the address they came from; everything else goes to the SDK, in order.

    The same bytes as ``audio_out_from_audio_in`` (the reference: tests/unit/test_bench_load_shared.py),
    decided and rewritten with a few numpy operations per batch instead of Python per datagram, so the
    load core's headroom goes to the calls the bench offers. Receives with the relay's native
    ``recvmmsg`` (relay/media/native ``RecvBatch``, read only); sends with libc's ``sendmmsg`` as
    relay/inference/udp_batch.py binds it (``sendmmsg_binding``).
    The batch's first audio datagram names the relay whose datagrams are answered here; another
    relay's (none in the bench) take the SDK's path, which echoes them too.
    """

    def __init__(
        self,
        sock: socket.socket,
        live: LiveCalls,
        deliver: Any,
        before_send: Any,
        *,
        batch: int = ECHO_BATCH,
        calls_per_turn: int = ECHO_CALLS_PER_TURN,
    ) -> None:
        """``deliver(data, peer)`` takes what is not echoed here; ``before_send()`` returns False while
        the socket holds unsent data (the echoes then go through ``fallback``, behind it)."""
        import numpy as np

        from splitrelay.inference.udp_batch import sendmmsg_binding
        from splitrelay.relay.media import native

        self._recv = native.RecvBatch(sock.fileno(), batch)
        self._fd = sock.fileno()
        self._live = live
        self._live_version = -1
        self._live_ids: dict[Peer, Any] = {}
        self._deliver = deliver
        self._before_send = before_send
        self.fallback: Any = None
        """``sendto(data, peer)`` for echoes while the socket holds unsent data."""
        self.batch = batch
        self.calls_per_turn = calls_per_turn
        ffi, self._libc = sendmmsg_binding()
        recv = self._recv
        base = ffi.from_buffer(recv.mem)
        names = ffi.from_buffer(recv.names_mem)
        self._vec = ffi.new("struct mmsghdr[]", batch)
        self._iov = ffi.new("struct iovec[]", batch)
        for i in range(batch):  # echo i leaves from receive slot i, to the address slot i came from
            self._iov[i].iov_base = base + i * native.RECV_SLOT
            hdr = self._vec[i].msg_hdr
            hdr.msg_iov = ffi.addressof(self._iov, i)
            hdr.msg_iovlen = 1
            hdr.msg_name = names + i * native.RECV_NAME_SLOT
            hdr.msg_namelen = native.RECV_NAME_SLOT  # the kernel reads the family's own length of it
        self._keep = (base, names)
        self._mem = np.frombuffer(recv.mem, dtype=np.uint8).reshape(batch, native.RECV_SLOT)
        self._name_mem = np.frombuffer(recv.names_mem, dtype=np.uint8).reshape(batch, native.RECV_NAME_SLOT)
        self._lengths = np.frombuffer(recv.lengths, dtype=np.int32)
        self._name_lengths = np.frombuffer(recv.name_lengths, dtype=np.int32)
        self._iov_len = np.frombuffer(ffi.buffer(self._iov), dtype=np.uint64).reshape(batch, 2)[:, 1]
        self._slot = native.RECV_SLOT
        self._name_slot = native.RECV_NAME_SLOT
        self._names: dict[bytes, Peer] = {}
        self.echoed = 0
        self.calls = 0
        self.send_errors = 0

    def drain(self) -> int:
        """Read and answer what is there, within this turn's bound; returns the datagrams read."""
        import numpy as np

        recv, mem = self._recv, self._mem
        total = 0
        for _ in range(self.calls_per_turn):
            n = recv.receive()
            self.calls += 1
            if n <= 0:
                break
            total += n
            echo = self._echoes(n)
            at = np.flatnonzero(echo)
            if len(at):
                mem[at, 1] = _AUDIO_OUT  # as audio_out_from_audio_in: the type, and only MARKER of the flags
                mem[at, 2] = 0
                mem[at, 3] &= _MARKER
                self._iov_len[at] = self._lengths[at]
                self._send(echo.tolist(), len(at), n)
            if len(at) < n:
                self._deliver_rest(echo.tolist(), n)
            if n < self.batch:
                break
        return total

    def _echoes(self, n: int) -> Any:
        """Which of the batch's ``n`` datagrams to answer here: AUDIO_IN of a live call of its relay."""
        import numpy as np

        rows = self._mem[:n]
        lengths = self._lengths[:n]
        echo = (lengths > _HEADER_SIZE) & (rows[:, 1] == _AUDIO_IN) & (rows[:, 0] == _VERSION)
        if not echo.any():
            return echo
        first = int(np.argmax(echo))
        peer = self._peer(first)
        ids = self._live_ids_of(peer) if peer is not None else None
        if ids is None or not len(ids):
            echo[:] = False
            return echo
        name_lengths = self._name_lengths[:n]
        names = self._name_mem[:n]
        echo &= (name_lengths == name_lengths[first]) & (names == names[first]).all(axis=1)
        call_ids = np.ascontiguousarray(rows[:, 4:12]).view(">u8").ravel().astype(np.uint64)
        position = np.minimum(np.searchsorted(ids, call_ids), len(ids) - 1)
        echo &= ids[position] == call_ids
        return echo

    def _peer(self, i: int) -> Peer | None:
        from splitrelay.inference.udp_recv import sockaddr_address

        recv, names = self._recv, self._names
        at = i * self._name_slot
        key = recv.names_mem[at : at + recv.name_lengths[i]]
        peer = names.get(key)
        if peer is None:
            try:
                peer = sockaddr_address(key)
            except ValueError:
                return None
            if len(names) >= 4096:
                names.clear()
            names[key] = peer
        return peer

    def _live_ids_of(self, peer: Peer) -> Any:
        import numpy as np

        live = self._live
        if self._live_version != live.version:
            by_peer: dict[Peer, list[int]] = {}
            for relay, call_id in list(live):
                by_peer.setdefault(relay, []).append(call_id)
            self._live_ids = {k: np.array(sorted(v), dtype=np.uint64) for k, v in by_peer.items()}
            self._live_version = live.version
        return self._live_ids.get(peer)

    def _deliver_rest(self, echo: list[bool], n: int) -> None:
        """What is not answered here goes to the SDK, in arrival order (cut datagrams are dropped)."""
        recv, deliver, slot = self._recv, self._deliver, self._slot
        lengths = recv.lengths
        for i in range(n):
            length = lengths[i]
            if echo[i] or length < 0:
                continue
            peer = self._peer(i)
            if peer is not None:
                start = i * slot
                deliver(recv.mem[start : start + length], peer)

    def _send(self, echo: list[bool], count: int, n: int) -> None:
        """Every run of consecutive echoes in one ``sendmmsg``, in order."""
        self.echoed += count
        if not self._before_send():
            recv, slot = self._recv, self._slot
            for i in range(n):
                if echo[i]:
                    start = i * slot
                    self.fallback(recv.mem[start : start + recv.lengths[i]], self._peer(i))
            return
        i = 0
        for _ in range(n):  # each round sends a run (or skips one datagram the kernel refused)
            while i < n and not echo[i]:
                i += 1
            if i >= n:
                break
            end = i
            while end < n and echo[end]:
                end += 1
            sent = self._libc.sendmmsg(self._fd, self._vec + i, end - i, 0)
            if sent <= 0:
                self.send_errors += 1  # refused (or the socket is full): skip it, as SendBatch does
                sent = 1
            i += sent


class RawEchoServer(InferenceServer):
    """An InferenceServer whose calls the SDK opens, holds and ends, while their audio is echoed raw."""

    def __init__(self, host: str, port: int, *, max_calls: int) -> None:
        # No keepalives flow before the benchmark starts sending, so the idle timeout is at its maximum.
        # The audio echoed raw below never reaches the SDK's per-call receive count, so a relay that once
        # sent a KEEPALIVE would look silent and be dropped as relay_lost after 3 s: that watch is off.
        super().__init__(self._hold, host, port, max_calls=max_calls, idle_timeout=3600, relay_timeout=0)
        self._live = LiveCalls()
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

    def read_in_batches(self) -> BatchEcho | None:
        """Answer audio per ``recvmmsg`` batch (``BatchEcho``) from now on; None where it cannot (no
        native extension, or the SDK does not own its socket): the per-datagram path above stays."""
        from splitrelay.relay.media import native

        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if (
            sock is None
            or self.receiver is None
            or not native.available()
            or not sys.platform.startswith("linux")
        ):
            return None

        def before_send() -> bool:
            batch = self.batch
            if batch is not None and batch.queued:
                batch.flush()  # what the SDK queued leaves first
            buffered = getattr(transport, "get_write_buffer_size", lambda: 0)
            return transport is not None and not buffered()

        echo = BatchEcho(sock, self._live, self.datagram_received, before_send)
        echo.fallback = transport.sendto  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), echo.drain)
        return echo


async def echo_inference(listen: tuple[str, int], max_calls: int, batched: bool = True) -> None:
    server = RawEchoServer(listen[0], listen[1], max_calls=max_calls)
    address = await server.start()
    echo = server.read_in_batches() if batched else None
    try:
        _emit({"event": "ready", "port": address[1], "pid": os.getpid(), "batched": echo is not None})
        await _until_stopped()
    finally:
        stats: dict[str, Any] = {
            **server.stats.as_dict(),
            "echoed": server.echoed,
            "batched": echo is not None,
        }
        if echo is not None:  # the SDK counted only what it saw
            for name in ("datagrams_in", "datagrams_out", "echoed"):
                stats[name] += echo.echoed
            stats["send_errors"] += echo.send_errors
            stats["receive_calls"] = echo.calls
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
