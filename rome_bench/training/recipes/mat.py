"""Multi-perturbation adversarial training over the ℓ1, ℓ2, ℓ∞ threats (paper Eq. 1): MAX, AVG and RANDOM.

Every threat's adversarial examples are generated in eval mode, then one train-mode forward over all of them:

* ``max`` (Tramèr & Boneh 2019): every threat attacks every example; each example contributes its worst loss.
* ``avg`` (Tramèr & Boneh 2019): every threat attacks every example; the losses are averaged.
* ``random`` (Madaan et al. 2021): each example draws one threat uniformly (from the global torch RNG, which is
  saved in checkpoints); its loss is that threat's loss.

On a family with experts the routing loss (L_div of Eq. 9 by default) is added, with each adversarial input
labelled by the threat that made it: that is RoME on these recipes (``rome+max``, …).

Option ``train.options.batched_attacks`` (default false): generate all threats' PGD examples in one batched pass
(``training/batched.py``: one forward/backward per iteration over the stacked perturbations, each threat stepped and
projected by its own rule, a threat with fewer steps frozen once done). Valid when the model's eval-mode output for
an example does not depend on the rest of its batch (every ViT/CNN family here, RoME included; not batch-capacity
routing); the same random starts, the same examples up to float rounding, so off by default to keep runs
bit-identical to the sequential generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rome_bench.threats import Threat
from rome_bench.training.attacks import training_threats
from rome_bench.training.batched import batched_attack_inputs, check_batchable
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe

Assignment = tuple[torch.Tensor, torch.Tensor]  # (example index, threat id), one entry per adversarial input


def all_threats_every_example(batch_size: int, num_threats: int, device: torch.device) -> Assignment:
    """Threat-major order: entries p·B … p·B+B−1 are threat p on examples 0 … B−1."""
    examples = torch.arange(batch_size, device=device).repeat(num_threats)
    threats = torch.arange(num_threats, device=device).repeat_interleave(batch_size)
    return examples, threats


def one_random_threat_per_example(batch_size: int, num_threats: int, device: torch.device) -> Assignment:
    """Cat(1/P, …, 1/P) per example, drawn from the global torch RNG (saved in checkpoints)."""
    threats = torch.randint(num_threats, (batch_size,)).to(device)
    return torch.arange(batch_size, device=device), threats


def adversarial_inputs(ctx: StepContext, threats: list[Threat], images: torch.Tensor, labels: torch.Tensor,
                       assignment: Assignment) -> torch.Tensor:
    """Entry i is threat ``threat_ids[i]``'s adversarial version of example ``example_index[i]``."""
    example_index, threat_ids = assignment
    adversarial = torch.empty((len(example_index), *images.shape[1:]), device=images.device)
    for threat_id, threat in enumerate(threats):
        chosen = threat_ids == threat_id
        if chosen.any():
            picked = example_index[chosen]
            adversarial[chosen] = ctx.attack(threat, images[picked], labels[picked])
    return adversarial


@dataclass(frozen=True)
class MultiThreatOptions:
    batched_attacks: bool = False  # all threats' PGD in one batched pass (training/batched.py); not bit-identical


class MultiThreatRecipe(Recipe):
    """Adversarial inputs from the ℓ1, ℓ2, ℓ∞ training attacks, assigned and aggregated by the subclass."""

    Options = MultiThreatOptions
    options: MultiThreatOptions

    def build_threats(self) -> list[Threat]:
        return training_threats(self.threat_config, self.attack_kind)

    def threats(self) -> list[Threat]:
        threats = super().threats()
        if self.options.batched_attacks:
            check_batchable(threats)
        return threats

    def assign(self, batch_size: int, num_threats: int, device: torch.device) -> Assignment:
        return all_threats_every_example(batch_size, num_threats, device)

    def aggregate(self, losses: torch.Tensor, batch_size: int) -> torch.Tensor:
        """φ(L_1, …, L_P) of the per-entry cross-entropies (in assignment order)."""
        return losses.mean()

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        images, labels = batch.images, batch.labels
        threats = self.threats()
        clean_correct = int((ctx.eval_logits(images).argmax(1) == labels).sum())
        example_index, threat_ids = self.assign(len(images), len(threats), images.device)
        generate = batched_attack_inputs if self.options.batched_attacks else adversarial_inputs
        adversarial = generate(ctx, threats, images, labels, (example_index, threat_ids))
        targets = labels[example_index]
        logits = ctx.forward(adversarial, routing_ids=threat_ids)
        loss = self.aggregate(F.cross_entropy(logits, targets, reduction="none"), len(images))
        hits = logits.argmax(1) == targets
        correct = {"nat": (clean_correct, len(images))}
        for threat_id, threat in enumerate(threats):
            mine = threat_ids == threat_id
            correct[threat.column] = (int(hits[mine].sum()), int(mine.sum()))
        logs = {"adv_loss": float(loss.detach())}
        return StepResult(loss, logs, correct)


@register_recipe("max", citation="Tramèr & Boneh, NeurIPS 2019")
class MaxRecipe(MultiThreatRecipe):
    """MAX: every threat attacks every example; each example's worst threat's loss."""

    def aggregate(self, losses: torch.Tensor, batch_size: int) -> torch.Tensor:
        return losses.view(-1, batch_size).max(dim=0).values.mean()


@register_recipe("avg", citation="Tramèr & Boneh, NeurIPS 2019")
class AvgRecipe(MultiThreatRecipe):
    """AVG: every threat attacks every example; the mean of all their losses."""


@register_recipe("random", citation="Madaan et al., 2021 (RANDOM in Tramèr & Boneh's terms)")
class RandomRecipe(MultiThreatRecipe):
    """RANDOM: each example draws one threat uniformly; its loss is that threat's."""

    def assign(self, batch_size: int, num_threats: int, device: torch.device) -> Assignment:
        return one_random_threat_per_example(batch_size, num_threats, device)
