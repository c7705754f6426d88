"""Leaderboards from the store, in the paper's Table 1 layout: Method | Nat | ℓ1 | ℓ2 | ℓ∞ | Avg | Union.

* Every cell is an accuracy on the same n examples with its 95% Wilson interval.
* Union is computed per example: an example counts only if it is correct under every threat of the suite
  (never the minimum of the per-threat accuracies, which overstates it).
* Avg is the mean of the threat columns; its interval pools the threats' n·P outcomes (approximate, since the
  outcomes of one example under different threats are correlated).
* Rows are sorted by Union; reference rows (numbers reported by a paper) carry no n and no interval.
* A union-only run (``--union-only``, a cascade) fills Nat and Union only; its per-threat cells show "–".
* The Flags column lists the validity flags stored for the row's threats (see ``validity.py``).
* A pooled column (``Suite.aggregates``: Com. Corr. over 75 corruption × severity threats, Percep. ℓp over five
  UAR threats) shows the mean accuracy over its threats; its interval pools their outcomes like Avg's.
* A threat that cannot attack a model (GMA on a model without gates) shows "n/a" and is left out of the unions.
* Suites with ``union_with`` (the unseen suite) add "Union (all)": per example over this suite's threats and
  those of a stored run of the named suite (e.g. ``seen``) on the same examples; "–" until that run exists.
* Gating columns ("Routing div.", "Gate clf. %"): for models with a stored gating score on the same dataset
  (``rome-bench analyze gating``; the ``seen`` suite's score if there are several, else the newest), the routing
  divergence (4 decimals; 0 = threat-agnostic routing) and the held-out threat classifier's accuracy, whose chance
  level (1/#threats) is given in the header. They appear only when some row of the table has a score; rows
  without one show "–" (empty in csv, null in json).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rome_bench.evaluation.reference import ReferenceRow
from rome_bench.evaluation.store import FULL, UNION_ONLY, BatchCost, GatingScore, ResultStore, SuiteRun
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
    not_applicable: set[str] = field(default_factory=set)  # columns whose threats cannot attack this model
    gating: GatingScore | None = None  # routing divergence and threat classifier of its gates, if analysed
    train_cost: dict[str, Any] | None = None  # training wall time, device and images (runs trained since recipes)
    titles: dict[str, str] = field(default_factory=dict)  # reference rows: titled columns of their own protocol
    fingerprint: str | None = None  # the dataset fingerprint of a measured row's examples


def union_cell(per_threat: list[dict[int, bool]], example_ids: list[int]) -> Cell:
    """Examples correct under every threat, counted per example (an example missing a result is not robust)."""
    robust = sum(all(results.get(i, False) for results in per_threat) for i in example_ids)
    return Cell(robust, len(example_ids))


def pooled_cell(per_threat: list[dict[int, bool]], example_ids: list[int]) -> Cell:
    """Correct (threat, example) pairs over all of a column's threats: their mean accuracy."""
    return Cell(sum(results[i] for results in per_threat for i in example_ids), len(per_threat) * len(example_ids))


def _union_complete(per_threat: list[dict[int, bool]], example_ids: list[int]) -> bool:
    """Every example either has all results, or is already broken by a stored result (a cascade skips those)."""
    return all(all(i in results for results in per_threat) or any(results.get(i) is False for results in per_threat)
               for i in example_ids)


@dataclass
class StoredThreats:
    """A suite run's stored results grouped by threat column; threats that do not apply to the model set apart."""

    results: dict[str, list[dict[int, bool]]] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)
    not_applicable: set[str] = field(default_factory=set)

    def all_results(self) -> list[dict[int, bool]]:
        return [results for group in self.results.values() for results in group]


def stored_threats(store: ResultStore, model_hash: str, dataset: str, keys: list[str]) -> StoredThreats:
    stored = StoredThreats()
    for key in keys:
        column = store.threat_column(key)
        if store.not_applicable(model_hash, key, dataset):
            stored.not_applicable.add(column)
            continue
        stored.results.setdefault(column, []).append(store.correctness(model_hash, key, dataset))
        stored.keys.setdefault(column, []).append(key)
    return stored


def _merged_flags(store: ResultStore, run: SuiteRun, keys: list[str]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for key in keys:
        for flag, count in store.flags(run.model_hash, key, run.dataset).items():
            merged[flag] = merged.get(flag, 0) + count
    return merged


def _merged_cost(store: ResultStore, run: SuiteRun, keys: list[str]) -> BatchCost | None:
    costs = [cost for key in keys if (cost := store.cost(run.model_hash, key, run.dataset))]
    if not costs:
        return None
    return BatchCost(*(sum(getattr(cost, f.name) for cost in costs) for f in dataclasses.fields(BatchCost)))


def union_with_cell(store: ResultStore, run: SuiteRun, suite: Suite, own: list[dict[int, bool]]) -> Cell | None:
    """Union over this run's threats and those of a complete run of one of ``suite.union_with`` on the same
    model, dataset and examples (the first such suite found); None when there is none."""
    for other_name in suite.union_with:
        for other in store.suite_runs(other_name):
            if (other.model_hash, other.dataset, other.mode) != (run.model_hash, run.dataset, FULL):
                continue
            if not set(run.example_ids) <= set(other.example_ids):
                continue
            extra = stored_threats(store, run.model_hash, run.dataset, other.threat_keys).all_results()
            return union_cell(own + extra, run.example_ids)
    return None


def measured_row(store: ResultStore, run: SuiteRun, suite: Suite) -> Row | None:
    """A row from a stored suite run; None when some of its results are missing."""
    stored = stored_threats(store, run.model_hash, run.dataset, run.threat_keys)
    everything = stored.all_results()
    full = run.mode != UNION_ONLY
    if full and any(i not in results for results in everything for i in run.example_ids):
        return None
    if not full and not _union_complete(everything, run.example_ids):
        return None
    cells: dict[str, Cell] = {}
    keys_of: dict[str, list[str]] = {}
    not_applicable: set[str] = set()
    for column in suite.columns:
        members = [m for m in suite.members(column) if m in stored.results]
        if not members:
            if any(m in stored.not_applicable for m in suite.members(column)):
                not_applicable.add(column)
            continue
        keys_of[column] = [key for m in members for key in stored.keys[m]]
        if full or column == "nat":
            cells[column] = pooled_cell([r for m in members for r in stored.results[m]], run.example_ids)
    cells["union"] = union_cell(everything, run.example_ids)
    threat_columns = [c for c in cells if c not in ("nat", "union")]
    if full and suite.show_avg and threat_columns:
        cells["avg"] = Cell(sum(cells[c].correct for c in threat_columns), sum(cells[c].total for c in threat_columns))
    if suite.union_with and (combined := union_with_cell(store, run, suite, everything)):
        cells["union-all"] = combined
    return Row(label=run.label, method=run.method, dataset=run.dataset_name, n=len(run.example_ids),
               values={c: cell.accuracy for c, cell in cells.items()},
               intervals={c: cell.interval for c, cell in cells.items()},
               flags={c: f for c, keys in keys_of.items() if (f := _merged_flags(store, run, keys))},
               costs={c: cost for c, keys in keys_of.items() if (cost := _merged_cost(store, run, keys))},
               mode=run.mode, model_hash=run.model_hash, counts=cells, not_applicable=not_applicable,
               fingerprint=run.dataset)


def build_leaderboard(store: ResultStore, suite: Suite, dataset: str | None = None,
                      references: list[ReferenceRow] | None = None) -> list[Row]:
    rows = []
    for run in store.suite_runs(suite.name, dataset):
        if (row := measured_row(store, run, suite)) is not None:
            row.gating = store.gating_score(run.model_hash, run.dataset)
            row.train_cost = store.model_metadata(run.model_hash).get("train_cost")
            rows.append(row)
    for reference in references or []:
        if dataset is None or reference.dataset == dataset:
            rows.append(Row(label=reference.label, method=reference.method, dataset=reference.dataset, n=None,
                            values=dict(reference.values), source=reference.source, titles=dict(reference.titles)))
    return sorted(rows, key=lambda row: (row.dataset, -row.values.get("union", -1.0)))


def table_columns(suite: Suite, rows: list[Row] | None = None) -> list[tuple[str, str]]:
    """The suite's columns, then the titled columns only reference rows report (a paper's own protocol)."""
    extra = [("avg", "Avg")] if suite.show_avg else []
    extra.append(("union", "Union"))
    if suite.union_with:
        extra.append(("union-all", "Union (all)"))
    columns = [(c, suite.titles.get(c, c)) for c in suite.columns] + extra
    known = {c for c, _ in columns}
    own = {c: t for row in rows or [] for c, t in row.titles.items() if c not in known}
    return columns + list(own.items())


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


def train_cost_text(row: Row) -> str:
    """Training wall time, device and forward/backward images (millions), e.g. '12.3 min cpu, 4.1M f / 3.9M b'."""
    cost = row.train_cost
    if not cost:
        return "–"
    return (f"{cost['wall_seconds'] / 60:.1f} min {cost.get('device', '?')}, "
            f"{cost['forward_images'] / 1e6:.2f}M f / {cost['backward_images'] / 1e6:.2f}M b")


TRAIN_COST_FIELDS = ("wall_seconds", "device", "device_name", "forward_images", "backward_images")


def has_gating(rows: list[Row]) -> bool:
    """Whether the gating columns are shown: some row has a gating score."""
    return any(row.gating is not None for row in rows)


def gating_titles(rows: list[Row]) -> tuple[str, str]:
    """Titles of the two gating columns; the classifier's names its chance level(s) in percent."""
    chances = sorted({f"{100 * row.gating.chance:.1f}" for row in rows if row.gating is not None})
    return "Routing div.", f"Gate clf. % (chance {'/'.join(chances)})"


def gating_texts(row: Row) -> tuple[str, str]:
    """The row's routing divergence (4 decimals) and classifier accuracy (%, 1 decimal); '–' without a score."""
    if row.gating is None:
        return "–", "–"
    return f"{row.gating.divergence:.4f}", f"{100 * row.gating.classifier_accuracy:.1f}"


def cell_text(row: Row, column: str) -> str:
    if column in row.not_applicable:
        return "n/a"
    value = row.values.get(column)
    if value is None or math.isnan(value):
        return "–"
    if column not in row.intervals:
        return f"{100 * value:.1f}"
    low, high = row.intervals[column]
    return f"{100 * value:.1f} ({100 * low:.1f}–{100 * high:.1f})"


def render_markdown(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    lines: list[str] = []
    for dataset in sorted({row.dataset for row in rows}):
        table = [r for r in rows if r.dataset == dataset]
        columns = table_columns(suite, table)
        gating = has_gating(table)
        titles = [title for _, title in columns] + (list(gating_titles(table)) if gating else [])
        lines += [f"### {suite.name} suite on {dataset} — accuracy % (95% Wilson interval)", ""]
        extra = " Train cost | Eval cost |" if costs else ""
        lines.append("| Method | n | " + " | ".join(titles) + f" | Flags | Source |{extra}")
        lines.append("|---|---:|" + "---:|" * len(titles) + "---|---|" + ("---|---|" if costs else ""))
        for row in table:
            cells = " | ".join([cell_text(row, c) for c, _ in columns] + (list(gating_texts(row)) if gating else []))
            source = row.source + (" (union only)" if row.mode == UNION_ONLY else "")
            cost = f" {train_cost_text(row)} | {costs_text(row, suite)} |" if costs else ""
            lines.append(f"| {row.label} | {row.n if row.n is not None else '–'} | {cells} | "
                         f"{flags_text(row, suite)} | {source} |{cost}")
        lines.append("")
    return "\n".join(lines) if lines else f"no results for suite '{suite.name}' yet; run rome-bench eval first"


def render_csv(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = [c for c, _ in table_columns(suite, rows)]
    header = ["method", "label", "dataset", "n", "source", "mode", "flags"]
    for column in columns:
        header += [column, f"{column}_low", f"{column}_high"]
    threat_columns = list(suite.columns)
    if costs:
        header += [f"train_{name}" for name in TRAIN_COST_FIELDS]
        for column in threat_columns:
            header += [f"{column}_seconds", f"{column}_forward_images", f"{column}_backward_images"]
    gating = has_gating(rows)
    if gating:
        header += GATING_CSV_COLUMNS
    writer.writerow(header)
    for row in rows:
        flags = "" if flags_text(row, suite) == "–" else flags_text(row, suite)
        record: list[Any] = [row.method, row.label, row.dataset, row.n, row.source, row.mode, flags]
        for column in columns:
            low, high = row.intervals.get(column, (None, None))
            record += [row.values.get(column), low, high]
        if costs:
            record += [(row.train_cost or {}).get(name) for name in TRAIN_COST_FIELDS]
            for column in threat_columns:
                cost = row.costs.get(column)
                record += [cost.seconds, cost.forward_images, cost.backward_images] if cost else [None] * 3
        if gating:
            record += _gating_record(row.gating)
        writer.writerow(record)
    return buffer.getvalue()


GATING_CSV_COLUMNS = ["routing_divergence", "gate_classifier_accuracy", "gate_classifier_chance", "gating_suite",
                      "gating_n"]


def _gating_record(score: GatingScore | None) -> list[Any]:
    if score is None:
        return [None] * len(GATING_CSV_COLUMNS)
    return [score.divergence, score.classifier_accuracy, score.chance, score.suite, score.n_examples]


def _gating_json(score: GatingScore | None) -> dict[str, Any] | None:
    if score is None:
        return None
    return {"suite": score.suite, "n": score.n_examples, "routing_divergence": score.divergence,
            "per_layer": score.per_layer, "classifier_accuracy": score.classifier_accuracy, "chance": score.chance,
            "threats": score.threats}


def render_json(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    gating = has_gating(rows)
    payload = {"suite": suite.name, "columns": [c for c, _ in table_columns(suite, rows)], "rows": [
        {"label": row.label, "method": row.method, "dataset": row.dataset, "n": row.n, "source": row.source,
         "mode": row.mode, "accuracy": row.values, "wilson95": {c: list(v) for c, v in row.intervals.items()},
         "flags": row.flags,
         **({"costs": {c: dataclasses.asdict(v) for c, v in row.costs.items()}, "train_cost": row.train_cost}
            if costs else {}),
         **({"gating": _gating_json(row.gating)} if gating else {})}
        for row in rows]}
    return json.dumps(payload, indent=2, ensure_ascii=False)
