"""`splitrelay bench relay --profile`'s profiler (scripts/bench/perf_profile.py): perf's report parsed and
categorised, and a real ``perf record`` of processes whose split is known."""

from __future__ import annotations

import asyncio
import shutil
import sys

import pytest

from splitrelay.bench.perf_profile import (
    CpuProfiler,
    Profile,
    category,
    parse_dso_report,
    parse_symbol_report,
)

# Captured from `perf report --stdio -n --no-children -g none --sort dso` of a relay-like process.
DSO_REPORT = """\
# Samples: 796  of event 'cpu-clock:ppp'
#
# Overhead       Samples  Shared Object
# ........  ............  ....................
#
    41.20%           328  [kernel.kallsyms]
    31.16%           248  libpython3.11.so.1.0
    15.96%           127  _binding.abi3.so
     4.63%            37  _fastpath.cpython-311-x86_64-linux-gnu.so
     1.63%            13  libc.so.6
     1.50%            12  _cffi_backend.cpython-311-x86_64-linux-gnu.so
     1.25%            10  loop.cpython-311-x86_64-linux-gnu.so
     1.25%            10  [vdso]
     1.00%             8  _multiarray_umath.cpython-311-x86_64-linux-gnu.so
     0.38%             3  [unknown]

#
# (Tip: Generate a script for your data: perf script -g <lang>)
"""

SYMBOL_REPORT = """\
# Overhead       Samples  Shared Object         Symbol
# ........  ............  ....................  ..........................
#
    16.48%           146  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault
     1.47%            13  [kernel.kallsyms]     [k] do_syscall_64
    14.79%           131  _binding.abi3.so      [.] srtp_protect_mki
"""


def test_perf_dso_names_fall_into_their_categories() -> None:
    assert category("[kernel.kallsyms]") == "kernel"
    assert category("libpython3.11.so.1.0") == "python interpreter"
    assert category("python3.12") == "python interpreter"
    assert category("_binding.abi3.so") == "libsrtp (pylibsrtp)"
    assert category("_fastpath.cpython-311-x86_64-linux-gnu.so") == "native fast path"
    assert category("_cffi_backend.cpython-311-x86_64-linux-gnu.so") == "cffi"
    assert category("loop.cpython-311-x86_64-linux-gnu.so") == "uvloop"
    assert category("libc.so.6") == category("[vdso]") == "libc and vdso"
    assert category("libcrypto.so.3") == "openssl"
    assert category("_multiarray_umath.cpython-311-x86_64-linux-gnu.so") == "other"
    assert category("[unknown]") == "other"


def test_a_dso_report_sums_samples_and_shares_by_category() -> None:
    samples, shares = parse_dso_report(DSO_REPORT)
    assert samples == 796
    assert shares[:4] == [
        ("kernel", 41.2),
        ("python interpreter", 31.2),
        ("libsrtp (pylibsrtp)", 16.0),
        ("native fast path", 4.6),
    ]
    assert dict(shares)["libc and vdso"] == 2.9
    assert dict(shares)["other"] == 1.4
    assert parse_dso_report("# nothing sampled\n") == (0, [])


def test_a_symbol_report_gives_the_busiest_symbols_first() -> None:
    top = parse_symbol_report(SYMBOL_REPORT, limit=2)
    assert top == [
        (16.48, "libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"),
        (14.79, "_binding.abi3.so", "srtp_protect_mki"),
    ]


SPIN = "import os, time\nend = time.monotonic() + 6\nwhile time.monotonic() < end:\n    {}\n"
SPIN_PYTHON = SPIN.format("sum(range(300))")
SPIN_SYSCALLS = SPIN.format("os.stat('/')")


async def _profile(code: str) -> Profile | str:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    try:
        await asyncio.sleep(0.3)
        profiler = await CpuProfiler.start(child.pid)
        await asyncio.sleep(1.5)
        return await profiler.stop()
    finally:
        child.kill()
        await child.wait()


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed (Debian: linux-perf)")
def test_a_real_perf_record_sees_where_a_process_spends_its_cpu() -> None:
    python_bound = asyncio.run(_profile(SPIN_PYTHON))
    syscall_bound = asyncio.run(_profile(SPIN_SYSCALLS))
    if isinstance(python_bound, str) and "no sample" not in python_bound:
        pytest.skip(f"perf may not sample here: {python_bound}")
    assert isinstance(python_bound, Profile) and isinstance(syscall_bound, Profile)
    assert python_bound.samples > 100
    python_shares, syscall_shares = dict(python_bound.shares), dict(syscall_bound.shares)
    assert python_shares["python interpreter"] > 60
    assert syscall_shares.get("kernel", 0.0) > python_shares.get("kernel", 0.0) + 15
    assert python_bound.top and python_bound.top[0][1].startswith("libpython")
    assert python_bound.as_json()["shares"]["python interpreter"] == python_shares["python interpreter"]


def test_profiling_a_process_that_is_gone_says_why() -> None:
    async def run() -> Profile | str:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await child.wait()
        profiler = await CpuProfiler.start(child.pid)
        await asyncio.sleep(0.2)
        return await profiler.stop()

    result = asyncio.run(run())
    assert isinstance(result, str) and result
