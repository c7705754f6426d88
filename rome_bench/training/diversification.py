"""Threat-guided gating diversification (paper Eq. 6-8) and its distance choices (Table A5).

For each gated layer l, with ū_i^p the mean local gate of token i over the examples of threat p and v̄^p the
mean projected global gate of threat p:

    L_div-local^(l)  = -(1/T) Σ_{p≠q} Σ_i d(ū_i^p, ū_i^q)                   (Eq. 6)
    L_div-global^(l) = -Σ_{p≠q} d(v̄^p, v̄^q),  v̄^p = mean_{x∈B_p} v(x)·P      (Eq. 7)
    L_div = (1/L) Σ_l (L_div-local^(l) + L_div-global^(l))                  (Eq. 8)

The paper's d is the squared L2 distance (the default). Table A5's alternatives, each d(a, b) over the last dim:

* ``l2``:           ‖a − b‖².
* ``cosine``:       1 − cos(a, b), computed as ½‖a/‖a‖ − b/‖b‖‖² (the same number, exactly 0 for a = b);
                    maximising it minimises the cosine similarity (the paper's "angular separation").
* ``sym-kl``:       KL(a‖b) + KL(b‖a) = Σ (a − b)(log a − log b), with the logs' arguments clamped at 1e-8.
* ``wasserstein1``: the paper's "L1 distance between the CDFs of sorted gating scores": sort each vector
                    ascending, take cumulative sums, sum |CDF_a − CDF_b|. Sorting makes it blind to which expert
                    holds which mass (a permutation of a is at distance 0 from a): it compares how peaked the
                    threats' gates are, not where they point. Implemented as the paper describes.

Choices the paper leaves open, made here and configurable:

* Σ_{p≠q} runs over ordered pairs, as written (each unordered pair counts twice).
* L counts gated layers: with experts on qkv and proj, every block contributes two layers, each with its own gate.
* The projection P: K → K' (K' = 100), ``model.options.div_projection``:

  - ``per-layer`` (the default): each gated layer owns an ``nn.Linear(K, K')`` (on its gate, so it is in the model's
    parameters, state dict and parameter count, as the paper's counts have it: Table 6's 88.85M and Table A4's
    2.44/1.26/6.28/3.70/7.54/9.98M hold only with 24 such maps, ``rome-bench describe``), but L_div's gradient does
    not reach it: it stays at nn.Linear's initialisation, a random map per layer. The paper says "a linear layer"
    that "is used for computing diversification loss and does not affect routing" and names no other loss for it,
    so L_div would be its only teacher, and L_div is unbounded in it:
  - ``trainable``: the same layers, trained by L_div. The loss is quadratic in the scale of P, so it falls without
    bound by growing P rather than by moving the threats' gates apart. Measured (bench/div_projection_growth.py,
    λ·L_div alone, AdamW lr 1e-3, wd 0.05, micro ViT): mean ‖P‖_F 5.6 → 7.1 → 9.9 → 14.6 → 22.3 and
    L_div-global −4e-4 → −42 → −315 → −1132 → −3141 at steps 0/100/200/400/800, while with ``per-layer`` L_div-global
    levels off (−16 → −36 → −51 → −61) as the gates approach the simplex's corners. Kept for the literal reading.
  - ``fixed``: one matrix shared by every layer, drawn from a fixed seed (nn.Linear's default bound), not part of
    the model: what runs before ``div_projection`` took these names were trained with (stored as ``true``, or not
    stored at all: checkpoint.upgrade_stored_config reads both as ``fixed``).
  - ``none``: no projection (Table 4's "w/o projection layer"): the global term compares the K-dim mean global gates.

  The bounded readings keep L_div ≥ −(1/L)·Σ_l 2n(n−1)·(1 + σ_max(P_l)²) for n threats (σ_max = 1 for none): two
  points of the simplex are at most √2 apart.
* sym-kl and wasserstein1 need probability vectors. Mean gates are (the mean of softmaxes lies on the simplex),
  but a projected mean v̄·P is not, so with the projection on these two distances compare softmax(v̄·P) over K'.
  l2 and cosine use v̄·P as it is.
* The loss exists only when a batch holds examples of at least two threats; otherwise it is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.dual_gate import PROJECTION_SEED
from rome_bench.models.gates import DualScaleGateOutput, GateOutput, require_output

OWNED = "owned"  # the gates' own projections (div_projection per-layer or trainable): recorded as gate.projected
PROJECTIONS: tuple[str, ...] = ("per-layer", "trainable", "fixed", "none")  # model.options.div_projection
LOG_CLAMP = 1e-8

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fixed_projection(num_experts: int, projection_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The frozen K × K' projection of Eq. 7 (same matrix for every run with the same K and K')."""
    generator = torch.Generator().manual_seed(PROJECTION_SEED)
    bound = 1.0 / num_experts**0.5  # nn.Linear's default uniform bound for fan_in = K
    weight = (torch.rand(num_experts, projection_dim, generator=generator) * 2 - 1) * bound
    return weight.to(device)


def squared_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a − b‖² over the last dim."""
    return (a - b).square().sum(dim=-1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b) over the last dim, as ½‖â − b̂‖² of the unit vectors (exactly 0 when a = b)."""
    return 0.5 * (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).square().sum(dim=-1)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(a‖b) + KL(b‖a) over the last dim, for probability vectors (logs clamped at 1e-8)."""
    return ((a - b) * (a.clamp_min(LOG_CLAMP).log() - b.clamp_min(LOG_CLAMP).log())).sum(dim=-1)


def sorted_cdf_wasserstein1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance between the CDFs of the ascending-sorted scores of a and b (last dim)."""
    cdf_a = a.sort(dim=-1).values.cumsum(dim=-1)
    cdf_b = b.sort(dim=-1).values.cumsum(dim=-1)
    return (cdf_a - cdf_b).abs().sum(dim=-1)


DISTANCES: dict[str, Distance] = {
    "l2": squared_l2,
    "cosine": cosine_distance,
    "sym-kl": symmetric_kl,
    "wasserstein1": sorted_cdf_wasserstein1,
}
PROBABILITY_DISTANCES: frozenset[str] = frozenset({"sym-kl", "wasserstein1"})  # need inputs on the simplex


def resolve_distance(name: str) -> Distance:
    """The distance function called ``name``; a one-line ConfigError for unknown names."""
    if name not in DISTANCES:
        raise ConfigError(f"unknown diversification distance '{name}' (model.options.div_distance): choose one of "
                          f"{', '.join(DISTANCES)}")
    return DISTANCES[name]


def pairwise_squared_distance_sum(means: torch.Tensor) -> torch.Tensor:
    """Σ_{p≠q} ‖m_p − m_q‖² over ordered pairs, for means of shape (P, ...); summed over trailing dims."""
    flat = means.flatten(1)
    return (flat.unsqueeze(0) - flat.unsqueeze(1)).square().sum()  # the p = q terms are zero


def pairwise_distance_sum(means: torch.Tensor, distance: Distance) -> torch.Tensor:
    """Σ_{p≠q} d(m_p, m_q) over ordered pairs, for means (P, ..., D); d acts on D, the rest is summed."""
    count = means.shape[0]
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=means.device)
    first, second = off_diagonal.nonzero(as_tuple=True)
    return distance(means[first], means[second]).sum()


def per_threat_means(values: torch.Tensor, threat_ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (N, ...) over the examples of each threat present in ``threat_ids`` (N,)."""
    present = threat_ids.unique()
    return torch.stack([values[threat_ids == threat].mean(dim=0) for threat in present])


def global_means(gate: DualScaleGateOutput, threat_ids: torch.Tensor, projection: torch.Tensor | str | None,
                 distance: str) -> torch.Tensor:
    """v̄^p of Eq. 7 (P, K' or K): per-threat mean global gate, projected, softmaxed for sym-kl/wasserstein1.

    ``projection``: the fixed K × K' matrix, ``"owned"`` (each gate's own projection, recorded as
    ``gate.projected``) or None (no projection)."""
    if projection == OWNED:
        projected = per_threat_means(layer_projection(gate), threat_ids)
    elif isinstance(projection, torch.Tensor):
        means = per_threat_means(gate.global_, threat_ids)  # mean of v·P = (mean of v)·P: P is linear
        projected = means @ projection.to(means)
    else:
        return per_threat_means(gate.global_, threat_ids)
    return projected.softmax(dim=-1) if distance in PROBABILITY_DISTANCES else projected


def layer_projection(gate: DualScaleGateOutput) -> torch.Tensor:
    """The layer's projected global gates (B, K'); a one-line ConfigError when its gate has no projection."""
    if gate.projected is None:
        raise ConfigError(f"div_projection per-layer/trainable needs every gate's own K -> K' projection in a "
                          f"training-mode forward; layer {gate.name} recorded none (a model built with div_projection "
                          f"fixed or none, or run in eval mode): build the loss from the model's own options")
    return gate.projected


def diversification_loss(gates: list[DualScaleGateOutput], threat_ids: torch.Tensor,
                         projection: torch.Tensor | str | None, distance: str = "l2") -> torch.Tensor:
    """L_div of Eq. 8 for the gates of one forward pass over examples labelled with ``threat_ids``."""
    require_output(gates, DualScaleGateOutput, "the diversification loss")  # type: ignore[arg-type]
    measure = resolve_distance(distance)
    if threat_ids.unique().numel() < 2:
        return gates[0].local.new_zeros(())  # type: ignore[union-attr]
    total = gates[0].local.new_zeros(())  # type: ignore[union-attr]
    for gate in gates:
        local_means = per_threat_means(gate.local, threat_ids)  # type: ignore[arg-type]  # (P, T, K)
        tokens = gate.local.shape[1]  # type: ignore[union-attr]
        total = total - pairwise_distance_sum(local_means, measure) / tokens
        total = total - pairwise_distance_sum(global_means(gate, threat_ids, projection, distance), measure)
    return total / len(gates)


class DiversificationLoss(nn.Module):
    """λ·L_div. ``projection``: ``per-layer`` or ``trainable`` (each gate's own, owned by the model), ``fixed`` (a
    buffer saved with nothing: it is rebuilt from the seed) or ``none``."""

    default_weight = 0.1  # λ when the family gives none (paper Sec. 5.1)
    matrix: torch.Tensor | None

    def __init__(self, num_experts: int, projection_dim: int, weight: float, distance: str = "l2",
                 projection: str = "fixed") -> None:
        super().__init__()
        resolve_distance(distance)
        if projection not in PROJECTIONS:
            raise ConfigError(f"unknown div_projection '{projection}' (model.options.div_projection): choose one of "
                              f"{', '.join(PROJECTIONS)}")
        self.weight = weight
        self.distance = distance
        self.projection = projection
        matrix = fixed_projection(num_experts, projection_dim) if projection == "fixed" else None
        self.register_buffer("matrix", matrix, persistent=False)

    @classmethod
    def from_options(cls, options: Any, num_threats: int, weight: float) -> DiversificationLoss:
        """The loss a family's options ask for (K; RoME's ``div_distance``, ``div_projection`` and
        ``projection_dim``, else l2 with the fixed K → 100 projection), with weight λ."""
        del num_threats  # any number of threats ≥ 2 works; fewer gives 0
        return cls(options.num_experts, getattr(options, "projection_dim", 100), weight,
                   getattr(options, "div_distance", "l2"), getattr(options, "div_projection", "fixed"))

    def forward(self, gates: list[GateOutput], threat_ids: torch.Tensor) -> torch.Tensor:
        projection = self.matrix if self.projection == "fixed" else None if self.projection == "none" else OWNED
        return self.weight * diversification_loss(gates, threat_ids, projection, self.distance)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, distance={self.distance}, projection={self.projection}"
