"""Which leaderboard rows may be ranked together: only rows measured under the same threat specification.

* Measured rows are grouped by the stored threat keys of their threat columns (a key hashes every parameter: ε,
  steps, restarts, the attack's settings), so a model evaluated at ε∞ = 0.001 is never ranked beside one at 8/255.
  The largest group of a dataset comes first (group 0); every other group is its own table, never ranked or bolded
  with another.
* A reported row (a paper's numbers) joins a measured group only when its source used the suite's attacks
  (``protocol``, e.g. ``seen`` for AutoAttack) at the same ε; otherwise it is marked (``attack_differs``) and put in
  a table of its own. Rows without a threat column of the suite (e.g. RobustBench's, whose robust accuracy has a
  column of its own) join the first group.
* Every format states each table's specification per column (:func:`column_specs`).
"""

from __future__ import annotations

from collections import Counter

from rome_bench.evaluation.specs import ThreatSpec
from rome_bench.evaluation.suites import Suite
from rome_bench.evaluation.table import Row

NOT_RECORDED = "not recorded"


def _measured_signature(row: Row) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted(row.spec_keys.items()))


def _reported_signature(row: Row) -> tuple[object, ...]:
    return (row.protocol, *sorted((column, spec.budget()) for column, spec in row.specs.items()))


def _same_budgets(row: Row, group: list[Row]) -> bool:
    """Whether the reported row's ε equal the group's in every column where both state one."""
    specs = group[0].specs
    return all(column in specs and (spec.eps is None or specs[column].budget()[1:] == spec.budget()[1:])
               for column, spec in row.specs.items())


def _home(row: Row, groups: list[list[Row]], suite: Suite) -> int | None:
    """The measured group a reported row can be ranked with, or None."""
    if not row.specs:
        return 0 if groups else None
    if row.protocol != suite.name:
        return None
    return next((index for index, group in enumerate(groups) if _same_budgets(row, group)), None)


def _by_union(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda row: -row.values.get("union", -1.0))


def dataset_groups(rows: list[Row], suite: Suite) -> list[list[Row]]:
    """One dataset's rows in comparison groups: measured groups (largest first), then reported rows apart."""
    measured = [row for row in rows if row.source == "measured"]
    sizes = Counter(_measured_signature(row) for row in measured)
    order = sorted(sizes, key=lambda signature: -sizes[signature])  # stable: ties keep the best union first
    groups = [[row for row in measured if _measured_signature(row) == signature] for signature in order]
    apart: dict[tuple[object, ...], list[Row]] = {}
    for row in (row for row in rows if row.source != "measured"):
        row.attack_differs = bool(row.specs) and row.protocol != suite.name
        home = _home(row, groups, suite)
        if home is None:
            apart.setdefault(_reported_signature(row), []).append(row)
        else:
            groups[home].append(row)
    return [_by_union(group) for group in [*groups, *apart.values()]]


def assign_groups(rows: list[Row], suite: Suite) -> list[Row]:
    """The rows (sorted by dataset, then Union) reordered so that each comparison group of a dataset is
    contiguous, each row's ``group`` set (0 for a dataset's first group)."""
    ordered: list[Row] = []
    for dataset in dict.fromkeys(row.dataset for row in rows):
        for index, group in enumerate(dataset_groups([row for row in rows if row.dataset == dataset], suite)):
            for row in group:
                row.group = index
            ordered += group
    return ordered


def tables(rows: list[Row]) -> list[tuple[str, int, list[Row]]]:
    """(dataset, group, rows) for every table the rows make, datasets sorted, groups in order."""
    keys = sorted({(row.dataset, row.group) for row in rows})
    return [(dataset, group, [row for row in rows if (row.dataset, row.group) == (dataset, group)])
            for dataset, group in keys]


def threat_columns(suite: Suite) -> list[str]:
    """The suite's columns that a threat specification describes (every one but clean accuracy)."""
    return [column for column in suite.columns if column != "nat"]


def column_specs(rows: list[Row], suite: Suite) -> dict[str, ThreatSpec | None]:
    """Per threat column of one table, its specification (a measured row's before a reported one's)."""
    ranked = sorted(rows, key=lambda row: row.source != "measured")
    return {column: next((row.specs[column] for row in ranked if column in row.specs), None)
            for column in threat_columns(suite)}


def spec_line(rows: list[Row], suite: Suite) -> str:
    """e.g. 'ℓ1: PGD ℓ1 ε=12, 50 steps, 1 restart · ℓ2: … · ℓ∞: …' ('not recorded' where unknown)."""
    return " · ".join(f"{suite.titles.get(column, column)}: {spec.text() if spec else NOT_RECORDED}"
                      for column, spec in column_specs(rows, suite).items())


def group_note(group: int, rows: list[Row]) -> str:
    """What a table after a dataset's first says about itself ('' for the first)."""
    if group == 0:
        return ""
    if all(row.source != "measured" for row in rows) and any(row.attack_differs for row in rows):
        return "reported under other attacks than the suite's: not ranked with the measured rows"
    return "another threat specification: not ranked with the rows of any other table"
