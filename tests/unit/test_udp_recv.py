"""The SDK's batched receive (relay/inference/udp_recv.py, issue 17) on loopback sockets.

Differential: the ``recvmmsg`` reader (cffi, ABI mode) and the ``recvfrom`` reference are fed the same
datagrams and must deliver the same (bytes, address) pairs in the same order, within the same per-turn
bound; truncated datagrams are dropped and counted, ICMP errors counted and never raised.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from splitrelay.inference import udp_recv
from splitrelay.inference.udp_recv import RecvBatch, SocketTransport, sockaddr_address

Address = tuple[str, int]
Delivered = list[tuple[bytes, Address]]

needs_recvmmsg = pytest.mark.skipif(not udp_recv.available(), reason="libc has no recvmmsg (not Linux)")
IP_RECVERR = 11  # Linux: report ICMP errors on an unconnected UDP socket
IPV6_RECVERR = 25


def _socket(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def _ipv6_or_skip() -> socket.socket:
    try:
        return _socket(socket.AF_INET6, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> socket.AddressFamily:
    value: socket.AddressFamily = request.param
    if value == socket.AF_INET6:
        _ipv6_or_skip().close()
    return value


def _host(family: socket.AddressFamily) -> str:
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


@pytest.fixture
def senders(family: socket.AddressFamily) -> Iterator[list[socket.socket]]:
    socks = [_socket(family, _host(family)) for _ in range(3)]
    yield socks
    for sock in socks:
        sock.close()


def _traffic(count: int, slot: int) -> list[tuple[int, bytes]]:
    """(sender index, datagram): varied sizes, an empty one, one at the slot's size and one past it."""
    out = [(i % 3, bytes([i % 256]) * (1 + (i * 37) % 1400)) for i in range(count)]
    out[5] = (1, b"")
    out[9] = (2, b"\x90" * slot)
    out[11] = (0, b"\x91" * (slot + 1))  # cut by the kernel: dropped and counted on both paths
    out[40] = (1, b"\x92" * (slot + 3000))
    return out


def _collect(got: Delivered) -> udp_recv.Deliver:
    return lambda data, addr: got.append((data, addr))


def _drain_all(reader: RecvBatch, got: Delivered) -> list[int]:
    per_turn = []
    for _ in range(100):
        n = reader.drain()
        per_turn.append(n)
        if n == 0:
            break
    return per_turn


def _run(
    use_recvmmsg: bool,
    family: socket.AddressFamily,
    traffic: list[tuple[int, bytes]],
    senders: list[socket.socket],
    batch: int = udp_recv.RECV_BATCH,
    calls_per_turn: int = udp_recv.RECV_CALLS_PER_TURN,
    slot: int = udp_recv.RECV_SLOT,
) -> tuple[Delivered, list[int], RecvBatch]:
    got: Delivered = []
    with _socket(family, _host(family)) as sock:
        reader = RecvBatch(
            sock,
            _collect(got),
            use_recvmmsg=use_recvmmsg,
            batch=batch,
            calls_per_turn=calls_per_turn,
            slot=slot,
        )
        assert reader.native is use_recvmmsg
        to = sock.getsockname()[:2]
        for index, data in traffic:
            senders[index].sendto(data, to)
        per_turn = _drain_all(reader, got)
    return got, per_turn, reader


@needs_recvmmsg
def test_recvmmsg_and_recvfrom_deliver_the_same_datagrams_in_order(
    family: socket.AddressFamily, senders: list[socket.socket]
) -> None:
    slot = 2000
    traffic = _traffic(300, slot)
    fast = _run(True, family, traffic, senders, batch=64, calls_per_turn=4, slot=slot)
    reference = _run(False, family, traffic, senders, batch=64, calls_per_turn=4, slot=slot)
    addresses = [s.getsockname()[:2] for s in senders]
    want = [(data, addresses[i]) for i, data in traffic if len(data) <= slot]
    assert len(want) == 298
    assert fast[0] == want
    assert reference[0] == want
    assert fast[2].oversize == reference[2].oversize == 2
    # A turn reads at most 4 x 64 datagrams (the oversize ones count against the bound), then the rest.
    assert fast[1] == reference[1] == [254, 44, 0]
    assert fast[2].most_per_turn == reference[2].most_per_turn == 254
    assert fast[2].calls == 4 + 1 + 1  # a short batch ends the turn: no call to learn it is empty
    assert reference[2].calls == 256 + 45 + 1  # one per datagram, then one that found the socket empty
    assert fast[2].errors == reference[2].errors == 0


@needs_recvmmsg
def test_the_default_bound_is_32_per_turn_and_the_largest_datagram_fits(
    family: socket.AddressFamily, senders: list[socket.socket]
) -> None:
    """The defaults (32 per call, one call per turn, 4096-byte slots) on both paths, with the largest
    datagram a slot holds, an empty one and one a byte too long."""
    traffic = [(i % 3, bytes([i]) * (i * 13)) for i in range(70)]
    traffic[3] = (0, b"\x01" * udp_recv.RECV_SLOT)
    traffic[4] = (1, b"\x02" * (udp_recv.RECV_SLOT + 1))
    results = [_run(native, family, traffic, senders) for native in (True, False)]
    addresses = [s.getsockname()[:2] for s in senders]
    want = [(data, addresses[i]) for i, data in traffic if len(data) <= udp_recv.RECV_SLOT]
    for got, per_turn, reader in results:
        assert got == want
        assert per_turn == [31, 32, 6, 0]  # 32 read in the first turn, one of them dropped
        assert reader.oversize == 1
        assert reader.most_per_turn <= udp_recv.RECV_BATCH


def test_the_largest_udp_datagram_with_a_64k_slot() -> None:
    """A 64 KiB slot takes the largest datagram IPv4 can carry (65507 bytes), on both paths."""
    largest = b"\x7f" * 65507
    for native in (True, False) if udp_recv.available() else (False,):
        got: Delivered = []
        with _socket(socket.AF_INET, "127.0.0.1") as sock, _socket(socket.AF_INET, "127.0.0.1") as sender:
            reader = RecvBatch(sock, _collect(got), use_recvmmsg=native, slot=65536, batch=4)
            sender.sendto(largest, sock.getsockname())
            sender.sendto(b"", sock.getsockname())
            assert _drain_all(reader, got) == [2, 0]
            assert got == [(largest, sender.getsockname()), (b"", sender.getsockname())]
            assert reader.oversize == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR is Linux's")
@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_recvmmsg), False])
def test_an_icmp_error_is_counted_not_raised_and_reading_goes_on(native: bool) -> None:
    errors: list[int] = []
    got: Delivered = []
    with _socket(socket.AF_INET, "127.0.0.1") as sock, _socket(socket.AF_INET, "127.0.0.1") as sender:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        closed = _socket(socket.AF_INET, "127.0.0.1")
        closed_port = closed.getsockname()
        closed.close()  # nothing listens there now: the kernel answers port unreachable
        reader = RecvBatch(sock, lambda d, a: got.append((d, a)), use_recvmmsg=native, on_error=errors.append)
        source = sender.getsockname()
        sock.sendto(b"to nobody", closed_port)
        for i in range(3):
            sender.sendto(bytes([i]), sock.getsockname())
        for _ in range(10):  # the error takes one call (one turn with the default bound), then the data
            reader.drain()
            if len(got) == 3:
                break
    assert errors == [errno.ECONNREFUSED]
    assert reader.errors == 1
    assert got == [(bytes([i]), source) for i in range(3)]


def test_bounds_are_checked() -> None:
    with _socket(socket.AF_INET, "127.0.0.1") as sock:
        for bad, match in (
            ({"batch": 0}, "batch must be"),
            ({"batch": 1025}, "batch must be"),
            ({"calls_per_turn": 0}, "calls_per_turn must be"),
            ({"slot": 0}, "slot must be"),
        ):
            with pytest.raises(ValueError, match=match):
                RecvBatch(sock, lambda d, a: None, **bad)  # type: ignore[arg-type]


def test_sockaddr_address_reads_both_families_and_refuses_others() -> None:
    v4 = (
        socket.AF_INET.to_bytes(2, sys.byteorder)
        + (5004).to_bytes(2, "big")
        + bytes([10, 0, 0, 7])
        + bytes(8)
    )
    assert sockaddr_address(v4) == ("10.0.0.7", 5004)
    v6 = (
        socket.AF_INET6.to_bytes(2, sys.byteorder)
        + (443).to_bytes(2, "big")
        + bytes(4)
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + bytes(4)
    )
    assert sockaddr_address(v6) == ("2001:db8::1", 443)
    with pytest.raises(ValueError, match="not an IPv4 or IPv6"):
        sockaddr_address(b"\x01\x00" + bytes(14))


@pytest.mark.parametrize("native", [pytest.param(True, marks=needs_recvmmsg), False])
async def test_on_the_loop_each_turn_delivers_at_most_32_in_order(native: bool) -> None:
    loop = asyncio.get_running_loop()
    got: Delivered = []
    turns: list[int] = []

    class Protocol(asyncio.DatagramProtocol):
        lost = asyncio.Event()

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set()

    protocol = Protocol()
    transport = udp_recv.open_socket(
        ("127.0.0.1", 0), loop, protocol, lambda d, a: got.append((d, a)), use_recvmmsg=native
    )
    reader = transport.reader
    with _socket(socket.AF_INET, "127.0.0.1") as sender:
        to = transport.get_extra_info("sockname")
        for i in range(100):
            sender.sendto(i.to_bytes(2, "big"), to)
        for _ in range(50):  # one turn each
            await asyncio.sleep(0)
            turns.append(len(got))
            if len(got) == 100:
                break
        assert got == [(i.to_bytes(2, "big"), sender.getsockname()) for i in range(100)]
    assert reader.most_per_turn <= udp_recv.RECV_BATCH
    steps = [b - a for a, b in zip([0, *turns], turns, strict=False)]
    assert max(steps) <= udp_recv.RECV_BATCH
    transport.close()
    await asyncio.wait_for(protocol.lost.wait(), 5)
    assert transport.is_closing()


class _FullSocket:
    """A socket whose sends say EAGAIN until told otherwise; its fd is a real one for the loop."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.full = True
        self.sent: list[tuple[bytes, Any]] = []

    def fileno(self) -> int:
        return self.real.fileno()

    def sendto(self, data: bytes, addr: Any) -> int:
        if self.full:
            raise BlockingIOError(errno.EAGAIN, "full")
        self.sent.append((bytes(data), addr))
        return len(data)

    def close(self) -> None:
        self.real.close()


async def test_the_transport_keeps_order_while_the_socket_is_full() -> None:
    loop = asyncio.get_running_loop()
    real = _socket(socket.AF_INET, "127.0.0.1")
    fake = _FullSocket(real)
    reader = RecvBatch(real, lambda d, a: None, use_recvmmsg=False)
    transport = SocketTransport(fake, loop, asyncio.DatagramProtocol(), reader)  # type: ignore[arg-type]
    peer = ("127.0.0.1", 9)
    for i in range(5):
        transport.sendto(bytes([i]), peer)
    assert transport.get_write_buffer_size() == 5 and fake.sent == []
    fake.full = False
    transport.sendto(b"\x05", peer)  # waits behind the queue, not ahead of it
    for _ in range(20):
        await asyncio.sleep(0)
        if len(fake.sent) == 6:
            break
    assert fake.sent == [(bytes([i]), peer) for i in range(6)]
    assert transport.get_write_buffer_size() == 0
    transport.close()
    transport.sendto(b"late", peer)
    assert transport.drops == 1
    await asyncio.sleep(0)
