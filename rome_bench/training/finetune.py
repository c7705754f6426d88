"""Robust fine-tuning: start any recipe from trained weights (``model.init_from`` = a run directory or a file).

The weights load strictly: every tensor of the source must find its place in the model, and every tensor of the
model must come from the source, except those the model's family adds to the backbone (experts and gates). A
layer that a family wraps keeps its weights under ``<layer>.base.``; those are matched to ``<layer>.`` in a source
without experts. Added experts start as the family builds them (LoRA B = 0, adapter up-projection = 0), so the
fine-tuned model computes exactly the source's logits at step 0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from rome_bench.checkpoint import CONFIG_FILE, load_final_weights
from rome_bench.config import ModelConfig
from rome_bench.errors import CheckpointError
from rome_bench.models import create_model

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

WRAPPED = ".base."  # where an expert wrapper keeps the layer it wraps


def read_initial_weights(source: Path) -> dict[str, torch.Tensor]:
    """The tensors of a finished run directory, a .safetensors file, or a .pt/.pth state dict (loaded safely)."""
    if source.is_dir():
        if not (source / CONFIG_FILE).exists():
            raise CheckpointError(f"--init {source} is a folder but not a run directory (no {CONFIG_FILE})")
        return load_final_weights(source)[0]
    if not source.is_file():
        raise CheckpointError(f"--init {source} does not exist; give a run directory or a weights file")
    try:
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(source))
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read --init weights {source}: {type(error).__name__}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--init {source} is not a state dict of tensors")
    return state


def backbone_keys(config: ModelConfig, info: DatasetInfo) -> set[str]:
    """Names of the plain backbone's tensors (built without touching the run's RNG)."""
    with torch.random.fork_rng(devices=[]):
        plain = create_model(dataclasses.replace(config, family="plain", init_from=None), info)
    return set(plain.state_dict())


def match_initial_weights(model: nn.Module, source: dict[str, torch.Tensor], added_allowed: set[str]
                          ) -> dict[str, torch.Tensor]:
    """The model's state dict filled from ``source``; raises naming missing, unexpected or wrong-shaped tensors."""
    own = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key in own:
        name = key if key in source else key.replace(WRAPPED, ".", 1)
        if name in source:
            matched[key] = source[name]
            used.add(name)
    missing = [key for key in own if key not in matched and key not in added_allowed]
    unexpected = [key for key in source if key not in used]
    shapes = [f"{key} (source {tuple(value.shape)}, model {tuple(own[key].shape)})"
              for key, value in matched.items() if value.shape != own[key].shape]
    problems = [f"{len(items)} {label} (e.g. {items[0]})" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong-shaped", shapes)) if items]
    if problems:
        raise CheckpointError(f"--init weights do not fit this model: {', '.join(problems)}; "
                              f"fine-tune with the source run's backbone and patch size")
    return {**own, **matched}


def load_initial_weights(model: nn.Module, config: ModelConfig, info: DatasetInfo) -> None:
    """Load ``config.init_from`` into ``model`` (in place); tensors the family adds keep their initial values."""
    source = read_initial_weights(Path(str(config.init_from)))
    plain = backbone_keys(config, info)
    added = {key for key in model.state_dict() if key not in plain and key.replace(WRAPPED, ".", 1) not in plain}
    model.load_state_dict(match_initial_weights(model, source, added))
