"""The relay benchmark's own arithmetic: metrics, percentiles, CPU accounting, verdicts, echo matching.

No network and no child processes: the end-to-end run is tests/integration/test_bench_relay.py.
"""

from __future__ import annotations

import array
import asyncio
import math
import re
import time
from typing import Any

import pylibsrtp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from splitrelay.bench import load as bench_load
from splitrelay.bench import support as bench_support
from splitrelay.bench.load import (
    EchoCounter,
    EchoMatcher,
    Flow,
    Schedule,
    drive,
    noise_frames,
    rtp_header_length,
)
from splitrelay.bench.relay import (
    PhaseResult,
    RelayBenchConfig,
    Row,
    bucket_delta,
    check_prepared,
    fraction_at_most,
    histogram_quantile,
    merge_worker_extras,
    parse_calls,
    parse_metrics,
    projection,
    verdict,
)
from splitrelay.bench.servers import audio_out_from_audio_in
from splitrelay.cli.bench import app
from splitrelay.inference import wire
from splitrelay.relay.media.rtp import build_rtp, one_byte_extensions
from splitrelay.relay.telemetry import CallCounters, CallSample, DwellHistogram, RelayCollector

# --- configuration errors name the field and the limit -----------------------------------------------


def test_parse_calls_accepts_a_list() -> None:
    assert parse_calls("100, 500,1000") == (100, 500, 1000)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("100,abc", "--calls: expected comma-separated whole numbers"),
        ("0", "calls: each value must be 1..5000, got 0"),
        ("6000", "calls: each value must be 1..5000, got 6000"),
        (",".join(["1"] * 11), "calls: give 1..10 values, got 11"),
    ],
)
def test_parse_calls_errors_name_the_field(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_calls(text)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"duration": 0.5}, "duration: must be 1..600 seconds, got 0.5"),
        ({"warmup": 121}, "warmup: must be 0..120 seconds, got 121"),
        ({"load_procs": 17}, "load_procs: must be 0..16"),
        ({"setup_concurrency": 0}, "setup_concurrency: must be 1..64, got 0"),
        ({"setup_timeout": 500}, "setup_timeout: must be 1..120 seconds, got 500"),
        ({"load_socket": "sfu"}, "load_socket: must be one of shared, per-call, got 'sfu'"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        RelayBenchConfig(**kwargs)  # type: ignore[arg-type]


def test_command_reproduces_the_run() -> None:
    config = RelayBenchConfig(calls=(100, 250), duration=15, warmup=5, setup_concurrency=8)
    assert config.command() == (
        "splitrelay bench relay --calls 100,250 --duration 15 --warmup 5 --setup-concurrency 8"
    )


def test_command_names_the_load_socket_when_it_is_not_the_default() -> None:
    assert RelayBenchConfig(calls=(10,), duration=2, warmup=1).load_socket == "shared"
    config = RelayBenchConfig(calls=(10,), duration=2, warmup=1, load_socket="per-call")
    assert (
        config.command() == "splitrelay bench relay --calls 10 --duration 2 --warmup 1 --load-socket per-call"
    )


def test_worker_options_check_the_load_socket() -> None:
    with pytest.raises(
        ValueError, match=re.escape("--load-socket: must be one of shared, per-call, got 'x'")
    ):
        bench_load.WorkerOptions("relay", 1, 0, 1, relay_url="http://127.0.0.1:1", load_socket="x")  # type: ignore[arg-type]


def test_cli_rejects_bad_calls_before_starting_anything() -> None:
    result = CliRunner().invoke(app, ["relay", "--calls", "100,x"])
    assert result.exit_code == 2
    assert "--calls" in result.output


def test_a_run_too_long_to_build_ahead_is_refused_before_it_starts() -> None:
    config = RelayBenchConfig(calls=(100, 1000), duration=600, warmup=120)
    with pytest.raises(ValueError, match=re.escape("1000 calls per load worker x 720 s x 50 packets/s")):
        check_prepared(config, load_procs=1)
    check_prepared(config, load_procs=2)  # 500 calls per worker: 18,000,000 packets fit
    # One load worker whatever the machine, so this can never start a real run.
    argv = ["relay", "--calls", "1000", "--duration", "600", "--warmup", "120", "--load-procs", "1"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert "limit 20,000,000 per worker" in result.output


def test_cli_rejects_a_core_that_does_not_exist() -> None:
    result = CliRunner().invoke(app, ["relay", "--relay-core", "4096"])
    assert result.exit_code == 2
    assert "relay_core: core 4096 is not usable" in result.output


# --- the relay's /metrics ------------------------------------------------------------------------------


def _metrics_text(dwell_us: list[int], packets_in: int) -> str:
    """Exposition text from the relay's own collector, so a renamed metric breaks this test."""
    counters = CallCounters(packets_in=packets_in, packets_out=packets_in - 1, barge_ins=2)
    dwell_in, dwell_out = DwellHistogram(), DwellHistogram()
    for us in dwell_us:
        dwell_in.observe_ns(us * 1000)
        dwell_out.observe_ns(us * 2000)
    sample = CallSample(counters, dwell_in, dwell_out, lost=0, jitter_ms=None, rtt_ms=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(lambda: [sample]))
    return generate_latest(registry).decode()


def test_parse_metrics_reads_the_relay_collector() -> None:
    metrics = parse_metrics(_metrics_text([3, 40, 40, 900, 1500], packets_in=10))
    assert metrics.counters["packets_in"] == 10
    assert metrics.counters["packets_out"] == 9
    assert metrics.counters["barge_ins"] == 2
    cumulative = dict(metrics.dwell_in)
    assert cumulative[5e-06] == 1  # 3 µs
    assert cumulative[5e-05] == 3  # 3 µs and two 40 µs
    assert cumulative[0.001] == 4
    assert cumulative[math.inf] == 5
    assert dict(metrics.dwell_out)[0.001] == 3  # doubled: 80 µs twice and 6 µs fall below, 1.8 ms does not


def test_parse_metrics_without_dwell_histograms_is_an_error() -> None:
    with pytest.raises(bench_support.BenchError, match="splitrelay_dwell_in/out_seconds"):
        parse_metrics("# nothing here\n")


def test_bucket_delta_is_the_window() -> None:
    start = [(0.001, 10.0), (math.inf, 12.0)]
    end = [(0.001, 15.0), (math.inf, 20.0)]
    assert bucket_delta(start, end) == [(0.001, 5.0), (math.inf, 8.0)]


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    buckets = [(0.001, 50.0), (0.002, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == (0.001, False)
    value, above = histogram_quantile(0.75, buckets)
    assert value == pytest.approx(0.0015)
    assert not above


def test_histogram_quantile_above_the_top_bucket_is_flagged() -> None:
    buckets = [(0.001, 10.0), (math.inf, 100.0)]
    assert histogram_quantile(0.99, buckets) == (0.001, True)


def test_histogram_quantile_of_nothing() -> None:
    assert histogram_quantile(0.5, [(0.001, 0.0), (math.inf, 0.0)]) == (None, False)


def test_fraction_at_most_uses_the_bound_exactly() -> None:
    buckets = [(0.00075, 90.0), (0.001, 99.0), (0.002, 100.0), (math.inf, 100.0)]
    assert fraction_at_most(0.001, buckets) == 0.99
    with pytest.raises(ValueError, match=r"no bucket bound at 0\.0015"):
        fraction_at_most(0.0015, buckets)


# --- CPU and kernel counters from /proc ---------------------------------------------------------------


def test_proc_stat_line_with_a_hostile_command_name() -> None:
    ticks = bench_support.CLOCK_TICKS
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(3 * ticks), str(ticks)]
    line = "1234 (py) (x y) " + " ".join(fields + ["0"] * 30)
    assert bench_support.parse_proc_stat_cpu_seconds(line) == 4.0


def test_proc_stat_line_too_short() -> None:
    with pytest.raises(ValueError, match="expected at least 15 fields"):
        bench_support.parse_proc_stat_cpu_seconds("1 (x) S 1 2")
    with pytest.raises(ValueError, match="expected at least 17 fields"):
        bench_support.parse_proc_stat_family_seconds("1 (x) S 1 2")


def test_family_seconds_include_reaped_children() -> None:
    ticks = bench_support.CLOCK_TICKS
    fields = ["S", *["0"] * 10, str(ticks), str(ticks), str(2 * ticks), str(3 * ticks)]
    line = "99 (pytest) " + " ".join(fields + ["0"] * 30)
    assert bench_support.parse_proc_stat_cpu_seconds(line) == 2.0
    assert bench_support.parse_proc_stat_family_seconds(line) == 7.0


def test_this_process_uses_cpu() -> None:
    import os

    before = bench_support.process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # bounded busy loop: 50 ms of CPU
        pass
    assert bench_support.process_cpu_seconds(os.getpid()) > before


def test_core_times_and_udp_counters_parse() -> None:
    ticks = bench_support.CLOCK_TICKS
    t = ticks
    stat = f"cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 {t} 0 {t} {2 * t} {t} 0 {t} {t} 0 0\nintr 12345\n"
    assert bench_support.parse_core_times(stat) == {0: bench_support.CoreTimes(3.0, 1.0, 1.0, 7.0)}
    snmp = "Udp: InDatagrams InErrors RcvbufErrors\nUdp: 10 3 2\n"
    assert bench_support.parse_udp_counters(snmp) == {"InDatagrams": 10, "InErrors": 3, "RcvbufErrors": 2}
    with pytest.raises(ValueError, match="no Udp header"):
        bench_support.parse_udp_counters("Ip: 1\n")


def test_cpu_window_in_percent_of_a_core() -> None:
    core = bench_support.CoreTimes
    start = bench_support.CpuSnapshot(
        10.0,
        {"relay": 1.0},
        {0: core(1.0, 0.1, 0.0, 2.0)},
        {"RcvbufErrors": 5},
        {7: ("relay", 1.0), 8: ("pytest", 3.0), 9: ("idle", 1.0)},
    )
    end = bench_support.CpuSnapshot(
        12.0,
        {"relay": 2.5},
        {0: core(2.0, 0.5, 0.2, 4.0)},
        {"RcvbufErrors": 7},
        {7: ("relay", 2.5), 8: ("pytest", 3.5), 9: ("idle", 1.001), 10: ("new", 5.0)},
    )
    window = bench_support.CpuWindow.between(start, end, own_pids=[7])
    assert window.processes == {"relay": pytest.approx(75.0)}
    assert window.core_busy == {0: pytest.approx(50.0)}
    assert window.core_interrupts == {0: pytest.approx(20.0)}
    assert window.core_steal == {0: pytest.approx(10.0)}
    assert window.udp == {"RcvbufErrors": 2}
    assert window.others == [("pytest", 8, 25.0)]  # not ours, not idle, seen at both ends
    assert window.started == 1  # "new": too short-lived to name, but counted


def test_all_process_times_sees_this_process() -> None:
    import os

    name, seconds = bench_support.all_process_times()[os.getpid()]
    assert name and seconds > 0


def test_split_cores() -> None:
    assert bench_support.split_cores(0, [0, 1, 2]) == (frozenset({0}), frozenset({1, 2}))
    assert bench_support.split_cores(0, [0]) == (frozenset({0}), frozenset({0}))  # shared: flagged later
    with pytest.raises(ValueError, match=r"relay_core: core 3 is not usable here \(usable: \[0, 1\]\)"):
        bench_support.split_cores(3, [0, 1])


# --- verdicts -----------------------------------------------------------------------------------------


def _phase(**changes: object) -> PhaseResult:
    dwell = {"share_within_1ms": 1.0}
    phase = PhaseResult(
        subject="relay", flows=500, sent=1000, received=1000, expected=1200, sent_all=1200, send_failures=0,
        unmatched=0, rtt_ms={"p50": 0.5, "p99": 1.0}, subject_cpu=80.0, load_cpu={"w": 50.0}, bench_cpu=1.0,
        subject_core_busy=82.0, subject_core_interrupts=5.0, load_core_busy=60.0, load_core_interrupts=5.0,
        steal=0.0, subject_core_others=0.0, load_core_others=0.0, others=[], others_started=0,
        lateness_p99_ms=1.0, lateness_max_ms=2.0, kernel_udp={}, offered_datagrams_per_s=100_000,
        window_s=15.0, pids={},
        relay={"dwell_in": dict(dwell), "dwell_out": dict(dwell)},
    )  # fmt: skip
    for name, value in changes.items():
        setattr(phase, name, value)
    return phase


def test_verdict_pass_fail_and_not_tested() -> None:
    assert verdict(Row(500, relay=_phase()), 500)["status"] == "PASS"
    lossy = verdict(Row(500, relay=_phase(received=990)), 500)
    assert lossy["status"] == "FAIL"
    assert lossy["reasons"] == ["lost 10 of 1000 packets"]
    noisy = verdict(
        Row(500, relay=_phase(received=999, noisy=["other work used 30% of the relay's core"])), 500
    )
    assert noisy["status"] == "FAIL"
    assert noisy["reasons"][1].startswith("noisy run, rerun before trusting the failure")
    slow = _phase(relay={"dwell_in": {"share_within_1ms": 0.98}, "dwell_out": {"share_within_1ms": 1.0}})
    assert verdict(Row(500, relay=slow), 500)["reasons"] == ["dwell in: 98.00% within 1 ms"]
    bound = verdict(Row(500, relay=_phase(load_bound=["load core(s) [1] 97% busy"], received=0)), 500)
    assert bound["status"] == "NOT TESTED"
    assert "load-generator bound" in bound["reasons"][0]
    assert verdict(Row(500, error="BenchError: relay died"), 500)["status"] == "NOT TESTED"
    assert verdict(None, 500)["reasons"] == ["no run with 500 or more calls"]


def test_verdict_fails_on_echoes_that_are_not_genuine() -> None:
    forged = _phase(workers={"srtp_samples": 40, "srtp_samples_authentic": 39})
    result = verdict(Row(500, relay=forged), 500)
    assert result["status"] == "FAIL"
    assert result["reasons"] == ["1 of 40 sampled echoes failed SRTP authentication"]
    genuine = _phase(workers={"srtp_samples": 40, "srtp_samples_authentic": 40})
    assert verdict(Row(500, relay=genuine), 500)["status"] == "PASS"


def test_worker_extras_sum_counts_and_keep_sizes() -> None:
    merged = merge_worker_extras(
        [
            {"srtp_overhead": 36, "echoes": 10, "srtp_samples": 2, "gc_seconds": [0.1, 0.0, 0.0]},
            {"srtp_overhead": 36, "echoes": 5, "srtp_samples": 1, "gc_seconds": [0.2, 0.0, 0.0]},
            {"lateness_warmup_p99_ms": 3.5},
            {"lateness_warmup_p99_ms": 1.5},
        ]
    )
    assert merged == {
        "srtp_overhead": 36,  # a size: the same in every worker, never summed
        "echoes": 15,
        "srtp_samples": 3,
        "gc_seconds": [[0.1, 0.0, 0.0], [0.2, 0.0, 0.0]],
        "lateness_warmup_p99_ms": 3.5,  # the worst worker's
    }


def test_projection_fits_only_unbound_runs() -> None:
    rows = [
        Row(100, relay=_phase(subject_cpu=30.0)),
        Row(200, relay=_phase(subject_cpu=50.0)),
        Row(250, relay=_phase(subject_cpu=60.0, load_bound=["late"], received=999)),  # lost some
        Row(300, relay=_phase(subject_cpu=70.0, load_bound=["late"], load_core_busy=95.0)),  # saturated
        Row(400, relay=_phase(subject_cpu=90.0, load_bound=["send schedule late by 11 ms"])),  # kept
    ]
    fit = projection(rows)
    assert fit is not None
    assert fit["from_calls"] == [100, 200, 400]
    assert fit["calls_at_100pct"] == pytest.approx(450, abs=10)
    assert projection(rows[:1]) is None


# --- the load generator -------------------------------------------------------------------------------


def test_echo_matcher_counts_loss_and_round_trips() -> None:
    rtts: array.array[int] = array.array("q")
    matcher = EchoMatcher(rtts)
    for k in range(5):
        matcher.sent(k, 1000 * k, in_window=k >= 1)
    matcher.echo(0, 500)  # warm-up frame: matched, not counted
    matcher.echo(2, 2600)  # frame 1 never came back
    matcher.echo(None, 2700)  # a payload never sent
    matcher.echo(4, 4100)  # frame 3 lost too
    assert (matcher.received_window, matcher.lost, matcher.unmatched) == (2, 2, 1)
    assert list(rtts) == [600, 100]
    matcher.echo(4, 4200)  # a duplicate: nothing pending matches it
    assert matcher.unmatched == 2
    matcher.counting = False
    matcher.sent(5, 5000, in_window=True)
    matcher.echo(5, 5100)  # after the drain: ignored
    assert matcher.received_window == 2


def test_echo_matcher_forgets_beyond_its_bound() -> None:
    matcher = EchoMatcher(array.array("q"))
    for k in range(bench_load.MAX_PENDING + 3):
        matcher.sent(k % bench_load.FRAMES, k, in_window=True)
    assert matcher.lost == 3


class _Recorder(Flow):
    def __init__(self, name: str, log: list[tuple[str, int, bool]]) -> None:
        self.name = name
        self.log = log

    def send(self, k: int, in_window: bool) -> None:
        self.log.append((self.name, k, in_window))
        self.sent += 1


async def test_drive_staggers_and_counts_the_window() -> None:
    log: list[tuple[str, int, bool]] = []
    flows = [_Recorder("a", log), _Recorder("b", log)]
    schedule = Schedule(2, warmup=0.04, duration=0.06)
    expected, lateness = await drive(flows, schedule, time.monotonic() + 0.01)
    assert expected == 10  # 5 ticks of 20 ms, two flows
    assert [schedule.frames_of(i) for i in range(2)] == [5, 5]  # what relay mode builds ahead
    assert [entry[0] for entry in log[:4]] == ["a", "b", "a", "b"]  # b is 10 ms behind a
    assert [entry[1] for entry in log if entry[0] == "a"] == [0, 1, 2, 3, 4]
    assert [entry[2] for entry in log if entry[0] == "a"] == [False, False, True, True, True]
    assert [index for index, _ in lateness] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]  # one per busy slot
    assert all(late >= 0 for _, late in lateness)
    await asyncio.sleep(0)


def test_lateness_counts_the_window_only() -> None:
    """A stall in the warm-up is reported apart: it must not flag the window as load-generator bound."""
    schedule = Schedule(2, warmup=0.04, duration=0.06)  # window from slot 40
    lateness = [(0, 0.030), (10, 0.002), (20, 0.0), (30, 0.0), (40, 0.001), (50, 0.004), (60, 0.0)]
    result = bench_load.summarize([], 14, lateness, {"x": 1}, schedule)
    assert result.lateness_max_ms == 4.0
    assert result.extra["x"] == 1
    assert result.extra["lateness_warmup_p99_ms"] == pytest.approx(29.16)
    assert result.extra["lateness_worst"][:2] == [[0.0, 30.0], [0.05, 4.0]]


async def test_schedule_builds_exactly_what_drive_sends() -> None:
    """Relay mode protects every packet before the run: one too few crashes the run, one too many
    wastes an SRTP index. An end that is not a whole tick leaves the late slots one frame short."""
    log: list[tuple[str, int, bool]] = []
    flows = [_Recorder(str(i), log) for i in range(7)]
    schedule = Schedule(7, warmup=0.013, duration=0.05)  # 63 slots: 3 ticks plus 3 slots
    expected, _ = await drive(flows, schedule, time.monotonic())
    sent = [sum(1 for name, _, _ in log if name == str(i)) for i in range(7)]
    assert sent == [schedule.frames_of(i) for i in range(7)] == [4, 4, 3, 3, 3, 3, 3]  # slots 0, 2 < 63 - 60
    assert expected == len(log)
    assert sum(Schedule(500, 5.0, 15.0).frames_of(i) for i in range(500)) == 500 * 1000


def test_noise_frames_have_one_length_each_and_stay_below_the_barge_in_threshold() -> None:
    frames = noise_frames(count=10)
    payloads = [p for p, _ in frames]
    assert [len(p) for p in payloads] == list(range(50, 60))  # CBR: full-size frames, one length each
    assert all(level > 40 for _, level in frames)  # quieter than -40 dBov: no barge-in
    import av

    decoder: Any = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = 48_000
    decoder.layout = "mono"
    for payload in payloads:  # each is a real 20 ms Opus frame
        (frame,) = decoder.decode(av.Packet(payload))
        assert frame.samples == 960


# --- echoes identified without decrypting -------------------------------------------------------------


def _srtp_pair(
    profile: int = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    key = bytes(range(30)) if profile == pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80 else bytes(range(28))
    tx = pylibsrtp.Session(pylibsrtp.Policy(key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key, pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return tx, rx


def test_rtp_header_length() -> None:
    payload = b"\x01" * 20
    assert rtp_header_length(build_rtp(111, 1, 960, 7, payload)) == 12
    assert rtp_header_length(build_rtp(111, 1, 960, 7, payload, csrcs=[1, 2])) == 20
    mid = one_byte_extensions([(4, b"0")])  # what the relay sends until the caller reports on it
    assert rtp_header_length(build_rtp(111, 1, 960, 7, payload, extension=mid)) == 12 + len(mid)
    assert rtp_header_length(b"\x90" + bytes(13)) == 0  # an extension header that is not there
    assert rtp_header_length(b"\x80\x6f") == 0


def test_echo_counter_names_frames_by_length_and_proves_a_sample() -> None:
    """The relay renumbers and re-times what it sends (own SSRC, sequence, extension): the counter still
    pairs every echo with the right frame from its length, and the sampled ones authenticate."""
    frames = [(bytes([i]) * (50 + i), 60) for i in range(bench_load.FRAMES)]
    probe, _ = _srtp_pair()
    tag = len(probe.protect(build_rtp(111, 1, 0, 99, b"x"))) - 13  # 10 bytes for AES-CM + HMAC-SHA1-80
    relay_tx, caller_rx = _srtp_pair()
    rtts: array.array[int] = array.array("q")
    matcher = EchoMatcher(rtts)
    counter = EchoCounter(frames, tag, matcher, caller_rx.unprotect)
    mid = one_byte_extensions([(4, b"0")])
    sent = 3 * bench_load.SAMPLE_EVERY
    for k in range(sent):
        matcher.sent(k % bench_load.FRAMES, 1000 * k, in_window=True)
    relay_seq = 40_000
    for k in range(sent):
        if k in (5, 6, 77):  # lost on the way
            continue
        payload = frames[k % bench_load.FRAMES][0]
        echo = relay_tx.protect(
            build_rtp(111, relay_seq, 123_456 + 960 * k, 0xABCDEF, payload, extension=mid)
        )
        relay_seq += 1
        counter.echo(echo, 1000 * k + 250)
    assert (matcher.received_window, matcher.lost, matcher.unmatched) == (sent - 3, 3, 0)
    assert set(rtts) == {250}  # every echo was paired with its own frame
    assert counter.echoes == sent - 3
    assert counter.samples == (sent - 3) // bench_load.SAMPLE_EVERY == 2
    assert counter.authentic == counter.matched == 2


def test_echo_counter_catches_forged_and_misnamed_echoes() -> None:
    frames = [(bytes([i]) * (50 + i), 60) for i in range(bench_load.FRAMES)]
    relay_tx, caller_rx = _srtp_pair()
    matcher = EchoMatcher(array.array("q"))
    counter = EchoCounter(frames, 10, matcher, caller_rx.unprotect)
    for k in range(2 * bench_load.SAMPLE_EVERY):
        matcher.sent(k % bench_load.FRAMES, k, in_window=True)
    for k in range(bench_load.SAMPLE_EVERY):
        echo = relay_tx.protect(build_rtp(111, k, 0, 1, frames[k % bench_load.FRAMES][0]))
        if k == bench_load.SAMPLE_EVERY - 1:
            echo = echo[:20] + bytes([echo[20] ^ 1]) + echo[21:]  # one flipped bit: fails authentication
        counter.echo(echo, k)
    assert (counter.samples, counter.authentic) == (1, 0)
    # The right length but other bytes: genuine SRTP, but not the frame its length named.
    last = 2 * bench_load.SAMPLE_EVERY - 1
    for k in range(bench_load.SAMPLE_EVERY, last + 1):
        payload = frames[k % bench_load.FRAMES][0]
        if k == last:
            payload = bytes([200]) * len(payload)
        counter.echo(relay_tx.protect(build_rtp(111, k, 0, 1, payload)), k)
    assert (counter.samples, counter.authentic, counter.matched) == (2, 1, 0)


def test_echo_counter_needs_one_length_per_frame() -> None:
    with pytest.raises(ValueError, match="every frame needs its own length"):
        EchoCounter([(b"ab", 60), (b"cd", 60)], 10, EchoMatcher(array.array("q")), lambda d: d)


# --- the raw echo inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("marker", [False, True])
@pytest.mark.parametrize(("level", "voice"), [(None, False), (0, False), (127, False), (30, True)])
def test_raw_echo_is_a_valid_audio_out(marker: bool, level: int | None, voice: bool) -> None:
    """The rewrite must pass the relay's strict AUDIO_OUT checks (wire.decode: only MARKER allowed)."""
    flags = wire.audio_in_flags(marker=marker, level=level, voice=voice)
    audio_in = wire.encode_audio(wire.MsgType.AUDIO_IN, 0x1122334455667788, 4242, 96_000, b"opus", flags)
    out = wire.decode(audio_out_from_audio_in(audio_in))
    assert out.type is wire.MsgType.AUDIO_OUT
    assert (out.call_id, out.seq, out.timestamp, out.payload) == (0x1122334455667788, 4242, 96_000, b"opus")
    assert out.flags == (wire.FLAG_MARKER if marker else 0)


# --- the worst case: SRTP profile and burst agent ------------------------------------------------------


def test_command_names_the_srtp_profile_and_the_agent_when_not_the_defaults() -> None:
    default = RelayBenchConfig(calls=(10,), duration=2, warmup=1)
    assert (default.srtp_profile, default.agent) == ("gcm", "realtime")
    assert "--srtp-profile" not in default.command() and "--agent" not in default.command()
    config = RelayBenchConfig(calls=(10,), duration=2, warmup=1, srtp_profile="cm80", agent="burst")
    assert config.command() == (
        "splitrelay bench relay --calls 10 --duration 2 --warmup 1 --srtp-profile cm80 --agent burst"
    )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"srtp_profile": "cm32"}, "--srtp-profile: must be one of gcm, cm80, got 'cm32'"),
        ({"agent": "slow"}, "agent: must be one of realtime, burst, got 'slow'"),
        ({"agent": "burst", "load_socket": "per-call"}, "agent: burst needs --load-socket shared"),
    ],
)
def test_worst_case_options_are_checked(kwargs: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        RelayBenchConfig(calls=(10,), **kwargs)  # type: ignore[arg-type]
    if "srtp_profile" in kwargs:
        with pytest.raises(ValueError, match=re.escape(needle)):
            bench_load.WorkerOptions(
                "relay", 1, 0, 1, relay_url="http://x:1", srtp_profile=kwargs["srtp_profile"]
            )


@pytest.mark.parametrize(
    ("name", "policy_profile", "key_bytes"),
    [
        ("gcm", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
        ("cm80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    ],
)
def test_each_profile_is_told_by_the_tag_its_session_adds(
    name: str, policy_profile: int, key_bytes: int
) -> None:
    """The check a caller makes on its first packet: a real libsrtp session of each profile adds that
    profile's tag; a session of the other profile fails the check loudly, naming both."""
    header = bytes([0x80, 111, 0, 1]) + bytes(8)
    payload = bytes(80)
    outbound = pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    policy = pylibsrtp.Policy(bytes(range(key_bytes)), outbound, srtp_profile=policy_profile)
    packet = pylibsrtp.Session(policy).protect(header + payload)
    tag = bench_load.srtp_tag_bytes(len(packet), len(header), len(payload))
    profile = bench_load.srtp_profile(name)
    assert tag == profile.tag_bytes
    bench_load.check_srtp_profile(profile, tag)
    other = bench_load.srtp_profile("cm80" if name == "gcm" else "gcm")
    with pytest.raises(RuntimeError, match=f"asked for {other.openssl} .*{tag}-byte tag"):
        bench_load.check_srtp_profile(other, tag)


def test_a_run_on_another_srtp_profile_fails_loudly() -> None:
    from splitrelay.bench.relay import check_srtp_profile_used
    from splitrelay.bench.support import BenchError

    config = RelayBenchConfig(calls=(3,), srtp_profile="cm80")
    ok = {"srtp_profile": "SRTP_AES128_CM_SHA1_80", "srtp_tag_bytes": 10, "srtp_profile_calls": 3}
    check_srtp_profile_used(config, 3, ok)
    for wrong in (
        {**ok, "srtp_profile": "SRTP_AEAD_AES_256_GCM", "srtp_tag_bytes": 16},
        {**ok, "srtp_profile_calls": 2},  # one call did not check
        {},  # a load that never said
    ):
        with pytest.raises(BenchError, match="SRTP profile: asked for SRTP_AES128_CM_SHA1_80"):
            check_srtp_profile_used(config, 3, wrong)


def test_outbound_paths_split_inference_audio_into_c_and_python() -> None:
    from splitrelay.bench.relay import COUNTERS, outbound_paths

    assert "media_port_native_out_finished" in COUNTERS
    counters = {"frames_from_inference": 1000, "media_port_native_out_finished": 80}
    assert outbound_paths(counters) == {
        "frames": 1000,
        "finished_in_c": 80,
        "through_python": 920,
        "share_through_python": 0.92,
    }
    assert (
        outbound_paths({"frames_from_inference": 0, "media_port_native_out_finished": 0})[
            "share_through_python"
        ]
        is None
    )


def test_parse_metrics_reads_the_outbound_c_paths_counter() -> None:
    """From the relay's own collector with a shared port's counters, so a renamed metric breaks this."""
    sample = CallSample(
        CallCounters(), DwellHistogram(), DwellHistogram(), lost=0, jitter_ms=None, rtt_ms=None
    )
    collector = RelayCollector(lambda: [sample])
    collector.port_stats = lambda: {"native_finished": 7, "native_out_finished": 123}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    counters = parse_metrics(generate_latest(registry).decode()).counters
    assert counters["media_port_native_out_finished"] == 123


def test_worker_extras_merge_the_worst_case_figures() -> None:
    merged = merge_worker_extras(
        [
            {
                "srtp_profile_calls": 500,
                "pacing_frames": 10,
                "pacing_late_frames": 1,
                "pacing_late_p99_ms": -2.0,
            },
            {
                "srtp_profile_calls": 500,
                "pacing_frames": 20,
                "pacing_late_frames": 0,
                "pacing_late_p99_ms": 4.0,
            },
        ]
    )
    assert merged == {
        "srtp_profile_calls": 1000,
        "pacing_frames": 30,
        "pacing_late_frames": 1,
        "pacing_late_p99_ms": 4.0,  # percentiles do not merge: the worst worker's
    }
