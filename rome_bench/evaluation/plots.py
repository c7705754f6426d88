"""Figures: accuracy against ε, one subplot per threat, each with its own ε axis and a shared accuracy axis.

Figures are drawn on ``matplotlib.figure.Figure`` with ``FigureCanvasAgg`` and never through pyplot, so nothing
here selects or switches a backend (``matplotlib.use`` is never called) and no figure is left in pyplot's registry.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rome_bench.checkpoint import atomic_write_bytes

ROSE_LABEL = "accuracy rose with ε"


@dataclass(frozen=True)
class SweepPoint:
    """Accuracy at one ε with its 95% Wilson interval (all in [0, 1]); flagged when it rose with ε."""

    eps: float
    accuracy: float
    low: float
    high: float
    flagged: bool


def _draw_threat(axes: Axes, label: str, points: list[SweepPoint]) -> None:
    """One threat's line, Wilson band and flagged points on its own axes."""
    points = sorted(points, key=lambda point: point.eps)
    eps = [point.eps for point in points]
    axes.fill_between(eps, [100 * p.low for p in points], [100 * p.high for p in points], alpha=0.25,
                      linewidth=0, label="95% Wilson interval")
    axes.plot(eps, [100 * p.accuracy for p in points], marker="o", markersize=4, label=label)
    flagged = [point for point in points if point.flagged]
    if flagged:
        axes.scatter([p.eps for p in flagged], [100 * p.accuracy for p in flagged], marker="X", s=70,
                     color="red", edgecolors="black", linewidths=0.5, zorder=3, label=ROSE_LABEL)
    axes.set_title(label)
    axes.set_xlabel("ε")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")


def _save_atomically(figure: Figure, path: Path) -> None:
    """Render the figure in memory, then write it atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=150, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy_vs_eps(series: dict[str, list[SweepPoint]], path: Path, title: str) -> Path:
    """Write accuracy (%) against ε, one subplot per threat (key = label), to ``path`` (format from its suffix)."""
    if not series or any(not points for points in series.values()):
        raise ValueError("every threat of the sweep needs at least one point")
    path = Path(path)
    figure = Figure(figsize=(3.6 * len(series), 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    try:
        grid = figure.subplots(1, len(series), sharey=True, squeeze=False)
        for axes, (label, points) in zip(grid[0], series.items(), strict=True):
            _draw_threat(axes, label, points)
        grid[0][0].set_ylabel("accuracy (%)")
        figure.suptitle(title)
        _save_atomically(figure, path)
    finally:
        figure.clear()
    return path


def plot_training_curves(curves: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Union robust accuracy (%) against training wall time (minutes), one line per run (key = label).

    ``curves`` holds each run's training-curve records (``rome-bench train --eval-every N``).
    """
    if not curves or any(not records for records in curves.values()):
        raise ValueError("every run needs at least one training-curve record")
    path = Path(path)
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    try:
        axes = figure.subplots()
        for label, records in curves.items():
            minutes = [record["wall_seconds"] / 60 for record in records]
            axes.plot(minutes, [100 * record["accuracy"]["union"] for record in records], marker="o",
                      markersize=3, label=f"{label} (n={records[-1]['n']})")
        axes.set_xlabel("training wall time (min)")
        axes.set_ylabel("union robust accuracy (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.suptitle(title)
        _save_atomically(figure, path)
    finally:
        figure.clear()
    return path
