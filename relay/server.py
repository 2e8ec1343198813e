"""Assembles one relay process: the inference link, the call manager, the control API over uvicorn.

`RelayServer` is what `splitrelay relay serve` runs and what the tests start on loopback; it binds its
own socket (port 0 = any free port) so callers learn the real port before serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from aiortc import RTCIceServer

from splitrelay.contract.signing import Verifier
from splitrelay.inference.udp_batch import SendBatch
from splitrelay.relay.backend import CallBackend
from splitrelay.relay.call import CallConfig
from splitrelay.relay.control import create_app
from splitrelay.relay.edge_link import EdgeLink, EdgeLinkSettings
from splitrelay.relay.gc_freeze import FreezerCollector, mark_relay_process
from splitrelay.relay.gc_pauses import GcPauseCollector, GcPauses
from splitrelay.relay.http_guard import REQUEST_READ_TIMEOUT_S, guarded_config_kwargs
from splitrelay.relay.inference_link import (
    DEFAULT_AGENT_TIMEOUT_S,
    DEFAULT_KEEPALIVE_MS,
    LinkError,
    RelayLink,
    resolve_numeric,
)
from splitrelay.relay.manager import MAX_CALLS_DEFAULT, CallManager
from splitrelay.relay.media.demux import DemuxLimits
from splitrelay.relay.media.peer import CandidatePolicy, VoicePeerConfig, open_shared_port
from splitrelay.relay.media.shared_port import SEND_BATCH, SharedUdpPort
from splitrelay.relay.sfu_attach import SfuAttacher
from splitrelay.relay.sfu_client import SfuClient

log = logging.getLogger("splitrelay.relay.server")


def freeze_startup_heap() -> None:
    """Move everything alive after start-up (modules, the app) out of the collector's reach.

    A full collection scans every tracked object while media waits: 18 ms for the ~90,000 objects a
    relay holds before its first call, on top of what its calls hold. Those objects live as long as the
    process, so they never need scanning. Call it once, in the relay's own process, when it is ready.
    """
    gc.collect()
    gc.freeze()
    mark_relay_process()  # its calls are frozen too from now on (relay/gc_freeze.py)


@dataclass(frozen=True)
class SfuSettings:
    base_url: str
    app_id: str
    app_secret: str = field(repr=False)


@dataclass(frozen=True)
class RelaySettings:
    """Everything one relay process needs; secrets are excluded from repr."""

    signing_keys: dict[str, bytes] = field(repr=False)
    inference: tuple[str, int] = ("127.0.0.1", 7000)
    host: str = "127.0.0.1"
    port: int = 8700
    candidates: CandidatePolicy = field(default_factory=CandidatePolicy)
    public_address: str | None = None
    """Public IPv4 mapped 1:1 onto this host (an Elastic IP), advertised to peers as a candidate."""
    stun_urls: tuple[str, ...] = ()
    """STUN servers: behind 1:1 NAT (an Elastic IP) they give the relay a server-reflexive candidate."""
    call: CallConfig = field(default_factory=CallConfig)
    sfu: SfuSettings | None = None
    max_calls: int = MAX_CALLS_DEFAULT
    process: str = "0"
    edge: EdgeLinkSettings | None = None
    """Where to send heartbeats and call-end notices (relay/edge_link.py); None: the edge is not told."""
    inference_more: tuple[tuple[str, int], ...] = ()
    """Further inference endpoints, tried in order when a call's agent is lost or refuses the call."""
    relay_id: str | None = None
    """This relay's name in CALL_START ``continues.previous_relay`` on an agent retry (default: the
    edge link's relay id, else "relay")."""
    keepalive_ms: int = DEFAULT_KEEPALIVE_MS
    agent_timeout_s: float = DEFAULT_AGENT_TIMEOUT_S
    """A call whose agent sends keep-alives is lost after this long with nothing from it (0: off)."""
    media_port: int | None = None
    """One UDP port for every call of this process: ``media_port + process`` (relay/media/shared_port.py);
    None: one port per call (``candidates.port_range`` or any)."""


def bind_tcp(host: str, port: int, what: str = "control API") -> socket.socket:
    """Bind the control API's listening socket ourselves, so port 0 yields a known port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"{what}: cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(512)
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it decides how to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ControlServer:
    """uvicorn serving one ASGI app on a socket we bound ourselves; shared by relay and supervisor."""

    def __init__(
        self, app: Any, host: str, port: int, *, read_timeout_s: float = REQUEST_READ_TIMEOUT_S
    ) -> None:
        self._sock = bind_tcp(host, port)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        self._server = _QuietServer(
            uvicorn.Config(
                app,
                lifespan="off",
                log_level="warning",
                access_log=False,
                **guarded_config_kwargs(read_timeout_s),
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        for _ in range(500):  # bounded: 5 s
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if not self._server.started:
            await self.stop()
            raise RuntimeError(f"control API did not start on {self.url}")

    async def stop(self) -> None:
        """Stop serving and release the socket. Idempotent."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=5)
            self._task = None
        self._sock.close()


class RelayServer:
    """One relay process. `await start()`, read `.port`, then `await stop()` (or use `async with`)."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.link = RelayLink(
            settings.inference, keepalive_ms=settings.keepalive_ms, agent_timeout_s=settings.agent_timeout_s
        )
        self._sfu_client: SfuClient | None = None
        self.manager: CallManager | None = None
        self.edge: EdgeLink | None = None
        self._control: ControlServer | None = None
        self._shared_port: SharedUdpPort | None = None
        self.gc_pauses = GcPauses()
        """The collector's pauses of this process, served on /metrics (relay/gc_pauses.py)."""
        self.port = 0

    @property
    def media_port(self) -> int | None:
        """The UDP port every call of this process uses, when it has one (``media_port``)."""
        return None if self._shared_port is None else self._shared_port.port

    async def start(self) -> None:
        s = self.settings
        candidates = s.candidates
        if s.media_port is not None:
            candidates, self._shared_port = await open_shared_port(
                s.candidates,
                s.media_port,
                worker=int(s.process),
                limits=DemuxLimits(max_calls=max(s.max_calls, 1)),
            )
            # What the calls send toward callers leaves in one sendmmsg per loop turn, as AUDIO_IN does.
            self._shared_port.batch_sends(lambda transport: SendBatch(transport, max_batch=SEND_BATCH))
            # Inference's datagrams are read in batches too, as the shared port's (relay/inference_link.py).
            self.link.batch_receive = self._shared_port.batched
        try:
            await self.link.start()
        except BaseException:
            await self.stop()
            raise
        if self._shared_port is not None:
            # Caller audio of known flows goes to inference in one C call per batch (relay/media/native).
            self._shared_port.forward_inbound(self.link)
        endpoints = []
        for host, port in (s.inference, *s.inference_more) if s.inference_more else ():
            try:
                peer, family = await resolve_numeric(host, port)
            except LinkError:
                await self.link.close()
                raise
            if family != self.link.family:
                await self.link.close()
                raise LinkError(f"inference {host}:{port}: not of the first endpoint's address family")
            endpoints.append(peer)
        attacher = None
        if s.sfu is not None:
            self._sfu_client = SfuClient(s.sfu.base_url, s.sfu.app_id, s.sfu.app_secret)
            attacher = SfuAttacher(self._sfu_client)
        self.manager = CallManager(
            self.link,
            peer_config=VoicePeerConfig(
                candidates=candidates,
                ice_servers=tuple(RTCIceServer(urls=u) for u in s.stun_urls),
                public_address=s.public_address,
            ),
            call_config=s.call,
            sfu=attacher,
            max_calls=s.max_calls,
            process=s.process,
            inference_endpoints=tuple(endpoints),
            relay_id=s.relay_id or (s.edge.relay_id if s.edge is not None else "relay"),
        )
        manager = self.manager
        if self._shared_port is not None:
            manager.collector.port_stats = self._port_stats
        self.gc_pauses.install()
        freezer = manager.freezer
        manager.registry.register(
            GcPauseCollector(self.gc_pauses, s.process, frozen=lambda: freezer.frozen_objects)
        )
        manager.registry.register(FreezerCollector(manager.freezer, s.process))
        if s.edge is not None:
            self.edge = EdgeLink(s.edge, lambda: list(manager.calls), draining=lambda: manager.draining)
            manager.on_ended = self.edge.call_ended
            manager.on_stage = self.edge.call_stages
        try:
            self._control = ControlServer(
                create_app(self.manager, Verifier(keys=s.signing_keys), edge=self.edge), s.host, s.port
            )
            self.port = self._control.port
            await self._control.start()
            if self.edge is not None:
                self.edge.start()
        except BaseException:
            await self.stop()
            raise

    @property
    def url(self) -> str:
        assert self._control is not None, "start() the relay first"
        return self._control.url

    async def drain(self, grace_s: float) -> int:
        """Drain before a stop: see :func:`drain_for_shutdown`."""
        assert self.manager is not None, "start() the relay first"
        return await drain_for_shutdown(self.manager, self.edge, grace_s)

    async def stop(self) -> None:
        """Close every call (the edge is told), stop serving, release the sockets. Idempotent."""
        if self.manager is not None:
            await self.manager.shutdown()
        self.gc_pauses.uninstall()
        if self.edge is not None:
            await self.edge.aclose()
            self.edge = None
        if self._control is not None:
            await self._control.stop()
            self._control = None
        if self._sfu_client is not None:
            await self._sfu_client.aclose()
            self._sfu_client = None
        await self.link.close()
        if self._shared_port is not None:  # after the calls: their peers sent through it
            forward = self._shared_port.forwarding
            if forward is not None:  # how much of the caller audio never reached Python
                stats = self._shared_port.stats()
                log.info(
                    "native per-batch path: %d of %d datagrams finished in C (%d batches)",
                    forward.finished,
                    stats.datagrams_in,
                    forward.batches,
                )
            out = self.link.native_out
            if out is not None:  # how much of inference's audio never reached Python
                log.info(
                    "native outbound path: %d AUDIO_OUT datagrams finished in C (%d batches)",
                    out.finished,
                    out.batches,
                )
            await self._shared_port.close()
            self._shared_port = None

    def _port_stats(self) -> dict[str, int]:
        """The shared port's counters for /metrics, with how many caller datagrams C finished."""
        port = self._shared_port
        if port is None:
            return {}
        stats = {k: int(v) for k, v in dataclasses.asdict(port.stats()).items()}
        forward = port.forwarding
        stats["native_finished"] = forward.finished if forward is not None else 0
        out = self.link.native_out
        stats["native_out_finished"] = out.finished if out is not None else 0
        return stats

    async def __aenter__(self) -> RelayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def drain_for_shutdown(backend: CallBackend, edge: EdgeLink | None, grace_s: float) -> int:
    """Stop taking calls the safe way round, then wait (bounded) for live calls to end; → calls left.

    The edge hears of the drain first (a heartbeat it acknowledges), so it stops choosing this relay
    before the relay refuses anything; then the relay refuses new calls and waits up to ``grace_s`` for
    its calls to end on their own. What is left is closed by the stop that follows (the edge is told).
    """
    if edge is not None:
        await edge.announce_drain(True, within=min(2.0, max(grace_s, 0.1)))
    await backend.drain()
    deadline = asyncio.get_running_loop().time() + max(0.0, grace_s)
    left = len(await backend.list_calls())
    for _ in range(int(max(0.0, grace_s) * 10) + 1):  # bounded: one look every 100 ms
        if left == 0 or asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.1)
        left = len(await backend.list_calls())
    return left
