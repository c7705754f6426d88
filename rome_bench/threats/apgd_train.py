"""A *training* APGD-CE under ℓ∞, ℓ2 (Croce & Hein, ICML 2020) and ℓ1 (Croce & Hein, ICML 2021): the best-loss
iterate of every example, random start from the global torch RNG.

Registered as ``apgd-train-linf``, ``apgd-train-l2``, ``apgd-train-l1``; ``--train-attack apgd`` builds them
(``training/attacks.py``) with ``threats.apgd_steps`` iterations (15 in the RoME paper's Sec. 5.1; E-AT and RAMP
fine-tune with 10 on CIFAR-10).

The method: maximise the per-example cross-entropy L(x') over S = {‖x' − x‖_p ≤ ε} ∩ [0,1]^d, with P_S the exact
Euclidean projection onto S (``project_l2_box``/``project_l1_box`` of ``threats/pgd.py``; a clip for ℓ∞):

* ℓ∞, ℓ2 — Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
  diverse parameter-free attacks", Alg. 1)::

      z^(k+1) = P_S(x^(k) + η^(k) · s(∇L(x^(k))))          s = sign(g) (ℓ∞),  g/‖g‖₂ (ℓ2)
      x^(k+1) = P_S(x^(k) + α(z^(k+1) − x^(k)) + (1 − α)(x^(k) − x^(k−1)))      α = 0.75 (α = 1 for k = 0)

  with η^(0) = 2ε and checkpoints w_j = ⌈p_j N⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
  0.06). At each checkpoint an example halves its η and restarts from its best point x_max if
  (1) Σ_{i=w_{j−1}}^{w_j−1} 1[L(x^(i+1)) > L(x^(i))] < ρ·(w_j − w_{j−1}), ρ = 0.75, or
  (2) its η was not halved at w_{j−1} and its best loss did not improve since w_{j−1} (at w_1 compared with the
  start, as the paper writes it).
* ℓ1 — APGD-ℓ1 (Croce & Hein 2021, "Mind the box: ℓ1-APGD for sparse adversarial attacks on image
  classifiers"): the step moves the k coordinates with the largest |∇L| among those the box lets move in the
  gradient's direction, x^(k+1) = P_S(x^(k) + η · s/‖s‖₁) with s = sign(∇L) on those k coordinates, η^(0) = ε,
  no momentum. The sparsity adapts: every max(⌊0.04 N⌋, 1) iterations k becomes ‖x_max − x‖₀ / 1.5; if that
  sparsity shrank by more than 5 % since the last check, η is reset to ε and the example restarts from x_max,
  otherwise η is divided by 1.5 (kept within [ε/10, ε]). k starts at ``initial_sparsity``·d, 5 % here: the value
  of E-AT's training attack (Croce & Hein 2022's released code); APGD-ℓ1 for evaluation starts at 20 %.

What differs from the evaluation APGD (pyautoattack, ``threats/autoattack.py``): it returns each example's
best-loss iterate (evaluation: the first misclassified iterate, and it stops pushing an example once it is
wrong), it runs one restart, and it draws its random start from the global torch RNG, which the trainer saves in
every checkpoint (evaluation: it reseeds with seed 0 on every call). A random start is drawn (uniform in the ℓ∞
ball; a Gaussian direction scaled to ε for ℓ2; Gaussian noise projected onto the ℓ1 ball ∩ box for ℓ1, as
APGD does); E-AT's released training code instead starts at the clean image (``random_start=False`` here).
Deviation from the ℓ∞/ℓ2 paper: after a restart the momentum term is zero (x^(k−1) is set to x_max as well).
More iterations usually give a higher best loss, but not for every example: the checkpoints scale with N, so two
values of N follow different trajectories after w_1.

Could pyautoattack's ``APGDAttack`` be driven this way? Yes, in principle: ``perturb(x, y, best_loss=True)``
returns the highest-loss iterate and, unlike its default branch, does not call ``torch.manual_seed``, so its
random start comes from the global RNG. It is not reused because (a) its ℓ2 step "projects" by rescaling and
then clipping, which is not the Euclidean projection onto the ℓ2 ball ∩ box that every other ℓ2 threat here uses;
(b) its ℓ1 branch fixes the initial sparsity at the evaluation value (20 %) and picks the top-k coordinates
without excluding those the box blocks; (c) ``perturb`` spends an extra clean forward, casts inputs to float32,
remembers the device of its first call, and its ℓ1 projection moves index tensors to the CPU on every call; and
(d) after a restart its momentum term mixes in the pre-restart iterate. Implementing the algorithm here (about as
long as a wrapper that patches these) keeps one projection per norm across all threats and exposes each
example's best loss (:meth:`TrainingAPGD.run`) to the tests.
"""


from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, LpBudget, Threat, per_example, register_threat
from rome_bench.threats.pgd import project_l1_box, project_l2_box


@dataclass
class BestIterate:
    """What one attack call found: each example's best image, its loss, and the loss at its start point."""

    images: torch.Tensor
    loss: torch.Tensor
    start_loss: torch.Tensor


@dataclass
class SearchState:
    """Per-example state of the ascent (rows are examples)."""

    x: torch.Tensor  # the iterate x^(k)
    x_prev: torch.Tensor  # x^(k−1), for the momentum term
    loss: torch.Tensor  # L(x^(k)), shape (B,)
    grad: torch.Tensor  # ∇L(x^(k))
    best_x: torch.Tensor
    best_loss: torch.Tensor
    best_grad: torch.Tensor
    eta: torch.Tensor  # step size η, shape (B,)
    sparsity: torch.Tensor | None = None  # ℓ1 only: k/d, the fraction of coordinates one step moves

    def advance(self, candidate: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        self.x_prev, self.x, self.loss, self.grad = self.x, candidate, loss, grad
        improved = loss > self.best_loss
        rows = per_example(improved, candidate)
        self.best_x = torch.where(rows, candidate, self.best_x)
        self.best_grad = torch.where(rows, grad, self.best_grad)
        self.best_loss = torch.where(improved, loss, self.best_loss)

    def restart_from_best(self, rows: torch.Tensor) -> None:
        """The examples in ``rows`` continue from their best point, with a zero momentum term."""
        mask = per_example(rows, self.x)
        self.x = torch.where(mask, self.best_x, self.x)
        self.x_prev = torch.where(mask, self.best_x, self.x_prev)
        self.grad = torch.where(mask, self.best_grad, self.grad)
        self.loss = torch.where(rows, self.best_loss, self.loss)


def checkpoint_iterations(steps: int) -> list[int]:
    """APGD's checkpoints w_j = ⌈p_j N⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    points: list[int] = []
    previous, current = 0.0, 0.22
    while current <= 1.0:
        point = math.ceil(round(current * steps, 6))  # round: 0.41 + 0.16 is not exactly 0.57 in floats
        if point > (points[-1] if points else 0):
            points.append(point)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return points


def loss_and_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, with_gradient: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy at ``images`` and its input gradient (zeros when not asked for)."""
    if not with_gradient:
        with torch.no_grad():
            return F.cross_entropy(model(images), labels, reduction="none"), torch.zeros_like(images)
    with torch.enable_grad():
        inputs = images.detach().requires_grad_(True)
        loss = F.cross_entropy(model(inputs), labels, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), inputs)
    return loss.detach(), grad.detach()


class StepSchedule(ABC):
    """How a norm's APGD adapts its step (and, for ℓ1, its sparsity) during one call."""

    @abstractmethod
    def momentum(self, k: int) -> float:
        """α of iteration k (1 = no momentum)."""

    def count(self, increased: torch.Tensor) -> None:  # noqa: B027  (only the ℓ∞/ℓ2 schedule counts)
        """Whether each example's loss went up in the last iteration."""

    @abstractmethod
    def adapt(self, images: torch.Tensor, state: SearchState, iteration: int) -> None:
        """After ``iteration`` (1-based) steps: change step sizes and restart examples where the schedule says."""


class CheckpointHalving(StepSchedule):
    """ℓ∞/ℓ2 APGD: at each checkpoint halve η and restart from x_max where condition (1) or (2) holds."""

    def __init__(self, steps: int, momentum: float, rho: float, start_loss: torch.Tensor) -> None:
        self.checkpoints = set(checkpoint_iterations(steps))
        self.alpha = momentum
        self.rho = rho
        self.last_checkpoint = 0
        self.increases = torch.zeros_like(start_loss)
        self.halved_last = torch.zeros_like(start_loss, dtype=torch.bool)
        self.best_at_last = start_loss.clone()

    def momentum(self, k: int) -> float:
        return 1.0 if k == 0 else self.alpha

    def count(self, increased: torch.Tensor) -> None:
        self.increases += increased.to(self.increases.dtype)

    def adapt(self, images: torch.Tensor, state: SearchState, iteration: int) -> None:
        if iteration not in self.checkpoints:
            return
        too_few_increases = self.increases < self.rho * (iteration - self.last_checkpoint)
        stalled = ~self.halved_last & (state.best_loss <= self.best_at_last)
        halve = too_few_increases | stalled
        state.eta = torch.where(halve, state.eta / 2, state.eta)
        state.restart_from_best(halve)
        self.halved_last, self.best_at_last = halve, state.best_loss.clone()
        self.increases = torch.zeros_like(self.increases)
        self.last_checkpoint = iteration


class AdaptiveSparsity(StepSchedule):
    """APGD-ℓ1: every max(⌊0.04 N⌋, 1) iterations set k = ‖x_max − x‖₀ / 1.5 and reset or shrink η."""

    def __init__(self, steps: int, initial_step: float, images: torch.Tensor) -> None:
        self.every = max(int(0.04 * steps), 1)
        self.initial_step = initial_step
        self.dims = images[0].numel()
        self.previous_l0 = torch.full((len(images),), float(self.dims), device=images.device)

    def momentum(self, k: int) -> float:
        return 1.0

    def adapt(self, images: torch.Tensor, state: SearchState, iteration: int) -> None:
        if iteration % self.every:
            return
        l0 = (state.best_x - images).flatten(1).ne(0).sum(dim=1).to(self.previous_l0.dtype)
        shrank = l0 < 0.95 * self.previous_l0
        state.sparsity = l0 / (1.5 * self.dims)
        reduced = (state.eta / 1.5).clamp(self.initial_step / 10, self.initial_step)
        state.eta = torch.where(shrank, torch.full_like(state.eta, self.initial_step), reduced)
        self.previous_l0 = l0
        state.restart_from_best(shrank)


class TrainingAPGD(Threat):
    """APGD-CE returning each example's highest-loss iterate (a training attack)."""

    norm: ClassVar[str]
    initial_step: ClassVar[float]  # η^(0) / ε

    def __init__(self, eps: float, steps: int = 15, random_start: bool = True) -> None:
        if not (math.isfinite(eps) and eps > 0) or steps < 1:
            raise ConfigError(f"{self.name}: eps must be > 0 and steps >= 1 (got eps={eps}, steps={steps})")
        self.eps = float(eps)
        self.steps = int(steps)
        self.random_start = bool(random_start)

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "random_start": self.random_start}

    def budget(self) -> Budget:
        return LpBudget(self.norm, self.eps)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.run(model, images, labels).images

    def start_point(self, images: torch.Tensor) -> torch.Tensor:
        """x^(0): the clean images, or a random point of S (the call's first draw from the global torch RNG)."""
        if not self.random_start:
            return images.detach().clone()
        return self.project(images, images + self.random_delta(images))

    def run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> BestIterate:
        """The ascent from :meth:`start_point`; each example's best iterate (the start counts) with its loss."""
        images = images.detach()
        start = self.start_point(images)
        start_loss, grad = loss_and_gradient(model, start, labels, with_gradient=True)
        eta = torch.full((len(images),), self.initial_step * self.eps, device=images.device)
        state = SearchState(start, start, start_loss, grad, start, start_loss, grad, eta)
        schedule = self.schedule(images, state)
        for k in range(self.steps):
            with torch.no_grad():
                candidate = self.next_iterate(images, state, schedule.momentum(k))
            loss, grad = loss_and_gradient(model, candidate, labels, with_gradient=k < self.steps - 1)
            schedule.count(loss > state.loss)
            state.advance(candidate, loss, grad)
            schedule.adapt(images, state, k + 1)
        return BestIterate(state.best_x, state.best_loss, start_loss)

    def next_iterate(self, images: torch.Tensor, state: SearchState, alpha: float) -> torch.Tensor:
        """x^(k+1) = P_S(x + α(z − x) + (1 − α)(x − x_prev)), z = P_S(x + η·s(∇L(x)))."""
        step = per_example(state.eta, images) * self.direction(state.grad, state)
        z = self.project(images, state.x + step)
        if alpha == 1.0:
            return z
        return self.project(images, state.x + alpha * (z - state.x) + (1 - alpha) * (state.x - state.x_prev))

    @abstractmethod
    def schedule(self, images: torch.Tensor, state: SearchState) -> StepSchedule:
        """A fresh step-size schedule for one call (it may initialise per-example fields of ``state``)."""

    @abstractmethod
    def random_delta(self, images: torch.Tensor) -> torch.Tensor:
        """A random perturbation (projected onto S by the caller)."""

    @abstractmethod
    def direction(self, grad: torch.Tensor, state: SearchState) -> torch.Tensor:
        """The steepest-ascent direction of unit norm under this threat's norm."""

    @abstractmethod
    def project(self, images: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """P_S(candidate): the nearest point of {‖x' − images‖ ≤ ε} ∩ [0,1]^d."""


class MomentumAPGD(TrainingAPGD):
    """APGD for ℓ∞ and ℓ2: momentum α and step-size halving at checkpoints (threshold ρ)."""

    initial_step = 2.0

    def __init__(self, eps: float, steps: int = 15, random_start: bool = True, momentum: float = 0.75,
                 rho: float = 0.75) -> None:
        super().__init__(eps, steps, random_start)
        if not 0 < momentum <= 1 or not 0 < rho <= 1:
            raise ConfigError(f"{self.name}: momentum and rho must be in (0, 1] (got {momentum}, {rho})")
        self.momentum = float(momentum)
        self.rho = float(rho)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "momentum": self.momentum, "rho": self.rho}

    def schedule(self, images: torch.Tensor, state: SearchState) -> StepSchedule:
        return CheckpointHalving(self.steps, self.momentum, self.rho, state.loss)


@register_threat("apgd-train-linf", tag="seen", column="linf")
class LinfTrainingAPGD(MomentumAPGD):
    """Training APGD-CE under ℓ∞: best-loss iterate, random start from the global RNG."""

    norm = "linf"

    def random_delta(self, images: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(images).uniform_(-self.eps, self.eps)

    def direction(self, grad: torch.Tensor, state: SearchState) -> torch.Tensor:
        return grad.sign()

    def project(self, images: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(candidate, images - self.eps), images + self.eps).clamp(0, 1)


@register_threat("apgd-train-l2", tag="seen", column="l2")
class L2TrainingAPGD(MomentumAPGD):
    """Training APGD-CE under ℓ2: best-loss iterate, exact ℓ2-ball ∩ box projection."""

    norm = "l2"

    def random_delta(self, images: torch.Tensor) -> torch.Tensor:
        return self.eps * unit(torch.randn_like(images), p=2.0)

    def direction(self, grad: torch.Tensor, state: SearchState) -> torch.Tensor:
        return unit(grad, p=2.0)

    def project(self, images: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return (images + project_l2_box(candidate - images, images, self.eps)).clamp(0, 1)


@register_threat("apgd-train-l1", tag="seen", column="l1")
class L1TrainingAPGD(TrainingAPGD):
    """Training APGD-CE under ℓ1 (Mind the box): adaptive sparsity, exact ℓ1-ball ∩ box projection."""

    norm = "l1"
    initial_step = 1.0

    def __init__(self, eps: float, steps: int = 15, random_start: bool = True,
                 initial_sparsity: float = 0.05) -> None:
        super().__init__(eps, steps, random_start)
        if not 0 < initial_sparsity <= 1:
            raise ConfigError(f"{self.name}: initial_sparsity must be in (0, 1], got {initial_sparsity}")
        self.initial_sparsity = float(initial_sparsity)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "initial_sparsity": self.initial_sparsity}

    def schedule(self, images: torch.Tensor, state: SearchState) -> StepSchedule:
        state.sparsity = torch.full((len(images),), self.initial_sparsity, device=images.device)
        return AdaptiveSparsity(self.steps, self.initial_step * self.eps, images)

    def random_delta(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(images)  # projected onto the ℓ1 ball ∩ box by start_point, as APGD-ℓ1 does

    def direction(self, grad: torch.Tensor, state: SearchState) -> torch.Tensor:
        """sign(∇L) on the k = sparsity·d largest |∇L_i| the box lets move, divided by its ℓ1 norm."""
        assert state.sparsity is not None
        x = state.x
        blocked = ((x <= 0) & (grad < 0)) | ((x >= 1) & (grad > 0))
        magnitude = grad.abs().masked_fill(blocked, 0).flatten(1)
        dims = magnitude.shape[1]
        k = (state.sparsity * dims).round().clamp(1, dims).long()
        threshold = magnitude.sort(dim=1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
        chosen = (magnitude >= threshold) & (magnitude > 0)
        count = chosen.sum(dim=1, keepdim=True).clamp_min(1)
        return (grad.sign().flatten(1) * chosen / count).view_as(grad)

    def project(self, images: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return (images + project_l1_box(candidate - images, images, self.eps)).clamp(0, 1)


def unit(values: torch.Tensor, p: float) -> torch.Tensor:
    """Each example's slice divided by its ℓp norm (zero slices stay zero)."""
    norms = values.flatten(1).norm(p=p, dim=1).clamp_min(1e-12)
    return values / per_example(norms, values)
