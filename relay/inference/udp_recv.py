"""Batched UDP receive for the inference SDK: ``recvmmsg(2)`` through cffi, at most 32 datagrams a turn.

A uvloop (or asyncio) datagram transport reads one datagram per ``recvmsg``, plus an empty one that
says the socket is drained. At hundreds of calls an agent receives tens of thousands of AUDIO_IN
datagrams a second, so here the endpoint owns its socket instead: ``loop.add_reader`` on its fd runs
``RecvBatch.drain``, which reads up to ``RECV_BATCH`` datagrams in one ``recvmmsg`` and hands each to
``deliver(data, (host, port))`` in arrival order. One call per readable event and loop turn (libuv's
budget of 32 per socket and poll): what is left waits one turn, epoll being level-triggered, so one busy
socket cannot starve the loop's other work.

Nothing is compiled: ``recvmmsg`` is called through cffi's ABI mode (as ``udp_batch.py`` calls
``sendmmsg``) into buffers allocated once. Where libc has no ``recvmmsg`` (not Linux), or with
``use_recvmmsg=False``, a ``recvfrom`` loop with the same bounds is the reference: it delivers the same
(bytes, address) pairs in the same order (tests/unit/test_udp_recv.py). Receive errors an ICMP message
leaves on the socket (ECONNREFUSED: a peer's port is closed) are counted, never raised; datagrams longer
than a slot (``RECV_SLOT``, well above the wire's 1400 bytes) are cut by the kernel, dropped and counted.

``SocketTransport`` is the sending side of such a socket: ``sendto`` now, or after what already waits, in
order, from a bounded queue drained when the socket is writable (as a uvloop transport does), so
``SendBatch`` works on it unchanged.

This module must not import relay/media (the SDK installs without the relay): the relay's own batched
reader (relay/media/shared_port.py ``BatchReader``) uses its native extension instead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import cffi

logger = logging.getLogger("splitrelay.udp_recv")

Address = tuple[str, int]
Deliver = Callable[[bytes, Address], object]

RECV_BATCH: Final = 32
"""Datagrams per ``recvmmsg`` call: libuv's budget per socket and poll."""
RECV_BATCH_MAX: Final = 1024  # UIO_MAXIOV
RECV_CALLS_PER_TURN: Final = 1
"""``recvmmsg`` calls per readable event: at most RECV_BATCH x this many datagrams per loop turn."""
RECV_SLOT: Final = 4096
"""Bytes per datagram slot: a wire datagram is at most 1400 (wire.MAX_DATAGRAM); longer ones are dropped."""
NAME_SLOT: Final = 128  # sizeof(struct sockaddr_storage)
MSG_TRUNC: Final = 0x20  # Linux's value; recvmmsg sets it in msg_flags of a datagram longer than its slot
MAX_QUEUED_BYTES: Final = 4 << 20  # SocketTransport: bytes waiting for a full socket before drops
_NAME_CACHE: Final = 4096  # raw source addresses remembered (an agent hears from a handful of relays)

ENV: Final = "SPLITRELAY_INFERENCE_RECV_BATCH"
"""``0`` keeps the SDK's uvloop/asyncio datagram transport (one ``recvmsg`` per datagram)."""

ICMP_ERRORS: Final = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)
"""Errors an ICMP message for an earlier send leaves on a UDP socket: counted; reading goes on."""

_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int recvmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout);
"""


def _load_recvmmsg() -> tuple[Any, Any] | None:
    """cffi's FFI and libc with ``recvmmsg``, or None where it is missing (not Linux/glibc/musl)."""
    if not sys.platform.startswith("linux"):  # the struct layouts above are Linux's
        return None
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        libc = ffi.dlopen(None)
        getattr(libc, "recvmmsg")  # noqa: B009 (resolves the symbol now, not on the first read)
    except (OSError, AttributeError):
        return None
    return ffi, libc


_RECVMMSG = _load_recvmmsg()


def available() -> bool:
    """True where ``recvmmsg`` can be called (Linux libc)."""
    return _RECVMMSG is not None


def enabled() -> bool:
    """False when SPLITRELAY_INFERENCE_RECV_BATCH=0 asks for the datagram transport."""
    return os.environ.get(ENV, "1").strip() != "0"


def sockaddr_address(name: bytes) -> Address:
    """A raw ``sockaddr_in``/``sockaddr_in6`` (as recvmmsg fills it) to the (host, port) a socket gives."""
    family = int.from_bytes(name[0:2], sys.byteorder)
    port = int.from_bytes(name[2:4], "big")
    if family == socket.AF_INET and len(name) >= 8:
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port
    if family == socket.AF_INET6 and len(name) >= 24:
        host = socket.inet_ntop(socket.AF_INET6, name[8:24])
        scope = int.from_bytes(name[24:28], sys.byteorder) if len(name) >= 28 else 0
        if scope:  # link-local: as Python's socket module names it
            try:
                host = f"{host}%{socket.if_indextoname(scope)}"
            except OSError:
                host = f"{host}%{scope}"
        return host, port
    raise ValueError(f"not an IPv4 or IPv6 socket address (family {family}, {len(name)} bytes)")


class RecvBatch:
    """Drains a non-blocking UDP socket into ``deliver(data, addr)``, bounded per call (module docstring).

    ``use_recvmmsg=False`` (or no ``recvmmsg`` in libc) reads with ``recvfrom``, one datagram per call:
    the reference, which delivers the same datagrams in the same order within the same bounds.
    """

    def __init__(
        self,
        sock: socket.socket,
        deliver: Deliver,
        *,
        use_recvmmsg: bool = True,
        batch: int = RECV_BATCH,
        calls_per_turn: int = RECV_CALLS_PER_TURN,
        slot: int = RECV_SLOT,
        on_error: Callable[[int], object] | None = None,
    ) -> None:
        if not 1 <= batch <= RECV_BATCH_MAX:
            raise ValueError(f"batch must be 1..{RECV_BATCH_MAX}, got {batch}")
        if not 1 <= calls_per_turn <= 64:
            raise ValueError(f"calls_per_turn must be 1..64, got {calls_per_turn}")
        if not 1 <= slot <= 65536:
            raise ValueError(f"slot must be 1..65536 bytes, got {slot}")
        self._sock = sock
        self._fd = sock.fileno()
        self._deliver = deliver
        self._on_error = on_error
        self.batch = batch
        self.calls_per_turn = calls_per_turn
        self.slot = slot
        self._stopped = False
        self._names: dict[bytes, Address] = {}
        self._native = _RECVMMSG if use_recvmmsg else None
        if self._native is not None:
            ffi = self._native[0]
            self._mem = ffi.new("char[]", batch * slot)
            self._name_mem = ffi.new("char[]", batch * NAME_SLOT)
            self._vec = ffi.new("struct mmsghdr[]", batch)
            self._iov = ffi.new("struct iovec[]", batch)
            for i in range(batch):
                self._iov[i].iov_base = self._mem + i * slot
                self._iov[i].iov_len = slot
                hdr = self._vec[i].msg_hdr
                hdr.msg_iov = ffi.addressof(self._iov, i)
                hdr.msg_iovlen = 1
                hdr.msg_name = self._name_mem + i * NAME_SLOT
            self._data = ffi.buffer(self._mem)
            self._name_data = ffi.buffer(self._name_mem)
        self.calls = 0
        """Receive system calls made (empty reads and errors included)."""
        self.datagrams = 0
        """Datagrams delivered."""
        self.oversize = 0
        """Datagrams longer than a slot: dropped."""
        self.errors = 0
        """Receive errors: ICMP errors queued on the socket (a peer's port unreachable) and others."""
        self.most_per_turn = 0
        """The most datagrams one ``drain`` delivered (never more than batch x calls_per_turn)."""

    @property
    def native(self) -> bool:
        """True when reads use ``recvmmsg``."""
        return self._native is not None

    def stop(self) -> None:
        """Deliver nothing more, not even the rest of a batch already read (the socket is closing)."""
        self._stopped = True

    def drain(self) -> int:
        """Read what is there, within this turn's bound; returns how many datagrams were delivered."""
        if self._stopped:
            return 0
        delivered = self._drain_native() if self._native is not None else self._drain_python()
        self.datagrams += delivered
        if delivered > self.most_per_turn:
            self.most_per_turn = delivered
        return delivered

    def _drain_native(self) -> int:
        ffi, libc = self._native  # type: ignore[misc]
        vec, batch, slot, fd = self._vec, self.batch, self.slot, self._fd
        data, name_data, names, deliver = self._data, self._name_data, self._names, self._deliver
        delivered = 0
        for _ in range(self.calls_per_turn):
            for i in range(batch):
                vec[i].msg_hdr.msg_namelen = NAME_SLOT  # in/out: the kernel writes the length it used
            n = libc.recvmmsg(fd, vec, batch, 0, ffi.NULL)
            self.calls += 1
            if n <= 0:
                if n < 0 and self._error(ffi.errno):
                    continue  # an ICMP error took this call; datagrams may wait behind it
                break
            for i in range(n):
                if self._stopped:
                    return delivered
                entry = vec[i]
                hdr = entry.msg_hdr
                if hdr.msg_flags & MSG_TRUNC:
                    self.oversize += 1
                    continue
                start = i * NAME_SLOT
                key = name_data[start : start + hdr.msg_namelen]
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
                start = i * slot
                delivered += 1
                deliver(data[start : start + entry.msg_len], addr)
            if n < batch:
                break  # the socket is empty: no need for a call that says so
        return delivered

    def _drain_python(self) -> int:
        sock, deliver, limit = self._sock, self._deliver, self.slot
        delivered = 0
        for _ in range(self.calls_per_turn * self.batch):
            if self._stopped:
                break
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
            if len(data) > limit:
                self.oversize += 1
                continue
            delivered += 1
            deliver(data, (addr[0], addr[1]))
        return delivered

    def _error(self, code: int) -> bool:
        """Count a receive error; True when reading may go on (an ICMP error for one peer, EINTR)."""
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        if code == errno.EINTR:
            return True
        self.errors += 1
        if self._on_error is not None:
            self._on_error(code)
        if code not in ICMP_ERRORS and self.errors == 1:
            logger.warning("udp receive failed: %s (further errors only counted)", os.strerror(code))
        return code in ICMP_ERRORS


class SocketTransport(asyncio.DatagramTransport):
    """A datagram transport over a socket this module reads: sends now, or in order after what waits.

    ``close`` stops the reader, removes the fd from the loop, closes the socket and calls the protocol's
    ``connection_lost`` on the next loop turn, as asyncio's transports do.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.DatagramProtocol,
        reader: RecvBatch,
    ) -> None:
        super().__init__()
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._protocol = protocol
        self._reader = reader
        self._queue: deque[tuple[bytes, Any]] = deque()
        self._queued = 0
        self._closing = False
        self._writing = False
        self.errors = 0
        """Datagrams the kernel refused (ICMP errors, EMSGSIZE): counted and skipped."""
        self.drops = 0
        """Datagrams dropped: the queue was full, or the transport closed."""

    @property
    def reader(self) -> RecvBatch:
        return self._reader

    def start_reading(self) -> None:
        self._loop.add_reader(self._fd, self._reader.drain)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            self.drops += 1
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self.errors += 1
                self._protocol.error_received(exc)
                return
        if self._queued + len(data) > MAX_QUEUED_BYTES:
            self.drops += 1
            return
        self._queue.append((bytes(data), addr))
        self._queued += len(data)
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._write_ready)

    def _write_ready(self) -> None:
        queue, sock = self._queue, self._sock
        for _ in range(len(queue)):  # bounded by what waits
            data, addr = queue[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.errors += 1
                self._protocol.error_received(exc)
            queue.popleft()
            self._queued -= len(data)
        self._writing = False
        self._loop.remove_writer(self._fd)

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
        self._reader.stop()
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self.drops += len(self._queue)
        self._queue.clear()
        self._queued = 0
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def open_socket(
    local: Address,
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.DatagramProtocol,
    deliver: Deliver,
    *,
    buffer_size: int = 0,
    use_recvmmsg: bool = True,
    on_error: Callable[[int], object] | None = None,
) -> SocketTransport:
    """Bind a non-blocking UDP socket to ``local``, read by a ``RecvBatch`` registered on the loop.

    The caller calls ``protocol.connection_made(transport)`` before the first turn can deliver.
    """
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(local)
        if buffer_size:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)
                except OSError:  # a smaller kernel limit is fine
                    pass
        reader = RecvBatch(sock, deliver, use_recvmmsg=use_recvmmsg, on_error=on_error)
        transport = SocketTransport(sock, loop, protocol, reader)
        transport.start_reading()
    except BaseException:
        sock.close()
        raise
    return transport
