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


def accuracy_vs_eps_figure(series: dict[str, list[SweepPoint]], title: str) -> Figure:
    """Accuracy (%) against ε, one subplot per threat (key = label), sharing the accuracy axis."""
    if not series or any(not points for points in series.values()):
        raise ValueError("every threat of the sweep needs at least one point")
    figure = _new_figure((3.6 * len(series), 3.4))
    grid = figure.subplots(1, len(series), sharey=True, squeeze=False)
    for axes, (label, points) in zip(grid[0], series.items(), strict=True):
        _draw_threat(axes, label, points)
    grid[0][0].set_ylabel("accuracy (%)")
    figure.suptitle(title)
    return figure


def plot_accuracy_vs_eps(series: dict[str, list[SweepPoint]], path: Path, title: str) -> Path:
    """Write :func:`accuracy_vs_eps_figure` to ``path`` (format from its suffix)."""
    return _write(accuracy_vs_eps_figure(series, title), Path(path))


def training_curves_figure(curves: dict[str, list[dict]], title: str) -> Figure:
    """Union robust accuracy (%) against training wall time (minutes), one line per run (key = label).

    ``curves`` holds each run's training-curve records (``rome-bench train --eval-every N``).
    """
    if not curves or any(not records for records in curves.values()):
        raise ValueError("every run needs at least one training-curve record")
    figure = _new_figure((5.5, 3.8))
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
    return figure


def plot_training_curves(curves: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Write :func:`training_curves_figure` to ``path`` (format from its suffix)."""
    return _write(training_curves_figure(curves, title), Path(path))


def _new_figure(size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _write(figure: Figure, path: Path) -> Path:
    try:
        _save_atomically(figure, path)
    finally:
        figure.clear()
    return path


def svg_markup(figure: Figure) -> str:
    """The figure as an inline ``<svg>`` element (text drawn as paths: no font needed), then cleared."""
    buffer = io.StringIO()
    try:
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        figure.clear()
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def whiskers(values: list[float], intervals: list[tuple[float, float]]) -> list[list[float]]:
    """Error-bar lengths in percent below and above each value (never negative: an interval at 0 may round past)."""
    return [[max(0.0, 100 * (value - low)) for value, (low, _) in zip(values, intervals, strict=True)],
            [max(0.0, 100 * (high - value)) for value, (_, high) in zip(values, intervals, strict=True)]]


@dataclass(frozen=True)
class ModelPoint:
    """One leaderboard row in the clean-vs-union plane (accuracies in [0, 1]); reported rows have no interval."""

    label: str
    clean: float
    union: float
    reported: bool
    on_front: bool
    clean_interval: tuple[float, float] | None = None
    union_interval: tuple[float, float] | None = None


def union_vs_clean_figure(points: list[ModelPoint], title: str) -> Figure:
    """Union robust against clean accuracy, one marker per model (whiskers: Wilson intervals); front ringed, joined."""
    if not points:
        raise ValueError("the union-vs-clean figure needs at least one model")
    figure = _new_figure((5.8, 4.2))
    axes = figure.subplots()
    for reported, marker, name in ((False, "o", "measured"), (True, "s", "reported by a paper")):
        chosen = [p for p in points if p.reported == reported]
        if chosen:
            axes.scatter([100 * p.clean for p in chosen], [100 * p.union for p in chosen], marker=marker,
                         s=36, label=name, facecolors="none" if reported else None, edgecolors="C0", zorder=3)
    for point in points:
        if point.clean_interval and point.union_interval:
            axes.errorbar(100 * point.clean, 100 * point.union, fmt="none", ecolor="C0", alpha=0.35, elinewidth=1,
                          xerr=whiskers([point.clean], [point.clean_interval]),
                          yerr=whiskers([point.union], [point.union_interval]))
    front = sorted((p for p in points if p.on_front), key=lambda p: p.clean)
    axes.plot([100 * p.clean for p in front], [100 * p.union for p in front], color="C3", linewidth=1.2,
              marker="o", markersize=10, markerfacecolor="none", label="Pareto front", zorder=4)
    for point in points:
        axes.annotate(point.label, (100 * point.clean, 100 * point.union), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    axes.set_xlabel("clean accuracy (%)")
    axes.set_ylabel("union robust accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.suptitle(title)
    return figure


@dataclass(frozen=True)
class Bar:
    """One model's accuracy on one column, with its interval (None for reported rows)."""

    value: float
    interval: tuple[float, float] | None


def per_threat_figure(bars: dict[str, dict[str, Bar]], columns: list[str], title: str) -> Figure:
    """Horizontal grouped bars: one group per model (key = label), one bar per column with its Wilson interval."""
    if not bars or not columns:
        raise ValueError("the per-threat figure needs at least one model and one column")
    labels = list(bars)
    height = 0.8 / len(columns)
    figure = _new_figure((6.4, 0.6 + 0.22 * len(labels) * len(columns) + 0.3 * len(labels)))
    axes = figure.subplots()
    for offset, column in enumerate(columns):
        ys = [i + (offset - (len(columns) - 1) / 2) * height for i in range(len(labels))]
        values = [bars[label].get(column) for label in labels]
        shown = [(y, bar) for y, bar in zip(ys, values, strict=True) if bar is not None]
        if not shown:
            continue
        axes.barh([y for y, _ in shown], [100 * bar.value for _, bar in shown], height=height, label=column)
        with_interval = [(y, bar) for y, bar in shown if bar.interval is not None]
        if with_interval:
            axes.errorbar([100 * bar.value for _, bar in with_interval], [y for y, _ in with_interval],
                          xerr=whiskers([bar.value for _, bar in with_interval],
                                        [bar.interval for _, bar in with_interval]),  # type: ignore[misc]
                          fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("accuracy (%) with 95% Wilson interval")
    axes.set_xlim(0, 100)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    figure.suptitle(title)
    return figure
