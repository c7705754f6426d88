"""Several PGD training attacks in one batched pass: one forward/backward per iteration for all threats.

A multi-threat recipe (MAX, AVG) attacks every example with the ℓ1, ℓ2 and ℓ∞ PGD; run one after another that
is Σ_p n_p forward/backward passes over B images. Here the P perturbations are one stacked batch δ = [δ_1; …; δ_P]
(slice p: threat p's examples) and iteration t is

    g = ∇_x Σ_p Σ_{i ∈ slice p} CE(f(x), y_i) at x = clip(x_i + δ_i)  (one forward/backward over the active slices)
    δ_p ← Π_p(δ_p + α_p · d_p(g_p))                                   (each slice: its own step, direction, projection)

for every threat p with t < n_p; a threat whose n_p steps are done is frozen and leaves the stacked batch, so the
work is Σ_t (number of active threats) · B images, as before, in max_p n_p passes instead of Σ_p n_p. Because the
loss is a sum of per-example terms, g_p equals the gradient the threat's own pass computes — *provided the model's
output for an example does not depend on the other examples of the batch*. That holds for every model here in eval
mode (attacks run in eval mode): ViT/DeiT/Swin/XCiT (no batch statistics), BatchNorm nets (running statistics in
eval mode), and RoME/adapter/FFN experts with soft gates (each token's and image's gates read only that image). It
does not hold for routing with batch-level capacity (top-k dispatch with a capacity factor, token dropping) or for
models that normalise over the batch in eval mode: do not batch those.

Random starts are drawn in threat order before the first iteration, each with the shapes its own pass uses, from
the global torch RNG: exactly the draws of the sequential attacks, since a PGD step draws nothing (except ℓ1 PGD
with ``random_sparsity``, whose per-step draws then come in another order). So batched and sequential give the same
adversarial examples up to float rounding (a stacked matmul is not bit-identical to separate ones); that is why
batching is an option (``train.options.batched_attacks``), off by default, and bit-exact resume holds within either
mode. Only plain PGD with the last iterate (``keep_adversarial=False``, the training rule) and the cross-entropy
objective is batched; the training APGD (``--train-attack apgd``) is not.

Speed (``bench/batched_attacks.py``, MAX, one training step, 2-core CPU shared with other jobs, median of 3):
sequential / batched = 1.03 and 0.96 for vit_smoke at batch 32 and 64, 0.96 and 0.85 for vit_small (13.3 s vs
13.8 s, 28.9 s vs 33.9 s), 1.11 and 1.00 for RoME on vit_smoke. A CPU is already busy at B = 32, so stacking
gains nothing there; the pass count drops from Σ_p n_p to max_p n_p (13 → 5 at smoke, 50 → 20 on CIFAR-10), which
pays where one batch of B leaves the device idle (a GPU at small B). Not yet measured on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats import Threat
from rome_bench.threats.base import Budget
from rome_bench.threats.pgd import PGD, _in_box
from rome_bench.training.recipe import StepContext


def batchable(threat: Threat) -> bool:
    """Plain cross-entropy PGD returning its last iterate: what :class:`BatchedPGD` reproduces."""
    return (isinstance(threat, PGD) and not threat.keep_adversarial
            and type(threat).objective is PGD.objective and type(threat).prepare is PGD.prepare)


def check_batchable(threats: list[Threat]) -> None:
    """One-line ConfigError naming the first threat the batched pass cannot run."""
    for threat in threats:
        if not batchable(threat):
            raise ConfigError(f"train.options.batched_attacks=true batches plain PGD training attacks only, got "
                              f"{threat.name}; use --train-attack pgd or set train.options.batched_attacks=false")


@dataclass(frozen=True)
class Slice:
    """Rows start … stop−1 of the stacked batch belong to ``threat``."""

    threat: PGD
    start: int
    stop: int


class BatchedPGD(Threat):
    """PGD threats on consecutive slices of one stacked batch, stepped together (not registered: built per call)."""

    name = "batched-pgd"

    def __init__(self, threats: list[Threat], sizes: list[int]) -> None:
        check_batchable(threats)
        if len(threats) != len(sizes) or any(size < 1 for size in sizes):
            raise ConfigError(f"batched-pgd: one positive slice size per threat, got {sizes} for {len(threats)}")
        pgds = [threat for threat in threats if isinstance(threat, PGD)]
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        self.slices = [Slice(t, a, b) for t, a, b in zip(pgds, bounds[:-1], bounds[1:], strict=True)]

    def params(self) -> dict[str, Any]:
        return {"threats": [s.threat.key for s in self.slices], "sizes": [s.stop - s.start for s in self.slices]}

    def budget(self) -> Budget | None:
        return None  # each slice stays inside its own threat's budget (tested); no single budget covers them

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        parts = [images[s.start:s.stop] for s in self.slices]
        targets = [labels[s.start:s.stop] for s in self.slices]
        deltas = [random_start(s.threat, x) for s, x in zip(self.slices, parts, strict=True)]
        for step in range(max(s.threat.steps for s in self.slices)):
            active = [i for i, s in enumerate(self.slices) if step < s.threat.steps]
            inputs = torch.cat([_in_box(parts[i], deltas[i]) for i in active]).requires_grad_(True)
            loss = F.cross_entropy(model(inputs), torch.cat([targets[i] for i in active]), reduction="sum")
            (grad,) = torch.autograd.grad(loss, inputs)
            grads = grad.split([len(parts[i]) for i in active])
            with torch.no_grad():
                for i, part_grad in zip(active, grads, strict=True):
                    deltas[i] = ascent_step(self.slices[i].threat, parts[i], deltas[i], part_grad)
        with torch.no_grad():
            return torch.cat([_in_box(x, d) for x, d in zip(parts, deltas, strict=True)])


def random_start(threat: PGD, images: torch.Tensor) -> torch.Tensor:
    """The threat's own projected start (the same draws as its sequential call)."""
    delta = threat.start(images) if threat.random_start else torch.zeros_like(images)
    return threat.project(images, delta)


def ascent_step(threat: PGD, images: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One PGD iteration of ``threat`` from ``delta`` given the loss gradient: step, then exact projection."""
    direction = threat.ascent_direction(grad, images, delta)
    return threat.project(images, torch.add(delta, direction, alpha=threat.step_size))


def batched_attack_inputs(ctx: StepContext, threats: list[Threat], images: torch.Tensor, labels: torch.Tensor,
                          assignment: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """What the sequential ``adversarial_inputs`` returns (entry i: threat ``threat_ids[i]`` on example
    ``example_index[i]``), generated in one :class:`BatchedPGD` pass through ``ctx.attack`` (eval mode)."""
    example_index, threat_ids = assignment
    used = [(threat_id, threat) for threat_id, threat in enumerate(threats) if bool((threat_ids == threat_id).any())]
    picked = [example_index[threat_ids == threat_id] for threat_id, _ in used]
    order = torch.cat(picked)
    stacked = ctx.attack(BatchedPGD([threat for _, threat in used], [len(p) for p in picked]), images[order],
                         labels[order])
    adversarial = torch.empty((len(example_index), *images.shape[1:]), dtype=images.dtype, device=images.device)
    start = 0
    for (threat_id, _), rows in zip(used, picked, strict=True):
        adversarial[threat_ids == threat_id] = stacked[start:start + len(rows)]
        start += len(rows)
    return adversarial
