"""``rome-bench export-model``: a run directory as a folder ready for the Hugging Face Hub.

The folder holds the run's ``model.safetensors``, ``model.json`` (its sidecar: sha256, training provenance) and
``config.json`` (the run config), so it loads as any run directory (``load_model(DIR)``, ``--model hf:ORG/NAME``
once uploaded), and a model card ``README.md``: the leaderboard rows measured for exactly these weights in a results
store, each column's threat specification (norm, ε, attack, steps, restarts) and the provenance of the numbers.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rome_bench.checkpoint import load_final_weights, read_run_config, run_model_hash
from rome_bench.errors import CheckpointError
from rome_bench.evaluation.leaderboard import measured_row
from rome_bench.evaluation.store import ResultStore, SuiteRun, existing_store
from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.table import Row, cell_text, table_columns
from rome_bench.models.classifier import state_hash
from rome_bench.models.hub import CARD_FILE, MODEL_FILES
from rome_bench.models.identity import model_identity

ATTACK_FIELDS = ("steps", "restarts", "n_restarts")  # params that say how hard the attack tried


@dataclass(frozen=True)
class MeasuredSuite:
    """One suite run of the exported weights: its leaderboard row and the specification of each threat."""

    suite: str
    row: Row
    threats: list[dict[str, Any]]  # column, threat, norm, eps, attack: one per threat of the run
    provenance: list[dict[str, Any]]  # the distinct records its results were stored under


@dataclass(frozen=True)
class ExportedModel:
    """What ``export_model`` wrote: the folder, the model hash, the store read (if any), the rows carried."""

    folder: Path
    model_hash: str
    store: Path | None
    suites: list[MeasuredSuite]


def export_model(run_dir: Path, out: Path, store: Path | None = None, repo_id: str | None = None,
                 force: bool = False) -> ExportedModel:
    """Write ``out``: the run's weights, sidecar and config, and a model card with the rows ``store`` (default: the
    default store, when it exists) holds for these weights. ``out`` is written whole or not at all; an existing
    non-empty ``out`` is replaced only with ``force``."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    tensors, metadata = load_final_weights(run_dir)  # sha256-checked: a damaged file is never shared
    model_hash = run_model_hash(state_hash(tensors), model_identity(config.model))
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise CheckpointError(f"{out} exists and is not empty; give another --out, or --force to replace it")
    chosen = existing_store(store, optional=True)
    suites = measured_suites(chosen, model_hash) if chosen is not None else []
    card = model_card(run_dir.name, config.method, config.preset, metadata, model_hash, suites, repo_id)
    _write_folder(run_dir, out, card, force)
    return ExportedModel(out, model_hash, chosen, suites)


def measured_suites(store: Path, model_hash: str) -> list[MeasuredSuite]:
    """Every complete suite run of ``model_hash`` in ``store`` (read only), with threat specifications."""
    found = []
    with ResultStore(store, read_only=True) as results:
        for name in SUITES.names():
            for run in results.suite_runs(name):
                if run.model_hash == model_hash and (row := measured_row(results, run, SUITES.get(name))):
                    found.append(MeasuredSuite(name, row, threat_specs(results, run), _provenance(results, run)))
    return found


def threat_specs(store: ResultStore, run: SuiteRun) -> list[dict[str, Any]]:
    """Column, threat, norm, ε and attack (steps, restarts) of each threat of a suite run, as stored."""
    specs = []
    for key in run.threat_keys:
        params, column = store.threat_params(key), store.threat_column(key)
        name = key.split(":", 1)[0]
        norm = params.get("norm") or (column if column in ("l1", "l2", "linf") else None)
        attack = name.removesuffix(f"-{norm}") if norm else name
        effort = ", ".join(f"{field} {params[field]}" for field in ATTACK_FIELDS if field in params)
        specs.append({"column": column, "threat": name, "norm": norm, "eps": params.get("eps"),
                      "attack": f"{attack} ({effort})" if effort else attack})
    return specs


def _provenance(store: ResultStore, run: SuiteRun) -> list[dict[str, Any]]:
    records = {json.dumps(record, sort_keys=True) for key in run.threat_keys
               for record in store.provenance(run.model_hash, key, run.dataset) if record}
    return [json.loads(text) for text in sorted(records)]


def model_card(name: str, method: str, preset: str, metadata: dict[str, Any], model_hash: str,
               suites: list[MeasuredSuite], repo_id: str | None = None) -> str:
    """The Hub model card (README.md): front matter, how to load, measured rows, threat specifications,
    provenance."""
    dataset = str(metadata.get("dataset") or "unknown")
    repo = repo_id or "ORG/NAME"
    lines = ["---", "library_name: rome-bench", "tags:", "- adversarial-robustness", "- rome-bench",
             "- image-classification", f"datasets:\n- {dataset}", "metrics:\n- accuracy", "---", "",
             f"# {name}", "",
             f"A `{method}` model trained with rome-bench "
             f"(preset `{preset}`, dataset `{dataset}`). Images in [0, 1]; normalisation is inside the model.", "",
             "## Use", "", "```bash", f"rome-bench eval --model hf:{repo} --suite seen", "```", "", "```python",
             "import rome_bench", "", f'model = rome_bench.load_model("hf:{repo}")', "```", "",
             "Offline, `HF_HUB_OFFLINE=1` loads it from the Hugging Face cache; `hf:PATH` loads a local copy.", ""]
    lines += _results_section(suites)
    lines += ["## Provenance", "", f"- model hash (weights and model config): `{model_hash}`",
              f"- weights sha256: `{metadata.get('tensors_sha256', 'unknown')}`",
              f"- trained at git commit `{metadata.get('git_commit') or 'unknown'}`, "
              f"data fingerprint `{metadata.get('data_fingerprint') or 'unknown'}`", ""]
    for measured in suites:
        for record in measured.provenance:
            lines += [f"Evaluation of suite `{measured.suite}`:", "", "```json",
                      json.dumps(record, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _results_section(suites: list[MeasuredSuite]) -> list[str]:
    """Per suite: the accuracy row (95% Wilson intervals) and the table of its threats' specifications."""
    lines = ["## Measured robustness", ""]
    if not suites:
        return [*lines, "No measured rows: export with `--store` pointing at a store where this model was "
                        "evaluated (`rome-bench eval`).", ""]
    for measured in suites:
        row, columns = measured.row, table_columns(SUITES.get(measured.suite), [measured.row])
        shown = [(column, title) for column, title in columns if column in row.values]
        lines += [f"### Suite `{measured.suite}` on {row.dataset}, n = {row.n} (accuracy %, 95% Wilson interval)",
                  "", "| " + " | ".join(title for _, title in shown) + " |",
                  "|" + "---:|" * len(shown), "| " + " | ".join(cell_text(row, column) for column, _ in shown) + " |",
                  "", "| Column | Threat | Norm | ε | Attack |", "|---|---|---|---:|---|"]
        lines += [f"| {spec['column']} | {spec['threat']} | {spec['norm'] or '–'} | {_number(spec['eps'])} | "
                  f"{spec['attack']} |" for spec in measured.threats]
        lines.append("")
        lines.append("Rows measured under another threat specification (ε, norm or attack) are not comparable.")
        lines.append("")
    return lines


def _number(value: object) -> str:
    """ε as printed: 6 significant digits, and k/255 when it is one (the ℓ∞ convention)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–" if value is None else str(value)
    steps = value * 255
    fraction = f" ({round(steps)}/255)" if 0 < value < 1 and abs(steps - round(steps)) < 1e-6 else ""
    return f"{value:.6g}{fraction}"


def _write_folder(run_dir: Path, out: Path, card: str, force: bool) -> None:
    """Copy the model files and write the card into a temporary sibling, then move it to ``out`` in one step."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name in MODEL_FILES:
            shutil.copyfile(run_dir / name, staging / name)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        staging.chmod(0o755)
        if out.exists() and force:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        elif out.exists():
            out.rmdir()  # empty: checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
