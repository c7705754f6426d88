"""MSD adversarial training (Maini, Wong & Kolter, "Adversarial Robustness Against the Union of Multiple
Perturbation Models", ICML 2020).

    min_θ E_(x,y) [ CE(f_θ(x + δ_MSD(x, y)), y) ]

δ_MSD is one perturbation per input from multi steepest descent (:class:`rome_bench.threats.msd.MSD`): every
iteration takes the ℓ1, ℓ2 and ℓ∞ steepest-ascent steps from the current δ, projects each onto its own ball ∩ the
[0,1] box and keeps, per example, the one with the highest loss. It is generated in eval mode; the update is the
mean cross-entropy on the MSD examples in train mode.

Settings: ε is the preset's ``threats.eps`` (CIFAR-10: ℓ1 12, ℓ2 0.5, ℓ∞ 8/255; their ε∞ was 0.03), so MSD attacks
the same balls as the other recipes. The attack's own settings are options with the authors' CIFAR-10 defaults
(see ``threats/msd.py``): ``steps`` 50, ``alpha_linf`` 0.003, ``alpha_l2`` 0.05, ``alpha_l1`` 1.0 (ℓ1 length of one
step), ``k_min``/``k_max`` 5/20 (k of the ℓ1 step, drawn per iteration). 50 iterations of one gradient and three
candidate forwards cost about 10× a MAX step at the ``smoke`` preset; ``--set train.options.steps=…`` shortens
it (with the step sizes unchanged, fewer than ε∞/α∞ ≈ 11 iterations cannot reach the ℓ∞ sphere).
``--train-attack apgd`` does not apply (MSD is its own attack) and is refused.

On a family with experts (``rome+msd``) each adversarial input is labelled by the norm whose step produced it
(threat ids 0 = ℓ1, 1 = ℓ2, 2 = ℓ∞), so L_div separates the gates of the three kinds of MSD examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rome_bench.config import MAX_STEPS
from rome_bench.errors import ConfigError
from rome_bench.threats import Threat
from rome_bench.threats.msd import MSD, MSD_NORMS
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe


@dataclass(frozen=True)
class MSDOptions:
    steps: int = 50  # MSD iterations
    alpha_l1: float = 1.0  # ℓ1 length of one ℓ1 step
    alpha_l2: float = 0.05
    alpha_linf: float = 0.003
    k_min: int = 5  # the ℓ1 step moves the k largest-gradient coordinates, k uniform on {k_min, …, k_max}
    k_max: int = 20

    def check(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"train.options.steps must be in 1..{MAX_STEPS} (MSD uses 50), got {self.steps}")
        for name in ("alpha_l1", "alpha_l2", "alpha_linf"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"train.options.{name} must be a number > 0, got {value}")
        if not 1 <= self.k_min <= self.k_max:
            raise ConfigError(f"train.options.k_min and k_max need 1 <= k_min <= k_max (MSD uses 5 and 20), "
                              f"got {self.k_min} and {self.k_max}")


def msd_threat(eps: dict[str, float], options: MSDOptions) -> MSD:
    """The MSD attack on the given ℓ1/ℓ2/ℓ∞ balls with the recipe's step settings."""
    return MSD(eps_l1=eps["l1"], eps_l2=eps["l2"], eps_linf=eps["linf"], steps=options.steps,
               alpha_l1=options.alpha_l1, alpha_l2=options.alpha_l2, alpha_linf=options.alpha_linf,
               k_min=options.k_min, k_max=options.k_max)


@register_recipe("msd", citation="Maini, Wong & Kolter, ICML 2020")
class MSDRecipe(Recipe):
    """MSD: CE on one multi-steepest-descent example per input (the union of the ℓ1, ℓ2, ℓ∞ balls)."""

    Options = MSDOptions
    own_attack = "multi steepest descent"
    options: MSDOptions

    def build_threats(self) -> list[Threat]:
        return [msd_threat(self.threat_config.eps, self.options)]

    def routing_groups(self) -> int:
        """Each example is labelled by the norm whose step it kept last (0/1/2 = ℓ1/ℓ2/ℓ∞), not by its one threat."""
        return 3

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        images, labels = batch.images, batch.labels
        (attack,) = self.threats()
        assert isinstance(attack, MSD)
        clean_correct = int((ctx.eval_logits(images).argmax(1) == labels).sum())
        adversarial = ctx.attack(attack, images, labels)
        norm_ids = attack.kept_norm_ids
        assert norm_ids is not None
        logits = ctx.forward(adversarial, routing_ids=norm_ids)
        loss = F.cross_entropy(logits, labels)
        correct = {"nat": (clean_correct, len(labels)),
                   attack.column: (int((logits.argmax(1) == labels).sum()), len(labels))}
        logs = {"adv_loss": float(loss.detach())}
        shares = torch.bincount(norm_ids, minlength=len(MSD_NORMS)).float() / len(labels)
        logs.update({f"kept_{norm}": float(share) for norm, share in zip(MSD_NORMS, shares, strict=True)})
        return StepResult(loss, logs, correct)
