"""The gating-misrouting attack (GMA): an adaptive ℓ∞ attack on the gates of a mixture-of-experts model.

RoME paper, Sec. 5.2 and A1. GMA ascends

    L_GMA = CE(f(x+δ), y) − (1/L) Σ_l (1/T) Σ_i CE(g_i^(l)(x+δ), k_i*),   k_i* = argmin_k g_{i,k}

with ℓ∞ PGD (ε = 8/255, 20 steps, step 2.5·ε/steps, uniform random start), both terms weighted equally: the first
maximises the classification loss, the second pulls every token's gate toward its least likely expert. Here:

* CE(g, k) = −log g_k on the fused gate g (Eq. 5), averaged over tokens, then over the model's gated layers
  (every gated layer of every family reports its gate through ``rome_bench.models.gates.gates``; a layer
  with several gated projections counts each one);
* k_i* is the least likely expert of token i on the **clean** image, fixed for the whole attack (the paper's
  formula leaves open whether it is re-computed per step; a fixed target gives the attack a stable direction);
* as for every evaluation PGD, each example keeps its first misclassified iterate.

On a model without gates (RANDOM/AVG/MAX's plain ViT, Table 2 gives them a GMA number) the misrouting term is
empty and L_GMA is its CE term alone: GMA is then exactly ℓ∞ PGD with the same ε, steps, step size and start.
It runs, and says so: every such call raises the validity flag ``ce-only-no-gates`` (examples attacked), which
the leaderboard's Flags column shows beside the GMA cell, and the leaderboard's header states the rule. Stores
written before this rule hold GMA on such models as "not applicable"; a new evaluation replaces that mark.

GMA follows the paper's loss, which can leave examples robust that plain ℓ∞ PGD on the same budget breaks (the
misrouting term pulls away from the classification loss; measured on the committed ``cifar10-smoke-rome-max``
model, 100 examples: GMA 17 robust, ``pgd-linf`` 15, flagged ``weaker-than-other``). ``gma-union`` reports the
adaptive evaluation that is never weaker than PGD: per example, the worst case of GMA and of plain ℓ∞ PGD with the
same ε, steps and step size (PGD attacks only the examples GMA left robust). The ``gma-pgd`` suite shows PGD ℓ∞,
GMA and GMA∪PGD side by side; the ``adaptive`` suite runs GMA beside AutoAttack and router-aware APGD
(``threats/router_apgd.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.models.gates import gates as read_gates
from rome_bench.threats.base import Budget, LpBudget, Threat, register_threat
from rome_bench.threats.pgd import LinfPGD

GATE_FLOOR = 1e-12
CE_ONLY_FLAG = "ce-only-no-gates"


def model_gates(model: nn.Module) -> list[torch.Tensor]:
    """The fused gates (B, T, K) of the model's last forward pass, one per gated layer; [] without gates."""
    return [output.fused for output in read_gates(model)]


def misrouting_loss(gates: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Per example: mean over layers and tokens of −log g_{i,k*} (the cross-entropy toward the target experts)."""
    per_layer = [-gate.clamp_min(GATE_FLOOR).log().gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(dim=1)
                 for gate, target in zip(gates, targets, strict=True)]
    return torch.stack(per_layer).mean(dim=0)


@register_threat("gma", tag="unseen", column="gma")
class GatingMisrouting(LinfPGD):
    """Gating-misrouting attack (RoME paper): ℓ∞ PGD on CE(f) − CE(gates, least-likely expert)."""

    def __init__(self, eps: float = 8 / 255, steps: int = 20, step_size: float | None = None,
                 random_start: bool = True, keep_adversarial: bool = True, gate_weight: float = 1.0) -> None:
        super().__init__(eps, steps, step_size, random_start, keep_adversarial)
        self.gate_weight = float(gate_weight)
        self._targets: list[torch.Tensor] = []
        self._flags: dict[str, int] = {}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "gate_weight": self.gate_weight}

    def call_flags(self) -> dict[str, int]:
        """``ce-only-no-gates``: the examples of the last call attacked with the CE term alone (no gates)."""
        return dict(self._flags)

    def prepare(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            model(images)
            gates = model_gates(model)
        self._targets = [gate.argmin(dim=-1) for gate in gates]
        self._flags = {} if gates else {CE_ONLY_FLAG: len(images)}

    def objective(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels, reduction="none")
        if self._targets:  # without gates the misrouting term is empty: CE alone
            loss = loss - self.gate_weight * misrouting_loss(model_gates(model), self._targets)
        return logits, loss.sum()


@register_threat("gma-union", tag="unseen", column="gma-union")
class GatingMisroutingOrPGD(Threat):
    """Per example, the worst case of GMA and plain ℓ∞ PGD on the same budget: never weaker than either."""

    def __init__(self, eps: float = 8 / 255, steps: int = 20, step_size: float | None = None,
                 random_start: bool = True, gate_weight: float = 1.0) -> None:
        self.gma = GatingMisrouting(eps, steps, step_size, random_start, gate_weight=gate_weight)
        self.pgd = LinfPGD(eps, steps, self.gma.step_size, random_start)

    def params(self) -> dict[str, Any]:
        return {"eps": self.gma.eps, "steps": self.gma.steps, "step_size": self.gma.step_size,
                "random_start": self.gma.random_start, "gate_weight": self.gma.gate_weight}

    def budget(self) -> Budget:
        return LpBudget("linf", self.gma.eps)

    def call_flags(self) -> dict[str, int]:
        return self.gma.call_flags()

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        result = self.gma(model, images, labels)
        with torch.no_grad():
            robust = (model(result).argmax(1) == labels).nonzero().squeeze(1)
        if len(robust):
            result = result.clone()
            result[robust] = self.pgd(model, images[robust], labels[robust])
        return result
