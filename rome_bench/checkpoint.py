"""Run directories and checkpoints: safetensors + a JSON sidecar, written atomically; never pickle.

Training writes run directories through this module and evaluation reads them through it (never through
``training/``). A run directory holds ``config.json`` (the resolved :class:`RunConfig`), ``model.{safetensors,json}``
(the final weights) and ``checkpoints/step-*.{safetensors,json}`` (the newest training states).

A checkpoint is two files, ``<stem>.safetensors`` (tensors) and ``<stem>.json`` (everything else, including the
sha256 of the tensor file). Each is written to a temporary file in the same directory and moved into place with
``os.replace``, tensors first, so a reader never sees a half-written file, and a sidecar never points to tensors
that are not complete: a kill at any moment leaves the previous checkpoint intact. The names of a training
checkpoint's tensors are laid out here (:class:`TrainingState`), so that the trainer never spells a key.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as serialize_tensors

from rome_bench.config import ModelConfig, RunConfig, upgrade_legacy
from rome_bench.errors import CheckpointError, ConfigError
from rome_bench.jsonfiles import read_json

CHECKPOINT_DIR = "checkpoints"
MODEL_STEM = "model"
CONFIG_FILE = "config.json"
CURVE_FILE = "training-curve.json"  # --eval-every: (step, wall time, union and per-threat accuracy) records
RUN_FILES = (CONFIG_FILE, f"{MODEL_STEM}.json", f"{MODEL_STEM}.safetensors")
KEEP_CHECKPOINTS = 2


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run was trained with (older layouts upgraded: :func:`upgrade_stored_config`)."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with rome-bench train")
    try:
        return RunConfig.from_dict(upgrade_stored_config(read_json(path, "run config")))
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}; restore the run's config.json or retrain") from error


def load_final_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A finished run's final weights and sidecar (sha256-checked)."""
    sidecar = run_dir / f"{MODEL_STEM}.json"
    if not sidecar.exists():
        raise CheckpointError(f"run {run_dir} has no final model yet; finish it with "
                              f"rome-bench train --out {run_dir} --resume")
    return load_tensors_with_sidecar(sidecar)


# Before model.options, RoME's settings were the section model.rome, present in every run whatever its family.
LEGACY_SECTION = "rome"
LEGACY_SECTION_NAMES = {"lambda_div": "routing_weight"}  # older names inside that section
# RoME options whose default changed: a RoME config stored without them was trained with these values (new runs
# always store them: RomeFamily.stored_options). div_projection was a bool before: true = fixed, false = none.
ROME_OPTIONS_BEFORE: dict[str, Any] = {"div_projection": "fixed", "conv_lora": "im2col"}
DIV_PROJECTION_FROM_BOOL = {True: "fixed", False: "none"}


def upgrade_stored_config(data: dict[str, Any]) -> dict[str, Any]:
    """A stored config in today's layout: ``train.method`` split (``config.upgrade_legacy``), the old
    ``model.rome`` section moved into ``model.options`` for a RoME run, or kept in ``model.legacy_identity`` for
    any other family (whose model hash covered it), and a RoME run's options from before a default changed read
    with the old values (:func:`upgrade_rome_options`)."""
    data = upgrade_legacy(data)
    model = data.get("model")
    if not isinstance(model, dict):
        return data
    model = dict(model)
    is_rome = model.get("family", ModelConfig().family) == LEGACY_SECTION
    if isinstance(model.get(LEGACY_SECTION), dict):
        section = {LEGACY_SECTION_NAMES.get(name, name): value for name, value in model.pop(LEGACY_SECTION).items()}
        if is_rome:
            model["options"] = {**section, **(model.get("options") or {})}
        else:
            model["legacy_identity"] = {**(model.get("legacy_identity") or {}),
                                        LEGACY_SECTION: upgrade_rome_options(section)}
    if is_rome and isinstance(model.get("options", {}), dict):
        model["options"] = upgrade_rome_options(model.get("options") or {})
    return {**data, "model": model}


def upgrade_rome_options(options: dict[str, Any]) -> dict[str, Any]:
    """Stored RoME options with the old values of the options added since (:data:`ROME_OPTIONS_BEFORE`) filled in,
    and the old boolean ``div_projection`` as its name."""
    upgraded = {**ROME_OPTIONS_BEFORE, **options}
    if isinstance(upgraded["div_projection"], bool):
        upgraded["div_projection"] = DIV_PROJECTION_FROM_BOOL[upgraded["div_projection"]]
    return upgraded


def run_model_hash(content: str, identity: str) -> str:
    """The model hash evaluation stores a run's results under: sha256 of '<weights' content hash>/<model identity>'
    (the weights and the model config, which weights alone do not fix); expert records (DWF, MORE) reuse it."""
    return hashlib.sha256(f"{content}/{identity}".encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file in its folder and ``os.replace``; an OSError names ``path``.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not mkstemp's private 0600.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _naming(error, path) from error
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _naming(error, path) from error
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _naming(error: OSError, path: Path) -> OSError:
    """The same error, naming the file the user asked for rather than our temporary file (or nothing)."""
    named = error.filename2 or error.filename
    if named is not None and ".tmp" not in str(named):
        return error
    return type(error)(error.errno, error.strerror or str(error), str(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors_with_sidecar(directory: Path, stem: str, tensors: dict[str, torch.Tensor],
                              metadata: dict[str, Any]) -> Path:
    """Write ``stem.safetensors`` then ``stem.json`` (with the tensors' sha256); returns the JSON path."""
    blob = serialize_tensors({name: t.detach().cpu().contiguous() for name, t in tensors.items()})
    atomic_write_bytes(directory / f"{stem}.safetensors", blob)
    sidecar = {**metadata, "tensors_file": f"{stem}.safetensors", "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    path = directory / f"{stem}.json"
    atomic_write_text(path, json.dumps(sidecar, indent=2, sort_keys=True, default=str))
    return path


def load_tensors_with_sidecar(sidecar_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a sidecar and its tensors, verifying the sha256; a one-line CheckpointError if anything is off."""
    try:
        metadata = read_json(sidecar_path, "checkpoint sidecar")
        blob = (sidecar_path.parent / metadata["tensors_file"]).read_bytes()
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint file missing: {error.filename}") from error
    if hashlib.sha256(blob).hexdigest() != metadata.get("tensors_sha256"):
        raise CheckpointError(
            f"checkpoint {sidecar_path.parent / metadata['tensors_file']} does not match the sha256 in "
            f"{sidecar_path.name} (corrupt or replaced); delete it or retrain")
    try:
        tensors = load_tensors(blob)
    except Exception as error:
        raise CheckpointError(f"checkpoint {metadata['tensors_file']} cannot be read ({error})") from error
    return tensors, metadata


def save_training_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor],
                             metadata: dict[str, Any]) -> Path:
    """Save ``checkpoints/step-XXXXXXXX``; keep the newest KEEP_CHECKPOINTS."""
    directory = run_dir / CHECKPOINT_DIR
    path = save_tensors_with_sidecar(directory, f"step-{step:08d}", tensors, {**metadata, "step": step})
    for old in sorted(directory.glob("step-*.json"))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return path


def latest_training_checkpoint(run_dir: Path) -> Path | None:
    sidecars = sorted((run_dir / CHECKPOINT_DIR).glob("step-*.json"))
    return sidecars[-1] if sidecars else None


# The tensors of a training checkpoint by key. The names are the format: a checkpoint an older version wrote resumes.
#   model.<name>               the model's state dict
#   optim.<index>.<name>       the optimiser's state of parameter <index> (its param groups go in the sidecar)
#   recipe.<name>              the recipe's own state
#   rng.cpu, rng.cuda.<i>      rank 0's RNG states: the CPU's and every visible GPU's
#   rng.rank<r>.<cpu|cuda>     the RNG states of rank r > 0 (runs over several processes)
MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optim."
RECIPE_PREFIX = "recipe."
CPU_RNG_KEY = "rng.cpu"
CUDA_RNG_PREFIX = "rng.cuda."
RANK_RNG_PREFIX = "rng.rank"


@dataclass
class TrainingState:
    """A training checkpoint's tensors by owner, and their keys (:meth:`to_tensors`, :meth:`from_tensors`)."""

    model: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]  # parameter index -> its state
    recipe: dict[str, torch.Tensor]
    cpu_rng: torch.Tensor  # rank 0's
    cuda_rngs: list[torch.Tensor] = field(default_factory=list)  # rank 0's, by device index
    rank_rngs: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # rank r > 0 -> {"cpu", "cuda"}

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The flat tensor table a checkpoint stores."""
        tensors = {f"{MODEL_PREFIX}{name}": value for name, value in self.model.items()}
        for index, state in self.optimizer.items():
            for name, value in state.items():
                tensors[f"{OPTIMIZER_PREFIX}{index}.{name}"] = value
        tensors.update({f"{RECIPE_PREFIX}{name}": value for name, value in self.recipe.items()})
        tensors[CPU_RNG_KEY] = self.cpu_rng
        tensors.update({f"{CUDA_RNG_PREFIX}{index}": state for index, state in enumerate(self.cuda_rngs)})
        for rank, states in sorted(self.rank_rngs.items()):
            tensors.update({f"{RANK_RNG_PREFIX}{rank}.{name}": state for name, state in states.items()})
        return tensors

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> TrainingState:
        """The state a checkpoint's tensor table holds."""
        optimizer: dict[int, dict[str, torch.Tensor]] = {}
        rank_rngs: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(OPTIMIZER_PREFIX):
                _, index, name = key.split(".", 2)
                optimizer.setdefault(int(index), {})[name] = value
            elif key.startswith(RANK_RNG_PREFIX):
                rank, name = key.removeprefix(RANK_RNG_PREFIX).split(".", 1)
                rank_rngs.setdefault(int(rank), {})[name] = value
        cuda_keys = sorted((key for key in tensors if key.startswith(CUDA_RNG_PREFIX)), key=_device_index)
        return cls(model=_with_prefix(tensors, MODEL_PREFIX), optimizer=optimizer,
                   recipe=_with_prefix(tensors, RECIPE_PREFIX), cpu_rng=tensors[CPU_RNG_KEY],
                   cuda_rngs=[tensors[key] for key in cuda_keys], rank_rngs=rank_rngs)


def _with_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose keys start with ``prefix``, keyed by the rest."""
    return {key.removeprefix(prefix): value for key, value in tensors.items() if key.startswith(prefix)}


def _device_index(key: str) -> int:
    """``rng.cuda.10`` sorts after ``rng.cuda.2``."""
    tail = key.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def git_commit() -> str | None:
    """The commit of the rome_bench source tree, if it is a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def read_training_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The run's --eval-every records, in step order ([] when it was trained without --eval-every)."""
    path = run_dir / CURVE_FILE
    if not path.exists():
        return []
    records = read_json(path, "training curve")
    return sorted(records, key=lambda record: record["step"])


def append_training_curve(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one record (replacing any at the same or a later step, left by a run killed after it), atomically."""
    kept = [old for old in read_training_curve(run_dir) if old["step"] < record["step"]]
    atomic_write_text(run_dir / CURVE_FILE, json.dumps([*kept, record], indent=1, sort_keys=True))
