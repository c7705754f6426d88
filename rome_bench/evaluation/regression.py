"""Regression checks against reference numbers: ``rome-bench check --reference FILE``.

A reference file (``rome_bench/references/reference/<name>.json``, ``leaderboards/reference/`` in a checkout) lists
checks; each names a model (a run directory, relative to the file), a suite, a dataset split and a fixed seeded
subset of ``n_examples``, and the counts of correct examples it measured per column (``nat``, ``l1``, …, ``avg``,
``union``) out of ``totals``, plus the fingerprint of the data they were measured on. ``check`` re-evaluates the
model (in a fresh store unless one is given) on the *same* examples with the same seeded attacks, so the only honest
slack is re-measurement noise: float kernels that differ between CPUs (``ATEN_CPU_CAPABILITY`` default / avx2 /
avx512) flip an example whose margin is at rounding level. A number passes when its re-measured count is within
±max(2 examples, 0.5% of the total) of the reference count (:func:`tolerance_examples`; a check may set
``"tolerance_examples"`` to widen it, with a reason).

The sampling interval of n examples (Wilson) is *not* the tolerance: it answers "how far could another sample of
n examples land", which a deterministic re-measurement never asks; at 19/100 correct it is ±8 examples, wide enough
that a model whose every attack was replaced by the identity passed.
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
from rome_bench.evaluation.leaderboard import measured_row
from rome_bench.evaluation.runner import evaluate_run, load_run
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.table import Row
from rome_bench.jsonfiles import read_json

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "references" / "reference"  # package data (in the wheel)
MIN_TOLERANCE_EXAMPLES = 2  # examples a re-measurement may move on other float kernels, at least
TOLERANCE_FRACTION = 0.005  # … or this fraction of the total, whichever is larger


def tolerance_examples(total: int, override: float | None = None) -> float:
    """How many examples a re-measured count may differ from the reference: max(2, 0.5% of ``total``)."""
    if override is not None:
        return float(override)
    return max(MIN_TOLERANCE_EXAMPLES, TOLERANCE_FRACTION * total)


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
    """The reference document at ``path`` (or the name of one in rome_bench/references/reference/)."""
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


def compare(entry: dict[str, Any], row: Row) -> list[CheckResult]:
    """Each referenced count against the re-measured accuracy, ± the re-measurement tolerance."""
    results = []
    for column, correct in entry["correct"].items():
        total = int(entry["totals"][column])
        measured = row.values.get(column, math.nan)
        slack = tolerance_examples(total, entry.get("tolerance_examples"))
        low, high = max(0.0, (int(correct) - slack) / total), min(1.0, (int(correct) + slack) / total)
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
    lines = ["| Check | Column | Reference % | Measured % | Δ pp | Tolerance % (re-measurement) | Status |",
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


def run_checks(reference: Path, store: Path | None, device: str, data_dir: str | None = None,
               update: bool = False, progress: bool = True) -> tuple[int, list[CheckResult]]:
    """``rome-bench check``: re-measure every check of a reference file in ``store`` (None: a temporary one) and
    compare each count with its reference; with ``update``, write the re-measured counts into the file instead.
    Returns the number of checks and the comparisons (none with ``update``)."""
    import tempfile

    from rome_bench.device import resolve_device

    document = read_reference(reference)
    base = Path(document["_path"]).parent
    torch_device = resolve_device(device)
    outcomes: list[CheckResult] = []
    with tempfile.TemporaryDirectory() as scratch, ResultStore(store or Path(scratch) / "check.sqlite") as results:
        for index, entry in enumerate(document["checks"]):
            row, fingerprint = measure_check(entry, base, results, torch_device, data_dir, progress)
            if update:
                document["checks"][index] = updated_entry(entry, row, fingerprint)
                continue
            check_fingerprint(entry, fingerprint)
            if "correct" not in entry:
                raise ConfigError(f"check {entry['name']} has no reference numbers yet; "
                                  f"run rome-bench check --reference {reference} --update")
            outcomes += compare(entry, row)
    if update:
        write_reference(document)
    return len(document["checks"]), outcomes
