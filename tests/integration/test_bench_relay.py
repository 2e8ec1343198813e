"""Smoke run of `splitrelay bench relay`: 3 real calls for 2 s through a real relay process, and the baseline;
and the raw echo inference against the relay's real wire endpoint.

They check the shape of the report and that its numbers agree with each other; they never assert speed
(house rule: speed is measured in benchmarks, not in timed asserts).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from splitrelay.bench.servers import RawEchoServer
from splitrelay.inference import wire
from splitrelay.relay.inference_link import RelayLink

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_LIMIT_S = 100


async def _run_bench(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "bench",
        "relay",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_LIMIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stderr.decode(errors="replace")
    assert stdout, f"no JSON on stdout; stderr:\n{text[-3000:]}"
    return proc.returncode or 0, json.loads(stdout), text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _check_phase(phase: dict[str, Any], calls: int) -> None:
    assert phase["flows"] == calls
    # The window is 2 s at 50 packets/s per call: every one of them was scheduled and sent.
    assert phase["sent"] == calls * 50 * 2
    assert phase["sent_all"] == phase["expected"] >= phase["sent"]
    assert 0 <= phase["received"] <= phase["sent"]
    assert phase["loss"] == phase["sent"] - phase["received"]
    assert phase["send_failures"] == 0
    rtt = phase["rtt_ms"]
    if phase["received"]:
        assert 0 < rtt["p50"] <= rtt["p99"] <= rtt["max"]
    assert phase["subject_cpu"] > 0
    assert phase["bench_cpu"] >= 0
    assert all(pct >= 0 for pct in phase["load_cpu"].values())
    assert 0 <= phase["subject_core_busy"] <= 100.5
    assert phase["window_s"] == pytest.approx(2.0, abs=0.5)
    assert isinstance(phase["load_bound"], list)


async def test_small_run_report_is_consistent() -> None:
    code, report, stderr = await _run_bench("--calls", "3", "--duration", "2", "--warmup", "1", "--json")
    assert code == 0, stderr[-3000:]
    assert report["command"] == "splitrelay bench relay --calls 3 --duration 2 --warmup 1"
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["packages"]["aiortc"] == "1.16.0"
    assert set(report["config"]["relay_cores"]).isdisjoint(report["config"]["load_cores"]) or (
        machine["cores"] == 1
    )

    (row,) = report["results"]
    assert row["calls"] == 3 and row["error"] is None
    relay, baseline = row["relay"], row["baseline"]
    _check_phase(relay, 3)
    _check_phase(baseline, 3)
    assert relay["subject"] == "relay" and baseline["subject"] == "udp echo"

    # The relay's own counters saw the traffic, and the echo came back through it.
    counters = relay["relay"]["counters"]
    assert counters["packets_in"] > 0 and counters["packets_out"] > 0
    assert counters["packets_to_inference"] <= counters["packets_in"]
    assert counters["barge_ins"] == 0  # the callers' noise is below the barge-in threshold
    assert relay["relay"]["calls_live_after"] == 3
    for direction in ("in", "out"):
        dwell = relay["relay"][f"dwell_{direction}"]
        assert dwell["count"] > 0
        assert 0 <= dwell["p50_ms"] <= dwell["p99_ms"]
        assert 0 <= dwell["share_within_1ms"] <= 1
        assert dwell["bucket_bounds_us"][:3] == [5, 10, 20]
    # Every echo came back through the relay's strict AUDIO_OUT checks, and the sampled ones are genuine
    # SRTP carrying the frame their length named.
    workers = relay["workers"]
    assert workers["srtp_overhead"] > 0
    assert workers["fast_path_undecryptable"] == 0 and workers["stray"] == 0
    assert workers["packets_prepared"] == relay["sent_all"]  # built ahead: exactly what was sent
    echo = relay["relay"]["echo_inference"]
    assert echo["garbage"] == 0 and echo["echoed"] > 0
    assert 0 < workers["echoes"] <= echo["echoed"] <= relay["sent_all"]
    assert workers["srtp_samples"] >= 3  # one in 47 echoes; each call echoes 150 frames
    assert workers["srtp_samples_authentic"] == workers["srtp_samples_matched"] == workers["srtp_samples"]
    assert workers["rtcp_sent"] > 0 and workers["rtcp_received"] > 0
    # The callers shared one socket (the default): every echo was logged from its recvmmsg batches and
    # matched after the run; the relay's reports reached each caller's fast path by SSRC.
    assert workers["load_socket"] == "shared"
    assert workers["load_port_echoes_logged"] == workers["echoes"] and workers["load_port_log_overflow"] == 0
    assert workers["load_port_rtcp_routed"] == workers["rtcp_received"]
    assert workers["load_port_send_drops"] == 0
    assert echo["batched"] is True

    ratios = row["ratios"]
    assert ratios["cpu"] == pytest.approx(relay["subject_cpu"] / baseline["subject_cpu"])
    if relay["rtt_ms"]["p50"] and baseline["rtt_ms"]["p50"]:
        assert ratios["rtt_p50"] == pytest.approx(relay["rtt_ms"]["p50"] / baseline["rtt_ms"]["p50"])

    # Three calls cannot say anything about the 500-call floor, and the report says so.
    assert report["floor"]["status"] == "NOT TESTED"
    assert report["floor"]["reasons"] == ["no run with 500 or more calls"]

    # The tables went to stderr, with the machine line and the verdicts.
    assert "machine" in stderr and "baseline: bare uvloop UDP echo" in stderr and "Floor" in stderr

    # Phase 1 ran the relay as deployed (one port, read with recvmmsg); the A/B ran it a port per call.
    assert row["path"].startswith("shared port")
    per_call = row["ab"]["port-per-call"]
    _check_phase(per_call, 3)
    assert per_call["relay"]["calls_live_after"] == 3 and per_call["label"].startswith("port per call")
    for phase, batched in ((relay, True), (per_call, False)):
        syscalls = phase["syscalls"]
        if "error" in syscalls:  # no perf here: said so, never a zero
            assert syscalls["error"]
            continue
        assert (syscalls["recvmmsg"] > 0) == batched
        assert syscalls["datagrams_per_recv"] > 0 and syscalls["datagrams_per_send"] > 0
    assert "datagrams per syscall" in stderr

    # Every process the benchmark started is gone.
    pids = [*relay["pids"].values(), *baseline["pids"].values(), *per_call["pids"].values()]
    assert pids and not [pid for pid in pids if pid != os.getpid() and _alive(pid)]


async def test_the_load_as_before_still_runs() -> None:
    """``--load-socket per-call``: a socket per caller, one sendto per packet, echoes matched as they come,
    and the echo inference answering per datagram: the load side before the shared socket."""
    code, report, stderr = await _run_bench(
        "--calls",
        "3",
        "--duration",
        "2",
        "--warmup",
        "1",
        "--ab",
        "none",
        "--load-socket",
        "per-call",
        "--json",
    )
    assert code == 0, stderr[-3000:]
    assert report["command"].endswith("--ab none --load-socket per-call")
    (row,) = report["results"]
    assert row["error"] is None
    relay = row["relay"]
    _check_phase(relay, 3)
    workers = relay["workers"]
    assert workers["load_socket"] == "per-call" and "load_port_echoes_logged" not in workers
    assert relay["relay"]["echo_inference"]["batched"] is False
    assert 0 < workers["echoes"] and workers["srtp_samples"] >= 3
    assert workers["srtp_samples_authentic"] == workers["srtp_samples_matched"] == workers["srtp_samples"]


async def test_the_worst_case_runs_on_cm80_with_a_burst_agent() -> None:
    """``--srtp-profile cm80 --agent burst``: every call negotiated AES-CM + HMAC-SHA1-80 (each caller's
    packets carry its 10-byte tag, and its echoes matched by that length), the baseline moved datagrams
    six bytes shorter than under GCM, and the burst agent's responses went through the relay's playout
    (Python, paced) rather than the outbound C path, reaching the callers no later than their slots."""
    code, report, stderr = await _run_bench(
        "--calls",
        "3",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--ab",
        "none",
        "--srtp-profile",
        "cm80",
        "--agent",
        "burst",
        "--json",
    )
    assert code == 0, stderr[-3000:]
    assert report["command"].endswith("--ab none --srtp-profile cm80 --agent burst")
    (row,) = report["results"]
    assert row["error"] is None
    relay = row["relay"]
    workers = relay["workers"]
    assert workers["srtp_profile"] == "SRTP_AES128_CM_SHA1_80" and workers["srtp_tag_bytes"] == 10
    assert workers["srtp_profile_calls"] == 3
    assert workers["srtp_samples"] > 0
    assert workers["srtp_samples_authentic"] == workers["srtp_samples_matched"] == workers["srtp_samples"]
    assert "SRTP_AES128_CM_SHA1_80, 3 of 3 (10 B tag)" in stderr
    # The burst agent held each call's audio into responses and sent every frame it took.
    echo = relay["relay"]["echo_inference"]
    assert echo["agent"] == "burst" and echo["burst_responses"] >= 3 and echo["burst_held_at_stop"] == 0
    # The relay paced them, in C (9adb842): almost none of inference's audio needed Python's playout; that
    # they were paced at all, the callers' timeline says below (frames ahead of their slots).
    outbound = relay["relay"]["outbound"]
    assert outbound["frames"] > 0 and outbound["share_through_python"] < 0.2
    # Every window frame came back (the drain covers a response's hold and pacing), on the relay's
    # timeline: paced frames ahead of their slots, none later than a frame past it.
    assert relay["loss"] == 0 and relay["send_failures"] == 0
    assert workers["pacing_frames"] > 0 and workers["pacing_late_p50_ms"] < 0
    assert workers["pacing_late_frames"] == 0
    # The baseline mimicked the callers' packets: header + extension + the 10-byte tag.
    assert workers["srtp_overhead"] == 10 + 12 + 8  # RTP header, a one-byte extension block of 8


async def test_a_real_time_agent_passes_through_c() -> None:
    """The default agent answers in real time: the relay passes its audio through the outbound C path
    (what a burst agent's share is compared with), under the default GCM profile."""
    code, report, stderr = await _run_bench(
        "--calls", "2", "--duration", "2", "--warmup", "1", "--ab", "none", "--json"
    )
    assert code == 0, stderr[-3000:]
    (row,) = report["results"]
    relay = row["relay"]
    assert (
        relay["workers"]["srtp_profile"] == "SRTP_AEAD_AES_256_GCM"
        and relay["workers"]["srtp_tag_bytes"] == 16
    )
    assert relay["relay"]["outbound"]["share_through_python"] < 0.2
    assert relay["relay"]["echo_inference"]["agent"] == "realtime"


async def test_bad_arguments_start_nothing() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "splitrelay.cli",
        "bench",
        "relay",
        "--calls",
        "3",
        "--duration",
        "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "duration: must be 1..600 seconds, got 0" in stderr.decode()


class _Sink:
    """A relay call's sink that records the AUDIO_OUT frames the relay link accepted."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, int, bytes, bool]] = []
        self.got = asyncio.Event()
        self.expect = 0

    def on_audio_out(self, seq: int, timestamp: int, payload: bytes, marker: bool) -> None:
        self.frames.append((seq, timestamp, payload, marker))
        if len(self.frames) >= self.expect:
            self.got.set()

    def on_mark(self, name: str, timestamp: int) -> None:
        raise AssertionError(f"unexpected mark {name!r}")

    def on_event(self, event: dict[str, Any]) -> None:
        raise AssertionError(f"unexpected event {event!r}")

    def on_clear(self, timestamp: int) -> None:
        raise AssertionError("unexpected clear")

    def on_call_end(self, reason: str) -> None:
        raise AssertionError(f"unexpected end: {reason}")


async def test_raw_echo_passes_the_relay_links_checks() -> None:
    """The relay's RelayLink accepts every raw AUDIO_OUT (same call id, seq, timestamp and payload; only
    MARKER kept), and calls open and end through the SDK's reliable control path."""
    server = RawEchoServer("127.0.0.1", 0, max_calls=4)
    address = await server.start()
    link = RelayLink(address, local_host="127.0.0.1")
    await link.start()
    sink = _Sink()
    try:
        call_id = await link.start_call("bench-raw-echo", sink)
        sent = []
        for seq in range(20):  # a talk spurt with levels and the V bit, as the relay forwards them
            flags = wire.audio_in_flags(marker=seq == 0, level=30 + seq, voice=seq % 2 == 0)
            payload = bytes([seq]) * (50 + seq)
            sent.append((seq, 960 * seq, payload, seq == 0))
            sink.expect = len(sent)
            assert link.send_audio_in(call_id, seq, 960 * seq, payload, flags)
            await asyncio.wait_for(sink.got.wait(), 5)
            sink.got.clear()
        assert sink.frames == sent
        assert link.stats.garbage == link.stats.audio_late == link.stats.unknown_call == 0
        assert server.echoed == 20 and server.stats.garbage == 0
        assert await link.end_call(call_id)
        for _ in range(100):  # bounded: the SDK ends the call on the CALL_END it acknowledged
            if not server.calls:
                break
            await asyncio.sleep(0.01)
        assert not server.calls
        assert not link.send_audio_in(call_id, 20, 960 * 20, b"late")  # the call is over at the relay
    finally:
        await link.close()
        await server.close(grace=0.5)
