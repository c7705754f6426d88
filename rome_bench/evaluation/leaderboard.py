"""Leaderboards from the store, in the paper's Table 1 layout: Method | Nat | ℓ1 | ℓ2 | ℓ∞ | Avg | Union.

* Every cell is an accuracy on the same n examples with its 95% Wilson interval.
* Union is computed per example: an example counts only if it is correct under every threat of the suite
  (never the minimum of the per-threat accuracies, which overstates it).
* Avg is the mean of the threat columns; its interval pools the threats' n·P outcomes (approximate, since the
  outcomes of one example under different threats are correlated).
* Rows are sorted by Union; reference rows (numbers reported by a paper) carry no n and no interval.
* A union-only run (``--union-only``, a cascade) fills Nat and Union only; its per-threat cells show "–".
* The Flags column lists the validity flags stored for the row's threats (see ``validity.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rome_bench.evaluation.reference import ReferenceRow
from rome_bench.evaluation.store import UNION_ONLY, BatchCost, ResultStore, SuiteRun
from rome_bench.evaluation.suites import Suite

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Cell:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Row:
    label: str
    method: str | None
    dataset: str
    n: int | None
    values: dict[str, float]  # column -> accuracy in [0, 1], including 'avg' and 'union'
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    source: str = "measured"
    flags: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> flag -> examples
    costs: dict[str, BatchCost] = field(default_factory=dict)  # column -> what its threat cost
    mode: str = "full"
    model_hash: str | None = None
    counts: dict[str, Cell] = field(default_factory=dict)  # column -> correct/total, for tolerance checks


def union_cell(per_threat: list[dict[int, bool]], example_ids: list[int]) -> Cell:
    """Examples correct under every threat, counted per example (an example missing a result is not robust)."""
    robust = sum(all(results.get(i, False) for results in per_threat) for i in example_ids)
    return Cell(robust, len(example_ids))


def _union_complete(per_threat: list[dict[int, bool]], example_ids: list[int]) -> bool:
    """Every example either has all results, or is already broken by a stored result (a cascade skips those)."""
    return all(all(i in results for results in per_threat) or any(results.get(i) is False for results in per_threat)
               for i in example_ids)


def measured_row(store: ResultStore, run: SuiteRun, suite: Suite) -> Row | None:
    """A row from a stored suite run; None when some of its results are missing."""
    by_column: dict[str, dict[int, bool]] = {}
    key_of: dict[str, str] = {}
    for key in run.threat_keys:
        column = store.threat_column(key)
        by_column[column], key_of[column] = store.correctness(run.model_hash, key, run.dataset), key
    threat_columns = [column for column in suite.columns if column != "nat" and column in by_column]
    everything = [by_column[c] for c in ("nat", *threat_columns) if c in by_column]
    full = run.mode != UNION_ONLY
    if full and any(i not in results for results in everything for i in run.example_ids):
        return None
    if not full and not _union_complete(everything, run.example_ids):
        return None
    shown = [c for c in suite.columns if c in by_column and (full or c == "nat")]
    cells = {column: Cell(sum(by_column[column][i] for i in run.example_ids), len(run.example_ids))
             for column in shown}
    cells["union"] = union_cell(everything, run.example_ids)
    if full:
        cells["avg"] = Cell(sum(cells[c].correct for c in threat_columns), sum(cells[c].total for c in threat_columns))
    return Row(label=run.label, method=run.method, dataset=run.dataset_name, n=len(run.example_ids),
               values={c: cell.accuracy for c, cell in cells.items()},
               intervals={c: cell.interval for c, cell in cells.items()},
               flags={c: f for c, key in key_of.items() if (f := store.flags(run.model_hash, key, run.dataset))},
               costs={c: cost for c, key in key_of.items() if (cost := store.cost(run.model_hash, key, run.dataset))},
               mode=run.mode, model_hash=run.model_hash, counts=cells)


def build_leaderboard(store: ResultStore, suite: Suite, dataset: str | None = None,
                      references: list[ReferenceRow] | None = None) -> list[Row]:
    rows = [row for run in store.suite_runs(suite.name, dataset) if (row := measured_row(store, run, suite))]
    for reference in references or []:
        if dataset is None or reference.dataset == dataset:
            rows.append(Row(label=reference.label, method=reference.method, dataset=reference.dataset, n=None,
                            values=dict(reference.values), source=reference.source))
    return sorted(rows, key=lambda row: (row.dataset, -row.values.get("union", -1.0)))


def _columns(suite: Suite) -> list[tuple[str, str]]:
    return [(c, suite.titles.get(c, c)) for c in suite.columns] + [("avg", "Avg"), ("union", "Union")]


def flags_text(row: Row, suite: Suite) -> str:
    """The row's validity flags, e.g. 'zero-gradient×3 (Nat); black-box-success×1 (ℓ2)'; '–' when none."""
    parts = [f"{flag}×{count} ({suite.titles.get(column, column)})"
             for column in suite.columns if column in row.flags for flag, count in row.flags[column].items()]
    return "; ".join(parts) if parts else "–"


def costs_text(row: Row, suite: Suite) -> str:
    """Per threat: wall seconds per 100 examples and forward+backward images per attacked example."""
    parts = []
    for column in suite.columns:
        cost = row.costs.get(column)
        if cost is None or not cost.examples:
            continue
        per_attacked = (cost.forward_images + cost.backward_images) / max(cost.attacked, 1)
        parts.append(f"{suite.titles.get(column, column)} {100 * cost.seconds / cost.examples:.1f}s/100 "
                     f"{per_attacked:.0f}f+b")
    return "; ".join(parts) if parts else "–"


def _cell_text(row: Row, column: str) -> str:
    value = row.values.get(column)
    if value is None or math.isnan(value):
        return "–"
    if column not in row.intervals:
        return f"{100 * value:.1f}"
    low, high = row.intervals[column]
    return f"{100 * value:.1f} ({100 * low:.1f}–{100 * high:.1f})"


def render_markdown(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    columns = _columns(suite)
    lines: list[str] = []
    for dataset in sorted({row.dataset for row in rows}):
        lines += [f"### {suite.name} suite on {dataset} — accuracy % (95% Wilson interval)", ""]
        extra = " Cost |" if costs else ""
        lines.append("| Method | n | " + " | ".join(title for _, title in columns) + f" | Flags | Source |{extra}")
        lines.append("|---|---:|" + "---:|" * len(columns) + "---|---|" + ("---|" if costs else ""))
        for row in (r for r in rows if r.dataset == dataset):
            cells = " | ".join(_cell_text(row, c) for c, _ in columns)
            source = row.source + (" (union only)" if row.mode == UNION_ONLY else "")
            cost = f" {costs_text(row, suite)} |" if costs else ""
            lines.append(f"| {row.label} | {row.n if row.n is not None else '–'} | {cells} | "
                         f"{flags_text(row, suite)} | {source} |{cost}")
        lines.append("")
    return "\n".join(lines) if lines else f"no results for suite '{suite.name}' yet; run rome-bench eval first"


def render_csv(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = [c for c, _ in _columns(suite)]
    header = ["method", "label", "dataset", "n", "source", "mode", "flags"]
    for column in columns:
        header += [column, f"{column}_low", f"{column}_high"]
    threat_columns = list(suite.columns)
    if costs:
        for column in threat_columns:
            header += [f"{column}_seconds", f"{column}_forward_images", f"{column}_backward_images"]
    writer.writerow(header)
    for row in rows:
        flags = "" if flags_text(row, suite) == "–" else flags_text(row, suite)
        record: list[Any] = [row.method, row.label, row.dataset, row.n, row.source, row.mode, flags]
        for column in columns:
            low, high = row.intervals.get(column, (None, None))
            record += [row.values.get(column), low, high]
        if costs:
            for column in threat_columns:
                cost = row.costs.get(column)
                record += [cost.seconds, cost.forward_images, cost.backward_images] if cost else [None] * 3
        writer.writerow(record)
    return buffer.getvalue()


def render_json(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    payload = {"suite": suite.name, "columns": [c for c, _ in _columns(suite)], "rows": [
        {"label": row.label, "method": row.method, "dataset": row.dataset, "n": row.n, "source": row.source,
         "mode": row.mode, "accuracy": row.values, "wilson95": {c: list(v) for c, v in row.intervals.items()},
         "flags": row.flags, **({"costs": {c: dataclasses.asdict(v) for c, v in row.costs.items()}} if costs else {})}
        for row in rows]}
    return json.dumps(payload, indent=2, ensure_ascii=False)


def _render_latex(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    from rome_bench.evaluation.latex import render_latex

    return render_latex(rows, suite)


RENDERERS: dict[str, Callable[..., str]] = {"md": render_markdown, "csv": render_csv, "json": render_json,
                                            "tex": _render_latex}
