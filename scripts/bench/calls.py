"""`splitrelay bench calls`: N calls per configuration through two local stacks, A against B.

Each configuration gets its own stack (scripts/devtools/stack.py: emulator, agent, relay, edge as child
processes, stopped by PID), so the two never share state. The calls are the headless caller's
(scripts/devtools/call.py), ``concurrency`` at a time, in alternating blocks A B B A A B ...: slow drifts of
a shared machine (other jobs, thermal) hit both sides alike, while within a block a side runs at
its own concurrency alone, so its latencies are not the other side's load. Calls in a block start
spread over one call's length, so set-ups do not pile up at the block's start.

After the calls each stack must give everything back (scripts/bench/calls_leaks.py); a failed call,
a leak or an unclean stop makes the exit code 1. Per-call results go to ``calls.jsonl`` as they
finish; failures keep their reason and are never retried.

Exit codes: 0 all calls ok and nothing leaked; 1 a call failed, something leaked, a stack failed or
the run was interrupted; 2 bad input; 3 impairment (``--netem`` / ``--netns``) was asked for but is
not possible here (one line says why): nothing was run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Final

import typer

from splitrelay.bench.calls_config import BenchCallsConfig, Variant, parse_variant
from splitrelay.devtools.netem import NetemUnavailable, parse_netem
from splitrelay.relay.media.impair import ImpairmentError, parse_impairment

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from splitrelay.bench.calls_leaks import LeakReport, ProcessSockets, StackWatch
    from splitrelay.bench.calls_stats import CallResult
    from splitrelay.devtools.budget import CallReport
    from splitrelay.devtools.stack import Stack, StackInfo
    from splitrelay.devtools.utterance import Utterance

RESULTS_FILE: Final = "calls.jsonl"
SUMMARY_FILE: Final = "summary.json"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_UNAVAILABLE: Final = 3
EVENT_LOOP: Final = "uvloop (relay, emulator, echo agent); asyncio (edge, callers, the harness)"
# Config fields whose option is not simply --field-name.
OPTIONS: Final = {
    "reply_timeout_s": "--reply-timeout",
    "settle_timeout_s": "--settle-timeout",
    "out_dir": "--out",
}
SETUP_ALLOWANCE_S: Final = 1.5  # set-up, endpointing and hang-up around a turn: sizes the start spread


class Interrupted(Exception):
    """SIGINT or SIGTERM during the run."""


class ResultsFile:
    """``calls.jsonl``: one line per call, flushed as each call ends (a crash keeps what was done)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: IO[str] = open(path, "x", encoding="utf-8")

    def write(self, result: CallResult) -> None:
        self._out.write(json.dumps(result.to_json()) + "\n")
        self._out.flush()

    def close(self) -> None:
        self._out.close()


class Side:
    """One configuration during the run: its stack, its results, its CPU and its progress row."""

    def __init__(self, variant: Variant, stack: Stack, progress_task: TaskID) -> None:
        self.variant = variant
        self.stack = stack
        self.task = progress_task
        self.info: StackInfo | None = None
        self.watch: StackWatch | None = None
        self.results: list[CallResult] = []
        self.stack_cpu_s = 0.0
        self.caller_cpu_s = 0.0
        self.seq = 0

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    def stack_cpu_now(self) -> float:
        """CPU seconds used so far by this stack's processes (a gone process counts as 0 from then on)."""
        from splitrelay.bench.support import BenchError, process_cpu_seconds

        total = 0.0
        for pid in self.info.pids.values() if self.info else ():
            with contextlib.suppress(BenchError):
                total += process_cpu_seconds(pid)
        return total


class Bench:
    """One run: both stacks up, warm-up, the blocks, the leak checks, both stacks down."""

    def __init__(
        self,
        config: BenchCallsConfig,
        utterance: Utterance,
        out_dir: Path,
        progress: Progress,
    ) -> None:
        from splitrelay.devtools.call import CallOptions
        from splitrelay.devtools.stack import Stack, StackConfig

        self.config = config
        self.utterance = utterance
        self.out_dir = out_dir
        self.progress = progress
        utterance_s = utterance.duration_ms / 1000
        # The echo agent replies with the utterance itself: a reply much longer is a fault, so cap it.
        self.options = CallOptions(
            reply_timeout_s=config.reply_timeout_s, max_reply_s=min(600.0, utterance_s + 5.0)
        )
        # Configuration A's callers impair their own leg when asked (and its relays theirs, with
        # --impair-relay); B's stay clean (the baseline).
        lossy = config.impair_relay is not None
        self.options_by_label = {
            "a": replace(self.options, impair=config.impair, lossy_path=lossy),
            "b": self.options,
        }
        o = self.options
        self.call_timeout_s = (
            2 * o.connect_timeout_s
            + config.turns * (utterance_s + o.reply_timeout_s + o.max_reply_s + o.reply_gap_s + 1.0)
            + 30.0
        )
        self.call_estimate_s = config.turns * (2 * utterance_s + SETUP_ALLOWANCE_S)
        self.results_file = ResultsFile(out_dir / RESULTS_FILE)
        self.sides: dict[str, Side] = {}
        for variant in config.variants:
            stack = Stack(
                StackConfig(
                    mode=variant.mode,
                    run_dir=out_dir / f"{variant.label}-stack",
                    silence_ms=variant.silence_ms,
                    shared_sfu_socket=variant.shared_sfu_socket,
                    relay_impair=(
                        config.impair_relay.describe()
                        if config.impair_relay is not None and variant.label == "a"
                        else None
                    ),
                )
            )
            total = config.warmup + config.calls
            task = progress.add_task(self._describe(variant, 0), total=total)
            self.sides[variant.label] = Side(variant, stack, task)
        self.caller: ProcessSockets | None = None
        self.t0 = time.perf_counter()

    @staticmethod
    def _describe(variant: Variant, failed: int) -> str:
        text = f"{variant.label.upper()} {variant.spec}"
        return text + (f" [red]{failed} failed[/]" if failed else "")

    async def run(self) -> dict[str, Any]:
        """The whole run; the stacks are stopped whatever happens (Ctrl-C included)."""
        from splitrelay.devtools.stack import StopReport

        stops: dict[str, StopReport] = {}
        leaks: dict[str, LeakReport] = {}
        caller: dict[str, Any] = {}
        try:
            await self._start()
            await self._warmup()
            for index, (label, size) in enumerate(self.config.schedule()):
                await self._block(self.sides[label], size, index)
            leaks = await self._settle()
            caller = self._caller_sockets()
        finally:
            for label, side in self.sides.items():
                stops[label] = await side.stack.stop()
            self.results_file.close()
        return self._document(leaks, stops, caller)

    async def _start(self) -> None:
        from splitrelay.bench.calls_leaks import ProcessSockets, StackWatch

        for side in self.sides.values():
            side.info = await side.stack.start()
            side.watch = StackWatch(side.info)
            side.watch.take_baseline()
        self.caller = ProcessSockets("caller", os.getpid())
        self.caller.take_baseline()

    async def _warmup(self) -> None:
        """Both sides at once (their numbers are not used): one call after another on each side."""

        async def one_side(side: Side) -> None:
            for _ in range(self.config.warmup):
                await self._call(side, block=-1, warmup=True)

        await asyncio.gather(*(one_side(side) for side in self.sides.values()))

    async def _block(self, side: Side, size: int, index: int) -> None:
        """``size`` calls of one side, ``concurrency`` at a time, first starts spread over one call."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(size):
            queue.put_nowait(n)
        workers = min(self.config.concurrency, size)
        spread = self.call_estimate_s / workers

        async def worker(k: int) -> None:
            await asyncio.sleep(k * spread)
            for _ in range(size):  # bounded: each pass takes one call off the queue
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self._call(side, block=index, warmup=False)

        cpu_before, caller_before = side.stack_cpu_now(), time.process_time()
        await asyncio.gather(*(worker(k) for k in range(workers)))
        side.stack_cpu_s += side.stack_cpu_now() - cpu_before
        side.caller_cpu_s += time.process_time() - caller_before

    async def _call(self, side: Side, *, block: int, warmup: bool) -> None:
        """One call; its outcome (with the reason when it failed) goes to the results, never retried."""
        from splitrelay.bench.calls_stats import CallResult
        from splitrelay.devtools.dev import call_stack

        assert side.info is not None
        side.seq += 1
        seq, label = side.seq, side.variant.label
        started = time.perf_counter()
        report: CallReport | None = None
        error = "no report"
        try:
            async with asyncio.timeout(self.call_timeout_s):
                options = self.options_by_label[label]
                report = await call_stack(side.info, self.utterance, self.config.turns, options)
        except TimeoutError:
            error = f"the call took over {self.call_timeout_s:.0f} s (the harness's bound per call)"
        except Exception as exc:  # any failure is this call's result, recorded with its reason
            error = f"{type(exc).__name__}: {exc}"
        started_s, wall_ms = started - self.t0, (time.perf_counter() - started) * 1000
        if report is None:
            result = CallResult.failed(
                error, config=label, seq=seq, block=block, warmup=warmup, started_s=started_s, wall_ms=wall_ms
            )
        else:
            result = CallResult.from_report(
                report,
                config=label,
                seq=seq,
                block=block,
                warmup=warmup,
                started_s=started_s,
                wall_ms=wall_ms,
            )
        side.results.append(result)
        self.results_file.write(result)
        self.progress.update(side.task, advance=1, description=self._describe(side.variant, side.failed))

    async def _settle(self) -> dict[str, LeakReport]:
        """Both stacks at once: wait (bounded) until each has closed every call, session and socket."""
        labels = list(self.sides)
        watches = [self.sides[label].watch for label in labels]
        reports = await asyncio.gather(
            *(w.settle(self.config.settle_timeout_s) for w in watches if w is not None)
        )
        return dict(zip(labels, reports, strict=True))

    def _caller_sockets(self) -> dict[str, Any]:
        assert self.caller is not None
        now, leaked = self.caller.check()
        return {"baseline": self.caller.baseline, "now": now, "leaked": leaked}

    def _document(
        self, leaks: dict[str, LeakReport], stops: dict[str, Any], caller: dict[str, Any]
    ) -> dict[str, Any]:
        """The result document: what --json prints, summary.json holds and the table shows."""
        from splitrelay.bench.calls_stats import ratios, summarize
        from splitrelay.bench.support import machine_info, machine_line

        c = self.config
        configs: dict[str, Any] = {}
        problems: list[str] = []
        for label, side in self.sides.items():
            summary = summarize(side.results)
            measured = max(1, summary["calls"])
            leak = leaks[label]
            stop = stops[label]
            stack = side.info.public() if side.info is not None else {}
            stack.pop("page", None)  # the page link carries a caller token in its fragment
            variant = side.variant.to_json()
            if variant["sfu_socket"] == "shared" and c.impair_relay is not None and label == "a":
                # StackConfig: an impaired relay leg cannot tell calls sharing an address apart
                variant["sfu_socket_effective"] = "per-session"
            configs[label] = {
                "variant": variant,
                "summary": summary,
                "cpu": {
                    "stack_ms_per_call": side.stack_cpu_s * 1000 / measured,
                    "caller_ms_per_call": side.caller_cpu_s * 1000 / measured,
                },
                "leaks": leak.to_json(),
                "stack": stack,
                "stop": {
                    "clean": stop.clean,
                    "exit_codes": stop.exit_codes,
                    "killed": stop.killed,
                    "leftovers": stop.leftovers,
                },
            }
            name = label.upper()
            if summary["failed"]:
                problems.append(f"{name}: {summary['failed']} failed call(s)")
            if not leak.ok:
                problems.append(f"{name}: left open after {leak.settle_s:.0f} s")
            if not stop.clean:
                problems.append(f"{name}: the stack did not stop cleanly")
        if caller["leaked"]:
            problems.append(f"caller: sockets beyond the baseline {caller['leaked']}")
        info = machine_info(event_loop=EVENT_LOOP)
        order = " ".join(label.upper() for label, _ in c.schedule()[:6])
        return {
            "ok": not problems,
            "verdict": "; ".join(problems) or "every call succeeded; nothing left open",
            "started_at": datetime.fromtimestamp(
                time.time() - (time.perf_counter() - self.t0), UTC
            ).isoformat(),
            "wall_s": time.perf_counter() - self.t0,
            "machine": info,
            "machine_line": machine_line(info),
            "settings": {
                "calls": c.calls,
                "concurrency": c.concurrency,
                "block": c.block,
                "warmup": c.warmup,
                "turns": c.turns,
                "utterance": {"name": self.utterance.name, "ms": self.utterance.duration_ms},
                "reply_timeout_s": c.reply_timeout_s,
                "call_timeout_s": round(self.call_timeout_s, 1),
                "order": order + (" ..." if len(c.schedule()) > 6 else ""),
                "namespace": c.in_namespace,
                "netem": None if c.netem is None else {"spec": c.netem.text, "args": list(c.netem.args)},
                "impair": None
                if c.impair is None
                else {
                    "spec": c.impair.describe(),
                    "engine": "userspace",
                    "where": "configuration a's caller legs",
                },
                "impair_relay": None
                if c.impair_relay is None
                else {
                    "spec": c.impair_relay.describe(),
                    "engine": "userspace",
                    "where": "configuration a's relay legs (SFU-relay, or caller-relay in direct mode)",
                },
            },
            "configs": configs,
            "ratio_a_over_b": ratios(configs["a"]["summary"], configs["b"]["summary"]),
            "caller_sockets": caller,
            "out_dir": str(self.out_dir),
            "results_file": str(self.out_dir / RESULTS_FILE),
            "plot": None,
        }


# --- the command ------------------------------------------------------------------------------------


def _voice_to_voice(out_dir: Path) -> dict[str, list[float]]:
    """Every measured turn's voice-to-voice per side, read back from calls.jsonl (what the plot shows)."""
    values: dict[str, list[float]] = {"a": [], "b": []}
    with open(out_dir / RESULTS_FILE, encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if row["ok"] and not row["warmup"]:
                values[row["config"]] += [v for v in row["voice_to_voice_ms"] if v is not None]
    return values


async def _until_signal(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``work``; SIGINT or SIGTERM cancels it (its finally blocks stop the stacks) → Interrupted."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise Interrupted
    finally:
        stopper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _out_dir(path: Path | None) -> Path:
    if path is None:
        return Path(tempfile.mkdtemp(prefix="splitrelay-bench-calls-"))
    if (path / RESULTS_FILE).exists():
        raise typer.BadParameter(f"--out: {path} already holds {RESULTS_FILE} from another run")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"--out: cannot create {path} ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK):
        raise typer.BadParameter(f"--out: {path} is not writable")
    return path


def _config(**values: Any) -> BenchCallsConfig:
    """Options → a checked config; every error becomes a usage error naming the option."""
    try:
        a = parse_variant(values.pop("a"), "a")
        b = parse_variant(values.pop("b"), "b")
        netem_text = values.pop("netem")
        netem = parse_netem(netem_text) if netem_text is not None else None
        impair_text = values.pop("impair", None)
        try:
            impair = parse_impairment(impair_text) if impair_text is not None else None
        except ImpairmentError as exc:
            raise ValueError(f"--impair: {exc}") from None
        relay_text = values.pop("impair_relay", None)
        try:
            impair_relay = parse_impairment(relay_text) if relay_text is not None else None
        except ImpairmentError as exc:
            raise ValueError(f"--impair-relay: {exc}") from None
        return BenchCallsConfig(a=a, b=b, netem=netem, impair=impair, impair_relay=impair_relay, **values)
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        option = name if name.startswith("--") else OPTIONS.get(name, f"--{name.replace('_', '-')}")
        raise typer.BadParameter(f"{option}:{rest}") from None


def _utterance(path: Path | None) -> Utterance:
    from splitrelay.devtools.utterance import DEFAULT_UTTERANCE, UtteranceError, load_utterance

    try:
        return load_utterance(path or DEFAULT_UTTERANCE)
    except UtteranceError as exc:
        raise typer.BadParameter(f"--utterance: {exc}") from None


def calls_command(
    a: Annotated[
        str,
        typer.Option(
            "--a",
            help="Configuration A: sfu, direct, or KEY=VALUE[,KEY=VALUE] (mode, silence, "
            "sfu_socket=shared|per-session: the SFU emulator's sessions on one UDP socket, the default, "
            "or a socket each).",
        ),
    ] = "sfu",
    b: Annotated[
        str,
        typer.Option(
            "--b",
            help="Configuration B, same syntax "
            "(e.g. mode=sfu,silence=300 or mode=sfu,sfu_socket=per-session).",
        ),
    ] = "direct",
    calls: Annotated[int, typer.Option(help="Measured calls per configuration (1..100000).")] = 1000,
    concurrency: Annotated[int, typer.Option(help="Calls in flight at once within a block (1..64).")] = 8,
    block: Annotated[
        int, typer.Option(help="Calls per block; blocks alternate A B B A ... (at least the concurrency).")
    ] = 100,
    warmup: Annotated[int, typer.Option(help="Unmeasured calls per configuration first (0..10).")] = 1,
    turns: Annotated[int, typer.Option(help="Turns per call (1..50).")] = 1,
    utterance: Annotated[
        Path | None,
        typer.Option(
            help="48 kHz mono 16-bit WAV to speak (default: scripts/devtools/assets/utterance.wav)."
        ),
    ] = None,
    reply_timeout: Annotated[
        float, typer.Option(help="Seconds the agent has to start replying after the last speech frame.")
    ] = 10.0,
    settle_timeout: Annotated[
        float, typer.Option(help="Seconds the stacks get to close everything after the calls (1..600).")
    ] = 60.0,
    netem: Annotated[
        str | None,
        typer.Option(
            help="Impair every loopback hop with netem, e.g. 'loss 2% delay 40ms 10ms' (needs root)."
        ),
    ] = None,
    impair: Annotated[
        str | None,
        typer.Option(
            help="Impair configuration A's caller media in userspace (B stays the clean baseline), e.g. "
            "loss=2%,jitter=30ms: for kernels without netem."
        ),
    ] = None,
    impair_relay: Annotated[
        str | None,
        typer.Option(
            help="Impair configuration A's relay leg (SFU↔relay) both ways in userspace, same syntax; "
            "with --impair, both legs at once."
        ),
    ] = None,
    netns: Annotated[
        bool, typer.Option("--netns", help="Run in a fresh network namespace (implied by --netem).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Directory for calls.jsonl, summary.json and the stacks' logs.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a voice-to-voice histogram (.png or .svg).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result document as JSON (progress goes to stderr).")
    ] = False,
) -> None:
    """N calls per configuration through two local stacks (A vs B): latency percentiles, failures, leaks."""
    from rich.console import Console

    config = _config(
        a=a,
        b=b,
        netem=netem,
        impair=impair,
        impair_relay=impair_relay,
        calls=calls,
        concurrency=concurrency,
        block=block,
        warmup=warmup,
        turns=turns,
        reply_timeout_s=reply_timeout,
        settle_timeout_s=settle_timeout,
        netns=netns,
        plot=plot,
        out_dir=out,
    )
    console = Console(stderr=json_output, highlight=False)
    spoken = _utterance(utterance)
    out_dir = _out_dir(out)
    if config.in_namespace:
        _isolate(config, console, json_output)
    raise typer.Exit(_run(config, spoken, out_dir, console, json_output))


def _isolate(config: BenchCallsConfig, console: Console, json_output: bool) -> None:
    """Enter the namespace (and apply netem) before any child starts; exit 3 with one line if impossible."""
    from splitrelay.devtools.netem import apply_netem, enter_namespace

    try:
        enter_namespace()
        qdisc = apply_netem(config.netem) if config.netem is not None else None
    except NetemUnavailable as exc:
        message = f"impairment not possible here, nothing run: {exc}"
        if json_output:
            print(
                json.dumps({"ok": False, "skipped": True, "reason": str(exc), "exit_code": EXIT_UNAVAILABLE})
            )
        console.print(f"[yellow]skipped[/]: {message}", soft_wrap=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    if qdisc is not None:
        console.print(f"netem on lo (own network namespace): {qdisc}", soft_wrap=True)


def _run(
    config: BenchCallsConfig, spoken: Utterance, out_dir: Path, console: Console, json_output: bool
) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from splitrelay.bench.calls_table import render
    from splitrelay.devtools.stack import StackError

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    try:
        with progress:
            bench = Bench(config, spoken, out_dir, progress)
            doc = asyncio.run(_until_signal(bench.run()))
    except Interrupted:
        console.print(
            f"[red]interrupted[/]: stacks stopped; the calls made so far are in {out_dir / RESULTS_FILE}"
        )
        return EXIT_FAILED
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        return EXIT_FAILED
    if config.plot is not None:
        from splitrelay.bench.calls_plot import write_histogram

        series = _voice_to_voice(out_dir)
        if any(series.values()):
            a, b = doc["configs"]["a"]["variant"]["spec"], doc["configs"]["b"]["variant"]["spec"]
            title = (
                f"voice-to-voice, {config.calls} calls per configuration, concurrency {config.concurrency}"
            )
            write_histogram(config.plot, [(f"A {a}", series["a"]), (f"B {b}", series["b"])], title)
            doc["plot"] = str(config.plot)
        else:
            console.print("[yellow]no plot[/]: no call measured a voice-to-voice latency")
    doc["exit_code"] = EXIT_OK if doc["ok"] else EXIT_FAILED
    (out_dir / SUMMARY_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    if json_output:
        print(json.dumps(doc))
    else:
        render(doc, console)
    return int(doc["exit_code"])
