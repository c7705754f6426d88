"""Standard (non-adversarial) training, ``clean``: the mean cross-entropy on the clean images, min_θ E CE(f_θ(x), y).

The clean expert of MORE (Cheng et al. 2021) and DWF's benign expert are ordinary ``clean`` runs of the ``plain``
family. On a family with experts every input carries threat id 0 (one routing group).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rome_bench.threats import Threat
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe


@register_recipe("clean", citation="standard training (the clean expert of MORE and DWF)")
class CleanRecipe(Recipe):
    """Standard training: mean cross-entropy on the clean images, no attack."""

    own_attack = "no attack (clean images)"

    def build_threats(self) -> list[Threat]:
        return []

    def routing_groups(self) -> int:
        return 1

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        logits = ctx.forward(batch.images, routing_ids=torch.zeros_like(batch.labels))
        loss = F.cross_entropy(logits, batch.labels)
        correct = {"nat": (int((logits.argmax(1) == batch.labels).sum()), len(batch.labels))}
        logs = {"clean_loss": float(loss.detach())}
        return StepResult(loss, logs, correct)
