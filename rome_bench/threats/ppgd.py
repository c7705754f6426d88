"""PPGD, perceptual projected gradient descent (Laidlaw, Singla & Feizi, ICLR 2021; perceptual-advex's
``PerceptualPGDAttack``), on the machinery of ``perceptual.py``.

Per iteration t = 0..steps−1, from x₀ = x + N(0, 0.01²):
  g = ∇ margin; solve (JᵀJ) v = g with ``cg_iterations`` conjugate-gradient steps, J = Dφ(x_t), where J v is a
  forward finite difference (φ(x_t + h·v) − φ(x_t))/h (h = 1e-3) and Jᵀ(·) a vector-Jacobian product; step
  x_t + η·v/‖J v‖ (so the linearised LPIPS length is η = 2·bound/steps), clip to [0,1], then project onto the
  LPIPS ball.

Deviations from perceptual-advex besides the shared ones: the first success is kept where the reference returns the
last iterate, so more ``steps`` at a fixed ``step_size`` never make it weaker; the conjugate gradient stops per
example (zero gradient, residual ‖r‖² < 0.1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import per_example, register_threat
from rome_bench.threats.lpips_distance import LPIPS
from rome_bench.threats.perceptual import TINY, FirstSuccess, PerceptualAttack, flat_norms, margin_loss

CG_TOLERANCE = 0.1
FLAT_GRADIENT = 1e-4


class PerceptualPGD(PerceptualAttack):
    """Perceptual PGD (Laidlaw et al. 2021): LPIPS-steepest ascent steps by conjugate gradient, projected."""

    def __init__(self, bound: float = 0.25, steps: int = 20, lpips: str | None = None, step_size: float | None = None,
                 decay_step_size: bool = False, cg_iterations: int = 5, h: float = 1e-3, kappa: float = 1.0,
                 projection: str = "newtons", projection_overshoot: float = 0.1, projection_steps: int = 10,
                 bisection_steps: int = 10) -> None:
        if self.network is None:
            raise ConfigError("ppgd is registered with its LPIPS network in its name: ppgd-alexnet | ppgd-self")
        super().__init__(bound, steps, lpips, step_size, decay_step_size, kappa, projection, projection_overshoot,
                         projection_steps, bisection_steps)
        if cg_iterations < 1 or h <= 0:
            raise ConfigError(f"ppgd: need cg_iterations >= 1 and h > 0 (got {cg_iterations}, {h})")
        self.cg_iterations = int(cg_iterations)
        self.h = float(h)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "cg_iterations": self.cg_iterations, "h": self.h}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, model = images.detach(), self._attacked(model)
        distance, clean_embedding, current = self._start(model, images)
        tracker = FirstSuccess(images, self.bound)
        failed = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for iteration in range(self.steps):
            rows = tracker.remaining()
            if len(rows) == 0:
                break
            stepped, embedding, logits = self._ascent(model, distance, current[rows], labels[rows],
                                                      self._step_at(iteration))
            lpips = torch.linalg.vector_norm(embedding - clean_embedding[rows], dim=1)
            tracker.offer(rows, current[rows], logits, labels[rows], lpips)
            current[rows], failed[rows] = self.project(distance, images[rows], clean_embedding[rows], stepped)
        rows = tracker.remaining()
        if len(rows):
            with torch.no_grad():
                embedding, logits = distance.embed_logits(model, current[rows])
            lpips = torch.linalg.vector_norm(embedding - clean_embedding[rows], dim=1)
            tracker.offer(rows, current[rows], logits, labels[rows], lpips)
        return self._finish(distance, images, clean_embedding, tracker, current, failed)

    def _ascent(self, model: nn.Module, distance: LPIPS, images: torch.Tensor, labels: torch.Tensor,
                step: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One first-order step of LPIPS length ``step``; also φ and logits at the starting point."""
        images = images.detach().requires_grad_(True)
        embedding, logits = distance.embed_logits(model, images)
        loss = margin_loss(logits, labels, self.kappa)
        (grad,) = torch.autograd.grad(loss.sum(), images, retain_graph=True)
        direction = self._conjugate_gradient(distance, images, embedding, grad)
        with torch.no_grad():
            base = embedding.detach()
            length = torch.linalg.vector_norm((distance.embed(images + self.h * direction) - base) / self.h, dim=1)
            moves = (flat_norms(grad) >= FLAT_GRADIENT) & (length > 0)
            scale = torch.where(moves, step / length.clamp_min(TINY), torch.zeros_like(length))
            stepped = (images + per_example(scale, direction) * direction).clamp(0, 1)
        return stepped.detach(), base, logits.detach()

    def _conjugate_gradient(self, distance: LPIPS, images: torch.Tensor, embedding: torch.Tensor,
                            grad: torch.Tensor) -> torch.Tensor:
        """Approximately solve (JᵀJ) v = grad per example, J = Dφ(images), with finite-difference J·v."""
        base = embedding.detach()

        def gram(vector: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                jacobian_vector = (distance.embed(images.detach() + self.h * vector) - base) / self.h
            return torch.autograd.grad(embedding, images, grad_outputs=jacobian_vector, retain_graph=True)[0]

        solution = torch.zeros_like(grad)
        residual, direction = grad, grad
        running = torch.ones(len(grad), dtype=torch.bool, device=grad.device)
        for iteration in range(self.cg_iterations):
            squared = residual.flatten(1).square().sum(dim=1)
            if iteration > 0:
                running = running & (squared >= CG_TOLERANCE)
            if not running.any():
                break
            product = gram(direction)
            curvature = (direction * product).flatten(1).sum(dim=1)
            running = running & (curvature != 0)
            alpha = torch.where(running, squared / torch.where(running, curvature, torch.ones_like(curvature)),
                                torch.zeros_like(curvature))
            solution = solution + per_example(alpha, grad) * direction
            if iteration < self.cg_iterations - 1:
                new_residual = residual - per_example(alpha, grad) * product
                beta = new_residual.flatten(1).square().sum(dim=1) / squared.clamp_min(TINY)
                new_direction = new_residual + per_example(beta, grad) * direction
                keep = per_example(running, grad)
                residual = torch.where(keep, new_residual, residual)
                direction = torch.where(keep, new_direction, direction)
        return solution.detach()


@register_threat("ppgd-alexnet", tag="unseen", column="ppgd")
class AlexNetPerceptualPGD(PerceptualPGD):
    """PPGD under AlexNet-LPIPS (the paper's; needs torchvision's AlexNet file in torch.hub's cache)."""

    network = "alexnet"


@register_threat("ppgd-self", tag="unseen", column="ppgd-self")
class SelfPerceptualPGD(PerceptualPGD):
    """PPGD under the evaluated model's own LPIPS (its Transformer blocks' features; not the paper's)."""

    network = "self"
