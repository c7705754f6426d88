"""Batched PGD for ℓ∞, ℓ2 and ℓ1 with random start and exact projections onto (ℓp ball ∩ [0,1] box).

As in foolbox 3, each norm is a small subclass that says three things: how to draw a random start, which
direction is steepest ascent under the norm, and how to project onto the feasible set
{δ : ‖δ‖_p ≤ ε, 0 ≤ x + δ ≤ 1}. The projections are exact Euclidean projections onto that intersection:

* ℓ∞: clip to [-ε, ε] and to the box (the set is a box, so clipping is exact);
* ℓ2: δ = clip(t·z, -x, 1-x) with the scale t ∈ (0, 1] solved exactly so that ‖δ‖₂ = ε (KKT conditions of the
  projection): an active-set solve over the few coordinates that leave the box, with the sorted breakpoints at
  which coordinates reach the box as fallback and test reference;
* ℓ1: δ_i = sign(z_i)·min(max(|z_i| − λ, 0), c_i) with c_i the box bound on the side of z_i and λ ≥ 0 found
  exactly from the sorted breakpoints of the piecewise-linear ‖δ(λ)‖₁ (Mind-the-box, Croce & Hein 2021).

The ℓ1 step is sparse steepest ascent (SLIDE, Tramèr & Boneh 2019): move only the top ``sparsity`` fraction of
coordinates by |gradient|, skipping coordinates that sit on the box boundary and point outward; each moved
coordinate takes an equal share of the step (the direction has unit ℓ1 norm). SLIDE's randomised percentile —
the fraction drawn per example and step, uniform in ``random_sparsity = (low, high)``, from the global torch RNG
— is an option (percentile q ∈ [80, 99] is ``random_sparsity=(0.01, 0.2)``; q = 100·(1 − sparsity)).

**Default sparsity 0.01 (was 0.05), measured.** Inside the ℓ1 ball ∩ box a strong perturbation moves few
coordinates all the way to 0 or 1 (ε = 12 is ≈ 12 of 3,072 coordinates at 32×32; Croce & Hein 2021), so a dense
step is mostly cancelled by the soft-threshold projection: at 0.05 the attack stalls however many steps it takes.
``bench/l1_pgd_strength.py`` (first 100 examples of the fixed test subset, ε = 12, robust counts; PGD's
evaluation rule over 3 seeds; APGD-CE ℓ1 of pyautoattack configured as the ``apgd-l1`` threat, ε-schedule, with
exactly that many iterations, 1 and 5 restarts):

    synthetic-micro-max (clean 19)  steps 5      steps 10     steps 20
      APGD-CE ×1 / ×5               15 / 14      11 / 9       8 / 8      (100 iterations ×5, as suites run it: 7)
      PGD sparsity 0.05             17           17           17
      PGD sparsity 0.02             13           13           11
      PGD sparsity 0.01             12–13        9            7
      PGD sparsity 0.005            14           9            8
      PGD sparsity 0.002            14           10–11        8
      PGD q ~ U[80, 99]             16–17        17           17

On cifar10-smoke-rome-max (clean 19) every attack leaves 17 at ε = 12 (16 for APGD-CE 100 ×5), so that model
does not separate the choices; at 3ε = 36 it does: 20 steps, APGD-CE ×1/×5 8/8, PGD 0.05 → 10, 0.02 → 8,
0.01 → 8, 0.005 → 8–9, 0.002 → 9–10; 5 steps, APGD-CE 13/9, PGD 0.01 → 8. So 0.01 is the sparsity at which PGD
is no weaker than APGD-CE at equal ε and steps on both committed models (``tests/test_l1_pgd_strength.py``).
Measured on 32×32 inputs only: at other resolutions the fraction that matches ε differs, re-measure there.
``threats.l1_sparsity`` sets the *training* attack's sparsity only: evaluation suites build their ℓ1 PGD with this
default whatever a run stored (evaluation strength must not depend on how a model was trained), so an old run
that stored 0.05 is evaluated at today's strength.

With ``keep_adversarial`` (the evaluation default) each example returns the first iterate that the model
misclassifies, else the last iterate; so, for a fixed step size, more steps never make the attack weaker.
Training uses the last iterate (``keep_adversarial=False``).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, LpBudget, Threat, keep_first_success, per_example, register_threat

DEFAULT_L1_SPARSITY = 0.01  # measured choice: see the module docstring


def _in_box(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """images + δ, clamped so that float rounding can never leave [0, 1] (clamping only shrinks |δ|)."""
    return (images + delta).clamp(0, 1)


class PGD(Threat):
    """Projected gradient ascent on the cross-entropy loss inside an ℓp ball intersected with [0,1]."""

    norm: ClassVar[str]

    def __init__(self, eps: float, steps: int = 10, step_size: float | None = None, random_start: bool = True,
                 keep_adversarial: bool = True) -> None:
        if eps <= 0 or steps < 1:
            raise ConfigError(f"{self.name}: eps must be > 0 and steps >= 1 (got eps={eps}, steps={steps})")
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.random_start = random_start
        self.keep_adversarial = keep_adversarial

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "random_start": self.random_start, "keep_adversarial": self.keep_adversarial}

    def budget(self) -> Budget:
        return LpBudget(self.norm, self.eps)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        delta = self.start(images) if self.random_start else torch.zeros_like(images)
        delta = self.project(images, delta)
        result = _in_box(images, delta)
        found = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        self.prepare(model, images, labels)
        for _ in range(self.steps):
            inputs = _in_box(images, delta).requires_grad_(True)  # the gradient at the point itself: the clamp
            logits, loss = self.objective(model, inputs, labels)  # only guards rounding, and its backward is costly
            (grad,) = torch.autograd.grad(loss, inputs)
            with torch.no_grad():
                if self.keep_adversarial:
                    found, result = keep_first_success(logits, labels, inputs.detach(), found, result)
                stepped = torch.add(delta, self.ascent_direction(grad, images, delta), alpha=self.step_size)
                delta = self.project(images, stepped)
        with torch.no_grad():  # the last iterate needs no forward here: unless an earlier one fooled, it is returned
            final = _in_box(images, delta)
            if not self.keep_adversarial:
                return final
            return torch.where(per_example(found, result), result, final)

    def prepare(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Called once per batch before the first step (adaptive attacks compute their targets here)."""

    def objective(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the loss to ascend (summed over the batch): cross-entropy for plain PGD."""
        logits = model(inputs)
        return logits, F.cross_entropy(logits, labels, reduction="sum")


    @abstractmethod
    def start(self, images: torch.Tensor) -> torch.Tensor:
        """A random perturbation inside the ball (projected onto the box afterwards)."""

    @abstractmethod
    def ascent_direction(self, grad: torch.Tensor, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit norm under this threat's norm."""

    @abstractmethod
    def project(self, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of ``delta`` onto {‖δ‖ ≤ ε} ∩ {0 ≤ images + δ ≤ 1}."""


@register_threat("pgd-linf", tag="seen", column="linf")
class LinfPGD(PGD):
    """ℓ∞ PGD (Madry et al.) with uniform random start."""

    norm = "linf"

    def start(self, images: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(images).uniform_(-self.eps, self.eps)

    def ascent_direction(self, grad: torch.Tensor, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return (images + delta.clamp(-self.eps, self.eps)).clamp(0, 1) - images


@register_threat("pgd-l2", tag="seen", column="l2")
class L2PGD(PGD):
    """ℓ2 PGD with a random start uniform in radius along a Gaussian direction."""

    norm = "l2"

    def start(self, images: torch.Tensor) -> torch.Tensor:
        direction = torch.randn_like(images)
        norms = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
        radius = self.eps * torch.rand(len(images), device=images.device)
        return direction * per_example(radius / norms, images)

    def ascent_direction(self, grad: torch.Tensor, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / per_example(norms, grad)

    def project(self, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return project_l2_box(delta, images, self.eps)


@register_threat("pgd-l1", tag="seen", column="l1")
class L1PGD(PGD):
    """ℓ1 PGD with sparse steepest ascent (SLIDE) and exact projection onto the ℓ1 ball ∩ box."""

    norm = "l1"

    def __init__(self, eps: float, steps: int = 10, step_size: float | None = None, random_start: bool = True,
                 keep_adversarial: bool = True, sparsity: float = DEFAULT_L1_SPARSITY,
                 random_sparsity: tuple[float, float] | list[float] | None = None) -> None:
        super().__init__(eps, steps, step_size, random_start, keep_adversarial)
        if not 0 < sparsity <= 1:
            raise ConfigError(f"pgd-l1: sparsity must be in (0, 1], got {sparsity}")
        self.sparsity = float(sparsity)
        self.random_sparsity = _sparsity_range(random_sparsity)

    def params(self) -> dict[str, Any]:
        params = {**super().params(), "sparsity": self.sparsity}
        if self.random_sparsity is not None:  # absent otherwise, so the keys of stored fixed-sparsity runs hold
            params["random_sparsity"] = list(self.random_sparsity)
        return params

    def start(self, images: torch.Tensor) -> torch.Tensor:
        laplace = torch.distributions.Laplace(0.0, 1.0).sample(images.shape).to(images)
        norms = laplace.flatten(1).abs().sum(dim=1).clamp_min(1e-12)
        radius = self.eps * torch.rand(len(images), device=images.device)
        return laplace * per_example(radius / norms, images)

    def ascent_direction(self, grad: torch.Tensor, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        current = images + delta
        blocked = ((current <= 0) & (grad < 0)) | ((current >= 1) & (grad > 0))
        magnitude = grad.abs().masked_fill(blocked, 0).flatten(1)
        if self.random_sparsity is None:
            k = max(1, math.ceil(self.sparsity * magnitude.shape[1]))
            threshold = magnitude.topk(k, dim=1).values[:, -1:]
        else:
            threshold = self.random_threshold(magnitude)
        chosen = (magnitude >= threshold) & (magnitude > 0)
        count = chosen.sum(dim=1, keepdim=True).clamp_min(1)
        direction = grad.sign().flatten(1) * chosen / count
        return direction.view_as(grad)

    def random_threshold(self, magnitude: torch.Tensor) -> torch.Tensor:
        """SLIDE's randomised percentile: per example and step, the k-th largest |gradient| with k/d drawn
        uniformly from ``random_sparsity`` (global torch RNG, so a seeded run repeats)."""
        low, high = self.random_sparsity or (self.sparsity, self.sparsity)
        fraction = low + (high - low) * torch.rand(len(magnitude), 1, device=magnitude.device)
        k = (fraction * magnitude.shape[1]).ceil().long().clamp(1, magnitude.shape[1])
        return magnitude.sort(dim=1, descending=True).values.gather(1, k - 1)

    def project(self, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return project_l1_box(delta, images, self.eps)


def seen_threats(eps: dict[str, float], steps: dict[str, int], l1_sparsity: float = DEFAULT_L1_SPARSITY,
                 keep_adversarial: bool = True) -> list[Threat]:
    """The three seen ℓp PGD threats (ℓ1, ℓ2, ℓ∞) at the given budgets and steps, in that order.

    ε and steps are the protocol (the dataset's preset; they are in each threat's key); the ℓ1 sparsity is an attack
    internal, the measured evaluation default unless a caller (a training attack) names its own.
    """
    return [
        L1PGD(eps["l1"], steps["l1"], keep_adversarial=keep_adversarial, sparsity=l1_sparsity),
        L2PGD(eps["l2"], steps["l2"], keep_adversarial=keep_adversarial),
        LinfPGD(eps["linf"], steps["linf"], keep_adversarial=keep_adversarial),
    ]


def _sparsity_range(bounds: tuple[float, float] | list[float] | None) -> tuple[float, float] | None:
    """``random_sparsity`` checked: None, or (low, high) with 0 < low <= high <= 1."""
    if bounds is None:
        return None
    values = tuple(float(b) for b in bounds)
    if len(values) != 2 or not 0 < values[0] <= values[1] <= 1:
        raise ConfigError(f"pgd-l1: random_sparsity must be (low, high) with 0 < low <= high <= 1, got {bounds}")
    return values[0], values[1]


ACTIVE_SET_ROUNDS = 8  # rounds of the exact active-set solve before an example falls back to the sorted solve


def project_l2_box(delta: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection onto {‖δ‖₂ ≤ ε} ∩ {0 ≤ x+δ ≤ 1}: δ = clip(t·z, box) with ‖δ‖₂ = ε solved for t exactly.

    Since t ≤ 1, only coordinates with x+z outside [0, 1] can ever be clipped: a PGD step leaves the box in a few
    of them (0.3% on CIFAR-10 at ℓ2 ε = 0.5), so they are gathered once and the solve runs on them alone; the other
    coordinates only contribute to ‖z‖². ‖clip(t·z)‖² = Σ_{clipped} room² + t²·Σ_{free} z² is increasing in t,
    and solving it for t with the clipped set of a smaller t never overshoots t*; so, from nothing clipped
    (t = ε/‖z‖), each round re-solves with the set clipped at the last t, climbing to t* and stopping, exact, once
    the set repeats (one to three rounds for typical PGD steps; no sort). Elementwise work stays in the input's
    dtype, the sums over the gathered coordinates are accumulated in float64 (PyTorch's float32 norms keep a
    relative error near 1e-7 over the rest). An example still changing after ``ACTIVE_SET_ROUNDS`` rounds is
    solved from the sorted breakpoints instead (:func:`project_l2_box_sorted`), so the result is always exact.
    """
    z = delta.flatten(1)
    x = images.flatten(1).to(z.dtype)
    moved = x + z
    rows, cols = (moved.clamp(0, 1) != moved).nonzero(as_tuple=True)
    z_out, x_out = z[rows, cols], x[rows, cols]
    room = torch.where(z_out >= 0, 1 - x_out, x_out).clamp_min(0)
    magnitude = z_out.abs()
    squares = torch.stack([room.double().square(), magnitude.double().square()], dim=1)  # (room², z²) per coordinate
    breaks = room.double() / magnitude.double()  # the scale t at which each coordinate reaches the box

    def per_example(values: torch.Tensor) -> torch.Tensor:
        """Sums of the gathered coordinates' ``values`` per example."""
        return values.new_zeros((len(z), *values.shape[1:])).index_add_(0, rows, values)

    gathered = per_example(squares)
    staying = torch.linalg.vector_norm(z, dim=1).double().square() - gathered[:, 1]  # Σ z² of the never-clipped
    if bool((gathered[:, 1] > staying).any()):  # most of ‖z‖ leaves the box: sum the rest itself, not a difference
        staying = torch.linalg.vector_norm(z.index_put((rows, cols), z.new_zeros(())), dim=1).double().square()
    inside = staying + gathered[:, 0] <= eps**2  # clip(z) is the answer
    total = staying + gathered[:, 1]
    clipped = torch.zeros_like(breaks, dtype=torch.bool)
    for _ in range(ACTIVE_SET_ROUNDS):
        clipped_sums = per_example(squares * clipped.unsqueeze(1))
        solved = ((eps**2 - clipped_sums[:, 0]).clamp_min(0)
                  / (total - clipped_sums[:, 1]).clamp_min(1e-300)).sqrt().clamp(0, 1)
        scale = torch.where(inside, 1.0, solved)
        now_clipped = breaks <= scale[rows]
        if torch.equal(now_clipped, clipped):  # every example's set repeats: each scale is exact
            unsolved = None
            break
        unsolved, clipped = per_example((now_clipped != clipped).double()) > 0, now_clipped
    step = scale.to(z.dtype)
    projected = z * step.unsqueeze(1)
    projected[rows, cols] = torch.minimum(step[rows] * magnitude, room).copysign(z_out)
    if unsolved is not None:
        projected[unsolved] = project_l2_box_sorted(delta[unsolved], images[unsolved], eps).flatten(1).to(z.dtype)
    return _shrink_to_budget(projected, eps, 2.0).view_as(delta).to(delta.dtype)


def project_l2_box_sorted(delta: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """The same projection from the sorted breakpoints at which coordinates reach the box (O(n log n), any input)."""
    z = delta.flatten(1).double()
    x = images.flatten(1).double()
    room = torch.where(z >= 0, 1 - x, x).clamp_min(0)
    boxed = torch.minimum(z.abs(), room) * z.sign()
    inside = boxed.norm(dim=1) <= eps
    # Coordinate i hits the box at scale r_i = room_i/|z_i|; for t between breakpoints ‖δ(t)‖² = t²·A + C.
    breaks = torch.where(z != 0, room / z.abs().clamp_min(1e-300), torch.full_like(z, 1e30))
    breaks, order = breaks.sort(dim=1)
    z_sq = z.square().gather(1, order)
    room_sq = room.square().gather(1, order)
    clipped_sum = room_sq.cumsum(dim=1) - room_sq  # C_j: coordinates before j are clipped
    free_sum = z_sq.flip(1).cumsum(dim=1).flip(1)  # A_j: coordinates from j on still scale with t
    values = breaks.square() * free_sum + clipped_sum
    index = (values >= eps**2).to(torch.int8).argmax(dim=1, keepdim=True)
    scale = ((eps**2 - clipped_sum.gather(1, index)) / free_sum.gather(1, index).clamp_min(1e-300)).sqrt()
    scale = torch.where(inside.unsqueeze(1), torch.ones_like(scale), scale.clamp(0, 1))
    projected = torch.minimum((scale * z).abs(), room) * z.sign()
    return _shrink_to_budget(projected, eps, 2.0).view_as(delta).to(delta.dtype)


def project_l1_box(delta: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection onto {‖δ‖₁ ≤ ε} ∩ {0 ≤ x+δ ≤ 1} via the sorted breakpoints of ‖δ(λ)‖₁."""
    z = delta.flatten(1).double()
    x = images.flatten(1).double()
    magnitude = z.abs()
    room = torch.where(z >= 0, 1 - x, x).clamp_min(0)  # how far each coordinate may move in z's direction
    boxed = torch.minimum(magnitude, room)
    total = boxed.sum(dim=1)
    # ‖δ(λ)‖₁ = Σ min(max(|z|-λ, 0), room) decreases with slope -1 per coordinate on [|z|-room, |z|].
    starts = (magnitude - room).clamp_min(0)
    events = torch.cat([starts, magnitude], dim=1)
    slopes = torch.cat([-torch.ones_like(starts), torch.ones_like(magnitude)], dim=1)
    events, order = events.sort(dim=1)
    slope_after = slopes.gather(1, order).cumsum(dim=1)
    gaps = events.diff(dim=1)
    values = torch.cat([total.unsqueeze(1), total.unsqueeze(1) + (slope_after[:, :-1] * gaps).cumsum(dim=1)], dim=1)
    index = (values <= eps).to(torch.int8).argmax(dim=1).clamp_min(1)  # first breakpoint at or below ε
    before = (index - 1).unsqueeze(1)
    lam = events.gather(1, before) + (values.gather(1, before) - eps) / (-slope_after.gather(1, before)).clamp_min(1)
    lam = torch.where((total <= eps).unsqueeze(1), torch.zeros_like(lam), lam)
    projected = z.sign() * torch.minimum((magnitude - lam).clamp_min(0), room)
    return _shrink_to_budget(projected, eps, 1.0).view_as(delta).to(delta.dtype)


def _shrink_to_budget(delta: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    """Guard against rounding: scale any example whose norm exceeds ε back inside (stays in the box).

    The norm is taken in the input's dtype (relative error near 1e-7 in float32), far inside the 1e-5 relative
    tolerance of the runner's budget check; a float64 copy of every perturbation would cost more than the projection.
    """
    norms = torch.linalg.vector_norm(delta, ord=p, dim=1, keepdim=True).double()
    over = norms > eps
    if not bool(over.any()):
        return delta
    factor = torch.where(over, eps / norms.clamp_min(1e-300), torch.ones_like(norms))
    return delta * factor.to(delta.dtype)
