"""Batched UDP sends (relay/inference/udp_batch.py) over real loopback sockets, on asyncio's loop and
uvloop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from splitrelay.inference.endpoint import WireEndpoint
from splitrelay.inference.udp_batch import SendBatch, sockaddr
from splitrelay.inference.wire_auth import WireKey

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop_name: str, body: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(asyncio.wait_for(body(), 10))


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.arrived.set()

    async def wait_for(self, n: int) -> list[bytes]:
        for _ in range(n + 1):  # each wake-up brings at least one datagram
            if len(self.got) >= n:
                break
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)
        return self.got


async def endpoint(host: str) -> tuple[asyncio.DatagramTransport, tuple[str, int], Sink]:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sink = Sink()
    rx, _ = await loop.create_datagram_endpoint(lambda: sink, local_addr=(host, 0), family=family)
    tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(host, 0), family=family)
    port = rx.get_extra_info("sockname")[1]
    return tx, (host, port), sink


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_datagrams_leave_in_order_in_batches_of_at_most_max(loop_name: str, host: str) -> None:
    async def body() -> None:
        tx, peer, sink = await endpoint(host)
        batch = SendBatch(tx, max_batch=64)
        assert batch.native  # Linux: sendmmsg, not the fallback
        sent = [bytes([i % 256]) * (1 + i % 200) for i in range(150)]
        for data in sent:
            batch.add(data, peer)
        assert batch.queued == 150 - 128  # two full batches left at once, the rest waits for the turn
        assert batch.batches == 2
        await asyncio.sleep(0)  # the loop turn ends: the remainder is flushed
        assert batch.queued == 0
        assert (batch.batches, batch.datagrams, batch.fallbacks, batch.errors) == (3, 150, 0, 0)
        assert await sink.wait_for(150) == sent
        tx.close()

    run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_fallback_sends_the_same_datagrams_one_by_one(loop_name: str) -> None:
    async def body() -> None:
        tx, peer, sink = await endpoint("127.0.0.1")
        batch = SendBatch(tx, use_sendmmsg=False)
        assert not batch.native
        sent = [b"frame-%d" % i for i in range(10)]
        for data in sent:
            batch.add(data, peer)
        assert batch.flush() == 10
        assert (batch.batches, batch.fallbacks) == (1, 10)
        assert await sink.wait_for(10) == sent
        tx.close()

    run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_refused_datagram_is_counted_and_the_rest_still_leave(loop_name: str) -> None:
    async def body() -> None:
        tx, peer, sink = await endpoint("127.0.0.1")
        batch = SendBatch(tx)
        batch.add(b"before", peer)
        batch.add(b"x" * 70_000, peer)  # over the 65,507-byte UDP limit: EMSGSIZE for this one only
        batch.add(b"after", peer)
        assert batch.flush() == 2
        assert (batch.errors, batch.datagrams) == (1, 2)
        assert await sink.wait_for(2) == [b"before", b"after"]
        tx.close()

    run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_wait_is_observed_from_the_given_time_until_the_batch_left(loop_name: str) -> None:
    async def body() -> None:
        tx, peer, sink = await endpoint("127.0.0.1")
        batch = SendBatch(tx)
        now = [1_000]
        batch.clock = lambda: now[0]
        waits: list[int] = []
        batch.add(b"a", peer, waits.append, 400)
        batch.add(b"b", peer)  # no observer: not timed
        batch.add(b"c", peer, waits.append, 900)
        now[0] = 2_000
        assert waits == []  # nothing observed before the batch leaves
        await asyncio.sleep(0)
        assert waits == [1_600, 1_100]
        await sink.wait_for(3)
        tx.close()

    run(loop_name, body)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_endpoint_send_raw_goes_after_what_is_batched(loop_name: str) -> None:
    """A control message (e.g. CALL_END) must never overtake the audio queued before it."""

    class Endpoint(WireEndpoint):
        async def open(self) -> None:
            await self._open(("127.0.0.1", 0))

    async def body() -> None:
        _, peer, sink = await endpoint("127.0.0.1")
        ep = Endpoint(key=WireKey.generate(), role="relay")
        await ep.open()
        assert ep.send_batched(b"audio-1", peer)
        assert ep.send_batched(b"audio-2", peer)
        ep.send_raw(b"control", peer)
        assert await sink.wait_for(3) == [b"audio-1", b"audio-2", b"control"]
        assert ep.stats.datagrams_out == 3
        await ep._close_socket()
        assert ep.batch is None
        assert not ep.send_batched(b"late", peer)

    run(loop_name, body)


def test_sockaddr_layout_and_bad_peers() -> None:
    v4 = sockaddr(("127.0.0.1", 0x1234))
    assert len(v4) == 16 and v4[2:4] == b"\x12\x34" and v4[4:8] == bytes([127, 0, 0, 1])
    v6 = sockaddr(("::1", 443))
    assert len(v6) == 28 and v6[2:4] == (443).to_bytes(2, "big") and v6[8:24] == bytes(15) + b"\x01"
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        sockaddr(("inference.local", 7000))
    with pytest.raises(ValueError, match=r"port must be 0\.\.65535, got 70000"):
        sockaddr(("127.0.0.1", 70_000))
    with pytest.raises(ValueError, match=r"max_batch must be 1\.\.1024, got 0"):
        SendBatch(None, max_batch=0)  # type: ignore[arg-type]
