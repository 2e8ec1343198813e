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
