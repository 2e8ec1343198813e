"""`splitrelay bench calls` on a terminal: the A/B table (rich) and the lines under it.

Reads only the result document that ``--json`` prints, so the table never shows a number the JSON
lacks. Metrics are rows, the two configurations columns, and A ÷ B the last column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from splitrelay.bench.calls_stats import QUANTILES

Cell = Callable[[Mapping[str, Any]], Any]


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _times(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return ""
    return f"{a / b:.2f}"


def _quantile(key: str, q: int) -> Cell:
    def cell(section: Mapping[str, Any]) -> Any:
        return section["summary"][key][f"p{q}"]

    return cell


def _rows() -> list[tuple[str, Cell, bool]]:
    """(label, how to read the value from a configuration's section, whether A ÷ B means anything)."""
    rows: list[tuple[str, Cell, bool]] = [
        ("calls ok / measured", lambda c: f"{c['summary']['ok']}/{c['summary']['calls']}", False),
        ("failed (warm-up incl.)", lambda c: c["summary"]["failed"], False),
    ]
    for key, name in (
        ("voice_to_voice_ms", "voice-to-voice"),
        ("response_ms", "response"),
        ("setup_ms", "setup"),
        ("connect_ms", "caller connect"),
    ):
        for q in QUANTILES:
            rows.append((f"{name} p{q}", _quantile(key, q), True))
    rows += [
        ("v2v first turn p50", lambda c: c["summary"]["turn_latch"]["first_ms"]["p50"], True),
        ("v2v last turn p50", lambda c: c["summary"]["turn_latch"]["last_ms"]["p50"], True),
        (
            "last ÷ first turn p50",
            lambda c: _times(c["summary"]["turn_latch"]["last_over_first"]["p50"]),
            False,
        ),
        (
            "last ÷ first turn p99",
            lambda c: _times(c["summary"]["turn_latch"]["last_over_first"]["p99"]),
            False,
        ),
        ("relay dwell p50", lambda c: c["summary"]["relay_dwell_ms"]["p50"], True),
        ("relay dwell p99", lambda c: c["summary"]["relay_dwell_ms"]["p99"], True),
        ("stack CPU / call", lambda c: c["cpu"]["stack_ms_per_call"], True),
        ("caller CPU / call", lambda c: c["cpu"]["caller_ms_per_call"], True),
        ("leaked sessions", lambda c: c["leaks"]["leaked_sessions"], False),
        ("leaked sockets", lambda c: c["leaks"]["leaked_sockets"], False),
        ("idle pooled conns", lambda c: c["leaks"]["idle_connections"], False),
        ("settled after, s", lambda c: c["leaks"]["settle_s"], False),
    ]
    return rows


LEGEND = (
    "times in ms. voice-to-voice: first reply packet in - last speech frame due; response: the part after "
    "the agent's endpointing wait; setup: POST /v1/calls → whole path up (caller ICE+DTLS, edge record, "
    "relay call live); caller connect: POST /v1/calls → the caller's own ICE+DTLS connected (the relay's "
    "own SFU leg, and its turns when the SFU shares one socket, are in setup, not in caller connect); "
    "first/last turn: voice-to-voice of each call's first and last turn (calls of 2+ "
    "turns; n/a with --turns 1), last ÷ first the percentiles of the per-call ratio: above 1 means "
    "latency latched; "
    "relay dwell: in + out, percentiles over calls of each call's p50; CPU: the "
    "stack's processes and the caller (this process) during that side's blocks; leaked: still open "
    "after the settle wait (relay calls + emulator sessions; sockets beyond the count taken before the "
    "calls); idle pooled conns: keep-alive connections their server closed, waiting in an httpx pool "
    "(not leaks; more than 20 in one process would be)"
)


def _text(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return _ms(value)
    return str(value)


def render(doc: Mapping[str, Any], console: Console) -> None:
    """The comparison table, then failures, leaks, impairment, machine and where the files are."""
    a, b = doc["configs"]["a"], doc["configs"]["b"]
    settings = doc["settings"]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=(
            f"bench calls: {settings['calls']} calls per configuration, "
            f"concurrency {settings['concurrency']}, "
            f"{settings['turns']} turn(s) of {settings['utterance']['name']}"
        ),
        title_justify="left",
    )
    table.add_column("metric", no_wrap=True)
    # fold, never ellipsize: two specs that differ only at their end (sfu_socket=...) must stay apart
    table.add_column(f"A: {a['variant']['spec']}", justify="right", overflow="fold")
    table.add_column(f"B: {b['variant']['spec']}", justify="right", overflow="fold")
    table.add_column("A ÷ B", justify="right")
    for label, cell, has_ratio in _rows():
        va, vb = cell(a), cell(b)
        table.add_row(label, _text(va), _text(vb), _ratio(va, vb) if has_ratio else "")
    console.print(table)
    console.print(LEGEND, style="dim")
    for side, section in (("A", a), ("B", b)):
        for item in section["summary"]["failure_reasons"]:
            console.print(f"[red]{side} failed[/] x{item['calls']}: {item['reason']}", soft_wrap=True)
        leaks = section["leaks"]
        if not leaks["ok"]:
            console.print(
                f"[red]{side} leak[/]: relay calls {leaks['relay_calls']}, emulator {leaks['emulator']}, "
                f"sockets {leaks['leaked_sockets_by_process']}, errors {leaks['errors']}",
                soft_wrap=True,
            )
        if not section["stop"]["clean"]:
            console.print(f"[red]{side} stack stopped uncleanly[/]: {section['stop']}", soft_wrap=True)
    caller = doc["caller_sockets"]
    if caller["leaked"]:
        console.print(f"[red]caller leak[/]: sockets beyond the baseline {caller['leaked']}", soft_wrap=True)
    netem = settings["netem"]
    where = "in a fresh network namespace" if settings["namespace"] else "on this machine's loopback"
    impairs = [i for i in (settings.get("impair"), settings.get("impair_relay")) if i]
    if netem:
        impairment = f", netem on lo: {netem['spec']}"
    elif impairs:
        legs = " and ".join(f"{i['where']}: {i['spec']}" for i in impairs)
        impairment = f", userspace impairment (no netem here) of {legs}; b clean"
    else:
        impairment = ", no impairment"
    console.print(
        f"run {where}{impairment}; blocks of {settings['block']} alternating {settings['order']}",
        soft_wrap=True,
    )
    console.print(f"machine: {doc['machine_line']}", soft_wrap=True)
    console.print(f"per-call results: {doc['results_file']}", soft_wrap=True)
    if doc.get("plot"):
        console.print(f"histogram: {doc['plot']}", soft_wrap=True)
    verdict = "[green]ok[/]" if doc["ok"] else "[red]FAILED[/]"
    console.print(f"{verdict}: {doc['verdict']} (wall {doc['wall_s']:.0f} s)")
