"""The shared machinery of the procedural-noise threats of Kang et al. 2019, "Testing robustness against unforeseen
adversaries" (reference code: ``advex-uar``), as used by Laidlaw et al. 2021 and the RoME paper (Sec. A1): the
threats themselves are ``fog.py``, ``snow.py`` and ``gabor.py``.

Each threat renders a perturbed image from a small set of bounded parameters and optimises the parameters with
signed-gradient ascent on the cross-entropy loss, projecting them back onto their feasible set after every step
(:class:`UARNoise`). ε does not bound the parameters: as in advex-uar, the parameters live in fixed boxes and ε scales
the rendered noise; its units are advex-uar's (its attacks work on 0–255 pixels), given in each threat's module.

Step size: advex-uar's rule ``ε/√steps`` (``get_step_size``; perceptual-advex's ``UARAttack`` uses the same
default), applied to the parameters directly. For the paper settings (100 steps) this is 1.2 for fog and 6 for gabor,
so each step moves every parameter to a face of its box, and 0.05 for snow.

Evaluation protocol (house rule, not in advex-uar): per example the first iterate the model misclassifies is kept,
else the last iterate, so with a fixed seed and step size more steps never make an attack weaker.

What ``budget()`` verifies is computed from the clean and perturbed images (advex-uar bounds parameters, not pixels);
each threat's module says how. The deviations from advex-uar, all to make the threats batch-independent,
deterministic and well defined, are listed there too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Threat, per_example

Params = list[torch.Tensor]


def reference_step_size(eps: float, steps: int) -> float:
    """advex-uar's default step size, ε/√steps (in the parameters' units)."""
    return eps / math.sqrt(steps)


class UARNoise(Threat):
    """Signed-gradient ascent on the parameters of a rendered perturbation, keeping the first misclassified iterate.

    Subclasses say how to draw the random context and the initial parameters (``start``), how to render an image
    from the parameters (``render``) and how to project the parameters onto their feasible set (``project``).
    """

    def __init__(self, eps: float, steps: int = 100, step_size: float | None = None) -> None:
        if eps < 0 or steps < 1:
            raise ConfigError(f"{self.name}: eps must be >= 0 and steps >= 1 (got eps={eps}, steps={steps})")
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else reference_step_size(self.eps, self.steps)

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size}

    def start(self, images: torch.Tensor) -> tuple[Params, Any]:
        """The initial parameters and a random context fixed for the whole call (e.g. kernels)."""
        raise NotImplementedError

    def render(self, images: torch.Tensor, params: Params, context: Any) -> torch.Tensor:
        """The perturbed images in [0,1] for the given parameters."""
        raise NotImplementedError

    def project(self, params: Params, context: Any) -> Params:
        """The parameters moved back onto their feasible set after a step."""
        raise NotImplementedError

    def record(self, params: Params, context: Any) -> None:
        """Called with the parameters behind the returned images (for budgets that re-render); no-op by default."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        params, context = self.start(images)
        found = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        kept_params = [p.detach().clone() for p in params]
        kept = images.clone()
        for _ in range(self.steps):
            params = [p.detach().requires_grad_(True) for p in params]
            perturbed = self.render(images, params, context)
            logits = model(perturbed)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                found, kept, kept_params = self._keep_first(logits, labels, perturbed, params, found, kept,
                                                            kept_params)
                stepped = [p if g is None else p + self.step_size * g.sign()
                           for p, g in zip(params, grads, strict=True)]
                params = self.project(stepped, context)
        with torch.no_grad():
            params = [p.detach() for p in params]
            final = self.render(images, params, context)
            found, kept, kept_params = self._keep_first(model(final), labels, final, params, found, kept,
                                                        kept_params)
            result = torch.where(per_example(found, kept), kept, final)
            chosen = [torch.where(per_example(found, p), k, p) for p, k in zip(params, kept_params, strict=True)]
            self.record(chosen, context)
            return result.clamp(0, 1)

    @staticmethod
    def _keep_first(logits: torch.Tensor, labels: torch.Tensor, current: torch.Tensor, params: Params,
                    found: torch.Tensor, kept: torch.Tensor,
                    kept_params: Params) -> tuple[torch.Tensor, torch.Tensor, Params]:
        """Store, for examples misclassified for the first time, this iterate and its parameters."""
        newly = (logits.argmax(dim=1) != labels) & ~found
        kept = torch.where(per_example(newly, kept), current.detach(), kept)
        kept_params = [torch.where(per_example(newly, k), p.detach(), k)
                       for p, k in zip(params, kept_params, strict=True)]
        return found | newly, kept, kept_params
