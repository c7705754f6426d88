"""RobustBench's model zoo as a model source: ``robustbench:<name>`` for ``eval --model``, ``load_model``, ``--init``.

The ``robustbench`` package (1.1.1) builds the architecture and loads the checkpoint with its own
``robustbench.utils.load_model(model_name, model_dir, dataset, threat_model)``: offline from a local ``model_dir``
laid out as RobustBench lays it out, ``<model_dir>/<dataset>/<threat_model>/<name>.pt``, downloading only when that
file is missing (one clear line when it is missing and the download fails). Zoo models take images in [0, 1] and
carry their own normalisation (e.g. the DeepMind architectures' mean/std), exactly as RobustBench evaluates them;
rome-bench adds none.

Installing it: robustbench pins ``timm==1.0.9`` and ``gdown==5.1.0`` and imports ``autoattack``, which PyPI ships as
``pyautoattack``. So it is installed without its dependencies (``pip install --no-deps robustbench==1.1.1
gdown==5.1.0``, in ``tests/reference-requirements.txt``) plus what its imports need (the ``zoo`` extra), and
:func:`import_robustbench` makes ``autoattack`` an alias of ``pyautoattack`` before importing it.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from rome_bench.errors import ConfigError

PREFIX = "robustbench:"
THREAT_MODELS: tuple[str, ...] = ("Linf", "L2", "corruptions")
DATASETS: dict[str, str] = {  # rome-bench dataset name -> RobustBench's
    "cifar10": "cifar10", "cifar100": "cifar100", "imagenet1k": "imagenet",
    "synthetic": "cifar10",  # the generated stand-in with CIFAR-10's geometry and 10 classes (offline tests)
}
MODEL_DIR_VARIABLE = "ROME_BENCH_ROBUSTBENCH_DIR"  # where checkpoints are looked for when no model_dir is given

AUTOATTACK_SUBMODULES = ("autoattack", "autopgd_base", "fab_base", "fab_pt", "other_utils", "square", "state")
INSTALL_HINT = ("pip install --no-deps robustbench==1.1.1 gdown==5.1.0 && pip install 'rome-bench[zoo]' "
                "(see docs/zoo.md)")


def is_zoo_source(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def zoo_name(source: str) -> str:
    name = source[len(PREFIX):]
    if not name:
        raise ConfigError(f"'{source}' names no model: give robustbench:<name>, e.g. robustbench:Standard")
    return name


def bridge_autoattack() -> None:
    """Make ``import autoattack`` (what robustbench imports) resolve to PyPI's ``pyautoattack``."""
    if "autoattack" in sys.modules:
        return
    package = importlib.import_module("pyautoattack")
    sys.modules["autoattack"] = package
    for name in AUTOATTACK_SUBMODULES:
        try:
            sys.modules[f"autoattack.{name}"] = importlib.import_module(f"pyautoattack.{name}")
        except ImportError:  # a submodule this pyautoattack version lacks: robustbench only needs state/AutoAttack
            continue


def import_robustbench() -> ModuleType:
    """``robustbench.utils`` (the zoo and its loader); one ConfigError line when the package is not installed."""
    try:
        bridge_autoattack()
        with warnings.catch_warnings():  # pkg_resources and timm.models.helpers: deprecated imports inside it
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module("robustbench.utils")
    except ImportError as error:
        raise ConfigError(f"RobustBench models need the robustbench package ({error}): {INSTALL_HINT}") from error


def zoo_entries(dataset: str, threat_model: str) -> dict[str, Any]:
    """RobustBench's registered models for a dataset and threat model (name -> its zoo entry)."""
    utils = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return utils.all_models[BenchmarkDataset(zoo_dataset(dataset))][ThreatModel(check_threat_model(threat_model))]


def zoo_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ConfigError(f"RobustBench has no models for dataset '{dataset}'; its datasets: "
                          f"{', '.join(sorted(set(DATASETS)))}")
    return DATASETS[dataset]


def check_threat_model(threat_model: str) -> str:
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"unknown RobustBench threat model '{threat_model}'; "
                          f"choose one of {', '.join(THREAT_MODELS)}")
    return threat_model


def default_model_dir() -> Path:
    """``$ROME_BENCH_ROBUSTBENCH_DIR``, else RobustBench's own default ``./models``."""
    return Path(os.environ.get(MODEL_DIR_VARIABLE) or "models")


def checkpoint_path(name: str, dataset: str, threat_model: str, model_dir: str | Path | None = None) -> Path:
    """Where RobustBench keeps (or downloads) the checkpoint: ``<model_dir>/<dataset>/<threat_model>/<name>.pt``."""
    folder = Path(model_dir or default_model_dir())
    return folder / zoo_dataset(dataset) / check_threat_model(threat_model) / f"{name}.pt"


def parse_zoo_source(source: str) -> tuple[str, str]:
    """``robustbench:<name>`` or ``robustbench:<threat_model>/<name>`` -> (name, threat model; default Linf)."""
    spec = zoo_name(source)
    threat_model, _, name = spec.rpartition("/")
    return name, check_threat_model(threat_model or "Linf")


def build_zoo_architecture(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> nn.Module:
    """The zoo model's architecture with fresh weights (for tests, and to check a name)."""
    entries = zoo_entries(dataset, threat_model)
    if name not in entries:
        from difflib import get_close_matches

        close = get_close_matches(name, list(entries), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"RobustBench has no {dataset} {threat_model} model '{name}'{hint}")
    return entries[name]["model"]()


def load_zoo_model(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                   model_dir: str | Path | None = None) -> nn.Module:
    """A RobustBench model with its trained weights, in eval mode (offline when the checkpoint is in ``model_dir``)."""
    utils = import_robustbench()
    build_zoo_architecture(name, dataset, threat_model)  # a wrong name fails here, before any download
    path = checkpoint_path(name, dataset, threat_model, model_dir)
    # Library warnings (torch.load's about a pickled file) are held back: shown after a load, never before the line.
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        try:
            model = utils.load_model(model_name=name, model_dir=str(model_dir or default_model_dir()),
                                     dataset=zoo_dataset(dataset), threat_model=threat_model).eval()
        except Exception as error:  # gdown, requests, torch.load: each means "no usable checkpoint here"
            raise _load_error(name, path, error) from error
    for warning in held:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model


def _load_error(name: str, path: Path, error: Exception) -> ConfigError:
    """One line: the checkpoint at ``path`` does not fit ``name``, or it is missing and could not be downloaded."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, pickle.UnpicklingError):  # torch's own text is paragraphs long, with terminal escapes
        reason = "it holds pickled objects, which are never unpickled (torch.load with weights_only)"
    if path.is_file():
        return ConfigError(f"RobustBench checkpoint {path} does not load into {name}'s architecture: {reason}; "
                           f"replace it with the zoo's file")
    return ConfigError(f"RobustBench model {name}: {path} is missing and downloading it failed ({reason}); "
                       f"put the checkpoint there (RobustBench's layout) or retry with network access")

