"""MORE stage 2 (Cheng et al., "Mixture of Robust Experts", arXiv 2104.10586, 2021): ``more``.

Stage 1 trains the experts as ordinary runs (``clean``, ``l1-at``, ``l2-at``, ``linf-at`` on the ``plain`` family);
``model.options.experts`` loads them into the ``more`` family (``models/more.py``). Stage 2 trains the gate network
and the experts' classifier heads (their last linear layer), everything else frozen, on the mixture
f(x) = Σ_k g_k(x)·f_k(x):

    min over (gate, heads) of mean over [x ; δ_ℓ1(x) ; δ_ℓ2(x) ; δ_ℓ∞(x)] of CE(f(·), y)

where δ_p(x) is the run's ℓp training attack (the preset's PGD, or the training APGD with ``--train-attack apgd``)
**against the whole mixture f**, gate included, generated in eval mode by ``ctx.attack`` on the model being trained.
MORE's public code (``train_mod_adv.py``) instead attacks ``basic_model``, a separate ResNet-18 that is never
trained, so its stage-2 "adversarial" examples are transferred from a random network: rome-bench does not reproduce
that (the issue asks for the adaptive attack, and a mixture trained on such examples would look robust only until
attacked through its gate).

Choices, each an option (``--set train.options.NAME=VALUE``):

* ``clean`` (true): the batch's clean images join the adversarial ones (MORE's code runs clean passes beside the
  adversarial ones, two clean passes per four adversarial, epoch by epoch; here every batch holds each example
  once clean and once per threat, 1 : 1 : 1 : 1);
* ``norms`` (["l1","l2","linf"]): the threats of stage 2, one per expert that is not the clean one, at the run's ε;
* ``trained`` (``gate+heads``): what stage 2 trains, ``gate+heads`` (MORE), ``gate`` or ``all``;
* ``frozen_batchnorm`` (true): the frozen bodies' BatchNorm layers stay in eval mode (their running statistics
  are part of the frozen expert); MORE's code leaves them in train mode (batch statistics, running averages
  updated), ``false`` does that.

The recipe trains the ``more`` family only (``families``); the experts' runs use ``clean`` and the ``*-at`` recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.config import NORMS
from rome_bench.errors import ConfigError
from rome_bench.models.gates import gating_modules
from rome_bench.models.mixture import expert_heads
from rome_bench.threats import Threat
from rome_bench.training.attacks import training_threats
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, register_recipe

TRAINED_PARTS: tuple[str, ...] = ("gate+heads", "gate", "all")


@dataclass(frozen=True)
class MoreStage2Options:
    clean: bool = True
    norms: tuple[str, ...] = NORMS
    trained: str = "gate+heads"  # gate+heads | gate | all
    frozen_batchnorm: bool = True

    def check(self) -> None:
        if not self.norms or any(norm not in NORMS for norm in self.norms) or len(set(self.norms)) != len(self.norms):
            raise ConfigError(f"train.options.norms must list distinct norms among {', '.join(NORMS)} "
                              f"(got {','.join(self.norms) or 'none'})")
        if self.trained not in TRAINED_PARTS:
            raise ConfigError(f"train.options.trained must be one of {', '.join(TRAINED_PARTS)} "
                              f"(got '{self.trained}')")


def _eval_mode(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook: a frozen BatchNorm normalises with its running statistics and never updates them."""
    module.train(False)


@register_recipe("more", citation="Cheng et al., arXiv 2104.10586 (MORE), stage 2; attacked through the mixture")
class MoreStage2(Recipe):
    """MORE stage 2: gate + expert heads trained on clean and ℓ1/ℓ2/ℓ∞ examples attacking the whole mixture."""

    Options = MoreStage2Options
    options: MoreStage2Options
    families = ("more",)  # the gate and the experts' heads of a logit mixture

    def build_threats(self) -> list[Threat]:
        return training_threats(self.threat_config, self.attack_kind, self.options.norms)

    def routing_groups(self) -> int:
        return len(self.threats()) + int(self.options.clean)

    def trained_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The gate's and (with ``gate+heads``) the heads' parameters, or all of them."""
        if self.options.trained == "all":
            return list(model.parameters())
        modules: list[nn.Module] = list(gating_modules(model))
        if self.options.trained == "gate+heads":
            modules += expert_heads(model)
        chosen = {id(p) for module in modules for p in module.parameters()}
        return [p for p in model.parameters() if id(p) in chosen]

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Freeze everything but :meth:`trained_parameters` (no gradient is even computed for it)."""
        trained = self.trained_parameters(model)
        if not trained:
            raise ConfigError(f"more: train.options.trained={self.options.trained} finds no parameters in this "
                              f"model (it has no gates): use trained=gate+heads or all")
        chosen = {id(p) for p in trained}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in chosen)
        if self.options.frozen_batchnorm:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in module.parameters()):
                    module.register_forward_pre_hook(_eval_mode)
        return trained

    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        images, labels = batch.images, batch.labels
        threats = self.threats()
        parts = ([images] if self.options.clean else []) + [ctx.attack(t, images, labels) for t in threats]
        columns = (["nat"] if self.options.clean else []) + [threat.column for threat in threats]
        targets = labels.repeat(len(parts))
        group_ids = torch.arange(len(parts), device=labels.device).repeat_interleave(len(labels))
        logits = ctx.forward(torch.cat(parts), routing_ids=group_ids)
        loss = F.cross_entropy(logits, targets)
        hits = logits.argmax(1) == targets
        correct = {column: (int(hits[group_ids == index].sum()), len(labels)) for index, column in enumerate(columns)}
        logs = {"ce": float(loss.detach())}
        return StepResult(loss, logs, correct)
