"""Models: a registry of backbones, the model families (RoME and the other MoE defences), and :func:`create_model`.

Importing this package imports every module in it, so a new backbone or family is one file registering itself.
"""

from __future__ import annotations

import importlib
import pkgutil
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
from rome_bench.models.family import FAMILIES, ModelFamily, build_family, register_family
from rome_bench.models.gates import GateOutput, gates, gating_modules, has_gates
from rome_bench.models.identity import model_identity
from rome_bench.models.registry import MODELS

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

__all__ = [
    "FAMILIES",
    "MODELS",
    "ExternalModelSpec",
    "GateOutput",
    "ImageClassifier",
    "ModelFamily",
    "build_external_model",
    "build_family",
    "content_hash",
    "create_model",
    "gates",
    "gating_modules",
    "has_gates",
    "load_external_model",
    "load_external_weights",
    "model_identity",
    "parse_model_spec",
    "register_family",
]


for _module in pkgutil.iter_modules(__path__):  # every family and backbone file registers itself on import
    importlib.import_module(f"{__name__}.{_module.name}")


def create_model(config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
    """The model ``config.family`` builds for ``info``'s images (backbone, local pretrained weights, experts);
    with ``model.normalisation = none`` it feeds the [0, 1] images to the backbone as they are."""
    model = build_family(config).build(config, info)
    if config.normalisation == "none":
        model.without_normalisation()
    return model
