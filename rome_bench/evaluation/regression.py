"""Regression checks against reference numbers: ``rome-bench check --reference FILE``.

A reference file (``leaderboards/reference/<name>.json``) lists checks; each names a model (a run directory,
relative to the file), a suite, a dataset split and a fixed seeded subset of ``n_examples``, and the counts of
correct examples it measured per column (``nat``, ``l1``, …, ``avg``, ``union``) out of ``totals``, plus the
fingerprint of the data they were measured on. ``check`` re-evaluates the model (in a fresh store unless one is
given), and a number passes when the re-measured accuracy lies inside the 95% Wilson interval of the reference
count: the tolerance is the binomial uncertainty of n examples, not a guessed constant, and it shrinks as n grows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rome_bench.checkpoint import atomic_write_text
from rome_bench.data import evaluation_indices, load_dataset
from rome_bench.errors import ConfigError, RomeBenchError
from rome_bench.evaluation.leaderboard import Z_95, Row, measured_row, wilson_interval
from rome_bench.evaluation.runner import evaluate_run, load_run
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.jsonfiles import read_json

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "leaderboards" / "reference"


@dataclass(frozen=True)
class CheckResult:
    check: str
    column: str
    reference: float
    measured: float
    low: float
    high: float

    @property
    def passed(self) -> bool:
        return self.low - 1e-12 <= self.measured <= self.high + 1e-12


def read_reference(path: Path) -> dict[str, Any]:
    """The reference document at ``path`` (or the name of one in leaderboards/reference/)."""
    if not path.suffix:
        path = REFERENCE_DIR / f"{path}.json"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in REFERENCE_DIR.glob("*.json"))) or "(none)"
        raise RomeBenchError(f"reference file '{path}' not found; available in {REFERENCE_DIR}: {available}")
    document = read_json(path, "regression reference")
    if not document["checks"]:
        raise ConfigError(f"reference file {path} has an empty 'checks' list; add a check or give another file")
    document["_path"] = str(path)
    return document


def measure_check(entry: dict[str, Any], base: Path, store: ResultStore, device: torch.device,
                  data_dir: str | None, progress: bool) -> tuple[Row, str]:
    """Re-evaluate one check's model on its suite and examples; returns the row and the data fingerprint."""
    missing = [k for k in ("name", "run", "suite", "dataset", "n_examples") if k not in entry]
    if missing:
        raise ConfigError(f"reference check {entry.get('name', '?')} lacks {', '.join(missing)}")
    suite = SUITES.get(entry["suite"])
    data = load_dataset(entry["dataset"], entry.get("split", "test"), data_dir)
    loaded = load_run(base / entry["run"], data.info, device)
    ids = evaluation_indices(len(data.dataset), int(entry["n_examples"]))
    threats = suite.build(loaded.config.threats)
    evaluate_run(loaded, suite.name, threats, data, ids, store, int(entry.get("batch_size", 128)), device,
                 f"check:{entry['name']}", progress)
    run = next(r for r in store.suite_runs(suite.name) if r.model_hash == loaded.model_hash
               and r.dataset == data.fingerprint)
    row = measured_row(store, run, suite)
    if row is None:
        raise RomeBenchError(f"check {entry['name']}: evaluation finished without every result stored")
    return row, data.fingerprint


def compare(entry: dict[str, Any], row: Row, z: float = Z_95) -> list[CheckResult]:
    """Each referenced count against the re-measured accuracy, with the reference's Wilson interval."""
    results = []
    for column, correct in entry["correct"].items():
        total = int(entry["totals"][column])
        measured = row.values.get(column, math.nan)
        low, high = wilson_interval(int(correct), total, z)
        results.append(CheckResult(entry["name"], column, int(correct) / total, measured, low, high))
    return results


def updated_entry(entry: dict[str, Any], row: Row, fingerprint: str) -> dict[str, Any]:
    """The check with its counts replaced by the re-measured ones (for --update)."""
    counts = row.counts
    return {**entry, "data_fingerprint": fingerprint,
            "correct": {column: cell.correct for column, cell in counts.items()},
            "totals": {column: cell.total for column, cell in counts.items()},
            "accuracy": {column: round(cell.accuracy, 6) for column, cell in counts.items()}}


def write_reference(document: dict[str, Any]) -> None:
    path = Path(document.pop("_path"))
    atomic_write_text(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def render_results(results: list[CheckResult]) -> str:
    """A Markdown diff table: reference vs measured, the tolerance interval and the verdict."""
    lines = ["| Check | Column | Reference % | Measured % | Δ pp | Tolerance % (95% Wilson) | Status |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.check} | {r.column} | {100 * r.reference:.1f} | {100 * r.measured:.1f} | "
                     f"{100 * (r.measured - r.reference):+.1f} | {100 * r.low:.1f}–{100 * r.high:.1f} | "
                     f"{'ok' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def check_fingerprint(entry: dict[str, Any], fingerprint: str) -> None:
    """Numbers measured on other data (e.g. a re-encoded CIFAR copy) are not comparable: refuse them."""
    expected = entry.get("data_fingerprint")
    if expected and expected != fingerprint:
        raise RomeBenchError(f"check {entry['name']}: the reference was measured on data {expected[:12]}…, "
                             f"this data is {fingerprint[:12]}…; point --data-dir at the same copy")
