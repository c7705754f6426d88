"""DWF's expert pre-training with randomised attacks (Meymani & Razavi-Far, arXiv 2512.20821, Alg. 1 and 2):
``dwf-fgsm`` and ``dwf-pgd``, and the per-batch attack draws the joint recipe ``dwf`` shares.

* FGSM experts (Alg. 1): for every batch ε ~ U{0.01, 0.02, …, 0.09}; x_adv = clip(x + ε·sign(∇_x CE(f(x), y)));
  the update is the mean CE on x_adv.
* PGD experts (Alg. 2): for every batch the iteration count n ~ U{10, 20, 30, 40, 50}; ℓ∞ PGD with ε = 8/255
  x^{i+1} = Clip_{x±ε}(x^i + α·sign(∇ CE)), last iterate; the update is the mean CE on x^n.

``at.py``'s ``linf-at`` uses one fixed ε and step count, so these are recipes of their own. The draws come from the
global torch RNG (saved in checkpoints: resume stays bit-exact). Attacks run in eval mode, the update in train mode.

Open in the paper, each an option (``--set train.options.NAME=VALUE``):

* the grids as (unit, count): ε ∈ {fgsm_eps_step·1, …, fgsm_eps_step·fgsm_eps_count} (0.01, 9) and
  n ∈ {iterations·1, …, iterations·iteration_count} (10, 5); ``dwf-smoke`` sets iterations = 1 (n ∈ {1, …, 5});
* the PGD ε of training, ``pgd_eps`` = 8/255 (the ε at which the paper evaluates PGD);
* the PGD step α, ``pgd_step_size`` = 2/255 (the common CIFAR-10 value, e.g. torchattacks' default), with a random
  start uniform in the ε-ball (``pgd_random_start``, on: Madry et al.'s PGD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from rome_bench.errors import ConfigError
from rome_bench.threats import LinfPGD, Threat
from rome_bench.threats.fgsm import FGSM
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe

DWF_CITATION = "Meymani & Razavi-Far, arXiv 2512.20821 (DWF), Alg. 1 (FGSM) and Alg. 2 (PGD)"
INPUT_KINDS: tuple[str, ...] = ("clean", "fgsm", "pgd")
COLUMNS: dict[str, str] = {"clean": "nat", "fgsm": "fgsm", "pgd": "linf"}


@dataclass(frozen=True)
class RandomizedAttackOptions:
    """DWF's per-batch attack grids (module docstring)."""

    fgsm_eps_step: float = 0.01
    fgsm_eps_count: int = 9
    pgd_eps: float = 8 / 255
    pgd_step_size: float = 2 / 255
    pgd_random_start: bool = True
    iterations: int = 10
    iteration_count: int = 5

    def check(self) -> None:
        problems = [
            (self.fgsm_eps_step > 0 and self.fgsm_eps_count >= 1,
             "train.options.fgsm_eps_step must be > 0 and fgsm_eps_count >= 1"),
            (self.fgsm_eps_step * self.fgsm_eps_count <= 1, "train.options.fgsm_eps_step × fgsm_eps_count must be "
                                                            "<= 1 (ε is in units of [0,1] images)"),
            (0 < self.pgd_eps <= 1 and self.pgd_step_size > 0,
             "train.options.pgd_eps must be in (0, 1] and pgd_step_size > 0"),
            (self.iterations >= 1 and self.iteration_count >= 1,
             "train.options.iterations and iteration_count must be >= 1"),
        ]
        for ok, message in problems:
            if not ok:
                raise ConfigError(message)

    def fgsm_eps_grid(self) -> list[float]:
        return [self.fgsm_eps_step * k for k in range(1, self.fgsm_eps_count + 1)]

    def iteration_grid(self) -> list[int]:
        return [self.iterations * k for k in range(1, self.iteration_count + 1)]

    def draw_fgsm(self) -> FGSM:
        """FGSM with ε drawn uniformly from the grid (global torch RNG)."""
        return FGSM(self.fgsm_eps_step * int(torch.randint(1, self.fgsm_eps_count + 1, ())))

    def draw_pgd(self) -> LinfPGD:
        """ℓ∞ PGD (last iterate) with its iteration count drawn uniformly from the grid (global torch RNG)."""
        steps = self.iterations * int(torch.randint(1, self.iteration_count + 1, ()))
        return self.pgd(steps)

    def pgd(self, steps: int) -> LinfPGD:
        return LinfPGD(self.pgd_eps, steps, step_size=self.pgd_step_size, random_start=self.pgd_random_start,
                       keep_adversarial=False)


class RandomizedInputsRecipe(Recipe):
    """Mean CE over the batch's clean and/or randomised-attack versions, in the order of :meth:`input_kinds`."""

    Options: ClassVar[type] = RandomizedAttackOptions
    options: RandomizedAttackOptions
    own_attack = "DWF's randomised FGSM/PGD"
    kinds: ClassVar[tuple[str, ...]] = ()

    def input_kinds(self) -> tuple[str, ...]:
        return self.kinds

    def build_threats(self) -> list[Threat]:
        """The strongest attack of each grid (for listing and checks; every batch draws its own)."""
        kinds = self.input_kinds()
        threats: list[Threat] = []
        if "fgsm" in kinds:
            threats.append(FGSM(self.options.fgsm_eps_grid()[-1]))
        if "pgd" in kinds:
            threats.append(self.options.pgd(self.options.iteration_grid()[-1]))
        return threats

    def routing_groups(self) -> int:
        return len(self.input_kinds())

    def versions(self, ctx: StepContext, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each input kind's version of the batch; the attacks run against ``ctx.model``, the whole model."""
        kinds = self.input_kinds()
        fgsm = self.options.draw_fgsm() if "fgsm" in kinds else None  # both drawn first: a fixed RNG order
        pgd = self.options.draw_pgd() if "pgd" in kinds else None
        versions: dict[str, torch.Tensor] = {}
        for kind in kinds:
            if kind == "clean":
                versions[kind] = images
            else:
                versions[kind] = ctx.attack(fgsm if kind == "fgsm" else pgd, images, labels)  # type: ignore[arg-type]
        return versions

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        images, labels = batch.images, batch.labels
        versions = self.versions(ctx, images, labels)
        inputs = torch.cat(list(versions.values()))
        targets = labels.repeat(len(versions))
        group_ids = torch.arange(len(versions), device=labels.device).repeat_interleave(len(labels))
        logits = ctx.forward(inputs, routing_ids=group_ids)
        loss = F.cross_entropy(logits, targets)
        hits = logits.argmax(1) == targets
        correct = {COLUMNS[kind]: (int(hits[group_ids == index].sum()), len(labels))
                   for index, kind in enumerate(versions)}
        logs = {"ce": float(loss.detach())}
        return StepResult(loss, logs, correct)


@register_recipe("dwf-fgsm", citation=DWF_CITATION)
class DWFFGSMExpert(RandomizedInputsRecipe):
    """DWF's FGSM expert: CE on FGSM examples with ε drawn per batch from {0.01, …, 0.09}."""

    kinds = ("fgsm",)


@register_recipe("dwf-pgd", citation=DWF_CITATION)
class DWFPGDExpert(RandomizedInputsRecipe):
    """DWF's PGD expert: CE on ℓ∞ PGD (8/255) examples with iterations drawn per batch from {10, …, 50}."""

    kinds = ("pgd",)
