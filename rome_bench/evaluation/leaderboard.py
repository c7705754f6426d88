"""Leaderboards from the store, in the paper's Table 1 layout: Method | Nat | ℓ1 | ℓ2 | ℓ∞ | Avg | Union.

* Every cell is an accuracy on the same n examples with its 95% Wilson interval.
* Union is computed per example: an example counts only if it is correct under every threat of the suite
  (never the minimum of the per-threat accuracies, which overstates it).
* Avg is the mean of the threat columns; its interval pools the threats' n·P outcomes (approximate, since the
  outcomes of one example under different threats are correlated).
* Rows are sorted by Union; reference rows (numbers reported by a paper) carry no n and no interval.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rome_bench.evaluation.reference import ReferenceRow
from rome_bench.evaluation.store import ResultStore, SuiteRun
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


def union_cell(per_threat: list[dict[int, bool]], example_ids: list[int]) -> Cell:
    """Examples correct under every threat, counted per example."""
    robust = sum(all(results[i] for results in per_threat) for i in example_ids)
    return Cell(robust, len(example_ids))


def measured_row(store: ResultStore, run: SuiteRun, suite: Suite) -> Row | None:
    """A row from a stored suite run; None when some of its results are missing."""
    by_column: dict[str, dict[int, bool]] = {}
    for key in run.threat_keys:
        results = store.correctness(run.model_hash, key, run.dataset)
        if any(i not in results for i in run.example_ids):
            return None
        by_column[store.threat_column(key)] = results
    cells = {column: Cell(sum(by_column[column][i] for i in run.example_ids), len(run.example_ids))
             for column in suite.columns if column in by_column}
    threat_columns = [column for column in suite.columns if column != "nat" and column in by_column]
    cells["union"] = union_cell([by_column[c] for c in threat_columns], run.example_ids)
    cells["avg"] = Cell(sum(cells[c].correct for c in threat_columns), sum(cells[c].total for c in threat_columns))
    return Row(label=run.label, method=run.method, dataset=run.dataset_name, n=len(run.example_ids),
               values={c: cell.accuracy for c, cell in cells.items()},
               intervals={c: cell.interval for c, cell in cells.items()})


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


def _cell_text(row: Row, column: str) -> str:
    value = row.values.get(column)
    if value is None or math.isnan(value):
        return "–"
    if column not in row.intervals:
        return f"{100 * value:.1f}"
    low, high = row.intervals[column]
    return f"{100 * value:.1f} ({100 * low:.1f}–{100 * high:.1f})"


def render_markdown(rows: list[Row], suite: Suite) -> str:
    columns = _columns(suite)
    lines: list[str] = []
    for dataset in sorted({row.dataset for row in rows}):
        lines += [f"### {suite.name} suite on {dataset} — accuracy % (95% Wilson interval)", ""]
        lines.append("| Method | n | " + " | ".join(title for _, title in columns) + " | Source |")
        lines.append("|---|---:|" + "---:|" * len(columns) + "---|")
        for row in (r for r in rows if r.dataset == dataset):
            cells = " | ".join(_cell_text(row, c) for c, _ in columns)
            lines.append(f"| {row.label} | {row.n if row.n is not None else '–'} | {cells} | {row.source} |")
        lines.append("")
    return "\n".join(lines) if lines else f"no results for suite '{suite.name}' yet; run rome-bench eval first"


def render_csv(rows: list[Row], suite: Suite) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = [c for c, _ in _columns(suite)]
    header = ["method", "label", "dataset", "n", "source"]
    for column in columns:
        header += [column, f"{column}_low", f"{column}_high"]
    writer.writerow(header)
    for row in rows:
        record: list[Any] = [row.method, row.label, row.dataset, row.n, row.source]
        for column in columns:
            low, high = row.intervals.get(column, (None, None))
            record += [row.values.get(column), low, high]
        writer.writerow(record)
    return buffer.getvalue()


def render_json(rows: list[Row], suite: Suite) -> str:
    payload = {"suite": suite.name, "columns": [c for c, _ in _columns(suite)], "rows": [
        {"label": row.label, "method": row.method, "dataset": row.dataset, "n": row.n, "source": row.source,
         "accuracy": row.values, "wilson95": {c: list(v) for c, v in row.intervals.items()}}
        for row in rows]}
    return json.dumps(payload, indent=2, ensure_ascii=False)


RENDERERS = {"md": render_markdown, "csv": render_csv, "json": render_json}
