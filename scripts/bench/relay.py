"""`splitrelay bench relay`: N concurrent calls through one relay process pinned to one core.

For each N the benchmark runs two phases back to back on the same cores:

1. relay: the relay (``splitrelay relay serve``) pinned to its core; on the other core(s) an echo inference
   (scripts/bench/servers.py) and load workers (scripts/bench/load.py), hidden ``splitrelay bench``
   commands, whose real WebRTC callers attach through the signed control API and send real Opus at
   50 packets/s each way over SRTP. The load side is built to cost a fraction of the relay's work per
   packet (packets protected before the window, echoes matched by their clear header and length, one in
   47 authenticated; a raw echo inference). ``--load-socket shared`` (the default) puts a worker's
   callers on one UDP socket, as a Cloudflare POP's sessions reach the relay from one SFU address, and
   moves their media in ``sendmmsg``/``recvmmsg`` batches (the echo inference too); ``per-call`` is the
   load as it was before (a socket per caller, a datagram per system call);
2. baseline: a bare uvloop UDP echo pinned to the same core, fed the same number of datagrams per second
   of the same sizes by the same workers;
3. A/B: the relay again, the same load, once per ``--ab`` variant: ``port-per-call`` (one UDP socket per
   call, the path before issue 17's shared port), ``python`` (``SPLITRELAY_NATIVE=0``: the pure-Python
   per-datagram path, relay/media/native), ``unbatched`` (the shared port without batched receive and
   send), ``per-datagram`` (``SPLITRELAY_NATIVE_BATCH=0``: the native per-datagram path, before the
   per-batch C path of relay/media/native ``NativeInbound``), ``python-out`` (``SPLITRELAY_NATIVE_OUT=0``:
   the per-batch inbound path, but inference's AUDIO_OUT through Python per frame, before the outbound
   C path of relay/media/native ``NativeOutbound``), ``per-batch-drain`` (``SPLITRELAY_NATIVE_DRAIN=0``: one
   C call per batch, Python looping over a wake-up's batches, before relay/media/native ``Drain``).
   Phase 1 runs the relay as it is deployed:
   every call on one UDP port (``relay serve --media-port``), the native per-batch path when it is built
   (``--port-per-call`` runs one port per call instead). Every relay phase is reported against the same
   baseline, so the CPU multiples compare directly.

It reports, over a steady-state window after a warm-up: the subject's CPU (from /proc), loss, the round
trip seen by the load generator, the relay's in-relay dwell (from its /metrics histograms), the
load generator's own CPU (also per frame), and ratios against the baseline. When the load generator is
the bottleneck the run says so, and the floor is reported as not tested rather than passed or failed.

The worst case a deployment brings (``--srtp-profile``, ``--agent``): the callers offer one DTLS-SRTP
profile, ``gcm`` (AEAD_AES_256_GCM, aiortc's choice, the default) or ``cm80`` (AES_CM_128_HMAC_SHA1_80, as
an SFU may pick: about twice libsrtp's work per packet), and each checks it by the tag its session adds
(``check_srtp_profile_used``: a run on another profile fails); the echo inference answers in real time
(the default) or, with ``burst``, like a TTS agent: one-second responses sent at once, which the relay
must pace (scripts/bench/servers.py ``BurstHold``). Each relay phase reports how much of inference's audio
went through Python's playout rather than the outbound C path (``outbound_paths``, from the relay's
``native_out_finished`` counter) and how late the callers got each frame against the relay's playout
timeline (load.py ``pacing_lateness``). With ``burst`` the round trip includes the agent's hold.

``--profile`` also samples the relay with ``perf record`` over phase 1's window at each N and prints where
its CPU went, by shared object (kernel, interpreter, libsrtp, our C, ...; scripts/bench/perf_profile.py):
the profile of what is left, from the same command.

Datagrams per system call: ``perf stat`` counts the subject's receive (recvfrom, recvmsg, recvmmsg) and send
(sendto, sendmsg, sendmmsg) system calls over the window through the kernel's syscall tracepoints, and the
relay's own counters (or, for the echo, the load's) give the audio datagrams it moved: so calls that found
the socket empty count too. Without a usable ``perf`` the figure is reported as unavailable, with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from splitrelay.bench.load import (
    DEFAULT_SRTP_PROFILE,
    DRAIN_S,
    LOAD_SOCKETS,
    MAX_PREPARED,
    PACING_LATE_MS,
    SRTP_PROFILES,
    LoadSocket,
    srtp_profile,
)
from splitrelay.bench.perf_profile import CpuProfiler, Profile, category
from splitrelay.bench.servers import AGENTS, BURST_FRAMES
from splitrelay.bench.stats import percentile_ms, ratio
from splitrelay.bench.support import (
    BenchError,
    Child,
    CpuSnapshot,
    CpuWindow,
    machine_info,
    machine_line,
    split_cores,
    stop_all,
)
from splitrelay.inference.wire_auth import WIRE_KEY_ENV, generate_text
from splitrelay.relay.child import cli_command
from splitrelay.relay.gc_freeze import FREEZE_ENV
from splitrelay.relay.media import native
from splitrelay.relay.media.shared_port import BATCH_ENV, NATIVE_BATCH_ENV

SIGNING_KEY_ENV = "SPLITRELAY_RELAY_SIGNING_KEY"
FLOOR_CALLS = 500
GOAL_CALLS = 1000
DWELL_LIMIT_S = 0.001
LOAD_BUSY_LIMIT = 90.0  # % busy of the load cores from which the load generator is the bottleneck
LOAD_PROC_LIMIT = 95.0  # % of one core for a single load process (it is single-threaded)
LATENESS_LIMIT_MS = 10.0  # p99 lateness of the send schedule (half a frame) past which the load slipped
NOISE_LIMIT = 10.0  # % of the subject's core used by anything but the subject and interrupts: a noisy run
# Datagrams through the subject per caller frame: caller in, inference out, inference in, caller out.
DATAGRAMS_PER_FRAME = 4
START_DELAY_S = 1.0
MAX_CALLS = 5000
AB_CHOICES = (
    "port-per-call",
    "python",
    "unbatched",
    "per-datagram",
    "python-out",
    "per-batch-drain",
    "no-rx-stamps",
    "no-freeze",
    "python-pace",
)
"""A/B variants: see the module docstring and ``VARIANTS``."""
DEFAULT_AB: tuple[str, ...] = ("port-per-call",)
SYSCALLS = {
    "recv": ("recvfrom", "recvmsg", "recvmmsg"),
    "send": ("sendto", "sendmsg", "sendmmsg"),
    "poll": ("epoll_wait", "epoll_pwait", "epoll_pwait2"),
}
PERF_STOP_S = 10.0


@dataclass(frozen=True)
class Variant:
    """How one relay phase runs: its port mode and the environment that picks its paths."""

    name: str
    label: str
    shared_port: bool
    env: tuple[tuple[str, str], ...] = ()


def variants(config: RelayBenchConfig) -> tuple[Variant, list[Variant]]:
    """Phase 1's relay and the A/B variants ``config.ab`` asks for, in that order."""
    shared = not config.port_per_call
    ports = "shared port" if shared else "port per call"
    path = "native" if native.available() else "python"
    path += " per batch" if native.available() and shared else ""
    main = Variant("default", f"{ports}, {path}", shared)
    table = {
        "port-per-call": Variant("port-per-call", "port per call (before the shared port)", False),
        "python": Variant(
            "python", f"{ports}, python (SPLITRELAY_NATIVE=0)", shared, ((native.NATIVE_ENV, "0"),)
        ),
        "unbatched": Variant(
            "unbatched", f"shared port, unbatched ({BATCH_ENV}=0)", True, ((BATCH_ENV, "0"),)
        ),
        "per-datagram": Variant(
            "per-datagram",
            f"shared port, native per datagram ({NATIVE_BATCH_ENV}=0)",
            True,
            ((NATIVE_BATCH_ENV, "0"),),
        ),
        "python-out": Variant(
            "python-out",
            f"shared port, native per batch in, python out ({native.NATIVE_OUT_ENV}=0)",
            True,
            ((native.NATIVE_OUT_ENV, "0"),),
        ),
        "per-batch-drain": Variant(
            "per-batch-drain",
            f"shared port, native, one C call per batch ({native.NATIVE_DRAIN_ENV}=0)",
            True,
            ((native.NATIVE_DRAIN_ENV, "0"),),
        ),
        "no-rx-stamps": Variant(
            "no-rx-stamps",
            f"shared port, native, dwell from the read, not the kernel stamp ({native.RX_TIMESTAMPS_ENV}=0)",
            True,
            ((native.RX_TIMESTAMPS_ENV, "0"),),
        ),
        "python-pace": Variant(
            "python-pace",
            f"shared port, native, bursts paced in Python ({native.NATIVE_PACE_ENV}=0)",
            True,
            ((native.NATIVE_PACE_ENV, "0"),),
        ),
        "no-freeze": Variant(
            "no-freeze",
            f"{ports}, {path}, calls neither released nor frozen ({FREEZE_ENV}=0)",
            shared,
            ((FREEZE_ENV, "0"),),
        ),
    }
    return main, [table[name] for name in config.ab]


@dataclass(frozen=True)
class RelayBenchConfig:
    """What one `splitrelay bench relay` run does; validated here so every caller gets the same errors."""

    calls: tuple[int, ...] = (100, 500, 1000)
    duration: float = 20.0
    warmup: float = 5.0
    relay_core: int = 0
    load_procs: int = 0
    """Load worker processes; 0 = one per load core."""
    setup_concurrency: int = 16
    setup_timeout: float = 30.0
    """Seconds one call may take to attach and connect."""
    port_per_call: bool = False
    """Phase 1's relay takes one UDP port per call instead of one for all (``relay serve --media-port``)."""
    ab: tuple[str, ...] = DEFAULT_AB
    """A/B variants run after the baseline at each N (``AB_CHOICES``); empty: none."""
    load_socket: LoadSocket = "shared"
    """The callers on one UDP socket, as an SFU's sessions reach the relay, or one socket each."""
    profile: bool = False
    """``perf record`` the relay over phase 1's window at each N (scripts/bench/perf_profile.py)."""
    srtp_profile: str = DEFAULT_SRTP_PROFILE
    """The one DTLS-SRTP profile the callers offer (``load.SRTP_PROFILES``); each call is checked."""
    agent: str = "realtime"
    """How the echo inference answers: each frame at once, or one-second bursts the relay paces."""

    def __post_init__(self) -> None:
        srtp_profile(self.srtp_profile)
        if self.agent not in AGENTS:
            raise ValueError(f"agent: must be one of {', '.join(AGENTS)}, got {self.agent!r}")
        if self.agent == "burst" and self.load_socket != "shared":
            raise ValueError("agent: burst needs --load-socket shared (its batched echo holds the bursts)")
        if self.load_socket not in LOAD_SOCKETS:
            choices = ", ".join(LOAD_SOCKETS)
            raise ValueError(f"load_socket: must be one of {choices}, got {self.load_socket!r}")
        for name in self.ab:
            if name not in AB_CHOICES:
                raise ValueError(f"ab: {name!r} is not one of {', '.join(AB_CHOICES)} (or none)")
        if len(set(self.ab)) != len(self.ab):
            raise ValueError(f"ab: each variant once, got {','.join(self.ab)}")
        if self.port_per_call and "port-per-call" in self.ab:
            raise ValueError("ab: port-per-call is already phase 1 with --port-per-call")
        if self.port_per_call and "unbatched" in self.ab:
            raise ValueError("ab: unbatched compares against the batched shared port, not --port-per-call")
        if self.port_per_call and "per-datagram" in self.ab:
            raise ValueError("ab: per-datagram compares against the batched shared port, not --port-per-call")
        for name in ("python-out", "per-batch-drain", "no-rx-stamps", "python-pace"):
            if self.port_per_call and name in self.ab:
                raise ValueError(f"ab: {name} compares against the batched shared port, not --port-per-call")
        if not 1 <= len(self.calls) <= 10:
            raise ValueError(f"calls: give 1..10 values, got {len(self.calls)}")
        for n in self.calls:
            if not 1 <= n <= MAX_CALLS:
                raise ValueError(f"calls: each value must be 1..{MAX_CALLS}, got {n}")
        if not 1 <= self.duration <= 600:
            raise ValueError(f"duration: must be 1..600 seconds, got {self.duration:g}")
        if not 0 <= self.warmup <= 120:
            raise ValueError(f"warmup: must be 0..120 seconds, got {self.warmup:g}")
        if not 0 <= self.load_procs <= 16:
            raise ValueError(f"load_procs: must be 0..16 (0 = one per load core), got {self.load_procs}")
        if not 1 <= self.setup_concurrency <= 64:
            raise ValueError(f"setup_concurrency: must be 1..64, got {self.setup_concurrency}")
        if not 1 <= self.setup_timeout <= 120:
            raise ValueError(f"setup_timeout: must be 1..120 seconds, got {self.setup_timeout:g}")

    def command(self) -> str:
        """The command line that reproduces this run (flags left at their defaults are omitted)."""
        args = ["splitrelay", "bench", "relay", "--calls", ",".join(map(str, self.calls))]
        args += ["--duration", f"{self.duration:g}", "--warmup", f"{self.warmup:g}"]
        default = RelayBenchConfig()
        for name, flag in (
            ("relay_core", "--relay-core"),
            ("load_procs", "--load-procs"),
            ("setup_concurrency", "--setup-concurrency"),
            ("setup_timeout", "--setup-timeout"),
        ):
            value = getattr(self, name)
            if value != getattr(default, name):
                args += [flag, f"{value:g}"]
        if self.port_per_call:
            args.append("--port-per-call")
        if self.ab != default.ab:
            args += ["--ab", ",".join(self.ab) or "none"]
        if self.load_socket != default.load_socket:
            args += ["--load-socket", self.load_socket]
        if self.srtp_profile != default.srtp_profile:
            args += ["--srtp-profile", self.srtp_profile]
        if self.agent != default.agent:
            args += ["--agent", self.agent]
        if self.profile:
            args.append("--profile")
        return shlex.join(args)


def parse_ab(text: str) -> tuple[str, ...]:
    """'port-per-call,python' -> ('port-per-call', 'python'); 'none' or '' -> ()."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if names == ("none",):
        return ()
    for name in names:
        if name not in AB_CHOICES:
            raise ValueError(f"--ab: {name!r} is not one of {', '.join(AB_CHOICES)} or none")
    return names


def check_prepared(config: RelayBenchConfig, load_procs: int) -> None:
    """Relay mode builds every packet of a run before it starts: refuse, before starting anything, a run
    whose largest N would not fit one load worker."""
    per_worker = math.ceil(max(config.calls) / load_procs)
    seconds = config.warmup + config.duration
    packets = round(per_worker * seconds * 50)
    if packets > MAX_PREPARED:
        raise ValueError(
            f"calls x (warmup + duration): {per_worker} calls per load worker x {seconds:g} s x 50 packets/s "
            f"= {packets:,} packets built ahead, limit {MAX_PREPARED:,} per worker "
            "(fewer calls, a shorter run or more --load-procs)"
        )


def parse_calls(text: str) -> tuple[int, ...]:
    """'100,500,1000' -> (100, 500, 1000); the error names --calls and the limits."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"--calls: expected comma-separated whole numbers such as 100,500, got {text!r}")
        values.append(int(part))
    RelayBenchConfig(calls=tuple(values))  # range checks, in one place
    return tuple(values)


# --- the relay's /metrics ---------------------------------------------------------------------------

Buckets = list[tuple[float, float]]  # (upper bound in seconds, math.inf for +Inf; cumulative count)


@dataclass(frozen=True)
class RelayMetrics:
    counters: dict[str, float]
    dwell_in: Buckets
    dwell_out: Buckets


COUNTERS = (
    "packets_in",
    "packets_to_inference",
    "frames_from_inference",
    "packets_out",
    "barge_ins",
    "frames_dropped_barge_in",
    "media_port_native_out_finished",
)
"""The relay's counters the bench reads (``splitrelay_<name>_total``); the last is inference's AUDIO_OUT the
outbound C path finished (passed through at once, or held and paced in C: 9adb842), so the rest of
``frames_from_inference`` went through Python's playout (relay/playout.py: named marks, pauses, CLEAR, or
every burst with SPLITRELAY_NATIVE_PACE=0, ``--ab python-pace``). Absent (0) without a shared port."""


def parse_metrics(text: str) -> RelayMetrics:
    """The counters and dwell histograms the benchmark reads, summed over the `process` label."""
    from prometheus_client.parser import text_string_to_metric_families

    counters = dict.fromkeys(COUNTERS, 0.0)
    dwell: dict[str, dict[float, float]] = {"in": {}, "out": {}}
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix("splitrelay_")
        if name in counters:
            counters[name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
        for direction in ("in", "out"):
            if family.name == f"splitrelay_dwell_{direction}_seconds":
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        dwell[direction][le] = dwell[direction].get(le, 0.0) + sample.value
    if not dwell["in"] or not dwell["out"]:
        raise BenchError("relay /metrics has no splitrelay_dwell_in/out_seconds histograms")
    return RelayMetrics(counters, sorted(dwell["in"].items()), sorted(dwell["out"].items()))


def bucket_delta(start: Buckets, end: Buckets) -> Buckets:
    before = dict(start)
    return [(le, count - before.get(le, 0.0)) for le, count in end]


def histogram_quantile(q: float, buckets: Buckets) -> tuple[float | None, bool]:
    """(q-quantile in seconds, True if it lies above the top finite bucket); linear within a bucket.

    The same estimate as Prometheus' histogram_quantile, so its error is the bucket width around it.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None, False
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower, True
            inside = cumulative - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0), False
        lower, below = le, cumulative
    return lower, True


def fraction_at_most(bound_s: float, buckets: Buckets) -> float | None:
    """Share of observations at or below a bucket bound (exact at a bound, no interpolation)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    for le, cumulative in buckets:
        if abs(le - bound_s) < 1e-12:
            return cumulative / total
    raise ValueError(f"dwell histogram has no bucket bound at {bound_s} s")


def dwell_summary(buckets: Buckets) -> dict[str, Any]:
    p50, p50_above = histogram_quantile(0.5, buckets)
    p99, p99_above = histogram_quantile(0.99, buckets)
    return {
        "count": int(buckets[-1][1]) if buckets else 0,
        "p50_ms": None if p50 is None else round(p50 * 1000, 4),
        "p99_ms": None if p99 is None else round(p99 * 1000, 4),
        "p99_above_top_bucket": p99_above or p50_above,
        "share_within_1ms": fraction_at_most(DWELL_LIMIT_S, buckets),
        "bucket_bounds_us": [round(le * 1e6) for le, _ in buckets if not math.isinf(le)],
    }


# --- results ----------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """One phase (relay or baseline) at one N, over the steady-state window."""

    subject: str
    flows: int
    sent: int
    received: int
    expected: int
    sent_all: int
    """Packets sent over the whole run (warm-up included), against ``expected`` on the schedule."""
    send_failures: int
    unmatched: int
    rtt_ms: dict[str, float | None]
    subject_cpu: float
    load_cpu: dict[str, float]
    bench_cpu: float
    subject_core_busy: float
    """% of the subject's core busy, all processes and interrupts included."""
    subject_core_interrupts: float
    """% of the subject's core in irq + softirq: on loopback, delivering the datagrams the subject sends."""
    load_core_busy: float
    load_core_interrupts: float
    steal: float
    subject_core_others: float
    """% of the subject's core used by neither the subject nor interrupts: other processes (noise)."""
    load_core_others: float
    """The same on the load core(s): work that delays the load generator."""
    others: list[tuple[str, int, float]]
    """Processes not part of the benchmark that used at least 1% of a core: (name, pid, %)."""
    others_started: int
    """Processes not part of the benchmark started during the window (too short-lived to name)."""
    lateness_p99_ms: float
    lateness_max_ms: float
    kernel_udp: dict[str, int]
    offered_datagrams_per_s: float
    window_s: float
    pids: dict[str, int]
    setup_s: float = 0.0
    """Seconds from spawning the load workers to every call (or flow) ready."""
    load_us_per_frame: float = 0.0
    """CPU of the load side (workers + echo inference) per caller frame in the window, in microseconds:
    what one round trip costs the load generator."""
    load_bound: list[str] = field(default_factory=list)
    noisy: list[str] = field(default_factory=list)
    relay: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)
    syscalls: dict[str, Any] = field(default_factory=dict)
    """The subject's system calls in the window (``SyscallCounter``) and datagrams per call, or ``error``."""
    profile: dict[str, Any] = field(default_factory=dict)
    """With ``--profile``, phase 1's relay CPU by shared object (``Profile.as_json``), or ``error``."""
    label: str = ""
    """What ran: the variant's label for a relay phase."""

    @property
    def loss(self) -> int:
        return self.sent - self.received

    @property
    def load_cpu_total(self) -> float:
        return sum(self.load_cpu.values())


@dataclass
class Row:
    calls: int
    relay: PhaseResult | None = None
    """The relay as it runs by default: the shared port, the native per-datagram path when built."""
    baseline: PhaseResult | None = None
    ab: dict[str, PhaseResult | None] = field(default_factory=dict)
    """The A/B variants (``--ab``): the same load through the relay run another way, by variant name."""
    error: str | None = None
    path: str = "native"
    """What phase 1's relay ran: its variant label ("shared port, native"; "..., python" with why)."""

    def phase(self, which: str) -> PhaseResult | None:
        """``relay`` (phase 1) or an A/B variant by name."""
        return self.relay if which == "relay" else self.ab.get(which)

    def ratios(self) -> dict[str, float | None]:
        r, b = self.relay, self.baseline
        if r is None or b is None:
            return {}
        return {
            "cpu": ratio(r.subject_cpu, b.subject_cpu),
            "rtt_p50": ratio(r.rtt_ms["p50"], b.rtt_ms["p50"]),
            "rtt_p99": ratio(r.rtt_ms["p99"], b.rtt_ms["p99"]),
        }

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"calls": self.calls, "error": self.error}
        for name in ("relay", "baseline"):
            phase: PhaseResult | None = getattr(self, name)
            out[name] = None if phase is None else {**asdict(phase), "loss": phase.loss}
        out["ratios"] = self.ratios()
        out["path"] = self.path
        b = self.baseline
        out["ab"] = {
            name: None
            if phase is None
            else {
                **asdict(phase),
                "loss": phase.loss,
                "cpu_x_echo": None if b is None else ratio(phase.subject_cpu, b.subject_cpu),
            }
            for name, phase in self.ab.items()
        }
        return out


def verdict(row: Row | None, n: int) -> dict[str, Any]:
    """PASS / FAIL / NOT TESTED against '0 loss and p99 dwell <= 1 ms' for the row at ``n`` calls."""
    what = f"{n} calls on one core: 0 loss and p99 dwell <= 1 ms"
    if row is None:
        return {"status": "NOT TESTED", "target": what, "reasons": [f"no run with {n} or more calls"]}
    if row.error or row.relay is None:
        return {
            "status": "NOT TESTED",
            "target": what,
            "calls": row.calls,
            "reasons": [f"run failed: {row.error}"],
        }
    r = row.relay
    if r.load_bound:
        reasons = ["load-generator bound: " + "; ".join(r.load_bound)]
        return {"status": "NOT TESTED", "target": what, "calls": row.calls, "reasons": reasons}
    fails = []
    if r.loss:
        fails.append(f"lost {r.loss} of {r.sent} packets")
    if r.send_failures:
        fails.append(f"{r.send_failures} sends failed")
    samples, authentic = r.workers.get("srtp_samples", 0), r.workers.get("srtp_samples_authentic", 0)
    if authentic < samples:
        fails.append(f"{samples - authentic} of {samples} sampled echoes failed SRTP authentication")
    for direction in ("in", "out"):
        share = r.relay[f"dwell_{direction}"]["share_within_1ms"]
        if share is None or share < 0.99:
            fails.append(f"dwell {direction}: {'no data' if share is None else f'{share:.2%} within 1 ms'}")
    if fails and r.noisy:
        fails.append("noisy run, rerun before trusting the failure: " + "; ".join(r.noisy))
    return {"status": "FAIL" if fails else "PASS", "target": what, "calls": row.calls, "reasons": fails}


def projection(rows: Sequence[Row]) -> dict[str, Any] | None:
    """Calls that would take the relay to 100% of its core: a straight line through the relay's CPU at
    the runs where it carried everything offered (no loss, no error) and the load cores were not
    saturated. Send-schedule lateness alone does not exclude a run: it shifts when packets come, not
    how many. An extrapolation, labelled as such."""
    points = [
        (row.calls, row.relay.subject_cpu)
        for row in rows
        if row.relay is not None
        and not row.error
        and row.relay.loss == 0
        and row.relay.load_core_busy < LOAD_BUSY_LIMIT
    ]
    if len({n for n, _ in points}) < 2:
        return None
    slope, intercept = np.polyfit([n for n, _ in points], [cpu for _, cpu in points], 1)
    if slope <= 0:
        return None
    return {
        "calls_at_100pct": round((100 - float(intercept)) / float(slope)),
        "cpu_per_call_pct": round(float(slope), 4),
        "fixed_cpu_pct": round(float(intercept), 2),
        "from_calls": [n for n, _ in points],
    }


def pick_row(rows: Sequence[Row], n: int) -> Row | None:
    candidates = [r for r in rows if r.calls >= n]
    return min(candidates, key=lambda r: r.calls) if candidates else None


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Context:
    config: RelayBenchConfig
    console: Console
    workdir: Path
    key: str = field(repr=False)
    relay_cores: frozenset[int]
    load_cores: frozenset[int]
    load_procs: int
    wire_key: str = field(repr=False, default_factory=generate_text)
    """This run's relay <-> inference wire key (docs/wire-protocol.md), for the relay and the echo."""

    @property
    def plain_env(self) -> dict[str, str]:
        """The children's environment without any splitrelay setting (a $SPLITRELAY_PUBLIC_ADDRESS left
        in the shell must not leak into a loopback benchmark) but this run's wire key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITRELAY_")}
        return {**env, WIRE_KEY_ENV: self.wire_key}

    @property
    def env(self) -> dict[str, str]:
        """``plain_env`` plus this run's signing key, for the relay and the callers that sign."""
        return {**self.plain_env, SIGNING_KEY_ENV: self.key}


async def _spawn_workers(ctx: Context, mode: str, n: int, extra: Sequence[str], tag: str) -> list[Child]:
    k = min(ctx.load_procs, n)
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    workers: list[Child] = []
    for i, count in enumerate(shares):
        args = cli_command("bench", "load-worker", "--mode", mode, "--count", str(count), *extra)
        args += ["--warmup", f"{ctx.config.warmup!r}", "--duration", f"{ctx.config.duration!r}"]
        if mode == "relay":
            args += ["--prefix", f"{tag}-w{i}", "--load-socket", ctx.config.load_socket]
            args += ["--srtp-profile", ctx.config.srtp_profile]
        workers.append(
            await Child.spawn(
                f"load-{mode}-{n}-{i}",
                args,
                cores=ctx.load_cores,
                workdir=ctx.workdir,
                env=ctx.env,
                stdin=True,
            )
        )
    return workers


async def _await_ready(
    ctx: Context, workers: Sequence[Child], total: int, label: str
) -> list[dict[str, Any]]:
    """Wait for every worker's ready line, showing set-up progress; bounded by the set-up budget."""
    budget = 60 + total * ctx.config.setup_timeout / ctx.config.setup_concurrency
    attached = [0] * len(workers)
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=ctx.console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)

        async def follow(i: int, worker: Child) -> dict[str, Any]:
            deadline = time.monotonic() + budget
            for _ in range(total + 10):  # one progress line per call, then ready
                event = await worker.next_event(max(0.1, deadline - time.monotonic()))
                if event.get("event") == "progress":
                    attached[i] = int(event["attached"])
                    progress.update(task, completed=sum(attached))
                elif event.get("event") == "ready":
                    attached[i] = int(event["flows"])
                    progress.update(task, completed=sum(attached))
                    return event
            raise BenchError(f"{worker.name}: no ready line after {total + 10} events")

        return list(await asyncio.gather(*(follow(i, w) for i, w in enumerate(workers))))


async def _signed_get(http: Any, key: str, path: str) -> Any:
    from splitrelay.contract.signing import sign_headers

    response = await http.get(path, headers=sign_headers(key.encode(), "GET", path, b""))
    if response.status_code != 200:
        raise BenchError(f"relay GET {path}: HTTP {response.status_code}: {response.text[:200]}")
    return response.json()


async def _live_calls(http: Any, key: str) -> int:
    calls = (await _signed_get(http, key, "/v1/calls"))["calls"]
    return sum(1 for c in calls if c.get("state") == "live")


async def _wait_live(http: Any, key: str, n: int, within: float) -> None:
    deadline = time.monotonic() + within
    live = 0
    while time.monotonic() < deadline:  # bounded in time; one request per 0.5 s
        live = await _live_calls(http, key)
        if live >= n:
            return
        await asyncio.sleep(0.5)
    raise BenchError(f"relay: {live} of {n} calls live after {within:g} s")


async def _scrape(http: Any) -> RelayMetrics:
    response = await http.get("/metrics")
    if response.status_code != 200:
        raise BenchError(f"relay GET /metrics: HTTP {response.status_code}")
    return parse_metrics(response.text)


class SyscallCounter:
    """``perf stat`` on one process's syscall tracepoints (``SYSCALLS``) from ``start`` to ``stop``.

    Counting mode (no samples are recorded), so the subject pays a counter increment per call. Where perf
    is missing or may not trace, ``stop`` returns ``{"error": why}`` and the run goes on without it.
    """

    def __init__(self, process: asyncio.subprocess.Process | None, error: str | None) -> None:
        self._process = process
        self._error = error

    @classmethod
    async def start(cls, pid: int) -> SyscallCounter:
        perf = shutil.which("perf")
        if perf is None:
            return cls(None, "perf is not installed")
        events = ",".join(f"syscalls:sys_enter_{name}" for names in SYSCALLS.values() for name in names)
        try:
            process = await asyncio.create_subprocess_exec(
                perf, "stat", "--no-big-num", "-x", ",", "-e", events, "-p", str(pid),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            return cls(None, f"perf: {exc}")
        return cls(process, None)

    async def stop(self) -> dict[str, Any]:
        """The calls counted, by name (plus ``recv``, ``send``, ``poll`` totals), or ``{"error": ...}``."""
        process = self._process
        if process is None:
            return {"error": self._error or "not started"}
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(process.communicate(), PERF_STOP_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return {"error": f"perf stat did not stop within {PERF_STOP_S:g} s"}
        return parse_perf_stat(err.decode(errors="replace"))


def parse_perf_stat(text: str) -> dict[str, Any]:
    """``perf stat -x ,`` output to counts by syscall name and per ``SYSCALLS`` group; error if unusable."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[2].startswith("syscalls:sys_enter_"):
            continue
        name = fields[2].removeprefix("syscalls:sys_enter_")
        if not fields[0].strip().isdigit():  # "<not counted>", "<not supported>"
            return {"error": f"perf could not count {name}: {fields[0].strip()}"}
        counts[name] = int(fields[0])
    wanted = [name for names in SYSCALLS.values() for name in names]
    if not all(name in counts for name in wanted):
        last = text.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"perf stat gave no counts ({last[0][:200]})"}
    out: dict[str, Any] = dict(counts)
    for group, names in SYSCALLS.items():
        out[group] = sum(counts[name] for name in names)
    return out


def with_datagrams(syscalls: dict[str, Any], received: int, sent: int) -> dict[str, Any]:
    """Add the datagrams moved and datagrams per receive / send system call to a ``parse_perf_stat``."""
    if "error" in syscalls:
        return syscalls
    return {
        **syscalls,
        "datagrams_received": received,
        "datagrams_sent": sent,
        "datagrams_per_recv": round(received / syscalls["recv"], 3) if syscalls["recv"] else 0.0,
        "datagrams_per_send": round(sent / syscalls["send"], 3) if syscalls["send"] else 0.0,
    }


def free_udp_port(host: str) -> int:
    """A UDP port the kernel just gave out on ``host`` (released again: the relay binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Window:
    cpu: CpuWindow
    results: list[dict[str, Any]]
    rtt_us: np.ndarray[Any, Any]
    metrics: tuple[RelayMetrics, RelayMetrics] | None
    syscalls: dict[str, Any]
    profile: Profile | str | None = None


async def _measure(
    ctx: Context,
    workers: Sequence[Child],
    pids: dict[str, int],
    scrape: Callable[[], Any] | None,
    tag: str,
    subject_pid: int,
    profile: bool = False,
) -> Window:
    """Start every worker on one schedule, snapshot CPU (and /metrics) around the steady-state window;
    the subject's system calls are counted over it (and with ``profile`` its CPU sampled by perf)."""
    cfg = ctx.config
    t0 = time.monotonic() + START_DELAY_S
    paths = [ctx.workdir / f"rtt-{tag}-{i}.npy" for i in range(len(workers))]
    for worker, path in zip(workers, paths, strict=True):
        await worker.send({"cmd": "run", "t0": t0, "rtt_path": str(path)})
    await asyncio.sleep(max(0.0, t0 + cfg.warmup - time.monotonic()))
    m0 = await scrape() if scrape else None
    counter = await SyscallCounter.start(subject_pid)
    profiler = await CpuProfiler.start(subject_pid) if profile else None
    s0 = CpuSnapshot.take(pids)
    await asyncio.sleep(max(0.0, t0 + cfg.warmup + cfg.duration - time.monotonic()))
    s1 = CpuSnapshot.take(pids)
    syscalls = await counter.stop()
    sampled = await profiler.stop() if profiler is not None else None
    m1 = await scrape() if scrape else None
    results = await asyncio.gather(*(w.wait_for("result", DRAIN_S + 60) for w in workers))
    rtt = np.concatenate([np.load(p) for p in paths]) if paths else np.zeros(0, dtype=np.float32)
    metrics = (m0, m1) if m0 is not None and m1 is not None else None
    cpu = CpuWindow.between(s0, s1, pids.values())
    return Window(cpu, list(results), rtt, metrics, syscalls, sampled)


def _phase_result(
    ctx: Context, subject: str, n: int, window: Window, subject_name: str, pids: dict[str, int]
) -> PhaseResult:
    cpu = window.cpu
    res = window.results
    sent = sum(int(r["sent_window"]) for r in res)
    load_cpu = {
        name: round(pct, 1) for name, pct in cpu.processes.items() if name not in (subject_name, "bench")
    }

    def mean(values: dict[int, float], cores: frozenset[int]) -> float:
        return round(float(np.mean([values.get(c, 0.0) for c in cores])), 1)

    steal = float(np.mean(list(cpu.core_steal.values()) or [0.0]))
    phase = PhaseResult(
        subject=subject,
        flows=n,
        sent=sent,
        received=sum(int(r["received_window"]) for r in res),
        expected=sum(int(r["expected"]) for r in res),
        sent_all=sum(int(r["sent"]) for r in res),
        send_failures=sum(int(r["send_failures"]) for r in res),
        unmatched=sum(int(r["unmatched"]) for r in res),
        rtt_ms={
            "p50": _round(percentile_ms(window.rtt_us, 50)),
            "p99": _round(percentile_ms(window.rtt_us, 99)),
            "mean": _round(float(window.rtt_us.mean()) / 1000 if window.rtt_us.size else None),
            "max": _round(float(window.rtt_us.max()) / 1000 if window.rtt_us.size else None),
        },
        subject_cpu=round(cpu.processes[subject_name], 1),
        load_cpu=load_cpu,
        bench_cpu=round(cpu.processes["bench"], 1),
        subject_core_busy=mean(cpu.core_busy, ctx.relay_cores),
        subject_core_interrupts=mean(cpu.core_interrupts, ctx.relay_cores),
        load_core_busy=mean(cpu.core_busy, ctx.load_cores),
        load_core_interrupts=mean(cpu.core_interrupts, ctx.load_cores),
        steal=round(steal, 1),
        subject_core_others=_other_work(cpu, ctx.relay_cores, [cpu.processes[subject_name]]),
        load_core_others=_other_work(
            cpu, ctx.load_cores, [pct for name, pct in cpu.processes.items() if name != subject_name]
        ),
        others=cpu.others[:8],
        others_started=cpu.started,
        lateness_p99_ms=max(float(r["lateness_p99_ms"]) for r in res),
        lateness_max_ms=max(float(r["lateness_max_ms"]) for r in res),
        kernel_udp={k: v for k, v in cpu.udp.items() if k in ("InErrors", "RcvbufErrors", "SndbufErrors")},
        offered_datagrams_per_s=round(DATAGRAMS_PER_FRAME * sent / cpu.seconds),
        window_s=round(cpu.seconds, 3),
        pids=pids,
        workers=merge_worker_extras([r.get("extra", {}) for r in res]),
    )
    frames = phase.sent
    if frames:
        load_seconds = phase.load_cpu_total / 100 * cpu.seconds
        phase.load_us_per_frame = round(load_seconds * 1e6 / frames, 2)
    phase.load_bound = _load_bound(ctx, phase, cpu)
    if phase.subject_core_others > NOISE_LIMIT:
        phase.noisy.append(f"other work used {phase.subject_core_others:.0f}% of the {subject}'s core")
    if steal > NOISE_LIMIT:
        phase.noisy.append(f"hypervisor steal {steal:.0f}%")
    return phase


SUMMED_EXTRAS = frozenset(
    {
        "lost_tracked",
        "echoes",
        "packets_prepared",
        "srtp_samples",
        "srtp_samples_authentic",
        "srtp_samples_matched",
        "fast_path_undecryptable",
        "stray",
        "rtcp_sent",
        "rtcp_received",
        "srtp_profile_calls",
        "pacing_frames",
        "pacing_late_frames",
    }
)


WORST_EXTRAS = frozenset(
    {"lateness_warmup_p99_ms", "pacing_late_p50_ms", "pacing_late_p99_ms", "pacing_late_max_ms"}
)
"""Per-worker figures that cannot be merged: the worst worker's (one worker on a 2-core machine)."""


def merge_worker_extras(extras: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One dict for all load workers: counts are summed, lateness is the worst worker's, per-worker lists
    (GC time, worst slots) are kept per worker, and the rest (sizes, the same in every worker) is the
    first worker's."""
    out: dict[str, Any] = {}
    for extra in extras:
        for key, value in extra.items():
            if key in SUMMED_EXTRAS:
                out[key] = out.get(key, 0) + int(value)
            elif key in WORST_EXTRAS:
                out[key] = max(out.get(key, value), value)
            elif isinstance(value, list):
                out.setdefault(key, []).append(value)
            else:
                out.setdefault(key, value)
    return out


def _other_work(cpu: CpuWindow, cores: frozenset[int], ours: Sequence[float]) -> float:
    """% of a core (mean over ``cores``) busy with neither our processes nor interrupts.

    Our processes are pinned, so whatever else kept these cores busy was someone else's work,
    including short-lived processes no snapshot can name.
    """
    busy = sum(cpu.core_busy.get(c, 0.0) - cpu.core_interrupts.get(c, 0.0) for c in cores)
    return round(max(0.0, (busy - sum(ours)) / len(cores)), 1)


def _load_bound(ctx: Context, phase: PhaseResult, cpu: CpuWindow) -> list[str]:
    """Why the load generator, not the subject, may have limited this phase (empty: it did not)."""
    reasons = []
    if ctx.relay_cores & ctx.load_cores:
        reasons.append(
            f"the subject and the load generator share core(s) {sorted(ctx.relay_cores & ctx.load_cores)}"
        )
    if phase.load_core_busy >= LOAD_BUSY_LIMIT:
        reasons.append(f"load core(s) {sorted(ctx.load_cores)} {phase.load_core_busy:.0f}% busy")
    for name, pct in phase.load_cpu.items():
        if pct >= LOAD_PROC_LIMIT:
            reasons.append(f"{name} at {pct:.0f}% of a core")
    if phase.lateness_p99_ms > LATENESS_LIMIT_MS:
        reasons.append(f"send schedule late by {phase.lateness_p99_ms:.1f} ms at p99")
    if phase.sent_all + phase.send_failures < phase.expected:
        reasons.append(f"sent {phase.sent_all} of {phase.expected} scheduled packets")
    return reasons


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# --- the phases -------------------------------------------------------------------------------------


async def _retire(workers: Sequence[Child]) -> None:
    """Ask workers to close their calls and exit; stop by PID whoever has not within 30 s."""
    for worker in workers:
        if worker.alive():
            with contextlib.suppress(BenchError):
                await worker.send({"cmd": "stop"})
    await asyncio.gather(*(w.wait(30.0) for w in workers))
    await stop_all(workers, grace=5.0)


def _worker_pids(workers: Sequence[Child]) -> dict[str, int]:
    return {f"load worker {i}": w.pid for i, w in enumerate(workers)}


async def relay_phase(ctx: Context, n: int, variant: Variant) -> PhaseResult:
    """The relay with ``n`` callers and the echo inference, run as ``variant`` says (module docstring)."""
    import httpx

    cfg = ctx.config
    servers: list[Child] = []
    workers: list[Child] = []
    inference: Child | None = None
    try:
        inference = await Child.spawn(
            f"echo-inference-{n}",
            cli_command(
                "bench",
                "serve-echo",
                "echo-inference",
                "--listen",
                "127.0.0.1:0",
                "--max-calls",
                str(n + 16),
                # --load-socket per-call is the load side as it was: its echo answers per datagram too.
                "--batch" if cfg.load_socket == "shared" else "--no-batch",
                "--agent",
                cfg.agent,
            ),
            cores=ctx.load_cores,
            workdir=ctx.workdir,
            env=ctx.plain_env,
            stdin=True,
        )
        servers.append(inference)
        inference_port = int((await inference.wait_for("ready", 30))["port"])
        media = ["--media-port", str(free_udp_port("127.0.0.1"))] if variant.shared_port else []
        relay = await Child.spawn(
            f"relay-{n}",
            cli_command(
                "relay",
                "serve",
                "--json",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--candidate-address",
                "127.0.0.1",
                "--inference",
                f"127.0.0.1:{inference_port}",
                "--max-calls",
                str(n),
                *media,
            ),
            cores=ctx.relay_cores,
            workdir=ctx.workdir,
            env={**ctx.env, **dict(variant.env)},
        )
        servers.append(relay)
        url = str((await relay.wait_for("ready", 60))["url"])
        setup_started = time.monotonic()
        workers = await _spawn_workers(
            ctx,
            "relay",
            n,
            [
                "--relay-url",
                url,
                "--concurrency",
                str(cfg.setup_concurrency),
                "--setup-timeout",
                str(cfg.setup_timeout),
            ],
            f"n{n}-{secrets.token_hex(3)}",
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await _await_ready(ctx, workers, n, f"{n} calls: attaching")
            await _wait_live(http, ctx.key, n, within=60)
            setup_s = time.monotonic() - setup_started
            pids = {
                "relay": relay.pid,
                "echo inference": inference.pid,
                "bench": os.getpid(),
                **_worker_pids(workers),
            }

            async def scrape() -> RelayMetrics:
                return await _scrape(http)

            profile = cfg.profile and variant.name == "default"
            tag = f"relay-{n}-{variant.name}"
            window = await _measure(ctx, workers, pids, scrape, tag, relay.pid, profile=profile)
            live_after = await _live_calls(http, ctx.key)
    finally:
        await _retire(workers)
        await stop_all(servers)
    assert window.metrics is not None
    m0, m1 = window.metrics
    phase = _phase_result(ctx, "relay", n, window, "relay", pids)
    phase.setup_s = round(setup_s, 2)
    phase.label = variant.label
    if isinstance(window.profile, Profile):
        phase.profile = window.profile.as_json()
    elif window.profile is not None:
        phase.profile = {"error": window.profile}
    moved = {k: int(m1.counters[k] - m0.counters[k]) for k in COUNTERS}
    phase.syscalls = with_datagrams(
        window.syscalls,
        received=moved["packets_in"] + moved["frames_from_inference"],
        sent=moved["packets_to_inference"] + moved["packets_out"],
    )
    if phase.syscalls.get("recvmmsg"):  # only the batched shared port reads with it
        phase.syscalls["media_port_per_recvmmsg"] = round(moved["packets_in"] / phase.syscalls["recvmmsg"], 3)
    stats = [e for e in await inference.remaining_events() if e.get("event") == "stats"]
    phase.relay = {
        "dwell_in": dwell_summary(bucket_delta(m0.dwell_in, m1.dwell_in)),
        "dwell_out": dwell_summary(bucket_delta(m0.dwell_out, m1.dwell_out)),
        "counters": {k: int(m1.counters[k] - m0.counters[k]) for k in COUNTERS},
        "calls_live_after": live_after,
        "echo_inference": {k: v for k, v in (stats[0] if stats else {}).items() if k != "event"},
    }
    phase.relay["outbound"] = outbound_paths(phase.relay["counters"])
    if live_after < n:
        phase.relay["note"] = f"{n - live_after} calls ended during the run"
    return phase


def outbound_paths(counters: dict[str, int]) -> dict[str, Any]:
    """Inference's AUDIO_OUT in the window by path: finished in C (passed through as it came, or held and
    paced in C) or handed to Python (relay/playout.py: queued and paced there when C does not pace)."""
    frames = counters["frames_from_inference"]
    in_c = min(counters["media_port_native_out_finished"], frames)
    return {
        "frames": frames,
        "finished_in_c": in_c,
        "through_python": frames - in_c,
        "share_through_python": round((frames - in_c) / frames, 4) if frames else None,
    }


def check_srtp_profile_used(config: RelayBenchConfig, n: int, workers: dict[str, Any]) -> None:
    """Every call used the profile asked for (the callers offer only it, and each checked the tag its
    SRTP session adds), or the run fails loudly instead of measuring another profile."""
    profile = SRTP_PROFILES[config.srtp_profile]
    used, tag, calls = (
        workers.get("srtp_profile"),
        workers.get("srtp_tag_bytes"),
        workers.get("srtp_profile_calls"),
    )
    if used != profile.openssl or tag != profile.tag_bytes or calls != n:
        raise BenchError(
            f"SRTP profile: asked for {profile.openssl} ({profile.tag_bytes}-byte tag) on {n} calls, "
            f"the load reports {used} ({tag}-byte tag) on {calls}"
        )


async def baseline_phase(ctx: Context, n: int, srtp_overhead: int) -> PhaseResult:
    """The bare uvloop UDP echo on the relay's core, fed the relay phase's datagram rate and sizes."""
    servers: list[Child] = []
    workers: list[Child] = []
    try:
        echo = await Child.spawn(
            f"udp-echo-{n}",
            cli_command("bench", "serve-echo", "udp-echo", "--listen", "127.0.0.1:0"),
            cores=ctx.relay_cores,
            workdir=ctx.workdir,
            env=ctx.plain_env,
            stdin=True,
        )
        servers.append(echo)
        port = int((await echo.wait_for("ready", 30))["port"])
        setup_started = time.monotonic()
        workers = await _spawn_workers(
            ctx, "udp", n, ["--target", f"127.0.0.1:{port}", "--srtp-bytes", str(srtp_overhead)], f"udp{n}"
        )
        await _await_ready(ctx, workers, n, f"{n} flows: opening")
        setup_s = time.monotonic() - setup_started
        pids = {"udp echo": echo.pid, "bench": os.getpid(), **_worker_pids(workers)}
        window = await _measure(ctx, workers, pids, None, f"udp-{n}", echo.pid)
    finally:
        await _retire(workers)
        await stop_all(servers)
    phase = _phase_result(ctx, "udp echo", n, window, "udp echo", pids)
    phase.setup_s = round(setup_s, 2)
    phase.label = "bare uvloop UDP echo"
    # Each frame crosses the echo twice (module docstring): two datagrams in, two out, less what was lost.
    phase.syscalls = with_datagrams(window.syscalls, 2 * phase.sent, 2 * phase.sent - phase.loss)
    return phase


async def bench_one(ctx: Context, n: int) -> Row:
    """Both phases at ``n`` calls; a failure is recorded in the row, never half-reported as a result."""
    main, others = variants(ctx.config)
    path = main.label if native.available() else f"{main.label}: {native.status()}"
    row = Row(calls=n, path=path)
    try:
        row.relay = await relay_phase(ctx, n, main)
        check_srtp_profile_used(ctx.config, n, row.relay.workers)
        # The baseline's datagrams carry the callers' SRTP overhead as measured on their packets (header,
        # extension and the profile's tag), so the echo moves the same bytes under either profile.
        row.baseline = await baseline_phase(ctx, n, int(row.relay.workers.get("srtp_overhead", 0)))
        for variant in others:
            row.ab[variant.name] = await relay_phase(ctx, n, variant)
            check_srtp_profile_used(ctx.config, n, row.ab[variant.name].workers)  # type: ignore[union-attr]
    except (BenchError, OSError, RuntimeError, ValueError, KeyError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # an httpx error, a JSON shape surprise: still one row, not a crash
        row.error = f"{type(exc).__name__}: {exc}"
    return row


# --- output -----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _loss(p: PhaseResult) -> str:
    pct = 100 * p.loss / p.sent if p.sent else 0.0
    return f"{p.loss:,} / {p.sent:,} ({pct:.3f}%)"


def _load(p: PhaseResult) -> str:
    parts = ", ".join(f"{name} {pct:.0f}%" for name, pct in p.load_cpu.items())
    return f"{p.load_cpu_total:.0f}% ({parts})"


def _status(p: PhaseResult) -> str:
    notes = []
    if p.load_bound:
        notes.append("LOAD-GENERATOR BOUND: " + "; ".join(p.load_bound))
    if p.noisy:
        notes.append("noisy: " + "; ".join(p.noisy))
    return " | ".join(notes) or "ok"


def _samples(p: PhaseResult) -> str:
    w = p.workers
    samples = int(w.get("srtp_samples", 0))
    if not samples:
        return "none sampled"
    return f"{w['srtp_samples_authentic']:,} / {samples:,} ({w['srtp_samples_matched']:,})"


def _others(p: PhaseResult) -> str:
    named = ", ".join(f"{n} {pct:.0f}%" for n, _, pct in p.others[:3])
    started = f"{p.others_started} started in the window" if p.others_started else ""
    return "; ".join(part for part in (named, started) if part) or "none"


def _dwell(p: PhaseResult, direction: str) -> str:
    d = p.relay[f"dwell_{direction}"]
    above = " (above top bucket)" if d["p99_above_top_bucket"] else ""
    return f"{_ms(d['p50_ms'])} / {_ms(d['p99_ms'])}{above}"


def run_conditions(config: RelayBenchConfig) -> str:
    """The worst-case knobs of a run, for titles: the SRTP profile and the agent."""
    profile = SRTP_PROFILES[config.srtp_profile]
    agent = f"burst agent ({BURST_FRAMES} frames at once)" if config.agent == "burst" else "real-time agent"
    return f"SRTP {profile.openssl}, {agent}"


def _srtp(p: PhaseResult) -> str:
    w = p.workers
    calls = f"{w.get('srtp_profile_calls', 0):,} of {p.flows:,}"
    return f"{w.get('srtp_profile', '?')}, {calls} ({w.get('srtp_tag_bytes', '?')} B tag)"


def _outbound(p: PhaseResult) -> str:
    out = p.relay.get("outbound", {})
    share = out.get("share_through_python")
    if share is None:
        return "-"
    return f"{out['through_python']:,} / {out['finished_in_c']:,} ({share:.1%} through Python)"


def _pacing(p: PhaseResult) -> str:
    w = p.workers
    if not w.get("pacing_frames"):
        return "-"
    return (
        f"{w['pacing_late_p50_ms']:.1f} / {w['pacing_late_p99_ms']:.1f} / {w['pacing_late_max_ms']:.1f} "
        f"({w['pacing_late_frames']:,} of {w['pacing_frames']:,})"
    )


def row_table(row: Row, config: RelayBenchConfig) -> Table:
    title = (
        f"{row.calls} calls x 50 packets/s each way; "
        f"{config.duration:g} s window after {config.warmup:g} s warm-up; {run_conditions(config)}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("relay", justify="right")
    table.add_column("baseline: bare uvloop UDP echo", justify="right")
    table.add_column("relay / baseline", justify="right")
    r, b = row.relay, row.baseline
    if row.error or r is None or b is None:
        table.add_row("error", row.error or "incomplete", "", "")
        return table
    ratios = row.ratios()
    table.add_row(
        "subject process CPU (% of its core)",
        f"{r.subject_cpu:.0f}%",
        f"{b.subject_cpu:.0f}%",
        _x(ratios["cpu"]),
    )
    table.add_row(
        "datagrams/s through it (in + out)",
        f"{r.offered_datagrams_per_s:,.0f}",
        f"{b.offered_datagrams_per_s:,.0f}",
        "",
    )
    table.add_row("packets lost / sent in the window", _loss(r), _loss(b), "")
    table.add_row("round trip p50 (ms)", _ms(r.rtt_ms["p50"]), _ms(b.rtt_ms["p50"]), _x(ratios["rtt_p50"]))
    table.add_row("round trip p99 (ms)", _ms(r.rtt_ms["p99"]), _ms(b.rtt_ms["p99"]), _x(ratios["rtt_p99"]))
    table.add_row("SRTP profile, calls that used it (by its tag)", _srtp(r), "-", "")
    table.add_row("inference AUDIO_OUT: through Python playout / finished in C", _outbound(r), "-", "")
    table.add_row(f"pacing: late past slot p50 / p99 / max ms (> {PACING_LATE_MS:g} ms)", _pacing(r), "-", "")
    table.add_row("in-relay dwell inbound p50 / p99 (ms)", _dwell(r, "in"), "-", "")
    table.add_row("in-relay dwell outbound p50 / p99 (ms)", _dwell(r, "out"), "-", "")
    shares = [r.relay[f"dwell_{d}"]["share_within_1ms"] for d in ("in", "out")]
    table.add_row(
        "dwell within 1 ms (in / out)", " / ".join("-" if s is None else f"{s:.3%}" for s in shares), "-", ""
    )
    table.add_row("datagrams per syscall: receive / send", per_syscall(r), per_syscall(b), "")
    table.add_row("load generator CPU (% of one core)", _load(r), _load(b), "")
    table.add_row(
        "load generator CPU per frame (us)", f"{r.load_us_per_frame:.1f}", f"{b.load_us_per_frame:.1f}", ""
    )
    table.add_row("echoes authenticated / sampled (payload matched)", _samples(r), "-", "")
    table.add_row(
        "subject core busy (of which irq+softirq)",
        f"{r.subject_core_busy:.0f}% ({r.subject_core_interrupts:.0f}%)",
        f"{b.subject_core_busy:.0f}% ({b.subject_core_interrupts:.0f}%)",
        _x(ratio(r.subject_core_busy, b.subject_core_busy)),
    )
    table.add_row(
        "load core(s) busy (of which irq+softirq)",
        f"{r.load_core_busy:.0f}% ({r.load_core_interrupts:.0f}%)",
        f"{b.load_core_busy:.0f}% ({b.load_core_interrupts:.0f}%)",
        "",
    )
    table.add_row(
        "other work on subject / load core(s); steal",
        f"{r.subject_core_others:.0f}% / {r.load_core_others:.0f}%; {r.steal:.0f}%",
        f"{b.subject_core_others:.0f}% / {b.load_core_others:.0f}%; {b.steal:.0f}%",
        "",
    )
    table.add_row("other processes (>= 1% of a core)", _others(r), _others(b), "")
    table.add_row(
        "send lateness in the window p99 / max (ms)",
        f"{r.lateness_p99_ms:.2f} / {r.lateness_max_ms:.1f}",
        f"{b.lateness_p99_ms:.2f} / {b.lateness_max_ms:.1f}",
        "",
    )
    table.add_row(
        "kernel UDP receive-buffer drops (machine)",
        f"{r.kernel_udp.get('RcvbufErrors', 0):,}",
        f"{b.kernel_udp.get('RcvbufErrors', 0):,}",
        "",
    )
    table.add_row("set-up: calls (flows) ready after (s)", f"{r.setup_s:.1f}", f"{b.setup_s:.1f}", "")
    table.add_row("status", _status(r), _status(b), "")
    return table


def summary_table(rows: Sequence[Row], config: RelayBenchConfig) -> Table:
    table = Table(
        title=f"Summary: relay vs bare uvloop UDP echo (same run, same core); {run_conditions(config)}",
        title_justify="left",
    )
    for name in (
        "calls", "CPU relay / echo (x)", "relay core busy", "lost relay / echo",
        "RTT p50 ms relay / echo (x)", "RTT p99 ms relay / echo (x)", "dwell p99 ms in / out",
        "dgrams/syscall rx / tx relay; echo", "load gen CPU (us/frame)", "status",
    ):  # fmt: skip
        table.add_column(name, justify="left" if name == "status" else "right")
    for row in rows:
        r, b = row.relay, row.baseline
        if row.error or r is None or b is None:
            table.add_row(str(row.calls), *["-"] * 8, f"error: {row.error}")
            continue
        x = row.ratios()
        table.add_row(
            str(row.calls),
            f"{r.subject_cpu:.0f}% / {b.subject_cpu:.0f}% ({_x(x['cpu'])})",
            f"{r.subject_core_busy:.0f}%",
            f"{r.loss:,} / {b.loss:,}",
            f"{_ms(r.rtt_ms['p50'])} / {_ms(b.rtt_ms['p50'])} ({_x(x['rtt_p50'])})",
            f"{_ms(r.rtt_ms['p99'])} / {_ms(b.rtt_ms['p99'])} ({_x(x['rtt_p99'])})",
            f"{_ms(r.relay['dwell_in']['p99_ms'])} / {_ms(r.relay['dwell_out']['p99_ms'])}",
            f"{per_syscall(r)}; {per_syscall(b)}",
            f"{r.load_cpu_total:.0f}% / {b.load_cpu_total:.0f}% ({r.load_us_per_frame:.0f})",
            "load-generator bound" if r.load_bound or b.load_bound else ("noisy" if r.noisy else "ok"),
        )
    return table


def zero_loss_calls(rows: Sequence[Row], which: str) -> int | None:
    """The most calls at which ``which`` ("relay" or an A/B variant) lost nothing, among the runs made."""
    carried = [
        row.calls
        for row in rows
        if (phase := row.phase(which)) is not None and not row.error and phase.loss == 0 and phase.sent
    ]
    return max(carried, default=None)


def per_syscall(p: PhaseResult) -> str:
    """'rx / tx' datagrams per receive and per send system call, or why there is no figure."""
    sc = p.syscalls
    if not sc:
        return "-"
    if "error" in sc:
        return "n/a"
    media = sc.get("media_port_per_recvmmsg")
    port = f" (media port {media:.1f} per recvmmsg)" if media else ""
    return f"{sc['datagrams_per_recv']:.2f} / {sc['datagrams_per_send']:.2f}{port}"


def ab_table(rows: Sequence[Row]) -> Table:
    """The A/B: native vs Python per-datagram path, each as a multiple of the same run's bare echo."""
    table = Table(
        title="A/B: the relay as deployed vs the --ab variants (same load, same baseline echo)",
        title_justify="left",
    )
    for name in (
        "calls", "path", "relay CPU", "x bare echo", "lost / sent", "dwell in p50 / p99 ms",
        "dwell out p50 / p99 ms", "RTT p99 ms", "datagrams / syscall rx / tx",
    ):  # fmt: skip
        table.add_column(name, justify="left" if name == "path" else "right")
    names = list(dict.fromkeys(name for row in rows for name in row.ab))
    for row in rows:
        b = row.baseline
        phases = [(row.path, row.relay)] + [
            (p.label if (p := row.ab.get(name)) is not None else name, p) for name in names
        ]
        for label, phase in phases:
            if row.error or phase is None or b is None:
                table.add_row(str(row.calls), label, *["-"] * 6, f"error: {row.error}")
                continue
            table.add_row(
                str(row.calls),
                label,
                f"{phase.subject_cpu:.0f}%",
                _x(ratio(phase.subject_cpu, b.subject_cpu)),
                f"{phase.loss:,} / {phase.sent:,}",
                _dwell(phase, "in"),
                _dwell(phase, "out"),
                _ms(phase.rtt_ms["p99"]),
                per_syscall(phase),
            )
    parts = [f"{rows[0].path if rows else 'relay'} {zero_loss_calls(rows, 'relay') or '-'}"]
    parts += [f"{name} {zero_loss_calls(rows, name) or '-'}" for name in names]
    table.caption = "calls at 0 loss (of those run): " + ", ".join(parts)
    return table


NOTES = (
    "With --agent burst the round trip includes the agent's hold (up to a second) and the relay's pacing: "
    "read loss, 'through Python playout' (frames C did not finish: bursts are paced in C unless --ab "
    "python-pace) and 'pacing' instead. Pacing: each echo's "
    "arrival against its slot on the relay's playout timeline (its RTP timestamp), relative to the talk "
    "spurt's first frame, as a caller's jitter buffer anchors it; negative = ahead of the slot.",
    "Round trip: caller send -> relay -> echo inference -> relay -> caller receive, timed by the load "
    "generator (so it includes any scheduling delay on the load core). Echoes are matched to their frame "
    "by length (each of the 50 frames has its own) without decrypting; one in 47 is unprotected with the "
    "call's SRTP session: 'authenticated' must equal 'sampled', and 'payload matched' says the length "
    "named the right frame. "
    "Baseline round trip: a caller-sized datagram through the echo, then a wire-sized one through it "
    "again: the same two crossings of the subject.",
    "Dwell: from the relay's splitrelay_dwell_in/out_seconds histograms, the difference between scrapes "
    "at the start and end of the window. Bucket bounds near the limit are 500, 600, 750, 1000, 1500 and "
    "2000 us, so p50/p99 are interpolated within a bucket; the 1 ms check uses the 1000 us bound exactly. "
    "Dwell starts at each datagram's kernel receive stamp (SO_TIMESTAMPNS), so time queued in the socket "
    "counts; --ab no-rx-stamps measures it from the read instead (the figure before 8b156ae).",
    "CPU: utime + stime from /proc/<pid>/stat over the window, in % of one core. Core busy comes from "
    "/proc/stat, sampled at the timer tick, which under-counts a mostly idle core (tickless idle): trust "
    "it near saturation, where it matters. 'Other work' is core busy minus our pinned processes and "
    "interrupts: someone else's processes, short-lived ones included.",
)


def profile_table(calls: int, phase: PhaseResult) -> Table | str:
    """Where phase 1's relay CPU went (``--profile``): each category's share of the samples and of a core,
    with its busiest symbols; or why there is no profile."""
    profile = phase.profile
    if "error" in profile:
        return f"[yellow]profile at {calls} calls: none ({profile['error']})[/]"
    table = Table(
        title=f"Where the relay's CPU went at {calls} calls (perf record over the window, "
        f"{profile['samples']:,} samples; the relay CPU above includes perf's own sampling)",
        title_justify="left",
    )
    for column, justify in (("where", "left"), ("share", "right"), ("% of a core", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("busiest symbols in it (share of all samples)")
    tops: dict[str, list[str]] = {}
    for entry in profile["top"]:
        tops.setdefault(category(entry["dso"]), []).append(f"{entry['symbol']} {entry['percent']:.1f}%")
    for name, share in profile["shares"].items():
        core = phase.subject_cpu * share / 100
        table.add_row(name, f"{share:.1f}%", f"{core:.1f}%", ", ".join(tops.get(name, [])[:3]))
    return table


def report(
    rows: Sequence[Row], config: RelayBenchConfig, info: dict[str, Any], cores: dict[str, Any]
) -> dict[str, Any]:
    return {
        "command": config.command(),
        "machine": info,
        "config": {**asdict(config), **cores},
        "results": [row.as_dict() for row in rows],
        "floor": verdict(pick_row(rows, FLOOR_CALLS), FLOOR_CALLS),
        "goal": verdict(pick_row(rows, GOAL_CALLS), GOAL_CALLS),
        "projection": projection(rows),
        "zero_loss_calls": {
            "default_path": zero_loss_calls(rows, "relay"),
            **{name: zero_loss_calls(rows, name) for name in config.ab},
        },
        "notes": list(NOTES),
    }


def _verdict_line(name: str, v: dict[str, Any]) -> str:
    colour = {"PASS": "green", "FAIL": "red"}.get(v["status"], "yellow")
    reasons = f": {'; '.join(v['reasons'])}" if v["reasons"] else ""
    at = f" (run at {v['calls']} calls)" if "calls" in v else ""
    return f"{name} [{v['target']}]{at}: [bold {colour}]{v['status']}[/]{reasons}"


# --- entry point ------------------------------------------------------------------------------------


async def run_async(config: RelayBenchConfig, console: Console) -> dict[str, Any]:
    """Run every N in turn; print a table per N and a summary; return the machine-readable report."""
    relay_cores, load_cores = split_cores(config.relay_core)
    load_procs = config.load_procs or len(load_cores)
    info = machine_info(event_loop="uvloop (relay, echo servers, load workers); asyncio (the bench itself)")
    console.print(f"[bold]machine[/]: {machine_line(info)}")
    console.print(
        f"relay pinned to core(s) {sorted(relay_cores)}; load generator ({load_procs} worker process(es) + "
        f"echo inference) on core(s) {sorted(load_cores)}"
    )
    original = os.sched_getaffinity(0)
    rows: list[Row] = []
    os.sched_setaffinity(0, load_cores)  # the bench itself stays off the relay's core
    try:
        with tempfile.TemporaryDirectory(prefix="splitrelay-bench-") as tmp:
            ctx = Context(
                config, console, Path(tmp), secrets.token_urlsafe(32), relay_cores, load_cores, load_procs
            )
            for n in config.calls:
                row = await bench_one(ctx, n)
                rows.append(row)
                console.print(row_table(row, config))
                if row.relay is not None and row.relay.profile:
                    console.print(profile_table(row.calls, row.relay))
    finally:
        os.sched_setaffinity(0, original)
    cores = {
        "relay_cores": sorted(relay_cores),
        "load_cores": sorted(load_cores),
        "load_procs_used": load_procs,
    }
    result = report(rows, config, info, cores)
    console.print(summary_table(rows, config))
    console.print(ab_table(rows))
    for note in NOTES:
        console.print(f"[dim]{note}[/]")
    console.print(_verdict_line("Floor", result["floor"]))
    console.print(_verdict_line("Goal", result["goal"]))
    fit = result["projection"]
    if fit is not None:
        console.print(
            f"Projection, not a measurement: a line through the relay's CPU at {fit['from_calls']} calls "
            f"({fit['fixed_cpu_pct']:.1f}% + {fit['cpu_per_call_pct']:.3f}% per call) reaches 100% of a core "
            f"at about {fit['calls_at_100pct']} calls."
        )
    return result


def run(config: RelayBenchConfig, *, json_output: bool = False) -> int:
    """Run the benchmark; 0 when every N ran (whatever the verdict), 1 when one could not run, 2 when
    the run was refused before anything started."""
    console = Console(stderr=json_output)
    if not console.is_terminal:
        console.width = 160  # logs and CI: rich would otherwise wrap the tables at 80 columns
    try:  # the checks that need the machine, before anything starts
        _, load_cores = split_cores(config.relay_core)
        check_prepared(config, config.load_procs or len(load_cores))
    except ValueError as exc:
        console.print(f"[red]error[/]: {exc}")
        return 2
    result = asyncio.run(run_async(config, console))
    if json_output:
        print(json.dumps(result, indent=2))
    return 0 if all(r["error"] is None for r in result["results"]) else 1
