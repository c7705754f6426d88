"""APGD-CE/T and AutoAttack per norm, run through pyautoattack (Croce & Hein 2020), with a fixed seed.

rome-bench does not re-implement these attacks: it builds pyautoattack's own ``AutoAttack`` object, so every
hyper-parameter of a version (restarts, target classes, iterations, the ℓ1 ε-schedule, Square's queries) is the
library's, and then runs its attacks as AutoAttack does, as a cascade on a batch: each attack sees only the
examples that every earlier attack failed on, and an example's output is the first successful adversarial
example (else the clean image). Running the cascade here rather than calling ``run_standard_evaluation`` keeps
per-attack success counts, which feed a validity flag: a black-box attack (Square) succeeding where every
white-box attack failed is a sign of gradient masking.

With the same seed and the same batch, the result equals a direct ``AutoAttack.run_standard_evaluation`` call
(tested), except that each attack's output is clamped to [0,1]: ℓ1 Square adds its box projection to the image
without clipping, and float rounding left a coordinate at 1 + 1.2e-7 (``tests/test_closed_form_attacks.py``),
which the runner rejects; clamping moves a coordinate towards the clean image, so no ℓp norm grows. ``n_iter``
and ``n_queries`` exist for quick tests and ablations; the suites use the library defaults.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import torch
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, LpBudget, Threat, register_threat

PYAUTOATTACK_NORMS = {"l1": "L1", "l2": "L2", "linf": "Linf"}
VERSIONS = ("standard", "plus", "rand")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
BLACK_BOX_ATTACKS = frozenset({"square"})


def _autoattack_class() -> type:
    try:
        from pyautoattack import AutoAttack
    except ImportError as error:  # a dependency, but say how to fix a broken environment
        raise ConfigError("AutoAttack threats need pyautoattack: pip install pyautoattack") from error
    return AutoAttack


class AutoAttackThreat(Threat):
    """AutoAttack under one ℓp norm: the version's attacks as a cascade, seeded."""

    norm: ClassVar[str]
    default_attacks: ClassVar[tuple[str, ...] | None] = None  # None: the version's own list

    def __init__(self, eps: float, version: str = "standard", attacks: tuple[str, ...] | list[str] | None = None,
                 seed: int = 0, n_iter: int = 100, n_queries: int = 5000) -> None:
        if eps <= 0:
            raise ConfigError(f"{self.name}: eps must be > 0, got {eps}")
        if version not in VERSIONS:
            raise ConfigError(f"{self.name}: unknown AutoAttack version '{version}'; choose one of {VERSIONS}")
        chosen = tuple(attacks) if attacks is not None else self.default_attacks
        unknown = [a for a in chosen or () if a not in ATTACKS]
        if unknown:
            raise ConfigError(f"{self.name}: unknown attacks {unknown}; choose from {ATTACKS}")
        self.eps = float(eps)
        self.version = version
        self.attacks = chosen
        self.seed = int(seed)
        self.n_iter = int(n_iter)
        self.n_queries = int(n_queries)
        self.successes: dict[str, int] = {}

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "version": self.version, "attacks": list(self.attacks) if self.attacks else None,
                "seed": self.seed, "n_iter": self.n_iter, "n_queries": self.n_queries}

    def budget(self) -> Budget:
        return LpBudget(self.norm, self.eps)

    def adversary(self, model: nn.Module, device: torch.device) -> Any:
        """pyautoattack's AutoAttack object for this threat, configured by its version."""
        adversary = _autoattack_class()(model, norm=PYAUTOATTACK_NORMS[self.norm], eps=self.eps, seed=self.seed,
                                        version=self.version, device=device)
        if self.attacks is not None:
            adversary.attacks_to_run = list(self.attacks)
        for attack in (adversary.apgd, adversary.apgd_targeted):
            set_apgd_iterations(attack, self.n_iter)
        adversary.fab.n_iter = self.n_iter
        adversary.square.n_queries = self.n_queries
        return adversary

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adversary = self.adversary(model, images.device)
        result = images.detach().clone()
        robust = torch.ones(len(images), dtype=torch.bool, device=images.device)
        self.successes = {}
        white_box_failed = robust.clone()
        warnings = _WarningCollector()
        adversary.logger.addHandler(warnings)
        try:
            self._run_cascade(adversary, model, images, labels, result, robust, white_box_failed)
        finally:
            adversary.logger.removeHandler(warnings)
        self._flags = warnings.flags()
        if black_box_only := int((white_box_failed & ~robust).sum()):
            self._flags["black-box-success"] = black_box_only
        return result

    def _run_cascade(self, adversary: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     result: torch.Tensor, robust: torch.Tensor, white_box_failed: torch.Tensor) -> None:
        with torch.no_grad():
            for attack in adversary.attacks_to_run:
                remaining = robust.nonzero().squeeze(1)
                if len(remaining) == 0:
                    break
                perturbed = _run_attack(adversary, attack, images[remaining].clone(), labels[remaining].clone())
                perturbed = perturbed.clamp(0, 1)  # see the module docstring (ℓ1 Square's rounding)
                fooled = model(perturbed).argmax(1) != labels[remaining]
                result[remaining[fooled]] = perturbed[fooled].detach()
                robust[remaining[fooled]] = False
                self.successes[attack] = int(fooled.sum())
                if attack not in BLACK_BOX_ATTACKS:
                    white_box_failed.copy_(robust)

    def call_flags(self) -> dict[str, int]:
        return dict(getattr(self, "_flags", {}))


def set_apgd_iterations(attack: Any, n_iter: int) -> None:
    """Give a built pyautoattack APGD ``n_iter`` iterations as if it had been constructed with them.

    Its constructor derives more than ``n_iter`` from the iteration count: the step-size checkpoints
    (``n_iter_2``, ``n_iter_min``, ``size_decr``) and ``n_iter_orig``, which the ℓ1 ε-schedule (3ε → 2ε → ε) splits
    into its stages. Setting ``n_iter`` alone would leave ℓ1 APGD at the constructor's 100 iterations.
    """
    attack.n_iter = attack.n_iter_orig = n_iter
    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    attack.n_iter_min = max(int(0.06 * n_iter), 1)
    attack.size_decr = max(int(0.03 * n_iter), 1)


class _WarningCollector(logging.Handler):
    """Collects pyautoattack's own warnings (it logs them) as validity flags instead of printing them."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.zero_gradient_points = 0
        self.other = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if match := re.search(r"there are (\d+) points with zero gradient", message):
            self.zero_gradient_points = max(self.zero_gradient_points, int(match.group(1)))  # same points per restart
        else:
            self.other += 1

    def flags(self) -> dict[str, int]:
        found = {"zero-gradient": self.zero_gradient_points, "autoattack-warning": self.other}
        return {name: count for name, count in found.items() if count}


def _run_attack(adversary: Any, attack: str, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One of AutoAttack's attacks on a batch, seeded as AutoAttack seeds it."""
    seed = adversary.get_seed()
    if attack in ("apgd-ce", "apgd-dlr"):
        adversary.apgd.loss = attack.removeprefix("apgd-")
        adversary.apgd.seed = seed
        return adversary.apgd.perturb(images, labels)
    if attack == "apgd-t":
        adversary.apgd_targeted.seed = seed
        return adversary.apgd_targeted.perturb(images, labels)
    if attack in ("fab", "fab-t"):
        adversary.fab.targeted = attack == "fab-t"
        if attack == "fab-t":
            adversary.fab.n_restarts = 1
        adversary.fab.seed = seed
        return adversary.fab.perturb(images, labels)
    adversary.square.seed = seed
    return adversary.square.perturb(images, labels)


@register_threat("autoattack-linf", tag="seen", column="linf")
class LinfAutoAttack(AutoAttackThreat):
    """AutoAttack ℓ∞ (standard: APGD-CE, APGD-T, FAB-T, Square)."""

    norm = "linf"


@register_threat("autoattack-l2", tag="seen", column="l2")
class L2AutoAttack(AutoAttackThreat):
    """AutoAttack ℓ2 (standard: APGD-CE, APGD-T, FAB-T, Square)."""

    norm = "l2"


@register_threat("autoattack-l1", tag="seen", column="l1")
class L1AutoAttack(AutoAttackThreat):
    """AutoAttack ℓ1 (standard: APGD-CE and APGD-T with the ε-schedule, 5 restarts / 5 targets, FAB-T, Square)."""

    norm = "l1"


@register_threat("apgd-linf", tag="seen", column="linf")
class LinfAPGD(AutoAttackThreat):
    """APGD-CE then APGD-T (DLR, 9 targets) under ℓ∞, with AutoAttack-standard settings."""

    norm = "linf"
    default_attacks = ("apgd-ce", "apgd-t")


@register_threat("apgd-l2", tag="seen", column="l2")
class L2APGD(AutoAttackThreat):
    """APGD-CE then APGD-T (DLR, 9 targets) under ℓ2, with AutoAttack-standard settings."""

    norm = "l2"
    default_attacks = ("apgd-ce", "apgd-t")


@register_threat("apgd-l1", tag="seen", column="l1")
class L1APGD(AutoAttackThreat):
    """APGD-CE then APGD-T under ℓ1, with AutoAttack-standard settings (ε-schedule, 5 restarts, 5 targets)."""

    norm = "l1"
    default_attacks = ("apgd-ce", "apgd-t")
