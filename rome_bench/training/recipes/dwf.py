"""DWF joint training (Meymani & Razavi-Far, arXiv 2512.20821, Sec. 4): ``dwf``.

After its nine experts are pre-trained (``dwf_experts.py``; ``models/dwf.py`` lists the runs), DWF trains the
whole mixture f(x) = Σ_k g_k(x)·f_k(x) end to end, every expert and the gate, none frozen, "on batches in which
benign and adversarial samples are combined", with the attacks' parameters randomised as in pre-training:

    L = mean over [x ; FGSM_ε(x) ; PGD_n(x)] of CE(f(·), y),   ε ~ U{0.01, …, 0.09},  n ~ U{10, …, 50} per batch

Both attacks are generated against the whole mixture f (gate included) in eval mode, by ``ctx.attack`` on the
model being trained; the update runs in train mode.

Open in the paper, each an option (``--set train.options.NAME=VALUE``):

* the mix: ``inputs`` = ["clean","fgsm","pgd"] puts every example of the batch in once clean and once per attack
  (1 : 1 : 1; the paper says only that each batch combines benign and adversarial samples); drop a kind to change
  the ratio, e.g. ``--set 'train.options.inputs=["clean","pgd"]'``;
* the attack grids, PGD ε and step α: as for the expert recipes (``RandomizedAttackOptions`` in
  ``dwf_experts.py``), by default ε-grid {0.01, …, 0.09}, n-grid {10, …, 50}, PGD ε 8/255, α 2/255.

The recipe trains the ``dwf`` family only (``families``); the expert runs use ``clean``, ``dwf-fgsm``, ``dwf-pgd``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rome_bench.errors import ConfigError
from rome_bench.training.recipe import register_recipe
from rome_bench.training.recipes.dwf_experts import INPUT_KINDS, RandomizedAttackOptions, RandomizedInputsRecipe


@dataclass(frozen=True)
class DWFJointOptions(RandomizedAttackOptions):
    """The expert recipes' attack grids plus the batch's mix of clean and adversarial versions."""

    inputs: tuple[str, ...] = ("clean", "fgsm", "pgd")

    def check(self) -> None:
        super().check()
        unknown = [kind for kind in self.inputs if kind not in INPUT_KINDS]
        if unknown or not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"train.options.inputs must list distinct kinds among {', '.join(INPUT_KINDS)} "
                              f"(got {','.join(self.inputs) or 'none'})")


@register_recipe("dwf", citation="Meymani & Razavi-Far, arXiv 2512.20821 (DWF), Sec. 4 joint training")
class DWFJoint(RandomizedInputsRecipe):
    """DWF joint training: CE on clean + FGSM + PGD versions of every example, attacks against the whole model."""

    Options = DWFJointOptions
    options: DWFJointOptions
    families = ("dwf",)  # the mixture of pre-trained experts; the expert runs use clean, dwf-fgsm, dwf-pgd

    def input_kinds(self) -> tuple[str, ...]:
        return self.options.inputs
