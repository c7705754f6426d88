"""Exports of stored results: the per-example matrix (examples × threats) as a pandas DataFrame, CSV or Parquet.

One row per (model, example): ``label, model_hash, dataset, example_id`` and then one column per threat of the
suite (1 robust / 0 not; empty where a union-only cascade skipped an example already broken, or where the threat
does not apply to the model) and ``union``. Threats sharing a column get the differing parameters appended.
``pandas.read_csv(path)`` loads it; ``df.groupby("label").mean(numeric_only=True)`` gives the leaderboard.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rome_bench.errors import ConfigError
from rome_bench.evaluation.store import ResultStore, SuiteRun
from rome_bench.evaluation.suites import Suite

if TYPE_CHECKING:
    import pandas as pd

MATRIX_KEYS = ("label", "model_hash", "dataset", "example_id")


def threat_headers(store: ResultStore, keys: list[str]) -> dict[str, str]:
    """A CSV header per threat: its column, plus the parameters that differ where several threats share a column
    (e.g. ``corr/fog/3`` for fog at severity 3)."""
    by_column: dict[str, list[str]] = {}
    for key in keys:
        by_column.setdefault(store.threat_column(key), []).append(key)
    headers: dict[str, str] = {}
    for column, group in by_column.items():
        if len(group) == 1:
            headers[group[0]] = column
            continue
        params = {key: store.threat_params(key) for key in group}
        varying = sorted({name for p in params.values() for name in p
                          if len({json.dumps(q.get(name), default=str) for q in params.values()}) > 1})
        for key in group:
            headers[key] = "/".join([column, *(str(params[key].get(name)) for name in varying)])
    return headers


def per_example_rows(store: ResultStore, run: SuiteRun) -> list[dict[str, object]]:
    """The run's per-example results as dicts: threat columns hold 1, 0 or None (not attacked or n/a)."""
    headers = threat_headers(store, run.threat_keys)
    results = {key: store.correctness(run.model_hash, key, run.dataset) for key in run.threat_keys
               if not store.not_applicable(run.model_hash, key, run.dataset)}
    rows: list[dict[str, object]] = []
    for example_id in run.example_ids:
        row: dict[str, object] = {"label": run.label, "model_hash": run.model_hash, "dataset": run.dataset_name,
                                  "example_id": example_id}
        for key in run.threat_keys:
            value = results.get(key, {}).get(example_id)
            row[headers[key]] = None if value is None else int(value)
        row["union"] = int(all(r.get(example_id, False) for r in results.values()))
        rows.append(row)
    return rows


def matrix_frame(store: ResultStore, suite: Suite, dataset: str | None = None) -> pd.DataFrame:
    """Every completed run of ``suite`` (optionally on one dataset) as one per-example DataFrame: the key columns,
    one nullable-integer column per threat (1, 0, or missing) and ``union``."""
    import pandas as pd

    runs = store.suite_runs(suite.name, dataset)
    rows = [row for run in runs for row in per_example_rows(store, run)]
    threat_fields = list(dict.fromkeys(name for row in rows for name in row if name not in (*MATRIX_KEYS, "union")))
    frame = pd.DataFrame.from_records(rows, columns=[*MATRIX_KEYS, *threat_fields, "union"])
    return frame.astype({name: "Int64" for name in [*threat_fields, "union"]} | {"example_id": "int64"})


def matrix_csv(store: ResultStore, suite: Suite, dataset: str | None = None) -> str:
    """:func:`matrix_frame` as CSV text (``pandas.read_csv`` reads it back)."""
    return matrix_frame(store, suite, dataset).to_csv(index=False, lineterminator="\n")


def matrix_parquet(store: ResultStore, suite: Suite, dataset: str | None = None) -> bytes:
    """:func:`matrix_frame` as Parquet bytes; needs pyarrow (one-line error without it)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError as error:
        raise ConfigError("writing .parquet needs pyarrow: pip install pyarrow (or export to .csv)") from error
    buffer = io.BytesIO()
    matrix_frame(store, suite, dataset).to_parquet(buffer, index=False)
    return buffer.getvalue()


def export_matrix(out: Path, suite: str = "seen", dataset: str | None = None, store: Path | None = None) -> str:
    """``rome-bench export``: the per-example matrix of every completed run of ``suite`` in ``store`` (which must
    exist; None: the default store) written atomically to ``out``, Parquet for a .parquet name, else CSV; what was
    written, in one line."""
    from rome_bench.checkpoint import atomic_write_bytes, atomic_write_text
    from rome_bench.evaluation.store import existing_store
    from rome_bench.evaluation.suites import SUITES

    chosen = SUITES.get(suite)
    with ResultStore(existing_store(store)) as results:  # type: ignore[arg-type]
        if out.suffix == ".parquet":
            atomic_write_bytes(out, matrix_parquet(results, chosen, dataset))
            return f"per-example matrix -> {out} (pandas.read_parquet)"
        text = matrix_csv(results, chosen, dataset)
    atomic_write_text(out, text)
    return f"{text.count(chr(10)) - 1} example rows -> {out} (pandas.read_csv)"
