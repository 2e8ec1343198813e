"""Where one process's CPU goes, by shared object: ``perf record`` over a window, then ``perf report``.

What `splitrelay bench relay --profile` prints beside its table: the relay's samples split into the kernel,
the Python interpreter, libsrtp, our C fast path, cffi, uvloop and the rest, with the top symbols. That is
the "profile of what is left" issue 17 asks of a run that misses its targets, taken in the same command.

perf samples at ``FREQUENCY_HZ`` without call graphs (a few hundred interrupts a second on the subject's
core: small against the tens of thousands of datagrams it moves). On Python 3.11 perf cannot name Python
functions (no perf trampoline before 3.12): the interpreter's share is one figure, its top C symbols say
what kind of work it is (evaluation, allocation, attribute lookups). Where perf is missing or may not
sample, ``stop`` says why and the run goes on without a profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

FREQUENCY_HZ: Final = 499  # prime, so sampling does not beat with the 20 ms media clock
STOP_S: Final = 20.0
REPORT_S: Final = 60.0
TOP_SYMBOLS: Final = 12

CATEGORIES: Final = (
    ("kernel", re.compile(r"^\[kernel")),
    ("python interpreter", re.compile(r"libpython3|^python3(\.\d+)?$")),
    ("libsrtp (pylibsrtp)", re.compile(r"^_binding\.abi3\.so$|libsrtp")),
    ("native fast path", re.compile(r"^_fastpath")),
    ("cffi", re.compile(r"^_cffi_backend")),
    ("uvloop", re.compile(r"^loop\.cpython")),
    ("libc and vdso", re.compile(r"^libc[.-]|^ld-linux|^libm[.-]|^\[vdso\]")),
    ("openssl", re.compile(r"^libcrypto|^libssl")),
)
"""(category, pattern on perf's dso name), first match wins; anything else is "other"."""

_ROW = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S.*?)\s*$")


def category(dso: str) -> str:
    """The category of one of perf's dso names (``[kernel.kallsyms]``, ``libpython3.11.so.1.0``, ...)."""
    for name, pattern in CATEGORIES:
        if pattern.search(dso):
            return name
    return "other"


@dataclass(frozen=True)
class Profile:
    """One process's samples over a window, split by category (percent of its samples)."""

    samples: int
    shares: list[tuple[str, float]]
    """(category, percent), largest first; categories with no sample are left out."""
    top: list[tuple[float, str, str]] = field(default_factory=list)
    """(percent, dso, symbol) of the busiest symbols."""

    def as_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "shares": {name: share for name, share in self.shares},
            "top": [{"percent": p, "dso": d, "symbol": s} for p, d, s in self.top],
        }


def _rows(text: str) -> Iterator[tuple[float, int, str]]:
    """(percent, samples, the rest of the line) of each row of ``perf report -n --stdio``'s table."""
    for line in text.splitlines():
        row = None if line.startswith("#") else _ROW.match(line)
        if row is not None:
            yield float(row[1]), int(row[2]), row[3]


def parse_dso_report(text: str) -> tuple[int, list[tuple[str, float]]]:
    """``perf report --sort dso -n --stdio`` to (samples, [(category, percent)]), largest first."""
    samples = 0
    shares: dict[str, float] = {}
    for percent, count, dso in _rows(text):
        samples += count
        name = category(dso)
        shares[name] = shares.get(name, 0.0) + percent
    ordered = sorted(((n, round(s, 1)) for n, s in shares.items()), key=lambda item: -item[1])
    return samples, ordered


def parse_symbol_report(text: str, limit: int = TOP_SYMBOLS) -> list[tuple[float, str, str]]:
    """``perf report --sort dso,sym -n --stdio`` to the ``limit`` busiest (percent, dso, symbol)."""
    out: list[tuple[float, str, str]] = []
    for percent, _, rest in _rows(text):
        dso, _, symbol = rest.partition(" ")
        out.append((percent, dso, symbol.strip().removeprefix("[.]").removeprefix("[k]").strip()))
    out.sort(key=lambda item: -item[0])
    return out[:limit]


class CpuProfiler:
    """``perf record`` on one process from ``start`` to ``stop`` (the caller's measured window)."""

    def __init__(
        self, process: asyncio.subprocess.Process | None, error: str | None, scratch: Path | None
    ) -> None:
        self._process = process
        self._error = error
        self._scratch = scratch

    @classmethod
    async def start(cls, pid: int, frequency: int = FREQUENCY_HZ) -> CpuProfiler:
        perf = shutil.which("perf")
        if perf is None:
            return cls(None, "perf is not installed (Debian: linux-perf)", None)
        scratch = Path(tempfile.mkdtemp(prefix="splitrelay-perf-"))
        try:
            process = await asyncio.create_subprocess_exec(
                perf, "record", "-q", "-F", str(frequency), "-p", str(pid), "-o", str(scratch / "perf.data"),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            return cls(None, f"perf: {exc}", None)
        return cls(process, None, scratch)

    async def stop(self) -> Profile | str:
        """The profile, or why there is none."""
        process, scratch = self._process, self._scratch
        if process is None or scratch is None:
            return self._error or "not started"
        try:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
            try:
                _, err = await asyncio.wait_for(process.communicate(), STOP_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                return f"perf record did not stop within {STOP_S:g} s"
            data = scratch / "perf.data"
            if not data.exists():
                tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                return f"perf record wrote nothing ({tail[0][:200]})"
            by_dso, error = await _report(data, "dso")
            if error:
                return error
            samples, shares = parse_dso_report(by_dso)
            if samples == 0:
                return "perf recorded no sample of the process"
            by_symbol, error = await _report(data, "dso,sym")
            return Profile(samples, shares, [] if error else parse_symbol_report(by_symbol))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


async def _report(data: Path, sort: str) -> tuple[str, str | None]:
    """(``perf report``'s text for ``sort``, None), or ("", why it failed)."""
    perf = shutil.which("perf") or "perf"
    process = await asyncio.create_subprocess_exec(
        perf, "report", "-i", str(data), "--stdio", "-n", "--no-children", "-g", "none",
        "--percent-limit", "0.1", "--sort", sort,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), REPORT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        return "", f"perf report did not finish within {REPORT_S:g} s"
    if process.returncode != 0:
        return "", f"perf report failed: {err.decode(errors='replace').strip()[-200:]}"
    return out.decode(errors="replace"), None
