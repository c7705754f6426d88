"""FGSM (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015) under ℓ∞.

    x_adv = clip_[0,1]( x + ε · sign(∇_x CE(f(x), y)) )

One gradient step of size ε from the clean image, no random start, clipped to the image box (so ‖x_adv − x‖_∞ ≤ ε).
DWF (arXiv 2512.20821) trains its FGSM experts with ε drawn per batch from {0.01, …, 0.09} and evaluates FGSM at
ε = 0.09 (suite ``dwf``); ε is in the units of [0,1] images (0.09 ≈ 23/255).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, LpBudget, Threat, register_threat


@register_threat("fgsm", tag="seen", column="fgsm")
class FGSM(Threat):
    """Fast gradient sign method: one ℓ∞ step of size ε on the cross-entropy, clipped to [0, 1]."""

    def __init__(self, eps: float = 8 / 255) -> None:
        if not eps > 0:
            raise ConfigError(f"fgsm: eps must be > 0 (got {eps})")
        self.eps = float(eps)

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def budget(self) -> Budget:
        return LpBudget("linf", self.eps)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach().requires_grad_(True)
        loss = F.cross_entropy(model(images), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, images)
        return (images + self.eps * grad.sign()).clamp(0, 1).detach()
