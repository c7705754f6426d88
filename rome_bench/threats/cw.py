"""C&W-k under ℓ∞: PGD that ascends Carlini & Wagner's margin loss instead of the cross-entropy.

    ascend  −max(z_y − max_{j≠y} z_j, −κ)      (C&W's f6 margin, Carlini & Wagner, S&P 2017)

inside the ℓ∞ ball ∩ [0, 1], with LinfPGD's uniform random start, sign step and projection, each example keeping its
first misclassified iterate (so more steps never weaken it). This is the "C&W-20" of the adversarial-robustness
literature that ReMoE (CVPR 2026) reports beside PGD-20 and AutoAttack: the ℓ∞ PGD attack with the C&W loss, not
C&W's original ℓ2 optimisation. ReMoE's summary gives neither the step size nor κ; the ``remoe`` suite uses 20 steps
of ε/4 (2/255 at 8/255, the step ReMoE trains with and PGD-20's) and κ = 50, the confidence used by the common
open-source C&W-PGD implementations (TRADES/MART evaluation code). With the first success kept, κ only changes the
gradient of examples already misclassified by more than κ, which are kept anyway.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import register_threat
from rome_bench.threats.functional import margin
from rome_bench.threats.pgd import LinfPGD

DEFAULT_KAPPA = 50.0


@register_threat("cw-linf", tag="seen", column="cw-linf")
class CWLinf(LinfPGD):
    """ℓ∞ PGD on the C&W margin loss (C&W-k): uniform random start, sign steps, first success kept."""

    def __init__(self, eps: float, steps: int = 20, step_size: float | None = None, random_start: bool = True,
                 keep_adversarial: bool = True, kappa: float = DEFAULT_KAPPA) -> None:
        super().__init__(eps, steps, step_size, random_start, keep_adversarial)
        if not kappa > 0:
            raise ConfigError(f"{self.name}: kappa must be > 0 (math.inf: no clamp), got {kappa}")
        self.kappa = float(kappa)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kappa": self.kappa}

    def objective(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the summed −max(margin, −κ): ascending it pushes the best wrong logit above the true one."""
        logits = model(inputs)
        gap = margin(logits, labels)
        if not math.isinf(self.kappa):
            gap = gap.clamp(min=-self.kappa)
        return logits, -gap.sum()
