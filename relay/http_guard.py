"""A read deadline for every HTTP request our uvicorn servers take (relay, supervisor, local edge).

uvicorn (0.55, h11) times out only the idle gap *after* a response (``timeout_keep_alive``). A
client that opens a connection and sends nothing, or sends its headers or body a byte at a time,
holds a connection and a task for as long as it likes: 40 such clients were held for 90 s. nginx
answers this with ``client_header_timeout`` and ``client_body_timeout``; uvicorn has no such option,
so this subclass of its h11 protocol arms one timer per request, from the connection's first byte
(or the first byte after the previous response) until the request's last body byte. If it fires, the
client gets ``408 Request Timeout`` when no response has started and the connection is closed; the
application sees ``http.disconnect`` from ``receive()``.

It touches uvicorn's private protocol attributes (``cycle``, ``transport``, ``more_body``), so
uvicorn is pinned exactly and ``tests/integration/test_http_guard.py`` fails loudly on an upgrade
that moves them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_READ_TIMEOUT_S: Final = 10.0
"""Headers and body of one request must arrive within this (nginx's client_header/body_timeout)."""
KEEP_ALIVE_S: Final = 5
"""Idle time allowed between requests on one connection (uvicorn's own default)."""
CLIENT_KEEP_ALIVE_S: Final = 2.0
"""Our HTTP clients drop an idle pooled connection after this, well before any server of ours (5 s)
closes it: reusing a connection the server is closing fails the request ("server disconnected")."""
MAX_CONNECTIONS: Final = 1000
"""Beyond this many open connections uvicorn answers 503 at once instead of queueing."""


def timeout_response(read_timeout_s: float) -> bytes:
    """The 408 sent when a request's read deadline passes before any response started."""
    body = (
        '{"error": {"code": "request_timeout", "message": '
        f'"request headers and body not received within {read_timeout_s:g} s"}}}}'
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request (headers and body)."""

    read_timeout_s: float = REQUEST_READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self.timed_out = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()
        super().data_received(data)
        if self._request_read():
            self._disarm()

    def _between_requests(self) -> bool:
        """No request in flight: the next byte starts one (and so starts its deadline)."""
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _request_read(self) -> bool:
        """The current request's headers and whole body have arrived."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body

    def _arm(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _expire(self) -> None:
        self._read_deadline = None
        self.timed_out += 1
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            transport.write(timeout_response(self.read_timeout_s))
        transport.close()


def guarded_config_kwargs(read_timeout_s: float = REQUEST_READ_TIMEOUT_S) -> dict[str, Any]:
    """The uvicorn.Config arguments every server of ours uses: this protocol and its limits."""
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"read_timeout_s": read_timeout_s})
    return {
        "http": protocol,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": MAX_CONNECTIONS,
        "h11_max_incomplete_event_size": 16 * 1024,
    }
