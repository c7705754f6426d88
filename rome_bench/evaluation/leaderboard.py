"""Leaderboard rows from the store, in the paper's Table 1 layout: Method | Nat | ℓ1 | ℓ2 | ℓ∞ | Avg | Union.

This module only builds rows (``table.Row``); ``table.py`` holds the rows and their cell texts, ``render.py`` the
output formats.

* Every cell is an accuracy on the same n examples with its 95% Wilson interval.
* Union is computed per example: an example counts only if it is correct under every threat of the suite
  (never the minimum of the per-threat accuracies, which overstates it).
* Avg is the mean of the threat columns; its interval pools the threats' n·P outcomes (approximate, since the
  outcomes of one example under different threats are correlated).
* Rows are sorted by dataset, then by Union (best first), within comparison groups (``comparability.py``): rows
  measured under another threat specification (ε, attack, steps) are never ranked together; reference rows
  (numbers reported by a paper or by RobustBench) carry no n and no interval, and sort last when they report no Union.
* A union-only run (``--union-only``, a cascade) fills Nat and Union only; its per-threat cells show "–".
* The Flags column lists the validity flags stored for the row's threats (see ``validity.py``).
* A pooled column (``Suite.aggregates``: Com. Corr. over 75 corruption × severity threats, Percep. ℓp over five
  UAR threats) shows the mean accuracy over its threats; its interval pools their outcomes like Avg's.
* Com. Corr. (and every column of threats that are not ``given_clean``) is plain accuracy on the perturbed images:
  an example wrong clean but right corrupted counts there; the union still requires clean and every threat.
  Corruption results stored before that rule were conditioned on clean (P(clean ∧ corrupted correct)); their
  cells carry the flag ``clean-conditioned×k``, k the (corruption, example) pairs counted wrong unevaluated
  because the clean image was wrong. Re-running ``rome-bench eval`` computes them under the new key.
* PPGD and LPA carry their LPIPS network in their names (``ppgd-alexnet`` in the PPGD (AlexNet) column,
  ``ppgd-self`` in PPGD (self), likewise LPA). Results stored under the older names ``ppgd``/``lpa`` read as
  what their stored ``lpips`` parameter says: AlexNet ones in the AlexNet columns, self ones in the self columns
  (so under the ``unseen`` suite an older self-LPIPS run shows "–" for PPGD and LPA, never an AlexNet label).
* A threat that cannot attack a model (PPGD/LPA with the model's own LPIPS on a model without transformer
  blocks) shows "n/a" and is left out of the unions. GMA on a model without gates is its CE term alone, flagged
  ``ce-only-no-gates``.
* A union column (``Suite.union_columns``: the adaptive suite's AA and Adaptive) counts, per example, correctness under
  every threat of its members; its Flags are its members' (those no earlier column shows) and its Costs their
  total per example (so Adaptive's cost over AA's is the suite's cost relative to AutoAttack). A gap column
  (``Suite.gaps``) shows the difference of two columns' accuracies in percentage points, without an interval.
* Suites with ``union_with`` (the unseen suite) add "Union (all)": per example over this suite's threats and
  those of a stored run of the named suite (e.g. ``seen``) on the same examples; "–" until that run exists.
* Gating columns ("Routing div.", "Gate clf. %"): for models with a stored gating score on the same dataset
  (``rome-bench analyze gating``; the ``seen`` suite's score if there are several, else the newest), the routing
  divergence (4 decimals; 0 = threat-agnostic routing) and the held-out threat classifier's accuracy, whose chance
  level (1/#threats) is given in the header. They appear only when some row of the table has a score; rows
  without one show "–" (empty in csv, null in json).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rome_bench.evaluation.comparability import assign_groups
from rome_bench.evaluation.specs import ThreatSpec, pooled_spec, stored_spec
from rome_bench.evaluation.store import FULL, UNION_ONLY, BatchCost, ResultStore, SuiteRun
from rome_bench.evaluation.suites import Suite
from rome_bench.evaluation.table import PARTIAL, Cell, ReferenceRow, Row, reference_row
from rome_bench.threats.corruptions import clean_conditioned
from rome_bench.threats.perceptual import stored_column

LEGACY_FLAG = "clean-conditioned"


def threat_name(key: str) -> str:
    """The registry name in a threat key (``pgd-linf:1a2b…`` -> ``pgd-linf``)."""
    return key.rsplit(":", 1)[0]


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
    """The stored results of the threats ``keys`` grouped by column (``dataset`` is the data fingerprint)."""
    stored = StoredThreats()
    for key in keys:
        column = stored_column(threat_name(key), store.threat_column(key), store.threat_params(key))
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


def _first_shown(keys_of: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each column's threat keys less those an earlier column shows: a union column's flags are not repeated."""
    shown: set[str] = set()
    first: dict[str, list[str]] = {}
    for column, keys in keys_of.items():
        first[column] = [key for key in keys if key not in shown]
        shown.update(keys)
    return first


def _clean_conditioned(store: ResultStore, run: SuiteRun, keys: list[str], clean: dict[int, bool]) -> int:
    """(threat, example) pairs that corruptions stored under the older rule counted wrong, unevaluated, because
    the clean image was wrong (0 when the keys hold no such corruption)."""
    legacy = [key for key in keys if clean_conditioned(threat_name(key), store.threat_params(key))]
    return len(legacy) * sum(not clean.get(i, False) for i in run.example_ids)


def _row_flags(store: ResultStore, run: SuiteRun, keys_of: dict[str, list[str]],
               clean: dict[int, bool] | None) -> dict[str, dict[str, int]]:
    """Column -> its threats' stored flags (those no earlier column shows), plus ``clean-conditioned`` where a full
    run (``clean`` given) holds corruptions stored under the older rule."""
    flags = {}
    for column, keys in _first_shown(keys_of).items():
        merged = _merged_flags(store, run, keys)
        if clean is not None and (count := _clean_conditioned(store, run, keys, clean)):
            merged[LEGACY_FLAG] = count
        if merged:
            flags[column] = merged
    return flags


def _merged_cost(store: ResultStore, run: SuiteRun, keys: list[str], union: bool = False) -> BatchCost | None:
    """The threats' costs summed. A pooled column counts every (threat, example) pair, so its per-example figures are
    per threat; a union column (``union``) counts each example once, so they are its threats' total per example."""
    costs = [cost for key in keys if (cost := store.cost(run.model_hash, key, run.dataset))]
    if not costs:
        return None
    total = BatchCost(*(sum(getattr(cost, f.name) for cost in costs) for f in dataclasses.fields(BatchCost)))
    if union:
        total = dataclasses.replace(total, examples=max(c.examples for c in costs),
                                    attacked=max(c.attacked for c in costs))
    return total


def column_keys(store: ResultStore, run: SuiteRun, suite: Suite) -> dict[str, list[str]]:
    """Per threat column of the suite, the run's threat keys it pools (those that do not apply included)."""
    columns = {key: store.threat_column(key) for key in run.threat_keys}
    keys = {column: [key for key in run.threat_keys if columns[key] in suite.members(column)]
            for column in suite.columns if column != "nat"}
    return {column: found for column, found in keys.items() if found}


def column_spec(store: ResultStore, keys: list[str]) -> ThreatSpec:
    """What a column's stored threats measured, from their recorded names and parameters."""
    return pooled_spec([stored_spec(store.threat_name(key), store.threat_params(key)) for key in keys])


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
        per_threat = [r for m in members for r in stored.results[m]]
        if full and column in suite.union_columns:
            cells[column] = union_cell(per_threat, run.example_ids)
        elif full or column == "nat":
            cells[column] = pooled_cell(per_threat, run.example_ids)
    cells["union"] = union_cell(everything, run.example_ids)
    spec_keys = column_keys(store, run, suite)
    gaps = {c: cells[a].accuracy - cells[b].accuracy for c, (a, b) in suite.gaps.items() if a in cells and b in cells}
    threat_columns = [c for c in cells if c not in ("nat", "union", *suite.union_columns)]
    if full and suite.show_avg and threat_columns:
        cells["avg"] = Cell(sum(cells[c].correct for c in threat_columns), sum(cells[c].total for c in threat_columns))
    if suite.union_with and (combined := union_with_cell(store, run, suite, everything)):
        cells["union-all"] = combined
    return Row(label=run.label, method=run.method, dataset=run.dataset_name, n=len(run.example_ids),
               values={**{c: cell.accuracy for c, cell in cells.items()}, **gaps},
               intervals={c: cell.interval for c, cell in cells.items()},
               flags=_row_flags(store, run, keys_of, (stored.results.get("nat") or [{}])[0] if full else None),
               costs={c: cost for c, keys in keys_of.items()
                      if (cost := _merged_cost(store, run, keys, union=c in suite.union_columns))},
               mode=run.mode, model_hash=run.model_hash, counts=cells, not_applicable=not_applicable,
               fingerprint=run.dataset,
               specs={c: column_spec(store, keys) for c, keys in spec_keys.items()},
               spec_keys={c: tuple(sorted(keys)) for c, keys in spec_keys.items()})


def partial_row(store: ResultStore, run: SuiteRun, suite: Suite) -> Row | None:
    """A row from a run of only some of the suite's threats: their columns, without Avg or Union (which would
    stand for the whole suite); None when some of its results are missing."""
    row = measured_row(store, run, suite)
    if row is None:
        return None
    for column in ("avg", "union", "union-all"):
        row.values.pop(column, None)
        row.intervals.pop(column, None)
        row.counts.pop(column, None)
    row.mode = PARTIAL
    return row


def build_leaderboard(store: ResultStore, suite: Suite, dataset: str | None = None,
                      references: list[ReferenceRow] | None = None) -> list[Row]:
    """A row per stored run of the suite whose results are all there, and the reference rows; with ``dataset``
    (a dataset name), only the runs and references on it."""
    rows = []
    for run in store.suite_runs(suite.name, dataset):
        if (row := measured_row(store, run, suite)) is not None:
            row.gating = store.gating_score(run.model_hash, run.dataset)
            row.train_cost = store.model_metadata(run.model_hash).get("train_cost")
            rows.append(row)
    for reference in references or []:
        if dataset is None or reference.dataset == dataset:
            rows.append(reference_row(reference))
    return assign_groups(sorted(rows, key=lambda row: (row.dataset, -row.values.get("union", -1.0))), suite)
