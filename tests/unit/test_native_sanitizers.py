"""The native path built with AddressSanitizer and UBSan, run over the differential traffic.

The sanitized module (relay/native/build.py ``--sanitize``) is built into a scratch directory and loaded
in a child Python with the sanitizer runtimes preloaded, in place of the optimized one; the child runs
the same differential rounds as tests/unit/test_native_fastpath.py plus raw parser inputs. Any
out-of-bounds access or undefined behaviour aborts the child. A second child reads past a buffer on
purpose, to show the sanitizer is really there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from splitrelay.relay.native import build as native_build

ROUNDS = 15_000  # 4-10 s here, under the 20 s of an unmarked test
REPO = Path(__file__).resolve().parents[2]

LOAD = textwrap.dedent(
    """
    import importlib.util, random, sys
    from splitrelay.relay.media import native
    spec = importlib.util.spec_from_file_location("_fastpath_asan", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    native._native, native._native_reason = module, "native"
    """
)

DIFFERENTIAL = LOAD + textwrap.dedent(
    """
    from tests.fuzz.engine import RandomSource
    from tests.native_traffic import Differential, check_parse, one_round
    rng = random.Random(11)
    source = RandomSource(rng)
    diff = Differential()
    for seq in range(int(sys.argv[2])):
        one_round(source, diff, seq)
        blob = rng.randbytes(rng.randint(0, 64))
        check_parse(blob, rng.choice((1, None, 15)))
        if blob:
            check_parse(bytes((0x80 | (blob[0] & 0x3F),)) + blob[1:], 1)
    print("compared", diff.compared)
    """
)

RECEIVE = LOAD + textwrap.dedent(
    """
    import socket
    from splitrelay.relay.media.shared_port import BatchReader
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    results = []
    for native_path in (True, False):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        got = []
        deliver = lambda d, a: got.append((d, a))
        stamps = native_path and native.rx_timestamps(rx.fileno())  # recvmmsg with control messages
        reader = BatchReader(rx, deliver, native_path=native_path, batch=int(sys.argv[2]), stamps=stamps)
        chunk = random.Random(7)
        sizes = (0, 1, 12, 172, 1200, native.RECV_SLOT, native.RECV_SLOT + 9)
        for _ in range(40):  # in chunks the socket buffer holds
            for _ in range(chunk.randint(1, 60)):
                tx.sendto(chunk.randbytes(chunk.choice(sizes)), rx.getsockname())
            for _ in range(70):  # up to 60 datagrams a chunk, one a turn at batch 1
                reader.drain()
        results.append((got, reader.oversize))
        rx.close()
    assert results[0] == results[1], "native and Python readers differ"
    print("received", len(results[0][0]))
    """
)

BATCH = LOAD + textwrap.dedent(
    """
    from tests.unit.test_native_batch import Bench, flow_table_round
    rng = random.Random(3)
    bench = Bench()
    made = 0
    for step in range(int(sys.argv[2])):
        datagrams = []
        for _ in range(rng.randint(1, 32)):
            sender = rng.choice(bench.senders)
            roll = rng.random()
            if roll < 0.5:
                data = sender.packet(rng.randbytes(rng.randint(0, 300)), rng.choice((None, 5, 90)))
            elif roll < 0.6:
                data = sender.padded(b"p", rng.choice((0, 1, 3, 200)))
            elif roll < 0.75:
                data = sender.packet(b"x")[: rng.randint(0, 40)]
            elif roll < 0.9:
                head = bytes((0x80 | rng.randrange(64), rng.randrange(256)))
                data = head + rng.randbytes(rng.randint(0, 1500))
            else:
                data = rng.randbytes(rng.randint(0, 100))
            datagrams.append(data)
        for slot in bench.slots:
            slot.set_gate(rng.randrange(3), rng.randrange(128), rng.random() < 0.5)
            slot.set_playing_until(rng.choice((0, 1 << 62, 10**12)))
        arrivals = [rng.choice((10**12 - 1, 10**12, 10**12 + 1)) for _ in datagrams]
        decisions, out = bench.run(datagrams, arrival=arrivals)
        made += len(out)
        if step % 200 == 0:
            flow_table_round(rng, native.NativeInbound(1, calls=5, flows=64), 5)
    bench.close()
    print("batched", made)
    """
)

OUTBOUND = LOAD + textwrap.dedent(
    """
    import socket
    from tests.unit.test_native_out import OutBench, out_round
    rng = random.Random(4)
    bench = OutBench(pace=True)  # waiting frames held in C rings and paced (sr_pace) too
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    media.setblocking(False)
    made = 0
    for step in range(int(sys.argv[2])):
        fd = media.fileno() if step % 2 else -1
        made += out_round(rng, bench, 10**12 + step * rng.choice((0, 20_000_000, 300_000_000)), fd)
        if step % 300 == 0:
            churn = native.NativeOutbound(1, ids=16)
            entries = [churn.open_entry() for _ in range(10)]
            for _ in range(200):
                entry = rng.choice(entries)
                if rng.random() < 0.5:
                    churn.map(entry, rng.randrange(1, 50), ("127.0.0.1", 1))
                else:
                    churn.close_entry(entry)
                    entries.remove(entry)
                    entries.append(churn.open_entry())
    bench.close()
    media.close()
    print("protected", made)
    """
)

DRAIN = LOAD + textwrap.dedent(
    """
    import asyncio, pytest
    from tests.unit import test_native_batch as inbound, test_native_out as outbound
    finished = 0
    for seed in (1, 2):
        for group in (1, 2):
            mp = pytest.MonkeyPatch()
            reference = asyncio.run(inbound.run("python", seed, group, mp))
            for path in inbound.PATHS[1:]:
                got = asyncio.run(inbound.run(path, seed, group, mp))
                assert (got["wire"], got["dwell"]) == (reference["wire"], reference["dwell"]), path
                finished += got["finished"]
            mp.undo()
    for seed, drain, pace in ((2, "drain-small", False), (1, "drain-back", False), (4, "drain-small", True)):
        mp = pytest.MonkeyPatch()
        asyncio.run(outbound.test_the_c_path_and_the_python_path_send_the_same_bytes_and_count_the_same(
            seed, drain, pace, mp
        ))
        mp.undo()
    print("drained", finished)
    """
)

OVERREAD = LOAD + textwrap.dedent(
    """
    ffi, lib = module.ffi, module.lib
    data = ffi.new("unsigned char[]", 4)  # parse is told 64 bytes: reads past the allocation
    data[0] = 0x80
    lib.sr_parse_rtp(data, 64, 1, ffi.new("sr_rtp *"))
    print("no sanitizer report")
    """
)


def _runtime(name: str) -> str | None:
    found = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=False)
    path = found.stdout.strip()
    return path if found.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed for the sanitizer build (the CI installs it)")
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if asan is None or ubsan is None:
        pytest.fail("gcc has no libasan/libubsan runtime (Debian: gcc brings libasan8 and libubsan1)")
    module = native_build.build(tmp_path_factory.mktemp("asan"), sanitize=True)
    env = {
        **os.environ,
        "LD_PRELOAD": f"{asan}:{ubsan}",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=86",  # CPython's own allocations "leak"
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87",
        "PYTHONPATH": str(REPO),
    }
    return module, env


def run_sanitized(
    sanitized: tuple[Path, dict[str, str]], script: str, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``script`` in a child Python that loads the sanitized build of the extension."""
    module, env = sanitized
    return subprocess.run(
        [sys.executable, "-c", script, str(module), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def test_differential_traffic_runs_clean_under_asan_and_ubsan(sanitized: tuple[Path, dict[str, str]]) -> None:
    result = run_sanitized(sanitized, DIFFERENTIAL, str(ROUNDS), timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "runtime error" not in result.stderr  # UBSan reports, even ones that did not halt
    compared = int(result.stdout.split()[-1])
    assert compared >= 2 * ROUNDS


def test_the_per_batch_path_runs_clean_under_asan_and_ubsan(sanitized: tuple[Path, dict[str, str]]) -> None:
    """fastpath.c ``sr_batch_in`` and the flow table over valid, truncated, padded, forged and random
    datagrams, every gate mode and playback state (tests/unit/test_native_batch.py ``Bench``)."""
    result = run_sanitized(sanitized, BATCH, "3000", timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "runtime error" not in result.stderr
    assert int(result.stdout.split()[-1]) > 1000


def test_the_outbound_path_runs_clean_under_asan_and_ubsan(
    sanitized: tuple[Path, dict[str, str]],
) -> None:
    """fastpath.c ``sr_batch_out``, ``sr_pace`` (frames held in rings), SRTP protect and sendmmsg, and the
    call-id table over well-formed, odd and random datagrams from inference in every playout state
    (test_native_out.py ``OutBench``)."""
    result = run_sanitized(sanitized, OUTBOUND, "3000", timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "runtime error" not in result.stderr
    assert int(result.stdout.split()[-1]) > 500


def test_draining_batch_after_batch_runs_clean_under_asan_and_ubsan(
    sanitized: tuple[Path, dict[str, str]],
) -> None:
    """fastpath.c ``sr_drain_in``/``sr_drain_out`` (recvmmsg, the per-batch paths, sendmmsg, batch after
    batch) on the differential runs of test_native_batch.py and test_native_out.py."""
    result = run_sanitized(sanitized, DRAIN, timeout=110)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "runtime error" not in result.stderr
    assert int(result.stdout.split()[-1]) > 1000


def test_the_sanitizer_catches_an_overread(sanitized: tuple[Path, dict[str, str]]) -> None:
    result = run_sanitized(sanitized, OVERREAD, timeout=60)
    assert result.returncode == 86, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "heap-buffer-overflow" in result.stderr


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_batched_receive_runs_clean_and_matches_the_reference(
    sanitized: tuple[Path, dict[str, str]], batch: int
) -> None:
    result = run_sanitized(sanitized, RECEIVE, str(batch), timeout=60)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "runtime error" not in result.stderr
    assert int(result.stdout.split()[-1]) > 500
