"""Child processes that announce themselves: start, wait for the ready line, stop by PID.

The one helper for every parent in the kit: the per-core relay workers (relay/workers.py), the local
stack (scripts/devtools/stack.py), the benchmarks (scripts/bench/) and the emulator's bench. A child is
started in its own session (a Ctrl-C in the terminal reaches only the parent, which stops its children
in order) with its stdout on a pipe; it says it is ready by printing one line, by default a JSON object
with ``"event": "ready"``. Waiting for that line is bounded in time and in lines, and a child that exits
first is reported with its exit code. Stopping is by PID (or by the process group the child leads):
SIGTERM, a bounded wait, SIGKILL, then the exit status is reaped. Never by name.

Here in the relay package because the relay's workers need it and the runtime relay does not depend
on dev tooling; stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

ReadyParser = Callable[[str], dict[str, Any] | None]
"""A stdout line (decoded, stripped) -> the ready document, or None for a line that is not it."""

STDOUT_LINE_LIMIT: Final = 1 << 20  # children print short lines; 1 MiB bounds a runaway one
MAX_READY_LINES: Final = 200  # a child that prints this much without a ready line is not starting
KILL_WAIT_S: Final = 5.0  # after SIGKILL, how long the reap may take
_PR_SET_PDEATHSIG: Final = 1

_libc: Any = None
_libc_path = ctypes.util.find_library("c")
if _libc_path and sys.platform == "linux":
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(_libc_path, use_errno=True)


class ChildError(RuntimeError):
    """A child could not start, was not ready in time, or exited first; the message names the child."""


def cli_command(*args: str) -> list[str]:
    """The `splitrelay` command for a child process, without relying on the console script's PATH."""
    return [sys.executable, "-m", "splitrelay.cli", *args]


def json_ready(event: str | None = "ready") -> ReadyParser:
    """The first JSON object line whose ``"event"`` is ``event`` (any JSON object when ``event`` is None)."""

    def parse(line: str) -> dict[str, Any] | None:
        if not line.startswith("{"):
            return None
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict) or (event is not None and doc.get("event") != event):
            return None
        return doc

    return parse


def _child_setup(cores: frozenset[int] | None, die_with_parent: bool) -> None:  # pragma: no cover
    """Runs in the child between fork and exec: pin it, and have it SIGTERMed if the parent dies."""
    if cores is not None:
        os.sched_setaffinity(0, cores)
    if die_with_parent and _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ChildProcess:
    """One started child; ``pid`` is what it is stopped by."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, stderr_path: Path | None) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        self.stderr_path = stderr_path
        self.killed = False
        """True when ``stop`` had to SIGKILL it."""

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: bool = False,
        stderr: Path | None = None,
        cores: Collection[int] | None = None,
        die_with_parent: bool = True,
    ) -> ChildProcess:
        """Start ``argv`` in a new session, stdout piped; stderr appended to the file ``stderr`` (None:
        inherited); pinned to ``cores`` when given; SIGTERMed if this process dies (Linux)."""
        pinned = None if cores is None else frozenset(cores)
        log = stderr.open("ab") if stderr is not None else None
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=None if env is None else dict(env),
                cwd=None if cwd is None else str(cwd),
                start_new_session=True,
                preexec_fn=(lambda: _child_setup(pinned, die_with_parent)) if pinned or _libc else None,
                limit=STDOUT_LINE_LIMIT,
            )
        except OSError as exc:
            raise ChildError(f"{name}: cannot start {argv[0]}: {exc.strerror or exc}") from None
        finally:
            if log is not None:
                log.close()  # the child holds its own copy of the descriptor
        return cls(name, process, stderr)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def _readline(self, within: float) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            return await asyncio.wait_for(stdout.readline(), max(0.0, within))
        except ValueError:  # asyncio's LimitOverrunError surfaces as ValueError from readline
            raise ChildError(f"{self.name}: printed a line longer than {STDOUT_LINE_LIMIT} bytes") from None

    async def read_line(self, within: float) -> bytes:
        """The next stdout line (b"" at EOF); ChildError after ``within`` seconds or on an overlong line."""
        try:
            return await self._readline(within)
        except TimeoutError:
            raise ChildError(f"{self.name}: sent nothing for {within:g} s") from None

    async def wait_ready(
        self,
        parse: ReadyParser | None = None,
        *,
        within: float,
        max_lines: int = MAX_READY_LINES,
        on_line: Callable[[bytes], None] | None = None,
    ) -> dict[str, Any]:
        """The ready document from the first stdout line ``parse`` accepts (default: a JSON ready line).

        Every line read (ready or not) is passed to ``on_line`` first, e.g. to log it. Raises ChildError
        when ``within`` seconds pass, ``max_lines`` lines pass, or the child exits first.
        """
        accept = parse or json_ready()
        deadline = time.monotonic() + within
        for _ in range(max_lines):
            try:
                line = await self._readline(deadline - time.monotonic())
            except TimeoutError:
                raise ChildError(f"{self.name}: no ready line within {within:g} s") from None
            if not line:
                code = await self.wait(KILL_WAIT_S)
                raise ChildError(f"{self.name}: exited with code {code} before it was ready")
            if on_line is not None:
                on_line(line)
            doc = accept(line.decode("utf-8", "replace").strip())
            if doc is not None:
                return doc
        raise ChildError(f"{self.name}: {max_lines} lines without a ready line")

    async def wait(self, within: float) -> int | None:
        """The exit status once it exits, or None if it still runs after ``within`` seconds."""
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            return None

    def _signal(self, signum: int, group: bool) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, signum)  # the child leads its own session: its group id is its PID
            else:
                os.kill(self.pid, signum)

    async def stop(self, grace: float = 10.0, *, group: bool = False) -> int | None:
        """SIGTERM by PID (``group``: to the process group it leads), SIGKILL after ``grace`` seconds,
        then reap; closes its stdin. Returns the exit status (negative: the signal). Idempotent."""
        if self.process.returncode is None:
            self._signal(signal.SIGTERM, group)
            if await self.wait(grace) is None:
                self.killed = True
                self._signal(signal.SIGKILL, group)
                await self.wait(KILL_WAIT_S)
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        return self.process.returncode

    def stderr_tail(self, lines: int = 12) -> str:
        """The last lines of its stderr file ("" when it has none)."""
        if self.stderr_path is None:
            return ""
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])
