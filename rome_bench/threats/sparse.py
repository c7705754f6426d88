"""Sparse unseen threats: the SparseFool ℓ0 attack and the per-example adversarial patch.

**SparseFool** (Modas, Moosavi-Dezfooli & Frossard, "SparseFool: a few pixels make a big difference", CVPR 2019),
registered as ``sparsefool-l0`` (column ``l0``). RoME (Sec. A1) runs it with 10 iterations and λ = 3, which are the
defaults here. Algorithm 2 of the paper, batched (every example of the batch at once; an example leaves the loop as
soon as it is fooled), with the details of the authors' code (github.com/LTS4/SparseFool): from x⁽⁰⁾ = x₀, each
outer iteration

1. runs ℓ2 DeepFool (Moosavi-Dezfooli et al. 2016; overshoot 0.02, at most ``deepfool_steps`` = 50 linearisation
   steps, candidate classes: the label and the other top logits at the start point, ``candidates`` = 10 in all,
   as in the authors' code) from the current point x⁽ⁱ⁾ to a point x_adv on the decision boundary (the point
   without the overshoot; the overshot point is the one tested for misclassification);
2. takes the unit normal w = ∇(f_k − f_y)(x_adv)/‖·‖₂, with k the class DeepFool reached and y the true label,
   and the boundary point x_B = x⁽ⁱ⁾ + λ·(x_adv − x⁽ⁱ⁾);
3. runs the linear solver (Algorithm 1): starting from x⁽ⁱ⁾, move the coordinate with the largest |w_j| not yet
   used straight onto the hyperplane {x : wᵀ(x − x_B) = 0} (plus a margin of 10⁻³, and at least 10⁻⁴), clipped
   to the box [0,1]; repeat with the next coordinate until the point has crossed the hyperplane. This is evaluated
   in closed form, not one coordinate per Python step: in that order every coordinate before the one that crosses
   goes to its box limit, so the crossing coordinate is found from a cumulative sum of the per-coordinate
   capacities |w_j|·room_j; the result equals the sequential loop up to float rounding (tested);
4. the candidate is x₀ + (1 + overshoot)·(x⁽ⁱ⁺¹⁾ − x₀) clipped to [0,1]; the example stops once it is misclassified.

An example returns its first misclassified candidate, else the candidate of the last iteration. SparseFool is a
minimum-norm attack without ε: :class:`L0Budget` measures the number of changed pixels (a pixel counts once over
its channels, |δ| > 10⁻⁶) against the trivial limit H·W, and ``last_l0`` holds the per-example ℓ0 of the last call.
The attack draws no random numbers. Deviations: (a) DeepFool clips its iterates to [0,1] (as torchattacks does;
the authors' DeepFool does not clip; x_B itself may leave the box, it only defines the hyperplane); (b) where the
linearisation is inconsistent, wᵀ(x_adv − x⁽ⁱ⁾) ≤ 0, the authors' solver would move every coordinate to the box
limit; here x_B = x⁽ⁱ⁾ + λ‖x_adv − x⁽ⁱ⁾‖₂·w instead (did not occur on the test model). torchattacks' SparseFool
differs from the authors' code (x_B = x₀ + λ(x_adv − x₀) and the normal taken at x_B); on the tiny test ViT it fools
about 56 % of 16 examples, partly with fully dense outputs, against about 94 % here, with similar ℓ0 otherwise.

**Adversarial patch** (Brown et al., "Adversarial Patch", 2017), registered as ``patch`` (column ``patch``). RoME
(Sec. A1): a square 8×8 patch, 50 iterations, step size 2/255. Here each example gets its own patch (a universal
patch shared over images is a different threat). Placement: with ``placement="random"`` the top-left corner is
drawn per example uniformly over all positions where the patch fits inside the image, (H − size + 1)·(W − size + 1)
of them, with ``torch.randint``; ``"center"`` puts it at ((H − size)//2, (W − size)//2). The patch pixels start
uniform in [0,1] (``torch.rand``) and follow signed gradient ascent on the cross-entropy with the given step,
clipped to [0,1]; each example keeps its first misclassified iterate, else the last. With ``restarts`` > 1 the
examples not yet fooled get a new location and a new initialisation each restart (locations and initialisations
are drawn for the whole batch every restart so that an example's random numbers do not depend on the others).
:class:`PatchBudget` checks that every changed pixel lies in a square of side ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, BudgetCheck, Threat, per_example, register_threat

L0_TOLERANCE = 1e-6
SOLVER_MARGIN = 1e-3  # the linear solver aims this far past the hyperplane (β in the authors' code)
SOLVER_MIN_STEP = 1e-4  # the smallest move of a coordinate (as in the authors' code)


def changed_pixels(clean: torch.Tensor, perturbed: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """(B, H, W) mask of pixels where any channel differs by more than ``tol``."""
    return ((perturbed - clean).abs() > tol).any(dim=1)


def count_changed_pixels(clean: torch.Tensor, perturbed: torch.Tensor, tol: float = L0_TOLERANCE) -> torch.Tensor:
    """Per-example ℓ0 in pixels: a pixel counts once however many of its channels changed."""
    return changed_pixels(clean, perturbed, tol).flatten(1).sum(dim=1)


@dataclass(frozen=True)
class L0Budget(Budget):
    """The number of changed pixels, against the image's pixel count (an unbounded minimum-norm attack)."""

    tol: float = L0_TOLERANCE

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        measured = count_changed_pixels(clean, perturbed, self.tol).double()
        limit = float(clean.shape[-2] * clean.shape[-1])
        return BudgetCheck(measured, limit, "ℓ0 (unbounded minimum-norm attack)")


@dataclass(frozen=True)
class PatchBudget(Budget):
    """The side of the smallest square holding every changed pixel must not exceed ``size``."""

    size: int

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        return BudgetCheck(patch_extent(clean, perturbed).double(), float(self.size), "patch side (pixels)")


def patch_extent(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Per example, the side of the smallest axis-aligned square containing every changed pixel (0 if none)."""
    changed = changed_pixels(clean, perturbed)
    return torch.maximum(_span(changed.any(dim=2)), _span(changed.any(dim=1)))


def _span(occupied: torch.Tensor) -> torch.Tensor:
    """(B, N) boolean rows -> last occupied index − first occupied index + 1 (0 for an empty row)."""
    positions = torch.arange(occupied.shape[1], device=occupied.device)
    last = torch.where(occupied, positions, -1).amax(dim=1)
    first = torch.where(occupied, positions, occupied.shape[1]).amin(dim=1)
    return (last - first + 1).clamp_min(0)


# ----------------------------------------------------------------------------------------------------------------
# SparseFool
# ----------------------------------------------------------------------------------------------------------------


def _candidate_classes(logits: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) classes: the label first, then the other classes with the largest logits."""
    boosted = logits.detach().scatter(1, labels.unsqueeze(1), float("inf"))
    return boosted.topk(min(count, logits.shape[1]), dim=1).indices


def _class_gradients(model: nn.Module, points: torch.Tensor,
                     classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``classes`` (B, K) at ``points`` and their input gradients (B, K, *points.shape[1:])."""
    points = points.detach().requires_grad_(True)
    logits = model(points).gather(1, classes)
    grads = [torch.autograd.grad(logits[:, k].sum(), points, retain_graph=k + 1 < classes.shape[1])[0]
             for k in range(classes.shape[1])]
    return logits.detach(), torch.stack(grads, dim=1)


def _predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(dim=1)


def deepfool(model: nn.Module, start: torch.Tensor, labels: torch.Tensor, overshoot: float, steps: int,
             candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ℓ2 DeepFool from ``start``: the boundary point it reaches in [0,1] and the class across it.

    Each step linearises the classifier around the current point and moves to the nearest linearised boundary
    among the candidate classes (plus 10⁻⁴), clipped to [0,1]; an example stops once start + (1 + overshoot)·(total
    step) is misclassified. It returns the point without the overshoot (as the authors' code does); examples that
    never cross return their last point and the last nearest class.
    """
    with torch.no_grad():
        classes = _candidate_classes(model(start), labels, candidates)
    point = start.clone()
    target = classes[:, 1] if classes.shape[1] > 1 else labels.clone()
    active = torch.arange(len(start), device=start.device)
    for _ in range(steps):
        if len(active) == 0:
            break
        logits, grads = _class_gradients(model, point[active], classes[active])
        with torch.no_grad():
            f_diff = logits[:, 1:] - logits[:, :1]  # (A, K-1) candidate logit minus label logit
            w_diff = (grads[:, 1:] - grads[:, :1]).flatten(2)  # (A, K-1, D)
            w_norm = w_diff.norm(dim=2).clamp_min(1e-12)
            nearest = (f_diff.abs() / w_norm).argmin(dim=1)
            pick = nearest.view(-1, 1, 1).expand(-1, 1, w_diff.shape[2])
            w = w_diff.gather(1, pick).squeeze(1)
            distance = (f_diff.gather(1, nearest.unsqueeze(1)).abs() + 1e-4) / w_norm.gather(1, nearest.unsqueeze(1))
            step = (distance / w_norm.gather(1, nearest.unsqueeze(1)) * w).view_as(point[active])
            point[active] = (point[active] + step).clamp(0, 1)
            tested = (start[active] + (1 + overshoot) * (point[active] - start[active])).clamp(0, 1)
            target[active] = classes[active].gather(1, (nearest + 1).unsqueeze(1)).squeeze(1)
            predicted = _predict(model, tested)
            crossed = predicted != labels[active]
            target[active[crossed]] = predicted[crossed]
            active = active[~crossed]
    return point, target


def boundary_normal(model: nn.Module, boundary: torch.Tensor, labels: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """Unit ℓ2 normal ∇(f_target − f_label) at the boundary point (flattened, (B, D))."""
    _, grads = _class_gradients(model, boundary, torch.stack([labels, target], dim=1))
    normal = (grads[:, 1] - grads[:, 0]).flatten(1)
    return normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-12)


def linear_solver(current: torch.Tensor, normal: torch.Tensor, plane_point: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of SparseFool in closed form: move coordinates by descending |w_j| until the plane is crossed.

    ``current`` (B, C, H, W) in [0,1]; ``normal`` (B, D) of unit norm; ``plane_point`` (B, C, H, W) on the plane.
    """
    x = current.flatten(1).double()
    w = normal.double()
    offset = ((x - plane_point.flatten(1).double()) * w).sum(dim=1, keepdim=True)  # signed wᵀ(x − x_B)
    side = torch.where(offset > 0, 1.0, -1.0)
    direction = -side * w.sign()  # per coordinate, the way that brings wᵀ(x − x_B) towards zero
    room = torch.where(direction > 0, 1 - x, x).clamp_min(0) * (w != 0)
    magnitude = w.abs()
    order = magnitude.argsort(dim=1, descending=True, stable=True)
    sorted_magnitude = magnitude.gather(1, order)
    sorted_room = room.gather(1, order)
    capacity = sorted_magnitude * sorted_room  # how much |wᵀ(x − x_B)| falls when the coordinate hits the box
    reached = capacity.cumsum(dim=1)
    needed = offset.abs()
    crosses = reached >= needed
    # The first coordinate whose move crosses the plane; every coordinate before it goes to its box limit.
    first = torch.where(crosses.any(dim=1, keepdim=True), crosses.to(torch.int8).argmax(dim=1, keepdim=True),
                        torch.full_like(needed, x.shape[1], dtype=torch.long))
    index = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    remaining = needed - (reached - capacity).gather(1, first.clamp_max(x.shape[1] - 1))
    last_move = ((remaining + SOLVER_MARGIN) / sorted_magnitude.gather(1, first.clamp_max(x.shape[1] - 1))
                 .clamp_min(1e-300)).clamp_min(SOLVER_MIN_STEP)
    sorted_move = torch.where(index < first, sorted_room,
                              torch.where(index == first, torch.minimum(last_move, sorted_room), 0.0))
    move = torch.zeros_like(x).scatter(1, order, sorted_move)
    return (x + direction * move).clamp(0, 1).view_as(current).to(current.dtype)


@register_threat("sparsefool-l0", tag="unseen", column="l0")
class SparseFool(Threat):
    """SparseFool (Modas et al. 2019): a minimum-ℓ0 attack from DeepFool boundary points and a linear solver."""

    def __init__(self, steps: int = 10, lam: float = 3.0, overshoot: float = 0.02, deepfool_steps: int = 50,
                 candidates: int = 10) -> None:
        if steps < 1 or deepfool_steps < 1 or lam < 1 or overshoot < 0 or candidates < 2:
            raise ConfigError(f"sparsefool-l0: need steps >= 1, deepfool_steps >= 1, lam >= 1, overshoot >= 0 and "
                             f"candidates >= 2 (got {steps}, {deepfool_steps}, {lam}, {overshoot}, {candidates})")
        self.steps = int(steps)
        self.lam = float(lam)
        self.overshoot = float(overshoot)
        self.deepfool_steps = int(deepfool_steps)
        self.candidates = int(candidates)
        self.last_l0: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "lam": self.lam, "overshoot": self.overshoot,
                "deepfool_steps": self.deepfool_steps, "candidates": self.candidates}

    def budget(self) -> Budget:
        return L0Budget()

    def _plane_point(self, start: torch.Tensor, reached: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        """x_B = x⁽ⁱ⁾ + λ·r, or x⁽ⁱ⁾ + λ‖r‖₂·w where the linearisation puts x⁽ⁱ⁾ on the far side (wᵀr ≤ 0)."""
        step = (reached - start).flatten(1)
        along = (step * normal).sum(dim=1, keepdim=True)
        fallback = step.norm(dim=1, keepdim=True) * normal
        step = torch.where(along > 0, step, fallback)
        return start + self.lam * step.view_as(start)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        current = images.clone()
        result = images.clone()
        active = (_predict(model, images) == labels).nonzero().squeeze(1)
        for _ in range(self.steps):
            if len(active) == 0:
                break
            origin, label, start = images[active], labels[active], current[active]
            reached, target = deepfool(model, start, label, self.overshoot, self.deepfool_steps, self.candidates)
            normal = boundary_normal(model, reached, label, target)
            with torch.no_grad():
                current[active] = linear_solver(start, normal, self._plane_point(start, reached, normal))
                candidate = (origin + (1 + self.overshoot) * (current[active] - origin)).clamp(0, 1)
                result[active] = candidate
                fooled = _predict(model, candidate) != label
            active = active[~fooled]
        self.last_l0 = count_changed_pixels(images, result)
        return result


# ----------------------------------------------------------------------------------------------------------------
# Adversarial patch
# ----------------------------------------------------------------------------------------------------------------


def patch_masks(images: torch.Tensor, size: int, placement: str) -> torch.Tensor:
    """(B, 1, H, W) masks of one size×size square per example; random corners come from torch's RNG."""
    batch, _, height, width = images.shape
    if placement == "random":
        top = torch.randint(0, height - size + 1, (batch,), device=images.device)
        left = torch.randint(0, width - size + 1, (batch,), device=images.device)
    else:
        top = torch.full((batch,), (height - size) // 2, device=images.device)
        left = torch.full((batch,), (width - size) // 2, device=images.device)
    rows = torch.arange(height, device=images.device).view(1, -1, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, -1)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < top.view(-1, 1, 1) + size)
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < left.view(-1, 1, 1) + size)
    return (inside_rows & inside_cols).unsqueeze(1).to(images.dtype)


def _apply_patch(images: torch.Tensor, canvas: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images with the masked region replaced by the canvas."""
    return images * (1 - mask) + canvas * mask


@register_threat("patch", tag="unseen", column="patch")
class AdversarialPatch(Threat):
    """Adversarial patch (Brown et al. 2017): one optimised size×size square per example, signed-gradient ascent."""

    def __init__(self, size: int = 8, steps: int = 50, step_size: float = 2 / 255, placement: str = "random",
                 restarts: int = 1) -> None:
        if size < 1 or steps < 1 or step_size <= 0 or restarts < 1:
            raise ConfigError(f"patch: need size >= 1, steps >= 1, step_size > 0 and restarts >= 1 (got {size}, "
                             f"{steps}, {step_size}, {restarts})")
        if placement not in ("random", "center"):
            raise ConfigError(f"patch: placement must be 'random' or 'center', got '{placement}'")
        self.size = int(size)
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.placement = placement
        self.restarts = int(restarts)

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "steps": self.steps, "step_size": self.step_size, "placement": self.placement,
                "restarts": self.restarts}

    def budget(self) -> Budget:
        return PatchBudget(self.size)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.size > min(images.shape[-2:]):
            raise ConfigError(f"patch: a {self.size}×{self.size} patch does not fit {tuple(images.shape[-2:])} images")
        result = images.clone()
        active = torch.arange(len(images), device=images.device)
        for _ in range(self.restarts):
            mask = patch_masks(images, self.size, self.placement)  # drawn for the whole batch: see the docstring
            canvas = torch.rand_like(images)
            if len(active) == 0:
                continue
            patched, fooled = self._optimise(model, images[active], labels[active], canvas[active], mask[active])
            result[active] = patched
            active = active[~fooled]
        return result

    def _optimise(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, canvas: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One restart: the first misclassified iterate per example (else the last) and whether it was found."""
        found = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        result = _apply_patch(images, canvas, mask)
        for _ in range(self.steps):
            canvas = canvas.detach().requires_grad_(True)
            patched = _apply_patch(images, canvas, mask)
            logits = model(patched)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), canvas)
            with torch.no_grad():
                newly = (logits.argmax(dim=1) != labels) & ~found
                result = torch.where(per_example(newly, result), patched, result)
                found |= newly
                canvas = (canvas + self.step_size * grad.sign() * mask).clamp(0, 1)
        with torch.no_grad():
            final = _apply_patch(images, canvas, mask)
            newly = (model(final).argmax(dim=1) != labels) & ~found
            return torch.where(per_example(found, result), result, final), found | newly
