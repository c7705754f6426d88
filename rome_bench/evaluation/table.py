"""The leaderboard's table, whatever the format: its rows, its cells and the texts every format prints.

* A :class:`Row` is one line of a leaderboard: a measured suite run (``leaderboard.measured_row``) or a
  :class:`ReferenceRow` reported by a paper or by RobustBench (``reference.load_reference``), which carries no n
  and no interval.
* A :class:`Cell` counts correct examples out of a total; its accuracy carries a 95% Wilson interval.
* The texts here are shared by the formats (``render.py``, ``latex.py``, ``html.py``): an accuracy prints as
  ``91.2 (88.1–93.7)``, a missing or NaN value as "–", a threat that cannot attack the model as "n/a"; the
  Flags, cost and gating columns print "–" when there is nothing to show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rome_bench.evaluation.specs import ThreatSpec
from rome_bench.evaluation.store import UNION_ONLY, BatchCost, GatingScore
from rome_bench.evaluation.suites import Suite

Z_95 = 1.959963984540054
PARTIAL = "partial"  # the mode of a row of only some of a suite's threats (``benchmark(threat_model=…)``)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Cell:
    """Correct examples out of a total; NaN accuracy when the total is 0."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)


@dataclass(frozen=True)
class ReferenceRow:
    """Accuracies reported by a source (a paper's table, RobustBench), not measured here."""

    label: str
    method: str
    dataset: str
    values: dict[str, float]  # column -> accuracy in [0, 1]
    source: str
    # titles of the file's own columns under another protocol than any suite's (e.g. a paper's PGD-20): such a
    # column is printed after the suite's columns; a column without a title shows only where a suite has it
    titles: dict[str, str] = field(default_factory=dict)
    specs: dict[str, ThreatSpec] = field(default_factory=dict)  # column -> the attack and ε that produced it
    protocol: str | None = None  # the suite whose attacks the source used (e.g. seen: AutoAttack), if it says


@dataclass
class Row:
    """One leaderboard line: a measured suite run (``source`` "measured") or a reference row."""

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
    specs: dict[str, ThreatSpec] = field(default_factory=dict)  # threat column -> what it measured
    spec_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # threat column -> its stored threat keys
    protocol: str | None = None  # reference rows: the suite whose attacks produced them, when the source says
    group: int = 0  # comparison group within its dataset (comparability.py): 0 ranks first, others apart
    attack_differs: bool = False  # a reported row produced by other attacks than the suite's


def reported_attack(row: Row) -> str | None:
    """The attacks a reported row's source used (e.g. 'AutoAttack-standard'), or None when it does not say."""
    attacks = sorted({spec.attack for spec in row.specs.values()})
    return ", ".join(attacks) if row.source != "measured" and attacks else None


def reference_row(reference: ReferenceRow) -> Row:
    """A reported row as a leaderboard row: no n, no intervals, its own titled columns."""
    return Row(label=reference.label, method=reference.method, dataset=reference.dataset, n=None,
               values=dict(reference.values), source=reference.source, titles=dict(reference.titles),
               specs=dict(reference.specs), protocol=reference.protocol)


def table_columns(suite: Suite, rows: list[Row] | None = None) -> list[tuple[str, str]]:
    """(column, title): the suite's columns, Avg (when the suite shows it), Union, Union (all) (with
    ``union_with``), then the titled columns only reference rows report (a paper's own protocol)."""
    extra = [("avg", "Avg")] if suite.show_avg else []
    extra.append(("union", "Union"))
    if suite.union_with:
        extra.append(("union-all", "Union (all)"))
    columns = [(c, suite.titles.get(c, c)) for c in suite.columns] + extra
    known = {c for c, _ in columns}
    own = {c: t for row in rows or [] for c, t in row.titles.items() if c not in known}
    return columns + list(own.items())


def metric_rule(suite: Suite) -> str:
    """What a cell counts, printed under every format's header: threat columns need clean and perturbed correct,
    a corruption column (``corr``, ``corr/…``) is plain accuracy on the corrupted images, GMA without gates is
    CE only, Union needs all."""
    rule = "A threat column counts an example only if it is correct both clean and perturbed"
    if any(column == "corr" or column.startswith("corr/") for column in suite.columns):
        rule += ("; Com. Corr. is plain accuracy on the corrupted images (CIFAR-10-C's metric, clean-correct or "
                 "not; a clean-conditioned flag marks corruptions stored under the older clean-and-corrupted rule)")
    if any(column.startswith("gma") for column in suite.columns):
        rule += ("; on a model without gates GMA is its CE term alone (ℓ∞ PGD), flagged ce-only-no-gates")
    return rule + "; Union counts an example only if it is correct clean and under every threat of the suite."


def cell_text(row: Row, column: str) -> str:
    """An accuracy in percent with its interval, e.g. '91.2 (88.1–93.7)'; without one for reference rows; '–' when
    missing or NaN, 'n/a' when the column's threats cannot attack the model."""
    if column in row.not_applicable:
        return "n/a"
    value = row.values.get(column)
    if value is None or math.isnan(value):
        return "–"
    if column not in row.intervals:
        return f"{100 * value:.1f}"
    low, high = row.intervals[column]
    return f"{100 * value:.1f} ({100 * low:.1f}–{100 * high:.1f})"


def source_text(row: Row) -> str:
    """Where the row comes from, marked '(union only)' for a union-only run; a reported row names its attack, and
    says so when that is not the suite's (e.g. 'reported by the paper (…); AutoAttack-standard ≠ suite')."""
    text = row.source + {UNION_ONLY: " (union only)", PARTIAL: " (some threats only)"}.get(row.mode, "")
    if (attack := reported_attack(row)) is not None:
        text += f"; {attack}" + (" ≠ suite" if row.attack_differs else "")
    return text


def flags_text(row: Row, suite: Suite) -> str:
    """The row's validity flags, e.g. 'zero-gradient×3 (Nat); black-box-success×1 (ℓ2)'; '–' when none."""
    parts = [f"{flag}×{count} ({suite.titles.get(column, column)})"
             for column in suite.columns if column in row.flags for flag, count in row.flags[column].items()]
    return "; ".join(parts) if parts else "–"


def costs_text(row: Row, suite: Suite) -> str:
    """Per threat: wall seconds per 100 examples and forward+backward images per attacked example; '–' when none."""
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
    """Training wall time, device and forward/backward images (millions), e.g. '12.3 min cpu, 4.10M f / 3.90M b'."""
    cost = row.train_cost
    if not cost:
        return "–"
    return (f"{cost['wall_seconds'] / 60:.1f} min {cost.get('device', '?')}, "
            f"{cost['forward_images'] / 1e6:.2f}M f / {cost['backward_images'] / 1e6:.2f}M b")


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
