"""Divided We Fall (DWF; Meymani & Razavi-Far, arXiv 2512.20821): nine ResNet-18 experts under one soft gate.

The model is the logit mixture of ``models/mixture.py``, f(x) = Σ_k g_k(x)·f_k(x), g = softmax(h(x)) over K = 9
experts: one benign expert, four FGSM experts and four PGD experts, each pre-trained as an ordinary run of the
``plain`` family, then all trained jointly end to end, experts not frozen (recipe ``dwf``,
``training/recipes/dwf.py``). Expert pre-training (``bench/moe_families_experts.sh`` runs all of it):

    rome-bench train --family plain --method clean     --out runs/dwf-e0      (benign)
    rome-bench train --family plain --method dwf-fgsm  --out runs/dwf-e1..4   (ε drawn per batch from {0.01,…,0.09})
    rome-bench train --family plain --method dwf-pgd   --out runs/dwf-e5..8   (iterations from {10,…,50})
    rome-bench train --family dwf --method dwf --set 'model.options.experts=["runs/dwf-e0", …, "runs/dwf-e8"]'

The four FGSM (and the four PGD) experts differ by their seed (``--seed``): the paper trains all four of a kind
with the same randomised attack and does not say what else differs. Options (``--set model.options.NAME=VALUE``):
``experts`` (nine run directories, in the order benign, FGSM×4, PGD×4; none = fresh weights, for tests),
``num_experts`` (9), ``gate`` (``cnn``: "a small CNN → softmax over 9"; the paper gives no gate architecture) and
``gate_width`` (16). ``eval --route-to-expert k`` evaluates expert k alone through the gate's fixed-expert variant.

Presets: ``dwf-cifar10`` holds the paper's settings (ResNet-18 experts, CIFAR-10, 100 joint epochs; experts 150
epochs each: pass ``--epochs 150`` to their runs); what the paper leaves open there is said in its docstring.
``dwf-smoke`` is the micro size for CPUs (9 ``resnet_micro`` experts, synthetic data, PGD iterations {1,…,5}).
"""

from __future__ import annotations

from dataclasses import dataclass

from rome_bench.config import RunConfig
from rome_bench.models.family import register_family
from rome_bench.models.mixture import LogitMixtureFamily, MixtureOptions
from rome_bench.presets import preset, register_preset

DWF_CITATION = ("Meymani & Razavi-Far, Divided We Fall: Defending Against Adversarial Attacks via Soft-Gated "
                "Fractional Mixture-of-Experts with Randomized Adversarial Training, arXiv 2512.20821")


@dataclass(frozen=True)
class DWFOptions(MixtureOptions):
    """``model.options`` of ``dwf``: nine experts (benign, FGSM×4, PGD×4) and a small CNN gate."""

    num_experts: int = 9
    gate_width: int = 16


@register_family("dwf", has_experts=True, citation=DWF_CITATION)
class DWFFamily(LogitMixtureFamily):
    """Nine whole expert networks (benign, FGSM×4, PGD×4) mixed by a soft CNN gate; trained jointly (recipe dwf)."""

    Options = DWFOptions
    paper_recipe = "dwf"
    micro = ("model.backbone=resnet_micro", "model.options.num_experts=3")  # tests: 3 of the 9 experts


@register_preset("dwf-cifar10")
def _dwf_cifar10() -> RunConfig:
    """DWF on CIFAR-10: nine ResNet-18 experts, joint training 100 epochs on clean + FGSM + PGD batches.

    From the paper: ResNet-18 experts, CIFAR-10, 100 joint epochs (150 per expert), FGSM ε drawn per batch from
    {0.01, …, 0.09}, PGD iterations from {10, …, 50} (the ``dwf`` recipe's defaults), PGD ε = 8/255. Not in the
    summary we follow, so kept from rome-bench's CIFAR-10 preset: AdamW lr 1e-3 (the trainer's optimiser), weight
    decay 5e-4 (the usual ResNet value), batch 128, random crop + flip, warm-up/decay shape scaled to 100 epochs.
    """
    config = RunConfig(preset="dwf-cifar10")
    config.model.family = "dwf"
    config.model.backbone = "resnet18"
    config.train.recipe = "dwf"
    config.train.epochs = 100
    config.train.batch_size = 128
    config.train.weight_decay = 5e-4
    config.train.checkpoint_every = 500
    return config


@register_preset("dwf-smoke")
def _dwf_smoke() -> RunConfig:
    """DWF at micro size on CPU: nine resnet_micro experts, synthetic data, PGD iterations {1, …, 5}."""
    config = preset("smoke")
    config.model.family, config.model.options = "dwf", {}  # (the smoke preset's options are RoME's)
    config.model.backbone = "resnet_micro"
    config.train.recipe = "dwf"
    config.train.options = {"iterations": 1}
    config.data.train_size = 512
    config.train.epochs = 2
    config.train.warmup_epochs, config.train.decay_epochs, config.train.final_epochs = 0.25, 1.25, 0.5
    return config
