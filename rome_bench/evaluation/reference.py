"""Reference numbers reported by papers, kept as data in ``leaderboards/`` and shown beside measured rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rome_bench.errors import RomeBenchError

LEADERBOARDS_DIR = Path(__file__).resolve().parents[2] / "leaderboards"


@dataclass(frozen=True)
class ReferenceRow:
    label: str
    method: str
    dataset: str
    values: dict[str, float]  # column -> accuracy in [0, 1]
    source: str


def available_references() -> list[str]:
    return sorted(path.stem for path in LEADERBOARDS_DIR.glob("*.json"))


def load_reference(name_or_path: str) -> list[ReferenceRow]:
    """Rows of a reference file, given its name in leaderboards/ or a path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = LEADERBOARDS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise RomeBenchError(f"reference '{name_or_path}' not found; choose one of: "
                             f"{', '.join(available_references()) or '(none)'} or give a JSON path")
    document = json.loads(path.read_text())
    rows = []
    for entry in document["rows"]:
        attack = entry.get("training_attack")
        label = f"{entry['method']} [{attack}-trained]" if attack else entry["method"]
        values = {column: entry[column] / 100 for column in document["columns"] if column in entry}
        rows.append(ReferenceRow(label, entry["method"], entry["dataset"], values,
                                 f"{document['source']} ({document['name']})"))
    return rows
