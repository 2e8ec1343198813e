"""Scale-out on one host: one relay process per core, each owning its calls.

The supervisor serves the public control API (edge signatures are checked there) and hands each call to
one worker process: the least loaded, by live calls. Workers are ordinary relay processes
(`RelayServer`) on loopback ports, pinned to a core each, reached over HTTP with requests re-signed by
a per-run internal key. The supervisor remembers which worker owns which call, so close and inspect
go straight to it; metrics are merged from every worker.

The other way, a worker tells the supervisor what the edge must hear: each call it ends and each stage
mark an agent sends, one JSON line each on its stdout (the pipe the ready line came on, private to the
two processes, so nothing to sign). The supervisor forwards them through its one EdgeLink
(relay/edge_link.py), which signs them with the relay's edge key, batches stage marks and retries
notices, exactly as for a single-process relay; the edge key never reaches a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from splitrelay.contract.control import CALLS_PATH, UNDRAIN_PATH, AttachRequest, AttachResult
from splitrelay.contract.signing import sign_headers
from splitrelay.relay.backend import AttachRefused
from splitrelay.relay.child import ChildProcess, cli_command, json_ready

log = logging.getLogger("splitrelay.relay.workers")

INTERNAL_KEY_ENV = "SPLITRELAY_WORKER_KEY"
WORKER_CONFIG_ENV = "SPLITRELAY_WORKER_CONFIG"
READY_TIMEOUT_S = 30.0
EVENT_CALL_ENDED: Final = "call_ended"
EVENT_STAGE: Final = "stage"
MAX_EVENT_BUFFER: Final = 1 << 20
"""A worker drops a report rather than buffer more than this for a supervisor that stopped reading."""
LISTENER_FLUSH_S: Final = 5.0
"""At shutdown, how long the supervisor waits for the stopped workers' last reports."""


@dataclass
class Worker:
    index: int
    process: ChildProcess
    url: str
    calls: set[str] = field(default_factory=set)

    @property
    def alive(self) -> bool:
        return self.process.alive


class WorkerPool:
    """A `CallBackend` that spreads calls over worker processes (see the module docstring).

    Made inside the running loop: it starts reading each worker's reports at once. Set ``on_ended``
    and ``on_stage`` (an EdgeLink's ``call_ended``/``call_stages``) to pass them to the edge.
    """

    def __init__(self, workers: list[Worker], internal_key: bytes) -> None:
        self.workers = workers
        self._key = internal_key
        self._owner: dict[str, Worker] = {}
        self._attaching: set[str] = set()  # sent to a worker, no answer yet: not on its list yet
        self._draining = False
        self._http = httpx.AsyncClient(timeout=15)
        self.on_ended: Callable[[str, str], object] | None = None
        """Told (call id, close reason) when a worker ended a call, whoever ended it."""
        self.on_stage: Callable[[str, dict[str, Any]], object] | None = None
        """Told (call id, stage event) of each agent stage mark a worker passed on."""
        self.reports_refused = 0  # lines that were not a report about one of that worker's calls
        loop = asyncio.get_running_loop()
        self._listeners = [loop.create_task(self._listen(w)) for w in workers]

    def __repr__(self) -> str:
        return f"WorkerPool(workers={len(self.workers)})"

    @property
    def draining(self) -> bool:
        return self._draining or not any(w.alive for w in self.workers)

    async def _request(self, worker: Worker, method: str, path: str, body: bytes = b"") -> httpx.Response:
        headers = sign_headers(self._key, method, path, body)
        headers["content-type"] = "application/json"
        return await self._http.request(method, worker.url + path, content=body, headers=headers)

    def pick(self) -> Worker:
        """The live worker with the fewest calls (ties: lowest index)."""
        alive = [w for w in self.workers if w.alive]
        if not alive:
            raise AttachRefused(503, "no relay worker process is running")
        return min(alive, key=lambda w: (len(w.calls), w.index))

    async def attach(self, request: AttachRequest) -> AttachResult:
        if request.call_id in self._owner:
            raise AttachRefused(409, f"call {request.call_id!r} is already attached to this relay")
        worker = self.pick()
        worker.calls.add(request.call_id)
        self._owner[request.call_id] = worker
        self._attaching.add(request.call_id)
        try:
            body = json.dumps(request.to_json()).encode()
            response = await self._request(worker, "POST", CALLS_PATH, body)
        except httpx.HTTPError as exc:
            self._forget(request.call_id)
            raise AttachRefused(502, f"worker {worker.index} unreachable: {type(exc).__name__}") from None
        finally:
            self._attaching.discard(request.call_id)
        if response.status_code != 201:
            self._forget(request.call_id)
            message = _error_message(response)
            raise AttachRefused(response.status_code, message)
        return AttachResult.from_json(response.json())

    def _forget(self, call_id: str) -> None:
        worker = self._owner.pop(call_id, None)
        if worker is not None:
            worker.calls.discard(call_id)

    async def _listen(self, worker: Worker) -> None:
        """Read ``worker``'s reports until its stdout closes (it exited); then its calls are over."""
        stdout = worker.process.process.stdout
        assert stdout is not None
        while True:  # bounded by the worker's life: EOF when it exits (or cancelled at shutdown)
            try:
                line = await stdout.readline()
            except ValueError:  # an overlong line (asyncio dropped it): not a report
                self.reports_refused += 1
                continue
            if not line:
                break
            self._report(worker, line)
        left = list(worker.calls)  # a worker that died holding calls: the edge hears now, not in a beat
        for call_id in left:
            self._forget(call_id)
            if self.on_ended is not None:
                self.on_ended(call_id, f"relay worker {worker.index} exited")

    def _report(self, worker: Worker, line: bytes) -> None:
        """One report line from ``worker``; only about a call that worker holds."""
        try:
            doc = json.loads(line)
            kind, call_id = doc["event"], doc["call_id"]
        except (ValueError, KeyError, TypeError):
            self.reports_refused += 1
            return
        if not isinstance(call_id, str) or self._owner.get(call_id) is not worker:
            self.reports_refused += 1
            return
        if kind == EVENT_CALL_ENDED:
            self._forget(call_id)  # first: the beat the notice wakes no longer lists the call
            if self.on_ended is not None:
                self.on_ended(call_id, str(doc.get("reason") or "ended"))
        elif kind == EVENT_STAGE and isinstance(doc.get("stage"), dict):
            if self.on_stage is not None:
                self.on_stage(call_id, doc["stage"])
        else:
            self.reports_refused += 1

    async def close(self, call_id: str, reason: str) -> dict[str, Any] | None:
        worker = self._owner.get(call_id)
        if worker is None or not worker.alive:
            self._forget(call_id)
            return None
        response = await self._request(worker, "DELETE", f"/v1/calls/{call_id}")
        self._forget(call_id)
        summary: dict[str, Any] | None = (
            response.json().get("summary") if response.status_code == 200 else None
        )
        return summary

    async def _gather(self, path: str) -> dict[int, httpx.Response]:
        """Each live worker's 200 answer to GET ``path``, by worker index (who did not answer: absent)."""
        alive = [w for w in self.workers if w.alive]
        results = await asyncio.gather(
            *(self._request(w, "GET", path) for w in alive), return_exceptions=True
        )
        return {
            w.index: r
            for w, r in zip(alive, results, strict=True)
            if isinstance(r, httpx.Response) and r.status_code == 200
        }

    async def list_calls(self) -> list[dict[str, Any]]:
        # Only calls settled before the workers were asked may be found gone: a worker lists a call once
        # its attach is done, so one in flight (or answered meanwhile) is missing from a list for now.
        settled = {c: w for c, w in self._owner.items() if c not in self._attaching}
        answers = await self._gather("/v1/calls")
        calls: list[dict[str, Any]] = []
        for response in answers.values():
            calls.extend(response.json()["calls"])
        self._reconcile(settled, {c["call_id"] for c in calls}, set(answers))
        return calls

    def _reconcile(self, settled: dict[str, Worker], live: set[str], answered: set[int]) -> None:
        """Calls that ended inside a worker leave the owner map here too, should a report be lost. A beat
        that no longer lists a call closes it at the edge, so only a call its worker (alive) said it no
        longer holds, or a dead worker's, is forgotten: not one still attaching, nor one on a worker
        that did not answer this time."""
        for call_id, worker in settled.items():
            gone = worker.index in answered or not worker.alive
            if gone and call_id not in live and self._owner.get(call_id) is worker:
                self._forget(call_id)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        worker = self._owner.get(call_id)
        if worker is None or not worker.alive:
            return None
        attaching = call_id in self._attaching  # the worker does not know it yet: not gone
        response = await self._request(worker, "GET", f"/v1/calls/{call_id}")
        if response.status_code != 200:
            if response.status_code == 404 and not attaching and self._owner.get(call_id) is worker:
                self._forget(call_id)
            return None
        info: dict[str, Any] = response.json()
        info["worker"] = worker.index
        return info

    async def drain(self) -> int:
        self._draining = True
        total = 0
        for worker in (w for w in self.workers if w.alive):
            response = await self._request(worker, "POST", "/v1/drain")
            total += int(response.json().get("live_calls", 0))
        return total

    async def undrain(self) -> int:
        self._draining = False
        total = 0
        for worker in (w for w in self.workers if w.alive):
            response = await self._request(worker, "POST", UNDRAIN_PATH)
            total += int(response.json().get("live_calls", 0))
        return total

    def live_call_ids(self) -> list[str]:
        """The calls the supervisor believes live (what its heartbeat lists; reconciled by list_calls)."""
        return list(self._owner)

    async def metrics_text(self) -> bytes:
        texts = []
        for worker in (w for w in self.workers if w.alive):
            with contextlib.suppress(httpx.HTTPError):
                response = await self._http.get(worker.url + "/metrics")
                texts.append(response.text)
        return merge_metrics(texts)

    async def shutdown(self) -> None:
        """Stop the workers, then forward their last reports (the calls a stop ended); bounded."""
        await self._http.aclose()
        await stop_workers(self.workers)
        if self._listeners:
            await asyncio.wait(self._listeners, timeout=LISTENER_FLUSH_S)
        for task in self._listeners:
            task.cancel()


class SupervisorChannel:
    """A worker's side of the reports (module docstring): JSON lines on its stdout, never blocking.

    The pipe is written without blocking the worker's loop (its calls' media runs there): a supervisor
    that stops reading costs at most ``MAX_EVENT_BUFFER`` bytes, then reports are dropped and counted.
    """

    def __init__(self, transport: asyncio.WriteTransport, closed: asyncio.Future[None]) -> None:
        self._transport = transport
        self._closed = closed
        self.dropped = 0

    @classmethod
    async def open(cls, fd: int = 1) -> SupervisorChannel:
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()

        class _Pipe(asyncio.BaseProtocol):
            def connection_lost(self, exc: Exception | None) -> None:
                if not closed.done():
                    closed.set_result(None)

        pipe = os.fdopen(os.dup(fd), "wb", buffering=0)
        transport, _ = await loop.connect_write_pipe(_Pipe, pipe)
        return cls(transport, closed)

    def send(self, doc: dict[str, Any]) -> None:
        """One JSON line (the ready line too), or dropped when the pipe is closing or too far behind."""
        if self._transport.is_closing() or self._transport.get_write_buffer_size() > MAX_EVENT_BUFFER:
            self.dropped += 1
            return
        self._transport.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")

    def call_ended(self, call_id: str, reason: str) -> None:
        """The manager's ``on_ended``: the supervisor tells the edge."""
        self.send({"event": EVENT_CALL_ENDED, "call_id": call_id, "reason": reason[:300]})

    def call_stages(self, call_id: str, event: dict[str, Any]) -> None:
        """The manager's ``on_stage``: the supervisor batches and signs them for the edge."""
        stage = {key: event.get(key) for key in ("turn", "name", "ms")}
        self.send({"event": EVENT_STAGE, "call_id": call_id, "stage": stage})

    async def aclose(self, within: float = 2.0) -> None:
        """Flush what is buffered (bounded), then close the pipe."""
        self._transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), within)
        if not self._closed.done():
            self._transport.abort()


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"worker answered {response.status_code}"


def merge_metrics(texts: list[str]) -> bytes:
    """Merge Prometheus text expositions whose samples differ by their `process` label."""
    families: dict[str, tuple[str, str, list[Sample]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            _, _, samples = families.setdefault(family.name, (family.type, family.documentation, []))
            samples.extend(family.samples)
    lines: list[str] = []
    for name, (kind, doc, samples) in families.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for s in samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            lines.append(f"{s.name}{{{labels}}} {s.value!r}" if labels else f"{s.name} {s.value!r}")
    return ("\n".join(lines) + "\n").encode()


async def spawn_workers(
    count: int, config: dict[str, Any], internal_key: bytes, env: dict[str, str]
) -> list[Worker]:
    """Start `count` worker processes (`splitrelay relay worker`, pinned to a core each when the OS
    allows) and wait for their JSON ready lines."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    workers: list[Worker] = []
    try:
        for index in range(count):
            worker_env = dict(os.environ, **env)
            worker_env[INTERNAL_KEY_ENV] = internal_key.decode()
            worker_env[WORKER_CONFIG_ENV] = json.dumps(dict(config, process=str(index)))
            process = await ChildProcess.start(
                f"relay worker {index}",
                cli_command("relay", "worker"),
                env=worker_env,
                cores={cores[index % len(cores)]} if cores else None,
            )
            workers.append(Worker(index, process, url=""))
        for worker in workers:
            ready = await worker.process.wait_ready(json_ready("ready"), within=READY_TIMEOUT_S)
            worker.url = str(ready["url"])
    except BaseException:
        await stop_workers(workers)
        raise
    return workers


async def stop_workers(workers: list[Worker], grace: float = 10.0) -> None:
    """SIGTERM each worker by PID, then SIGKILL what is still running after `grace` seconds."""
    await asyncio.gather(*(worker.process.stop(grace) for worker in workers))


def new_internal_key() -> bytes:
    return secrets.token_hex(32).encode()


def worker_main() -> None:
    """One worker process (`splitrelay relay worker`): a RelayServer on loopback, its URL printed as a
    JSON ready line."""
    import signal

    import uvloop

    from splitrelay.relay.call import CallConfig, impaired
    from splitrelay.relay.inference_link import DEFAULT_AGENT_TIMEOUT_S
    from splitrelay.relay.media.impair import parse_impairment
    from splitrelay.relay.media.peer import CandidatePolicy
    from splitrelay.relay.server import RelayServer, RelaySettings, SfuSettings, freeze_startup_heap

    config = json.loads(os.environ[WORKER_CONFIG_ENV])
    key = os.environ[INTERNAL_KEY_ENV].encode()
    sfu = config.get("sfu")
    settings = RelaySettings(
        signing_keys={"default": key},
        inference=(config["inference"][0], int(config["inference"][1])),
        inference_more=tuple((str(h), int(p)) for h, p in config.get("inference_more") or ()),
        relay_id=config.get("relay_id"),
        agent_timeout_s=float(config.get("agent_timeout_s", DEFAULT_AGENT_TIMEOUT_S)),
        host="127.0.0.1",
        port=0,
        candidates=CandidatePolicy(
            addresses=tuple(config["candidate_addresses"]) if config.get("candidate_addresses") else None,
            port_range=(int(config["port_range"][0]), int(config["port_range"][1]))
            if config.get("port_range")
            else None,
        ),
        stun_urls=tuple(config.get("stun_urls") or ()),
        public_address=config.get("public_address"),
        # The supervisor checked both (barge-in flags, --impair).
        call=impaired(
            CallConfig(**(config.get("call") or {})),
            parse_impairment(config["impair"]) if config.get("impair") else None,
        ),
        sfu=SfuSettings(sfu["base_url"], sfu["app_id"], os.environ[sfu["secret_env"]]) if sfu else None,
        max_calls=int(config.get("max_calls", 1000)),
        process=config["process"],
        media_port=config.get("media_port"),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        channel: SupervisorChannel | None = None
        try:
            async with RelayServer(settings) as server:
                assert server.manager is not None
                channel = await SupervisorChannel.open()
                server.manager.on_ended = channel.call_ended  # before the ready line: no call misses them
                server.manager.on_stage = channel.call_stages
                freeze_startup_heap()
                channel.send({"event": "ready", "url": server.url, "pid": os.getpid()})
                await stop.wait()
            # leaving the block closed the calls (each one reported): send those reports before exiting
        finally:
            if channel is not None:
                await channel.aclose()

    uvloop.run(main())
