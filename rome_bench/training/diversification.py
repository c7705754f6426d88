"""Threat-guided gating diversification (paper Eq. 6-8).

For each gated layer l, with ū_i^p the mean local gate of token i over the examples of threat p and v̄^p the
mean projected global gate of threat p:

    L_div-local^(l)  = -(1/T) Σ_{p≠q} Σ_i ‖ū_i^p − ū_i^q‖²                 (Eq. 6)
    L_div-global^(l) = -Σ_{p≠q} ‖v̄^p − v̄^q‖²,  v̄^p = mean_{x∈B_p} v(x)·P     (Eq. 7)
    L_div = (1/L) Σ_l (L_div-local^(l) + L_div-global^(l))                  (Eq. 8)

Choices the paper leaves open, made here and configurable:

* Σ_{p≠q} runs over ordered pairs, as written (each unordered pair counts twice).
* L counts gated layers: with experts on qkv and proj, every block contributes two layers, each with its own gate.
* The projection P: K → K' (K' = 100) is a fixed random linear map (nn.Linear's default initialisation drawn
  from a fixed seed), not trained. The loss is linear in the scale of P, so a trained P would drive it to -∞;
  fixed, the loss is bounded because gates lie on the simplex.
* The loss exists only when a batch holds examples of at least two threats; otherwise it is 0.
"""

from __future__ import annotations

import torch
from torch import nn

from rome_bench.models.rome import GateOutput

PROJECTION_SEED = 1234


def fixed_projection(num_experts: int, projection_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The frozen K × K' projection of Eq. 7 (same matrix for every run with the same K and K')."""
    generator = torch.Generator().manual_seed(PROJECTION_SEED)
    bound = 1.0 / num_experts**0.5  # nn.Linear's default uniform bound for fan_in = K
    weight = (torch.rand(num_experts, projection_dim, generator=generator) * 2 - 1) * bound
    return weight.to(device)


def pairwise_squared_distance_sum(means: torch.Tensor) -> torch.Tensor:
    """Σ_{p≠q} ‖m_p − m_q‖² over ordered pairs, for means of shape (P, ...); summed over trailing dims."""
    flat = means.flatten(1)
    return (flat.unsqueeze(0) - flat.unsqueeze(1)).square().sum()  # the p = q terms are zero


def per_threat_means(values: torch.Tensor, threat_ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (N, ...) over the examples of each threat present in ``threat_ids`` (N,)."""
    present = threat_ids.unique()
    return torch.stack([values[threat_ids == threat].mean(dim=0) for threat in present])


def diversification_loss(gates: list[GateOutput], threat_ids: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """L_div of Eq. 8 for the gates of one forward pass over examples labelled with ``threat_ids``."""
    if not gates:
        raise ValueError("diversification_loss needs a model with gated expert layers")
    if threat_ids.unique().numel() < 2:
        return gates[0].local.new_zeros(())
    total = gates[0].local.new_zeros(())
    for gate in gates:
        local_means = per_threat_means(gate.local, threat_ids)  # (P, T, K)
        tokens = gate.local.shape[1]
        global_means = per_threat_means(gate.global_ @ projection.to(gate.global_), threat_ids)  # (P, K')
        total = total - pairwise_squared_distance_sum(local_means) / tokens
        total = total - pairwise_squared_distance_sum(global_means)
    return total / len(gates)


class DiversificationLoss(nn.Module):
    """λ·L_div with its fixed projection as a buffer (saved with nothing: it is rebuilt from the seed)."""

    def __init__(self, num_experts: int, projection_dim: int, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.register_buffer("projection", fixed_projection(num_experts, projection_dim), persistent=False)

    def forward(self, gates: list[GateOutput], threat_ids: torch.Tensor) -> torch.Tensor:
        return self.weight * diversification_loss(gates, threat_ids, self.projection)
