"""RoME: mixture of low-rank (LoRA) experts with dual-scale gating (paper Sec. 4.2-4.3, Eq. 2-5).

Every wrapped linear layer W computes, for token i of an image,

    o_i = W h_i + Σ_k g_{i,k} B_k A_k h_i                                  (Eq. 2)
    u_i = softmax(MLP_local(h_i)),  v = softmax(MLP_global(mean_i h_i))    (Eq. 3, 4)
    g_i = (1 - β(l)) u_i + β(l) v,  β(l) = σ(s (1 - l/L) - b)               (Eq. 5)

with l = 1..L the index of the Transformer block that holds the layer. The experts are computed fused: all
A_k stacked as one (K·r × d_in) matrix and all B_k as one (d_out × K·r) matrix, so an expert mixture costs
two matmuls whatever K is. The gates of the last forward pass stay on the gating module (with their graph, so
losses can use them) and are read through :func:`gate_outputs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.config import RomeConfig
from rome_bench.errors import ConfigError


def beta_schedule(layer: int, num_layers: int, s: float = 4.0, b: float = 2.0) -> float:
    """β(l) = σ(s·(1 − l/L) − b): the global gate's weight in layer l (1-based); larger in early layers."""
    return 1.0 / (1.0 + math.exp(-(s * (1.0 - layer / num_layers) - b)))


@dataclass
class GateOutput:
    """Gates of one wrapped layer for the last forward: local (B,T,K), global (B,K), fused (B,T,K)."""

    local: torch.Tensor
    global_: torch.Tensor
    fused: torch.Tensor
    layer: int
    name: str


class DualScaleGate(nn.Module):
    """Per-token local gate and mean-token global gate, mixed by a fixed β(l).

    MLP_local and MLP_global are Linear → GELU → Linear (``hidden`` units; 0 = a single Linear). Their first
    layers are exposed as one stacked matrix so that the expert layer can compute them in the same matmul as the
    experts' A; the global branch averages the first layer's output over tokens, which equals applying it to the
    token mean because the layer is affine.
    """

    def __init__(self, dim_in: int, num_experts: int, hidden: int, beta: float, layer: int, name: str) -> None:
        super().__init__()
        self.width = hidden or num_experts
        self.local_in = nn.Linear(dim_in, self.width)
        self.global_in = nn.Linear(dim_in, self.width)
        self.local_out = nn.Linear(hidden, num_experts) if hidden else None
        self.global_out = nn.Linear(hidden, num_experts) if hidden else None
        self.beta = beta
        self.layer = layer
        self.name = name
        self.last: GateOutput | None = None

    def first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked weight (2w × d_in) and bias (2w) of the local and global first layers."""
        weight = torch.cat([self.local_in.weight, self.global_in.weight])
        return weight, torch.cat([self.local_in.bias, self.global_in.bias])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.from_first_layer(F.linear(hidden_states, *self.first_layer()))

    def from_first_layer(self, first: torch.Tensor) -> torch.Tensor:
        """Gates from the first layers' output (B, T, 2w); records local, global and fused gates."""
        local_first, global_first = first.split(self.width, dim=-1)
        local = _second_layer(local_first, self.local_out).softmax(dim=-1)
        global_ = _second_layer(global_first.mean(dim=1), self.global_out).softmax(dim=-1)
        fused = torch.lerp(local, global_.unsqueeze(1), self.beta)  # (1 − β)·u + β·v
        self.last = GateOutput(local, global_, fused, self.layer, self.name)
        return fused

    def extra_repr(self) -> str:
        return f"layer={self.layer}, beta={self.beta:.4f}"


def _second_layer(first: torch.Tensor, layer: nn.Linear | None) -> torch.Tensor:
    return first if layer is None else layer(F.gelu(first))


class LoRAExpertMixture(nn.Module):
    """A linear layer plus K gated LoRA experts (Eq. 2); B = 0 at init, so it starts equal to the base layer.

    One matmul computes all experts' A h and the gates' first layers; a second computes Σ_k g_k B_k (A_k h).
    """

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, gate: DualScaleGate) -> None:
        super().__init__()
        self.base = base
        self.num_experts = num_experts
        self.rank = rank
        self.lora_A = nn.Parameter(torch.empty(num_experts * rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, num_experts * rank))
        for expert_A in self.lora_A.data.split(rank):
            nn.init.kaiming_uniform_(expert_A, a=math.sqrt(5))
        self.gate = gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        gate_weight, gate_bias = self.gate.first_layer()
        no_bias = gate_bias.new_zeros(len(self.lora_A))  # the experts' A has no bias
        down = F.linear(hidden_states, torch.cat([self.lora_A, gate_weight]), torch.cat([no_bias, gate_bias]))
        low_rank, gate_first = down.split([len(self.lora_A), len(gate_bias)], dim=-1)
        gates = self.gate.from_first_layer(gate_first)  # (B, T, K)
        mixed = (low_rank.view(batch, tokens, self.num_experts, self.rank) * gates.unsqueeze(-1)).flatten(2)
        # W h + B·mixed as one matmul over [h, mixed]: avoids two thin matmuls when K·r is small
        weight = torch.cat([self.base.weight, self.lora_B], dim=1)
        return F.linear(torch.cat([hidden_states, mixed], dim=-1), weight, self.base.bias)


def add_rome_experts(backbone: nn.Module, config: RomeConfig) -> nn.Module:
    """Wrap ``blocks[l].attn.{qkv,proj}`` of a timm ViT with expert mixtures, in place; returns the backbone."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        raise ConfigError(f"RoME experts need a ViT with .blocks; {type(backbone).__name__} has none")
    num_layers = len(blocks)
    for index, block in enumerate(blocks):
        layer = index + 1
        beta = beta_schedule(layer, num_layers, config.beta_s, config.beta_b)
        for target in config.targets:
            base = getattr(block.attn, target)
            if not isinstance(base, nn.Linear):
                raise ConfigError(f"blocks.{index}.attn.{target} is {type(base).__name__}, not nn.Linear")
            gate = DualScaleGate(base.in_features, config.num_experts, config.gate_hidden, beta, layer,
                                 f"blocks.{index}.attn.{target}")
            setattr(block.attn, target, LoRAExpertMixture(base, config.num_experts, config.rank, gate))
    return backbone


def gating_modules(model: nn.Module) -> list[DualScaleGate]:
    """All gating modules of a model, in forward (layer) order; empty for a model without experts."""
    return [module for module in model.modules() if isinstance(module, DualScaleGate)]


def gate_outputs(model: nn.Module) -> list[GateOutput]:
    """Gates of the model's last forward pass, one entry per wrapped layer, in layer order."""
    outputs = [gate.last for gate in gating_modules(model)]
    if any(output is None for output in outputs):
        raise RuntimeError("gate_outputs() needs a forward pass first")
    return outputs  # type: ignore[return-value]


def has_experts(model: nn.Module) -> bool:
    return bool(gating_modules(model))
