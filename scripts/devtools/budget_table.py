"""The latency budget on a terminal: a rich table per turn with p50/p95 rows, and the set-up times.

Only presentation: every number comes from scripts/devtools/budget.py; n/a means nobody measured it.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from splitrelay.devtools.budget import CallReport

COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    # (attribute, header, name, what it is): definitions in docs/local-stack.md
    (
        "voice_to_voice_ms",
        "voice-to-\nvoice",
        "voice-to-voice",
        "first reply packet in - last speech frame due (speech ended)",
    ),
    (
        "endpointing_ms",
        "endpoint-\ning",
        "endpointing",
        "the agent's end-of-speech wait (its agent.reply event)",
    ),
    (
        "response_ms",
        "response",
        "response",
        "first reply packet in - when the agent's silence threshold was met",
    ),
    (
        "network_rtt_ms",
        "network\nRTT",
        "network RTT",
        "RTCP round trips: caller leg (+ relay leg via the SFU)",
    ),
    ("relay_dwell_ms", "relay\ndwell", "relay dwell", "relay in + out, p50 over the call"),
    ("inference_ms", "infer-\nence", "inference", "response - network RTT - relay dwell (agent, SFU, wire)"),
    (
        "playout_ms",
        "play-\nout",
        "playout",
        "the caller's own buffering: 0, the headless caller plays nothing",
    ),
    ("jitter_ms", "jitter", "jitter", "RFC 3550 jitter of the reply stream at the caller"),
)


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def turn_table(report: CallReport) -> Table:
    title = f"latency budget in ms: {report.mode} mode, {len(report.turns)} turns of {report.utterance}"
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), pad_edge=False
    )
    table.add_column("turn", justify="right", no_wrap=True, min_width=4)
    for _, header, _, _ in COLUMNS:
        table.add_column(header, justify="right", no_wrap=True, min_width=max(map(len, header.split("\n"))))
    for turn in report.turns:
        table.add_row(str(turn.turn), *(ms(getattr(turn, name)) for name, _, _, _ in COLUMNS))
    stats = report.summary()
    table.add_section()
    for quantile in ("p50", "p95"):
        table.add_row(quantile, *(ms(stats[name][quantile]) for name, _, _, _ in COLUMNS), style="bold")
    return table


AFTER_LAST_STAGE = "after last stage"
STAGE_LEGEND = (
    "  inference by the agent's agent.stage marks: each stage from the previous mark (the first from the"
    " agent's end-of-speech decision), on the agent's clock; after last stage: inference - the last mark"
    " (the agent after it, SFU, wire)"
)


def stage_table(report: CallReport) -> Table | None:
    """Inference split into the stages the agent reported, per turn; None when it reported none."""
    names = report.stage_names()
    if not names:
        return None
    table = Table(
        title="inference by stage in ms",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        pad_edge=False,
    )
    table.add_column("turn", justify="right", no_wrap=True, min_width=4)
    for header in ("inference", *names, AFTER_LAST_STAGE):
        table.add_column(header, justify="right", no_wrap=True)
    for turn in report.turns:
        by_name = {s.name: s.ms for s in turn.stages}
        cells = [ms(by_name.get(name)) for name in names]
        table.add_row(str(turn.turn), ms(turn.inference_ms), *cells, ms(turn.after_last_stage_ms))
    stats = report.summary()["inference_ms"]
    split = report.stage_summary()
    table.add_section()
    for quantile in ("p50", "p95"):
        table.add_row(
            quantile,
            ms(stats[quantile]),
            *(ms(split["stages"][name][quantile]) for name in names),
            ms(split["after_last_stage_ms"][quantile]),
            style="bold",
        )
    return table


def setup_lines(report: CallReport) -> list[str]:
    lines = []
    c = report.connect
    if c is not None:
        edge = c.edge_answer_to_connected_ms
        lines.append(
            f"time to connect: {c.connect_ms:.0f} ms POST → ICE+DTLS connected "
            f"(signalling {c.signalling_ms:.0f} ms, answer → connected {c.answer_to_connected_ms:.0f} ms); "
            f"whole path up after {c.ready_ms:.0f} ms"
            + (f" (edge record: answer → relay wired {edge:.0f} ms)" if edge is not None else "")
        )
    lags = [t.send_lag_ms for t in report.turns if t.send_lag_ms is not None]
    if lags and max(lags) > 1.0:
        lines.append(
            f"note: the caller's own frames left up to {max(lags):.1f} ms behind schedule (a CPU stall "
            "of this machine): that much of response and inference is the test harness"
        )
    r = report.relay
    if r is not None:
        lines.append(
            f"relay dwell p50/p99: in {ms(r.dwell_in_p50_ms)}/{ms(r.dwell_in_p99_ms)} ms, "
            f"out {ms(r.dwell_out_p50_ms)}/{ms(r.dwell_out_p99_ms)} ms; relay leg RTT {ms(r.rtt_ms)} ms, "
            f"jitter in {ms(r.jitter_in_ms)} ms"
        )
    caller = report.caller
    if caller:
        lines.append(
            f"caller: RTT {ms(caller.get('rtt_ms'))} ms, "
            f"jitter in/out {ms(caller.get('jitter_in_ms'))}/{ms(caller.get('jitter_out_ms'))} ms, "
            f"lost in/out {caller.get('lost_in')}/{caller.get('lost_out')}"
        )
    return lines


def render(report: CallReport, console: Console, *, legend: bool = True) -> None:
    """Print the turn table (and what each column is), set-up and relay lines, headline, errors."""
    if report.turns:
        console.print(turn_table(report))
        if legend:
            for _, _, name, meaning in COLUMNS:
                console.print(f"  [dim]{name}: {meaning}[/]", soft_wrap=True)
        stages = stage_table(report)
        if stages is not None:
            console.print(stages)
            if legend:
                console.print(f"[dim]{STAGE_LEGEND}[/]", soft_wrap=True)
    for line in setup_lines(report):
        console.print(line, soft_wrap=True)
    console.print(f"[bold]{report.headline()}[/]", soft_wrap=True)
    for error in report.errors:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
