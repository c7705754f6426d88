"""Expert runs: the families built from whole trained networks (DWF, MORE) start their experts from run directories.

``model.options.experts`` lists one finished run per expert (``ModelFamily.expert_runs()``). At the start of
training, before anything is written, :func:`load_expert_runs` reads each run through ``rome_bench.checkpoint``
(its ``config.json`` and sha256-checked final weights) and loads its backbone into expert k of the model's logit
mixture. Each run must be a finished ``plain``-family run of the same backbone on the same dataset; anything else is
one ``ConfigError``/``CheckpointError`` line naming the run and what to do. ``model.init_from`` (the whole model from
one run) and expert runs exclude each other.

The trainer records what was loaded in the run's final sidecar (``model.json``, key ``experts``): per expert its run
directory, recipe, the sha256 of its weights file, and its **model hash**, the key under which ``rome-bench eval``
stores that run's results (``checkpoint.run_model_hash``: sha256 of the content hash of its weights and its model
config, the one function evaluation uses), so a leaderboard row of the mixture traces to the experts it was built
from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from rome_bench.checkpoint import load_final_weights, read_run_config, run_model_hash
from rome_bench.config import RunConfig
from rome_bench.errors import CheckpointError, ConfigError
from rome_bench.models.classifier import ImageClassifier, content_hash
from rome_bench.models.external import state_dict_mismatch
from rome_bench.models.family import ModelFamily
from rome_bench.models.identity import model_identity
from rome_bench.models.mixture import find_mixture

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

BACKBONE = "backbone."  # the classifier's prefix of every backbone tensor
EXPERT_FAMILY = "plain"


def load_expert_runs(model: nn.Module, family: ModelFamily, config: RunConfig,
                     info: DatasetInfo) -> list[dict[str, Any]]:
    """Load every expert run of ``family`` into ``model``'s experts; the records for the sidecar ([] if none)."""
    runs = family.expert_runs()
    if not runs:
        return []
    if config.model.init_from:
        raise ConfigError("model.init_from and model.options.experts both give the experts' weights: use one "
                          "(init_from continues a whole trained model, experts start each expert from its own run)")
    mixture = find_mixture(model)
    if mixture is None or len(mixture.experts) != len(runs):
        raise ConfigError(f"family '{config.model.family}' got {len(runs)} expert runs but its model has "
                          f"{0 if mixture is None else len(mixture.experts)} experts")
    return [load_expert(expert, Path(run), index, config, info)
            for index, (expert, run) in enumerate(zip(mixture.experts, runs, strict=True))]


def load_expert(expert: nn.Module, run_dir: Path, index: int, config: RunConfig,
                info: DatasetInfo) -> dict[str, Any]:
    """Load one finished plain run's backbone weights into ``expert``; its record for the sidecar."""
    where = f"model.options.experts[{index}] = {run_dir}"
    if not run_dir.is_dir():
        raise CheckpointError(f"{where} does not exist; train the expert first (rome-bench train --family plain "
                              f"--out {run_dir})")
    expert_config = read_run_config(run_dir)
    problems = [
        (expert_config.model.family == EXPERT_FAMILY,
         f"is a '{expert_config.model.family}' run; experts are runs of the plain family (--family plain)"),
        (expert_config.model.backbone == config.model.backbone,
         f"has backbone {expert_config.model.backbone}, this model's experts are {config.model.backbone} "
         f"(set --backbone to match)"),
        (expert_config.model.patch_size == config.model.patch_size,
         f"has patch size {expert_config.model.patch_size}, this model {config.model.patch_size}"),
        (expert_config.data.dataset == config.data.dataset,
         f"was trained on {expert_config.data.dataset}, this run trains on {config.data.dataset}"),
    ]
    for ok, problem in problems:
        if not ok:
            raise ConfigError(f"{where} {problem}")
    tensors, metadata = load_final_weights(run_dir)
    if not all(key.startswith(BACKBONE) for key in tensors):
        raise CheckpointError(f"{where}: its weights are not a rome-bench classifier's (keys without 'backbone.'); "
                              f"train the expert with rome-bench train --family plain")
    state = {key.removeprefix(BACKBONE): value for key, value in tensors.items()}
    if mismatch := state_dict_mismatch(expert.state_dict(), state):
        raise CheckpointError(f"{where}: its weights do not fit expert {index} ({mismatch}); retrain the expert "
                              f"with this backbone")
    expert.load_state_dict(state)
    return {"index": index, "run": str(run_dir), "recipe": expert_config.train.recipe,
            "method": expert_config.method, "tensors_sha256": metadata.get("tensors_sha256"),
            "model_hash": expert_model_hash(expert, expert_config, info)}


def expert_model_hash(expert: nn.Module, expert_config: RunConfig, info: DatasetInfo) -> str:
    """The model hash ``rome-bench eval`` gives the expert's run (``checkpoint.run_model_hash``)."""
    classifier = ImageClassifier(expert, info.mean, info.std)  # the run's own layout: keys 'backbone.…'
    return run_model_hash(content_hash(classifier), model_identity(expert_config.model))
