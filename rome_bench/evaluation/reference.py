"""Reference numbers, shown beside measured rows: the one place that picks a reference's source.

* ``robustbench:[<dataset>/][<threat_model>/]<name>``: RobustBench's reported numbers for a model
  (``robustbench_info.py``);
* otherwise a reference file: its name in ``rome_bench/references/`` (the numbers a paper reports, kept as
  package data) or a path to a JSON file laid out the same way.

A reference file: ``name``, ``source``, ``citation``, ``evaluation`` (prose: dataset, model, attack, ε), ``attack``
(one name, or one per column), ``protocol`` (the suite whose attacks produced the numbers), ``threat_model`` (ε per
dataset), ``columns`` (suite column names; columns no suite has are named in ``titles``) and ``rows``: ``method``,
``dataset``, a percentage per column, and optionally ``training_attack`` (the table's PGD/APGD block), ``model``
(the table's architecture when it compares several, e.g. Table 3) and ``section`` (an ablation table's block).
The RoME paper's Tables 1-5, A1, A2 and A5 all report AutoAttack accuracies in the ``seen`` suite's columns (nat,
ℓ1, ℓ2, ℓ∞, avg, union; Table 3 nat and union only), Table 2 the ``unseen`` suite's.
"""

from __future__ import annotations

from pathlib import Path

from rome_bench.errors import RomeBenchError
from rome_bench.evaluation.robustbench_info import robustbench_rows
from rome_bench.evaluation.specs import ThreatSpec, reference_spec
from rome_bench.evaluation.table import ReferenceRow
from rome_bench.jsonfiles import JSONFileError, read_json
from rome_bench.models.robustbench_zoo import is_zoo_source

# Package data (in the wheel); the checkout's leaderboards/ is a link to it, for the paths it was known by.
LEADERBOARDS_DIR = Path(__file__).resolve().parents[1] / "references"
UNSPECIFIED_ATTACK = "attack not stated"
AGGREGATE_COLUMNS = ("nat", "avg", "union", "union-all")


def available_references() -> list[str]:
    """The names of the reference files in ``rome_bench/references/``."""
    return sorted(path.stem for path in LEADERBOARDS_DIR.glob("*.json"))


def load_reference(name_or_path: str) -> list[ReferenceRow]:
    """Rows of a reference: RobustBench's numbers for a model (``robustbench:…``), else a reference file given by
    its name in rome_bench/references/ or by a path."""
    if is_zoo_source(name_or_path):
        return robustbench_rows(name_or_path)
    return paper_rows(name_or_path)


def paper_rows(name_or_path: str) -> list[ReferenceRow]:
    """Rows of a reference file, given its name in rome_bench/references/ or a path (a name without a suffix is a
    name)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = LEADERBOARDS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise RomeBenchError(f"reference '{name_or_path}' not found; choose one of: "
                             f"{', '.join(available_references()) or '(none)'} or give a JSON path")
    document = read_json(path, "paper reference")
    titles = document.get("titles") or {}
    if not isinstance(titles, dict) or not all(isinstance(t, str) for t in titles.values()):
        raise JSONFileError(f"{path} (paper reference): 'titles' must map column names to titles")
    rows = []
    for entry in document["rows"]:
        label = row_label(entry)
        values = {column: _percent(entry, column, path) for column in document["columns"] if column in entry}
        rows.append(ReferenceRow(label, entry["method"], entry["dataset"], values,
                                 f"{document['source']} ({document['name']})",
                                 {column: titles[column] for column in values if column in titles},
                                 _specs(document, entry["dataset"], values), document.get("protocol")))
    return rows


def row_label(entry: dict) -> str:
    """A reported row's label: its method, the model when the table compares several (``model``, e.g. Table 3's
    WRN-28-10) and the attack it was trained with when the table has one block per attack (``training_attack``)."""
    label = f"{entry['method']} · {entry['model']}" if entry.get("model") else entry["method"]
    attack = entry.get("training_attack")
    return f"{label} [{attack}-trained]" if attack else label


def _specs(document: dict, dataset: str, values: dict[str, float]) -> dict[str, ThreatSpec]:
    """The attack and ε behind each reported threat column, from the file's ``attack`` (one name, or one per
    column) and ``threat_model``; 'attack not stated' when the file does not say."""
    attack = document.get("attack") or UNSPECIFIED_ATTACK
    eps = ((document.get("threat_model") or {}).get(dataset) or {}).get("eps") or {}
    def named(column: str) -> str:
        return attack if isinstance(attack, str) else attack.get(column, UNSPECIFIED_ATTACK)

    return {column: reference_spec(column, named(column), eps) for column in values if column not in AGGREGATE_COLUMNS}


def _percent(entry: dict, column: str, path: Path) -> float:
    """A reported accuracy in percent, as a fraction; anything but a number in [0, 100] is refused."""
    value = entry[column]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise JSONFileError(f"{path} (paper reference): {entry['method']}'s '{column}' must be a percentage in "
                            f"[0, 100], got {value!r}; fix the file or restore it from the repository")
    return value / 100
