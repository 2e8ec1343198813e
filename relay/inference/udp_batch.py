"""Batched UDP sends: the datagrams one event-loop turn produces for a socket leave in one ``sendmmsg``.

The relay forwards every caller packet to inference as its own datagram. One ``sendto`` each costs a
system call, and on the receiving host a wake-up of the inference process per packet; at hundreds of
calls per core that is a large share of the relay's CPU (docs/benchmarks.md). Here datagrams queue
while the loop runs the callbacks of one poll (the packets that arrived together) and are flushed by
one ``sendmmsg(2)`` at the end of that turn, or as soon as ``max_batch`` are queued: the added wait is
the rest of that turn's work, measured as part of the relay's dwell.

Python has no ``sendmmsg``; it is called through cffi's ABI mode (cffi is already loaded by
pylibsrtp), so nothing is compiled. Where libc has no ``sendmmsg`` (not Linux), ``flush`` sends
each datagram with the transport's own ``sendto``, as it also does while the transport holds
unsent data (uvloop queues on EAGAIN), so datagrams never overtake each other.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final

import cffi

logger = logging.getLogger("splitrelay.udp_batch")

Peer = tuple[str, int]  # numeric host and port (the wire endpoints' peer key, too)
ObserveNs = Callable[[int], object]
"""Told how long a datagram waited, in ns, from the time given to ``add`` until its batch left."""

MAX_BATCH_DEFAULT: Final = 16
MAX_BATCH_LIMIT: Final = 1024  # the kernel's UIO_MAXIOV: sendmmsg takes at most this many at once

_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""


def _load_sendmmsg() -> tuple[Any, Any] | None:
    """cffi's FFI and libc with ``sendmmsg``, or None where it is missing (not Linux/glibc/musl)."""
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        libc = ffi.dlopen(None)
        getattr(libc, "sendmmsg")  # noqa: B009 (resolves the symbol now, not on the first send)
    except (OSError, AttributeError):
        return None
    return ffi, libc


_SENDMMSG = _load_sendmmsg()


def sendmmsg_binding() -> tuple[Any, Any]:
    """cffi's FFI (with ``struct mmsghdr`` and ``struct iovec``) and libc, for callers that build their own
    message vectors from buffers they hold (the relay benchmark's load side); RuntimeError where libc has
    no ``sendmmsg``."""
    if _SENDMMSG is None:
        raise RuntimeError("sendmmsg: this libc has none (Linux only)")
    return _SENDMMSG


def sockaddr(peer: Peer) -> bytes:
    """The raw ``sockaddr_in``/``sockaddr_in6`` for a numeric (host, port), as the kernel reads it."""
    host, port = peer
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"peer port must be 0..65535, got {port}")
    address = ipaddress.ip_address(host)  # ValueError for a name: the wire protocol resolves first
    family = struct.pack("=H", socket.AF_INET if address.version == 4 else socket.AF_INET6)
    if address.version == 4:
        return family + struct.pack("!H4s8x", port, address.packed)
    return family + struct.pack("!HI16s", port, 0, address.packed) + struct.pack("=I", 0)


class SendBatch:
    """Queue datagrams for one UDP transport and flush them together (see the module docstring)."""

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        *,
        max_batch: int = MAX_BATCH_DEFAULT,
        use_sendmmsg: bool = True,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH_LIMIT:
            raise ValueError(f"max_batch must be 1..{MAX_BATCH_LIMIT}, got {max_batch}")
        self._transport = transport
        # uvloop's and asyncio's datagram transports both have it; typeshed's DatagramTransport does not.
        self._buffered: Callable[[], int] = getattr(transport, "get_write_buffer_size", lambda: 0)
        self.max_batch = max_batch
        self._data: list[bytes] = []
        self._peers: list[Peer] = []
        self._waits: list[tuple[ObserveNs, int]] = []
        self._scheduled = False
        self._names: dict[Peer, Any] = {}
        self._fd = -1
        self.clock: Callable[[], int] = time.perf_counter_ns
        self._native = _SENDMMSG if use_sendmmsg else None
        if self._native is not None:
            sock = transport.get_extra_info("socket")
            self._fd = sock.fileno() if sock is not None else -1
            if self._fd < 0:
                self._native = None
        if self._native is not None:
            ffi = self._native[0]
            self._vec = ffi.new("struct mmsghdr[]", max_batch)
            self._iov = ffi.new("struct iovec[]", max_batch)
            for i in range(max_batch):
                self._vec[i].msg_hdr.msg_iov = ffi.addressof(self._iov, i)
                self._vec[i].msg_hdr.msg_iovlen = 1
        self.batches = 0
        """Flushes that sent at least one datagram."""
        self.datagrams = 0
        """Datagrams handed to the kernel (or to the transport's sendto)."""
        self.fallbacks = 0
        """Datagrams sent one by one through the transport (no sendmmsg, or the transport had a queue)."""
        self.errors = 0
        """Datagrams the kernel refused (counted and skipped; the rest of the batch still goes)."""

    @property
    def native(self) -> bool:
        """True when flushes use ``sendmmsg``."""
        return self._native is not None

    @property
    def queued(self) -> int:
        return len(self._data)

    @property
    def fd(self) -> int:
        """The socket's file descriptor when flushes use ``sendmmsg``, else -1."""
        return self._fd if self._native is not None else -1

    def add(self, data: bytes, peer: Peer, observe: ObserveNs | None = None, since_ns: int = 0) -> None:
        """Queue one datagram; ``observe`` gets (left - ``since_ns``) once the batch holding it left."""
        self._data.append(data)
        self._peers.append(peer)
        if observe is not None:
            self._waits.append((observe, since_ns))
        if len(self._data) >= self.max_batch:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> int:
        """Send everything queued now, in order; returns how many datagrams left. Never raises."""
        data, peers, waits = self._data, self._peers, self._waits
        if not data:
            return 0
        self._data, self._peers, self._waits = [], [], []
        transport = self._transport
        if transport.is_closing():
            self.errors += len(data)
            return 0
        if self._native is None or self._buffered():
            for datagram, peer in zip(data, peers, strict=True):
                transport.sendto(datagram, peer)
            self.fallbacks += len(data)
            sent = len(data)
        else:
            sent = self._sendmmsg(data, peers)
        self.datagrams += sent
        self.batches += 1
        if waits:
            now = self.clock()
            for observe, since_ns in waits:
                observe(now - since_ns)
        return sent

    def _sendmmsg(self, data: list[bytes], peers: list[Peer]) -> int:
        ffi, libc = self._native  # type: ignore[misc]
        vec, iov, names = self._vec, self._iov, self._names
        buffers = []  # keeps each datagram's cffi buffer alive until this method returns
        for i, (datagram, peer) in enumerate(zip(data, peers, strict=True)):
            name = names.get(peer)
            if name is None:
                if len(names) >= 4096:  # a relay talks to a handful of inference hosts; stay bounded
                    names.clear()
                name = names[peer] = ffi.new("char[]", sockaddr(peer))
            buffer = ffi.from_buffer(datagram)
            buffers.append(buffer)
            iov[i].iov_base = buffer
            iov[i].iov_len = len(datagram)
            hdr = vec[i].msg_hdr
            hdr.msg_name = name
            hdr.msg_namelen = len(name)
        total = len(data)
        start = sent = 0
        for _ in range(total):  # each round sends at least one datagram or skips a refused one
            if start >= total:
                break
            n = libc.sendmmsg(self._fd, vec + start, total - start, 0)
            if n > 0:
                sent += n
                start += n
                continue
            code = ffi.errno
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                # The socket buffer is full: hand the rest to the transport, which queues in order.
                for datagram, peer in zip(data[start:], peers[start:], strict=True):
                    self._transport.sendto(datagram, peer)
                self.fallbacks += total - start
                return sent + total - start
            self.errors += 1  # e.g. EMSGSIZE for this one datagram: skip it, send the others
            if self.errors == 1:
                reason = errno.errorcode.get(code, str(code))
                logger.warning("sendmmsg refused a datagram: %s (further refusals only counted)", reason)
            start += 1
        return sent
