"""The shared port's batched receive and send (relay/media/shared_port.py, issue 17) on loopback sockets.

Differential: the native reader (``recvmmsg`` in relay/media/native/fastpath.c) and the Python reference
(``recvfrom``) are fed the same datagrams and must deliver the same (bytes, address) pairs in the same
order, within the same per-turn bound. Sending: what the calls send leaves in order, in one ``sendmmsg``
per loop turn through the relay's ``SendBatch``, and waits in order when the socket is full.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from splitrelay.inference.udp_batch import SendBatch
from splitrelay.relay.media import native, shared_port
from splitrelay.relay.media.shared_port import BatchReader, SharedUdpPort, SocketSender

Address = tuple[str, int]
Delivered = list[tuple[bytes, Address]]

needs_native = pytest.mark.skipif(not native.available(), reason=f"native path: {native.status()}")


@pytest.fixture(autouse=True)
def _native_decided_afresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The load decision is cached per process: a test elsewhere that forced the Python path must not
    decide these (they failed in the full suite, run after such a test)."""
    monkeypatch.delenv(native.NATIVE_ENV, raising=False)
    native.reset()
    yield
    native.reset()


def _socket(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def senders() -> Iterator[list[socket.socket]]:
    socks = [_socket(socket.AF_INET, "127.0.0.1") for _ in range(3)]
    yield socks
    for sock in socks:
        sock.close()


def _traffic(count: int) -> list[tuple[int, bytes]]:
    """(sender index, datagram): varied sizes, an empty one, one at the slot's size and one past it."""
    out = [(i % 3, bytes([i % 256]) * (1 + (i * 37) % 1400)) for i in range(count)]
    out[5] = (1, b"")
    out[9] = (2, b"\x90" * native.RECV_SLOT)
    out[11] = (0, b"\x91" * (native.RECV_SLOT + 1))  # cut by the kernel: dropped and counted on both paths
    return out


def _send(traffic: list[tuple[int, bytes]], senders: list[socket.socket], to: Address) -> None:
    for index, data in traffic:
        senders[index].sendto(data, to)


def _drain_all(reader: BatchReader) -> tuple[Delivered, list[int]]:
    got: Delivered = []
    reader._deliver = lambda data, addr: got.append((data, addr))
    per_turn = []
    for _ in range(100):
        n = reader.drain()
        per_turn.append(n)
        if n == 0:
            break
    return got, per_turn


def _run_path(native_path: bool, traffic: list[tuple[int, bytes]], senders: list[socket.socket]) -> Any:
    with _socket(socket.AF_INET, "127.0.0.1") as sock:
        reader = BatchReader(sock, lambda d, a: None, native_path=native_path, batch=64, calls_per_turn=4)
        _send(traffic, senders, sock.getsockname())
        got, per_turn = _drain_all(reader)
        return got, per_turn, reader


@needs_native
def test_native_and_python_readers_deliver_the_same_datagrams_in_order(senders: list[socket.socket]) -> None:
    traffic = _traffic(300)
    got_native, turns_native, native_reader = _run_path(True, traffic, senders)
    got_python, turns_python, python_reader = _run_path(False, traffic, senders)
    addresses = [s.getsockname() for s in senders]
    want = [(data, addresses[i]) for i, data in traffic if len(data) <= native.RECV_SLOT]
    assert got_native == want
    assert got_python == want
    assert native_reader.oversize == python_reader.oversize == 1
    # One turn takes at most 4 x 64 datagrams (the oversize one counts against the bound), then the rest.
    assert turns_native == turns_python == [255, 44, 0]
    assert native_reader.calls == 4 + 1 + 1  # a short batch ends the turn: no call to learn it is empty
    assert python_reader.calls == 256 + 45 + 1  # one per datagram, then one that found the socket empty


@needs_native
def test_native_and_python_readers_agree_on_ipv6() -> None:
    try:
        receivers = [_socket(socket.AF_INET6, "::1") for _ in range(2)]
        sender = _socket(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    results = []
    name = sender.getsockname()
    with sender, receivers[0], receivers[1]:
        for sock, native_path in zip(receivers, (True, False), strict=True):
            reader = BatchReader(sock, lambda d, a: None, native_path=native_path)
            for i in range(20):
                sender.sendto(bytes([i]) * (i + 1), sock.getsockname()[:2])
            results.append(_drain_all(reader)[0])
    assert results[0] == results[1] == [(bytes([i]) * (i + 1), ("::1", name[1])) for i in range(20)]


def test_the_reader_bounds_are_checked() -> None:
    with _socket(socket.AF_INET, "127.0.0.1") as sock:
        with pytest.raises(ValueError, match="batch must be"):
            BatchReader(sock, lambda d, a: None, native_path=False, batch=0)
        with pytest.raises(ValueError, match="calls_per_turn must be"):
            BatchReader(sock, lambda d, a: None, native_path=False, calls_per_turn=0)


@pytest.mark.parametrize("native_path", [pytest.param(True, marks=needs_native), False])
def test_a_batch_shares_one_arrival_time_and_it_ends_with_the_batch(
    native_path: bool, senders: list[socket.socket]
) -> None:
    seen: list[int] = []
    with _socket(socket.AF_INET, "127.0.0.1") as sock:
        reader = BatchReader(
            sock, lambda d, a: seen.append(shared_port.arrival_ns()), native_path=native_path
        )
        _send([(0, b"\x80" * 20)] * 5, senders, sock.getsockname())
        reader.drain()
    after = shared_port.arrival_ns()
    assert len(seen) == 5 and after > max(seen)
    if native_path:
        assert len(set(seen)) == 1  # one recvmmsg: one time for the batch


# --- sending -------------------------------------------------------------------------------------------


class _FullSocket:
    """A socket that refuses (EAGAIN) until told otherwise, and records what it took."""

    def __init__(self) -> None:
        self.full = True
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Address) -> int:
        if self.full:
            raise BlockingIOError
        self.sent.append(bytes(data))
        return len(data)

    def fileno(self) -> int:
        return 99


class _Loop:
    def __init__(self) -> None:
        self.writers: dict[int, Any] = {}

    def add_writer(self, fd: int, callback: Any) -> None:
        self.writers[fd] = callback

    def remove_writer(self, fd: int) -> None:
        self.writers.pop(fd, None)


def test_a_full_socket_keeps_the_order_and_the_queue_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    sock, loop = _FullSocket(), _Loop()
    sender = SocketSender(sock, loop)  # type: ignore[arg-type]
    peer = ("127.0.0.1", 9)
    for i in range(3):
        sender.sendto(bytes([i]) * 10, peer)
    assert sender.get_write_buffer_size() == 30 and 99 in loop.writers
    sock.full = False
    sender.sendto(b"\x03" * 10, peer)  # behind what waits, though the socket would take it now
    assert sock.sent == []
    loop.writers[99]()
    assert sock.sent == [bytes([i]) * 10 for i in range(4)] and 99 not in loop.writers
    assert sender.get_write_buffer_size() == 0
    monkeypatch.setattr(shared_port, "MAX_QUEUED_BYTES", 25)
    sock.full = True
    for i in range(3):
        sender.sendto(bytes([i]) * 10, peer)
    assert sender.drops == 1 and sender.get_write_buffer_size() == 20
    sender.close()
    assert sender.drops == 3 and sender.is_closing()


async def test_calls_sends_leave_in_one_sendmmsg_in_order() -> None:
    port = await SharedUdpPort.open("127.0.0.1", 0, batched=True)
    batches: list[SendBatch] = []

    def make(transport: asyncio.DatagramTransport) -> SendBatch:
        batches.append(SendBatch(transport, max_batch=64))
        return batches[-1]

    try:
        assert port.batch_sends(make)
        caller = _socket(socket.AF_INET, "127.0.0.1")
        with caller:
            calls = [
                port.demux.register(port.mint_ufrag(), "p" * 22, asyncio.DatagramProtocol()) for _ in "ab"
            ]
            to = caller.getsockname()
            for i in range(40):
                port.demux.send_from(calls[i % 2], bytes([0x80, i]) + bytes(30), to)
            await asyncio.sleep(0.05)
            got = [caller.recv(2048)[1] for _ in range(40)]
        assert got == list(range(40))
        assert batches[0].batches == 1 and batches[0].datagrams == 40 and batches[0].fallbacks == 0
        assert port.stats().sent == 40
    finally:
        await port.close()


async def test_the_environment_picks_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shared_port.BATCH_ENV, "0")
    port = await SharedUdpPort.open("127.0.0.1", 0)
    assert not port.batched and not port.native
    assert not port.batch_sends(lambda t: SendBatch(t))  # the uvloop transport sends one by one
    await port.close()
    monkeypatch.delenv(shared_port.BATCH_ENV)
    port = await SharedUdpPort.open("127.0.0.1", 0)
    assert port.batched and port.native == native.available()
    await port.close()
    assert port.closed
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    native.reset()
    try:
        port = await SharedUdpPort.open("127.0.0.1", 0)
        assert port.batched and not port.native  # the recvfrom reference
        await port.close()
    finally:
        monkeypatch.delenv(native.NATIVE_ENV)
        native.reset()
    assert os.environ.get(native.NATIVE_ENV) is None


def test_without_linux_the_reader_uses_recvfrom(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastpath.c has recvmmsg on Linux only (elsewhere it returns ENOSYS): the reader must not use it."""
    monkeypatch.setattr(sys, "platform", "darwin")
    with _socket(socket.AF_INET, "127.0.0.1") as sock:
        assert not BatchReader(sock, lambda d, a: None, native_path=True).native
