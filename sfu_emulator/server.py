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

from splitrelay.emulator.config import EmulatorConfig
from splitrelay.emulator.emulator import Emulator
from splitrelay.emulator.http_api import API_PREFIX, create_app
from splitrelay.emulator.stun import StunServer
from splitrelay.emulator.turn import TurnService
from splitrelay.relay.http_guard import REQUEST_READ_TIMEOUT_S, guarded_config_kwargs
from splitrelay.relay.media.peer import CandidatePolicy
from splitrelay.relay.media.shared_port import SharedUdpPort
from splitrelay.relay.server import bind_tcp

GRACEFUL_SHUTDOWN_S = 2.0
READ_TIMEOUT_S = REQUEST_READ_TIMEOUT_S
"""A request's headers and body must arrive within this (relay/http_guard.py's guard, which every server
of ours uses: uvicorn has no read deadline of its own, so a slowloris would hold a slot)."""


@dataclass(frozen=True)
class StartInfo:
    """What a client needs to find the emulator (secrets excluded)."""

    base_url: str
    host: str
    port: int
    stun_url: str
    app_ids: tuple[str, ...]
    turn_key_ids: tuple[str, ...]
    media_address: tuple[str, int] | None = None
    """The one UDP socket every session shares (``EmulatorConfig.media_port``); None: one per session."""

    def to_json(self) -> dict[str, Any]:
        return {
            "media_address": list(self.media_address) if self.media_address else None,
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
        self.media: SharedUdpPort | None = None
        """The shared media socket, when ``config.media_port`` is set."""
        self.info: StartInfo | None = None

    async def start(self) -> StartInfo:
        config = self.config
        sock = bind_tcp(config.host, config.port, "emulator API")
        try:
            await self.stun.start()
            addresses = config.candidates.addresses
            if config.media_port is not None and addresses is not None:  # the config checked: one address
                self.media = await SharedUdpPort.open(addresses[0], config.media_port)
                self.emulator.candidates = CandidatePolicy(addresses=addresses, shared_port=self.media)
            await self.emulator.start()
            server_config = uvicorn.Config(
                self.app,
                lifespan="off",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
                **guarded_config_kwargs(READ_TIMEOUT_S),
            )
            server_config.load()
            server = uvicorn.Server(server_config)
            server.lifespan = server_config.lifespan_class(server_config)
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            await self.stun.close()
            await self.emulator.close()
            await self._close_media()
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
            media_address=self.media.address if self.media is not None else None,
        )
        return self.info

    async def _close_media(self) -> None:
        media, self.media = self.media, None
        if media is not None:
            await media.close()

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
        await self._close_media()
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
