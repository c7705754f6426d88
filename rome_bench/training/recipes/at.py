"""Single-threat adversarial training (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018): ``linf-at``, ``l2-at``, ``l1-at``.

    min_θ E_(x,y) [ max_{‖δ‖_p ≤ ε, x+δ ∈ [0,1]} CE(f_θ(x + δ), y) ]

Every example of the batch is replaced by its adversarial version from the run's training attack on the one ℓp
threat (``training_threat``: PGD with the preset's ε and steps, CIFAR-10 ℓ∞ 8/255 and 10 steps, ℓ2 0.5 and 20,
ℓ1 12 and 20; or the best-loss training APGD with ``--train-attack apgd``), generated in eval mode; the update is
the mean cross-entropy on those examples in train mode. Madry et al.'s CIFAR-10 attack was ℓ∞ PGD with ε = 8/255,
7 steps of 2/255; here the ε, steps and step size are the preset's, shared with every other recipe, so runs
compare under one protocol.

On a family with experts (``rome+linf-at``) every adversarial input carries threat id 0. The routing loss then
sees one threat group. Its default, L_div (paper Eq. 6-8), compares the mean gates of *different* threats; with
one group there is no pair, and ``training/diversification.py`` returns exactly 0 (no NaN, no gradient). That is
kept deliberately, not refused: ``rome`` runs L_div by default, so a refusal would make ``rome+linf-at`` fail
unless the user also changed the routing loss; the recipe cannot see ``model.options`` to refuse selectively; and
"L_div is 0 in a batch with fewer than two threats" is already the documented rule. So ``rome+linf-at`` with
L_div is single-threat AT on a RoME model whose gates are trained by the cross-entropy alone. Routing losses that
do not read the threat labels (load-balance, importance) act as usual; gate-classification needs one expert per
training threat (``model.options.num_experts = 1`` here) and refuses any other K in one line.
"""

from __future__ import annotations

from typing import ClassVar

from rome_bench.threats import Threat
from rome_bench.training.attacks import training_threat
from rome_bench.training.recipe import register_recipe
from rome_bench.training.recipes.mat import MultiThreatRecipe


class SingleThreatAT(MultiThreatRecipe):
    """Madry AT on one ℓp threat: mean CE on every example's adversarial version (threat id 0 for routing)."""

    norm: ClassVar[str]

    def build_threats(self) -> list[Threat]:
        return [training_threat(self.threat_config, self.norm, self.attack_kind)]


@register_recipe("linf-at", citation="Madry et al., ICLR 2018")
class LinfAT(SingleThreatAT):
    """ℓ∞ PGD adversarial training: CE on the ℓ∞ adversarial example of every input."""

    norm = "linf"


@register_recipe("l2-at", citation="Madry et al., ICLR 2018")
class L2AT(SingleThreatAT):
    """ℓ2 PGD adversarial training: CE on the ℓ2 adversarial example of every input."""

    norm = "l2"


@register_recipe("l1-at", citation="Madry et al., ICLR 2018 (ℓ1 steps: SLIDE, Tramèr & Boneh 2019)")
class L1AT(SingleThreatAT):
    """ℓ1 PGD adversarial training: CE on the ℓ1 adversarial example of every input."""

    norm = "l1"
