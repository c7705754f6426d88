"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019).

    L(θ) = CE(f_θ(x), y) + β · KL( softmax f_θ(x) ‖ softmax f_θ(x') ),    KL averaged over the batch (batchmean)
    x'   = argmax_{‖x' − x‖∞ ≤ ε, x' ∈ [0,1]} KL( softmax f_θ(x) ‖ softmax f_θ(x') )

The inner maximisation is a KL-PGD (:class:`TradesKLAttack`, a :class:`~rome_bench.threats.pgd.LinfPGD` with the
``prepare``/``objective`` hooks): it starts at x + 0.001·N(0, I) (global torch RNG), ascends the sign of the KL
gradient with the clean probabilities computed once per batch in ``prepare`` (eval mode, no graph), projects onto
the ℓ∞ ball ∩ [0,1] box, and returns the last iterate. The attack runs in eval mode (``ctx.attack``); the update's
two forwards (clean, then adversarial) run in train mode, and the gradient flows through both sides of the KL.

Their CIFAR-10 defaults: β = 6 (1/λ), ε = 0.031, step 0.007 (≈ 2/255), 10 steps. Here ε is the preset's ℓ∞ ε
(8/255 ≈ 0.0314 on CIFAR-10) so TRADES attacks the same ball as the other recipes; ``beta``, ``steps`` and
``step_size`` are options (``--set train.options.beta=…``). ``steps`` None (the default) takes the preset's ℓ∞
training steps, which is TRADES' 10 on ``cifar10`` (3 at ``smoke``). ``--train-attack apgd`` does not apply
(TRADES' attack is its own) and is refused.

On a family with experts the routing loss reads the gates of the adversarial forward, all labelled threat 0 (one
group: L_div is 0, see ``recipes/at.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.config import MAX_STEPS
from rome_bench.errors import ConfigError
from rome_bench.threats import LinfPGD, Threat
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe

START_STD = 0.001  # the random start's standard deviation (TRADES' code)


def trades_kl(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax clean ‖ softmax adversarial) summed over classes, averaged over the batch (≥ 0)."""
    return F.kl_div(F.log_softmax(adversarial_logits, dim=1), F.log_softmax(clean_logits, dim=1),
                    reduction="batchmean", log_target=True)


class TradesKLAttack(LinfPGD):
    """ℓ∞ PGD ascending KL(f(x) ‖ f(x')) from x + 0.001·N(0, I); the last iterate (TRADES' inner maximisation)."""

    name: ClassVar[str] = "trades-kl-linf"

    def __init__(self, eps: float, steps: int = 10, step_size: float = 0.007) -> None:
        super().__init__(eps, steps, step_size, random_start=True, keep_adversarial=False)
        self._clean_log_probs: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        try:
            return super().__call__(model, images, labels)
        finally:
            self._clean_log_probs = None  # the batch's clean probabilities are not kept past the call

    def start(self, images: torch.Tensor) -> torch.Tensor:
        return START_STD * torch.randn_like(images)

    def prepare(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.no_grad():
            self._clean_log_probs = F.log_softmax(model(images), dim=1)

    def objective(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._clean_log_probs is None:
            raise RuntimeError("TradesKLAttack.objective called before prepare")
        logits = model(inputs)
        kl = F.kl_div(F.log_softmax(logits, dim=1), self._clean_log_probs, reduction="sum", log_target=True)
        return logits, kl


@dataclass(frozen=True)
class TradesOptions:
    beta: float = 6.0  # weight of the KL term (TRADES' 1/λ; 6 in their CIFAR-10 runs)
    steps: int | None = None  # KL-PGD steps; None = the preset's ℓ∞ training steps (10 on cifar10)
    step_size: float = 0.007  # KL-PGD step (TRADES' CIFAR-10 value, ≈ 2/255)

    def check(self) -> None:
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"train.options.beta must be a finite number >= 0 (TRADES uses 6), got {self.beta}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"train.options.steps must be in 1..{MAX_STEPS} (TRADES uses 10), got {self.steps}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ConfigError(f"train.options.step_size must be a number > 0 (TRADES uses 0.007), "
                              f"got {self.step_size}")


@register_recipe("trades", citation="Zhang et al., ICML 2019")
class TradesRecipe(Recipe):
    """TRADES: CE on clean inputs + β·KL(clean ‖ adversarial) with a KL-maximising ℓ∞ PGD."""

    Options = TradesOptions
    own_attack = "its own KL-PGD"
    options: TradesOptions

    def build_threats(self) -> list[Threat]:
        steps = self.options.steps or self.threat_config.train_steps["linf"]
        return [TradesKLAttack(self.threat_config.eps["linf"], steps, self.options.step_size)]

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        images, labels = batch.images, batch.labels
        (attack,) = self.threats()
        adversarial = ctx.attack(attack, images, labels)
        clean_logits = ctx.forward(images)
        adversarial_logits = ctx.forward(adversarial, routing_ids=torch.zeros_like(labels))
        natural = F.cross_entropy(clean_logits, labels)
        kl = trades_kl(clean_logits, adversarial_logits)
        loss = natural + self.options.beta * kl
        correct = {"nat": (int((clean_logits.argmax(1) == labels).sum()), len(labels)),
                   attack.column: (int((adversarial_logits.argmax(1) == labels).sum()), len(labels))}
        logs = {"nat_loss": float(natural.detach()), "kl": float(kl.detach())}
        return StepResult(loss, logs, correct)
