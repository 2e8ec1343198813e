"""`splitrelay bench calls` without a stack: configuration syntax, schedule, netem options, leak
arithmetic, per-call results and their summary, histogram bins, and the command's input errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from splitrelay.bench.calls import calls_command
from splitrelay.bench.calls_config import BenchCallsConfig, Variant, parse_variant
from splitrelay.bench.calls_leaks import (
    KEEPALIVE_POOL_LIMIT,
    LeakReport,
    classify_row,
    emulator_secret,
    parse_net_table,
    socket_leaks,
)
from splitrelay.bench.calls_plot import bin_edges
from splitrelay.bench.calls_stats import CallResult, ratios, summarize, turn_latch
from splitrelay.devtools.budget import CallReport, ConnectTimes, RelayView, TurnBudget
from splitrelay.devtools.netem import parse_netem
from splitrelay.devtools.stack import APP_ID, StackInfo

A, B = Variant("a"), Variant("b", mode="direct")

# --- configurations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "silence"),
    [
        ("sfu", "sfu", 500),
        ("direct", "direct", 500),
        ("silence=300", "sfu", 300),
        ("mode=direct,silence=250ms", "direct", 250),
        (" MODE = Direct , silence = 800 ", "direct", 800),
        ("direct,silence=20", "direct", 20),
    ],
)
def test_a_configuration_is_keys_and_values_or_a_shorthand(text: str, mode: str, silence: int) -> None:
    variant = parse_variant(text, "b")
    assert (variant.label, variant.mode, variant.silence_ms) == ("b", mode, silence)
    shape = ",sfu_socket=shared" if mode == "sfu" else ""  # the stack's default: one emulator socket
    assert variant.spec == f"mode={mode},silence={silence}{shape}"
    assert parse_variant(variant.spec, "b") == variant  # the canonical form reads back the same


@pytest.mark.parametrize(
    ("text", "shape", "shared"),
    [
        ("sfu", "shared", True),
        ("mode=sfu,sfu_socket=per-session", "per-session", False),
        ("sfu_socket=Per-Session", "per-session", False),
        ("sfu,sfu_socket=shared,silence=300", "shared", True),
    ],
)
def test_the_sfu_socket_shape_is_a_key_shown_in_the_label_and_the_json(
    text: str, shape: str, shared: bool
) -> None:
    variant = parse_variant(text, "b")
    assert (variant.sfu_socket, variant.shared_sfu_socket) == (shape, shared)
    assert variant.spec.endswith(f",sfu_socket={shape}")
    assert variant.to_json()["sfu_socket"] == shape
    assert parse_variant(variant.spec, "b") == variant
    assert parse_variant("direct", "a").to_json()["sfu_socket"] is None  # direct mode has no SFU


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--a: empty"),
        ("fast", "--a: expected KEY=VALUE"),
        ("codec=opus", "--a: unknown key 'codec' (known keys: mode"),
        ("mode=sfu,mode=direct", "--a: mode given twice"),
        ("sfu,mode=direct", "--a: mode given twice"),
        ("mode=p2p", "--a: mode must be one of sfu, direct, got 'p2p'"),
        ("silence=abc", "--a: silence must be a whole number of ms, got 'abc'"),
        ("silence=10", "--a: silence must be 20..10000 ms, got 10"),
        ("silence=", "--a: expected KEY=VALUE"),
        ("sfu_socket=one", "--a: sfu_socket must be one of shared, per-session, got 'one'"),
        ("sfu_socket=", "--a: expected KEY=VALUE"),
        ("direct,sfu_socket=per-session", "--a: sfu_socket applies to mode=sfu only"),
        ("sfu_socket=shared,sfu_socket=shared", "--a: sfu_socket given twice"),
        ("x" * 201, "--a: at most 200 characters"),
    ],
)
def test_a_bad_configuration_names_the_option_the_key_and_the_limit(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_variant(text, "a")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"calls": 0}, "calls: must be 1..100000, got 0"),
        ({"concurrency": 65}, "concurrency: must be 1..64, got 65"),
        ({"concurrency": 8, "block": 4}, "block: must be at least the concurrency (8)"),
        ({"warmup": 11}, "warmup: must be 0..10"),
        ({"turns": 51}, "turns: must be 1..50"),
        ({"reply_timeout_s": 0.5}, "reply_timeout_s: must be 1..120 s"),
        ({"settle_timeout_s": 601.0}, "settle_timeout_s: must be 1..600 s"),
        ({"plot": Path("v2v.jpg")}, "plot: the file must end in .png or .svg, got 'v2v.jpg'"),
    ],
)
def test_run_settings_are_checked_before_anything_starts(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        BenchCallsConfig(a=A, b=B, **changes)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_fewer_calls_than_the_concurrency_need_no_bigger_block() -> None:
    config = BenchCallsConfig(a=A, b=B, calls=2, concurrency=8, block=2)
    assert config.schedule() == [("a", 2), ("b", 2)]


def test_blocks_alternate_a_b_b_a_and_every_call_is_scheduled_once() -> None:
    config = BenchCallsConfig(a=A, b=B, calls=250, concurrency=8, block=100)
    assert config.schedule() == [("a", 100), ("b", 100), ("b", 100), ("a", 100), ("a", 50), ("b", 50)]
    big = BenchCallsConfig(a=A, b=B, calls=1000, block=100).schedule()
    assert sum(n for label, n in big if label == "a") == sum(n for label, n in big if label == "b") == 1000
    assert [label for label, _ in big[:4]] == ["a", "b", "b", "a"]


# --- netem --------------------------------------------------------------------------------------------


def test_netem_options_are_checked_and_passed_on_as_a_list() -> None:
    spec = parse_netem("loss 2% delay 40ms 10ms")
    assert spec.args == ("loss", "2%", "delay", "40ms", "10ms")
    full = parse_netem("delay 40ms 10ms 25% distribution normal loss random 1.5% 25% reorder 5% rate 10mbit")
    assert full.args == (
        "delay", "40ms", "10ms", "25%", "distribution", "normal",
        "loss", "random", "1.5%", "25%", "reorder", "5%", "rate", "10mbit",
    )  # fmt: skip
    assert parse_netem("duplicate 1% corrupt 0.1% limit 1000").args[-2:] == ("limit", "1000")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "netem: empty"),
        ("loss 200%", "netem: loss must be 0..100%, got 200%"),
        ("loss two", "netem: loss must be a percentage such as 2% or 0.5%, got 'two'"),
        ("delay", "netem: delay must be a time such as 40ms"),
        ("delay 20s", "netem: delay must be at most 10000 ms, got 20s"),
        ("delay 40ms rm -rf /", "netem: unknown option 'rm'"),
        ("delay 40ms;reboot", "netem: delay must be a time such as 40ms, 500us or 1s, got '40ms;reboot'"),
        ("delay 40ms distribution normal", "netem: distribution needs a delay jitter"),
        ("delay 40ms 5ms distribution gauss", "netem: distribution must be one of uniform"),
        ("loss 1% loss 2%", "netem: loss given twice"),
        ("reorder 5%", "netem: reorder needs a delay"),
        ("rate fast", "netem: rate must be a rate such as 10mbit"),
        ("limit 0", "netem: limit must be 1..1000000 packets, got '0'"),
        ("slot 1ms", "netem: unknown option 'slot' (allowed: delay, loss"),
        ("loss 1% " * 17, "netem: at most 32 words"),
    ],
)
def test_bad_netem_options_are_refused_with_the_option_and_the_limit(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_netem(text)
    assert str(caught.value).startswith(message)


# --- leaks ----------------------------------------------------------------------------------------------

TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0
   1: 0100007F:D2F0 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0
   2: 0100007F:D2F2 0100007F:9C41 08 00000000:00000000 00:00000000 00000000     0        0 1003 1 0
"""
UDP_TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer
  10: 0100007F:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2001 2 0 0
"""
UNIX_TABLE = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000003 00000000 00000000 0001 03 3001
"""


def test_proc_net_rows_are_classified_by_table_and_tcp_state() -> None:
    assert parse_net_table("tcp", TCP_TABLE) == {"1001": "tcp_listen", "1002": "tcp_open", "1003": "tcp_idle"}
    assert parse_net_table("udp6", UDP_TABLE) == {"2001": "udp"}
    assert parse_net_table("unix", UNIX_TABLE) == {"3001": "unix"}
    assert classify_row("netlink", ["x"] * 10) == "other"


def test_a_socket_beyond_the_baseline_is_a_leak_but_an_idle_pooled_connection_is_not() -> None:
    baseline = {"udp": 1, "tcp_listen": 1, "tcp_open": 0, "tcp_idle": 0, "unix": 2, "other": 0}
    assert socket_leaks(baseline, baseline) == {}
    fewer = baseline | {"unix": 1}
    assert socket_leaks(baseline, fewer) == {}
    assert socket_leaks(baseline, baseline | {"udp": 3, "tcp_open": 1}) == {"udp": 2, "tcp_open": 1}
    assert socket_leaks(baseline, baseline | {"tcp_idle": KEEPALIVE_POOL_LIMIT}) == {}
    assert socket_leaks(baseline, baseline | {"tcp_idle": KEEPALIVE_POOL_LIMIT + 3}) == {"tcp_idle": 3}


def test_a_leak_report_is_ok_only_when_every_view_is_clear() -> None:
    clear = {"sessions": 0, "peer_connections": 0, "publications": 0, "subscriptions": 0}
    assert LeakReport(relay_calls=0, emulator=clear, emulator_expected=True).ok
    assert LeakReport(relay_calls=0).ok  # direct mode: no emulator
    assert LeakReport(relay_calls=0, emulator=None, emulator_expected=True).leaked_sessions is None
    assert not LeakReport(relay_calls=0, emulator=None, emulator_expected=True).ok
    assert not LeakReport(relay_calls=1).ok
    lingering = LeakReport(relay_calls=0, emulator=clear | {"sessions": 2}, emulator_expected=True)
    assert lingering.leaked_sessions == 2 and not lingering.ok
    peers = LeakReport(relay_calls=0, emulator=clear | {"peer_connections": 1}, emulator_expected=True)
    assert peers.leaked_sessions == 0 and not peers.ok
    sockets = LeakReport(relay_calls=0, leaked_sockets={"relay": {"udp": 1}})
    assert sockets.leaked_socket_count == 1 and not sockets.ok
    assert not LeakReport(relay_calls=0, errors=["relay (pid 1): the process is gone"]).ok
    assert LeakReport(relay_calls=0, idle_connections=5).to_json()["ok"] is True


def _info(run_dir: Path, emulator: bool, secret: str = "") -> StackInfo:
    return StackInfo(
        mode="sfu" if emulator else "direct",
        run_dir=str(run_dir),
        relay_url="http://127.0.0.1:1",
        agent="127.0.0.1:2",
        emulator_url="http://127.0.0.1:3/v1" if emulator else None,
        relay_signing_key="k" * 43,
        sfu_app_secret=secret,
    )


def test_the_emulator_secret_comes_from_the_stack_never_from_a_file(tmp_path: Path) -> None:
    assert emulator_secret(_info(tmp_path, emulator=False)) is None
    (tmp_path / "emulator.json").write_text(json.dumps({"apps": {APP_ID: "s3cret-value"}}))  # ignored
    with pytest.raises(ValueError, match="no app secret"):
        emulator_secret(_info(tmp_path, emulator=True))
    assert emulator_secret(_info(tmp_path, emulator=True, secret="s3cret-value")) == "s3cret-value"
    info = _info(tmp_path, emulator=True, secret="s3cret-value")
    assert "s3cret-value" not in json.dumps(info.public()) and "s3cret-value" not in repr(info)


# --- results ------------------------------------------------------------------------------------------


def _turn(v2v: float | None, response: float | None = 2.0) -> TurnBudget:
    return TurnBudget(
        turn=1,
        voice_to_voice_ms=v2v,
        endpointing_ms=500.0 if v2v is not None else None,
        eos_skew_ms=0.0,
        response_ms=response,
        caller_rtt_ms=0.4,
        relay_rtt_ms=0.5,
        network_rtt_ms=0.9,
        relay_dwell_ms=0.4,
        inference_ms=0.7,
        playout_ms=0.0,
        jitter_ms=0.2,
        reply_ms=3000.0,
        reply_frames=150,
        reply_match=3,
        send_lag_ms=0.5,
    )


def _report(v2v: float | None, *, errors: list[str] | None = None, ready_ms: float = 200.0) -> CallReport:
    relay = RelayView(
        rtt_ms=0.5,
        jitter_in_ms=0.1,
        dwell_in_p50_ms=0.2,
        dwell_in_p99_ms=0.5,
        dwell_out_p50_ms=0.3,
        dwell_out_p99_ms=1.0,
        rtp_timestamp_base=1,
        replies=(),
    )
    return CallReport(
        mode="sfu",
        call_id="call-1",
        utterance="u.wav",
        utterance_ms=3260,
        connect=ConnectTimes(70.0, 30.0, 100.0, ready_ms),
        turns=[_turn(v2v)],
        relay=relay,
        errors=errors or [],
    )


def _result(report: CallReport, *, warmup: bool = False, seq: int = 1) -> CallResult:
    return CallResult.from_report(
        report, config="a", seq=seq, block=0, warmup=warmup, started_s=1.0, wall_ms=7000.0
    )


def test_a_call_result_keeps_the_headline_numbers_and_the_whole_report() -> None:
    result = _result(_report(502.25))
    assert result.ok and result.error is None and result.call_id == "call-1"
    assert result.voice_to_voice_ms == [502.25] and result.response_ms == [2.0]
    assert result.setup_ms == 200.0 and result.connect_ms == 100.0
    assert result.relay_dwell_ms == pytest.approx(0.5)
    doc = result.to_json()
    assert doc["report"]["call_id"] == "call-1" and json.loads(json.dumps(doc)) == doc
    failed = _result(_report(None, errors=["turn 1: no reply within 10 s of the last speech frame"]))
    assert not failed.ok and failed.error == "turn 1: no reply within 10 s of the last speech frame"
    crashed = CallResult.failed("", config="b", seq=2, block=3, warmup=False, started_s=0.0, wall_ms=1.0)
    assert not crashed.ok and crashed.error == "failed without a message" and crashed.report is None


def test_the_summary_counts_every_failure_but_measures_only_good_measured_calls() -> None:
    values = [501.0, 502.0, 503.0, 510.0, 530.0]
    results = [_result(_report(v, ready_ms=100.0 + i), seq=i) for i, v in enumerate(values)]
    results.append(_result(_report(900.0), warmup=True))  # a warm-up: kept out of the latencies
    results.append(_result(_report(None, errors=["ICE/DTLS: timed out"])))
    results.append(_result(_report(None, errors=["ICE/DTLS: timed out"]), warmup=True))
    summary = summarize(results)
    assert (summary["calls"], summary["ok"], summary["failed"], summary["warmup_calls"]) == (6, 5, 2, 2)
    assert summary["failure_reasons"] == [{"reason": "ICE/DTLS: timed out", "calls": 2}]
    for q in (50, 95, 99):
        assert summary["voice_to_voice_ms"][f"p{q}"] == pytest.approx(np.percentile(values, q))
    assert summary["setup_ms"]["p50"] == pytest.approx(102.0)
    assert summary["turns"] == 5
    empty = summarize([])
    assert empty["calls"] == 0 and empty["voice_to_voice_ms"] == {"p50": None, "p95": None, "p99": None}
    compared = ratios(summary, empty)
    assert compared["voice_to_voice_ms"]["p50"] is None
    assert ratios(summary, summary)["setup_ms"]["p99"] == pytest.approx(1.0)


def test_turn_latch_compares_each_calls_last_turn_with_its_first() -> None:
    def call(*v2v: float | None) -> CallResult:
        result = _result(_report(1.0))
        result.voice_to_voice_ms = list(v2v)
        return result

    latch = turn_latch([call(500.0, 520.0, 1000.0), call(400.0, 400.0), call(300.0), call(None, 50.0)])
    assert latch["calls"] == 2  # one turn, or no first turn: not comparable
    assert latch["first_ms"]["p50"] == pytest.approx(450.0) and latch["last_ms"]["p50"] == pytest.approx(
        700.0
    )
    assert latch["last_over_first"]["p50"] == pytest.approx(np.percentile([2.0, 1.0], 50))
    assert turn_latch([])["last_over_first"] == {"p50": None, "p95": None, "p99": None}
    summary = summarize([call(500.0, 520.0, 1000.0)])
    assert summary["turn_latch"]["last_over_first"]["p99"] == pytest.approx(2.0)


def test_histogram_bins_cover_every_value_with_a_floor_on_their_width() -> None:
    edges = bin_edges([500.0, 501.0, 530.0])
    assert edges[0] == 500.0 and edges[-1] >= 530.0 and len(edges) - 1 <= 60
    assert min(b - a for a, b in itertools.pairwise(edges)) >= 0.5 - 1e-9
    assert bin_edges([502.0]) == [502.0, 502.5]
    with pytest.raises(ValueError, match="values: need at least one value"):
        bin_edges([])


# --- the command's input errors (exit 2, nothing started) -------------------------------------------------


def _plain(output: str) -> str:
    """The error text without rich's box drawing and line wrapping."""
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(calls_command)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--a", "codec=opus"], "--a: unknown key 'codec'"),
        (["--b", "silence=5"], "--b: silence must be 20..10000 ms, got 5"),
        (["--b", "sfu_socket=anycast"], "--b: sfu_socket must be one of shared, per-session, got 'anycast'"),
        (["--netem", "loss 200%"], "--netem: loss must be 0..100%, got 200%"),
        (["--concurrency", "8", "--block", "2"], "--block: must be at least the concurrency (8)"),
        (["--calls", "0"], "--calls: must be 1..100000, got 0"),
        (["--plot", "out.jpg"], "--plot: the file must end in .png or .svg"),
        (["--reply-timeout", "0"], "--reply-timeout: must be 1..120 s"),
        (["--utterance", "/nonexistent/u.wav"], "--utterance: /nonexistent/u.wav: no such file"),
    ],
)
def test_the_command_refuses_bad_input_with_exit_2_and_the_option_named(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(_app(), [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in _plain(result.output), result.output
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_an_output_directory_of_another_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "calls.jsonl").write_text("")
    result = CliRunner().invoke(_app(), ["--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "already holds calls.jsonl from another run" in _plain(result.output)


def test_each_side_s_stack_gets_the_sfu_socket_shape_it_asked_for(tmp_path: Path) -> None:
    from rich.progress import Progress

    from splitrelay.bench.calls import Bench
    from splitrelay.devtools.utterance import DEFAULT_UTTERANCE, load_utterance

    config = BenchCallsConfig(
        a=parse_variant("mode=sfu", "a"), b=parse_variant("sfu_socket=per-session", "b"), calls=1
    )
    bench = Bench(config, load_utterance(DEFAULT_UTTERANCE), tmp_path, Progress(disable=True))
    try:
        shapes = {label: side.stack.config.shared_sfu_socket for label, side in bench.sides.items()}
        assert shapes == {"a": True, "b": False}
    finally:
        bench.results_file.close()
