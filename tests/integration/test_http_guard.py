"""Every HTTP server we run bounds how long a request may take to arrive (relay/http_guard.py).

Real uvicorn on loopback, real sockets: slow headers, slow bodies, silent connections and a burst
of 40 slowloris clients are all cut at the deadline, while a slow *application* is not.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from splitrelay.devtools.local_edge import _read_body
from splitrelay.relay.http_guard import GuardedH11Protocol, timeout_response
from splitrelay.relay.server import ControlServer

DEADLINE_S = 0.5


class RecordingApp:
    """Answers 200 with the body length; sleeps first when asked, and records disconnects."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.handled: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        for _ in range(10_000):  # bounded
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if scope["path"] == "/slow":
            await asyncio.sleep(DEADLINE_S * 2)
        self.handled.append(len(body))
        payload = json.dumps({"length": len(body)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def server() -> AsyncIterator[tuple[ControlServer, RecordingApp]]:
    app = RecordingApp()
    control = ControlServer(app, "127.0.0.1", 0, read_timeout_s=DEADLINE_S)
    await control.start()
    try:
        yield control, app
    finally:
        await control.stop()


async def _read_all(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), timeout=within)
    return data, time.monotonic() - started


def test_uvicorn_contact_points_are_where_the_guard_expects_them() -> None:
    """Fails loudly on a uvicorn upgrade that moves what http_guard overrides or reads."""
    assert uvicorn.__version__ == "0.55.0", "http_guard.py reads uvicorn internals: re-check them"
    for name in ("connection_made", "connection_lost", "data_received", "handle_events"):
        assert callable(getattr(H11Protocol, name))
    assert issubclass(GuardedH11Protocol, H11Protocol)
    cycle_attributes = RequestResponseCycle.__init__.__code__.co_names
    for name in ("response_complete", "response_started", "more_body"):
        assert name in cycle_attributes


async def test_headers_sent_a_byte_at_a_time_get_408_at_the_deadline(
    server: tuple[ControlServer, RecordingApp],
) -> None:
    control, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    writer.write(b"GET / HTTP/1.1\r\n")

    async def trickle() -> None:
        for byte in b"Host: localhost\r\nX-Slow: " + b"a" * 100:  # never finishes the headers
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    data, took = await _read_all(reader, within=DEADLINE_S * 6)
    trickling.cancel()
    writer.close()
    assert data == timeout_response(DEADLINE_S)
    assert DEADLINE_S * 0.8 <= took <= DEADLINE_S * 4
    assert app.handled == []


async def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(
    server: tuple[ControlServer, RecordingApp],
) -> None:
    control, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    data, took = await _read_all(reader, within=DEADLINE_S * 6)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert took <= DEADLINE_S * 4


async def test_a_body_that_stops_halfway_is_cut_and_the_app_sees_a_disconnect(
    server: tuple[ControlServer, RecordingApp],
) -> None:
    control, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"{" * 10)
    data, took = await _read_all(reader, within=DEADLINE_S * 6)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ")
    assert took <= DEADLINE_S * 4
    for _ in range(100):  # bounded: 1 s for the app's task to see the disconnect
        if app.disconnects:
            break
        await asyncio.sleep(0.01)
    assert app.disconnects == 1
    assert app.handled == []  # no partial body was handled as a request


async def test_a_slow_application_and_keep_alive_requests_are_not_cut(
    server: tuple[ControlServer, RecordingApp],
) -> None:
    """The deadline covers reading the request only: the app may take longer, and so may the next request."""
    control, app = server
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    for path, body in (("/slow", b"x" * 10), ("/", b"y" * 3)):
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=DEADLINE_S * 6)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        assert json.loads(await reader.readexactly(length)) == {"length": len(body)}
        await asyncio.sleep(DEADLINE_S * 0.6)  # idle between requests: keep-alive, not the read deadline
    writer.close()
    assert app.handled == [10, 3]


async def test_forty_slowloris_clients_are_all_released(server: tuple[ControlServer, RecordingApp]) -> None:
    """The issue's case: 40 slow connections used to be held for 90 s."""
    control, app = server
    clients = [await asyncio.open_connection("127.0.0.1", control.port) for _ in range(40)]
    for _, writer in clients:
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    results = await asyncio.gather(*(_read_all(reader, within=DEADLINE_S * 8) for reader, _ in clients))
    for _, writer in clients:
        writer.close()
    assert all(data.startswith(b"HTTP/1.1 408 ") for data, _ in results)
    assert max(took for _, took in results) <= DEADLINE_S * 6
    # and the server still answers a well-behaved client at once
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=DEADLINE_S * 4)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert app.handled == [0]


async def test_the_local_edge_never_handles_a_partial_body() -> None:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    assert await _read_body(receive) is None
