"""Models: a registry of backbones, the RoME expert adapter, and :func:`create_model`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from rome_bench.config import ModelConfig
from rome_bench.errors import CheckpointError
from rome_bench.models import timm_backbones as _timm_backbones  # noqa: F401  (registers DeiT and Swin)
from rome_bench.models import vit as _vit  # noqa: F401  (registers the ViTs)
from rome_bench.models import wrn as _wrn  # noqa: F401  (registers the WideResNets)
from rome_bench.models.classifier import ImageClassifier, content_hash
from rome_bench.models.external import (
    ExternalModelSpec,
    build_external_model,
    load_external_model,
    load_external_weights,
    parse_model_spec,
)
from rome_bench.models.registry import MODELS
from rome_bench.models.rome import add_rome_experts, gate_outputs, gating_modules, has_experts

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

__all__ = [
    "MODELS", "ExternalModelSpec", "ImageClassifier", "build_external_model", "content_hash", "create_model",
    "gate_outputs", "gating_modules", "has_experts", "load_external_model", "load_external_weights",
    "parse_model_spec",
]


def create_model(config: ModelConfig, info: DatasetInfo, with_experts: bool) -> ImageClassifier:
    """Build the backbone for ``info``'s images, load local pretrained weights, add RoME experts if asked."""
    builder = MODELS.get(config.backbone)
    backbone = builder(num_classes=info.num_classes, image_size=info.image_size, patch_size=config.patch_size)
    if config.pretrained:
        _load_pretrained(backbone, Path(config.pretrained))
    if with_experts:
        add_rome_experts(backbone, config.rome)
    return ImageClassifier(backbone, info.mean, info.std)


def _load_pretrained(backbone: nn.Module, path: Path) -> None:
    """Load a local state dict; the classifier head and mismatched shapes (e.g. pos_embed) are skipped."""
    if not path.is_file():
        raise CheckpointError(f"pretrained weights '{path}' not found; give a local .safetensors or .pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read pretrained weights '{path}': {error}") from error
    own = backbone.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not compatible:
        raise CheckpointError(f"pretrained weights '{path}' share no tensor with backbone {type(backbone).__name__}")
    backbone.load_state_dict(compatible, strict=False)
