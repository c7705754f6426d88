"""Mixtures of whole expert networks: a soft gate network mixes the experts' logits (DWF, MORE).

Both families (``models/dwf.py``, ``models/more.py``) build the same model around K full classifiers f_1 … f_K of
the configured backbone (``model.backbone``) and a gate network h with K outputs:

    g(x) = softmax(h(x)) ∈ Δ^{K−1},          f(x) = Σ_k g_k(x) · f_k(x)        (logits, not probabilities)

Everything sits inside one :class:`ImageClassifier`, so the experts and the gate see the normalised image and every
attack sees the whole mixture f (gate included). The gate records ``GateOutput(fused=(B, 1, K))`` through
:class:`MixtureGate` (an :class:`ExpertGate`), so GMA, the routing losses, ``analyze gating`` and the inference-time
variants (``eval --route-to-expert k``, random, inverse) read it like every other family's gates. Under a variant
the mixture uses the varied weights; experts whose weight is 0 for the whole batch (``expert-k``) are not run,
which changes nothing but the cost (their term is 0·f_k).

Gate networks (``model.options.gate``), a choice the papers leave open or that we cannot follow exactly:

* ``cnn`` (default): a small CNN, conv3×3(3→w) → ReLU → max-pool 2 → conv3×3(w→2w) → ReLU → global average pool →
  Linear(2w→K), w = ``gate_width``. DWF says only "soft gating" over the nine experts; with w = 8 it has 1,460
  parameters at K = 4, which fits RoME's Table 6 count for MORE (340.60M = 4 × 85.15M ViT-B experts leaves fewer
  than 5k parameters for the gate);
* ``backbone``: a network of the experts' architecture with K outputs; MORE's public code gates its ResNet-18
  experts with a ResNet-18 (``MoE_ResNet18``).

``expert_heads(model)`` names each expert's classifier head (its last ``nn.Linear``): MORE's stage 2 trains those and
the gate. ``experts`` (model.options) lists run directories whose final weights the experts start from; the trainer
loads them at the start of training (``training/experts.py``), never when a finished run is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.config import MAX_EXPERTS, ModelConfig
from rome_bench.errors import ConfigError
from rome_bench.models.classifier import ImageClassifier
from rome_bench.models.family import ModelFamily, build_backbone
from rome_bench.models.gates import ExpertGate, GateOutput
from rome_bench.models.registry import MODELS

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

GATE_NETWORKS: tuple[str, ...] = ("cnn", "backbone")


class GateCNN(nn.Module):
    """conv3×3(3→w) → ReLU → max-pool 2 → conv3×3(w→2w) → ReLU → global average pool → Linear(2w→K)."""

    def __init__(self, num_experts: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv1(x)), 2)
        out = F.relu(self.conv2(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class MixtureGate(ExpertGate):
    """g(x) = softmax(h(x)) over K whole experts, recorded as ``GateOutput(fused=(B, 1, K))``; returns (B, K)."""

    def __init__(self, network: nn.Module, num_experts: int, name: str = "gate") -> None:
        super().__init__(num_experts, layer=0, name=name)
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weights = self.varied(torch.softmax(self.network(images), dim=-1))
        self.record(GateOutput(weights.unsqueeze(1), self.layer, self.name))
        return weights


class LogitMixture(nn.Module):
    """f(x) = Σ_k g_k(x) · f_k(x) over whole expert networks (the module docstring)."""

    def __init__(self, experts: list[nn.Module], gate: MixtureGate) -> None:
        super().__init__()
        if len(experts) != gate.num_experts:
            raise ConfigError(f"the gate has {gate.num_experts} outputs but the mixture {len(experts)} experts")
        self.experts = nn.ModuleList(experts)
        self.gate = gate

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weights = self.gate(images)  # (B, K)
        active = weights.detach().ne(0).any(dim=0).tolist()
        terms = [weights[:, k, None] * expert(images) for k, expert in enumerate(self.experts) if active[k]]
        if not terms:  # every weight 0 (the 'removed' variant): no expert contributes
            return weights.new_zeros(len(images), self._num_classes())
        return torch.stack(terms).sum(dim=0)

    def _num_classes(self) -> int:
        return last_linear(self.experts[0]).out_features


def last_linear(module: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a network in registration order: its classifier head, outside any gate."""
    in_gates = {id(sub) for gate in module.modules() if isinstance(gate, ExpertGate) for sub in gate.modules()}
    linears = [m for m in module.modules() if isinstance(m, nn.Linear) and id(m) not in in_gates]
    if not linears:
        raise ConfigError(f"{type(module).__name__} has no nn.Linear classifier head")
    return linears[-1]


def find_mixture(model: nn.Module) -> LogitMixture | None:
    """The model's logit mixture (DWF, MORE), else None."""
    return next((module for module in model.modules() if isinstance(module, LogitMixture)), None)


def expert_heads(model: nn.Module) -> list[nn.Linear]:
    """Each expert's classifier head; for a model without a logit mixture, its own head (one)."""
    mixture = find_mixture(model)
    if mixture is None:
        return [last_linear(model)]
    return [last_linear(expert) for expert in mixture.experts]


@dataclass(frozen=True)
class MixtureOptions:
    """``model.options`` of a logit-mixture family (DWF, MORE)."""

    experts: tuple[str, ...] = ()  # run directories, one per expert, in order; () = fresh weights
    num_experts: int = 4
    gate: str = "cnn"  # cnn | backbone (module docstring)
    gate_width: int = 8  # w of the cnn gate

    def check(self) -> None:
        if not 2 <= self.num_experts <= MAX_EXPERTS:
            raise ConfigError(f"model.options.num_experts must be between 2 and {MAX_EXPERTS} "
                              f"(got {self.num_experts})")
        if self.experts and len(self.experts) != self.num_experts:
            raise ConfigError(f"model.options.experts lists {len(self.experts)} run directories but num_experts is "
                              f"{self.num_experts}: give one run per expert, or none to start from fresh weights")
        if self.gate not in GATE_NETWORKS:
            raise ConfigError(f"model.options.gate must be one of {', '.join(GATE_NETWORKS)} (got '{self.gate}')")
        if self.gate_width < 1:
            raise ConfigError(f"model.options.gate_width must be >= 1 (got {self.gate_width})")


class LogitMixtureFamily(ModelFamily):
    """Base of DWF and MORE: K experts of ``model.backbone`` mixed by a soft gate network (no routing loss)."""

    Options: ClassVar[type] = MixtureOptions
    options: MixtureOptions
    micro: ClassVar[tuple[str, ...]] = ("model.backbone=resnet_micro",)

    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        experts = [build_backbone(config, info) for _ in range(self.options.num_experts)]
        gate = MixtureGate(self._gate_network(config, info), self.options.num_experts)
        return ImageClassifier(LogitMixture(experts, gate), info.mean, info.std)

    def _gate_network(self, config: ModelConfig, info: DatasetInfo) -> nn.Module:
        if self.options.gate == "cnn":
            return GateCNN(self.options.num_experts, self.options.gate_width)
        builder = MODELS.get(config.backbone)
        return builder(num_classes=self.options.num_experts, image_size=info.image_size,
                       patch_size=config.patch_size)

    def expert_runs(self) -> list[str]:
        return list(self.options.experts)
