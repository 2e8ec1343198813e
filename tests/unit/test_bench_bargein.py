"""`splitrelay bench bargein`: the decision logic on a made-up trial, and a clear error without recordings."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

pytest.importorskip("onnxruntime")

from splitrelay.bench.bargein import Trial, _run_trial, run


def test_without_recordings_it_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(typer.BadParameter, match="apt-get install alsa-utils sound-theme-freedesktop"):
        run(tmp_path, 400, 100)


def test_a_loud_non_speech_trial_flushes_today_and_is_rejected_by_the_confirmer() -> None:
    import numpy as np

    from splitrelay.devtools.utterance import encode_opus, frame_levels

    tone = (np.sin(np.arange(48 * 600) * 2 * np.pi * 1000 / 48_000) * 8000).astype(np.int16)
    pcm = np.concatenate((np.zeros(48 * 400, dtype=np.int16), tone, np.zeros(48 * 600, dtype=np.int16)))
    trial = Trial("tone", False, -20.0)
    _run_trial(trial, encode_opus(pcm), frame_levels(pcm), 400, 100)
    assert trial.onset == 20 and trial.level_flush == 20  # today: the first loud packet cuts the agent
    assert trial.pause == 20 and trial.candidates >= 1
    assert trial.confirm is None and trial.paused_frames > 0  # rejected: paused, then resumed


def _trial(category: str, clip: str, *, level_flush: int | None, confirm: int | None, held: int = 0) -> Trial:
    """A decided non-speech trial, as _run_trial leaves it."""
    return Trial(
        clip,
        False,
        -30.0,
        category,
        f"deb:{category}-pkg",
        onset=20,
        level_flush=level_flush,
        pause=20,
        confirm=confirm,
        candidates=1 if held else 0,
        paused_frames=held,
    )


def test_false_interruptions_are_counted_per_category_for_both_detectors() -> None:
    from splitrelay.bench.bargein import by_category, report, summarize, to_json

    speech = Trial("alsa/Front_Left.wav", True, -30.0, onset=20, level_flush=21, pause=20, confirm=29)
    trials = [
        speech,
        _trial("cough", "a.ogg", level_flush=20, confirm=None, held=13),
        _trial("cough", "b.ogg", level_flush=20, confirm=None, held=26),
        _trial("laugh", "c.ogg", level_flush=20, confirm=30, held=0),
        _trial("laugh", "d.ogg", level_flush=None, confirm=None, held=0),
    ]
    cats = {c["category"]: c for c in by_category(trials)}
    assert list(cats) == ["cough", "laugh"]  # speech is no category; first-seen order
    assert (cats["cough"]["level_only_false"], cats["cough"]["pause_confirm_false"]) == (2, 0)
    assert (cats["laugh"]["level_only_false"], cats["laugh"]["pause_confirm_false"]) == (1, 1)
    assert cats["cough"]["held_back_ms_p50"] == 260.0 and cats["cough"]["held_back_ms_p99"] == 520.0
    assert cats["laugh"]["false_interruptions"] == ["c.ogg@-30"] and cats["cough"]["packages"] == [
        "deb:cough-pkg"
    ]
    doc = summarize(trials, 400, 100)
    total = doc["non_speech"]
    assert (total["trials"], total["level_only_false"], total["pause_confirm_false"]) == (4, 3, 1)
    assert doc["speech"]["confirm_ms_p50"] == 180.0 and doc["speech"]["pause_confirm_missed"] == 0
    assert doc["targets"]["false interruptions <= 5%"] is False  # 1 of 4
    text = report(doc)
    assert "| cough | cough-pkg | 2 | 100% (2/2) | 0% (0/2) | 2 | 260 / 520 ms |" in text
    assert "| laugh | laugh-pkg | 2 | 50% (1/2) | 50% (1/2) | 0 | - (no pause) |" in text
    assert "| **all non-speech** |  | 4 | 75% (3/4) | 25% (1/4) |" in text
    assert "False interruptions: c.ogg@-30." in text
    assert "| speech: read channel names |  | 1 | 0% (0/1) | 0% (0/1) | 180 / 180 ms |" in text
    import json

    strict = json.dumps(to_json(doc), allow_nan=False)  # NaN percentiles (laugh held nothing) become null
    assert json.loads(strict)["categories"][1]["held_back_ms_p50"] is None


def test_noise_options_label_folders_and_name_the_packages_when_a_root_is_empty(tmp_path: Path) -> None:
    import wave

    import numpy as np

    from splitrelay.bench.bargein import DESKTOP, collect

    sounds = tmp_path / "sounds"
    for rel in ("alsa/Front_Left.wav", "alsa/Noise.wav", "tv/show.wav"):
        (sounds / rel).parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(sounds / rel), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes((np.ones(1600) * 1000).astype("<i2").tobytes())
    call = tmp_path / "pypi/pyannote/audio/sample"
    call.mkdir(parents=True)
    (call / "sample.wav").write_bytes((sounds / "alsa/Front_Left.wav").read_bytes())
    (call / "sample.stm").write_text("sample 1 A 0.00 0.10 Hi.\n")
    speech, noise = collect(sounds, [f"television={sounds / 'tv'}", str(tmp_path / "pypi")])
    assert [(c.name, c.speech) for c in speech] == [
        ("alsa/Front_Left.wav", True),
        ("sample.wav@0.0s A", True),
    ]
    assert [(c.category, c.name) for c in noise] == [(DESKTOP, "alsa/Noise.wav"), ("television", "show.wav")]
    with pytest.raises(typer.BadParameter, match=r"bucklespring-data.*hedgewars-data"):
        collect(sounds, [str(tmp_path / "empty")])
    with pytest.raises(typer.BadParameter, match="CATEGORY=DIR"):
        collect(sounds, ["=x"])


def test_measure_labels_each_trial_with_its_clip_category(tmp_path: Path) -> None:
    import wave

    import numpy as np

    from splitrelay.bench.bargein import LEVELS_DBOV, measure
    from splitrelay.bench.bargein_sources import Clip

    path = tmp_path / "kettle.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(
            (np.sin(np.arange(48 * 300) * 2 * np.pi * 1000 / 48_000) * 8000).astype("<i2").tobytes()
        )
    trials, cpu = measure([Clip("kettle.wav", "dishes", "deb:x", path)], 400, 100)
    assert [(t.category, t.package, t.level, t.speech) for t in trials] == [
        ("dishes", "deb:x", lv, False) for lv in LEVELS_DBOV
    ]
    assert all(t.onset == 20 and t.confirm is None for t in trials) and cpu > 0


def test_what_if_confirmer_settings_reach_every_trial_and_bad_ones_are_refused() -> None:
    import numpy as np
    from typer.testing import CliRunner

    from splitrelay.bench.bargein import command, report, summarize
    from splitrelay.devtools.utterance import encode_opus, frame_levels

    tone = (np.sin(np.arange(48 * 600) * 2 * np.pi * 1000 / 48_000) * 8000).astype(np.int16)
    pcm = np.concatenate((np.zeros(48 * 400, dtype=np.int16), tone, np.zeros(48 * 600, dtype=np.int16)))
    default, quick = Trial("tone", False, -20.0), Trial("tone", False, -20.0)
    _run_trial(default, encode_opus(pcm), frame_levels(pcm), 400, 100)
    _run_trial(quick, encode_opus(pcm), frame_levels(pcm), 400, 100, {"max_windows": 3})
    assert 0 < quick.paused_frames < default.paused_frames  # rejected after 3 windows, not 8
    doc = summarize([default], 400, 100) | {"vad": {"max_windows": 3}}
    assert "what-if VadConfirmer(max_windows=3), not the SDK's defaults." in report(doc)
    app = typer.Typer()
    app.command()(command)
    result = CliRunner().invoke(app, ["--vad-threshold", "1.5"])
    assert result.exit_code == 2 and "threshold" in result.output
