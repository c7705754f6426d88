"""Threat specifications: what a leaderboard column measured (attack, norm, ε, steps, restarts), in words.

A measured column's specification comes from the stored parameters of its threats (the ``threats`` table: the same
parameters whose hash is the threat key); a reported row's from its reference file (``attack``, ``protocol`` and the
``threat_model``'s ε). Every leaderboard format states them (``comparability.py`` decides which rows are ranked
together).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

NORM_TITLES = {"l0": "ℓ0", "l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
_NORM_SUFFIX = re.compile(r"-(l0|l1|l2|linf)$")
ATTACK_TITLES = {"pgd": "PGD", "apgd": "APGD-CE+T", "autoattack": "AutoAttack", "fgsm": "FGSM", "gma": "GMA",
                 "gma-union": "GMA∪PGD", "clean": "clean"}


def format_eps(eps: float) -> str:
    """ε as people write it: ``8/255`` when it is a whole number of 255ths below 1, else the shortest decimal."""
    twofiftyfifths = eps * 255
    if 0 < eps < 1 and round(twofiftyfifths) and math.isclose(twofiftyfifths, round(twofiftyfifths), abs_tol=1e-6):
        return f"{round(twofiftyfifths)}/255"
    return f"{eps:g}"


def parse_eps(text: str | float | int) -> float:
    """ε from a number or a text like ``8/255``, ``0.25`` or ``12``.

    Parameters
    ----------
    text : str or float or int
        The budget, as a number or as ``A/B`` or a decimal.

    Returns
    -------
    float
        The budget.

    Raises
    ------
    ValueError
        When ``text`` is neither a number nor a fraction ``A/B``.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    numerator, slash, denominator = str(text).partition("/")
    value = float(numerator) / float(denominator) if slash else float(numerator)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


@dataclass(frozen=True)
class ThreatSpec:
    """What one column measured: the attack, its norm and budget, its iterations and restarts.

    ``reported`` marks a specification stated by a paper rather than read from stored threat parameters.
    """

    attack: str
    norm: str | None = None
    eps: float | None = None
    steps: int | None = None
    restarts: int | None = None
    reported: bool = False

    def text(self) -> str:
        """e.g. ``PGD ℓ∞ ε=8/255, 50 steps, 1 restart`` or ``AutoAttack-standard ℓ1 ε=12 (reported)``."""
        parts = [self.attack]
        if self.norm is not None:
            parts.append(NORM_TITLES.get(self.norm, self.norm))
        if self.eps is not None:
            parts.append(f"ε={format_eps(self.eps)}")
        text = " ".join(parts)
        if self.steps is not None:
            text += f", {self.steps} steps"
        if self.restarts is not None:
            text += f", {self.restarts} restart{'s' if self.restarts != 1 else ''}"
        return text + (" (reported)" if self.reported else "")

    def budget(self) -> tuple[str, str | None, float | None]:
        """(attack, norm, ε rounded to 9 digits): what a reported row and a measured column must share."""
        return self.attack, self.norm, None if self.eps is None else round(self.eps, 9)


def stored_spec(name: str, params: dict[str, Any]) -> ThreatSpec:
    """The specification of one stored threat from its registry name and parameters."""
    match = _NORM_SUFFIX.search(name)
    norm = match.group(1) if match else None
    family = name[:match.start()] if match else name
    attack = ATTACK_TITLES.get(family, family)
    if family == "autoattack":
        attack = f"AutoAttack-{params.get('version', 'standard')}"
    steps = params.get("steps", params.get("n_iter"))
    restarts = 1 if family in ("pgd", "gma", "gma-union") else params.get("restarts")
    eps = params.get("eps")
    return ThreatSpec(attack, norm, float(eps) if isinstance(eps, int | float) else None,
                      int(steps) if isinstance(steps, int) else None, restarts)


def pooled_spec(specs: list[ThreatSpec]) -> ThreatSpec:
    """One column over several threats: their shared specification, else a count of the pooled threats."""
    if len(set(specs)) == 1:
        return specs[0]
    return ThreatSpec(f"mean over {len(specs)} threats")


def reference_spec(column: str, attack: str, eps: dict[str, Any]) -> ThreatSpec:
    """A reported column's specification: the file's attack, at its ε for this column (when it gives one)."""
    budget = eps.get(column)
    return ThreatSpec(attack, column if column in NORM_TITLES else None,
                      parse_eps(budget) if budget is not None else None, reported=True)
