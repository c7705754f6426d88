"""Routing regularisers for the gates of a mixture of experts (paper Table 4, Sec. 4.4 and Table A5).

Each loss is an ``nn.Module`` called as ``loss(gates, threat_ids)`` with the model's gates from its last forward
(one :class:`GateOutput` per gated layer) and the threat index (0..P-1) of every example; it returns λ·loss, a
scalar the trainer adds to the classification loss. All but diversification act on the ``fused`` gates g (B,T,K),
the ones that weight the experts, treat every token of the batch alike, and are averaged over the L gated layers.

* ``load-balance`` (Shazeer et al. 2017's balancing idea in the differentiable form of Switch Transformer and the
  MoE-adapter works): per layer, over all N = B·T tokens, f_k = fraction of tokens whose largest gate is expert k
  (a count: no gradient) and P_k = mean gate of expert k; L = K·Σ_k f_k·P_k. It is 1 at uniform gates (and
  whenever f = P = 1/K) and K when every token puts all its mass on one expert. It is not a strict minimum: for
  some non-uniform gates it dips a little below 1. Its gradient flows through P only and lowers the mean gate of
  the experts that win the argmax most often.
* ``importance`` (Shazeer et al. 2017, Eq. 6): Importance_k = Σ_tokens g_k; L = CV(Importance)² = (std/mean)², with
  the population std (unbiased=False), so L = 0 exactly when every expert gets the same total gate, else > 0.
* ``gate-classification``: the gates trained as a threat classifier, one expert per threat (K = P, else
  ConfigError): L = −(1/L) Σ_l mean_{examples, tokens} log g_{threat(x)} (the log's argument clamped at 1e-8),
  i.e. cross-entropy of each token's gate against its example's threat. L ≥ 0, and ≈ 0 exactly when every token
  puts all its mass on its threat's expert.
* ``switch`` (Fedus, Zoph & Shazeer, "Switch Transformers", JMLR 2022, Eq. 4-6; the sparse MoE's balancing loss):
  like ``load-balance``, but f_k is the fraction of the layer's expert assignments that the router's hard
  ``dispatch`` actually sent to expert k (after any routing noise or capacity limit; f sums to 1); L = K·Σ_k f_k·P_k
  with P_k the mean gate. 1 whenever dispatch is balanced (f = 1/K); when the gates agree with the dispatch
  (P = f) it is K·Σ f_k² ≥ 1, with equality exactly at balanced routing, and K when one expert takes all.
  Pavlitska et al.'s code subtracts the constant 1 (same gradient). Needs a top-k router (``dispatch``).
* ``entropy`` (Pavlitska et al.'s code, ``balancing_loss_type=entropy``): L = (1/N) Σ_t H(g_t) − H((1/N) Σ_t g_t),
  H(p) = −Σ_k p_k log p_k (0·log 0 = 0): confident tokens (low per-token entropy) spread evenly over the experts
  (high entropy of the mean gate). L ≥ −log K, with equality exactly when every token's gate is one-hot and every
  expert gets the same share of tokens; uniform soft gates (every g = 1/K) give 0.
* ``diversification``: λ·L_div of Eq. 6-8 (see :mod:`rome_bench.training.diversification`), on the local and
  global gates, with the configured distance (l2, cosine, sym-kl, wasserstein1) and the fixed K → K' projection
  of the global gates on or off. It is 0 when all threats route alike and more negative the further apart the
  threats' mean gates are.

``routing_loss_for`` builds the loss a model family asks for (``ModelFamily.routing``: RoME's from
``model.options.routing_loss``; other families name their own, e.g. the sparse MoE's balancing loss), weighted by
the family's λ or, when it gives none, by the loss's own ``default_weight``; "none" or a weight of 0 give None.
This registry is the only list of routing-loss names: a third-party loss is one class registered here (or through
the ``rome_bench.routing_losses`` entry point) with a ``default_weight`` and a
``from_options(options, num_threats, weight)`` classmethod that reads what it needs from the family's options, and
every family that names it can train with it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.config import ModelConfig
from rome_bench.errors import ConfigError
from rome_bench.models.family import RoutingChoice, build_family
from rome_bench.models.gates import GateOutput
from rome_bench.registry import Registry
from rome_bench.training.diversification import DiversificationLoss

LOG_CLAMP = 1e-8


class RoutingLossClass(Protocol):
    """What the registry holds: a class with its default λ that builds its loss module from a family's options."""

    default_weight: float

    def from_options(self, options: Any, num_threats: int, weight: float) -> nn.Module: ...


ROUTING_LOSSES: Registry[RoutingLossClass] = Registry("routing_losses")


def fused_tokens(gate: GateOutput) -> torch.Tensor:
    """The fused gates of one layer as (N, K) float32, one row per token of the batch."""
    return gate.fused.float().flatten(0, -2)


def require_gates(gates: list[GateOutput], name: str) -> None:
    """A one-line ConfigError when the model produced no gates for a routing loss."""
    if not gates:
        raise ConfigError(f"routing loss '{name}' needs a model with gated expert layers; "
                          "set model.options.routing_loss = none for a model without gates")


def load_balance(gate: GateOutput) -> torch.Tensor:
    """K·Σ_k f_k·P_k for one layer: f_k argmax fractions (no gradient), P_k mean gates."""
    tokens = fused_tokens(gate)
    experts = tokens.shape[-1]
    fractions = F.one_hot(tokens.detach().argmax(dim=-1), experts).float().mean(dim=0)
    return experts * (fractions * tokens.mean(dim=0)).sum()


def importance_cv2(gate: GateOutput) -> torch.Tensor:
    """CV² of the per-expert gate sums for one layer (population std)."""
    importance = fused_tokens(gate).sum(dim=0)
    return importance.var(unbiased=False) / importance.mean().square()


def gate_cross_entropy(gate: GateOutput, threat_ids: torch.Tensor) -> torch.Tensor:
    """Mean over examples and tokens of −log g_{threat} for one layer (clamped log)."""
    fused = gate.fused.float()  # (B, T, K)
    index = threat_ids.to(fused.device).view(-1, 1, 1).expand(-1, fused.shape[1], 1)
    return -fused.gather(-1, index).clamp_min(LOG_CLAMP).log().mean()


class RoutingLoss(nn.Module):
    """λ times the mean over gated layers of a per-layer routing loss."""

    name = "routing"
    default_weight = 0.5  # λ when the family gives none

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    @classmethod
    def from_options(cls, options: Any, num_threats: int, weight: float) -> RoutingLoss:
        del options, num_threats
        return cls(weight)

    def layer_loss(self, gate: GateOutput, threat_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, gates: list[GateOutput], threat_ids: torch.Tensor) -> torch.Tensor:
        require_gates(gates, self.name)
        total = torch.stack([self.layer_loss(gate, threat_ids) for gate in gates]).mean()
        return self.weight * total

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


@ROUTING_LOSSES.register("load-balance", minimum="1 at uniform gates", reference="Shazeer et al. 2017")
class LoadBalanceLoss(RoutingLoss):
    """λ·K·Σ_k f_k·P_k: 1 at uniform gates, K when all tokens use one expert."""

    name = "load-balance"

    def layer_loss(self, gate: GateOutput, threat_ids: torch.Tensor) -> torch.Tensor:
        return load_balance(gate)


@ROUTING_LOSSES.register("importance", minimum="0 at balanced gate sums", reference="Shazeer et al. 2017 Eq. 6")
class ImportanceLoss(RoutingLoss):
    """λ·CV(Importance)²: 0 exactly when every expert's summed gate is the same."""

    name = "importance"

    def layer_loss(self, gate: GateOutput, threat_ids: torch.Tensor) -> torch.Tensor:
        return importance_cv2(gate)


@ROUTING_LOSSES.register("gate-classification", minimum="0 at one-hot gates on each threat's expert")
class GateClassificationLoss(RoutingLoss):
    """λ·cross-entropy of every token's gate against its example's threat (one expert per threat)."""

    name = "gate-classification"
    default_weight = 0.1

    @classmethod
    def from_options(cls, options: Any, num_threats: int, weight: float) -> GateClassificationLoss:
        num_experts = getattr(options, "num_experts", None)
        if num_experts != num_threats:
            raise ConfigError(f"gate-classification trains the gates as a threat classifier: this recipe trains "
                              f"{num_threats} threat(s), so it needs model.options.num_experts = {num_threats}, one "
                              f"expert per training threat (got {num_experts})")
        return cls(weight)

    def layer_loss(self, gate: GateOutput, threat_ids: torch.Tensor) -> torch.Tensor:
        return gate_cross_entropy(gate, threat_ids)


def switch_balance(gate: GateOutput) -> torch.Tensor:
    """K·Σ_k f_k·P_k for one layer: f_k the share of the hard dispatch on expert k (no gradient), P_k mean gates."""
    if gate.dispatch is None:
        raise ConfigError(f"routing loss 'switch' needs a top-k router's dispatch; layer {gate.name} routes softly: "
                          "use load-balance")
    tokens = fused_tokens(gate)
    dispatch = gate.dispatch.detach().float().flatten(0, -2)
    fractions = dispatch.sum(dim=0) / dispatch.sum().clamp_min(1.0)
    return tokens.shape[-1] * (fractions * tokens.mean(dim=0)).sum()


def entropy_terms(probabilities: torch.Tensor) -> torch.Tensor:
    """−Σ_k p_k log p_k over the last axis (0·log 0 = 0; the log's argument clamped so gradients stay finite)."""
    return -(probabilities * probabilities.clamp_min(LOG_CLAMP).log()).sum(dim=-1)


def entropy_balance(gate: GateOutput) -> torch.Tensor:
    """Mean per-token gate entropy minus the entropy of the mean gate, for one layer (minimum −log K)."""
    tokens = fused_tokens(gate)
    return entropy_terms(tokens).mean() - entropy_terms(tokens.mean(dim=0))


@ROUTING_LOSSES.register("switch", minimum="1 at balanced dispatch", reference="Fedus et al. 2022 (Switch), Eq. 4")
class SwitchBalanceLoss(RoutingLoss):
    """λ·K·Σ_k f_k·P_k with f from the router's hard dispatch: 1 at balanced dispatch, K when one expert takes all."""

    name = "switch"

    def layer_loss(self, gate: GateOutput, threat_ids: torch.Tensor) -> torch.Tensor:
        return switch_balance(gate)


@ROUTING_LOSSES.register("entropy", minimum="−log K at one-hot gates spread evenly over the experts",
                         reference="Pavlitska et al. 2025 (robust-sparse-moes code)")
class EntropyBalanceLoss(RoutingLoss):
    """λ·(mean token entropy − entropy of the mean gate): confident routing, evenly used experts."""

    name = "entropy"

    def layer_loss(self, gate: GateOutput, threat_ids: torch.Tensor) -> torch.Tensor:
        return entropy_balance(gate)


ROUTING_LOSSES.add("diversification", DiversificationLoss, minimum="0 when all threats route alike; lower apart",
                   reference="paper Eq. 6-8, Table A5")


def routing_weight(choice: RoutingChoice) -> float:
    """λ of a family's routing choice: its own weight, else the registered loss's ``default_weight``."""
    if choice.weight is not None:
        return choice.weight
    return float(ROUTING_LOSSES.get(choice.loss).default_weight)


def routing_loss_for(choice: RoutingChoice | None, options: Any, num_threats: int) -> nn.Module | None:
    """The routing loss a family asks for (``ModelFamily.routing``) built from the family's ``options``, weighted by
    its λ; None for no choice, "none" or λ = 0. An unknown name fails with the registry's 'did you mean'."""
    if choice is None or choice.loss == "none":
        return None
    weight = routing_weight(choice)
    if weight == 0:
        return None
    return ROUTING_LOSSES.get(choice.loss).from_options(options, num_threats, weight)


def build_routing_loss(config: ModelConfig, num_threats: int) -> nn.Module | None:
    """The routing loss the family of ``config`` asks for, built from its options (None: no routing loss)."""
    family = build_family(config)
    return routing_loss_for(family.routing(config), family.options, num_threats)
