"""The fuzz tier's engine: one generator per target, run by hypothesis in CI and by a seeded loop at length.

A target is an async ``one(source)`` that draws one input from a :class:`Source`, sends it and checks the
oracle (raising ``AssertionError`` naming the input when it does not hold). The same code runs two ways:

- **bounded** (the default ``pytest`` run, CI): hypothesis drives the source (:class:`HypothesisSource`),
  so a failure is shrunk to a small input; :data:`CI_EXAMPLES` per target keeps the tier well under a
  minute.
- **long** (``SPLITRELAY_FUZZ_EXAMPLES=1000000``, or ``splitrelay fuzz``): a plain loop over
  :class:`RandomSource` seeded per input (``seed``, ``index``), so any failure is replayed exactly by its
  index, at a few microseconds of overhead per input instead of hypothesis's few hundred. It records every
  distinct failure (type, message and the frame that raised) and keeps going, then writes a JSON report.

Both count inputs the same way: one call of ``one`` is one input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

T = TypeVar("T")

EXAMPLES_ENV: Final = "SPLITRELAY_FUZZ_EXAMPLES"
SEED_ENV: Final = "SPLITRELAY_FUZZ_SEED"
REPORT_ENV: Final = "SPLITRELAY_FUZZ_REPORT"
TIME_LIMIT_ENV: Final = "SPLITRELAY_FUZZ_TIME_LIMIT_S"
CI_EXAMPLES: Final = 300
"""Per target in the default run: hypothesis examples (each one input)."""
LONG_RUN_FROM: Final = 5000
"""At this many inputs or more, the seeded loop runs instead of hypothesis."""
MAX_RECORDED_FAILURES: Final = 20


class KnownFailure(Exception):
    """A failure that is an open bug another engineer owns, with its ``xfail(strict=True)`` regression test
    in tests/fuzz/test_fuzz_found.py: counted in the report under ``label``, not failed on, so the tier stays
    green in CI while the bug is open. When it is fixed, its strict xfail passes, which fails, and its
    entry here goes."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


class Source(Protocol):
    """Where a generator gets its choices; hypothesis or a seeded ``random.Random``."""

    def integer(self, lo: int, hi: int) -> int: ...

    def blob(self, lo: int, hi: int) -> bytes: ...

    def text(self, lo: int, hi: int) -> str: ...


def choice(source: Source, items: Sequence[T]) -> T:
    return items[source.integer(0, len(items) - 1)]


def chance(source: Source, one_in: int) -> bool:
    return source.integer(1, one_in) == 1


# Characters a hostile text draws from: ASCII, controls, NUL, lone surrogates, BOM, RTL override, emoji.
_TEXT_ALPHABET: Final = (
    [chr(c) for c in range(0x20, 0x7F)] * 3
    + [chr(c) for c in range(0x00, 0x20)]
    + ["\x7f", "\u0085", "\u00ff", "\u2028", "\u202e", "\ufeff", "\ud800", "\udfff", "\ud83d", "😀", "é"]
    + ["\uffff"]
)  # fmt: skip


@dataclass
class RandomSource:
    rng: random.Random

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def blob(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def text(self, lo: int, hi: int) -> str:
        return "".join(self.rng.choices(_TEXT_ALPHABET, k=self.rng.randint(lo, hi)))


_TEXT_STRATEGY: Final = st.sampled_from(_TEXT_ALPHABET)


@dataclass
class HypothesisSource:
    data: st.DataObject

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def blob(self, lo: int, hi: int) -> bytes:
        return self.data.draw(st.binary(min_size=lo, max_size=hi))

    def text(self, lo: int, hi: int) -> str:
        return "".join(self.data.draw(st.lists(_TEXT_STRATEGY, min_size=lo, max_size=hi)))


One = Callable[[Source], Coroutine[Any, Any, None]]


def budget() -> int:
    """Inputs per target: :data:`CI_EXAMPLES` unless ``SPLITRELAY_FUZZ_EXAMPLES`` says otherwise."""
    value = os.environ.get(EXAMPLES_ENV, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else CI_EXAMPLES


@dataclass
class Failure:
    signature: str
    index: int
    message: str
    count: int = 1


@dataclass
class Report:
    target: str
    seed: int
    requested: int
    inputs: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    failed_inputs: int = 0
    known: dict[str, int] = field(default_factory=dict)
    """Inputs that hit an open, owned bug (:class:`KnownFailure`), by label."""
    stopped_by_time: bool = False

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, object]:
        doc = asdict(self)
        doc["inputs_per_s"] = round(self.rate, 1)
        doc["seconds"] = round(self.seconds, 2)
        return doc

    def summary(self) -> str:
        return (
            f"fuzz {self.target}: {self.inputs} inputs in {self.seconds:.1f} s ({self.rate:.0f}/s), "
            f"{self.failed_inputs} failing inputs, {len(self.failures)} distinct failures"
            + (f", known open bugs hit: {self.known}" if self.known else "")
            + (" (stopped by the time limit)" if self.stopped_by_time else "")
        )


def _signature(exc: BaseException) -> str:
    """Type, the first line of the message up to any input repr, and the innermost project frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/site-packages/" not in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    head = str(exc).split("\n", 1)[0].split(" <- ", 1)[0][:120]
    return f"{type(exc).__name__} at {where}: {head}"


async def run_loop(
    name: str, one: One, inputs: int, *, seed: int, time_limit_s: float | None = None
) -> Report:
    """``inputs`` inputs from seeds (seed, 0..inputs-1); every distinct failure kept, bounded in count."""
    report = Report(target=name, seed=seed, requested=inputs)
    by_signature: dict[str, Failure] = {}
    started = time.perf_counter()
    deadline = None if time_limit_s is None else started + time_limit_s
    progress_every = max(1000, inputs // 20)
    # Expected refusals log at INFO or WARNING (one line per input); a long run keeps none of them, so
    # neither the terminal nor pytest's log capture grows with the run. Errors (a 500's traceback) stay.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        await _loop(name, one, inputs, seed, report, by_signature, deadline, progress_every, started)
    finally:
        logging.disable(previous)
    report.seconds = time.perf_counter() - started
    report.failures = list(by_signature.values())
    return report


async def _loop(
    name: str,
    one: One,
    inputs: int,
    seed: int,
    report: Report,
    by_signature: dict[str, Failure],
    deadline: float | None,
    progress_every: int,
    started: float,
) -> None:
    for index in range(inputs):
        try:
            await one(RandomSource(random.Random(seed * 1_000_000_007 + index)))
        except KnownFailure as known:
            report.known[known.label] = report.known.get(known.label, 0) + 1
        except Exception as exc:
            report.failed_inputs += 1
            signature = _signature(exc)
            seen = by_signature.get(signature)
            if seen is not None:
                seen.count += 1
            elif len(by_signature) < MAX_RECORDED_FAILURES:
                by_signature[signature] = Failure(signature, index, str(exc)[:2000])
        report.inputs = index + 1
        if report.inputs % progress_every == 0:
            elapsed = time.perf_counter() - started
            print(
                f"  {name}: {report.inputs}/{inputs} in {elapsed:.0f} s "
                f"({report.inputs / elapsed:.0f}/s), {report.failed_inputs} failing",
                file=sys.stderr,
                flush=True,
            )
            if deadline is not None and time.perf_counter() > deadline:
                report.stopped_by_time = True
                break


def write_report(report: Report) -> None:
    folder = os.environ.get(REPORT_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{report.target}.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    print(report.summary(), file=sys.stderr, flush=True)


def run_target(
    name: str,
    runner: asyncio.Runner,
    one: One,
    *,
    examples: int | None = None,
) -> Report | None:
    """Run one target at the configured budget: hypothesis when bounded, the seeded loop when long.

    Raises ``AssertionError`` listing the distinct failures of a long run; a bounded run raises
    hypothesis's own (shrunk) failure. Returns the long run's report (None for a bounded run).
    """
    count = budget() if examples is None else examples
    if count >= LONG_RUN_FROM:
        seed = int(os.environ.get(SEED_ENV, "1") or "1")
        limit = os.environ.get(TIME_LIMIT_ENV)
        report = runner.run(
            run_loop(name, one, count, seed=seed, time_limit_s=float(limit) if limit else None)
        )
        write_report(report)
        assert not report.failures, "\n".join(
            f"{f.count} x {f.signature} (first at input {f.index}, seed {seed}):\n{f.message}"
            for f in report.failures
        )
        return report

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        derandomize=os.environ.get(SEED_ENV) is None,  # CI: the same inputs every run, never a flake
    )
    @given(data=st.data())
    def bounded(data: st.DataObject) -> None:
        try:
            runner.run(one(HypothesisSource(data)))
        except KnownFailure:
            pass

    bounded()
    return None
