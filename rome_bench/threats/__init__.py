"""Threats: the registry and the built-in threats (importing this package registers them)."""

from rome_bench.threats import pgd as _pgd  # noqa: F401  (registers pgd-linf, pgd-l2, pgd-l1)
from rome_bench.threats.base import (
    THREATS,
    Budget,
    BudgetCheck,
    Clean,
    LpBudget,
    Threat,
    register_threat,
)
from rome_bench.threats.pgd import L1PGD, L2PGD, PGD, LinfPGD, project_l1_box, project_l2_box

__all__ = [
    "L1PGD",
    "L2PGD",
    "PGD",
    "THREATS",
    "Budget",
    "BudgetCheck",
    "Clean",
    "LinfPGD",
    "LpBudget",
    "Threat",
    "project_l1_box",
    "project_l2_box",
    "register_threat",
]


def seen_threats(eps: dict[str, float], steps: dict[str, int], l1_sparsity: float,
                 keep_adversarial: bool = True) -> list[Threat]:
    """The three seen ℓp PGD threats (ℓ1, ℓ2, ℓ∞) at the given budgets and steps, in that order."""
    return [
        L1PGD(eps["l1"], steps["l1"], keep_adversarial=keep_adversarial, sparsity=l1_sparsity),
        L2PGD(eps["l2"], steps["l2"], keep_adversarial=keep_adversarial),
        LinfPGD(eps["linf"], steps["linf"], keep_adversarial=keep_adversarial),
    ]
