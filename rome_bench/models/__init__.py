"""Models: a registry of backbones, the RoME expert adapter, and :func:`create_model`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rome_bench.config import ModelConfig
from rome_bench.models import resnet as _resnet  # noqa: F401  (registers ResNet-18 and PreAct ResNet-18)
from rome_bench.models import timm_backbones as _timm_backbones  # noqa: F401  (registers DeiT, Swin and XCiT)
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
from rome_bench.models.family import FAMILIES, ModelFamily, register_family
from rome_bench.models.registry import MODELS
from rome_bench.models.rome import gate_outputs, gating_modules, has_experts

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

__all__ = [
    "FAMILIES",
    "MODELS",
    "ExternalModelSpec",
    "ImageClassifier",
    "ModelFamily",
    "build_external_model",
    "content_hash",
    "create_model",
    "gate_outputs",
    "gating_modules",
    "has_experts",
    "load_external_model",
    "load_external_weights",
    "parse_model_spec",
    "register_family",
]


def create_model(config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
    """The model ``config.family`` builds for ``info``'s images (backbone, local pretrained weights, experts)."""
    return FAMILIES.get(config.family)().build(config, info)
