"""Per-call results of `splitrelay bench calls` and their summary per configuration.

Pure: no I/O. A call is one :class:`CallResult` (one JSON line in ``calls.jsonl``), failed or not;
a configuration's numbers are percentiles over its measured calls (warm-up calls are kept in the
file and counted when they fail, never in the latencies). Percentiles are scripts/bench/stats.py's (the
one definition of every benchmark: numpy's default), so any number can be checked from the JSON lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from splitrelay.bench.stats import percentile, ratio
from splitrelay.devtools.budget import CallReport

QUANTILES: Final = (50, 95, 99)
MAX_REASONS: Final = 5
MAX_REASON_CHARS: Final = 300
# Rows of the comparison that have an A/B ratio: (summary key, quantile) pairs.
LATENCIES: Final = ("voice_to_voice_ms", "response_ms", "setup_ms", "connect_ms", "relay_dwell_ms")


@dataclass
class CallResult:
    """One call as the harness saw it: its outcome, its headline numbers and the caller's full report."""

    config: str
    seq: int
    """Position among this configuration's calls (warm-up calls count too), from 1."""
    block: int
    """Index of the block in the run's schedule (-1: warm-up)."""
    warmup: bool
    started_s: float
    """Start, seconds since the run began."""
    wall_ms: float
    ok: bool
    error: str | None = None
    call_id: str | None = None
    voice_to_voice_ms: list[float | None] = field(default_factory=list)
    response_ms: list[float | None] = field(default_factory=list)
    endpointing_ms: list[float | None] = field(default_factory=list)
    setup_ms: float | None = None
    """POST /v1/calls → the whole path up (the caller's ICE+DTLS, the edge's record, the relay's call)."""
    connect_ms: float | None = None
    """POST /v1/calls → the caller's ICE+DTLS connected."""
    relay_dwell_ms: float | None = None
    """The relay's p50 dwell in + out over this call."""
    report: dict[str, Any] | None = None

    @classmethod
    def from_report(
        cls,
        report: CallReport,
        *,
        config: str,
        seq: int,
        block: int,
        warmup: bool,
        started_s: float,
        wall_ms: float,
    ) -> CallResult:
        relay = report.relay
        dwell = None
        if relay is not None and relay.dwell_in_p50_ms is not None and relay.dwell_out_p50_ms is not None:
            dwell = relay.dwell_in_p50_ms + relay.dwell_out_p50_ms
        return cls(
            config=config,
            seq=seq,
            block=block,
            warmup=warmup,
            started_s=started_s,
            wall_ms=wall_ms,
            ok=report.ok,
            error=None if report.ok else "; ".join(report.errors)[:MAX_REASON_CHARS] or "no turn measured",
            call_id=report.call_id,
            voice_to_voice_ms=[t.voice_to_voice_ms for t in report.turns],
            response_ms=[t.response_ms for t in report.turns],
            endpointing_ms=[t.endpointing_ms for t in report.turns],
            setup_ms=report.connect.ready_ms if report.connect is not None else None,
            connect_ms=report.connect.connect_ms if report.connect is not None else None,
            relay_dwell_ms=dwell,
            report=report.to_json(),
        )

    @classmethod
    def failed(
        cls, error: str, *, config: str, seq: int, block: int, warmup: bool, started_s: float, wall_ms: float
    ) -> CallResult:
        return cls(
            config=config,
            seq=seq,
            block=block,
            warmup=warmup,
            started_s=started_s,
            wall_ms=wall_ms,
            ok=False,
            error=error[:MAX_REASON_CHARS] or "failed without a message",
        )

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("started_s", "wall_ms", "setup_ms", "connect_ms", "relay_dwell_ms"):
            if isinstance(doc[key], float):
                doc[key] = round(doc[key], 3)
        for key in ("voice_to_voice_ms", "response_ms", "endpointing_ms"):
            doc[key] = [None if v is None else round(v, 3) for v in doc[key]]
        return doc


def quantiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in QUANTILES}


def _flat(results: Sequence[CallResult], name: str) -> list[float]:
    out: list[float] = []
    for result in results:
        value = getattr(result, name)
        items = value if isinstance(value, list) else [value]
        out += [v for v in items if v is not None]
    return out


def turn_latch(results: Sequence[CallResult]) -> dict[str, Any]:
    """Voice-to-voice of each call's first turn against its last (calls with two or more measured turns).

    The question a lossy network asks: does latency latch after a loss burst (a queue that never
    drains, a jitter buffer that only grows)? Then the last turn of a call is slower than the first.
    ``last_over_first`` is the median of the per-call ratios, so one slow call cannot hide or fake it.
    """
    pairs = [
        (r.voice_to_voice_ms[0], r.voice_to_voice_ms[-1])
        for r in results
        if len(r.voice_to_voice_ms) >= 2 and r.voice_to_voice_ms[0] and r.voice_to_voice_ms[-1] is not None
    ]
    per_call = [last / first for first, last in pairs if first is not None and first > 0 and last is not None]
    return {
        "calls": len(pairs),
        "first_ms": quantiles([first for first, _ in pairs if first is not None]),
        "last_ms": quantiles([last for _, last in pairs if last is not None]),
        "last_over_first": quantiles(per_call),
    }


def summarize(results: Sequence[CallResult]) -> dict[str, Any]:
    """One configuration's numbers: counts, failure reasons, latency percentiles over measured calls."""
    measured = [r for r in results if not r.warmup]
    good = [r for r in measured if r.ok]
    failed = [r for r in results if not r.ok]
    reasons = Counter((r.error or "?") for r in failed)
    doc: dict[str, Any] = {
        "calls": len(measured),
        "ok": len(good),
        "failed": len(failed),
        "warmup_calls": len(results) - len(measured),
        "failure_reasons": [{"reason": r, "calls": n} for r, n in reasons.most_common(MAX_REASONS)],
        "turns": len(_flat(good, "voice_to_voice_ms")),
    }
    for name in LATENCIES:
        doc[name] = quantiles(_flat(good, name))
    doc["endpointing_ms"] = quantiles(_flat(good, "endpointing_ms"))
    doc["turn_latch"] = turn_latch(good)
    doc["call_wall_s"] = {
        k: (v / 1000 if v is not None else None) for k, v in quantiles(_flat(good, "wall_ms")).items()
    }
    return doc


def ratios(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """A ÷ B for every latency percentile (None where either side has no value)."""
    return {
        name: {q: ratio(a[name][q], b[name][q]) for q in a[name]}
        for name in LATENCIES
        if name in a and name in b
    }
