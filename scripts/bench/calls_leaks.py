"""Leak checks for `splitrelay bench calls`: what a stack still holds once its calls are over.

Three views, each from the outside: the relay's live calls (signed ``GET /v1/calls``), the Realtime
emulator's sessions (``GET /_emulator/state``), and the sockets each stack process holds
(``/proc/<pid>/fd``, classified through ``/proc/<pid>/net/*``) against a count taken before the
first call. A WebRTC peer owns a UDP socket, so a call that was not torn down shows up as a UDP
socket even when every API says it is gone.

One kind of socket is not a leak and is counted apart: a keep-alive HTTP connection in a client's
pool (the edge's and the relay's httpx clients) whose server already closed it (TCP ``CLOSE_WAIT``).
httpx closes it when the pool is next used and keeps at most :data:`KEEPALIVE_POOL_LIMIT` idle
connections, so more than that in one process is counted as leaked.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from splitrelay.devtools.call import CallError, RelayAccess, RelayInspector
from splitrelay.devtools.stack import StackInfo

SOCKET_KINDS: Final = ("udp", "tcp_listen", "tcp_open", "tcp_idle", "unix", "other")
KEEPALIVE_POOL_LIMIT: Final = 20  # httpx's default max_keepalive_connections, one client per process
TCP_LISTEN: Final = "0A"
TCP_CLOSE_WAIT: Final = "08"
POLL_S: Final = 0.5
HTTP_TIMEOUT_S: Final = 5.0
STATE_PATH: Final = "/_emulator/state"  # sfu_emulator/http_api.py STATE_PATH (that module imports FastAPI)
EMULATOR_KEYS: Final = ("sessions", "peer_connections", "publications", "subscriptions")
# /proc/<pid>/net/<table>: the column that holds the socket inode, and how a row is classified.
NET_TABLES: Final = {
    "tcp": 9,
    "tcp6": 9,
    "udp": 9,
    "udp6": 9,
    "udplite": 9,
    "udplite6": 9,
    "raw": 9,
    "raw6": 9,
    "unix": 6,
    "netlink": 9,
}


def classify_row(table: str, fields: list[str]) -> str:
    """The kind of socket one row of a /proc/net table describes."""
    if table in ("tcp", "tcp6"):
        state = fields[3]
        return "tcp_listen" if state == TCP_LISTEN else "tcp_idle" if state == TCP_CLOSE_WAIT else "tcp_open"
    if table.startswith("udp"):
        return "udp"
    if table == "unix":
        return "unix"
    return "other"


def parse_net_table(table: str, text: str) -> dict[str, str]:
    """inode → socket kind for every row of a /proc/net table (header line skipped)."""
    column = NET_TABLES[table]
    kinds: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > column:
            kinds[fields[column]] = classify_row(table, fields)
    return kinds


def socket_inodes(pid: int) -> list[str]:
    """Inodes of the sockets among a process's open files; OSError when the process is gone."""
    inodes = []
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:  # closed between listdir and readlink
            continue
        if target.startswith("socket:["):
            inodes.append(target[8:-1])
    return inodes


def socket_counts(pid: int) -> dict[str, int]:
    """How many sockets of each kind a process holds (an inode in no table, e.g. closing: ``other``)."""
    inodes = socket_inodes(pid)
    kinds: dict[str, str] = {}
    for table in NET_TABLES:
        try:
            text = Path(f"/proc/{pid}/net/{table}").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        kinds.update(parse_net_table(table, text))
    counts = Counter(kinds.get(inode, "other") for inode in inodes)
    return {kind: counts.get(kind, 0) for kind in SOCKET_KINDS}


def socket_leaks(baseline: Mapping[str, int], now: Mapping[str, int]) -> dict[str, int]:
    """Sockets of each kind beyond the baseline (idle pooled connections beyond the pool's bound)."""
    leaks = {}
    for kind in SOCKET_KINDS:
        allowed = baseline.get(kind, 0)
        if kind == "tcp_idle":
            allowed = max(allowed, KEEPALIVE_POOL_LIMIT)
        extra = now.get(kind, 0) - allowed
        if extra > 0:
            leaks[kind] = extra
    return leaks


@dataclass
class ProcessSockets:
    """One process's socket counts before the calls, to compare with later."""

    name: str
    pid: int
    baseline: dict[str, int] = field(default_factory=dict)

    def take_baseline(self) -> None:
        self.baseline = socket_counts(self.pid)

    def check(self) -> tuple[dict[str, int], dict[str, int]]:
        """(counts now, leaks); OSError when the process is gone."""
        now = socket_counts(self.pid)
        return now, socket_leaks(self.baseline, now)


@dataclass
class LeakReport:
    """What was still open after the settle wait; ``ok`` when nothing was."""

    relay_calls: int | None = None
    """Live calls the relay still lists (None: it could not be asked)."""
    emulator: dict[str, int] | None = None
    """The emulator's open sessions, peers and tracks (None: no emulator in this stack, or unreadable)."""
    emulator_expected: bool = False
    sockets: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per process: socket counts now."""
    leaked_sockets: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per process, per kind: sockets beyond the baseline (only non-empty entries)."""
    idle_connections: int = 0
    """Idle pooled keep-alive connections the servers already closed (not leaks; see the module doc)."""
    settle_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def leaked_sessions(self) -> int | None:
        if self.relay_calls is None or (self.emulator_expected and self.emulator is None):
            return None
        return self.relay_calls + (self.emulator or {}).get("sessions", 0)

    @property
    def leaked_socket_count(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.leaked_sockets.values())

    @property
    def ok(self) -> bool:
        emulator_clear = self.emulator is None or all(self.emulator.get(k, 0) == 0 for k in EMULATOR_KEYS)
        return not self.errors and self.leaked_sessions == 0 and emulator_clear and not self.leaked_sockets

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "relay_calls": self.relay_calls,
            "emulator": self.emulator,
            "leaked_sessions": self.leaked_sessions,
            "leaked_sockets": self.leaked_socket_count,
            "leaked_sockets_by_process": self.leaked_sockets,
            "idle_connections": self.idle_connections,
            "sockets": self.sockets,
            "settle_s": round(self.settle_s, 3),
            "errors": self.errors,
        }


def emulator_secret(info: StackInfo) -> str | None:
    """The emulator's app secret (SFU mode only), which the stack keeps in memory and its 0600 stack file."""
    if info.emulator_url is None:
        return None
    if not info.sfu_app_secret:
        raise ValueError("the stack has an emulator but no app secret: cannot read the emulator's state")
    return info.sfu_app_secret


class StackWatch:
    """The leak checks of one running stack (its processes by PID, its relay, its emulator)."""

    def __init__(self, info: StackInfo) -> None:
        self.info = info
        self.relay = RelayAccess(info.relay_url, info.relay_signing_key.encode())
        self._secret = emulator_secret(info)
        self.processes = [ProcessSockets(name, pid) for name, pid in info.pids.items()]

    def take_baseline(self) -> None:
        for process in self.processes:
            process.take_baseline()

    async def check(self) -> LeakReport:
        """One look: sockets first (before this check's own HTTP connections exist), then the APIs."""
        report = LeakReport(emulator_expected=self._secret is not None)
        for process in self.processes:
            try:
                now, leaks = process.check()
            except OSError:
                report.errors.append(f"{process.name} (pid {process.pid}): the process is gone")
                continue
            report.sockets[process.name] = now
            report.idle_connections += now["tcp_idle"]
            if leaks:
                report.leaked_sockets[process.name] = leaks
        # A new connection per look, closed by the server after one answer: this check leaves no socket.
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, headers={"connection": "close"}) as http:
            try:
                response = await RelayInspector(http, self.relay).request(
                    "GET relay /v1/calls", "GET", "/v1/calls"
                )
                calls = response.json().get("calls")
                report.relay_calls = len(calls) if isinstance(calls, list) else None
                if report.relay_calls is None:
                    report.errors.append("GET relay /v1/calls: no calls list in the answer")
            except (CallError, ValueError) as exc:
                report.errors.append(str(exc))
            if self._secret is not None and self.info.emulator_url is not None:
                report.emulator = await self._emulator_state(http, report)
        return report

    async def _emulator_state(self, http: httpx.AsyncClient, report: LeakReport) -> dict[str, int] | None:
        assert self.info.emulator_url is not None and self._secret is not None
        url = self.info.emulator_url.removesuffix("/v1") + STATE_PATH
        try:
            response = await http.get(url, headers={"authorization": f"Bearer {self._secret}"})
            state = response.json()["state"] if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            report.errors.append(f"GET emulator {STATE_PATH}: {type(exc).__name__}")
            return None
        if not isinstance(state, dict):
            report.errors.append(f"GET emulator {STATE_PATH}: HTTP {response.status_code}")
            return None
        return {key: int(state.get(key, 0)) for key in EMULATOR_KEYS}

    async def settle(self, timeout_s: float) -> LeakReport:
        """Look every 0.5 s until nothing is left open or ``timeout_s`` passed: the last look decides."""
        start = time.monotonic()
        report = await self.check()
        for _ in range(int(timeout_s / POLL_S) + 1):  # bounded; the deadline ends it first
            if report.ok or time.monotonic() - start >= timeout_s:
                break
            await asyncio.sleep(POLL_S)
            report = await self.check()
        report.settle_s = time.monotonic() - start
        return report
