"""The local stack as child processes: Realtime emulator, echo agent, relay and edge, on loopback.

Each component is its own ``splitrelay ... serve`` process, started in dependency order with ``--port
0`` and read back from its ready line, so two stacks (or a test beside a stack) never fight over a
port. Secrets are random per run and reach the children only through their environment or a 0600
file in the run directory (flags would show in ``ps``); nothing prints them. Each child leads its own
process group, so stopping is exact: SIGTERM to each group in reverse order, SIGKILL after a bound,
then a check that no process of those groups is left. ``splitrelay call --stack`` reads the stack
file this module writes (and removes on stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from splitrelay.cli.edge import TOKEN_KEY_ENV
from splitrelay.cli.emulator import CONFIG_ENV as EMULATOR_CONFIG_ENV
from splitrelay.cli.relay import SFU_SECRET_ENV, SIGNING_KEY_ENV
from splitrelay.inference.wire_auth import WIRE_KEY_ENV
from splitrelay.relay.child import ChildError, ChildProcess, ReadyParser, cli_command, json_ready

MODES: Final = ("sfu", "direct")
MAX_RELAYS: Final = 8
MAX_RELAY_WORKERS: Final = 4
HOST: Final = "127.0.0.1"
APP_ID: Final = "splitrelay-dev"
PAGE_SUBJECT: Final = "dev"
STACK_FILE: Final = "stack.json"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


class StackError(Exception):
    """The stack could not start (or a component died); the message names the component and its log."""


AGENT_KINDS: Final = ("echo", "metronome")
RELAY_FIRST_BEATS_S: Final = 1.0  # four beats at the relays' default 250 ms
MAX_AGENTS: Final = 4


@dataclass(frozen=True)
class StackConfig:
    mode: str = "sfu"
    """``sfu``: caller → edge → emulator → relay (SFU attach); ``direct``: caller → relay, no edge."""
    run_dir: Path | None = None
    """Logs, the emulator config and the stack file; None: a new private directory under $TMPDIR."""
    silence_ms: int = 500
    """The echo agent's end-of-speech silence threshold."""
    start_timeout_s: float = 60.0
    """Each component must print its ready line within this long."""
    stop_timeout_s: float = 5.0
    """After SIGTERM, a component gets this long before SIGKILL."""
    relays: int = 1
    """Relay processes (``relay``, ``relay-1``...; the edge's registry ids ``relay-0``, ``relay-1``...)."""
    relay_workers: int = 1
    """Each relay's ``--workers``: above 1, a supervisor and that many worker processes (the deployed
    shape, infra/user_data.py)."""
    drain_grace_s: float = 0.0
    """Each relay's ``--drain-grace``: how long a SIGTERM waits for calls to end (0: the stop is quick)."""
    agent: str = "echo"
    """``echo`` (`splitrelay agent echo`) or ``metronome`` (a frame every 20 ms: bench/metronome.py)."""
    agents: int = 1
    """Agent processes (``agent``, ``agent-1``...); every relay is given all of them, in order."""
    external_agents: tuple[str, ...] = ()
    """Agents of your own (UDP HOST:PORT, e.g. `splitrelay agent pipecat`) instead of starting any: the
    relays use these, and the run's wire key is the one in $SPLITRELAY_WIRE_KEY (your agent's)."""
    shared_media_port: bool = True
    """Each relay serves all its calls on one UDP port (``relay serve --media-port``, picked free here)
    instead of one port per call."""
    shared_sfu_socket: bool = True
    """SFU mode: the emulator puts every session on ONE UDP socket (``emulator serve --media-port``), so
    every relay call meets the SFU at one address and port, as Cloudflare's anycast SFU may; False: a
    socket per session. Off when ``relay_impair`` is set: an impaired fast path takes every datagram it
    is offered (its stage comes before decryption), so it cannot tell calls sharing an address apart."""
    relay_impair: str | None = None
    """Each relay's ``--impair`` spec (its media leg, both ways: SFU↔relay in SFU mode); None: clean."""
    sfu_reconnect_window_s: float | None = None
    """The emulator's ``timers.reconnect_window`` (how long a session whose peer closed or failed lives
    on); None: the real service's 30 s. Tests that count what is left shorten it."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {MODES}, got {self.mode!r}")
        if not 1 <= self.relays <= MAX_RELAYS:
            raise ValueError(f"relays: must be 1..{MAX_RELAYS}, got {self.relays}")
        if not 1 <= self.relay_workers <= MAX_RELAY_WORKERS:
            raise ValueError(f"relay_workers: must be 1..{MAX_RELAY_WORKERS}, got {self.relay_workers}")
        if not 0 <= self.drain_grace_s <= 600:
            raise ValueError(f"drain_grace_s: must be 0..600 s, got {self.drain_grace_s}")
        if not 20 <= self.silence_ms <= 10_000:
            raise ValueError(f"silence_ms: must be 20..10000, got {self.silence_ms}")
        if not 1 <= self.start_timeout_s <= 600:
            raise ValueError(f"start_timeout_s: must be 1..600 s, got {self.start_timeout_s}")
        if not 0.1 <= self.stop_timeout_s <= 60:
            raise ValueError(f"stop_timeout_s: must be 0.1..60 s, got {self.stop_timeout_s}")
        if self.agent not in AGENT_KINDS:
            raise ValueError(f"agent: must be one of {AGENT_KINDS}, got {self.agent!r}")
        if not 1 <= self.agents <= MAX_AGENTS:
            raise ValueError(f"agents: must be 1..{MAX_AGENTS}, got {self.agents}")
        for address in self.external_agents:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"external_agents: expected HOST:PORT, got {address[:80]!r}")
        if len(self.external_agents) > MAX_AGENTS:
            raise ValueError(f"external_agents: at most {MAX_AGENTS}, got {len(self.external_agents)}")
        if self.relay_impair is not None:
            from splitrelay.relay.media.impair import ImpairmentError, parse_impairment

            try:
                parse_impairment(self.relay_impair)
            except ImpairmentError as exc:
                raise ValueError(f"relay_impair: {exc}") from None
        window = self.sfu_reconnect_window_s
        if window is not None and not 0.1 <= window <= 300:
            raise ValueError(f"sfu_reconnect_window_s: must be 0.1..300 s, got {window}")


@dataclass(frozen=True)
class StackInfo:
    """A running stack: what ``splitrelay call --stack`` needs (the keys are never printed)."""

    mode: str
    run_dir: str
    relay_url: str
    agent: str
    edge_url: str | None = None
    page: str | None = None
    emulator_url: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    relay_urls: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    """Every agent's UDP HOST:PORT (``agent`` is the first)."""
    relay_impair: str | None = None
    """The relays' ``--impair`` spec, if any (a caller then expects replies with gaps)."""
    """Every relay's control URL, in the edge registry's order (``relay_url`` is the first)."""
    tcp_ports: list[int] = field(default_factory=list)
    udp_ports: list[int] = field(default_factory=list)
    token_signing_key: str = field(default="", repr=False)
    relay_signing_key: str = field(default="", repr=False)
    sfu_app_secret: str = field(default="", repr=False)
    """The emulator's app secret (SFU mode): the leak checks of ``bench calls`` query the emulator with it."""

    def public(self) -> dict[str, Any]:
        """Everything but the keys: for the ready line and the terminal."""
        doc = asdict(self)
        for key in ("token_signing_key", "relay_signing_key", "sfu_app_secret"):
            doc.pop(key)
        return doc

    def save(self, path: Path) -> None:
        """Write the stack file readable by this user only (it holds the run's keys)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out)

    @classmethod
    def load(cls, path: Path) -> StackInfo:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StackError(f"stack file {path}: not found (is `splitrelay dev` running?)") from None
        except (OSError, ValueError) as exc:
            raise StackError(f"stack file {path}: unreadable ({exc})") from None
        if not isinstance(doc, dict):
            raise StackError(f"stack file {path}: expected a JSON object")
        for name in ("mode", "run_dir", "relay_url", "agent", "relay_signing_key"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise StackError(f"stack file {path}: field {name!r} must be a non-empty string")
        if doc["mode"] not in MODES:
            raise StackError(f"stack file {path}: mode must be one of {MODES}, got {doc['mode']!r}")
        if doc["mode"] == "sfu":
            for name in ("edge_url", "token_signing_key"):
                if not isinstance(doc.get(name), str) or not doc[name]:
                    raise StackError(f"stack file {path}: field {name!r} is required in SFU mode")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class Component:
    name: str
    child: ChildProcess
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    drain: asyncio.Task[None] | None = None
    exit_code: int | None = None
    killed: bool = False
    args: tuple[str, ...] = ()  # how it was started, so that it can be started again (restart)
    command: tuple[str, ...] = ()  # a whole command line instead of `splitrelay ARGS`
    ready_parser: ReadyParser | None = None
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.child.process


@dataclass(frozen=True)
class StopReport:
    exit_codes: dict[str, int | None]
    killed: list[str]
    leftovers: list[int]
    """PIDs still alive in the components' process groups after the stop (should be empty)."""

    @property
    def clean(self) -> bool:
        """Every component exited 0, or died of our SIGTERM before it had installed its handler."""
        return (
            not self.killed
            and not self.leftovers
            and all(c in (0, -signal.SIGTERM) for c in self.exit_codes.values())
        )


# --- ready lines ---------------------------------------------------------------------------------


_TOKEN_IN_LINK = re.compile(rb"#token=[A-Za-z0-9_.-]+")


def redact(line: bytes) -> bytes:
    """A child's stdout line for its log: the page link's caller token is a credential, so it goes."""
    return _TOKEN_IN_LINK.sub(b"#token=<redacted>", line)


_AGENT_READY = re.compile(r"listening on udp://(\[[0-9a-fA-F:.]+\]|[^\s:]+):(\d+)")


def agent_ready(line: str) -> dict[str, Any] | None:
    """The echo agent prints a human line (no JSON ready line yet): 'listening on udp://HOST:PORT'."""
    match = _AGENT_READY.search(line)
    if match is None:
        return None
    return {"host": match.group(1).strip("[]"), "port": int(match.group(2))}


# --- process control ------------------------------------------------------------------------------


def group_members(pgids: set[int]) -> list[int]:
    """PIDs of live (not zombie) processes in the given process groups (Linux /proc; else [])."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) in pgids:
            members.append(int(entry.name))
    return sorted(members)


def free_tcp_port(host: str = HOST) -> int:
    """A loopback port free right now (the kernel's pick), for a child told its port in advance."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_udp_port(host: str = HOST, count: int = 1) -> int:
    """A loopback UDP port free right now (the kernel's pick, >= 1024), for a relay's --media-port; with
    ``count``, the first of that many free consecutive ports (one per worker)."""
    for _ in range(20):  # bounded: the kernel's ephemeral range is above 1024 anyway
        with contextlib.ExitStack() as probes:
            first = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if not 1024 <= port <= 65536 - count:
                continue
            try:
                for offset in range(1, count):
                    probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(
                        (host, port + offset)
                    )
            except OSError:
                continue
        return port
    raise StackError(f"no {count} free consecutive UDP port(s) above 1023")


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 43 characters, above every key's 32-byte minimum


DEV_SFU_SECRET_ENV: Final = "SPLITRELAY_DEV_SFU_APP_SECRET"
"""Pins the local emulator's app secret (to point a client of your own at it); a fresh one otherwise."""


class Stack:
    """Start with ``await start()`` (returns the StackInfo), stop with ``await stop()``; idempotent."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.components: list[Component] = []
        self.info: StackInfo | None = None
        self._secrets = {
            SFU_SECRET_ENV: os.environ.get(DEV_SFU_SECRET_ENV) or new_secret(),
            SIGNING_KEY_ENV: new_secret(),
            TOKEN_KEY_ENV: new_secret(),
            WIRE_KEY_ENV: new_secret(),  # relay <-> agent wire link (base64url, 32 bytes)
        }
        if self.config.external_agents:  # your agent already runs with its key: the relays need the same
            key = os.environ.get(WIRE_KEY_ENV, "")
            if not key:
                raise StackError(
                    f"an external agent needs ${WIRE_KEY_ENV}: set it to the key your agent was started with"
                )
            self._secrets[WIRE_KEY_ENV] = key
        self.run_dir = self._make_run_dir(self.config.run_dir)
        self._stopped: StopReport | None = None
        self._retired: list[Component] = []  # restarted: their process groups are checked at stop too

    @staticmethod
    def _make_run_dir(path: Path | None) -> Path:
        if path is None:
            return Path(tempfile.mkdtemp(prefix="splitrelay-dev-"))
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (path / STACK_FILE).exists():
            raise StackError(f"run dir {path}: holds a {STACK_FILE}: another stack may be running there")
        return path

    @property
    def stack_file(self) -> Path:
        return self.run_dir / STACK_FILE

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITRELAY_")}
        env.update(self._secrets)
        env["PYTHONUNBUFFERED"] = "1"
        env["COLUMNS"] = "200"  # the agent's ready line comes from rich: never wrapped
        return env

    async def _spawn(
        self,
        name: str,
        args: list[str],
        ready: ReadyParser,
        extra_env: dict[str, str] | None = None,
        *,
        command: list[str] | None = None,
    ) -> Component:
        """Start ``splitrelay ARGS`` (relay/child.py: own session, SIGTERM if we die) and wait for its
        ready line; its stderr and stdout lines go to its log."""
        log_path = self.run_dir / f"{name}.log"
        try:
            child = await ChildProcess.start(
                name,
                command or cli_command(*args),
                env={**self._env(), **(extra_env or {})},
                cwd=self.run_dir,
                stderr=log_path,
            )
        except ChildError as exc:
            raise StackError(f"{exc} (log: {log_path})") from None
        component = Component(
            name,
            child,
            log_path,
            args=tuple(args),
            command=tuple(command or ()),
            ready_parser=ready,
            extra_env=dict(extra_env or {}),
        )
        self.components.append(component)
        with open(log_path, "ab") as log:  # noqa: ASYNC230 - small appends, local disk

            def keep(line: bytes) -> None:
                log.write(redact(line))
                log.flush()

            try:
                component.ready = await child.wait_ready(
                    ready, within=self.config.start_timeout_s, on_line=keep
                )
            except ChildError as exc:
                raise StackError(f"{exc} (log: {log_path})") from None
        component.drain = asyncio.create_task(self._drain(component))
        return component

    @staticmethod
    async def _drain(component: Component) -> None:
        """Keep the child's stdout pipe empty (into its log) so it never blocks on a full pipe."""
        stdout = component.process.stdout
        assert stdout is not None
        with open(component.log_path, "ab") as log:  # noqa: ASYNC230 - small appends, local disk
            for _ in range(10_000_000):  # bounded; EOF (the child exiting) ends it first
                line = await stdout.readline()
                if not line:
                    return
                log.write(redact(line))
                log.flush()

    async def start(self) -> StackInfo:
        """Start every component in dependency order; on any failure stop what started and raise."""
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> StackInfo:
        c = self.config
        emulator_ready: dict[str, Any] | None = None
        if c.mode == "sfu":
            # The config (it holds the app secret) goes in the environment, which the emulator reads and
            # removes at start: no secrets file on disk (issue 13).
            doc: dict[str, Any] = {
                "apps": {APP_ID: self._secrets[SFU_SECRET_ENV]},
                "candidate_addresses": [HOST],
            }
            if c.shared_sfu_socket and c.relay_impair is None:
                doc["media_port"] = 0
            if c.sfu_reconnect_window_s is not None:
                doc["timers"] = {"reconnect_window": c.sfu_reconnect_window_s}
            emulator = await self._spawn(
                "emulator",
                ["emulator", "serve", "--host", HOST, "--port", "0", "--json"],
                json_ready("emulator_started"),
                extra_env={EMULATOR_CONFIG_ENV: json.dumps(doc)},
            )
            emulator_ready = emulator.ready
        agent_addresses: list[str] = list(c.external_agents)
        for index in range(0 if c.external_agents else c.agents):
            name = "agent" if index == 0 else f"agent-{index}"
            if c.agent == "metronome":
                command = [sys.executable, "-m", "splitrelay.bench.metronome", "--listen", f"{HOST}:0"]
                command += ["--agent-id", str(index)]
                agent = await self._spawn(name, [], agent_ready, command=command)
            else:
                args = ["agent", "echo", "--listen", f"{HOST}:0", "--silence-ms", str(c.silence_ms), "--json"]
                agent = await self._spawn(name, args, agent_ready)
            agent_addresses.append(f"{agent.ready['host']}:{agent.ready['port']}")
        agent_address = agent_addresses[0]
        # The relays beat to the edge and the edge names the relays: the edge's port is chosen first.
        edge_port = free_tcp_port() if emulator_ready is not None else 0
        relay_urls: list[str] = []
        relays: list[Component] = []
        for index in range(c.relays):
            relay_args = ["relay", "serve", "--host", HOST, "--port", "0", "--json"]
            for address in agent_addresses:
                relay_args += ["--inference", address]
            relay_args += ["--candidate-address", HOST]
            relay_args += ["--drain-grace", str(c.drain_grace_s)]
            if c.relay_workers > 1:
                relay_args += ["--workers", str(c.relay_workers)]
            if c.relay_impair is not None:
                relay_args += ["--impair", c.relay_impair]
            if c.shared_media_port:
                relay_args += ["--media-port", str(free_udp_port(count=c.relay_workers))]
            if emulator_ready is not None:
                relay_args += ["--sfu-url", str(emulator_ready["base_url"]), "--sfu-app-id", APP_ID]
                relay_args += ["--edge-url", f"http://{HOST}:{edge_port}", "--relay-id", f"relay-{index}"]
            name = "relay" if index == 0 else f"relay-{index}"
            relays.append(await self._spawn(name, relay_args, json_ready("ready")))
            relay_urls.append(str(relays[-1].ready["url"]))
        relay_url = relay_urls[0]
        edge_ready: dict[str, Any] | None = None
        if emulator_ready is not None:
            edge_args = ["edge", "serve", "--host", HOST, "--port", str(edge_port), "--json"]
            for url in relay_urls:
                edge_args += ["--relay", url]
            edge_args += ["--sfu-url", str(emulator_ready["base_url"]), "--sfu-app-id", APP_ID]
            edge = await self._spawn(
                "edge",
                [*edge_args, "--print-token", PAGE_SUBJECT],
                json_ready("ready"),
            )
            edge_ready = edge.ready
            # The relays started beating before the edge listened: let their first beats land, so the
            # edge knows them alive and their pooled connection to it exists before anyone counts
            # sockets (bench calls' leak baseline) or calls.
            await asyncio.sleep(RELAY_FIRST_BEATS_S)
        tcp = [int(url.rsplit(":", 1)[1]) for url in relay_urls]
        udp = [int(address.rsplit(":", 1)[1]) for address in agent_addresses if not c.external_agents]
        if emulator_ready is not None and edge_ready is not None:
            tcp += [int(emulator_ready["port"]), int(str(edge_ready["url"]).rsplit(":", 1)[1])]
            udp.append(int(str(emulator_ready["stun_url"]).rsplit(":", 1)[1]))
            media = emulator_ready.get("media_address")
            if isinstance(media, list) and len(media) == 2:
                udp.append(int(media[1]))
        info = StackInfo(
            mode=c.mode,
            run_dir=str(self.run_dir),
            relay_url=relay_url,
            agent=agent_address,
            edge_url=str(edge_ready["url"]) if edge_ready else None,
            page=str(edge_ready["page"]) if edge_ready else None,
            emulator_url=str(emulator_ready["base_url"]) if emulator_ready else None,
            pids={comp.name: comp.process.pid for comp in self.components},
            relay_urls=relay_urls,
            agents=agent_addresses,
            relay_impair=c.relay_impair,
            tcp_ports=sorted(tcp),
            udp_ports=sorted(udp),
            token_signing_key=self._secrets[TOKEN_KEY_ENV] if c.mode == "sfu" else "",
            relay_signing_key=self._secrets[SIGNING_KEY_ENV],
            sfu_app_secret=self._secrets[SFU_SECRET_ENV] if c.mode == "sfu" else "",
        )
        info.save(self.stack_file)
        self.info = info
        return info

    async def wait_any_exit(self) -> Component:
        """Return the first component whose process exits (while the stack should be running)."""
        waits = {asyncio.ensure_future(comp.process.wait()): comp for comp in self.components}
        if not waits:
            raise StackError("the stack has no running component")
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return waits[next(iter(done))]

    async def restart(self, name: str) -> Component:
        """Stop one component (if it still runs) and start it again with the same arguments, on the
        same port when it had chosen one (a relay the edge knows by its URL): a deploy's restart."""
        old = next((comp for comp in self.components if comp.name == name), None)
        if old is None or old.ready_parser is None:
            raise StackError(f"no component {name!r} to restart")
        await self._stop_one(old)
        self.components.remove(old)
        self._retired.append(old)
        args, command = list(old.args), list(old.command) or None
        url = str(old.ready.get("url") or "")
        if "--port" in args and url.rsplit(":", 1)[-1].isdigit():
            args[args.index("--port") + 1] = url.rsplit(":", 1)[1]
        if "host" in old.ready and "port" in old.ready:  # an agent: the relays know it by its address
            where = f"{old.ready['host']}:{old.ready['port']}"
            for listed in (args, command or []):
                if "--listen" in listed:
                    listed[listed.index("--listen") + 1] = where
        return await self._spawn(name, args, old.ready_parser, old.extra_env, command=command)

    async def stop(self) -> StopReport:
        """SIGTERM each component's process group, newest first; SIGKILL after the bound. Idempotent."""
        if self._stopped is not None:
            return self._stopped
        pgids = {comp.process.pid for comp in [*self.components, *self._retired]}
        for comp in reversed(self.components):
            await self._stop_one(comp)
        with contextlib.suppress(FileNotFoundError):
            self.stack_file.unlink()
        leftovers = group_members(pgids)
        for pid in leftovers:  # a grandchild that outlived its group leader: by PID, never by name
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._stopped = StopReport(
            exit_codes={comp.name: comp.exit_code for comp in self.components},
            killed=[comp.name for comp in self.components if comp.killed],
            leftovers=leftovers,
        )
        return self._stopped

    async def _stop_one(self, comp: Component) -> None:
        comp.exit_code = await comp.child.stop(self.config.stop_timeout_s, group=True)
        comp.killed = comp.child.killed
        if comp.drain is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(comp.drain, self.config.stop_timeout_s)
