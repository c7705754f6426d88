"""Multi steepest descent (MSD): one perturbation against the union of the ℓ1, ℓ2 and ℓ∞ balls.

Maini, Wong & Kolter, "Adversarial Robustness Against the Union of Multiple Perturbation Models", ICML 2020
(Algorithm 1). One δ per input, δ⁽⁰⁾ = 0. Every iteration takes one gradient g = ∇_δ CE(f(x + δ⁽ᵗ⁾), y) and builds
one candidate per norm, each projected onto its own ball ∩ the [0,1] box:

    δ_∞ = Π_{B∞(ε∞)}(δ⁽ᵗ⁾ + α∞·sign(g))
    δ_2 = Π_{B2(ε2)}(δ⁽ᵗ⁾ + α2·g/‖g‖₂)
    δ_1 = Π_{B1(ε1)}(δ⁽ᵗ⁾ + α1·e_k(g))        e_k: sign(g) on the k largest |g_i| (outward-blocked ones skipped),
                                                 scaled to unit ℓ1 norm, so one ℓ1 step has ℓ1 length α1
    δ⁽ᵗ⁺¹⁾ = the candidate with the highest CE, chosen per example.

The projections are the exact ones of :mod:`rome_bench.threats.pgd` (ℓ∞: clip; ℓ2/ℓ1: ball ∩ box by sorted
breakpoints). The result is in at least one ball (the one whose step was kept last), which :class:`UnionBudget`
verifies: min_p ‖δ‖_p/ε_p ≤ 1.

Settings, from the authors' CIFAR-10 code (locuslab/robust_union, ``CIFAR10/cifar_funcs.py``, ``msd_v1``/``msd_v0``,
and the paper's Sec. 5 / appendix): ε = (ε1, ε2, ε∞) = (12, 0.5, 0.03), α∞ = 0.003, α2 = 0.05, 50 iterations,
δ⁽⁰⁾ = 0; for ℓ1, k is drawn uniformly from {5, …, 20} at every iteration and the per-coordinate step is scaled
by 20/k, so each ℓ1 step has ℓ1 length 20·0.05 = 1.0 whatever k is: α1 = 1.0 here is that length. k is drawn
from the global torch RNG (saved in checkpoints). As in their code, the attack returns, per example, the iterate
with the highest loss seen over all iterations (the kept candidate of that iteration), and
:attr:`MSD.kept_norm_ids` records which norm's step produced it (0 = ℓ1, 1 = ℓ2, 2 = ℓ∞): the routing labels of
``rome+msd``. Ties between candidates go to the lower id.

Deviations, plainly: ε comes from the caller (the ``msd`` recipe passes the preset's ``threats.eps``, so MSD
attacks the same balls as the other recipes; the default ε∞ = 0.03 is theirs); their ℓ1 direction also skips
coordinates within α of the box boundary ("gap"), here only coordinates on the boundary whose gradient points
out of the box are skipped (the exact ℓ1-ball ∩ box projection clips the rest); losses are compared in float32,
not half precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import LP_ORDERS, Budget, BudgetCheck, Threat, register_threat
from rome_bench.threats.pgd import L1PGD, L2PGD, PGD, LinfPGD

MSD_NORMS: tuple[str, ...] = ("l1", "l2", "linf")  # threat ids 0, 1, 2 (the order of config.NORMS)


@dataclass(frozen=True)
class UnionBudget(Budget):
    """δ lies in at least one of the ℓp balls: min_p ‖δ‖_p/ε_p ≤ 1 (relative tolerance 1e-5)."""

    eps: tuple[tuple[str, float], ...]  # (norm, ε) pairs
    rel_tol: float = 1e-5

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        delta = (perturbed - clean).flatten(1).double()
        ratios = torch.stack([delta.norm(p=LP_ORDERS[norm], dim=1) / eps for norm, eps in self.eps])
        return BudgetCheck(ratios.min(dim=0).values, 1.0 + self.rel_tol, "min_p ‖δ‖_p/ε_p")


@dataclass(frozen=True)
class MSDIteration:
    """One MSD iteration: the three projected candidates, their per-example losses, the kept one."""

    candidates: torch.Tensor  # (3, B, ...) in MSD_NORMS order
    losses: torch.Tensor  # (3, B) cross-entropy of each candidate
    kept: torch.Tensor  # (B,) index of the kept candidate (argmax of losses)
    delta: torch.Tensor  # (B, ...) the kept candidates

    @property
    def kept_loss(self) -> torch.Tensor:
        return self.losses.gather(0, self.kept.unsqueeze(0)).squeeze(0)


def top_k_l1_direction(grad: torch.Tensor, images: torch.Tensor, delta: torch.Tensor, k: int) -> torch.Tensor:
    """sign(g) on the k largest |g_i| that can still move (ties included), scaled to unit ℓ1 norm per example."""
    current = images + delta
    blocked = ((current <= 0) & (grad < 0)) | ((current >= 1) & (grad > 0))
    magnitude = grad.abs().masked_fill(blocked, 0).flatten(1)
    threshold = magnitude.topk(min(k, magnitude.shape[1]), dim=1).values[:, -1:]
    chosen = (magnitude >= threshold) & (magnitude > 0)
    count = chosen.sum(dim=1, keepdim=True).clamp_min(1)
    return (grad.sign().flatten(1) * chosen / count).view_as(grad)


def in_box(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (images + delta).clamp(0, 1)


@register_threat("msd", tag="seen", column="msd")
class MSD(Threat):
    """Multi steepest descent over the ℓ1, ℓ2, ℓ∞ balls (Maini et al. 2020): per step, the best norm's step."""

    def __init__(self, eps_l1: float = 12.0, eps_l2: float = 0.5, eps_linf: float = 0.03, steps: int = 50,
                 alpha_l1: float = 1.0, alpha_l2: float = 0.05, alpha_linf: float = 0.003, k_min: int = 5,
                 k_max: int = 20) -> None:
        values = {"eps_l1": eps_l1, "eps_l2": eps_l2, "eps_linf": eps_linf, "alpha_l1": alpha_l1,
                  "alpha_l2": alpha_l2, "alpha_linf": alpha_linf}
        for name, value in values.items():
            if not value > 0:
                raise ConfigError(f"msd: {name} must be > 0, got {value}")
        if steps < 1:
            raise ConfigError(f"msd: steps must be >= 1, got {steps}")
        if not 1 <= k_min <= k_max:
            raise ConfigError(f"msd: need 1 <= k_min <= k_max for the ℓ1 step, got k_min={k_min}, k_max={k_max}")
        self.eps = {"l1": float(eps_l1), "l2": float(eps_l2), "linf": float(eps_linf)}
        self.alpha = {"l1": float(alpha_l1), "l2": float(alpha_l2), "linf": float(alpha_linf)}
        self.steps = int(steps)
        self.k_min, self.k_max = int(k_min), int(k_max)
        # used for their exact projections (and the ℓ2/ℓ∞ steepest-ascent directions) only
        self._balls: dict[str, PGD] = {"l1": L1PGD(eps_l1), "l2": L2PGD(eps_l2), "linf": LinfPGD(eps_linf)}
        self.kept_norm_ids: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"eps_l1": self.eps["l1"], "eps_l2": self.eps["l2"], "eps_linf": self.eps["linf"],
                "steps": self.steps, "alpha_l1": self.alpha["l1"], "alpha_l2": self.alpha["l2"],
                "alpha_linf": self.alpha["linf"], "k_min": self.k_min, "k_max": self.k_max}

    def budget(self) -> Budget:
        return UnionBudget(tuple(self.eps.items()))

    def draw_k(self) -> int:
        """k of this iteration's ℓ1 step, uniform on {k_min, …, k_max} from the global torch RNG."""
        return int(torch.randint(self.k_min, self.k_max + 1, ()))

    def candidate(self, norm: str, images: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor,
                  k: int) -> torch.Tensor:
        """δ + α_p·(steepest-ascent direction of ℓp), projected onto ℓp ball ∩ box."""
        ball = self._balls[norm]
        if norm == "l1":
            direction = top_k_l1_direction(grad, images, delta, k)
        else:
            direction = ball.ascent_direction(grad, images, delta)
        return ball.project(images, delta + self.alpha[norm] * direction)

    def iterate(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor,
                k: int | None = None) -> MSDIteration:
        """One MSD iteration from ``delta``: one gradient, three candidates, keep the highest loss per example."""
        delta = delta.detach().requires_grad_(True)
        loss = F.cross_entropy(model(in_box(images, delta)), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        k = self.draw_k() if k is None else k
        with torch.no_grad():
            delta = delta.detach()
            candidates = torch.stack([self.candidate(norm, images, delta, grad, k) for norm in MSD_NORMS])
            stacked = in_box(images.unsqueeze(0), candidates).flatten(0, 1)  # one batched forward of 3B
            losses = F.cross_entropy(model(stacked).float(), labels.repeat(len(MSD_NORMS)), reduction="none")
            losses = losses.view(len(MSD_NORMS), -1)
            kept = losses.argmax(dim=0)
            chosen = candidates[kept, torch.arange(len(images), device=images.device)]
        return MSDIteration(candidates, losses, kept, chosen)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        delta = torch.zeros_like(images)
        best = torch.zeros_like(images)
        best_loss = torch.full((len(images),), float("-inf"), device=images.device)
        best_norm = torch.zeros(len(images), dtype=torch.long, device=images.device)
        for _ in range(self.steps):
            step = self.iterate(model, images, labels, delta)
            delta = step.delta
            improved = step.kept_loss > best_loss
            best = torch.where(improved.view(-1, *[1] * (images.dim() - 1)), delta, best)
            best_loss = torch.where(improved, step.kept_loss, best_loss)
            best_norm = torch.where(improved, step.kept, best_norm)
        self.kept_norm_ids = best_norm
        return in_box(images, best)
