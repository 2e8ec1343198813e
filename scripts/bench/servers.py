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
AGENTS = ("realtime", "burst")
"""How the echo inference answers (``--agent``): each frame at once, or in bursts (``BurstHold``)."""
BURST_FRAMES = 50  # frames in one burst agent response: one second of audio, sent at once
BURST_QUIET_S = 0.1  # a call that sent nothing for this long ends its response short (the run ended)
BURST_TICK_S = 0.02  # how often held responses are checked for BURST_QUIET_S
HOLD_SLOT = 256  # bytes a held datagram may take (the bench's AUDIO_IN are at most ~120); longer: at once
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads call ids over the phases


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


def first_response_frames(call_id: int, frames: int = BURST_FRAMES) -> int:
    """Frames in a call's first burst response (1..frames), by its call id: later responses are whole,
    so each call's bursts leave at a phase of its own and a thousand calls' do not leave together."""
    return 1 + (((call_id * _GOLDEN) & 0xFFFFFFFFFFFFFFFF) >> 40) % frames


class BurstHold:
    """The burst agent (``--agent burst``): answers like a TTS agent, a response of ``frames`` frames
    (one second) sent at once, ahead of real time, so the relay must pace it onto the caller's timeline
    (relay/playout.py) instead of passing each frame through as it comes.

    Each call's echoes (already rewritten to AUDIO_OUT) are copied into its row of a hold buffer; when
    the row holds its response, the response leaves in one ``sendmmsg`` from there, to the address its
    datagrams came from, its first frame carrying MARKER (a new response) and no other. A call's first
    response is shorter (``first_response_frames``) so calls' bursts are spread over the second, as
    unsynchronised agents' are. A response still short when its call has been quiet for ``quiet_s``
    leaves as it is (``flush_quiet``: the caller stopped, the run ended), so every frame is answered.
    One relay per echo (the bench's): rows are keyed by call id.
    """

    def __init__(
        self, owner: BatchEcho, rows: int, *, frames: int = BURST_FRAMES, quiet_s: float = BURST_QUIET_S
    ) -> None:
        import numpy as np

        from splitrelay.relay.media import native

        if not 1 <= frames <= 1000:
            raise ValueError(f"burst frames must be 1..1000, got {frames}")
        if not 1 <= rows <= 100_000:
            raise ValueError(f"burst rows must be 1..100000, got {rows}")
        self._owner = owner
        self.frames = frames
        self.quiet_ns = int(quiet_s * 1e9)
        self.mem = np.zeros((rows, frames, HOLD_SLOT), dtype=np.uint8)
        self.names = np.zeros((rows, native.RECV_NAME_SLOT), dtype=np.uint8)
        self.name_lengths = np.zeros(rows, dtype=np.int64)
        self.held = np.zeros(rows, dtype=np.int64)
        """Frames row r holds now."""
        self.target = np.full(rows, frames, dtype=np.int64)
        """Frames row r's current response will hold."""
        self.last_ns = np.zeros(rows, dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._free = list(range(rows - 1, -1, -1))
        ffi = owner.ffi
        self._vec = ffi.new("struct mmsghdr[]", rows * frames)
        self._iov = ffi.new("struct iovec[]", rows * frames)
        base = ffi.from_buffer(self.mem)
        names = ffi.from_buffer(self.names)
        for i in range(rows * frames):  # held datagram i (row i // frames) leaves from its slot
            self._iov[i].iov_base = base + i * HOLD_SLOT
            hdr = self._vec[i].msg_hdr
            hdr.msg_iov = ffi.addressof(self._iov, i)
            hdr.msg_iovlen = 1
            hdr.msg_name = names + (i // frames) * native.RECV_NAME_SLOT
            hdr.msg_namelen = native.RECV_NAME_SLOT  # the kernel reads the family's own length of it
        self._keep = (base, names)
        words = np.frombuffer(ffi.buffer(self._iov), dtype=np.uint64).reshape(rows, frames, 2)
        self._iov_len = words[:, :, 1]
        self.taken = 0
        """Datagrams held."""
        self.released = 0
        """Datagrams sent from the hold."""
        self._timer: asyncio.TimerHandle | None = None
        self.responses = 0
        self.short_responses = 0
        """Responses released by ``flush_quiet`` before they were whole."""
        self.send_errors = 0

    def rows_for(self, ids: Any) -> Any:
        """The hold row of each live call id (sorted ``ids``); rows of calls that ended are freed (what
        they held is dropped: their calls are gone)."""
        import numpy as np

        live = {int(i) for i in ids}
        for call_id in [c for c in self._row_of if c not in live]:
            ended = self._row_of.pop(call_id)
            self.held[ended] = 0
            self._free.append(ended)
        rows: list[int] = []
        for call_id in ids.tolist():
            known = self._row_of.get(call_id)
            if known is not None:
                rows.append(known)
            elif not self._free:
                rows.append(-1)  # more live calls than rows: this one is answered at once
            else:
                row = self._free.pop()
                self._row_of[call_id] = row
                self.held[row] = 0
                self.target[row] = first_response_frames(call_id, self.frames)
                rows.append(row)
        return np.array(rows, dtype=np.int64)

    def take(self, at: Any, rows: Any, now_ns: int) -> None:
        """Hold datagrams ``at`` of the owner's last batch (rewritten AUDIO_OUT, in arrival order) in
        ``rows``; release every response that is now whole. One datagram per row per round, so a call
        with two frames in one batch keeps their order (and a whole response leaves before the next)."""
        import numpy as np

        self.taken += len(at)
        for _ in range(len(at)):  # bounded: each round places at least one datagram
            if not len(at):
                break
            _, first = np.unique(rows, return_index=True)
            first.sort()
            self._place(at[first], rows[first], now_ns)
            rest = np.ones(len(at), dtype=bool)
            rest[first] = False
            at, rows = at[rest], rows[rest]

    def _place(self, at: Any, rows: Any, now_ns: int) -> None:
        owner = self._owner
        slot = self.held[rows]
        self.mem[rows, slot, :] = owner.mem[at, :HOLD_SLOT]
        self.mem[rows, slot, 3] = (slot == 0) * _MARKER  # MARKER on a response's first frame only
        self._iov_len[rows, slot] = owner.lengths[at]
        self.names[rows] = owner.name_mem[at]
        self.name_lengths[rows] = owner.name_lengths[at]
        self.held[rows] = slot + 1
        self.last_ns[rows] = now_ns
        for row in rows[self.held[rows] >= self.target[rows]].tolist():
            self.release(row)

    def start(self, tick_s: float = BURST_TICK_S) -> None:
        """Check for quiet calls every ``tick_s`` on the running loop until ``stop``."""
        import time

        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.flush_quiet(time.monotonic_ns())
            self._timer = loop.call_later(tick_s, tick)

        self._timer = loop.call_later(tick_s, tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def flush_quiet(self, now_ns: int) -> int:
        """Release every response whose call sent nothing for ``quiet_ns``; returns how many."""
        import numpy as np

        quiet = np.flatnonzero((self.held > 0) & (now_ns - self.last_ns > self.quiet_ns)).tolist()
        for row in quiet:
            self.short_responses += 1
            self.release(row)
        return len(quiet)

    def release(self, row: int) -> None:
        """Send row ``row``'s response now, in order, in one ``sendmmsg`` (or behind unsent data)."""
        from splitrelay.inference.udp_recv import sockaddr_address

        count = int(self.held[row])
        if count <= 0:
            return
        owner = self._owner
        self.held[row] = 0
        self.target[row] = self.frames
        self.responses += 1
        self.released += count
        if not owner.before_send():
            peer = sockaddr_address(bytes(self.names[row, : self.name_lengths[row]]))
            for j in range(count):
                owner.fallback(bytes(self.mem[row, j, : self._iov_len[row, j]]), peer)
            return
        start = row * self.frames
        done = 0
        for _ in range(count):  # each round sends some, or skips one datagram the kernel refused
            if done >= count:
                break
            sent = owner.libc.sendmmsg(owner.fd, self._vec + start + done, count - done, 0)
            if sent <= 0:
                self.send_errors += 1
                sent = 1
            done += sent


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
        self.fd = sock.fileno()
        self._live = live
        self._live_version = -1
        self._live_ids: dict[Peer, Any] = {}
        self._deliver = deliver
        self.before_send = before_send
        self.fallback: Any = None
        """``sendto(data, peer)`` for echoes while the socket holds unsent data."""
        self.batch = batch
        self.calls_per_turn = calls_per_turn
        ffi, self.libc = sendmmsg_binding()
        self.ffi = ffi
        self.hold: BurstHold | None = None
        """The burst agent's hold (``--agent burst``); None: each echo leaves at once (realtime)."""
        self._hold_rows: Any = None  # the hold row of each of ``_hold_peer``'s live ids
        self._hold_peer: Peer | None = None
        self._positions: Any = None  # per datagram of the last batch: its call's index in the live ids
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
        self.mem = np.frombuffer(recv.mem, dtype=np.uint8).reshape(batch, native.RECV_SLOT)
        self.name_mem = np.frombuffer(recv.names_mem, dtype=np.uint8).reshape(batch, native.RECV_NAME_SLOT)
        self.lengths = np.frombuffer(recv.lengths, dtype=np.int32)
        self.name_lengths = np.frombuffer(recv.name_lengths, dtype=np.int32)
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

        recv, mem = self._recv, self.mem
        total = 0
        for _ in range(self.calls_per_turn):
            n = recv.receive()
            self.calls += 1
            if n <= 0:
                break
            total += n
            echo = self._echoes(n)
            at = np.flatnonzero(echo)
            answered = len(at)
            if answered:
                mem[at, 1] = _AUDIO_OUT  # as audio_out_from_audio_in: the type, and only MARKER of the flags
                mem[at, 2] = 0
                mem[at, 3] &= _MARKER
                now = echo
                if self.hold is not None:  # the burst agent holds them; what it cannot hold goes now
                    at = self._hold_back(at)
                    if len(at) < answered:
                        now = np.zeros(n, dtype=bool)
                        now[at] = True
                self._iov_len[at] = self.lengths[at]
                if len(at):
                    self._send(now.tolist(), len(at), n)
            if answered < n:
                self._deliver_rest(echo.tolist(), n)
            if n < self.batch:
                break
        return total

    def _hold_back(self, at: Any) -> Any:
        """The burst agent: hand the batch's echoes ``at`` that fit a hold slot to ``hold`` (which sends
        them as responses); returns those to answer at once (too long to hold, or a call with no row)."""
        import time

        hold = self.hold
        assert hold is not None and self._hold_rows is not None and self._positions is not None
        rows = self._hold_rows[self._positions[at]]
        keep = (self.lengths[at] <= HOLD_SLOT) & (rows >= 0)
        hold.take(at[keep], rows[keep], time.monotonic_ns())
        return at[~keep]

    def _echoes(self, n: int) -> Any:
        """Which of the batch's ``n`` datagrams to answer here: AUDIO_IN of a live call of its relay."""
        import numpy as np

        rows = self.mem[:n]
        lengths = self.lengths[:n]
        echo = (lengths > _HEADER_SIZE) & (rows[:, 1] == _AUDIO_IN) & (rows[:, 0] == _VERSION)
        if not echo.any():
            return echo
        first = int(np.argmax(echo))
        peer = self._peer(first)
        ids = self._live_ids_of(peer) if peer is not None else None
        if ids is None or not len(ids):
            echo[:] = False
            return echo
        name_lengths = self.name_lengths[:n]
        names = self.name_mem[:n]
        echo &= (name_lengths == name_lengths[first]) & (names == names[first]).all(axis=1)
        call_ids = np.ascontiguousarray(rows[:, 4:12]).view(">u8").ravel().astype(np.uint64)
        position = np.minimum(np.searchsorted(ids, call_ids), len(ids) - 1)
        echo &= ids[position] == call_ids
        self._positions = position
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
            self._hold_peer = None
        ids = self._live_ids.get(peer)
        if self.hold is not None and ids is not None and self._hold_peer != peer:
            self._hold_rows = self.hold.rows_for(ids)  # the hold serves one relay: this batch's
            self._hold_peer = peer
        return ids

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
        if not self.before_send():
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
            sent = self.libc.sendmmsg(self.fd, self._vec + i, end - i, 0)
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

    def read_in_batches(self, agent: str = "realtime") -> BatchEcho | None:
        """Answer audio per ``recvmmsg`` batch (``BatchEcho``) from now on; None where it cannot (no
        native extension, or the SDK does not own its socket): the per-datagram path above stays.
        ``agent`` "burst": answer in one-second responses (``BurstHold``), checked for quiet calls on
        this loop until the echo's ``hold.stop()``."""
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
        if agent == "burst":
            echo.hold = BurstHold(echo, self.max_calls)
            echo.hold.start()
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), echo.drain)
        return echo


async def echo_inference(
    listen: tuple[str, int], max_calls: int, batched: bool = True, agent: str = "realtime"
) -> None:
    if agent not in AGENTS:
        raise ValueError(f"agent: must be one of {', '.join(AGENTS)}, got {agent!r}")
    server = RawEchoServer(listen[0], listen[1], max_calls=max_calls)
    address = await server.start()
    echo = server.read_in_batches(agent) if batched else None
    hold = echo.hold if echo is not None else None
    if agent == "burst" and hold is None:
        await server.close(grace=0.5)
        raise RuntimeError("--agent burst needs the batched echo (the native extension; --batch)")
    try:
        _emit(
            {
                "event": "ready",
                "port": address[1],
                "pid": os.getpid(),
                "batched": echo is not None,
                "agent": agent,
            }
        )
        await _until_stopped()
    finally:
        stats: dict[str, Any] = {
            **server.stats.as_dict(),
            "echoed": server.echoed,
            "batched": echo is not None,
            "agent": agent,
        }
        if echo is not None:  # the SDK counted only what it saw
            for name in ("datagrams_in", "datagrams_out", "echoed"):
                stats[name] += echo.echoed
            stats["send_errors"] += echo.send_errors
            stats["receive_calls"] = echo.calls
        if hold is not None:
            hold.stop()
            stats["datagrams_in"] += hold.taken
            stats["datagrams_out"] += hold.released
            stats["echoed"] += hold.released
            stats["send_errors"] += hold.send_errors
            stats["burst_frames"] = hold.frames
            stats["burst_responses"] = hold.responses
            stats["burst_short_responses"] = hold.short_responses
            stats["burst_held_at_stop"] = int(hold.held.sum())
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
