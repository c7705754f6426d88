"""The shared machinery of the perceptual attacks PPGD (``ppgd.py``) and LPA (``lpa.py``) of Laidlaw, Singla & Feizi,
"Perceptual Adversarial Robustness" (ICLR 2021): :class:`PerceptualAttack`, the margin loss, the projection onto the
LPIPS ball and the first-success rule.

The LPIPS network is part of each registered threat's name and key: ``ppgd-alexnet`` and ``lpa-alexnet`` (the
paper's AlexNet-LPIPS, columns "ppgd" and "lpa" of the ``unseen`` suite) and ``ppgd-self`` and ``lpa-self`` (the
evaluated model's own features, columns "ppgd-self" and "lpa-self" of the ``unseen-self`` suite). An AlexNet threat
without ``alexnet-owt-7be5be79.pth`` in torch.hub's cache fails before anything is evaluated, in one line naming the
file (``Threat.require``); it never falls back to self-LPIPS. Results stored by older rome-bench under ``ppgd`` and
``lpa`` (whose "auto" network was resolved when built and kept in their ``lpips`` parameter) stay readable: the
leaderboard shows those computed with self-LPIPS in the ``-self`` columns (:func:`stored_column`), and a new
evaluation stores its results under the new names.

Both attacks maximise the margin loss max(κ, max_{k≠y} z_k − z_y) (κ = 1) inside an LPIPS ball
{x' : d(x, x') ≤ bound} intersected with [0,1], d the distance of ``lpips_distance.py``. The RoME paper (Sec. A1) uses
an LPIPS bound of 0.25 and 20 iterations for both; those are the defaults. Everything else follows perceptual-advex's
``PerceptualPGDAttack`` and ``LagrangePerceptualAttack`` defaults.

Projection ("newtons", the reference default): up to 10 steps x ← clip(x − (d − bound + o)(1 + o)·∇d/‖∇d‖²)
  with overshoot o = 0.1, then bisection (10 steps) on the segment from the clean image for examples still
  outside; "bisection" uses bisection only.

Deviations from perceptual-advex shared by both attacks, all so that the output is valid, batch-independent and
monotone in iterations (each attack's module lists its own):

* every example keeps the FIRST iterate (start included) that is misclassified AND within the LPIPS bound, else
  the final projected iterate; examples already found are not attacked further;
* the random start is clipped to [0,1]; early stops are per example (Newton convergence here, and those of each
  attack) where the reference stops or falls back for the whole batch;
* Newton's projection uses a fresh gradient each step (the reference accumulates ``.grad`` across steps) and checks
  the last step before falling back; bisection returns the largest tested point inside the ball (the reference
  returns the last tested one, which may be outside);
* if the projection still cannot bring an example inside the ball, the clean image is returned for it and counted
  in ``call_flags()`` as ``projection-failed``; the output is never outside the bound.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.autocast import plain_model
from rome_bench.threats.base import Budget, Threat, per_example
from rome_bench.threats.lpips_distance import (
    LPIPS,
    LPIPSBudget,
    alexnet_checkpoint,
    missing_alexnet,
    resolve_lpips_backbone,
    transformer_blocks,
)

PROJECTIONS = ("newtons", "bisection")
START_STD = 0.01
TINY = 1e-30


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per example min(κ, max_{k≠y} z_k − z_y) (the CW / f6 loss); positive means misclassified."""
    correct = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return (others - correct).clamp(max=kappa)


def flat_norms(tensor: torch.Tensor) -> torch.Tensor:
    """Per-example ℓ2 norm over all non-batch dimensions."""
    return torch.linalg.vector_norm(tensor.flatten(1), dim=1)


class FirstSuccess:
    """Per example, the first candidate that is misclassified and within the LPIPS bound."""

    def __init__(self, images: torch.Tensor, bound: float) -> None:
        self.bound = bound
        self.found = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        self.result = images.clone()

    def remaining(self) -> torch.Tensor:
        return (~self.found).nonzero().squeeze(1)

    def offer(self, index: torch.Tensor, candidates: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
              distances: torch.Tensor) -> None:
        hit = (logits.argmax(dim=1) != labels) & (distances <= self.bound) & ~self.found[index]
        rows = index[hit]
        self.result[rows] = candidates[hit].detach()
        self.found[rows] = True


NETWORKS = ("alexnet", "self")
LEGACY_NAMES = ("ppgd", "lpa")  # the names PPGD and LPA were stored under before the network joined them


def stored_column(name: str, column: str, params: dict[str, Any]) -> str:
    """The leaderboard column of a stored threat: its own, except that PPGD and LPA stored under their older names
    with self-LPIPS go to the self columns (``ppgd-self``, ``lpa-self``), not to the AlexNet ones."""
    if name in LEGACY_NAMES and params.get("lpips") == "self":
        return f"{name}-self"
    return column


class PerceptualAttack(Threat):
    """Shared parts of PPGD and LPA: the LPIPS distance, projection onto the LPIPS ball, budget and flags."""

    network: ClassVar[str | None] = None
    """'alexnet' or 'self' for the registered PPGD and LPA threats, whose names carry it; None where the ``lpips``
    argument chooses (PAT's Fast-LPA, which may also take 'auto')."""

    def __init__(self, bound: float, steps: int, lpips: str | None, step_size: float | None, decay_step_size: bool,
                 kappa: float, projection: str, projection_overshoot: float, projection_steps: int,
                 bisection_steps: int) -> None:
        if bound <= 0 or steps < 1:
            raise ConfigError(f"{self.name}: bound must be > 0 and steps >= 1 (got bound={bound}, steps={steps})")
        if projection not in PROJECTIONS:
            raise ConfigError(f"{self.name}: projection must be one of {', '.join(PROJECTIONS)}, got '{projection}'")
        if projection_steps < 0 or bisection_steps < 1 or projection_overshoot < 0:
            raise ConfigError(f"{self.name}: need projection_steps >= 0, bisection_steps >= 1 and "
                              f"projection_overshoot >= 0")
        self.bound = float(bound)
        self.steps = int(steps)
        self.lpips = resolve_lpips_backbone(str(lpips)) if self.network is None else self._own_network(lpips)
        self.decay_step_size = bool(decay_step_size)
        default_step = self.bound if self.decay_step_size else 2 * self.bound / self.steps
        self.step_size = float(step_size) if step_size is not None else default_step
        self.kappa = float(kappa)
        self.projection = projection
        self.projection_overshoot = float(projection_overshoot)
        self.projection_steps = int(projection_steps)
        self.bisection_steps = int(bisection_steps)
        self._distance: LPIPS | None = None
        self._failed = 0

    def params(self) -> dict[str, Any]:
        return {"bound": self.bound, "steps": self.steps, "lpips": self.lpips, "step_size": self.step_size,
                "decay_step_size": self.decay_step_size, "kappa": self.kappa, "projection": self.projection,
                "projection_overshoot": self.projection_overshoot, "projection_steps": self.projection_steps,
                "bisection_steps": self.bisection_steps}

    def _own_network(self, lpips: str | None) -> str:
        """The network of this registered threat; ``lpips`` may only repeat it (as ``params()`` does)."""
        if lpips not in (None, self.network):
            family = self.name.rsplit("-", 1)[0]
            raise ConfigError(f"{self.name} uses LPIPS '{self.network}' (its name says so), not '{lpips}'; choose "
                              f"the threat by name: {' | '.join(f'{family}-{network}' for network in NETWORKS)}")
        return str(self.network)

    def require(self) -> None:
        """An AlexNet-LPIPS threat needs torchvision's AlexNet file in torch.hub's cache: one line naming it."""
        if self.lpips == "alexnet" and not alexnet_checkpoint().is_file():
            raise ConfigError(missing_alexnet(self.name, "evaluate the self-LPIPS threats instead (--suite "
                                                         "unseen-self: the model's own features, not the paper's)"))

    def budget(self) -> Budget | None:
        return LPIPSBudget(self.bound, self._distance)

    def _attacked(self, model: nn.Module) -> nn.Module:
        """The model this attack runs: with the model's own LPIPS the distance *is* the model, read by hooks on its
        blocks, so it runs the plain model — fp32 under ``--precision bf16`` (the LPIPS budget is met and checked in
        fp32), eager under ``--compile`` (a compiled graph does not fire hooks added after compiling)."""
        return plain_model(model) if self.lpips == "self" else model

    def call_flags(self) -> dict[str, int]:
        return {"projection-failed": self._failed} if self._failed else {}

    def applicable(self, model: nn.Module) -> bool:
        """The 'self' LPIPS needs Transformer blocks to read features from; without them the threat is n/a."""
        if self.lpips != "self":
            return True
        try:
            transformer_blocks(model)
        except ConfigError:
            return False
        return True

    def _step_at(self, iteration: int) -> float:
        """The LPIPS step length of iteration t: constant, or decayed as η·0.1^(t/steps)."""
        if self.decay_step_size:
            return self.step_size * 0.1 ** (iteration / self.steps)
        return self.step_size

    def _start(self, model: nn.Module, images: torch.Tensor) -> tuple[LPIPS, torch.Tensor, torch.Tensor]:
        """Set up a call: the distance (remembered for ``budget()``), φ(clean) and the random start."""
        if self.lpips == "self" or self._distance is None:
            self._distance = LPIPS(self.lpips, model)
        self._failed = 0
        with torch.no_grad():
            clean_embedding = self._distance.embed(images)
        start = (images + START_STD * torch.randn_like(images)).clamp(0, 1)
        return self._distance, clean_embedding, start

    def _distances(self, distance: LPIPS, images: torch.Tensor, clean_embedding: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.linalg.vector_norm(distance.embed(images) - clean_embedding, dim=1)

    def project(self, distance: LPIPS, clean: torch.Tensor, clean_embedding: torch.Tensor,
                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project onto {d(clean, ·) ≤ bound} ∩ [0,1]: (projected images, mask of failures returned as clean)."""
        images = images.detach().clone()
        todo = torch.arange(len(images), device=images.device)
        if self.projection == "newtons":
            for _ in range(self.projection_steps):
                if len(todo) == 0:
                    break
                todo = self._newton_step(distance, clean_embedding, images, todo)
        failed = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        if len(todo):
            outside = self._distances(distance, images[todo], clean_embedding[todo]) > self.bound
            todo = todo[outside]
        if len(todo):
            images[todo], failed[todo] = self._bisect(distance, clean[todo], clean_embedding[todo], images[todo])
        return images, failed

    def _newton_step(self, distance: LPIPS, clean_embedding: torch.Tensor, images: torch.Tensor,
                     todo: torch.Tensor) -> torch.Tensor:
        """One overshooting Newton step on d = bound for the rows ``todo`` still outside (in place); rows left."""
        current = images[todo].requires_grad_(True)
        lpips = torch.linalg.vector_norm(distance.embed(current) - clean_embedding[todo], dim=1)
        outside = lpips > self.bound
        if not outside.any():
            return todo[:0]
        (grad,) = torch.autograd.grad(lpips[outside].sum(), current)
        grad, rows = grad[outside], todo[outside]
        squared = grad.flatten(1).square().sum(dim=1)
        excess = lpips[outside].detach() - self.bound + self.projection_overshoot
        size = torch.where(squared > 0, excess * (1 + self.projection_overshoot) / squared.clamp_min(TINY),
                           torch.zeros_like(squared))
        images[rows] = (images[rows] - per_example(size, grad) * grad).clamp(0, 1)
        return rows

    def _bisect(self, distance: LPIPS, clean: torch.Tensor, clean_embedding: torch.Tensor,
                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Largest tested λ with d(clean, clean + λ(images − clean)) ≤ bound; λ = 0 (the clean image) = failure."""
        direction = images - clean
        low = torch.zeros(len(images), dtype=images.dtype, device=images.device)
        high = torch.ones_like(low)
        for _ in range(self.bisection_steps):
            middle = (low + high) / 2
            inside = self._distances(distance, clean + per_example(middle, direction) * direction,
                                     clean_embedding) <= self.bound
            low, high = torch.where(inside, middle, low), torch.where(inside, high, middle)
        return clean + per_example(low, direction) * direction, low == 0

    def _finish(self, distance: LPIPS, images: torch.Tensor, clean_embedding: torch.Tensor, tracker: FirstSuccess,
                fallback: torch.Tensor, fallback_failed: torch.Tensor) -> torch.Tensor:
        """First success, else the projected fallback; anything still outside the bound becomes the clean image."""
        found = per_example(tracker.found, images)
        output = torch.where(found, tracker.result, fallback)
        failed = ~tracker.found & fallback_failed
        outside = self._distances(distance, output, clean_embedding) > self.bound
        output = torch.where(per_example(outside, images), images, output)
        self._failed = int((failed | outside).sum())
        return output.detach()
