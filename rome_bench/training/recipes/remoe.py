"""ReMoE's region-aware adversarial training (ReMoE, CVPR 2026, "Region-aware Optimization"; no public code).

For a clean/adversarial pair (x, x') and the regional activations of the model's ReMoE layers, w = AEA(x) and
w' = AEA(x') (each layer's region weights W, ``RegionGateOutput.region`` (B, K), see ``models/remoe.py``):

    γ      = exp(−dist(w, w') / (max_batch dist + ε_γ))          per example, normalised within the mini-batch
    β̃      = βγ / (βγ + 1 − β)
    L_rob  = β̃·L(f(x), y) + (1 − β̃)·L(f(x'), y)
    d_ang  = arccos(⟨w, w'⟩ / (‖w‖₂ ‖w'‖₂)),     L_align = −log(1 − d_ang/π + ε_align)
    L      = mean_batch[L_rob + λ_align·L_align]

A larger regional shift (a vulnerable example) gives a smaller γ and β̃, tilting its loss toward the adversarial
term; L_align pulls the adversarial regional activations toward the clean ones. Where the issue's wording and the
paper summary (shared/papers/remoe-summary.txt) differ, the summary is followed: γ and β̃ are per example, and
β̃ weights the *clean* term.

Base (``train.options.base``), the paper's two training protocols, on the ℓ∞ ball of the preset (8/255 on CIFAR-10)
with the paper's step α = 2/255:

* ``sat`` (default): x' from ℓ∞ PGD on CE (uniform random start, last iterate; ``--train-attack apgd`` gives the
  best-loss training APGD at the preset's APGD steps instead); L(f(x'), y) = CE.
* ``trades``: x' from TRADES' KL-PGD (``recipes/trades.py``: start x + 0.001·N(0, I), ascend KL(f(x) ‖ f(x'))); the
  adversarial term is TRADES' β_T·KL(f(x) ‖ f(x')) per example (β_T = ``trades_beta`` = 6), the clean term CE. With
  γ = 1 and β = 0.5 the loss is exactly half of TRADES' CE + β_T·KL. ``--train-attack apgd`` is refused.

Choices the summary leaves open, each an option (``--set train.options.NAME=VALUE``):

* ``beta`` β = 0.5: the clean weight before adaptation (β ∈ (0, 1); at β = 0 the adaptation vanishes and ``sat``
  is plain Madry AT);
* ``align_weight`` λ_align = 1.0; ``eps_gamma`` ε_γ = 1e-6; ``eps_align`` ε_align = 1e-6;
* ``distance`` (dist in γ): ``l2`` (default), ``l1`` or ``angular`` (d_ang);
* several ReMoE layers: dist and L_align are computed per layer and averaged over the layers;
* γ is a weight, computed without gradient (as TRADES/MART treat their weights); L_align carries the gradient
  through both w and w' (both depend on θ);
* d_ang is computed as 2·atan2(‖ŵ − ŵ'‖, ‖ŵ + ŵ'‖) (ŵ = w/‖w‖), which equals the arccos form but has a finite
  gradient at d_ang = 0, where arccos' is infinite; aligned activations give L_align = −log(1 + ε_align) ≈ 0;
* ``steps`` (None = the preset's ℓ∞ training steps, 10 on cifar10) and ``step_size`` α = 2/255.

Attacks run in eval mode; the clean and adversarial forwards of the update run in train mode, each read through
``gates(model)`` right after it. The recipe trains the ``remoe`` family only (``families``): without ReMoE layers
there are no regional activations, and the trainer refuses another family in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from rome_bench.config import MAX_STEPS
from rome_bench.errors import ConfigError
from rome_bench.models.gates import GateOutput
from rome_bench.models.gates import gates as read_gates
from rome_bench.models.remoe import RegionGateOutput
from rome_bench.threats import LinfPGD, Threat
from rome_bench.training.attacks import training_threat
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe
from rome_bench.training.recipes.trades import TradesKLAttack

BASES: tuple[str, ...] = ("sat", "trades")
DISTANCES: tuple[str, ...] = ("l2", "l1", "angular")


def adaptive_gamma(distance: torch.Tensor, eps: float) -> torch.Tensor:
    """γ_i = exp(−d_i / (max_batch d + ε)) for per-example distances d (B,)."""
    return torch.exp(-distance / (distance.max() + eps))


def adaptive_beta(beta: float, gamma: torch.Tensor) -> torch.Tensor:
    """β̃ = βγ / (βγ + 1 − β): the clean term's weight after region adaptation."""
    return beta * gamma / (beta * gamma + 1 - beta)


def angular_distance(clean: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
    """d_ang = arccos(cos(w, w')) per row of (B, K), as 2·atan2(‖ŵ − ŵ'‖, ‖ŵ + ŵ'‖) (stable at 0 and π)."""
    a = clean / torch.linalg.vector_norm(clean, dim=-1, keepdim=True).clamp_min(1e-12)
    b = adversarial / torch.linalg.vector_norm(adversarial, dim=-1, keepdim=True).clamp_min(1e-12)
    return 2 * torch.atan2(torch.linalg.vector_norm(a - b, dim=-1), torch.linalg.vector_norm(a + b, dim=-1))


def alignment_loss(clean: torch.Tensor, adversarial: torch.Tensor, eps: float) -> torch.Tensor:
    """L_align = −log(1 − d_ang/π + ε) per example (B,)."""
    return -torch.log(1 - angular_distance(clean, adversarial) / math.pi + eps)


def region_distance(clean: torch.Tensor, adversarial: torch.Tensor, kind: str) -> torch.Tensor:
    """dist(w, w') per example (B,): ℓ2, ℓ1 or angular."""
    if kind == "angular":
        return angular_distance(clean, adversarial)
    return torch.linalg.vector_norm(clean - adversarial, ord=2 if kind == "l2" else 1, dim=-1)


def per_example_kl(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax clean ‖ softmax adversarial) per example (B,); its mean is TRADES' ``trades_kl``."""
    return F.kl_div(F.log_softmax(adversarial_logits, dim=1), F.log_softmax(clean_logits, dim=1),
                    reduction="none", log_target=True).sum(dim=1)


def regional_activations(outputs: list[GateOutput]) -> list[torch.Tensor]:
    """Each ReMoE layer's region weights W (B, K) from one forward's gates; [] for a model without ReMoE layers."""
    return [output.region for output in outputs if isinstance(output, RegionGateOutput) and output.region is not None]


@dataclass(frozen=True)
class ReMoETrainOptions:
    base: str = "sat"  # sat (PGD-CE) | trades (KL-PGD, β_T·KL adversarial term)
    beta: float = 0.5  # β: the clean term's weight before region adaptation, in (0, 1)
    align_weight: float = 1.0  # λ_align
    distance: str = "l2"  # dist in γ: l2 | l1 | angular
    eps_gamma: float = 1e-6  # ε_γ
    eps_align: float = 1e-6  # ε_align
    trades_beta: float = 6.0  # β_T of the trades base
    steps: int | None = None  # attack steps; None = the preset's ℓ∞ training steps
    step_size: float = 2 / 255  # α

    def check(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"train.options.base must be one of {', '.join(BASES)}, got '{self.base}'")
        if self.distance not in DISTANCES:
            raise ConfigError(f"train.options.distance must be one of {', '.join(DISTANCES)}, got '{self.distance}'")
        if not 0 < self.beta < 1:
            raise ConfigError(f"train.options.beta must be in (0, 1) (the clean weight; 0.5 by default), "
                              f"got {self.beta}")
        for name in ("align_weight", "trades_beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"train.options.{name} must be a finite number >= 0, got {value}")
        for name in ("eps_gamma", "eps_align", "step_size"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"train.options.{name} must be a number > 0, got {value}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"train.options.steps must be in 1..{MAX_STEPS}, got {self.steps}")


@register_recipe("remoe", citation="ReMoE: Region-Mixture Experts for Adversarially-Robust Vision Transformers, "
                                    "CVPR 2026 (region-adaptive adversarial loss + region alignment loss)")
class ReMoERecipe(Recipe):
    """ReMoE: SAT or TRADES with the clean weight adapted per example by its regional shift, plus L_align."""

    Options = ReMoETrainOptions
    options: ReMoETrainOptions
    families: ClassVar[tuple[str, ...] | None] = ("remoe",)

    def threats(self) -> list[Threat]:
        if self.options.base == "trades" and self.attack_kind != "pgd":
            raise ConfigError(f"remoe with base=trades generates its examples with TRADES' KL-PGD; --train-attack "
                              f"{self.attack_kind} does not apply: use --train-attack pgd or base=sat")
        return super().threats()

    def build_threats(self) -> list[Threat]:
        eps = self.threat_config.eps["linf"]
        steps = self.options.steps or self.threat_config.train_steps["linf"]
        if self.options.base == "trades":
            return [TradesKLAttack(eps, steps, self.options.step_size)]
        if self.attack_kind == "pgd":
            return [LinfPGD(eps, steps, self.options.step_size, keep_adversarial=False)]
        return [training_threat(self.threat_config, "linf", self.attack_kind)]

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        images, labels = batch.images, batch.labels
        (attack,) = self.threats()
        adversarial = ctx.attack(attack, images, labels)
        clean_logits = ctx.forward(images)
        clean_regions = regional_activations(read_gates(ctx.model))
        adversarial_logits = ctx.forward(adversarial, routing_ids=torch.zeros_like(labels))
        adversarial_regions = regional_activations(read_gates(ctx.model))
        clean_term = F.cross_entropy(clean_logits, labels, reduction="none")
        if self.options.base == "trades":
            adversarial_term = self.options.trades_beta * per_example_kl(clean_logits, adversarial_logits)
        else:
            adversarial_term = F.cross_entropy(adversarial_logits, labels, reduction="none")
        gamma, align = self.region_terms(clean_regions, adversarial_regions)
        beta_tilde = adaptive_beta(self.options.beta, gamma)
        robust = (beta_tilde * clean_term + (1 - beta_tilde) * adversarial_term).mean()
        loss = robust + self.options.align_weight * align
        correct = {"nat": (int((clean_logits.argmax(1) == labels).sum()), len(labels)),
                   attack.column: (int((adversarial_logits.argmax(1) == labels).sum()), len(labels))}
        logs = {"rob_loss": float(robust.detach()), "align": float(align.detach()),
                "gamma": float(gamma.mean()), "beta_tilde": float(beta_tilde.mean()),
                "region_layers": float(len(clean_regions))}
        return StepResult(loss, logs, correct)

    def region_terms(self, clean: list[torch.Tensor], adversarial: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """γ (B,) without gradient and the batch-mean L_align, each averaged over the ReMoE layers."""
        if not clean:
            raise ConfigError("recipe remoe needs a model with ReMoE layers (RegionGateOutput gates); this one has "
                              "none: train with --family remoe")
        with torch.no_grad():
            distance = torch.stack([region_distance(w, w_adv, self.options.distance)
                                    for w, w_adv in zip(clean, adversarial, strict=True)]).mean(dim=0)
            gamma = adaptive_gamma(distance, self.options.eps_gamma)
        align = torch.stack([alignment_loss(w, w_adv, self.options.eps_align).mean()
                             for w, w_adv in zip(clean, adversarial, strict=True)]).mean()
        return gamma, align
