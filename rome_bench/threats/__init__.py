"""Threats: the registry and the built-in threats (importing this package registers them)."""

from rome_bench.threats import apgd_train as _apgd_train  # noqa: F401  (registers apgd-train-*)
from rome_bench.threats import autoattack as _autoattack  # noqa: F401  (registers autoattack-*, apgd-*)
from rome_bench.threats import fgsm as _fgsm  # noqa: F401  (registers fgsm)
from rome_bench.threats import msd as _msd  # noqa: F401  (registers msd)
from rome_bench.threats import pgd as _pgd  # noqa: F401  (registers pgd-linf, pgd-l2, pgd-l1)
from rome_bench.threats.autoattack import (
    L1APGD,
    L2APGD,
    AutoAttackThreat,
    L1AutoAttack,
    L2AutoAttack,
    LinfAPGD,
    LinfAutoAttack,
)
from rome_bench.threats.base import (
    THREATS,
    Budget,
    BudgetCheck,
    Clean,
    LpBudget,
    Threat,
    UnboundedBudget,
    register_threat,
)
from rome_bench.threats.corruptions import CORRUPTIONS, CommonCorruption, cifar10_c_threats
from rome_bench.threats.fog import Fog
from rome_bench.threats.functional import ReColorAdv, StAdv
from rome_bench.threats.gabor import Gabor
from rome_bench.threats.gma import GatingMisrouting
from rome_bench.threats.lpa import LagrangePerceptual
from rome_bench.threats.pgd import (
    DEFAULT_L1_SPARSITY,
    L1PGD,
    L2PGD,
    PGD,
    LinfPGD,
    project_l1_box,
    project_l2_box,
    project_l2_box_sorted,
)
from rome_bench.threats.ppgd import PerceptualPGD
from rome_bench.threats.snow import Snow
from rome_bench.threats.sparse import AdversarialPatch, SparseFool
from rome_bench.threats.uar_geometric import Elastic, JPEGLinf

__all__ = [
    "CORRUPTIONS",
    "L1APGD",
    "L1PGD",
    "L2APGD",
    "L2PGD",
    "PGD",
    "THREATS",
    "AdversarialPatch",
    "AutoAttackThreat",
    "Budget",
    "BudgetCheck",
    "Clean",
    "CommonCorruption",
    "Elastic",
    "Fog",
    "Gabor",
    "GatingMisrouting",
    "JPEGLinf",
    "L1AutoAttack",
    "L2AutoAttack",
    "LagrangePerceptual",
    "LinfAPGD",
    "LinfAutoAttack",
    "LinfPGD",
    "LpBudget",
    "PerceptualPGD",
    "ReColorAdv",
    "Snow",
    "SparseFool",
    "StAdv",
    "Threat",
    "UnboundedBudget",
    "cifar10_c_threats",
    "project_l1_box",
    "project_l2_box",
    "project_l2_box_sorted",
    "register_threat",
    "unseen_threats",
]


def seen_threats(eps: dict[str, float], steps: dict[str, int], l1_sparsity: float = DEFAULT_L1_SPARSITY,
                 keep_adversarial: bool = True) -> list[Threat]:
    """The three seen ℓp PGD threats (ℓ1, ℓ2, ℓ∞) at the given budgets and steps, in that order.

    ε and steps are the protocol (the dataset's preset; they are in each threat's key); the ℓ1 sparsity is an attack
    internal, the measured evaluation default unless a caller (a training attack) names its own.
    """
    return [
        L1PGD(eps["l1"], steps["l1"], keep_adversarial=keep_adversarial, sparsity=l1_sparsity),
        L2PGD(eps["l2"], steps["l2"], keep_adversarial=keep_adversarial),
        LinfPGD(eps["linf"], steps["linf"], keep_adversarial=keep_adversarial),
    ]


def seen_autoattack(eps: dict[str, float], version: str = "standard") -> list[Threat]:
    """AutoAttack under ℓ1, ℓ2 and ℓ∞ at the given budgets (the paper's evaluation protocol), fixed seed 0."""
    return [L1AutoAttack(eps["l1"], version), L2AutoAttack(eps["l2"], version), LinfAutoAttack(eps["linf"], version)]


def seen_apgd(eps: dict[str, float]) -> list[Threat]:
    """APGD-CE then APGD-T under ℓ1, ℓ2 and ℓ∞ (the cheaper protocol of E-AT and RAMP), fixed seed 0."""
    return [L1APGD(eps["l1"]), L2APGD(eps["l2"]), LinfAPGD(eps["linf"])]


def unseen_threats(linf_eps: float) -> list[Threat]:
    """The paper's unseen threats with its CIFAR-10 settings (Sec. A1), in Table 2's column order.

    75 corruption × severity threats, SparseFool ℓ0, Fog/Snow/Gabor/Elastic/JPEG-ℓ∞ (Percep. ℓp), PPGD, LPA,
    the 8×8 patch, StAdv, ReColorAdv, and GMA at the run's ℓ∞ ε (8/255 on CIFAR-10, as in the paper).
    """
    return [
        *cifar10_c_threats(),
        SparseFool(),
        Fog(), Snow(), Gabor(), Elastic(), JPEGLinf(),
        PerceptualPGD(), LagrangePerceptual(),
        AdversarialPatch(),
        StAdv(),
        ReColorAdv(),
        GatingMisrouting(eps=linf_eps),
    ]
