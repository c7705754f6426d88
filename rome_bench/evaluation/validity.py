"""Validity checks on every evaluation, in the spirit of AutoAttack's flags (Croce & Hein 2020, flags_doc).

Flags are counts of examples (``autoattack-warning``: of log warnings), stored per (model, threat, dataset) and
shown in the leaderboard's Flags column:

* per batch, during the clean pass (stored under the 'clean' threat, so they describe the model):
  ``randomized`` — two forward passes of the same images differ, so a deterministic attack is the wrong tool
  (use AutoAttack's ``rand`` version); ``zero-gradient`` — clean-correct examples whose input gradient of the
  cross-entropy is zero or vanishing (< 1e-12 in ℓ1), so gradient attacks cannot move them; ``batch-dependent`` —
  examples whose logits change (relative ℓ2 change > 1e-4, as for ``randomized``) when classified alone, or in
  the batch shuffled, instead of in the evaluation batch (capacity-limited routing, batch statistics or routing
  noise left on at evaluation make one example's prediction depend on the others: :func:`batch_dependence`);
* raised by a threat itself (``Threat.call_flags``): ``black-box-success`` — Square succeeded where every
  white-box attack of AutoAttack failed; ``ce-only-no-gates`` — examples GMA attacked with its CE term alone
  because the model has no gates (so it is ℓ∞ PGD there); pyautoattack's own zero-gradient warning
  (``zero-gradient``) and any other warning it logs (``autoattack-warning``);
* computed from stored results (:func:`refresh_computed_flags`): ``eps-non-monotone`` — accuracy rose with ε
  (same threat, its other parameters equal, e.g. in a sweep); ``steps-non-monotone`` — accuracy rose with more
  steps (same threat, same ε); ``weaker-than-other`` — examples this threat left robust but another ℓp threat of
  the same norm broke with no larger ε, whatever their leaderboard columns (so GMA, an ℓ∞ attack with its own
  column, is compared with ℓ∞ PGD and AutoAttack).

* computed after a suite with ``health`` (the ``adaptive`` suite) on its first 100 examples, stored under the 'clean'
  threat: the attack-health flags of ``evaluation/health.py`` (``stochastic-predictions``, ``router-zero-gradient``,
  ``eps-sweep-non-monotone``, ``eps-sweep-flat``).

The runner also verifies budgets, range and NaNs on every batch; those are errors, not flags.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.evaluation.store import ResultStore
from rome_bench.threats.base import LP_ORDERS, THREATS

VANISHING_GRADIENT = 1e-12
RANDOMNESS_TOLERANCE = 1e-4


def batch_model_flags(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      logits: torch.Tensor, correct: torch.Tensor) -> dict[str, int]:
    """Flags that describe the model on one batch: randomness of its outputs, zero input gradients."""
    flags: dict[str, int] = {}
    with torch.no_grad():
        again = model(images)
    scale = logits.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-10)
    differs = ((again - logits) / scale).norm(dim=1) > RANDOMNESS_TOLERANCE
    if differs.any():
        flags["randomized"] = int(differs.sum())
    if dependent := int(batch_dependence(model, images, logits).sum()):
        flags["batch-dependent"] = dependent
    if correct.any():
        chosen = correct.nonzero().squeeze(1).to(images.device)
        inputs = images[chosen].clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(inputs), labels[chosen], reduction="sum")
            (grad,) = torch.autograd.grad(loss, inputs)
        vanishing = grad.flatten(1).abs().sum(dim=1) < VANISHING_GRADIENT
        if vanishing.any():
            flags["zero-gradient"] = int(vanishing.sum())
    return flags


def _changed(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per row: whether ``logits`` differ from ``reference`` by more than the tolerance, relative to its norm."""
    scale = reference.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-10)
    return ((logits - reference) / scale).norm(dim=1) > RANDOMNESS_TOLERANCE


def batch_dependence(model: nn.Module, images: torch.Tensor, logits: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per example: whether its logits in the batch (``logits``) differ from its logits when classified alone or
    in the same batch in a shuffled order (a fixed permutation unless ``generator`` is given)."""
    with torch.no_grad():
        alone = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
        order = torch.randperm(len(images), generator=generator or torch.Generator().manual_seed(0)).to(images.device)
        shuffled = torch.empty_like(logits)
        shuffled[order] = model(images[order])
    return (_changed(alone, logits) | _changed(shuffled, logits)).cpu()


def refresh_computed_flags(store: ResultStore, model_hash: str, dataset: str) -> None:
    """Recompute the flags that follow from stored results (monotonicity in ε and steps, weaker-than-other)."""
    threats = store.threats_of_model(model_hash, dataset)
    results = {key: store.correctness(model_hash, key, dataset) for key, _, _, _ in threats}
    by_key = {key: (name, column, params) for key, name, column, params in threats}
    for key, (name, _, params) in by_key.items():
        if name == "clean":
            continue
        store.set_flag(model_hash, key, dataset, "eps-non-monotone",
                       _rise(results, key, _neighbours(by_key, key, axis="eps")))
        store.set_flag(model_hash, key, dataset, "steps-non-monotone",
                       _rise(results, key, _neighbours(by_key, key, axis="steps")))
        budget = lp_budget(name, params)
        others = [k for k, (n, _, p) in by_key.items() if k != key and n != "clean" and budget is not None
                  and (other := lp_budget(n, p)) is not None and other[0] == budget[0]
                  and other[1] <= budget[1] * (1 + 1e-9)]
        store.set_flag(model_hash, key, dataset, "weaker-than-other", _missed(results, key, others))


def lp_budget(name: str, params: dict) -> tuple[str, float] | None:
    """(norm, ε) of a stored ℓp threat (a registered class with a ``norm`` and an ``eps``); None for the others."""
    if name not in THREATS or "eps" not in params:
        return None
    norm = getattr(THREATS.get(name), "norm", None)
    return (norm, float(params["eps"])) if norm in LP_ORDERS else None


_STEP_KEYS = ("steps", "n_iter")


def _neighbours(by_key: dict[str, tuple[str, str, dict]], key: str, axis: str) -> list[str]:
    """Keys of the same threat that differ from ``key`` only along ``axis`` and are stronger (larger ε/steps)."""
    name, _, params = by_key[key]
    varying = ("eps", "step_size") if axis == "eps" else (*_STEP_KEYS, "step_size")
    fixed = {k: v for k, v in params.items() if k not in varying}
    stronger = []
    for other, (other_name, _, other_params) in by_key.items():
        if other == key or other_name != name:
            continue
        if {k: v for k, v in other_params.items() if k not in varying} != fixed:
            continue
        if axis == "eps" and other_params.get("eps", 0) > params.get("eps", 0):
            stronger.append(other)
        if axis == "steps" and any(other_params.get(k, 0) > params.get(k, 0) for k in _STEP_KEYS if k in params):
            stronger.append(other)
    return stronger


def _rise(results: dict[str, dict[int, bool]], key: str, stronger: list[str]) -> int:
    """Largest number of extra robust examples that a stronger version of the threat has, on common examples."""
    worst = 0
    for other in stronger:
        common = results[key].keys() & results[other].keys()
        rise = sum(results[other][i] for i in common) - sum(results[key][i] for i in common)
        worst = max(worst, rise)
    return worst


def _missed(results: dict[str, dict[int, bool]], key: str, others: list[str]) -> int:
    """Examples robust under ``key`` but broken by some other threat (on examples both attacked)."""
    robust_here = {i for i, correct in results[key].items() if correct}
    broken_elsewhere = {i for other in others for i, correct in results[other].items() if not correct
                        and i in results[key]}
    return len(robust_here & broken_elsewhere)
