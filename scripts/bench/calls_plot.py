"""The voice-to-voice histogram of `splitrelay bench calls`: A and B overlaid on shared bins.

matplotlib's Agg backend (no display needed); the file is written next to its target and renamed
into place, so a reader never sees half a PNG and a failure leaves the old file, if any, intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from splitrelay.bench.calls_config import PLOT_SUFFIXES
from splitrelay.bench.stats import percentile

MAX_BINS: Final = 60
MIN_BIN_MS: Final = 0.5
SHOWN_PERCENTILE: Final = 99.5  # the x axis ends here: one stall must not squeeze 999 turns into a bin


def bin_edges(
    values: Sequence[float], max_bins: int = MAX_BINS, min_width: float = MIN_BIN_MS
) -> list[float]:
    """Shared bin edges covering every value: at most ``max_bins`` bins, none narrower than ``min_width``."""
    if not values:
        raise ValueError("values: need at least one value to bin")
    low, high = min(values), max(values)
    width = max((high - low) / max_bins, min_width)
    count = max(1, min(max_bins, int((high - low) / width) + 1))
    return [low + i * width for i in range(count + 1)]


def write_histogram(path: Path, series: Sequence[tuple[str, Sequence[float]]], title: str) -> Path:
    """Overlay one histogram per (label, voice-to-voice values in ms); returns the file written.

    The x axis stops at the 99.5th percentile of all values; the title says how many lie beyond.
    """
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"plot: the file must end in {' or '.join(PLOT_SUFFIXES)}, got {path.name!r}")
    everything = [v for _, values in series for v in values]
    if not everything:
        raise ValueError("series: no value to plot")
    cutoff = percentile(everything, SHOWN_PERCENTILE)
    assert cutoff is not None
    edges = bin_edges([v for v in everything if v <= cutoff])
    hidden = sum(1 for v in everything if v > edges[-1])

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5), dpi=110)
    try:
        for label, values in series:
            if values:
                axes.hist(values, bins=edges, alpha=0.55, label=f"{label} (n={len(values)})")
        axes.set_xlabel("voice-to-voice, ms (first reply packet in - last speech frame due)")
        axes.set_ylabel("turns (log scale)")
        axes.set_yscale("log")
        if hidden:
            title += f"\n{hidden} turn(s) above {edges[-1]:.0f} ms not shown (max {max(everything):.0f} ms)"
        axes.set_title(title, fontsize=10)
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        directory = path.resolve().parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=directory)
        os.close(fd)
        try:
            figure.savefig(temp, format=path.suffix.lower().lstrip("."))
            os.chmod(temp, 0o644)  # mkstemp makes it 0600; a plot is for sharing
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
    finally:
        plt.close(figure)
    return path
