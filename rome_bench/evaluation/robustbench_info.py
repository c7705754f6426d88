"""RobustBench's own reported numbers as reference rows: ``--reference robustbench:[<dataset>/][<tm>/]<name>``.

RobustBench keeps one JSON per model in its repository's ``model_info/<dataset>/<threat_model>/<name>.json`` (clean
accuracy and AutoAttack accuracy in percent, the ε, the paper). The pip package does not ship them, so they are
read from a local folder laid out the same way — ``$ROME_BENCH_ROBUSTBENCH_INFO``, else ``./model_info`` (a
RobustBench checkout's) — and downloaded into it from RobustBench's GitHub repository only when the file is missing;
one clear line when it is missing and cannot be downloaded. The row shows clean accuracy as Nat and RobustBench's
robust accuracy (its ``external`` field when set, else ``autoattack_acc``; ``corruptions_acc`` for corruptions)
in a column of its own: RobustBench evaluates on its own 10,000 examples with its own ε, not rome-bench's suite.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rome_bench.checkpoint import atomic_write_text
from rome_bench.errors import RomeBenchError
from rome_bench.evaluation.table import ReferenceRow
from rome_bench.jsonfiles import JSONFileError
from rome_bench.models.robustbench_zoo import DATASETS, PREFIX, check_threat_model, zoo_dataset

INFO_DIR_VARIABLE = "ROME_BENCH_ROBUSTBENCH_INFO"
INFO_URL = "https://raw.githubusercontent.com/RobustBench/robustbench/master/model_info"
ROBUST_FIELDS = {"Linf": ("external", "autoattack_acc"), "L2": ("external", "autoattack_acc"),
                 "corruptions": ("corruptions_acc",)}
TITLES = {"Linf": "RobustBench AA ℓ∞", "L2": "RobustBench AA ℓ2", "corruptions": "RobustBench corruptions"}
DOWNLOAD_TIMEOUT_S = 15


def parse_reference(source: str) -> tuple[str, str, str]:
    """``robustbench:[<dataset>/][<threat_model>/]<name>`` -> (rome-bench dataset, threat model, name)."""
    parts = source[len(PREFIX):].split("/")
    if not parts[-1] or len(parts) > 3:
        raise RomeBenchError(f"'{source}' is not a RobustBench reference; give robustbench:[<dataset>/]"
                             f"[<threat_model>/]<name>, e.g. robustbench:cifar10/Linf/Standard")
    name = parts[-1]
    threat_model = check_threat_model(parts[-2]) if len(parts) >= 2 else "Linf"
    dataset = parts[0] if len(parts) == 3 else "cifar10"
    zoo_dataset(dataset)
    return dataset, threat_model, name


def info_dir() -> Path:
    return Path(os.environ.get(INFO_DIR_VARIABLE) or "model_info")


def info_path(dataset: str, threat_model: str, name: str, folder: Path | None = None) -> Path:
    return (folder or info_dir()) / DATASETS[dataset] / threat_model / f"{name}.json"


def fetch_info(dataset: str, threat_model: str, name: str, folder: Path | None = None) -> dict[str, Any]:
    """The model's RobustBench JSON: from the local folder, else downloaded into it (atomically)."""
    path = info_path(dataset, threat_model, name, folder)
    if not path.is_file():
        url = f"{INFO_URL}/{DATASETS[dataset]}/{threat_model}/{name}.json"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                text = response.read().decode()
            json.loads(text)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RomeBenchError(
                f"RobustBench's numbers for {threat_model}/{name} are not in {path} and could not be downloaded "
                f"from {url} ({error}); set {INFO_DIR_VARIABLE} to a RobustBench checkout's model_info folder"
            ) from error
        atomic_write_text(path, text)
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise JSONFileError(f"{path} (RobustBench model info): not JSON ({error}); delete it to download it "
                            f"again") from error


def _percent(info: dict[str, Any], field: str, path_hint: str) -> float:
    try:
        value = float(info[field])
    except (TypeError, ValueError) as error:
        raise JSONFileError(f"{path_hint} (RobustBench model info): '{field}' must be a percentage, "
                            f"got {info[field]!r}") from error
    if not 0 <= value <= 100:
        raise JSONFileError(f"{path_hint} (RobustBench model info): '{field}' must be in [0, 100], got {value}")
    return value / 100


def robustbench_rows(source: str, folder: Path | None = None) -> list[ReferenceRow]:
    """One reference row for a RobustBench model: Nat and RobustBench's robust accuracy (its own column)."""
    dataset, threat_model, name = parse_reference(source)
    info = fetch_info(dataset, threat_model, name, folder)
    hint = str(info_path(dataset, threat_model, name, folder))
    field = next((f for f in ROBUST_FIELDS[threat_model] if info.get(f) not in (None, "")), None)
    column = f"robustbench-{threat_model.lower()}"
    eps = info.get("eps")
    title = TITLES[threat_model] + (f" ε={eps}" if eps not in (None, "") else "")
    values = {column: _percent(info, field, hint)} if field else {}
    if info.get("clean_acc") not in (None, ""):
        values["nat"] = _percent(info, "clean_acc", hint)
    paper = info.get("name") or name
    return [ReferenceRow(f"{name} (RobustBench)", name, dataset, values,
                         f"reported by RobustBench ({threat_model}; {paper})", {column: title})]
