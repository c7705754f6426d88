"""Attack health of a suite run (issue 26 §5): signs of gradient masking, computed per model on a few examples.

AutoAttack warns when an attack looks broken; the ``adaptive`` suite does the same, per model. These flags are
counts of examples, stored under the clean threat (they describe the model) and shown in the leaderboard's Flags
column with the runner's own (``evaluation/validity.py``):

* ``stochastic-predictions`` — examples whose predicted class is not the same in every one of the run's evaluation
  draws (at least two): the clean pass's ``randomized`` counts any change of the logits, this one changed decisions;
* ``router-zero-gradient`` — clean-correct examples whose input gradient of the router's loss (GMA's misrouting
  term toward each token's least-likely expert) is zero or vanishing: a gradient attack on the gates cannot move
  them (the cross-entropy's counterpart is the clean pass's ``zero-gradient``);
* ``eps-sweep-non-monotone`` — a cheap attack (ℓ∞ PGD, :data:`SWEEP_STEPS` steps from the clean image, no random
  start, so only the gradient moves it) at ε × :data:`SWEEP_SCALES` on the first :data:`HEALTH_EXAMPLES` examples:
  the largest number of extra robust examples a larger ε has;
* ``eps-sweep-flat`` — the same sweep left robust accuracy unchanged from ε/2 to 2ε with some examples still
  robust: the attack does not feel the budget (a masked gradient, a quantised input), so ε is not what limits it.

The other health signs are the runner's and the threats' flags: ``zero-gradient`` and ``randomized`` (stochastic
predictions) from the clean pass, ``black-box-success`` (Square beat every white-box attack of AutoAttack on some
example) from the AutoAttack threats, ``eps-non-monotone`` from stored sweeps.
"""

from __future__ import annotations

import torch
from torch import nn

from rome_bench.models.autocast import attack_model
from rome_bench.models.gates import has_gates
from rome_bench.threats.gma import misrouting_loss, model_gates
from rome_bench.threats.pgd import LinfPGD

HEALTH_EXAMPLES = 100
SWEEP_SCALES = (0.5, 1.0, 2.0)
SWEEP_STEPS = 10
VANISHING_GRADIENT = 1e-12
HEALTH_FLAGS = ("stochastic-predictions", "router-zero-gradient", "eps-sweep-non-monotone", "eps-sweep-flat")


def router_zero_gradients(model: nn.Module, images: torch.Tensor) -> int:
    """Examples whose input gradient of the router's loss (misrouting toward the least-likely expert) vanishes;
    0 for a model without gates."""
    if not has_gates(model) or len(images) == 0:
        return 0
    inputs = images.clone().requires_grad_(True)
    with torch.enable_grad():
        model(inputs)
        gates = model_gates(model)
        targets = [gate.detach().argmin(dim=-1) for gate in gates]
        loss = misrouting_loss(gates, targets).sum()
        (grad,) = torch.autograd.grad(loss, inputs, allow_unused=True)
    if grad is None:
        return len(images)
    return int((grad.flatten(1).abs().sum(dim=1) < VANISHING_GRADIENT).sum())


def prediction_disagreement(model: nn.Module, images: torch.Tensor, draws: int) -> int:
    """Examples whose predicted class differs between ``draws`` (at least two) forward passes."""
    with torch.no_grad():
        predictions = torch.stack([model(images).argmax(1) for _ in range(max(draws, 2))])
    return int((predictions != predictions[0]).any(dim=0).sum())


def robust_under_sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                       seed: int = 0) -> list[torch.Tensor]:
    """Per ε of the sweep: which examples stay correct under ℓ∞ PGD (clean-incorrect ones count as broken)."""
    with torch.no_grad():
        clean = model(images).argmax(1) == labels
    robust = []
    for scale in SWEEP_SCALES:
        attack = LinfPGD(eps * scale, SWEEP_STEPS, random_start=False)
        torch.manual_seed(seed)
        perturbed = attack(attack_model(model), images, labels).detach()
        with torch.no_grad():
            robust.append((clean & (model(perturbed).argmax(1) == labels)).cpu())
    return robust


def sweep_flags(robust: list[torch.Tensor]) -> dict[str, int]:
    """``eps-sweep-non-monotone`` (largest rise in robust count with ε) and ``eps-sweep-flat`` from a sweep."""
    counts = [int(r.sum()) for r in robust]
    rise = max((later - earlier for i, earlier in enumerate(counts) for later in counts[i + 1:]), default=0)
    flags = {"eps-sweep-non-monotone": max(rise, 0)}
    flags["eps-sweep-flat"] = counts[-1] if counts[0] == counts[-1] and counts[-1] > 0 else 0
    return flags


def attack_health(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, linf_eps: float,
                  draws: int = 2) -> dict[str, int]:
    """Every health flag of :data:`HEALTH_FLAGS` on these examples (0 where it does not fire)."""
    with torch.no_grad():
        correct = model(images).argmax(1) == labels
    flags = {"stochastic-predictions": prediction_disagreement(model, images, draws),
             "router-zero-gradient": router_zero_gradients(model, images[correct])}
    flags.update(sweep_flags(robust_under_sweep(model, images, labels, linf_eps)))
    return flags

