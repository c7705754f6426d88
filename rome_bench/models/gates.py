"""The gates of every mixture-of-experts family, read through one accessor: :func:`gates`.

Every gating module of every family derives from :class:`ExpertGate` and records, on each forward, one
:class:`GateOutput` for its layer (with its graph, so routing losses and GMA can differentiate through it):

* ``fused`` (B, T, K): the soft routing weights over the K experts that sum to 1 over K, per example and token
  (an image-level gate, e.g. DWF's or a sparse MoE's pooled router, has T = 1);
* ``dispatch`` (B, T, K) or None: the hard assignment of a top-k router (1 where the expert runs, else 0); None
  for soft routing, where every expert runs with weight ``fused``;
* subclasses add what one family's losses need: :class:`DualScaleGateOutput` (RoME's local and global gates, for
  the diversification loss), ``RegionGateOutput`` (ReMoE, in its family's file).

Readers declare what they need: a loss on ``fused`` works on every family; one that needs a subclass says so in one
line (``require_output``). Inference-time variants (RoME Table 5, and the sparse MoE's fixed-expert evaluation) are
applied by the gate to its soft weights before any top-k selection (:func:`apply_variant`), so they work on every
family alike:

* ``random``: gates drawn uniformly from the simplex per token; ``inverse``: (1 − g)/(K − 1); ``removed``: all 0
  (experts contribute nothing beside a backbone);
* ``expert-k`` (k = 0..K−1): every example and token goes to expert k alone (one-hot), ``eval --route-to-expert k``.

Attacks on hard top-k routing (:func:`relaxed_routing`): inside the context, a layer that dispatches to its top-k
experts (sparse-moe's top-1 layers, RoME/moe-ffn ``top_k`` FFN experts, ReMoE ``top_k``) returns
``hard.detach() + (soft − soft.detach())`` while autograd records, with ``soft`` the dense mixture under the soft
gates: the forward value is the model's own, bit for bit (``soft − soft.detach()`` is exactly 0), and the backward
pass is the dense mixture's, every expert weighted by its gate (a straight-through estimator of the top-k choice).
Outside it nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError

INFERENCE_VARIANTS: tuple[str, ...] = ("random", "inverse", "removed")
_RELAXED: ContextVar[bool] = ContextVar("rome_bench_relaxed_routing", default=False)
FIXED_EXPERT_PREFIX = "expert-"


@dataclass
class GateOutput:
    """One gated layer's routing in the last forward: soft ``fused`` (B, T, K) and, for top-k, hard ``dispatch``."""

    fused: torch.Tensor
    layer: int
    name: str
    dispatch: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.fused.shape[-1]


@dataclass
class DualScaleGateOutput(GateOutput):
    """RoME's dual-scale gates: per-token ``local`` u (B, T, K) and image-level ``global_`` v (B, K) beside g, and
    in training mode the layer's own K → K' projection of v (B, K') when it has one (``div_projection`` trainable)."""

    local: torch.Tensor | None = None
    global_: torch.Tensor | None = None
    projected: torch.Tensor | None = None


def fixed_expert_variant(expert: int) -> str:
    """The variant name that routes everything to ``expert`` (0-based)."""
    return f"{FIXED_EXPERT_PREFIX}{expert}"


def fixed_expert(variant: str | None) -> int | None:
    """The expert an ``expert-k`` variant routes to, else None."""
    if variant is None or not variant.startswith(FIXED_EXPERT_PREFIX):
        return None
    index = variant[len(FIXED_EXPERT_PREFIX):]
    if not index.isdigit():
        raise ConfigError(f"gating variant '{variant}' must name an expert by its index, e.g. expert-0")
    return int(index)


def check_variant(variant: str | None, num_experts: int | None = None) -> None:
    """One-line ConfigError for an unknown variant or an expert index the model does not have."""
    if variant is None or variant in INFERENCE_VARIANTS:
        return
    expert = fixed_expert(variant)
    if expert is None:
        raise ConfigError(f"unknown gating variant '{variant}'; choose one of {', '.join(INFERENCE_VARIANTS)} "
                          f"or {FIXED_EXPERT_PREFIX}K")
    if num_experts is not None and expert >= num_experts:
        raise ConfigError(f"--route-to-expert {expert}: this model's gates have {num_experts} experts "
                          f"(0..{num_experts - 1})")


def apply_variant(weights: torch.Tensor, variant: str | None) -> torch.Tensor:
    """An inference-time variant of soft gates (…, K) that sum to 1 over the last axis."""
    if variant is None:
        return weights
    if variant == "random":  # uniform on the simplex: normalised exponentials (Dirichlet(1, …, 1))
        draws = -torch.rand_like(weights).clamp_min(1e-12).log()
        return draws / draws.sum(dim=-1, keepdim=True)
    if variant == "inverse":
        experts = weights.shape[-1]
        return (1 - weights) / (experts - 1) if experts > 1 else weights
    if variant == "removed":
        return torch.zeros_like(weights)
    check_variant(variant, weights.shape[-1])
    expert = fixed_expert(variant)
    return F.one_hot(torch.full(weights.shape[:-1], expert, device=weights.device, dtype=torch.long),
                     weights.shape[-1]).to(weights.dtype)


class ExpertGate(nn.Module):
    """Base of every gating module: records its last :class:`GateOutput` and applies the inference variant."""

    def __init__(self, num_experts: int, layer: int, name: str) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.layer = layer
        self.name = name
        self.variant: str | None = None  # None = the learned gates; else an inference variant (module docstring)
        self.last: GateOutput | None = None

    def varied(self, weights: torch.Tensor) -> torch.Tensor:
        """The soft weights under this gate's inference variant."""
        return apply_variant(weights, self.variant)

    def record(self, output: GateOutput) -> GateOutput:
        self.last = output
        return output



def gating_modules(model: nn.Module) -> list[ExpertGate]:
    """All gating modules of a model, in forward (registration) order; empty for a model without gates."""
    return [module for module in model.modules() if isinstance(module, ExpertGate)]


def has_gates(model: nn.Module) -> bool:
    return any(isinstance(module, ExpertGate) for module in model.modules())


def gates(model: nn.Module) -> list[GateOutput]:
    """THE accessor: the gates of the model's last forward pass, one per gated layer in layer order; [] without."""
    outputs = [module.last for module in gating_modules(model)]
    if any(output is None for output in outputs):
        raise RuntimeError("gates() needs a forward pass of the model first")
    return outputs  # type: ignore[return-value]


def require_output(outputs: list[GateOutput], kind: type[GateOutput], reader: str) -> None:
    """One-line ConfigError when a reader (a routing loss, an analysis) needs gates of a kind the model lacks."""
    if not outputs:
        raise ConfigError(f"{reader} needs a model with gated expert layers; this model has none")
    wrong = next((output for output in outputs if not isinstance(output, kind)), None)
    if wrong is not None:
        raise ConfigError(f"{reader} needs {kind.__name__} gates (RoME's dual-scale gating); layer {wrong.name} "
                          f"records {type(wrong).__name__}: choose a routing loss that reads the fused gates")


def set_inference_variant(model: nn.Module, variant: str | None) -> list[str | None]:
    """Switch every gate of ``model`` to an inference-time variant (None = learned); returns the previous ones."""
    modules = gating_modules(model)
    check_variant(variant)
    if variant is not None and not modules:
        raise ConfigError(f"gating variant '{variant}' needs a model with experts; this one has none")
    for module in modules:
        check_variant(variant, module.num_experts)
    previous = [module.variant for module in modules]
    for module in modules:
        module.variant = variant
    return previous


@contextlib.contextmanager
def inference_variant(model: nn.Module, variant: str | None) -> Iterator[nn.Module]:
    """Run ``model`` with every gate switched to an inference-time variant; restores the previous ones on exit."""
    previous = set_inference_variant(model, variant)
    try:
        yield model
    finally:
        for module, saved in zip(gating_modules(model), previous, strict=True):
            module.variant = saved


@contextlib.contextmanager
def relaxed_routing() -> Iterator[None]:
    """Hard top-k layers add the dense soft mixture's gradient to their backward pass (module docstring)."""
    token = _RELAXED.set(True)
    try:
        yield
    finally:
        _RELAXED.reset(token)


def straight_through(hard: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
    """``hard``'s value with ``soft``'s gradient when routing is relaxed and autograd records; else ``hard``."""
    if soft is None or not relaxing():
        return hard
    return hard.detach() + (soft - soft.detach()).to(hard.dtype)


def relaxing() -> bool:
    """Whether a hard top-k layer should compute its relaxed (dense) backward now."""
    return _RELAXED.get() and torch.is_grad_enabled()
