"""Run the emulator in this event loop: HTTP (uvicorn) + STUN + the emulated SFU, started and stopped as one.

Tests start it in-process (port 0, loopback) and stop it; ``splitrelay emulator serve`` runs it until a
signal. The bound ports are known after :meth:`EmulatorServer.start`, so ``--port 0`` works.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from splitrelay.emulator.config import EmulatorConfig
from splitrelay.emulator.emulator import Emulator
from splitrelay.emulator.http_api import API_PREFIX, create_app
from splitrelay.emulator.stun import StunServer
from splitrelay.emulator.turn import TurnService
from splitrelay.relay.server import bind_tcp

GRACEFUL_SHUTDOWN_S = 2.0
HEADER_TIMEOUT_S = 10.0
"""A request's headers must arrive within this long of the connection or the previous response."""
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 1000


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header read deadline (uvicorn has none: a slowloris holds a slot).

    The deadline runs from the connection (and again from each response) until a request's headers
    are complete; a client still sending headers then is disconnected. Bodies are bounded in time by
    the API (http_api.read_json).
    """

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


@dataclass(frozen=True)
class StartInfo:
    """What a client needs to find the emulator (secrets excluded)."""

    base_url: str
    host: str
    port: int
    stun_url: str
    app_ids: tuple[str, ...]
    turn_key_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "emulator_started",
            "base_url": self.base_url,
            "host": self.host,
            "port": self.port,
            "stun_url": self.stun_url,
            "app_ids": list(self.app_ids),
            "turn_key_ids": list(self.turn_key_ids),
        }


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class EmulatorServer:
    """One emulator: ``async with EmulatorServer(config) as server: server.info.base_url``."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.emulator = Emulator(config)
        self.stun = StunServer(config.host, config.stun_port)
        self.turn = TurnService(config, lambda: (self.stun.url(),))
        self.app = create_app(self.emulator, self.turn)
        self._uvicorn: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self.info: StartInfo | None = None

    async def start(self) -> StartInfo:
        config = self.config
        sock = bind_tcp(config.host, config.port, "emulator API")
        try:
            await self.stun.start()
            await self.emulator.start()
            server_config = uvicorn.Config(
                self.app,
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
                http=GuardedH11Protocol,
                timeout_keep_alive=KEEP_ALIVE_S,
                limit_concurrency=MAX_CONNECTIONS,
                h11_max_incomplete_event_size=16 * 1024,
            )
            server_config.load()
            server = uvicorn.Server(server_config)
            server.lifespan = server_config.lifespan_class(server_config)
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            await self.stun.close()
            await self.emulator.close()
            raise
        self._uvicorn = server
        self._socket = sock
        port = int(sock.getsockname()[1])
        self.info = StartInfo(
            base_url=f"http://{_url_host(config.host)}:{port}{API_PREFIX}",
            host=config.host,
            port=port,
            stun_url=self.stun.url(),
            app_ids=tuple(config.apps),
            turn_key_ids=tuple(config.turn_keys),
        )
        return self.info

    async def stop(self) -> None:
        """Stop accepting requests, end every session, close the sockets. Idempotent."""
        server, self._uvicorn = self._uvicorn, None
        if server is not None:
            for listener in server.servers:
                listener.close()
            for connection in list(server.server_state.connections):
                connection.shutdown()
            try:
                async with asyncio.timeout(GRACEFUL_SHUTDOWN_S):
                    for listener in server.servers:
                        await listener.wait_closed()
            except TimeoutError:
                for task in list(server.server_state.tasks):
                    task.cancel()
        await self.emulator.close()
        await self.stun.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
