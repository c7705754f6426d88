"""Robust fine-tuning: start any recipe from trained weights (``model.init_from`` = a run directory or a file).

The paper fine-tunes ℓ∞-robust models (Sec. 5.2 "Robust fine-tuning", Table 3; following E-AT, Croce & Hein 2022)
with E-AT, MAX or RAMP, each with and without RoME; preset ``finetune-cifar10`` holds its CIFAR-10 schedule.

The weights load strictly: every tensor of the source must find its place in the model, and every tensor of the
model must come from the source, except those the model's family adds to the backbone (experts and gates):

* a layer that a family wraps keeps its weights under ``<layer>.base.``; those are matched to ``<layer>.`` in a
  source without experts. Added LoRA/adapter experts start as the family builds them (LoRA B = 0, adapter
  up-projection U = 0), so the fine-tuned model computes exactly the source's logits at step 0;
* FFN experts (``--experts ffn``) replace a block's MLP; each starts as a copy of the source's MLP (the family's own
  upcycling, applied to the source's weights), so these models too start with the source's logits;
* a file of the backbone alone (keys without the classifier's ``backbone.`` prefix, e.g. a RobustBench state dict,
  or ``robustbench:[<threat_model>/]<name>``: the zoo model's weights as RobustBench loads them) is read as the
  backbone's; its ``mean``/``std`` normalisation buffers are dropped when they equal the dataset's
  (the classifier normalises), and refused otherwise. A zoo model without such buffers normalises nothing (e.g.
  RobustBench's ``Standard``): it needs ``model.normalisation = none``, so the fine-tuned model gets its [0, 1]
  images unchanged and starts from the zoo model's exact function.

Anything else (another architecture, patch size, or family without the source's experts) is one error line naming
the missing, unexpected and wrong-shaped tensors. The backbone's key list comes from a plain model built on the
meta device: no memory, and the run's random-number stream is untouched.
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
from rome_bench.models.external import read_weights_file
from rome_bench.models.rome import FFNExpertMixture

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

WRAPPED = ".base."  # where an expert wrapper keeps the layer it wraps
BACKBONE = "backbone."  # the classifier's prefix of every backbone tensor
NORMALISATION = ("mean", "std")  # buffers some backbones (RobustBench's) carry; the classifier normalises itself


def read_initial_weights(source: Path) -> dict[str, torch.Tensor]:
    """The tensors of a finished run directory, a .safetensors file, or a .pt/.pth state dict (loaded safely)."""
    if source.is_dir():
        if not (source / CONFIG_FILE).exists():
            raise CheckpointError(f"--init {source} is a folder but not a run directory (no {CONFIG_FILE})")
        return load_final_weights(source)[0]
    if not source.is_file():
        raise CheckpointError(f"--init {source} does not exist; give a run directory or a weights file "
                              f"(.safetensors, .pt, .pth)")
    state = read_weights_file(source)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--init {source} is not a state dict (a flat dict of tensors); save the model's "
                              f"state_dict() itself")
    return state


def initial_tensors(source: str, info: DatasetInfo) -> dict[str, torch.Tensor]:
    """``--init``'s tensors: a run directory or weights file, or ``robustbench:[<threat_model>/]<name>`` (the zoo
    model's trained state dict, loaded by RobustBench from its model folder for the run's dataset)."""
    from rome_bench.models.robustbench_zoo import is_zoo_source, load_zoo_model, parse_zoo_source

    if not is_zoo_source(source):
        return read_initial_weights(Path(source))
    name, threat_model = parse_zoo_source(source)
    return dict(load_zoo_model(name, info.name, threat_model).state_dict())


def backbone_keys(config: ModelConfig, info: DatasetInfo) -> set[str]:
    """Names of the plain backbone's tensors (built on the meta device: no memory, no random numbers drawn)."""
    plain_config = dataclasses.replace(config, family="plain", options={}, init_from=None, pretrained=None)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        plain = create_model(plain_config, info)
    return set(plain.state_dict())


def as_classifier_weights(model: nn.Module, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` with the classifier's key prefix: a backbone-only file gets ``backbone.``, and its normalisation
    buffers are dropped when they equal the model's (raises when they differ)."""
    if any(key.startswith(BACKBONE) for key in source):
        return source
    weights = {BACKBONE + key: value for key, value in source.items()}
    own = model.state_dict()
    for name in NORMALISATION:
        key, model_value = BACKBONE + name, getattr(model, name, None)
        if key not in weights or key in own or not isinstance(model_value, torch.Tensor):
            continue
        given = weights.pop(key).detach().float().flatten()
        expected = model_value.detach().float().flatten().cpu()
        if given.shape != expected.shape or not torch.allclose(given, expected, atol=1e-4):
            raise CheckpointError(f"--init weights normalise with {name} {given.tolist()}, this model with "
                                  f"{expected.tolist()}: fine-tune on the dataset the source was trained for, with "
                                  f"model.normalisation=dataset")
    return weights


def upcycled_ffn_experts(model: nn.Module, source: dict[str, torch.Tensor]
                         ) -> tuple[dict[str, torch.Tensor], set[str]]:
    """FFN experts built from the source's MLPs, as the family upcycles its own; returns (tensors, source keys used).

    A mixture whose MLP the source lacks (e.g. the source has the mixture itself) is left to the name matching.
    """
    tensors: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for path, mixture in model.named_modules():
        if not isinstance(mixture, FFNExpertMixture):
            continue
        names = [f"{path}.{layer}.{kind}" for layer in ("fc1", "fc2") for kind in ("weight", "bias")]
        if names[0] not in source or names[2] not in source:
            continue
        mlp = nn.Module()
        mlp.fc1 = _linear(source, f"{path}.fc1")
        mlp.fc2 = _linear(source, f"{path}.fc2")
        upcycled = FFNExpertMixture(mlp, mixture.num_experts, mixture.gate)
        tensors.update({f"{path}.{name}": value.detach() for name, value in upcycled.named_parameters()
                        if not name.startswith("gate.")})
        used.update(name for name in names if name in source)
    return tensors, used


def _linear(source: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    weight, bias = source[f"{prefix}.weight"], source.get(f"{prefix}.bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


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
    upcycled, consumed = upcycled_ffn_experts(model, source)
    matched.update({key: value for key, value in upcycled.items() if key not in matched})
    used |= consumed
    missing = [key for key in own if key not in matched and key not in added_allowed]
    unexpected = [key for key in source if key not in used]
    shapes = [f"{key} (source {tuple(value.shape)}, model {tuple(own[key].shape)})"
              for key, value in matched.items() if key in own and value.shape != own[key].shape]
    problems = [f"{len(items)} {label} (e.g. {items[0]})" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong-shaped", shapes)) if items]
    if problems:
        raise CheckpointError(f"--init weights do not fit this model: {', '.join(problems)}; fine-tune with the "
                              f"source's backbone and patch size, on a family with at least the source's experts")
    return {**own, **{key: value for key, value in matched.items() if key in own}}


def check_zoo_normalisation(source: str, tensors: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """A zoo model without normalisation buffers takes [0, 1] images as they are: so must the fine-tuned model."""
    from rome_bench.models.robustbench_zoo import is_zoo_source

    normalises = any(key.rsplit(".", 1)[-1] in NORMALISATION for key in tensors)
    if is_zoo_source(source) and not normalises and config.normalisation != "none":
        raise CheckpointError(f"--init {source} feeds [0, 1] images to its network without normalising them; add "
                              f"--set model.normalisation=none so the fine-tuned model starts from its exact function")


def load_initial_weights(model: nn.Module, config: ModelConfig, info: DatasetInfo) -> None:
    """Load ``config.init_from`` into ``model`` (in place); tensors the family adds keep their initial values."""
    tensors = initial_tensors(str(config.init_from), info)
    check_zoo_normalisation(str(config.init_from), tensors, config)
    source = as_classifier_weights(model, tensors)
    plain = backbone_keys(config, info)
    added = {key for key in model.state_dict() if key not in plain and key.replace(WRAPPED, ".", 1) not in plain}
    model.load_state_dict(match_initial_weights(model, source, added))
