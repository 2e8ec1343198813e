"""The emulator's HTTP server drops slow clients: headers sent byte by byte (slowloris), slow bodies.

uvicorn has no read timeout of its own; the emulator uses the guard every server of ours uses
(relay/http_guard.py: headers and body within READ_TIMEOUT_S) and the API bounds the time a body may
take (http_api.read_json). Shortened here to keep the test fast.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from splitrelay.emulator import http_api
from splitrelay.emulator import server as emulator_server
from splitrelay.emulator.server import EmulatorServer
from tests.emulator_fixtures import APP_ID, APP_SECRET, emulator_config

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 0.5


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EmulatorServer]:
    monkeypatch.setattr(emulator_server, "READ_TIMEOUT_S", HEADER_TIMEOUT_S)
    monkeypatch.setattr(http_api, "BODY_TIMEOUT_S", HEADER_TIMEOUT_S)
    async with EmulatorServer(emulator_config()) as running:
        yield running


async def _closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    started = time.monotonic()
    async with asyncio.timeout(within):
        data = await reader.read()  # until the server closes
    return time.monotonic() - started, data


async def test_headers_sent_byte_by_byte_are_cut_off(server: EmulatorServer) -> None:
    assert server.info is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.info.port)
    request = (
        f"POST /v1/apps/{APP_ID}/sessions/new HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP_SECRET}\r\n"
    )
    started = time.monotonic()
    closed = False
    for byte in request.encode():  # bounded: one byte every 50 ms, never finishing the headers
        if reader.at_eof():
            closed = True
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        await asyncio.sleep(0.05)
        if time.monotonic() - started > 5 * HEADER_TIMEOUT_S:
            break
    if not closed:
        await _closed_after(reader, 2 * HEADER_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.8 <= elapsed <= 3 * HEADER_TIMEOUT_S, elapsed
    writer.close()


async def test_a_slow_body_gets_408(server: EmulatorServer) -> None:
    assert server.info is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.info.port)
    writer.write(
        f"POST /v1/apps/{APP_ID}/sessions/new HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP_SECRET}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    async with asyncio.timeout(4 * HEADER_TIMEOUT_S):
        status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 408"), status
    writer.close()


async def test_a_prompt_client_is_served_and_kept_alive(server: EmulatorServer) -> None:
    """The deadline re-arms after each response: a keep-alive client's next request still works."""
    assert server.info is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.info.port)
    request = (
        f"POST /v1/apps/{APP_ID}/sessions/new HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {APP_SECRET}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    for _ in range(2):
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            status = await reader.readline()
            assert status.startswith(b"HTTP/1.1 201"), status
            headers = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(h for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length")).split(
                    b":"
                )[1]
            )
            await reader.readexactly(length)
        await asyncio.sleep(HEADER_TIMEOUT_S * 0.6)  # idle, but under the deadline
    writer.close()
