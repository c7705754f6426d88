"""ε overrides and RobustBench-style threat models: ``rome-bench eval --eps linf=4/255``, ``benchmark(eps=…)``.

An override replaces the run config's ``threats.eps`` for the norms it names; the suites build their threats from
it, so the new ε is in each threat's parameters and store key. Results at the default budgets keep their keys, and
leaderboards group rows by those keys (``comparability.py``): other budgets are never ranked with them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rome_bench.errors import ConfigError

if TYPE_CHECKING:
    from rome_bench.evaluation.runner import LoadedRun
    from rome_bench.evaluation.suites import Suite

THREAT_MODELS = {"linf": "linf", "l2": "l2", "l1": "l1"}  # RobustBench's Linf / L2 and rome-bench's names
NORMS = ("l1", "l2", "linf")


def parse_eps_overrides(texts: Sequence[str]) -> dict[str, float]:
    """``--eps`` values, ``NORM=VALUE`` each (``linf=4/255``, ``l2=0.25``), as norm -> ε; one clear error.

    Parameters
    ----------
    texts : sequence of str
        The flag's values.

    Returns
    -------
    dict of str to float
        ε per norm named.

    Raises
    ------
    ConfigError
        When a value is not ``NORM=VALUE`` with a known norm and a positive finite ε, or names a norm twice.
    """
    from rome_bench.evaluation.specs import parse_eps

    overrides: dict[str, float] = {}
    for text in texts:
        norm, equals, value = text.partition("=")
        norm = norm.strip().lower()
        try:
            eps = parse_eps(value.strip()) if equals else math.nan
        except ValueError:
            eps = math.nan
        if norm not in NORMS or not (math.isfinite(eps) and eps > 0):
            raise ConfigError(f"--eps '{text}': give NORM=VALUE with NORM one of {', '.join(NORMS)} and VALUE > 0, "
                              f"e.g. --eps linf=4/255 --eps l2=0.25")
        if norm in overrides:
            raise ConfigError(f"--eps names {norm} twice; give each norm once")
        overrides[norm] = eps
    return overrides


def with_eps(loaded: LoadedRun, eps: Mapping[str, float]) -> LoadedRun:
    """The same model evaluated at other budgets: its config's ``threats.eps`` with ``eps`` (norm -> ε) in place.

    The threats built from it carry these ε in their parameters, so in their store keys too: the default
    protocol's keys are unchanged, and results at other budgets are stored, and ranked, apart.
    """
    if not eps:
        return loaded
    for norm, value in eps.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if norm not in NORMS or not (number and math.isfinite(value) and value > 0):
            raise ConfigError(f"eps for '{norm}' must be a number > 0 for a norm among {', '.join(NORMS)}; "
                              f"got {value!r}")
    threats = dataclasses.replace(loaded.config.threats, eps={**loaded.config.threats.eps, **eps})
    return dataclasses.replace(loaded, config=dataclasses.replace(loaded.config, threats=threats))


def budgets(threat_model: str | None, eps: float | Mapping[str, float] | None) -> tuple[str | None, dict[str, float]]:
    """(norm of ``threat_model`` or None, ε per norm) from benchmark's RobustBench-style arguments."""
    norm = None
    if threat_model is not None:
        norm = THREAT_MODELS.get(threat_model.lower())
        if norm is None:
            raise ConfigError(f"threat_model '{threat_model}' is not one of Linf, L2, L1 (or linf, l2, l1); for "
                              f"corruptions and other unseen threats use suite='unseen'")
    if eps is None:
        return norm, {}
    if isinstance(eps, Mapping):
        return norm, dict(eps)
    if norm is None:
        raise ConfigError("eps as one number needs threat_model (e.g. threat_model='Linf', eps=8/255); or give "
                          "eps per norm, e.g. eps={'linf': 8/255, 'l2': 0.5}")
    return norm, {norm: float(eps)}


def norm_threats(loaded: LoadedRun, suite: Suite, norm: str | None) -> list[str]:
    """The names of the suite's threats of one norm's column (none asked: none); an error when it has none."""
    if norm is None:
        return []
    names = [threat.name for threat in suite.build(loaded.config.threats) if threat.column == norm]
    if not names:
        raise ConfigError(f"suite '{suite.name}' has no {norm} threat; choose a seen suite (seen, seen-pgd, ...) "
                          f"or leave threat_model out")
    return names
