"""The shared UDP port of a relay process: one socket for every call, read and written in batches (issue 17).

Which call a datagram belongs to is ``Demux``'s decision (relay/media/demux.py); this module owns the
socket around it. Each call gets a ``VirtualTransport`` that sends through the shared socket and
receives what the demultiplexer hands its protocol.

Batched (the default): the port reads its socket itself (``loop.add_reader``) and drains it with
``recvmmsg``, up to ``RECV_BATCH`` datagrams per system call and ``RECV_CALLS_PER_TURN`` calls per loop
turn (a busy port cannot starve the loop, nor the inference socket: the rest waits for the next turn);
the native extension (relay/media/native) does the system call, and without it (or with
``SPLITRELAY_NATIVE=0``) a ``recvfrom`` loop with the same bounds delivers the same datagrams in the
same order. What the calls send
goes through one queue: the relay hands it a batch (``batch_sends``: relay/inference/udp_batch.py's
``SendBatch``, one ``sendmmsg`` per loop turn), so order is the order of ``sendto``, per call and across
calls. ``SPLITRELAY_MEDIA_BATCH=0`` keeps the socket in a uvloop datagram transport instead (one
``recvfrom`` per datagram, one ``sendto`` per packet): the A/B of ``splitrelay bench relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from splitrelay.inference.udp_recv import ICMP_ERRORS, sockaddr_address
from splitrelay.relay.media import native
from splitrelay.relay.media.demux import Address, Demux, DemuxLimits, DemuxStats, MediaClaim, _Call
from splitrelay.relay.media.native import Drain, RecvBatch

logger = logging.getLogger(__name__)

_SOCKET_BUFFER = 4 * 1024 * 1024


BATCH_ENV = "SPLITRELAY_MEDIA_BATCH"
"""Set to 0 (or off/false/no) for the unbatched shared port (a uvloop datagram transport)."""
RECV_BATCH = 32
"""Datagrams one ``recvmmsg`` takes at most: libuv's budget per socket and poll (uv__udp_recvmsg reads up
to 32), so when the process is short of CPU the shared port and the inference socket (a uvloop transport)
are read alike. At 64 x 4 per turn the media side took eight times the inference side's share and the
echoes from inference were the datagrams the kernel dropped (measured: 91% lost at 500 calls on half a
core, all of them at the inference socket)."""
RECV_CALLS_PER_TURN = 1
"""``recvmmsg`` calls per readable event: at most RECV_BATCH x this many datagrams per loop turn."""
SEND_BATCH = 64
"""Datagrams per ``sendmmsg`` (``batch_sends``'s default)."""
MAX_QUEUED_BYTES = 4 * 1024 * 1024
"""Bytes waiting for the socket to take them (after EAGAIN); more is dropped and counted."""
_NAME_CACHE = 65536  # source sockaddr -> (host, port); cleared when full

_received_ns = 0  # while a datagram is delivered: when it arrived (see arrival_ns)


def arrival_ns() -> int:
    """When the datagram being delivered arrived: on the batched native port, the kernel's receive stamp of
    that datagram (``native.rx_timestamps``, in ``time.perf_counter_ns``'s clock), or its batch's time when
    it has none (``SPLITRELAY_RX_TIMESTAMPS=0``); on the ``recvfrom`` port, when ``recvfrom`` returned it;
    unbatched, now. The fast path stamps arrivals with it (dwell, RTCP jitter, barge-in), so dwell covers
    the wait in the socket's queue and behind earlier datagrams of the same batch: the C paths use the same
    per-datagram arrival."""
    return _received_ns or time.perf_counter_ns()


class BatchSender(Protocol):
    """What ``batch_sends`` takes: relay/inference/udp_batch.py's ``SendBatch`` (media may not import it)."""

    def add(self, data: bytes, peer: Address) -> None: ...

    def flush(self) -> int: ...

    @property
    def queued(self) -> int: ...


NATIVE_BATCH_ENV = "SPLITRELAY_NATIVE_BATCH"
"""Set to 0 (or off/false/no) to keep the native per-datagram path (no per-batch C path): the A/B."""


def native_batch_enabled() -> bool:
    return os.environ.get(NATIVE_BATCH_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def batching_enabled() -> bool:
    return os.environ.get(BATCH_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


class VirtualTransport(asyncio.DatagramTransport):
    """What one call's aioice protocol holds instead of a socket: sends through the shared one."""

    def __init__(self, port: SharedUdpPort, call: _Call, sockname: Address) -> None:
        super().__init__()
        self._port = port
        self._demux = port.demux
        self._call = call
        self._sockname = sockname
        self._closing = False
        self.native_slots: list[native.InboundSlot] = []
        """Slots of the per-batch C path the call's fast path opened (detached when this closes)."""
        call.transport = self

    @property
    def ufrag(self) -> str:
        return self._call.ufrag

    @property
    def native_inbound(self) -> NativeSlots | None:
        """Where the call's fast path opens its slot in the per-batch C path (None: not running)."""
        forward = self._port._forward
        return None if forward is None or self._closing else _SlotOpener(forward.inbound, self)

    def set_media_claim(self, claim: MediaClaim | None) -> None:
        """The call's fast path says how to offer it SRTP/SRTCP directly (None: it closed)."""
        self._call.media_claim = claim

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing or addr is None:
            self._demux.send_after_close += 1
            return
        self._demux.send_from(self._call, bytes(data), (addr[0], addr[1]))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Unregister the call and tell its protocol, as a socket's close would (on the next loop turn)."""
        if self._closing:
            return
        self._closing = True
        for slot in self.native_slots:  # bounded: one per fast path attached to this transport
            slot.detach()
        self._demux.unregister(self._call)
        self._port._transports.discard(self)
        asyncio.get_running_loop().call_soon(self._call.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._sockname
        if name == "peername":
            return None
        # No "socket": aioice would set buffer sizes on the shared socket for each call.
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._call.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("a shared-port call keeps its protocol")

    def __repr__(self) -> str:
        return f"<VirtualTransport ufrag={self._call.ufrag} closing={self._closing}>"


class NativeSlots(Protocol):
    """What a fast path opens its per-batch slot through (``VirtualTransport.native_inbound``)."""

    def open_slot(self) -> native.InboundSlot | None: ...


class _SlotOpener:
    """Opens a slot and remembers it on the call's transport, so the transport's close detaches it."""

    __slots__ = ("_inbound", "_transport")

    def __init__(self, inbound: native.NativeInbound, transport: VirtualTransport) -> None:
        self._inbound = inbound
        self._transport = transport

    def open_slot(self) -> native.InboundSlot | None:
        slot = self._inbound.open_slot()
        if slot is not None:
            slots = self._transport.native_slots
            slots[:] = [s for s in slots if self._inbound.slots[s.index] is s]  # drop released ones
            slots.append(slot)
        return slot


class InferenceSink(Protocol):
    """Where the per-batch C path's AUDIO_IN goes: the relay's inference socket (relay/inference_link.py
    ``RelayLink``; media may not import it)."""

    def native_fd(self) -> int:
        """Flush what Python queued for the socket; the fd C may ``sendmmsg`` on now, or -1 when the
        socket holds unsent data (C's datagrams then go through ``native_send``, in order)."""
        ...

    def native_send(self, data: bytes, peer: Address) -> None: ...

    def native_sent(self, count: int) -> None:
        """Account ``count`` datagrams C made for the socket (sent by C or through ``native_send``)."""
        ...


class NativeForward:
    """The per-batch C path on a batched native port: runs ``NativeInbound`` over each batch read (C sends
    its AUDIO_IN and observes its dwell) and counts what it routed as the demultiplexer would have."""

    __slots__ = ("_demux", "_sink", "batches", "drain", "finished", "inbound")

    def __init__(
        self,
        inbound: native.NativeInbound,
        sink: InferenceSink,
        demux: Demux,
        recv: native.RecvBatch | None = None,
    ) -> None:
        self.inbound = inbound
        self._sink = sink
        self._demux = demux
        self.batches = 0
        self.finished = 0
        """Datagrams C finished (never seen by Python)."""
        self.drain = inbound.drain_for(recv) if recv is not None and native.native_drain_enabled() else None
        """``recv``'s socket drained batch after batch in one C call per wake-up (``run_drain``); None: one
        C call per batch (``run``, ``SPLITRELAY_NATIVE_DRAIN=0``)."""

    def run(self, recv: native.RecvBatch, count: int) -> int:
        """C over the batch (each datagram's arrival in ``recv.arrivals``); returns how many datagrams it
        finished (``inbound.decisions`` says which)."""
        sink, inbound = self._sink, self.inbound
        nout, sent, finished = inbound.run(recv, count, sink.native_fd())
        self.batches += 1
        if finished:
            self.finished += finished
            demux = self._demux
            demux.datagrams_in += finished
            demux.routed_by_flow += finished
        if nout:
            slots, out_slots = inbound.slots, inbound.out_slots
            for k in range(sent, nout):  # C could not send these (the socket held data): in order
                slot = slots[out_slots[k]]
                if slot is not None and slot.peer is not None:
                    sink.native_send(inbound.out(k), slot.peer)
            sink.native_sent(nout)
        return finished

    def run_drain(self, drain: native.Drain, turns: int) -> int:
        """Up to ``turns`` batches read, run and sent in C (``native.Drain``), then accounted as ``run``
        accounts one: the ``Drain`` status (``DRAIN_PYTHON``: the last batch has datagrams for Python)."""
        sink = self._sink
        status = drain.run(turns, sink.native_fd())
        d = drain.state
        self.batches += d.batches
        finished = d.finished
        if finished:
            self.finished += finished
            demux = self._demux
            demux.datagrams_in += finished
            demux.routed_by_flow += finished
        made = d.made
        if made:
            if status == native.DRAIN_PYTHON:
                inbound = self.inbound
                slots, out_slots = inbound.slots, inbound.out_slots
                for k in range(d.sent[0], d.nout):  # of the last batch: the socket held data, in order
                    slot = slots[out_slots[k]]
                    if slot is not None and slot.peer is not None:
                        sink.native_send(inbound.out(k), slot.peer)
            sink.native_sent(made)
        return status


class _SharedProtocol(asyncio.DatagramProtocol):
    def __init__(self, port: SharedUdpPort) -> None:
        self._port = port

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._port.demux.datagram_received(data, addr if len(addr) == 2 else (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self._port.socket_errors += 1  # ICMP unreachable for one peer: not a reason to stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._port._lost()


class BatchReader:
    """Drains a non-blocking UDP socket into ``deliver(data, addr)``, bounded per call (module docstring).

    ``native=True`` reads with ``recvmmsg`` (relay/media/native ``RecvBatch``); else with ``recvfrom``,
    one datagram per call: the reference, which delivers the same datagrams in the same order. ``stamps``:
    the socket has kernel receive timestamps on (``native.rx_timestamps``), read with each batch.
    """

    def __init__(
        self,
        sock: socket.socket,
        deliver: Callable[[bytes, Address], object],
        *,
        native_path: bool,
        batch: int = RECV_BATCH,
        calls_per_turn: int = RECV_CALLS_PER_TURN,
        stamps: bool = False,
    ) -> None:
        if not 1 <= batch <= native.RECV_BATCH_MAX:
            raise ValueError(f"batch must be 1..{native.RECV_BATCH_MAX}, got {batch}")
        if not 1 <= calls_per_turn <= 64:
            raise ValueError(f"calls_per_turn must be 1..64, got {calls_per_turn}")
        self._sock = sock
        self._deliver = deliver
        self.batch = batch
        self.calls_per_turn = calls_per_turn
        # recvmmsg is Linux's (fastpath.c returns ENOSYS elsewhere): other systems read with recvfrom.
        native_path = native_path and sys.platform.startswith("linux")
        self._recv = (
            native.RecvBatch(sock.fileno(), batch, timed=True, stamps=stamps) if native_path else None
        )
        self.forward: NativeForward | None = None
        """The per-batch C path (``SharedUdpPort.forward_inbound``); None: Python routes every datagram."""
        self._names: dict[bytes, Address] = {}
        self.calls = 0
        """Receive system calls made (empty reads included)."""
        self.datagrams = 0
        self.oversize = 0
        self.errors = 0
        """ICMP errors queued on the socket (a peer's port unreachable) and other receive errors."""

    @property
    def native(self) -> bool:
        return self._recv is not None

    def drain(self) -> int:
        """Read what is there, within this turn's bound; returns how many datagrams were delivered."""
        global _received_ns
        try:
            return self._drain_native() if self._recv is not None else self._drain_python()
        finally:
            _received_ns = 0

    def _drain_native(self) -> int:
        recv = self._recv
        assert recv is not None
        forward = self.forward
        if forward is not None and forward.drain is not None:
            return self._drain_fused(forward, forward.drain)
        batch = self.batch
        delivered = 0
        for _ in range(self.calls_per_turn):
            n = recv.receive()
            self.calls += 1
            if n <= 0:
                if n < 0 and self._error(-n):
                    continue  # an ICMP error took this call; datagrams may wait behind it
                break
            forward = self.forward
            decisions = None
            if forward is not None:
                finished = forward.run(recv, n)
                if finished == n:  # all of it finished in C (never a cut datagram): nothing for Python
                    delivered += n
                    if n < batch:
                        break
                    continue
                if finished:
                    decisions = forward.inbound.decisions
            delivered += self._deliver_batch(recv, n, decisions)
            if n < batch:
                break  # the socket is empty: no need for a call that says so
        self.datagrams += delivered
        return delivered

    def _drain_fused(self, forward: NativeForward, drain: Drain) -> int:
        """``_drain_native`` with the batch loop in C (``NativeForward.run_drain``): Python runs once per
        wake-up, and again only for a batch that has datagrams for it (then as ``_drain_native`` does)."""
        delivered, calls = native.drain_wakeup(
            drain, forward.run_drain, self.calls_per_turn, self.batch, self._error, self._python_batch
        )
        self.calls += calls
        self.datagrams += delivered
        return delivered

    def _python_batch(self, n: int, c_sent: bool) -> int:
        """The last drained batch has datagrams for Python: deliver them as ``_drain_native`` does (C wrote
        each one's arrival into the batch's ``arrivals``)."""
        forward = self.forward
        assert forward is not None and forward.drain is not None
        decisions = forward.inbound.decisions if c_sent else None
        return self._deliver_batch(self._recv, n, decisions)

    def _deliver_batch(self, recv: RecvBatch | None, n: int, decisions: memoryview | None) -> int:
        """Python's part of a batch of ``n`` in ``recv``: every datagram C did not finish (``decisions[i]``
        0: finished; None: it finished none), in order, each with its own arrival (``arrival_ns``). Returns
        the batch's datagrams, cut ones left out."""
        global _received_ns
        assert recv is not None
        deliver, names, arrivals = self._deliver, self._names, recv.arrivals
        mem, names_mem, lengths, name_lengths = recv.mem, recv.names_mem, recv.lengths, recv.name_lengths
        slot, name_slot = native.RECV_SLOT, native.RECV_NAME_SLOT
        delivered = 0
        for i in range(n):
            length = lengths[i]
            if length < 0:
                self.oversize += 1
                continue
            delivered += 1
            if decisions is not None and decisions[i] == 0:
                continue  # finished in C
            start = i * slot
            data = mem[start : start + length]
            start = i * name_slot
            key = names_mem[start : start + name_lengths[i]]
            addr = names.get(key)
            if addr is None:
                try:
                    addr = sockaddr_address(key)
                except ValueError:
                    self.errors += 1
                    continue
                if len(names) >= _NAME_CACHE:
                    names.clear()
                names[key] = addr
            _received_ns = arrivals[i]
            deliver(data, addr)
        return delivered

    def _drain_python(self) -> int:
        global _received_ns
        sock, deliver = self._sock, self._deliver
        limit = native.RECV_SLOT
        delivered = 0
        for _ in range(self.calls_per_turn * self.batch):
            try:
                data, addr = sock.recvfrom(limit + 1)
            except (BlockingIOError, InterruptedError):
                self.calls += 1
                break
            except OSError as exc:
                self.calls += 1
                if self._error(exc.errno or 0):
                    continue
                break
            self.calls += 1
            _received_ns = time.perf_counter_ns()
            if len(data) > limit:
                self.oversize += 1
                continue
            delivered += 1
            deliver(data, addr if len(addr) == 2 else (addr[0], addr[1]))
        self.datagrams += delivered
        return delivered

    def _error(self, code: int) -> bool:
        """Count a receive error; True when reading may go on (an ICMP error for one peer)."""
        self.errors += 1
        if code not in ICMP_ERRORS and self.errors == 1:
            logger.warning("shared port: receive failed: %s", os.strerror(code))
        return code in ICMP_ERRORS


class SocketSender(asyncio.DatagramTransport):
    """The batched shared port's sending side: ``sendto`` now, or after what waits, in order.

    What the socket cannot take yet (EAGAIN) waits in a bounded queue drained when it is writable (as a
    uvloop transport does), so ``SendBatch`` can fall back to ``sendto`` without reordering anything.
    """

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._sock = sock
        self._loop = loop
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._queued = 0
        self._closing = False
        self.errors = 0
        """Datagrams the kernel refused (ICMP errors, EMSGSIZE): counted and skipped."""
        self.drops = 0
        """Datagrams dropped: the queue was full, or the socket closed."""

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            self.drops += 1
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._sock.fileno(), self._write_ready)
            except OSError:
                self.errors += 1
                return
        if self._queued + len(data) > MAX_QUEUED_BYTES:
            self.drops += 1
            return
        self._queue.append((bytes(data), addr))
        self._queued += len(data)

    def _write_ready(self) -> None:
        queue, sock = self._queue, self._sock
        for _ in range(len(queue)):  # bounded by what waits
            data, addr = queue[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
            queue.popleft()
            self._queued -= len(data)
        self._loop.remove_writer(sock.fileno())

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.drops += len(self._queue)
        self._queue.clear()
        self._queued = 0
        with contextlib.suppress(ValueError, OSError):  # the fd may be gone already
            self._loop.remove_writer(self._sock.fileno())

    def abort(self) -> None:
        self.close()


class SharedUdpPort:
    """One UDP socket that carries every call of a process. Build it with ``await SharedUdpPort.open``."""

    def __init__(self, worker: int = 0, limits: DemuxLimits | None = None) -> None:
        self.demux = Demux(self._send_unopened, worker=worker, limits=limits)
        self._transport: asyncio.DatagramTransport | None = None
        self._transports: set[VirtualTransport] = set()
        self._sock: socket.socket | None = None
        self._reader: BatchReader | None = None
        self._forward: NativeForward | None = None
        self._batch: BatchSender | None = None
        self.address: Address = ("", 0)
        self.socket_errors = 0
        self.closed = False

    @classmethod
    async def open(
        cls,
        host: str,
        port: int = 0,
        *,
        worker: int = 0,
        limits: DemuxLimits | None = None,
        batched: bool | None = None,
    ) -> SharedUdpPort:
        """Bind ``host:port`` (0: any free port); ``host`` is an address literal, best not a wildcard.

        ``batched`` (default: unless ``SPLITRELAY_MEDIA_BATCH=0``) reads with ``recvmmsg`` (module
        docstring); the native extension decides how, ``native.available()``.
        """
        address = ipaddress.ip_address(host)  # raises ValueError for a name
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self = cls(worker, limits)
        loop = asyncio.get_running_loop()
        if batching_enabled() if batched is None else batched:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            self._open_batched(loop, socket.socket(family, socket.SOCK_DGRAM), host, port)
            return self
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _SharedProtocol(self), local_addr=(host, port)
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # the kernel caps it at rmem_max/wmem_max
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        self._transport = transport
        self.demux.send = transport.sendto
        name = transport.get_extra_info("sockname")
        self.address = (str(name[0]), int(name[1]))
        if len(name) == 2:  # IPv4: addresses arrive as (host, port), so skip a call frame per datagram
            setattr(protocol, "datagram_received", self.demux.datagram_received)  # noqa: B010
        return self

    def _open_batched(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, host: str, port: int
    ) -> None:
        try:
            sock.setblocking(False)
            sock.bind((host, port))
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # the kernel caps it at rmem_max/wmem_max
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            stamps = native.rx_timestamps(sock.fileno())  # False: off, or not Linux
            self._reader = BatchReader(
                sock, self.demux.datagram_received, native_path=native.available(), stamps=stamps
            )
            sender = SocketSender(sock, loop)
            loop.add_reader(sock.fileno(), self._reader.drain)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._transport = sender
        self.demux.send = sender.sendto
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))

    @property
    def batched(self) -> bool:
        """True when the port reads its socket itself in batches (``recvmmsg`` when ``native``)."""
        return self._reader is not None

    @property
    def native(self) -> bool:
        """True when the batched reads use ``recvmmsg`` (the native extension)."""
        return self._reader is not None and self._reader.native

    def batch_sends(self, factory: Callable[[asyncio.DatagramTransport], BatchSender]) -> bool:
        """Send through ``factory(transport)`` (``SendBatch``: one ``sendmmsg`` per loop turn) from now on.

        Only on the batched port (False otherwise: the uvloop transport keeps sending one by one). Every
        datagram goes through the one queue, so nothing overtakes anything sent before it.
        """
        if self._reader is None or self._transport is None or self.closed:
            return False
        self._batch = factory(self._transport)
        self.demux.send = self._batch.add
        return True

    def forward_inbound(self, sink: InferenceSink) -> bool:
        """Run the per-batch C path (relay/media/native ``NativeInbound``) on this port from now on, its
        AUDIO_IN to ``sink``. Only on the batched native port, and unless ``SPLITRELAY_NATIVE_BATCH=0``;
        False otherwise (every datagram keeps the Python path). Calls attached before keep Python."""
        reader = self._reader
        if reader is None or reader._recv is None or self.closed or not native_batch_enabled():
            return False
        inbound = native.NativeInbound(reader.batch)
        self._forward = reader.forward = NativeForward(inbound, sink, self.demux, reader._recv)
        attach = getattr(sink, "attach_media", None)
        if attach is not None:  # the relay link: inference's AUDIO_OUT may be finished in C toward this port
            attach(self)
        return True

    # The outbound C path's side of this port (relay/inference_link.py): C sends protected RTP on this
    # socket between Python's batches, so what the calls queued leaves first (per call, order holds).

    def native_media_fd(self) -> int:
        """Flush what the calls queued; the socket's fd when it holds nothing unsent, else -1."""
        sock, sender, batch = self._sock, self._transport, self._batch
        if sock is None or self.closed or not isinstance(sender, SocketSender) or sender.is_closing():
            return -1
        if batch is not None and batch.queued:
            batch.flush()
        if sender.get_write_buffer_size():
            return -1
        return sock.fileno()

    def native_media_send(self, data: bytes, addr: Address) -> None:
        """A datagram C made but could not send: through the socket's queue, after what waits there."""
        sender = self._transport
        if sender is not None and not self.closed:
            sender.sendto(data, addr)

    def native_media_sent(self, count: int) -> None:
        """Account ``count`` datagrams C made toward callers, as the demultiplexer counts its sends."""
        self.demux.sent += count

    @property
    def forwarding(self) -> NativeForward | None:
        """The per-batch C path when it runs (its counters: ``finished``, ``batches``)."""
        return self._forward

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified

    def candidate_host(self, host: str) -> bool:
        """Whether a host candidate on ``host`` can use this port (same address, or family on a wildcard)."""
        try:
            want = ipaddress.ip_address(host)
        except ValueError:
            return False
        mine = ipaddress.ip_address(self.host)
        return want == mine or (mine.is_unspecified and want.version == mine.version)

    def mint_ufrag(self, label: str = "") -> str:
        return self.demux.mint_ufrag(label)

    def attach(
        self, ufrag: str, password: str, protocol: asyncio.DatagramProtocol, host: str
    ) -> VirtualTransport:
        """A call's transport for a host candidate on ``host``; OSError (aioice skips it) when refused.

        One candidate per call: on a wildcard port a second address of the same call is refused, since
        the shared socket cannot tell which local address a datagram came to.
        """
        if self.closed or self._transport is None:
            raise OSError(f"shared port {self.address} is closed")
        if not self.candidate_host(host):
            raise OSError(f"shared port {self.address} does not serve host candidates on {host}")
        call = self.demux.register(ufrag, password, protocol)
        transport = VirtualTransport(self, call, (host, self.port))
        self._transports.add(transport)
        return transport

    def stats(self) -> DemuxStats:
        stats = self.demux.stats()
        reader, sender = self._reader, self._transport
        if reader is None or not isinstance(sender, SocketSender):
            return stats
        return dataclasses.replace(
            stats, receive_calls=reader.calls, oversize=reader.oversize, send_queue_drops=sender.drops
        )

    def _send_unopened(self, data: bytes, addr: Address) -> None:
        raise RuntimeError("SharedUdpPort: use `await SharedUdpPort.open(...)`")

    def _lost(self) -> None:
        self.closed = True
        for transport in list(self._transports):  # bounded by DemuxLimits.max_calls
            transport.close()

    def _close_batched(self, sock: socket.socket) -> None:
        """Flush what the calls sent, stop reading, close the socket; the calls' transports close next."""
        if self._reader is not None:
            self._reader.forward = None
        self._forward = None
        if self._batch is not None:
            self._batch.flush()
        assert self._transport is not None
        self._transport.close()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        self._sock = None
        self._lost()

    async def close(self) -> None:
        """Close the socket; every call's transport closes with it (aioice then ends its connection)."""
        if self._transport is None or self.closed:
            self.closed = True
            return
        if self._sock is not None:
            self._close_batched(self._sock)
            return
        self._transport.close()
        for _ in range(100):  # connection_lost arrives on the next turns
            if self.closed:
                break
            await asyncio.sleep(0)
        self._lost()
