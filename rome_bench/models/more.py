"""MORE, Mixture of Robust Experts (Cheng et al., arXiv 2104.10586, 2021): per-threat experts under a gate network.

The model is the logit mixture of ``models/mixture.py``, f(x) = Σ_k g_k(x)·f_k(x), g = softmax(h(x)), over K = 4
whole expert networks: one normally trained (clean) and one adversarially trained per ℓp threat (ℓ1, ℓ2, ℓ∞), as
RoME's Table 1 compares it. Two stages, each an ordinary run:

    stage 1 (plain family): rome-bench train --family plain --method clean --out runs/m0
                            rome-bench train --family plain --method l1-at --out runs/m1   (l2-at m2, linf-at m3)
    stage 2:                rome-bench train --family more --method more \\
                                --set 'model.options.experts=["runs/m0","runs/m1","runs/m2","runs/m3"]'

Stage 2 (recipe ``more``, ``training/recipes/more.py``) trains the gate and the experts' classifier heads, the rest
frozen, adversarially against the whole mixture; its final sidecar records each expert run's model hash, so a
leaderboard row traces to the experts it was built from.

Options (``--set model.options.NAME=VALUE``): ``experts`` (four run directories, in the order clean, ℓ1, ℓ2, ℓ∞;
none = fresh weights, for tests), ``num_experts`` (4), ``gate`` and ``gate_width``: ``cnn`` with width 8 by default
(1,460 parameters, consistent with RoME's Table 6 count for MORE, 340.60M = 4 × 85.15M, which leaves under 5k for
the gate); ``gate=backbone`` is the gate of MORE's public code (a network of the experts' architecture, there a
ResNet-18). Presets: ``more-cifar10`` (RoME's Table 1 protocol for MORE: ViT-B experts, the run's ℓp budgets) and
``more-smoke`` (four ``resnet_micro`` experts on synthetic data, minutes on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from rome_bench.config import RunConfig
from rome_bench.models.family import register_family
from rome_bench.models.mixture import LogitMixtureFamily, MixtureOptions
from rome_bench.presets import preset, register_preset

MORE_CITATION = ("Cheng, Xu, Wang, Kailkhura, Lin, Goldhahn: Mixture of Robust Experts (MoRE): A Robust Denoising "
                 "Method towards Multiple Perturbations, arXiv 2104.10586 (2021); RoME Table 1 baseline")


@dataclass(frozen=True)
class MoreOptions(MixtureOptions):
    """``model.options`` of ``more``: four experts (clean, ℓ1, ℓ2, ℓ∞) and a gate network."""

    num_experts: int = 4


@register_family("more", has_experts=True, citation=MORE_CITATION)
class MoreFamily(LogitMixtureFamily):
    """Per-threat expert networks (clean, ℓ1, ℓ2, ℓ∞) mixed by a gate network; stage 2 trains gate and heads."""

    Options = MoreOptions
    paper_recipe = "more"
    micro = ("model.backbone=resnet_micro", "model.options.num_experts=2")  # tests: 2 of the 4 experts


@register_preset("more-cifar10")
def _more_cifar10() -> RunConfig:
    """MORE as RoME's Table 1 runs it on CIFAR-10: four ViT-B experts, stage 2 with the paper's common recipe.

    RoME Sec. 5.1: every baseline is trained with the same Transformer recipe (AdamW lr 1e-3, 20 epochs, warm-up and
    linear decay) and evaluated at ε = (12, 0.5, 8/255); this preset is the ``cifar10`` preset with the ``more``
    family and recipe. The experts are ``cifar10``-preset runs of ``clean``, ``l1-at``, ``l2-at``, ``linf-at``.
    MORE's own code trains stage 2 with Adam, batch 100, 100 epochs on ResNet-18 experts; set those with --set.
    """
    config = RunConfig(preset="more-cifar10")
    config.model.family = "more"
    config.train.recipe = "more"
    return config


@register_preset("more-smoke")
def _more_smoke() -> RunConfig:
    """MORE at micro size on CPU: four resnet_micro experts, synthetic data, stage 2 for two epochs."""
    config = preset("smoke")
    config.model.family, config.model.options = "more", {}  # (the smoke preset's options are RoME's)
    config.model.backbone = "resnet_micro"
    config.train.recipe = "more"
    config.data.train_size = 512
    config.train.epochs = 2
    config.train.warmup_epochs, config.train.decay_epochs, config.train.final_epochs = 0.25, 1.25, 0.5
    return config
