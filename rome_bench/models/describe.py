"""What a model costs: its parameters by part and its forward FLOPs per image (paper Table 6, Table A3/A4).

:func:`describe_model` builds the model a config names (no data, no training, on the CPU) and counts:

* ``total``: every parameter;
* ``experts``: the parameters of the expert layers (every module with an ``ExpertGate`` as ``.gate``), less their
  ``.base`` layer and their gate: the LoRA A/B, the adapters, the K FFNs of an FFN MoE (the upcycled copy included);
* ``gates``: the gating networks' parameters, less L_div's projections;
* ``projections``: the gates' own K → K' projections of Eq. 7 (``div_projection`` per-layer or trainable); they only
  feed the diversification loss, so they cost no FLOPs;
* ``added``: total − the backbone's (Table A4's "# Params": what the experts, gates and projections add);
* ``gmacs``: multiply-adds of one image's forward (eval mode) / 1e9, from ``torch.utils.flop_counter``
  (FlopCounterMode counts 2 FLOPs per multiply-add; the paper's "FLOPs (G)" are multiply-adds, as fvcore counts).
  Matmuls, convolutions and attention's two matmuls are counted; norms and element-wise ops are not. ViT-B on
  CIFAR-10 (65 tokens): 5.601G plain, 5.841G RoME; the paper's Table 6: 5.61 and 5.84.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rome_bench.config import ModelConfig
from rome_bench.data import DATASETS, DatasetInfo
from rome_bench.models.family import build_backbone, build_family
from rome_bench.models.gates import ExpertGate
from rome_bench.models.pretrained import architecture_only

MILLION = 1e6


@dataclass(frozen=True)
class ModelDescription:
    """Parameter counts by part and forward multiply-adds per image of one model."""

    backbone: str
    family: str
    image_size: int
    total: int
    backbone_total: int
    experts: int
    gates: int
    projections: int
    gmacs: float

    @property
    def added(self) -> int:
        """Parameters beyond the backbone's (experts, gates, projections; a replaced MLP counts as removed)."""
        return self.total - self.backbone_total

    def lines(self) -> list[str]:
        """The description as aligned text lines (millions to 3 decimals, and the exact counts)."""
        rows = [("total", self.total), ("backbone", self.backbone_total), ("added (Table A4)", self.added),
                ("experts", self.experts), ("gates", self.gates), ("projections (L_div)", self.projections)]
        head = [f"model: {self.family} on {self.backbone}, {self.image_size}x{self.image_size} images"]
        body = [f"  {name:<20} {count / MILLION:10.3f}M  ({count:,})" for name, count in rows]
        return [*head, "parameters:", *body,
                f"forward: {self.gmacs:.3f} GMACs/image (the paper's 'FLOPs (G)'), {2 * self.gmacs:.3f} GFLOPs"]


def dataset_geometry(name: str) -> DatasetInfo:
    """A registered dataset's classes and image size, without loading any data (placeholder mean/std/classes)."""
    meta = DATASETS.entry(name).metadata
    classes = int(meta["num_classes"])
    return DatasetInfo(name, classes, int(meta["image_size"]), (0.5,) * 3, (0.25,) * 3,
                       tuple(map(str, range(classes))))


def parameter_parts(model: nn.Module) -> tuple[int, int, int]:
    """(experts, gates, projections) parameter counts of ``model`` (see the module docstring)."""
    experts = gates = projections = 0
    for module in model.modules():
        if isinstance(module, ExpertGate):
            projection = getattr(module, "div_projection", None)
            owned = count(projection) if isinstance(projection, nn.Module) else 0
            projections += owned
            gates += count(module) - owned
        gate = getattr(module, "gate", None)
        if isinstance(gate, ExpertGate):
            base = getattr(module, "base", None)
            experts += count(module) - count(gate) - (count(base) if isinstance(base, nn.Module) else 0)
    return experts, gates, projections


def count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def forward_macs(model: nn.Module, image_size: int, device: torch.device) -> int:
    """Multiply-adds of one image's eval-mode forward (FlopCounterMode's FLOPs / 2), attention computed by its math
    kernel (the fused CPU kernels are not counted by FlopCounterMode)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.rand(1, 3, image_size, image_size, device=device))
    return counter.get_total_flops() // 2


def describe_model(config: ModelConfig, dataset: str) -> ModelDescription:
    """Build the model ``config`` names for ``dataset``'s images and count its costs: on the meta device (shapes
    only: no memory, no initialisation, seconds for a ViT-B), or the CPU where a backbone cannot build there."""
    info = dataset_geometry(dataset)
    config = architecture_only(config)  # counts need no pretrained weights (nor their download)
    try:
        return _describe(config, info, torch.device("meta"))
    except (NotImplementedError, RuntimeError):  # an op with no meta kernel: build it for real
        return _describe(config, info, torch.device("cpu"))


def _describe(config: ModelConfig, info: DatasetInfo, device: torch.device) -> ModelDescription:
    with device:
        model = build_family(config).build(config, info)
        backbone_total = count(build_backbone(config, info))
    experts, gates, projections = parameter_parts(model)
    return ModelDescription(config.backbone, config.family, info.image_size, count(model), backbone_total, experts,
                            gates, projections, forward_macs(model, info.image_size, device) / 1e9)
