"""ε sweeps: every threat of a suite at several budgets (``--eps-scale``), stored per ε, checked and plotted.

``monotonicity_violations`` lives here rather than in ``plots.py`` because it is arithmetic on results, needed
without matplotlib (e.g. to set ``SweepPoint.flagged`` or to warn in a report); ``plots.py`` only draws.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import torch

from rome_bench.data import LoadedDataset
from rome_bench.errors import ConfigError
from rome_bench.evaluation.plots import SweepPoint, plot_accuracy_vs_eps
from rome_bench.evaluation.runner import LoadedRun, evaluate_run
from rome_bench.evaluation.store import ResultStore, SweepPointRecord
from rome_bench.evaluation.table import wilson_interval
from rome_bench.threats import Threat


def monotonicity_violations(points: list[tuple[float, int]]) -> list[int]:
    """Indices into ``points`` (eps, correct) whose count exceeds the one at the next smaller ε, in ε order."""
    order = sorted(range(len(points)), key=lambda i: points[i][0])
    epsilons = [points[i][0] for i in order]
    if len(set(epsilons)) != len(epsilons):
        raise ValueError(f"each ε may appear once in a sweep, got {sorted(epsilons)}")
    return [current for previous, current in itertools.pairwise(order) if points[current][1] > points[previous][1]]


def sweep_threats(threats: list[Threat], scale: float) -> list[Threat]:
    """The suite's threats with every budget ε multiplied by ``scale`` ('clean' stays first and unchanged)."""
    return [threats[0], *(threat.scaled(scale) for threat in threats[1:])]


def run_eps_sweep(run: LoadedRun, suite_name: str, threats: list[Threat], scales: list[float],
                  data: LoadedDataset, example_ids: list[int], store: ResultStore, batch_size: int,
                  device: torch.device, label: str, progress: bool = True) -> None:
    """Evaluate every threat at every ε scale on the same examples; each point is stored and recorded."""
    for scale in scales:
        scaled = sweep_threats(threats, scale)
        evaluate_run(run, suite_name, scaled, data, example_ids, store, batch_size, device, label, progress,
                     complete=math.isclose(scale, 1.0))
        for threat in scaled[1:]:
            store.record_sweep_point(run.model_hash, suite_name, data.fingerprint, SweepPointRecord(
                threat.name, scale, float(threat.params()["eps"]), threat.key, example_ids))


def sweep_series(store: ResultStore, model_hash: str, suite_name: str, dataset: str) -> dict[str, list[SweepPoint]]:
    """Accuracy (with Wilson interval) against ε per threat, flagged where it rose with ε."""
    clean = {key for key, name, _, _ in store.threats_of_model(model_hash, dataset) if name == "clean"}
    clean_correct = [store.correctness(model_hash, key, dataset) for key in clean]
    by_threat: dict[str, list[SweepPointRecord]] = {}
    for point in store.sweep_points(model_hash, suite_name, dataset):
        by_threat.setdefault(point.threat_name, []).append(point)
    series: dict[str, list[SweepPoint]] = {}
    for name, points in by_threat.items():
        counts = []
        for point in points:
            results = store.correctness(model_hash, point.threat_key, dataset)
            counts.append(sum(results.get(i, False) and all(c.get(i, False) for c in clean_correct)
                              for i in point.example_ids))
        rose = set(monotonicity_violations([(p.eps, c) for p, c in zip(points, counts, strict=True)]))
        series[name] = [SweepPoint(p.eps, c / len(p.example_ids), *wilson_interval(c, len(p.example_ids)), i in rose)
                        for i, (p, c) in enumerate(zip(points, counts, strict=True))]
    return series


def render_sweep_table(series: dict[str, list[SweepPoint]]) -> str:
    """A Markdown table: one row per (threat, ε) with accuracy, its interval, and '⚠ rose' where flagged."""
    lines = ["| Threat | ε | Accuracy % (95% Wilson) | Check |", "|---|---:|---:|---|"]
    for name, points in series.items():
        for point in points:
            lines.append(f"| {name} | {point.eps:.6g} | {100 * point.accuracy:.1f} "
                         f"({100 * point.low:.1f}–{100 * point.high:.1f}) | "
                         f"{'⚠ accuracy rose with ε' if point.flagged else 'ok'} |")
    return "\n".join(lines)


MAX_EPS_SCALE = 100.0  # far beyond any sweep; NaN and infinity fail this range too


def parse_scales(text: str) -> list[float]:
    """'0.25,0.5,1' -> [0.25, 0.5, 1.0]; every scale must be a positive number, each given once."""
    try:
        scales = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ConfigError(f"--eps-scale takes comma-separated positive numbers, e.g. 0.5,1,2 (got '{text}')") from error
    if not scales or not all(0 < scale <= MAX_EPS_SCALE for scale in scales) or len(set(scales)) != len(scales):
        raise ConfigError(f"--eps-scale takes distinct numbers in (0, {MAX_EPS_SCALE:g}], e.g. 0.5,1,2 (got '{text}')")
    return sorted(scales)


def default_plot_path(run: Path | None, suite: str, dataset: str) -> Path:
    """Where a sweep's figure goes unless --plot says: RUN/figures/ (the current folder's for a module)."""
    folder = run if run is not None else Path(".")
    return folder / "figures" / f"eps-sweep-{suite}-{dataset}.png"


def sweep_and_report(run: LoadedRun, suite: str, threats: list[Threat], scales: list[float], data: LoadedDataset,
                     ids: list[int], store: ResultStore, batch_size: int, device: torch.device, label: str,
                     progress: bool, plot_path: Path, echo: Callable[[str], None] = print) -> Path:
    """:func:`run_eps_sweep`, then its table and a warning where accuracy rose with ε (through ``echo``) and its
    figure at ``plot_path``; the figure's path."""
    run_eps_sweep(run, suite, threats, scales, data, ids, store, batch_size, device, label, progress)
    series = sweep_series(store, run.model_hash, suite, data.fingerprint)
    echo(render_sweep_table(series))
    written = plot_accuracy_vs_eps(series, plot_path, f"{label}: robust accuracy vs ε ({suite} suite)")
    echo(f"ε sweep of {label} ({len(ids)} examples, scales {scales}) -> {store.path}; plot -> {written}")
    if any(point.flagged for points in series.values() for point in points):
        echo("warning: accuracy rose with ε for some threat (flagged above): the attack is unreliable there")
    return written
