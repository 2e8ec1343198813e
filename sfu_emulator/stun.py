"""A STUN binding responder (RFC 5389) on UDP: the ``stun:`` address the TURN endpoint hands out.

Binding requests get a success response with XOR-MAPPED-ADDRESS (the sender's address as seen here);
anything else is ignored. Message parsing and encoding are aioice's (already a dependency for ICE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from aioice import stun

logger = logging.getLogger("splitrelay.sfu_emulator.stun")

MAX_STUN_BYTES = 1500


class _Responder(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > MAX_STUN_BYTES or self.transport is None:
            self._server.ignored += 1
            return
        try:
            request = stun.parse_message(data)
        except Exception:  # aioice raises ValueError, KeyError or struct.error on malformed input
            self._server.ignored += 1
            return
        if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
            self._server.ignored += 1
            return
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], addr[1])
        response.add_fingerprint()
        self.transport.sendto(bytes(response), addr)
        self._server.answered += 1


class StunServer:
    """Owns one UDP socket; ``start``/``close`` are the whole lifetime."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.ignored = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Responder(self), local_addr=(self._host, self._port)
        )
        self._transport = transport

    @property
    def address(self) -> tuple[str, int]:
        if self._transport is None:
            raise RuntimeError("STUN server is not started")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def url(self) -> str:
        host, port = self.address
        return f"stun:[{host}]:{port}" if ":" in host else f"stun:{host}:{port}"

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)  # let the loop finish closing the socket
