"""Suites: named lists of threats evaluated together, with the leaderboard columns they fill."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rome_bench.config import ThreatsConfig
from rome_bench.registry import Registry
from rome_bench.threats import Clean, Threat, seen_apgd, seen_autoattack, seen_threats


@dataclass(frozen=True)
class Suite:
    """``build`` makes the threats from a run's threat settings; 'clean' always comes first."""

    name: str
    build: Callable[[ThreatsConfig], list[Threat]]
    columns: tuple[str, ...]
    titles: dict[str, str]
    description: str


SUITES: Registry[Suite] = Registry("suites")

LP_TITLES = {"nat": "Nat", "l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}


def register_suite(suite: Suite) -> Suite:
    SUITES.add(suite.name, suite, description=suite.description, columns=suite.columns)
    return suite


def _seen_autoattack(threats: ThreatsConfig) -> list[Threat]:
    return [Clean(), *seen_autoattack(threats.eps)]


def _seen_autoattack_plus(threats: ThreatsConfig) -> list[Threat]:
    return [Clean(), *seen_autoattack(threats.eps, version="plus")]


def _seen_autoattack_rand(threats: ThreatsConfig) -> list[Threat]:
    return [Clean(), *seen_autoattack(threats.eps, version="rand")]


def _seen_apgd(threats: ThreatsConfig) -> list[Threat]:
    return [Clean(), *seen_apgd(threats.eps)]


def _seen_pgd(threats: ThreatsConfig) -> list[Threat]:
    return [Clean(), *seen_threats(threats.eps, threats.eval_steps, threats.l1_sparsity, keep_adversarial=True)]


register_suite(Suite(
    name="seen",
    build=_seen_autoattack,
    columns=("nat", "l1", "l2", "linf"),
    titles=LP_TITLES,
    description="clean + AutoAttack-standard ℓ1/ℓ2/ℓ∞ at the run's ε (pyautoattack, seed 0): the paper's protocol",
))

register_suite(Suite(
    name="seen-plus",
    build=_seen_autoattack_plus,
    columns=("nat", "l1", "l2", "linf"),
    titles=LP_TITLES,
    description="clean + AutoAttack-plus ℓ1/ℓ2/ℓ∞ (APGD-CE/DLR with 5 restarts, FAB, Square, APGD-T, FAB-T), seed 0",
))

register_suite(Suite(
    name="seen-rand",
    build=_seen_autoattack_rand,
    columns=("nat", "l1", "l2", "linf"),
    titles=LP_TITLES,
    description="clean + AutoAttack-rand ℓ1/ℓ2/ℓ∞ for randomised defences (APGD-CE/DLR with 20-step EOT), seed 0",
))

register_suite(Suite(
    name="seen-apgd",
    build=_seen_apgd,
    columns=("nat", "l1", "l2", "linf"),
    titles=LP_TITLES,
    description="clean + APGD-CE then APGD-T (AutoAttack-standard settings) ℓ1/ℓ2/ℓ∞ at the run's ε, seed 0",
))

register_suite(Suite(
    name="seen-pgd",
    build=_seen_pgd,
    columns=("nat", "l1", "l2", "linf"),
    titles=LP_TITLES,
    description="clean + the training PGD ℓ1/ℓ2/ℓ∞ at the run's ε with threats.eval_steps steps (first success kept)",
))
