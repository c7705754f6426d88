"""LPA, the Lagrangian perceptual attack (Laidlaw, Singla & Feizi, ICLR 2021; perceptual-advex's
``LagrangePerceptualAttack``), on the machinery of ``perceptual.py``.

``binary_steps`` stages of ``steps`` iterations each: descend −margin + λ·relu(d − bound) along the normalised
gradient ĝ with the LPIPS-normalised step η_t/(‖φ(x) − φ(x − h·ĝ)‖/h + 1e-8), η_t = bound·0.1^(t/steps), h = 0.1;
λ starts at 0.01 and is multiplied by 10 after a stage for the examples still outside the ball; examples stop once
misclassified inside the ball. The last iterate is finally projected onto the LPIPS ball.

Deviation from perceptual-advex besides the shared ones: LPA also projects the not-yet-successful examples at the end
of every binary-search stage and keeps a misclassified projection (the reference projects only after the last stage,
which is our last stage-end projection, and returns the iterate one step after the one it checked), so with a fixed
seed more binary-search stages never make it weaker.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import per_example, register_threat
from rome_bench.threats.lpips_distance import LPIPS
from rome_bench.threats.perceptual import FirstSuccess, PerceptualAttack, flat_norms, margin_loss


class LagrangePerceptual(PerceptualAttack):
    """Lagrangian perceptual attack (Laidlaw et al. 2021): margin loss + growing LPIPS penalty, then projection."""

    def __init__(self, bound: float = 0.25, steps: int = 20, lpips: str | None = None, step_size: float | None = None,
                 decay_step_size: bool = True, binary_steps: int = 5, h: float = 0.1, kappa: float = 1.0,
                 initial_penalty: float = 0.01, penalty_factor: float = 10.0, projection: str = "newtons",
                 projection_overshoot: float = 0.1, projection_steps: int = 10, bisection_steps: int = 10) -> None:
        if self.network is None:
            raise ConfigError("lpa is registered with its LPIPS network in its name: lpa-alexnet | lpa-self")
        super().__init__(bound, steps, lpips, step_size, decay_step_size, kappa, projection, projection_overshoot,
                         projection_steps, bisection_steps)
        if binary_steps < 1 or h <= 0 or initial_penalty < 0 or penalty_factor < 1:
            raise ConfigError("lpa: need binary_steps >= 1, h > 0, initial_penalty >= 0 and penalty_factor >= 1")
        self.binary_steps = int(binary_steps)
        self.h = float(h)
        self.initial_penalty = float(initial_penalty)
        self.penalty_factor = float(penalty_factor)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "binary_steps": self.binary_steps, "h": self.h,
                "initial_penalty": self.initial_penalty, "penalty_factor": self.penalty_factor}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, model = images.detach(), self._attacked(model)
        distance, clean_embedding, current = self._start(model, images)
        tracker = FirstSuccess(images, self.bound)
        penalty = torch.full((len(images),), self.initial_penalty, dtype=images.dtype, device=images.device)
        projected = images.clone()
        failed = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.binary_steps):
            last_lpips = torch.zeros_like(penalty)
            for iteration in range(self.steps):
                rows = tracker.remaining()
                if len(rows) == 0:
                    break
                current[rows], last_lpips[rows] = self._descend(model, distance, current[rows], labels[rows],
                                                                clean_embedding[rows], penalty[rows], tracker, rows,
                                                                self._step_at(iteration))
            penalty = torch.where(last_lpips >= self.bound, penalty * self.penalty_factor, penalty)
            rows = tracker.remaining()
            if len(rows) == 0:
                break
            projected[rows], failed[rows] = self.project(distance, images[rows], clean_embedding[rows],
                                                         current[rows])
            with torch.no_grad():
                embedding, logits = distance.embed_logits(model, projected[rows])
            lpips = torch.linalg.vector_norm(embedding - clean_embedding[rows], dim=1)
            tracker.offer(rows, projected[rows], logits, labels[rows], lpips)
        return self._finish(distance, images, clean_embedding, tracker, projected, failed)

    def _descend(self, model: nn.Module, distance: LPIPS, images: torch.Tensor, labels: torch.Tensor,
                 clean_embedding: torch.Tensor, penalty: torch.Tensor, tracker: FirstSuccess, rows: torch.Tensor,
                 step: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Offer the current iterate, then one LPIPS-normalised step on −margin + λ·relu(d − bound)."""
        images = images.detach().requires_grad_(True)
        embedding, logits = distance.embed_logits(model, images)
        lpips = torch.linalg.vector_norm(embedding - clean_embedding, dim=1)
        loss = -margin_loss(logits, labels, self.kappa) + penalty * F.relu(lpips - self.bound)
        (grad,) = torch.autograd.grad(loss.sum(), images)
        with torch.no_grad():
            tracker.offer(rows, images, logits, labels, lpips)
            unit = grad / per_example(flat_norms(grad) + 1e-8, grad)
            rate = torch.linalg.vector_norm(embedding - distance.embed(images - self.h * unit), dim=1) / self.h
            stepped = (images - per_example(step / (rate + 1e-8), unit) * unit).clamp(0, 1)
        return stepped.detach(), lpips.detach()


@register_threat("lpa-alexnet", tag="unseen", column="lpa")
class AlexNetLagrangePerceptual(LagrangePerceptual):
    """LPA under AlexNet-LPIPS (the paper's; needs torchvision's AlexNet file in torch.hub's cache)."""

    network = "alexnet"


@register_threat("lpa-self", tag="unseen", column="lpa-self")
class SelfLagrangePerceptual(LagrangePerceptual):
    """LPA under the evaluated model's own LPIPS (its Transformer blocks' features; not the paper's)."""

    network = "self"
