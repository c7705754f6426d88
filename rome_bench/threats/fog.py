"""Fog (Kang et al. 2019; advex-uar's fog attack): an adversarial diamond-square fog map blended into the image.

``eps`` is in 0–255 pixel units (paper ε = 12). A diamond-square fog map ``f`` ∈ [0,1]^{H×W}, shared by the channels,
is built from 3·log2(M) random grids (M = 2^(⌊log2 H⌋+1), the map is cropped to the image; ``wibble_decay`` = 2) with
entries in [0,1]; the output is ``(x + e·f) / (max_c x + e)`` with ``e = ε/255`` and ``max_c x`` each channel's
maximum over the image. Even ε = 0 rescales each channel by its maximum. The grids start uniform in [0,1] (as in
advex-uar) and are optimised by :class:`~rome_bench.threats.uar_noise.UARNoise`.

``budget()`` verifies the ℓ∞ distance (image units) from the output to the fog set of strength ε,
{(x + e·f)/(max_c x + e) : f ∈ [0,1]^{H×W}}, ≤ 1e-5; the fog map is recovered from the images.

Deviation from advex-uar: the map is min-max normalised per example (advex-uar normalises over the whole batch, so an
example's fog depends on the other examples in its batch). Kept from advex-uar although it looks unintended: the
diamond step pairs a centre with the centre two rows (columns) away (``roll(…, 2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, BudgetCheck, register_threat
from rome_bench.threats.uar_noise import Params, UARNoise


def fog_map_size(height: int, width: int) -> int:
    """advex-uar's diamond-square map side: 2^(⌊log2 side⌋ + 1), strictly larger than the image."""
    return 2 ** (int(math.log2(max(height, width))) + 1)


def diamond_square(grids: Params, map_size: int, wibble_decay: float) -> torch.Tensor:
    """Differentiable diamond-square map (B, 1, M, M) from 3·log2(M) grids in [0,1], min-max scaled per example.

    At step size s the grids of level i (shape (B, 2^i, 2^i)) add ``wibble·(2·grid − 1)`` to the mean of the four
    neighbours (square step: the four corners; diamond steps: two corners and two centres); wibble starts at 100 and
    is divided by ``wibble_decay`` after each level.
    """
    batch = grids[0].shape[0]
    fog = grids[0].new_zeros(batch, map_size, map_size)
    wibble, step, index = 100.0, map_size, 0

    def jitter(total: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return total / 4 + wibble * (2 * grid - 1)

    while step >= 2:
        half = step // 2
        corners = fog[:, ::step, ::step].clone()
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        fog[:, half::step, half::step] = jitter(square, grids[index])
        centres = fog[:, half::step, half::step].clone()
        across = centres + centres.roll(2, 1) + corners + corners.roll(-1, 2)
        fog[:, ::step, half::step] = jitter(across, grids[index + 1])
        down = centres + centres.roll(2, 2) + corners + corners.roll(-1, 1)
        fog[:, half::step, ::step] = jitter(down, grids[index + 2])
        index += 3
        step = half
        wibble /= wibble_decay
    flat = fog.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1)
    return ((fog - low) / (high - low).clamp_min(1e-12)).unsqueeze(1)


def apply_fog(images: torch.Tensor, fog: torch.Tensor, strength: float) -> torch.Tensor:
    """(x + e·f) / (max_c x + e) with e = ε/255 and f ∈ [0,1] (B,1,H,W); stays in [0,1] without clamping."""
    e = strength / 255
    peak = images.amax(dim=(2, 3), keepdim=True)
    return ((images + e * fog) / (peak + e).clamp_min(1e-12)).clamp(0, 1)


@dataclass(frozen=True)
class FogBudget(Budget):
    """ℓ∞ distance (image units) from x_adv to {(x + e·f)/(max_c x + e) : f ∈ [0,1]^{H×W}}, e = ε/255."""

    eps: float
    tolerance: float = 1e-5

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        x, y = clean.double(), perturbed.double()
        e = self.eps / 255
        peak = x.amax(dim=(2, 3), keepdim=True)
        if e > 0:
            recovered = ((y * (peak + e) - x) / e).mean(dim=1, keepdim=True).clamp(0, 1)
        else:
            recovered = torch.zeros_like(y[:, :1])
        nearest = (x + e * recovered) / (peak + e).clamp_min(1e-12)
        measured = (y - nearest).abs().flatten(1).amax(dim=1)
        return BudgetCheck(measured, self.tolerance, f"ℓ∞ distance to the fog set of strength ε={self.eps:g}")


@register_threat("fog", tag="unseen", column="fog")
class Fog(UARNoise):
    """Fog (Kang et al. 2019): an adversarial diamond-square fog map blended into the image, ε in 0–255 units."""

    def __init__(self, eps: float = 12.0, steps: int = 100, step_size: float | None = None,
                 wibble_decay: float = 2.0) -> None:
        super().__init__(eps, steps, step_size)
        if wibble_decay <= 0:
            raise ConfigError(f"fog: wibble_decay must be > 0, got {wibble_decay}")
        self.wibble_decay = float(wibble_decay)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "wibble_decay": self.wibble_decay}

    def budget(self) -> Budget:
        return FogBudget(self.eps)

    def start(self, images: torch.Tensor) -> tuple[Params, Any]:
        height, width = images.shape[-2:]
        map_size = fog_map_size(height, width)
        levels = int(math.log2(map_size))
        grids = [torch.rand(len(images), 2**level, 2**level, device=images.device, dtype=images.dtype)
                 for level in range(levels) for _ in range(3)]
        return grids, map_size

    def render(self, images: torch.Tensor, params: Params, context: Any) -> torch.Tensor:
        map_size = context
        height, width = images.shape[-2:]
        top, left = (map_size - height) // 2, (map_size - width) // 2
        fog = diamond_square(params, map_size, self.wibble_decay)[:, :, top:top + height, left:left + width]
        return apply_fog(images, fog, self.eps)

    def project(self, params: Params, context: Any) -> Params:
        return [p.clamp(0, 1) for p in params]
