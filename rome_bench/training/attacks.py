"""The ℓp training attacks a recipe draws its threats from: PGD (last iterate) or a training APGD (best loss).

``--train-attack pgd`` uses the preset's PGD steps (``threats.train_steps``, CIFAR-10: ℓ1 20, ℓ2 20, ℓ∞ 10) with
step 2.5·ε/steps unless ``threats.train_step_size`` names one for the norm (the sparse-MoE paper's α = 2/255),
from a random start unless ``threats.train_random_start = false`` (then from the clean image, deterministic);
``--train-attack apgd`` uses ``threats.apgd_steps`` iterations (15 in the paper's Sec. 5.1). Training attacks
return their final (PGD) or best-loss (APGD) iterate, never the first misclassified one: the evaluation rule
would stop pushing an example as soon as it is wrong, which makes a weaker training signal.
"""

from __future__ import annotations

from collections.abc import Callable

from rome_bench.config import NORMS, ThreatsConfig
from rome_bench.errors import ConfigError
from rome_bench.threats import L1PGD, L2PGD, THREATS, LinfPGD, Threat

TRAINING_APGD = "apgd-train-{norm}"  # registry names of the training APGD threats


def training_threat(config: ThreatsConfig, norm: str, attack: str) -> Threat:
    """The training attack on one ℓp threat at the config's ε."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}")
    eps = config.eps[norm]
    if attack == "pgd":
        steps, step_size = config.train_steps[norm], config.train_step_size.get(norm)
        start = config.train_random_start
        if norm == "l1":
            return L1PGD(eps, steps, step_size, start, keep_adversarial=False, sparsity=config.l1_sparsity)
        return (L2PGD if norm == "l2" else LinfPGD)(eps, steps, step_size, start, keep_adversarial=False)
    if attack == "apgd":
        make: Callable[..., Threat] = THREATS.get(TRAINING_APGD.format(norm=norm))
        return make(eps=eps, steps=config.apgd_steps[norm])
    raise ConfigError(f"unknown training attack '{attack}'; choose pgd or apgd")


def training_threats(config: ThreatsConfig, attack: str, norms: tuple[str, ...] = NORMS) -> list[Threat]:
    """One training attack per norm, in the order given (ℓ1, ℓ2, ℓ∞ by default: the threat ids 0, 1, 2)."""
    return [training_threat(config, norm, attack) for norm in norms]
