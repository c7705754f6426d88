"""The results store: per-example correctness in SQLite.

One row per (model content hash, threat key, dataset fingerprint, example id). A threat key is the registry name
plus a hash of every parameter (``pgd-linf:1a2b…``), so results of different budgets or steps never mix. Each
batch is committed in its own transaction: a killed evaluation loses only the batch in flight, and a re-run
skips every stored example.

Every result refers to the provenance of the process that computed it (``provenance`` table: world size, executor,
device, dtype, TF32 and autocast settings, library versions, git commit); results of stores written before
provenance was recorded have none. Sharded evaluation merges units of work (``units`` table, see ``sharding.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rome_bench.errors import RomeBenchError, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    model_hash TEXT PRIMARY KEY, label TEXT NOT NULL, method TEXT, run_dir TEXT, metadata TEXT
);
CREATE TABLE IF NOT EXISTS threats (
    threat_key TEXT PRIMARY KEY, name TEXT NOT NULL, column_name TEXT NOT NULL, tag TEXT, params TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    model_hash TEXT NOT NULL, threat_key TEXT NOT NULL, dataset TEXT NOT NULL, example_id INTEGER NOT NULL,
    correct INTEGER NOT NULL, provenance TEXT,
    PRIMARY KEY (model_hash, threat_key, dataset, example_id)
);
CREATE TABLE IF NOT EXISTS provenance (
    provenance_id TEXT PRIMARY KEY, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS units (
    unit_key TEXT PRIMARY KEY, model_hash TEXT NOT NULL, threat_key TEXT NOT NULL, dataset TEXT NOT NULL,
    first_example INTEGER NOT NULL, n_examples INTEGER NOT NULL, merged_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS suite_runs (
    model_hash TEXT NOT NULL, suite TEXT NOT NULL, dataset TEXT NOT NULL, dataset_name TEXT NOT NULL,
    threat_keys TEXT NOT NULL, example_ids TEXT NOT NULL, finished_at TEXT NOT NULL, mode TEXT NOT NULL DEFAULT 'full',
    PRIMARY KEY (model_hash, suite, dataset)
);
CREATE TABLE IF NOT EXISTS costs (
    model_hash TEXT NOT NULL, threat_key TEXT NOT NULL, dataset TEXT NOT NULL, examples INTEGER NOT NULL,
    attacked INTEGER NOT NULL, seconds REAL NOT NULL, forward_images INTEGER NOT NULL,
    backward_images INTEGER NOT NULL,
    PRIMARY KEY (model_hash, threat_key, dataset)
);
CREATE TABLE IF NOT EXISTS flags (
    model_hash TEXT NOT NULL, threat_key TEXT NOT NULL, dataset TEXT NOT NULL, flag TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (model_hash, threat_key, dataset, flag)
);
CREATE TABLE IF NOT EXISTS not_applicable (
    model_hash TEXT NOT NULL, threat_key TEXT NOT NULL, dataset TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (model_hash, threat_key, dataset)
);
CREATE TABLE IF NOT EXISTS sweeps (
    model_hash TEXT NOT NULL, suite TEXT NOT NULL, dataset TEXT NOT NULL, threat_name TEXT NOT NULL,
    scale REAL NOT NULL, eps REAL NOT NULL, threat_key TEXT NOT NULL, example_ids TEXT NOT NULL,
    PRIMARY KEY (model_hash, suite, dataset, threat_name, scale)
);
CREATE TABLE IF NOT EXISTS gating_scores (
    model_hash TEXT NOT NULL, suite TEXT NOT NULL, dataset TEXT NOT NULL, dataset_name TEXT NOT NULL,
    n_examples INTEGER NOT NULL, divergence REAL NOT NULL, classifier_accuracy REAL NOT NULL, chance REAL NOT NULL,
    per_layer TEXT NOT NULL, threats TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (model_hash, suite, dataset)
);
"""

FULL, UNION_ONLY = "full", "union"
PREFERRED_GATING_SUITE = "seen"  # the suite whose gating score a leaderboard shows when a model has several


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
    mode: str = FULL


@dataclass(frozen=True)
class BatchCost:
    """What one batch of one threat cost: examples seen, examples attacked, wall time, images through the model."""

    examples: int
    attacked: int
    seconds: float
    forward_images: int
    backward_images: int


@dataclass(frozen=True)
class Progress:
    """What the store holds of one threat on one model and dataset: all the runner asks before attacking."""

    done: dict[int, bool]  # example id -> correct, for every example with a stored result under the threat
    clean_correct: dict[int, bool]  # example id -> correct under the clean threat (which examples to attack)
    not_applicable: str | None  # why the threat was stored as not applying to the model, or None


@dataclass(frozen=True)
class SweepPointRecord:
    threat_name: str
    scale: float
    eps: float
    threat_key: str
    example_ids: list[int]


@dataclass(frozen=True)
class GatingScore:
    """How differently a model's gates route the threats of a suite (see ``gating_analysis.py``).

    ``divergence`` is the mean over gated layers of ``per_layer`` (layer name -> mean pairwise L2 distance between
    the threats' mean gate vectors); ``classifier_accuracy`` is a held-out threat classifier's accuracy on the
    gates, against ``chance`` = 1/len(threats). ``dataset`` is the dataset fingerprint.
    """

    model_hash: str
    suite: str
    dataset: str
    dataset_name: str
    n_examples: int
    divergence: float
    classifier_accuracy: float
    chance: float
    per_layer: dict[str, float]
    threats: list[str]
    created: str


RESULT_COLUMNS = "model_hash, threat_key, dataset, example_id, correct, provenance"
ADD_COSTS = ("ON CONFLICT (model_hash, threat_key, dataset) DO UPDATE SET "
             "examples = examples + excluded.examples, attacked = attacked + excluded.attacked, "
             "seconds = seconds + excluded.seconds, forward_images = forward_images + excluded.forward_images, "
             "backward_images = backward_images + excluded.backward_images")
ADD_FLAGS = "ON CONFLICT (model_hash, threat_key, dataset, flag) DO UPDATE SET count = count + excluded.count"


class ResultStore:
    """A results store; ``read_only`` opens an existing one without writing to it (not even the schema)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self._provenance: str | None = None
        try:
            if read_only:
                self._connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path)
            self._connection.executescript(SCHEMA)
            self._migrate()
        except sqlite3.Error as error:
            raise StoreError(f"results store {self.path}: {error}; give --store a writable SQLite file with free "
                             f"space (nothing in it was changed)") from error

    def _migrate(self) -> None:
        """Bring a store written by an older rome-bench up to this schema (columns are only ever added)."""
        added = {"suite_runs": ("mode", "TEXT NOT NULL DEFAULT 'full'"), "results": ("provenance", "TEXT")}
        for table, (column, declaration) in added.items():
            if column not in {row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")}:
                with self._connection:
                    self._connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def use_provenance(self, record: dict[str, Any]) -> str:
        """Store a provenance record; every result added from now on refers to it. Returns its id."""
        text = json.dumps(record, sort_keys=True, default=str)
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        with self._connection:
            self._connection.execute("INSERT OR IGNORE INTO provenance VALUES (?, ?)", (key, text))
        self._provenance = key
        return key

    def provenance(self, model_hash: str, threat_key: str, dataset: str) -> list[dict[str, Any]]:
        """The distinct provenance records of a threat's stored results ({} for results stored without one)."""
        rows = self._connection.execute(
            "SELECT DISTINCT p.record FROM results r LEFT JOIN provenance p ON p.provenance_id = r.provenance "
            "WHERE r.model_hash=? AND r.threat_key=? AND r.dataset=? ORDER BY p.record",
            (model_hash, threat_key, dataset))
        return [json.loads(record) if record else {} for (record,) in rows]

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

    def model_metadata(self, model_hash: str) -> dict[str, Any]:
        """What :meth:`record_model` stored about the model besides its label ({} for an unknown hash)."""
        row = self._connection.execute("SELECT metadata FROM models WHERE model_hash=?", (model_hash,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def model_run_dir(self, model_hash: str) -> str | None:
        """Where :meth:`record_model` said the model came from (a run directory, or an external source)."""
        row = self._connection.execute("SELECT run_dir FROM models WHERE model_hash=?", (model_hash,)).fetchone()
        return row[0] if row else None

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
                    correct: Sequence[bool], cost: BatchCost | None = None,
                    flags: dict[str, int] | None = None) -> None:
        """Store one batch atomically: its per-example results, what it cost, and the validity flags it raised."""
        rows = [(model_hash, threat_key, dataset, int(i), int(bool(c)), self._provenance)
                for i, c in zip(example_ids, correct, strict=True)]
        with self._connection:
            self._connection.executemany(f"INSERT OR REPLACE INTO results ({RESULT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                                         rows)
            if cost is not None:
                self._connection.execute(
                    f"INSERT INTO costs VALUES (?, ?, ?, ?, ?, ?, ?, ?) {ADD_COSTS}",
                    (model_hash, threat_key, dataset, cost.examples, cost.attacked, cost.seconds,
                     cost.forward_images, cost.backward_images))
            for flag, count in (flags or {}).items():
                self._connection.execute(
                    f"INSERT INTO flags VALUES (?, ?, ?, ?, ?) {ADD_FLAGS}",
                    (model_hash, threat_key, dataset, flag, int(count)))

    def merged_units(self) -> set[str]:
        """The keys of the units of work a sharded evaluation has merged into this store."""
        return {row[0] for row in self._connection.execute("SELECT unit_key FROM units")}

    def merge_units(self, path: Path, units: Sequence[tuple[str, str]], model_hash: str, dataset: str,
                    example_ids: Sequence[int], merged_at: str) -> int:
        """Copy a unit file's units, (unit key, threat key) pairs not merged yet, in one transaction; how many.

        A result this store holds already is kept (the worker read it instead of computing it); costs and flags add
        up, which is right because each unit is merged once: its key is recorded in the same transaction.
        """
        merged = self.merged_units()
        todo = [(unit, key) for unit, key in units if unit not in merged]
        if not todo:
            return 0
        where = "WHERE model_hash=? AND threat_key=? AND dataset=?"
        self._connection.execute("ATTACH DATABASE ? AS unit", (str(path),))
        try:
            with self._connection:
                self._connection.execute("INSERT OR IGNORE INTO provenance SELECT * FROM unit.provenance")
                for unit, key in todo:
                    scope = (model_hash, key, dataset)
                    self._connection.execute(f"INSERT OR IGNORE INTO results ({RESULT_COLUMNS}) "
                                             f"SELECT {RESULT_COLUMNS} FROM unit.results {where}", scope)
                    self._connection.execute(f"INSERT INTO costs SELECT * FROM unit.costs {where} {ADD_COSTS}", scope)
                    self._connection.execute(f"INSERT INTO flags SELECT * FROM unit.flags {where} {ADD_FLAGS}", scope)
                    self._connection.execute(  # results for a threat marked n/a by an older rome-bench clear it
                        f"DELETE FROM not_applicable {where} AND EXISTS (SELECT 1 FROM unit.results {where})",
                        scope + scope)
                    self._connection.execute(
                        f"INSERT OR REPLACE INTO not_applicable SELECT * FROM unit.not_applicable {where}", scope)
                    self._connection.execute(
                        "INSERT OR REPLACE INTO threats SELECT * FROM unit.threats WHERE threat_key=?", (key,))
                    self._connection.execute("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)",
                                             (unit, model_hash, key, dataset, int(example_ids[0]), len(example_ids),
                                              merged_at))
        finally:
            self._connection.execute("DETACH DATABASE unit")
        return len(todo)

    def set_flag(self, model_hash: str, threat_key: str, dataset: str, flag: str, count: int) -> None:
        """Set (not add to) a flag computed from stored results; a count of 0 removes it."""
        with self._connection:
            self._connection.execute("DELETE FROM flags WHERE model_hash=? AND threat_key=? AND dataset=? AND flag=?",
                                     (model_hash, threat_key, dataset, flag))
            if count:
                self._connection.execute("INSERT INTO flags VALUES (?, ?, ?, ?, ?)",
                                         (model_hash, threat_key, dataset, flag, int(count)))

    def mark_not_applicable(self, model_hash: str, threat_key: str, dataset: str, reason: str) -> None:
        """Record that a threat cannot attack this model (e.g. a gating attack on a model without gates)."""
        with self._connection:
            self._connection.execute("INSERT OR REPLACE INTO not_applicable VALUES (?, ?, ?, ?)",
                                     (model_hash, threat_key, dataset, reason))

    def clear_not_applicable(self, model_hash: str, threat_key: str, dataset: str) -> None:
        """Forget a not-applicable mark (an older rome-bench's, for a threat that applies to the model now)."""
        with self._connection:
            self._connection.execute("DELETE FROM not_applicable WHERE model_hash=? AND threat_key=? AND dataset=?",
                                     (model_hash, threat_key, dataset))

    def not_applicable(self, model_hash: str, threat_key: str, dataset: str) -> str | None:
        """Why the threat does not apply to the model, or None when it does."""
        row = self._connection.execute(
            "SELECT reason FROM not_applicable WHERE model_hash=? AND threat_key=? AND dataset=?",
            (model_hash, threat_key, dataset)).fetchone()
        return row[0] if row else None

    def flags(self, model_hash: str, threat_key: str, dataset: str) -> dict[str, int]:
        rows = self._connection.execute(
            "SELECT flag, count FROM flags WHERE model_hash=? AND threat_key=? AND dataset=? ORDER BY flag",
            (model_hash, threat_key, dataset))
        return dict(rows.fetchall())

    def cost(self, model_hash: str, threat_key: str, dataset: str) -> BatchCost | None:
        row = self._connection.execute(
            "SELECT examples, attacked, seconds, forward_images, backward_images FROM costs "
            "WHERE model_hash=? AND threat_key=? AND dataset=?", (model_hash, threat_key, dataset)).fetchone()
        return BatchCost(*row) if row else None

    def threats_of_model(self, model_hash: str, dataset: str) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(key, name, column, params) of every threat with stored results for this model on this dataset."""
        rows = self._connection.execute(
            "SELECT DISTINCT t.threat_key, t.name, t.column_name, t.params FROM results r "
            "JOIN threats t USING (threat_key) WHERE r.model_hash=? AND r.dataset=? ORDER BY t.threat_key",
            (model_hash, dataset))
        return [(key, name, column, json.loads(params)) for key, name, column, params in rows]

    def record_sweep_point(self, model_hash: str, suite: str, dataset: str, point: SweepPointRecord) -> None:
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO sweeps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model_hash, suite, dataset, point.threat_name, point.scale, point.eps, point.threat_key,
                 json.dumps([int(i) for i in point.example_ids])))

    def sweep_points(self, model_hash: str, suite: str, dataset: str) -> list[SweepPointRecord]:
        rows = self._connection.execute(
            "SELECT threat_name, scale, eps, threat_key, example_ids FROM sweeps "
            "WHERE model_hash=? AND suite=? AND dataset=? ORDER BY threat_name, eps", (model_hash, suite, dataset))
        return [SweepPointRecord(name, scale, eps, key, json.loads(ids)) for name, scale, eps, key, ids in rows]

    def correctness(self, model_hash: str, threat_key: str, dataset: str) -> dict[int, bool]:
        rows = self._connection.execute(
            "SELECT example_id, correct FROM results WHERE model_hash=? AND threat_key=? AND dataset=?",
            (model_hash, threat_key, dataset))
        return {example_id: bool(correct) for example_id, correct in rows}

    def progress(self, model_hash: str, threat_key: str, dataset: str, clean_key: str) -> Progress:
        """How far the threat's evaluation of the model on ``dataset`` (a fingerprint) is: its stored results, the
        results of the clean threat ``clean_key``, and whether it was stored as not applicable."""
        return Progress(self.correctness(model_hash, threat_key, dataset),
                        self.correctness(model_hash, clean_key, dataset),
                        self.not_applicable(model_hash, threat_key, dataset))

    def record_suite_run(self, model_hash: str, suite: str, dataset: str, dataset_name: str,
                         threat_keys: Iterable[str], example_ids: Iterable[int], finished_at: str,
                         mode: str = FULL) -> None:
        """Record a completed suite run; a union-only run never replaces a full one of the same examples."""
        keys, ids = json.dumps(list(threat_keys)), json.dumps([int(i) for i in example_ids])
        with self._connection:
            existing = self._connection.execute(
                "SELECT threat_keys, example_ids, mode FROM suite_runs WHERE model_hash=? AND suite=? AND dataset=?",
                (model_hash, suite, dataset)).fetchone()
            if mode == UNION_ONLY and existing == (keys, ids, FULL):
                return
            self._connection.execute(
                "INSERT OR REPLACE INTO suite_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (model_hash, suite, dataset, dataset_name, keys, ids, finished_at, mode))

    def suite_runs(self, suite: str, dataset_name: str | None = None) -> list[SuiteRun]:
        query = ("SELECT s.model_hash, s.suite, s.dataset, s.dataset_name, s.threat_keys, s.example_ids, "
                 "m.label, m.method, s.mode FROM suite_runs s JOIN models m USING (model_hash) WHERE s.suite = ?")
        arguments: list[Any] = [suite]
        if dataset_name is not None:
            query += " AND s.dataset_name = ?"
            arguments.append(dataset_name)
        rows = self._connection.execute(query + " ORDER BY s.finished_at", arguments)
        return [SuiteRun(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6], r[7], r[8]) for r in rows]

    def threat_params(self, threat_key: str) -> dict[str, Any]:
        row = self._connection.execute("SELECT params FROM threats WHERE threat_key=?", (threat_key,)).fetchone()
        if row is None:
            raise KeyError(threat_key)
        return json.loads(row[0])

    def threat_name(self, threat_key: str) -> str:
        """The registry name a threat key was recorded under (KeyError for an unknown key)."""
        row = self._connection.execute("SELECT name FROM threats WHERE threat_key=?", (threat_key,)).fetchone()
        if row is None:
            raise KeyError(threat_key)
        return row[0]

    def threat_column(self, threat_key: str) -> str:
        row = self._connection.execute("SELECT column_name FROM threats WHERE threat_key=?", (threat_key,)).fetchone()
        if row is None:
            raise KeyError(threat_key)
        return row[0]

    def record_gating_score(self, score: GatingScore) -> None:
        """Store a gating score, replacing any earlier one of the same model, suite and dataset (one transaction)."""
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO gating_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (score.model_hash, score.suite, score.dataset, score.dataset_name, int(score.n_examples),
                 float(score.divergence), float(score.classifier_accuracy), float(score.chance),
                 json.dumps(score.per_layer), json.dumps(score.threats), score.created))

    def gating_score(self, model_hash: str, dataset: str, suite: str | None = None) -> GatingScore | None:
        """The model's gating score on the dataset (fingerprint): of ``suite``, or when None of the preferred
        suite (``seen``) if stored, else the newest one; None when there is none."""
        query = ("SELECT model_hash, suite, dataset, dataset_name, n_examples, divergence, classifier_accuracy, "
                 "chance, per_layer, threats, created FROM gating_scores WHERE model_hash=? AND dataset=?")
        arguments: list[Any] = [model_hash, dataset]
        if suite is not None:
            query += " AND suite=?"
            arguments.append(suite)
        query += " ORDER BY suite = ? DESC, created DESC, suite LIMIT 1"
        row = self._connection.execute(query, [*arguments, PREFERRED_GATING_SUITE]).fetchone()
        if row is None:
            return None
        model_hash, suite_name, fingerprint, name, n_examples, divergence, accuracy, chance, *rest = row
        return GatingScore(model_hash, suite_name, fingerprint, name, n_examples, divergence, accuracy, chance,
                           per_layer=json.loads(rest[0]), threats=json.loads(rest[1]), created=rest[2])


DEFAULT_STORE_NAME = "rome-bench.sqlite"
STORE_VARIABLE = "ROME_BENCH_STORE"


def default_store() -> Path:
    """The results store every command uses without --store: ``$ROME_BENCH_STORE`` if set, else
    ``./rome-bench.sqlite``, one per project directory (the directory a command runs in), never one global file."""
    return Path(os.environ.get(STORE_VARIABLE) or DEFAULT_STORE_NAME)


_DEFAULT_USED: list[Path] = []  # the default stores this process opened, for default_store_used()


def store_or_default(store: str | Path | None) -> Path:
    """``store``, or the default store, remembered for :func:`default_store_used` (the CLI says which, once the
    command succeeded, so results never land somewhere unseen and an error stays one line)."""
    if store is not None:
        return Path(store)
    _DEFAULT_USED.append(default_store().absolute())
    return default_store()


def default_store_used() -> Path | None:
    """The default store used since the last call, the latest one (None: every store was given explicitly)."""
    used = _DEFAULT_USED[-1] if _DEFAULT_USED else None
    _DEFAULT_USED.clear()
    return used


def existing_store(store: Path | None, optional: bool = False) -> Path | None:
    """The store a reading command opens: ``store``, which must exist (reading never creates one), else the default
    store, which must exist too, unless ``optional`` (then None when it does not)."""
    if store is not None and not store.exists():
        raise RomeBenchError(f"results store {store} does not exist; run rome-bench eval --store {store} first")
    if store is None and not default_store().exists():
        if optional:
            return None
        raise RomeBenchError(f"no results store here: {default_store()} does not exist (the default store is per "
                             f"directory); run rome-bench eval in this directory first, or give --store FILE")
    return store_or_default(store)
