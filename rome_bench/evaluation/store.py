"""The results store: per-example correctness in SQLite.

One row per (model content hash, threat key, dataset fingerprint, example id). A threat key is the registry name
plus a hash of every parameter (``pgd-linf:1a2b…``), so results of different budgets or steps never mix. Each
batch is committed in its own transaction: a killed evaluation loses only the batch in flight, and a re-run
skips every stored example.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_hash TEXT PRIMARY KEY, label TEXT NOT NULL, method TEXT, run_dir TEXT, metadata TEXT
);
CREATE TABLE IF NOT EXISTS threats (
    threat_key TEXT PRIMARY KEY, name TEXT NOT NULL, column_name TEXT NOT NULL, tag TEXT, params TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    model_hash TEXT NOT NULL, threat_key TEXT NOT NULL, dataset TEXT NOT NULL, example_id INTEGER NOT NULL,
    correct INTEGER NOT NULL,
    PRIMARY KEY (model_hash, threat_key, dataset, example_id)
);
CREATE TABLE IF NOT EXISTS suite_runs (
    model_hash TEXT NOT NULL, suite TEXT NOT NULL, dataset TEXT NOT NULL, dataset_name TEXT NOT NULL,
    threat_keys TEXT NOT NULL, example_ids TEXT NOT NULL, finished_at TEXT NOT NULL,
    PRIMARY KEY (model_hash, suite, dataset)
);
"""


@dataclass(frozen=True)
class SuiteRun:
    """A completed evaluation of one model on one suite: which threats, which examples."""

    model_hash: str
    suite: str
    dataset: str
    dataset_name: str
    threat_keys: list[str]
    example_ids: list[int]
    label: str
    method: str | None


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path)
        self._connection.executescript(SCHEMA)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record_model(self, model_hash: str, label: str, method: str | None, run_dir: str | None,
                     metadata: dict[str, Any]) -> None:
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                (model_hash, label, method, run_dir, json.dumps(metadata, sort_keys=True, default=str)))

    def record_threat(self, key: str, name: str, column: str, tag: str, params: dict[str, Any]) -> None:
        with self._connection:
            self._connection.execute("INSERT OR REPLACE INTO threats VALUES (?, ?, ?, ?, ?)",
                                     (key, name, column, tag, json.dumps(params, sort_keys=True, default=str)))

    def stored_example_ids(self, model_hash: str, threat_key: str, dataset: str) -> set[int]:
        rows = self._connection.execute(
            "SELECT example_id FROM results WHERE model_hash=? AND threat_key=? AND dataset=?",
            (model_hash, threat_key, dataset))
        return {row[0] for row in rows}

    def add_results(self, model_hash: str, threat_key: str, dataset: str, example_ids: Sequence[int],
                    correct: Sequence[bool]) -> None:
        """Store one batch atomically."""
        rows = [(model_hash, threat_key, dataset, int(i), int(bool(c))) for i, c in zip(example_ids, correct,
                                                                                            strict=True)]
        with self._connection:
            self._connection.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)", rows)

    def correctness(self, model_hash: str, threat_key: str, dataset: str) -> dict[int, bool]:
        rows = self._connection.execute(
            "SELECT example_id, correct FROM results WHERE model_hash=? AND threat_key=? AND dataset=?",
            (model_hash, threat_key, dataset))
        return {example_id: bool(correct) for example_id, correct in rows}

    def record_suite_run(self, model_hash: str, suite: str, dataset: str, dataset_name: str,
                         threat_keys: Iterable[str], example_ids: Iterable[int], finished_at: str) -> None:
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO suite_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model_hash, suite, dataset, dataset_name, json.dumps(list(threat_keys)),
                 json.dumps([int(i) for i in example_ids]), finished_at))

    def suite_runs(self, suite: str, dataset_name: str | None = None) -> list[SuiteRun]:
        query = ("SELECT s.model_hash, s.suite, s.dataset, s.dataset_name, s.threat_keys, s.example_ids, "
                 "m.label, m.method FROM suite_runs s JOIN models m USING (model_hash) WHERE s.suite = ?")
        arguments: list[Any] = [suite]
        if dataset_name is not None:
            query += " AND s.dataset_name = ?"
            arguments.append(dataset_name)
        rows = self._connection.execute(query + " ORDER BY s.finished_at", arguments)
        return [SuiteRun(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6], r[7]) for r in rows]

    def threat_column(self, threat_key: str) -> str:
        row = self._connection.execute("SELECT column_name FROM threats WHERE threat_key=?", (threat_key,)).fetchone()
        if row is None:
            raise KeyError(threat_key)
        return row[0]
