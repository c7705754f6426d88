"""RAMP (Jiang & Singh, "RAMP: Boosting Adversarial Robustness Against Multiple lp Perturbations for Universal
Robustness", NeurIPS 2024; arXiv 2402.06827): logit pairing between the two most vulnerable ℓp threats, and a
gradient projection (GP) that mixes natural training (NT) into adversarial training (AT).

Per batch (x, y), with the ℓ1, ℓ2, ℓ∞ training attacks of the run (``--train-attack``; the paper uses APGD):

1. Key trade-off pair. Every threat attacks the batch (eval mode); its adversarial accuracy is measured in eval
   mode; r is the threat with the lowest accuracy (the most vulnerable), q the second lowest (ties: threat order).
2. Adversarial loss with logit pairing (one train-mode forward over both adversarial batches)::

       L_adv = mean_i max(CE(f(x_i^q), y_i), CE(f(x_i^r), y_i))
             + λ · (1/|S|) Σ_{i∈S} KL( softmax f(x_i^q) ‖ softmax f(x_i^r) ),   S = {i : argmax f(x_i^q) = y_i}

   i.e. the ℓr predictions are pulled to the ℓq ones on the examples ℓq does not break (0 when S is empty, and 0
   when the two predictions agree); gradients flow through both sides, as in the authors' code. The routing loss
   of a family with experts is added to L_adv (entries labelled q and r).
3. Gradient projection (``ctx.grads`` / ``ctx.set_grads``): g_a = ∇L_adv, g_n = ∇CE(f(x), y) on the clean batch
   (train mode), combined per parameter tensor (layer-wise; the positive projection of FedGP, Jiang, Zhang & Koyejo,
   arXiv 2302.05049, which RAMP's GP adapts; the authors' ``utils.gp`` keeps its client/server form)::

       g = (1 − β)·g_a + β·Proj⁺(g_a | g_n),   Proj⁺(g_a | g_n) = max(⟨g_a, g_n⟩, 0) / ‖g_n‖² · g_n

   Angle property (asserted in the tests): for every parameter tensor, if ⟨g_a, g_n⟩ > 0 then g keeps g_a's
   component along g_n and shrinks the orthogonal rest by (1 − β): tan∠(g, g_n) = (1 − β)·tan∠(g_a, g_n), so g
   lies between g_a and g_n and ⟨g, g_a⟩ ≥ (1 − β)‖g_a‖² > 0 (never against the adversarial direction); if
   ⟨g_a, g_n⟩ ≤ 0 the natural gradient is dropped and g = (1 − β)·g_a.

Settings (every one a ``train.options`` value). The paper's method section could not be consulted here; the
CIFAR-10 defaults are those of the authors' release (github.com/uiuc-focal-lab/RAMP,
``scripts/cifar10/RAMP_scratch_cifar10.sh``, ``RAMP.py`` and ``utils.gp``):
``pairing_weight`` λ = 5 for training from scratch (their fine-tuning runs use 1.5: set it when fine-tuning with
``--init``); ``gp_beta`` β = 0.5; ``gradient_projection`` on; ``gp_rule`` ``project`` (the formula above) or
``cosine`` (their code's variant: Proj⁺ replaced by max(cos∠(g_a, g_n), 0)·g_n, which equals Proj⁺ when
‖g_a‖ = ‖g_n‖; it keeps ⟨g, g_a⟩ ≥ (1 − β)‖g_a‖² but not the tan identity); ``natural_warmup_epochs`` = 0:
that many first epochs are plain natural training (the "-pre" variant of their GP study pre-trains on clean data;
their CIFAR-10 scripts use none).

Deviations, plainly: (a) the authors apply GP once per epoch to *model updates* (a separate copy trained one epoch
on clean data, then θ ← θ_old + GP(θ_AT − θ_old, θ_NT − θ_old)); here GP combines the two *gradients* of every
batch, so one optimizer (the run's AdamW) steps with the projected gradient. (b) Their released pair is fixed to
(q, r) = (ℓ∞, ℓ1), the key pair they identify for CIFAR-10; here the pair is re-chosen every batch from the
batch's adversarial accuracies, which costs three attacks per batch instead of two. (c) The max in L_adv compares
train-mode losses (theirs: the attack's eval-mode loss). RAMP keeps no state across steps (the pair is chosen
from the batch), so ``state_dict`` is empty and resume is bit-exact through the RNG state alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rome_bench.errors import ConfigError
from rome_bench.threats import Threat
from rome_bench.training.attacks import training_threats
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe

GP_RULES: tuple[str, ...] = ("project", "cosine")


@dataclass(frozen=True)
class RAMPOptions:
    pairing_weight: float = 5.0  # λ of the logit-pairing KL (CIFAR-10 from scratch; 1.5 for fine-tuning)
    gp_beta: float = 0.5  # β of the gradient projection
    gradient_projection: bool = True  # False: plain back-propagation of L_adv (RAMP without GP)
    gp_rule: str = "project"  # project (FedGP's Proj⁺) | cosine (the authors' code)
    natural_warmup_epochs: int = 0  # first epochs of natural training only

    def check(self) -> None:
        if not (math.isfinite(self.pairing_weight) and self.pairing_weight >= 0):
            raise ConfigError(f"ramp: pairing_weight must be a finite number >= 0, got {self.pairing_weight}")
        if not 0 <= self.gp_beta <= 1:
            raise ConfigError(f"ramp: gp_beta must be in [0, 1], got {self.gp_beta}")
        if self.gp_rule not in GP_RULES:
            raise ConfigError(f"ramp: unknown gp_rule '{self.gp_rule}'; choose one of {', '.join(GP_RULES)}")
        if self.natural_warmup_epochs < 0:
            raise ConfigError(f"ramp: natural_warmup_epochs must be >= 0, got {self.natural_warmup_epochs}")


def most_vulnerable_pair(correct: list[int]) -> tuple[int, int]:
    """(q, r): r the threat with the fewest correct adversarial examples, q the next (ties: lower id first)."""
    order = sorted(range(len(correct)), key=lambda threat: (correct[threat], threat))
    return order[1], order[0]


def logit_pairing_loss(logits_q: torch.Tensor, logits_r: torch.Tensor, labels: torch.Tensor,
                       denominator: float | None = None) -> torch.Tensor:
    """Mean over S = {argmax logits_q = y} of KL(softmax logits_q ‖ softmax logits_r); 0 when S is empty.

    ``denominator`` replaces |S| (with several processes: |S| of the global batch times this rank's share, so the
    trainer's share-weighted sum of the ranks' terms is the global batch's mean).
    """
    kept = (logits_q.argmax(dim=1) == labels).detach()
    log_q = F.log_softmax(logits_q[kept], dim=1)
    log_r = F.log_softmax(logits_r[kept], dim=1)
    per_example = (log_q.exp() * (log_q - log_r)).sum(dim=1)
    return per_example.sum() / (kept.sum().clamp_min(1) if denominator is None else denominator)


def project_positive(adversarial: torch.Tensor, natural: torch.Tensor, rule: str) -> torch.Tensor:
    """Proj⁺(g_a | g_n) = max(⟨g_a, g_n⟩, 0)/‖g_n‖²·g_n (``project``), or max(cos, 0)·g_n (``cosine``)."""
    a, n = adversarial.double(), natural.double()
    dot = (a * n).sum()
    n_sq = n.square().sum()
    if rule == "project":
        scale = dot.clamp_min(0) / n_sq.clamp_min(1e-300)
    else:
        scale = (dot / (a.square().sum().sqrt() * n_sq.sqrt()).clamp_min(1e-300)).clamp_min(0)
    scale = torch.where(n_sq > 0, scale, torch.zeros_like(scale))
    return (scale * n).to(adversarial.dtype)


def gradient_projection(adversarial: list[torch.Tensor], natural: list[torch.Tensor], beta: float,
                        rule: str = "project") -> list[torch.Tensor]:
    """g = (1 − β)·g_a + β·Proj⁺(g_a | g_n), per parameter tensor."""
    return [(1 - beta) * g_a + beta * project_positive(g_a, g_n, rule)
            for g_a, g_n in zip(adversarial, natural, strict=True)]


@register_recipe("ramp", citation="Jiang & Singh, NeurIPS 2024")
class RAMPRecipe(Recipe):
    """RAMP: MAX over the two most vulnerable threats + logit pairing, natural gradient mixed in by projection."""

    Options = RAMPOptions

    def build_threats(self) -> list[Threat]:
        return training_threats(self.threat_config, self.attack_kind)

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        """L_adv of the batch (what is back-propagated without GP)."""
        return self.adversarial_step(ctx, batch)[0]

    def update(self, ctx: StepContext, batch: Batch) -> StepResult:
        if batch.epoch < self.options.natural_warmup_epochs:
            return self.natural_step(ctx, batch)
        if not self.options.gradient_projection:
            return super().update(ctx, batch)
        result, natural_loss = self.adversarial_step(ctx, batch, with_natural=True)
        result = ctx.add_routing(result, self.name)  # what Recipe.objective adds, before the gradients are taken
        assert natural_loss is not None
        natural = ctx.grads(natural_loss)
        adversarial = ctx.grads(result.loss)
        ctx.set_grads(gradient_projection(adversarial, natural, self.options.gp_beta, self.options.gp_rule))
        result.logs["nat_loss"] = float(natural_loss.detach())
        # a non-finite natural loss must stop the step too: 0·inf = nan reaches the trainer's finiteness check
        result.loss = result.loss + 0 * natural_loss.detach()
        return result

    def natural_step(self, ctx: StepContext, batch: Batch) -> StepResult:
        """Warm-up: cross-entropy on the clean batch."""
        logits = ctx.forward(batch.images)
        loss = F.cross_entropy(logits, batch.labels)
        ctx.backward(loss)
        correct = int((logits.argmax(1) == batch.labels).sum())
        return StepResult(loss, {"nat_loss": float(loss.detach())}, {"nat": (correct, len(batch.labels))})

    @staticmethod
    def pairing(ctx: StepContext, logits_q: torch.Tensor, logits_r: torch.Tensor, labels: torch.Tensor
                ) -> torch.Tensor:
        """The logit-pairing loss, S taken over the global batch (one process: this batch)."""
        if not ctx.distributed.active:
            return logit_pairing_loss(logits_q, logits_r, labels)
        kept = float((logits_q.argmax(dim=1) == labels).sum())
        return logit_pairing_loss(logits_q, logits_r, labels, max(ctx.global_sum([kept])[0], 1.0) * ctx.share)

    def adversarial_step(self, ctx: StepContext, batch: Batch, with_natural: bool = False
                         ) -> tuple[StepResult, torch.Tensor | None]:
        """Attacks, the pair (q, r), L_adv (its forward labelled for the routing loss); with ``with_natural`` first
        the clean forward's CE."""
        images, labels = batch.images, batch.labels
        size = len(labels)
        threats = self.threats()
        clean_correct = int((ctx.eval_logits(images).argmax(1) == labels).sum())
        adversarial = [ctx.attack(threat, images, labels) for threat in threats]
        correct = [int((ctx.eval_logits(x).argmax(1) == labels).sum()) for x in adversarial]
        q, r = most_vulnerable_pair([round(count) for count in ctx.global_sum(correct)])  # the global batch's pair
        natural_loss = F.cross_entropy(ctx.forward(images), labels) if with_natural else None
        threat_ids = torch.cat([torch.full_like(labels, q), torch.full_like(labels, r)])
        pair = torch.cat([adversarial[q], adversarial[r]])
        logits_q, logits_r = ctx.forward(pair, routing_ids=threat_ids).split(size)
        worst = torch.maximum(F.cross_entropy(logits_q, labels, reduction="none"),
                              F.cross_entropy(logits_r, labels, reduction="none")).mean()
        pairing = self.pairing(ctx, logits_q, logits_r, labels)
        total = worst + self.options.pairing_weight * pairing
        logs = {"adv_loss": float(worst.detach()), "pairing": float(pairing.detach())}
        logs.update({f"pair_{threat.column}": float(index in (q, r)) for index, threat in enumerate(threats)})
        counts = {"nat": (clean_correct, size)}
        counts.update({threat.column: (correct[index], size) for index, threat in enumerate(threats)})
        return StepResult(total, logs, counts), natural_loss
