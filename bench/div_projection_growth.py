"""Is L_div bounded under each reading of Eq. 7's K -> K' projection? (issue 25, item 2; training/diversification.py)

Trains a micro RoME ViT on the routing loss alone, λ·L_div, with the cifar10 preset's optimiser (AdamW, lr 1e-3,
weight decay 0.05), on synthetic images under three "threats" that differ in kind (sign noise, Gaussian noise,
sparse pixels), and prints L_div, its global term and the mean ‖P‖_F of the projections as the steps go:

    python bench/div_projection_growth.py --steps 400

A reading whose L_div keeps falling while ‖P‖ grows is unbounded: the loss then measures the projection's scale,
not how far apart the threats' gates are.
"""

from __future__ import annotations

import argparse

import torch

from rome_bench.config import ModelConfig
from rome_bench.data import SYNTHETIC_INFO
from rome_bench.models import create_model
from rome_bench.models.gates import gates, gating_modules
from rome_bench.presets import preset
from rome_bench.training.diversification import (
    OWNED,
    DiversificationLoss,
    global_means,
    pairwise_distance_sum,
    squared_l2,
)
from rome_bench.training.optim import build_optimizer

READINGS = ("per-layer", "trainable", "fixed")


def threat_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Three perturbed copies of ``images`` (sign noise, Gaussian noise, sparse pixels) and their threat ids."""
    generator = torch.Generator().manual_seed(1)
    sign = images + 8 / 255 * torch.randn(images.shape, generator=generator).sign()
    gaussian = images + 0.25 * torch.randn(images.shape, generator=generator)
    sparse = torch.where(torch.rand(images.shape, generator=generator) < 0.02, 1 - images, images)
    batch = torch.cat([sign, gaussian, sparse]).clamp(0, 1)
    return batch, torch.arange(3).repeat_interleave(len(images))


def global_loss(outputs: list, ids: torch.Tensor, projection: torch.Tensor | str) -> torch.Tensor:
    """(1/L) Σ_l L_div-global^(l) (Eq. 7-8 without the local term)."""
    terms = [-pairwise_distance_sum(global_means(gate, ids, projection, "l2"), squared_l2) for gate in outputs]
    return torch.stack(terms).mean().detach()


def run(reading: str, steps: int, report: list[int]) -> None:
    torch.manual_seed(0)
    config = ModelConfig(backbone="vit_micro", options={"div_projection": reading})
    model = create_model(config, SYNTHETIC_INFO)
    loss_fn = DiversificationLoss(4, 100, weight=0.1, projection=reading)
    optimizer = build_optimizer(list(model.parameters()), preset("cifar10").train)
    images = torch.rand(16, 3, SYNTHETIC_INFO.image_size, SYNTHETIC_INFO.image_size,
                        generator=torch.Generator().manual_seed(0))
    batch, ids = threat_batch(images)
    model.train()
    for step in range(steps + 1):
        model(batch)
        loss = loss_fn(gates(model), ids)
        if step in report:
            global_term = global_loss(gates(model), ids, loss_fn.matrix if reading == "fixed" else OWNED)
            norms = [float(m.div_projection.weight.detach().norm()) for m in gating_modules(model)
                     if m.div_projection is not None]
            norm = sum(norms) / len(norms) if norms else float(loss_fn.matrix.norm())
            print(f"{reading:9s} step {step:4d}  λ·L_div {float(loss.detach()):+.4e}  "
                  f"L_div-global {float(global_term):+.4e}  mean ‖P‖_F {norm:.3f}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--readings", default=",".join(READINGS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = sorted({0, args.steps // 8, args.steps // 4, args.steps // 2, args.steps})
    for reading in args.readings.split(","):
        run(reading, args.steps, report)


if __name__ == "__main__":
    main()
