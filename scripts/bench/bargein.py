"""`splitrelay bench bargein`: barge-in quality on recorded speech and non-speech sounds (issue 18).

The recordings come from Debian packages the project did not make: alsa-utils (/usr/share/sounds/alsa: a
human voice naming speaker channels, and a noise clip) and sound-theme-freedesktop
(/usr/share/sounds/freedesktop/stereo: the voice clips audio-channel-*, and everyday desktop sounds:
bells, a camera shutter, paper crumpled into a bin, phone tones, alarms). Each clip is played into the
caller while the agent speaks: 400 ms of silence, the clip scaled to a level, 600 ms of silence, as
20 ms Opus frames with RFC 6464 levels, exactly what a browser sends.

Two detectors decide on the same frames in the same run, on the media clock (network and loop delays
excluded: add half the relay-inference RTT to the confirmation times):

- **level only** (today, ``barge_in_confirm_ms=0``): the first packet at -40 dBov or above after silence
  flushes the response;
- **pause + confirm** (``barge_in_confirm_ms``): the first packet at -50 dBov or above after silence
  (``barge_in_candidate_dbov``: a pause is cheap, a reject resumes) pauses playout; the SDK's ``VadConfirmer``
  (Silero VAD) sees the caller's frames and the candidate right after that packet and answers; without
  an answer within the window the relay's default policy decides (``barge_in_sustain_ms`` of speech by
  level). A reject lets a later onset (after a silent packet) raise a new candidate.

A speech clip is *missed* when nothing confirms it; a non-speech clip is a *false interruption* when
something confirms it. Times count from the arrival of the first packet at -50 dBov or above (onset).

``--noise`` adds everyday noises (coughs, laughs, keyboards, footsteps, doors, dishes, pets, crowds, traffic,
music) and conversational telephone speech from other packages (bargein_sources.py names them and how to get
them); missed speech and false interruptions are then counted per source, for both detectors, and in total.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from splitrelay.bench.bargein_sources import SOURCES, Clip, catalogue_clips, folder_clips, load, parse_noise

SPEECH_GLOBS = (
    "alsa/Front_*.wav",
    "alsa/Rear_*.wav",
    "alsa/Side_*.wav",
    "freedesktop/stereo/audio-channel-*.oga",
)
NOISE_GLOBS = ("alsa/Noise.wav", "freedesktop/stereo/*.oga")
DESKTOP = "desktop sounds (alsa, freedesktop)"
SPEECH = "speech: read channel names"
LEVELS_DBOV = (-20.0, -30.0, -40.0)  # the clip's active RMS: loud, normal, quiet headset speech
ONSET_DBOV = -50.0
LEVEL_THRESHOLD_DBOV = -40.0  # the relay's CallConfig.barge_in_threshold_dbov
CANDIDATE_DBOV = -50.0  # the relay's CallConfig.barge_in_candidate_dbov
FRAME_MS = 20


@dataclass
class Trial:
    clip: str
    speech: bool
    level: float
    category: str = SPEECH
    package: str = ""
    onset: int | None = None  # frame index
    level_flush: int | None = None  # frame of today's flush
    pause: int | None = None  # frame of the first pause
    confirm: int | None = None  # frame the verdict (or the window) confirmed
    by_policy: bool = False
    candidates: int = 0
    paused_frames: int = 0  # frames of agent audio held back by candidates that were rejected


def _active_rms_db(x: Any) -> float:
    import numpy as np

    frames = x[: x.size - x.size % 960].reshape(-1, 960)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-20)
    loud = rms[rms >= rms.max() * 0.1]  # the active part: within 20 dB of the loudest frame
    return float(20 * np.log10(np.sqrt((loud**2).mean())))


def _frames(clip: Any, level: float) -> tuple[list[bytes], list[int]]:
    import numpy as np

    from splitrelay.devtools.utterance import encode_opus, frame_levels

    scaled = clip * 10 ** ((level - _active_rms_db(clip)) / 20)
    signal = np.concatenate((np.zeros(48 * 400), scaled, np.zeros(48 * 600)))
    signal = signal[: signal.size - signal.size % 960]
    pcm = (np.clip(signal, -1, 1) * 32767).astype(np.int16)
    return encode_opus(pcm), frame_levels(pcm)


def _run_trial(
    trial: Trial,
    frames: list[bytes],
    levels: list[int],
    window_ms: int,
    sustain_ms: int,
    vad: dict[str, Any] | None = None,
    retry_ms: int = 0,
) -> float:
    """Decide one trial both ways (``vad``: VadConfirmer keyword arguments, the SDK's defaults when empty;
    ``retry_ms``: the relay's barge_in_retry_ms); returns the confirmer's CPU seconds. When a packet
    raises is the relay's own rule (``OnsetGate``), fed as the relay feeds it."""
    from splitrelay.inference.vad import VadConfirmer
    from splitrelay.relay.barge_gate import OnsetGate

    trial.onset = next((i for i, lv in enumerate(levels) if -lv >= ONSET_DBOV), None)
    loud = [-lv >= LEVEL_THRESHOLD_DBOV for lv in levels]
    trigger = [-lv >= CANDIDATE_DBOV for lv in levels]
    level_gate = OnsetGate()  # today: the first loud packet after a silent one flushes
    trial.level_flush = next((i for i, is_loud in enumerate(loud) if level_gate.feed(is_loud)), None)
    confirmer = VadConfirmer(**(vad or {}))
    gate = OnsetGate(retry_packets=retry_ms // FRAME_MS)
    cpu = 0.0
    open_at: int | None = None
    sustained = 0
    for i, payload in enumerate(frames):
        started = time.process_time()
        verdict = confirmer.on_audio(i, i * 960, payload)
        if open_at is None and trial.confirm is None:
            if gate.feed(trigger[i]):  # the relay pauses on this packet and sends the candidate after it
                open_at, sustained = i, 1
                trial.candidates += 1
                trial.pause = i if trial.pause is None else trial.pause
                verdict = confirmer.on_candidate(i * 960)
        elif open_at is not None:
            sustained += loud[i]
        cpu += time.process_time() - started
        if open_at is None:
            continue
        if verdict is None and (i - open_at + 1) * FRAME_MS >= window_ms:  # the relay's default policy
            verdict, trial.by_policy = sustained * FRAME_MS >= sustain_ms, True
        if verdict is True:
            trial.confirm = i
            break
        if verdict is False:
            trial.paused_frames += i - open_at + 1
            open_at = None
            gate.rejected()
    return cpu


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _pcm_path_cpu(seconds: float = 10.0) -> tuple[float, float]:
    """Share of a core for one call's PCM path (decode 16 kHz in, encode 24 kHz out), and the per-call
    VAD confirmer share while a candidate is open (every frame decoded and judged)."""
    import numpy as np

    from splitrelay.devtools.utterance import encode_opus
    from splitrelay.inference.audio import AgentAudioEncoder, CallerAudioDecoder

    rng = np.random.default_rng(18)
    pcm = (rng.standard_normal(int(48_000 * seconds)) * 3000).astype(np.int16)
    packets = encode_opus(pcm[: pcm.size - pcm.size % 960])
    decoder = CallerAudioDecoder(16_000, "int16")
    encoder = AgentAudioEncoder(24_000)
    tts = (rng.standard_normal(480) * 3000).astype(np.int16).tobytes()  # 20 ms at 24 kHz
    started = time.process_time()
    for seq, packet in enumerate(packets):
        decoder.push(seq, packet)
        encoder.push(tts)
    pcm_share = (time.process_time() - started) / seconds
    from splitrelay.inference.vad import VadConfirmer

    confirmer = VadConfirmer(confirm_windows=60, max_windows=60)  # never decides: keeps judging
    started = time.process_time()
    for seq, packet in enumerate(packets):
        if confirmer.on_audio(seq, seq * 960, packet) is not None or seq == 0:
            confirmer.on_candidate(seq * 960)  # reopened at once: judged the whole time
    vad_share = (time.process_time() - started) / seconds
    return pcm_share, vad_share


def _smart_turn_cost(rounds: int = 20) -> str:
    """CPU of one Smart Turn v3 inference (the ONNX model pipecat-ai ships; 8 s of 16 kHz audio) against
    Silero's per-window cost: what a turn-detection model would add to the echo agent's turn end."""
    try:
        from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    except ImportError as exc:
        return f"Smart Turn: not measured ({exc})."
    import numpy as np

    from splitrelay.devtools.utterance import read_pcm
    from splitrelay.inference.vad import WINDOW, SileroVad

    asset = Path(__file__).resolve().parents[1] / "devtools" / "assets" / "utterance.wav"
    audio = read_pcm(asset).astype(np.float32)[::3] / 32768  # 48 -> 16 kHz (a spoken sentence)
    analyzer = LocalSmartTurnAnalyzerV3()
    analyzer._predict_endpoint(audio)  # warm up
    costs = []
    for _ in range(rounds):
        started = time.process_time()
        analyzer._predict_endpoint(audio)
        costs.append((time.process_time() - started) * 1000)
    vad = SileroVad()
    window = np.zeros(WINDOW, dtype=np.float32)
    started = time.process_time()
    for _ in range(1000):
        vad.probability(window)
    silero_ms = time.process_time() - started  # per window, in ms (1000 windows, seconds -> ms)
    return (
        f"Smart Turn v3.2 (pipecat-ai's CPU model), one inference: {_pct(costs, 0.5):.0f} ms p50 / "
        f"{_pct(costs, 0.99):.0f} ms p99 of CPU; Silero: {silero_ms:.3f} ms per 32 ms window "
        f"({silero_ms / 32:.2%} of a core while it runs)."
    )


def sounds_clips(sounds: Path) -> tuple[list[Clip], list[Clip]]:
    """The speech clips and desktop sounds under ``--sounds`` (Debian's /usr/share/sounds)."""

    def found(globs: tuple[str, ...]) -> set[Path]:  # the theme's symlinks repeat other sounds
        return {p for g in globs for p in sounds.glob(g) if not p.is_symlink() and p.stat().st_size}

    speech = sorted(found(SPEECH_GLOBS))
    noise = sorted(found(NOISE_GLOBS) - set(speech))
    pkg = {"alsa": "deb:alsa-utils", "stereo": "deb:sound-theme-freedesktop"}

    def clip(p: Path, category: str) -> Clip:
        return Clip(
            f"{p.parent.name}/{p.name}", category, pkg.get(p.parent.name, ""), p, speech=category == SPEECH
        )

    return [clip(p, SPEECH) for p in speech], [clip(p, DESKTOP) for p in noise]


def collect(sounds: Path, noise: list[str]) -> tuple[list[Clip], list[Clip]]:
    """Speech and non-speech clips: ``--sounds``, then each ``--noise`` (a root or CATEGORY=DIR)."""
    speech, desktop = sounds_clips(sounds)
    if not speech or not desktop:
        raise typer.BadParameter(
            f"no recordings under {sounds}: apt-get install alsa-utils sound-theme-freedesktop "
            "(or pass --sounds to where their usr/share/sounds was unpacked)",
            param_hint="--sounds",
        )
    extra: list[Clip] = []
    for spec in noise:
        try:
            category, folder = parse_noise(spec)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--noise") from exc
        found = folder_clips(category, folder) if category else catalogue_clips(folder)
        if not found:
            packages = sorted({s.package.split(":", 1)[1] for s in SOURCES})
            raise typer.BadParameter(
                f"no recordings under {folder}"
                + ("" if category else f": unpack (dpkg-deb -x / unzip) any of {', '.join(packages)} there"),
                param_hint="--noise",
            )
        extra += found
    return speech + [c for c in extra if c.speech], desktop + [c for c in extra if not c.speech]


def measure(
    clips: list[Clip],
    window_ms: int,
    sustain_ms: int,
    vad: dict[str, Any] | None = None,
    retry_ms: int = 0,
) -> tuple[list[Trial], float]:
    """Every clip at every level, both detectors; returns the trials and the confirmer's CPU seconds."""
    trials: list[Trial] = []
    cpu = 0.0
    for clip in clips:
        audio = load(clip)
        for level in LEVELS_DBOV:
            trial = Trial(clip.name, clip.speech, level, clip.category, clip.package)
            frames, levels = _frames(audio, level)
            cpu += _run_trial(trial, frames, levels, window_ms, sustain_ms, vad, retry_ms)
            trials.append(trial)
    return trials, cpu


def _count(trials: list[Trial]) -> dict[str, Any]:
    """False interruptions of non-speech trials, both detectors, and what the pauses cost the agent."""
    held = [float(t.paused_frames * FRAME_MS) for t in trials if t.candidates]
    return {
        "trials": len(trials),
        "level_only_false": sum(t.level_flush is not None for t in trials),
        "pause_confirm_false": sum(t.confirm is not None for t in trials),
        "candidates": sum(t.candidates for t in trials),
        "held_back_ms_p50": _pct(held, 0.5),
        "held_back_ms_p99": _pct(held, 0.99),
        "false_interruptions": [f"{t.clip}@{t.level:g}" for t in trials if t.confirm is not None],
    }


def by_category(trials: list[Trial]) -> list[dict[str, Any]]:
    """Per non-speech category, in first-seen order: the clips, their packages and ``_count``."""
    order: dict[str, list[Trial]] = {}
    for t in trials:
        if not t.speech:
            order.setdefault(t.category, []).append(t)
    return [
        {
            "category": name,
            "packages": sorted({t.package for t in group if t.package}),
            "clips": len({t.clip for t in group}),
            **_count(group),
        }
        for name, group in order.items()
    ]


def speech_by_category(trials: list[Trial]) -> list[dict[str, Any]]:
    """Per speech source: missed onsets for both detectors and the confirmer's onset -> confirmed times."""
    order: dict[str, list[Trial]] = {}
    for t in trials:
        if t.speech:
            order.setdefault(t.category, []).append(t)
    rows = []
    for name, group in order.items():
        confirm = [
            float((t.confirm - t.onset) * FRAME_MS)
            for t in group
            if t.confirm is not None and t.onset is not None
        ]
        rows.append(
            {
                "category": name,
                "packages": sorted({t.package for t in group if t.package}),
                "clips": len({t.clip for t in group}),
                "trials": len(group),
                "level_only_missed": sum(t.level_flush is None for t in group),
                "pause_confirm_missed": sum(t.confirm is None for t in group),
                "confirm_ms_p50": _pct(confirm, 0.5),
                "confirm_ms_p99": _pct(confirm, 0.99),
            }
        )
    return rows


def summarize(trials: list[Trial], window_ms: int, sustain_ms: int) -> dict[str, Any]:
    """The result document (what ``--json`` prints): both detectors on speech and on every category."""
    sp = [t for t in trials if t.speech]
    ns = [t for t in trials if not t.speech]

    def ms(frame: int | None, t: Trial) -> float | None:
        return None if frame is None or t.onset is None else float((frame - t.onset) * FRAME_MS)

    level_times = [v for t in sp if (v := ms(t.level_flush, t)) is not None]
    pause_times = [v for t in sp if (v := ms(t.pause, t)) is not None]
    confirm_times = [v for t in sp if (v := ms(t.confirm, t)) is not None]
    total = _count(ns)
    new_false = total["pause_confirm_false"] / max(1, len(ns))
    confirmed = sum(t.confirm is not None for t in sp) / max(1, len(sp))
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "levels_dbov": list(LEVELS_DBOV),
        "window_ms": window_ms,
        "sustain_ms": sustain_ms,
        "speech": {
            "clips": len({t.clip for t in sp}),
            "trials": len(sp),
            "level_only_missed": sum(t.level_flush is None for t in sp),
            "pause_confirm_missed": sum(t.confirm is None for t in sp),
            "flush_ms_p50": _pct(level_times, 0.5),
            "flush_ms_p99": _pct(level_times, 0.99),
            "pause_ms_p50": _pct(pause_times, 0.5),
            "pause_ms_p99": _pct(pause_times, 0.99),
            "confirm_ms_p50": _pct(confirm_times, 0.5),
            "confirm_ms_p99": _pct(confirm_times, 0.99),
            "never_paused": sum(t.pause is None for t in sp),
            "missed": [f"{t.clip}@{t.level:g}" for t in sp if t.confirm is None],
        },
        "non_speech": {"clips": len({(t.category, t.clip) for t in ns}), **total},
        "speech_categories": speech_by_category(trials),
        "categories": by_category(trials),
        "by_policy": sum(t.by_policy and t.confirm is not None for t in trials),
        "targets": {
            "pause p99 <= 20 ms": _pct(pause_times, 0.99) <= 20,
            "false interruptions <= 5%": new_false <= 0.05,
            "speech onsets confirmed >= 95%": confirmed >= 0.95,
            "confirmation p50 <= 200 ms": _pct(confirm_times, 0.5) <= 200,
        },
    }


def _rate(n: int, of: int) -> str:
    return f"{n / of:.0%} ({n}/{of})" if of else "-"


def report(doc: dict[str, Any]) -> str:
    """The Markdown report of a ``summarize`` document (with its ``cpu`` part, when measured)."""
    sp, ns = doc["speech"], doc["non_speech"]
    settings = ", ".join(f"{k}={v}" for k, v in doc.get("vad", {}).items())
    what_if = f"; what-if VadConfirmer({settings}), not the SDK's defaults" if settings else ""
    lines = [
        f"Machine: {doc['machine']}; {sp['clips']} speech clips and {ns['clips']} non-speech clips x "
        f"{len(doc['levels_dbov'])} levels ({', '.join(f'{lv:g}' for lv in doc['levels_dbov'])} dBov "
        f"active RMS) = {sp['trials']} speech and {ns['trials']} non-speech trials; "
        f"window {doc['window_ms']} ms, "
        f"retry after a reject {doc.get('retry_ms') or 'never'}{' ms' if doc.get('retry_ms') else ''}, "
        f"default policy {doc['sustain_ms']} ms of speech by level{what_if}.",
        "",
        "| detector | false interruptions | missed speech | onset -> pause p50 / p99 "
        "| onset -> confirmed p50 / p99 |",
        "|---|---|---|---|---|",
        f"| level only (today, baseline) | {_rate(ns['level_only_false'], ns['trials'])} "
        f"| {_rate(sp['level_only_missed'], sp['trials'])} "
        f"| flush {sp['flush_ms_p50']:.0f} / {sp['flush_ms_p99']:.0f} ms "
        f"| (no confirmation: the flush is the cut) |",
        f"| pause + Silero confirm | {_rate(ns['pause_confirm_false'], ns['trials'])} "
        f"| {_rate(sp['pause_confirm_missed'], sp['trials'])} "
        f"| {sp['pause_ms_p50']:.0f} / {sp['pause_ms_p99']:.0f} ms "
        f"| {sp['confirm_ms_p50']:.0f} / {sp['confirm_ms_p99']:.0f} ms |",
        "",
        "Speech per source (each clip at every level):",
        "",
        "| speech | package | clips | missed, level only (today) | missed, pause + Silero confirm "
        "| onset -> confirmed p50 / p99 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {c['category']} | {', '.join(p.split(':', 1)[-1] for p in c['packages'])} | {c['clips']} "
            f"| {_rate(c['level_only_missed'], c['trials'])} "
            f"| {_rate(c['pause_confirm_missed'], c['trials'])} "
            f"| {c['confirm_ms_p50']:.0f} / {c['confirm_ms_p99']:.0f} ms |"
            for c in doc.get("speech_categories", [])
        ),
        "",
        "False interruptions per non-speech category (each clip at every level):",
        "",
        "| category | package | clips | level only (today) | pause + Silero confirm "
        "| candidates | agent held back p50 / p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in [*doc["categories"], {"category": "**all non-speech**", "packages": [], **ns}]:
        held = (
            f"{c['held_back_ms_p50']:.0f} / {c['held_back_ms_p99']:.0f} ms"
            if c["candidates"]
            else "- (no pause)"
        )
        lines.append(
            f"| {c['category']} | {', '.join(p.split(':', 1)[-1] for p in c['packages'])} | {c['clips']} "
            f"| {_rate(c['level_only_false'], c['trials'])} | {_rate(c['pause_confirm_false'], c['trials'])} "
            f"| {c['candidates']} | {held} |"
        )
    lines += [
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in doc["targets"].items()) + ".",
        f"Confirmed by the relay's default policy (no verdict in the window): {doc['by_policy']}. "
        "Speech the level detector never triggered on (so never paused): "
        f"{sp['never_paused']}/{sp['trials']}.",
    ]
    if cpu := doc.get("cpu"):
        lines += [
            "CPU, share of one core per call: PCM path (16 kHz in, 24 kHz out) "
            f"{cpu['pcm_path_share']:.2%}; VAD confirmer while a candidate is open "
            f"{cpu['confirmer_share']:.2%} (0 otherwise: it decodes nothing without a candidate); "
            f"all trials' confirmer time {cpu['trials_confirmer_s']:.2f} s.",
            cpu["smart_turn"],
        ]
    if sp["missed"]:
        lines.append(f"Missed: {', '.join(sp['missed'])}.")
    if ns["false_interruptions"]:
        lines.append(f"False interruptions: {', '.join(ns['false_interruptions'])}.")
    return "\n".join(lines)


def run(
    sounds: Path,
    window_ms: int,
    sustain_ms: int,
    noise: list[str] | None = None,
    vad: dict[str, Any] | None = None,
    retry_ms: int = 0,
) -> dict[str, Any]:
    """Run every trial and return the result document (``report`` renders it)."""
    speech, others = collect(sounds, noise or [])
    trials, cpu = measure(speech + others, window_ms, sustain_ms, vad, retry_ms)
    doc = summarize(trials, window_ms, sustain_ms)
    doc["vad"] = vad or {}
    doc["retry_ms"] = retry_ms
    pcm_share, vad_share = _pcm_path_cpu()
    doc["cpu"] = {
        "pcm_path_share": pcm_share,
        "confirmer_share": vad_share,
        "trials_confirmer_s": cpu,
        "smart_turn": _smart_turn_cost(),
    }
    return doc


def to_json(doc: Any) -> Any:
    """The document with NaN (a percentile of nothing) as null: strict JSON for other tools."""
    if isinstance(doc, dict):
        return {k: to_json(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [to_json(v) for v in doc]
    return None if isinstance(doc, float) and math.isnan(doc) else doc


DEBS = " ".join(sorted({s.package[4:] for s in SOURCES if s.package.startswith("deb:")}))
NOISE_HELP = (
    "More non-speech recordings, repeatable: ROOT where packages were unpacked (a catalogue picks coughs, "
    "laughs, keyboard, footsteps, doors, dishes, appliances, pets, crowds, traffic and music from them; / "
    "if installed; plus conversational speech from pyannote.audio's sample call), or CATEGORY=DIR (every "
    "audio file under DIR, as non-speech). Get them: "
    f'apt-get download {DEBS} && for f in *.deb; do dpkg-deb -x "$f" root; done; '
    "pip download --no-deps pygame pyannote.audio && unzip -q -d root pygame-*.whl 'pygame/examples/data/*' "
    "&& unzip -q -d root pyannote_audio-*.whl 'pyannote/audio/sample/*'."
)


def command(
    sounds: Annotated[
        Path, typer.Option(help="Folder holding alsa/ and freedesktop/ (Debian's /usr/share/sounds).")
    ] = Path("/usr/share/sounds"),
    noise: Annotated[list[str] | None, typer.Option(help=NOISE_HELP)] = None,
    window_ms: Annotated[
        int, typer.Option(help="Relay's wait for a verdict, ms (barge_in_confirm_ms).")
    ] = 400,
    sustain_ms: Annotated[int, typer.Option(help="Default policy: speech by level that confirms, ms.")] = 100,
    vad_threshold: Annotated[
        float | None, typer.Option(help="What-if: VadConfirmer's speech probability threshold (SDK: 0.5).")
    ] = None,
    vad_max_windows: Annotated[
        int | None, typer.Option(help="What-if: VadConfirmer's 32 ms windows before a reject (SDK: 8).")
    ] = None,
    retry_ms: Annotated[
        int,
        typer.Option(
            help="The relay's barge_in_retry_ms (relay serve --barge-in-retry-ms): after a reject, speech "
            "for this long without a silent packet raises a new candidate; 0: never (0 or 100..5000)."
        ),
    ] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result document as JSON.")] = False,
) -> None:
    """Barge-in quality on recorded speech and non-speech sounds: level only vs pause + VAD confirm, false
    interruptions per category of noise."""
    if not 20 <= window_ms <= 2000:
        raise typer.BadParameter(f"must be 20..2000, got {window_ms}", param_hint="--window-ms")
    if not 20 <= sustain_ms <= 2000:
        raise typer.BadParameter(f"must be 20..2000, got {sustain_ms}", param_hint="--sustain-ms")
    vad: dict[str, Any] = {}
    if vad_threshold is not None:
        vad["threshold"] = vad_threshold
    if vad_max_windows is not None:
        vad["max_windows"] = vad_max_windows
    try:
        from splitrelay.inference.vad import VadConfirmer

        VadConfirmer(**vad)  # refused here, naming the value, rather than in the first trial
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--vad-threshold / --vad-max-windows") from exc
    if retry_ms and not 100 <= retry_ms <= 5000:
        raise typer.BadParameter(f"must be 0 or 100..5000, got {retry_ms}", param_hint="--retry-ms")
    doc = run(sounds, window_ms, sustain_ms, noise, vad, retry_ms)
    typer.echo(json.dumps(to_json(doc), indent=2, allow_nan=False) if json_output else report(doc))
