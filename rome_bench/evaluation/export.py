"""Exports of stored results: the per-example matrix (examples × threats) as CSV for pandas.

One row per (model, example): ``label, model_hash, dataset, example_id`` and then one column per threat of the
suite (1 robust / 0 not; empty where a union-only cascade skipped an example already broken) and ``union``.
``pandas.read_csv(path)`` loads it; ``df.groupby("label").mean(numeric_only=True)`` gives the leaderboard.
"""

from __future__ import annotations

import csv
import io

from rome_bench.evaluation.store import ResultStore, SuiteRun
from rome_bench.evaluation.suites import Suite

MATRIX_KEYS = ("label", "model_hash", "dataset", "example_id")


def per_example_rows(store: ResultStore, run: SuiteRun, suite: Suite) -> list[dict[str, object]]:
    """The run's per-example results as dicts: threat columns hold 1, 0 or None (not attacked)."""
    by_column = {store.threat_column(key): store.correctness(run.model_hash, key, run.dataset)
                 for key in run.threat_keys}
    rows: list[dict[str, object]] = []
    for example_id in run.example_ids:
        row: dict[str, object] = {"label": run.label, "model_hash": run.model_hash, "dataset": run.dataset_name,
                                  "example_id": example_id}
        for column in suite.columns:
            value = by_column.get(column, {}).get(example_id)
            row[column] = None if value is None else int(value)
        row["union"] = int(all(by_column[c].get(example_id, False) for c in by_column))
        rows.append(row)
    return rows


def matrix_csv(store: ResultStore, suite: Suite, dataset: str | None = None) -> str:
    """Every completed run of ``suite`` (optionally on one dataset) as one per-example CSV table."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*MATRIX_KEYS, *suite.columns, "union"])
    writer.writeheader()
    for run in store.suite_runs(suite.name, dataset):
        writer.writerows(per_example_rows(store, run, suite))
    return buffer.getvalue()

