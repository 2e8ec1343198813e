"""CPU per call of the Pipecat path, as a share of one core: a benchmark, and a smoke test that keeps it so.

The agent is `splitrelay agent pipecat splitrelay.integrations.pipecat_parrot:factory` in its own process
(uvloop; per call: Opus decode to 16 kHz with concealment, Silero VAD on onnxruntime, Pipecat's frame
processing, the parrot's reply resampled to 48 kHz and Opus-encoded, the wire). This process plays the
relay with the relay's own link (RelayLink) and N callers, each looping the espeak-ng utterance
(scripts/devtools/assets/utterance.wav, 3.25 s) and 4.5 s of silence in real time, their cycles
staggered; every utterance gets a full reply (about 3.5 s), so the encoder runs about half the time.
The agent's CPU (utime + stime, all threads) is read from /proc over the measured window; "per call" is
above the same agent idle. A second table times the three codec/VAD stages alone, in this process.

    flock /tmp/splitrelay-bench.lock .venv/bin/python -m tests.integration.test_pipecat_bench \\
        --calls 1,10 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitrelay.bench.support import machine_info, machine_line, process_cpu_seconds
from splitrelay.devtools.utterance import load_utterance, read_pcm
from splitrelay.inference import wire
from splitrelay.inference.audio import AgentAudioEncoder, CallerAudioDecoder
from splitrelay.relay.inference_link import RelayLink
from tests.recording_sink import RecordingSink

REPO = Path(__file__).resolve().parents[2]
F = 960
TICK_S = 0.02
SILENCE_MS = 4500
SILENCE_LEVEL = 127
FACTORY = "splitrelay.integrations.pipecat_parrot:factory"


@dataclass(frozen=True)
class Run:
    calls: int
    seconds: float
    cpu_share: float  # of one core, over the measured window
    frames_out_per_s: float  # AUDIO_OUT frames the callers got back, per second, all calls
    replies: int  # parrot replies in the window
    late_ticks: int  # driver ticks more than 10 ms late (the load generator fell behind)


async def start_agent(max_calls: int) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "splitrelay.cli", "agent", "pipecat", FACTORY,
        "--listen", "127.0.0.1:0", "--max-calls", str(max(1, max_calls)),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        line = (await proc.stdout.readline()).decode()
    match = re.search(r"listening on udp://127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"the agent did not start: {line!r}")
    return proc, int(match.group(1))


async def stop_agent(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(20):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def measure(calls: int, seconds: float, warmup: float) -> Run:
    """N looping callers against a fresh agent; the agent's CPU over ``seconds`` after ``warmup``."""
    utterance = load_utterance()
    cycle = list(utterance.frames) + [utterance.silence_frame] * (SILENCE_MS // 20)
    levels = list(utterance.levels) + [SILENCE_LEVEL] * (SILENCE_MS // 20)
    proc, port = await start_agent(calls)
    try:
        async with RelayLink(("127.0.0.1", port)) as link:
            sinks = [RecordingSink() for _ in range(calls)]
            ids = [await link.start_call(f"bench-{i}", sink) for i, sink in enumerate(sinks)]
            offsets = [i * len(cycle) // max(1, calls) for i in range(calls)]
            loop = asyncio.get_running_loop()
            start = loop.time()
            total_ticks = round((warmup + seconds) / TICK_S)
            warm_ticks = round(warmup / TICK_S)
            late = 0
            cpu0 = t0 = 0.0
            out0 = replies0 = 0
            for tick in range(total_ticks):  # bounded: warmup + seconds of 20 ms ticks
                if tick == warm_ticks:
                    cpu0, t0 = process_cpu_seconds(proc.pid), time.perf_counter()
                    out0 = sum(len(s.audio) for s in sinks)
                    replies0 = sum(1 for s in sinks for e in s.events if e["type"] == "parrot.reply")
                for call_id, offset in zip(ids, offsets, strict=True):
                    k = (offset + tick) % len(cycle)
                    flags = wire.audio_in_flags(marker=tick == 0, level=levels[k])
                    link.send_audio_in(call_id, tick, tick * F, cycle[k], flags)
                delay = start + (tick + 1) * TICK_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.01:
                    late += 1
            cpu1, t1 = process_cpu_seconds(proc.pid), time.perf_counter()
            out1 = sum(len(s.audio) for s in sinks)
            replies1 = sum(1 for s in sinks for e in s.events if e["type"] == "parrot.reply")
            for call_id in ids:
                await link.end_call(call_id)
    finally:
        await stop_agent(proc)
    elapsed = t1 - t0
    return Run(calls, elapsed, (cpu1 - cpu0) / elapsed, (out1 - out0) / elapsed, replies1 - replies0, late)


@dataclass(frozen=True)
class Stage:
    name: str
    us_per_20ms: float


def time_stages(repeat: int = 3) -> list[Stage]:
    """The codec and VAD stages alone, per 20 ms of one call's audio (best of ``repeat`` passes)."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer

    utterance = load_utterance()
    frames = list(utterance.frames)
    pcm16 = b"".join(c.pcm for i, f in enumerate(frames) for c in CallerAudioDecoder(16_000).push(i, f))
    best: dict[str, float] = {}
    for _ in range(repeat):  # bounded
        decoder = CallerAudioDecoder(16_000)
        t = time.perf_counter()
        decoded = [c.pcm for i, f in enumerate(frames) for c in decoder.push(i, f)]
        decode = (time.perf_counter() - t) / len(frames)
        vad = SileroVADAnalyzer()
        vad.set_sample_rate(16_000)
        windows = [pcm16[i : i + 1024] for i in range(0, len(pcm16) - 1024, 1024)]  # 512 samples: 32 ms
        t = time.perf_counter()
        for window in windows:
            vad.voice_confidence(window)
        silero = (time.perf_counter() - t) / len(windows) * 20 / 32
        encoder = AgentAudioEncoder(16_000)
        t = time.perf_counter()
        for chunk in decoded:
            encoder.push(chunk)
        encode = (time.perf_counter() - t) / len(decoded)
        for name, value in (("decode", decode), ("silero", silero), ("encode", encode)):
            best[name] = min(best.get(name, value), value)
    labels = {
        "decode": "Opus decode to 16 kHz (libopus, with the concealment bookkeeping)",
        "silero": "Silero VAD on onnxruntime (512 samples per 32 ms, scaled to 20 ms)",
        "encode": "16 kHz PCM resampled to 48 kHz (soxr HQ) and Opus-encoded (32 kbit/s, FEC)",
    }
    return [Stage(labels[name], best[name] * 1e6) for name in ("decode", "silero", "encode")]


def check_utterance_is_speech() -> None:
    pcm = read_pcm(REPO / "scripts" / "devtools" / "assets" / "utterance.wav")
    assert np.abs(pcm).max() > 3000


async def bench(call_counts: list[int], seconds: float, warmup: float) -> list[Run]:
    runs = [await measure(0, seconds, warmup)]
    for calls in call_counts:
        runs.append(await measure(calls, seconds, warmup))
    return runs


def table(runs: list[Run], stages: list[Stage]) -> str:
    idle = runs[0].cpu_share
    lines = [
        "| calls | agent CPU (share of one core) | per call, above idle | replies in window "
        "| frames back per s | driver ticks late |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        per_call = "" if run.calls == 0 else f"{(run.cpu_share - idle) / run.calls:.1%}"
        lines.append(
            f"| {run.calls or 'idle'} | {run.cpu_share:.1%} | {per_call} | {run.replies} "
            f"| {run.frames_out_per_s:.0f} | {run.late_ticks} |"
        )
    lines += ["", "| stage | µs per 20 ms of one call | share of one core per call |", "|---|---|---|"]
    for stage in stages:
        lines.append(f"| {stage.name} | {stage.us_per_20ms:.0f} | {stage.us_per_20ms / 20_000:.2%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="1,10", help="comma-separated concurrent call counts")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per run (5..600)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (0..60)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.calls.split(",")]
    if not all(1 <= c <= 200 for c in counts) or not 5 <= args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--calls 1..200 each, --seconds 5..600, --warmup 0..60")
    check_utterance_is_speech()
    packages = ("pipecat-ai", "onnxruntime", "opuslib-next", "soxr", "uvloop")
    print(machine_line(machine_info(packages)))
    runs = asyncio.run(bench(counts, args.seconds, args.warmup))
    print(table(runs, time_stages()))


async def test_the_benchmark_measures_a_pipecat_agent() -> None:
    run = await measure(1, seconds=5, warmup=1)  # the first reply starts about 3.9 s in
    assert run.calls == 1 and 0.0 < run.cpu_share < 2.0
    assert run.replies == 1 and run.frames_out_per_s > 5
    stages = time_stages(repeat=1)
    assert [s.us_per_20ms > 0 for s in stages] == [True] * 3
    assert "| idle |" in table([Run(0, 5, 0.01, 0, 0, 0), run], stages)


if __name__ == "__main__":
    main()
