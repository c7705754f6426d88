"""Gabor (Kang et al. 2019; advex-uar's gabor attack): adversarial Gabor noise added to the image.

``eps`` is in 0–255 pixel units (paper ε = 60). Per example a random 23×23 Gabor kernel with 1–10 sides is convolved
with a variable map v ∈ [-1,1]^{H×W}, the result is spectrally variance-normalised and min-max scaled to g ∈ [0,1]
(shared by the channels), and the output is ``clip(x + (ε/255)·g, 0, 1)``: only brightening, at most ε/255 per pixel.
The variables start sparse, as in advex-uar (a ``density`` = 1/14 fraction of positions, values uniform in [-1,1]),
and are optimised by :class:`~rome_bench.threats.uar_noise.UARNoise`.

``budget()`` verifies ‖x_adv − x‖∞ ≤ ε/255 (an exact consequence of the rendering, g ∈ [0,1]).

Deviations from advex-uar: each example gets exactly round(density·H·W) initial non-zeros (advex-uar draws that count
over the whole batch); the spectral variance of advex-uar (rfft2 followed by irfft2 of (v − mean)², an identity) is
computed directly as |v − mean|; a constant map renders as g = 0 instead of NaN (perceptual-advex zeroes NaN
outputs). Kept from advex-uar although it looks unintended: the mask frees the positions where the sparse
initialisation is *zero* and freezes its support at 0 after the first step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, LpBudget, per_example, register_threat
from rome_bench.threats.uar_noise import Params, UARNoise


def gabor_kernels(size: int, sides: torch.Tensor, sigma: torch.Tensor, frequency: torch.Tensor,
                  theta: torch.Tensor) -> torch.Tensor:
    """(B, 1, size, size) sums of ``sides`` Gabor filters rotated by π/sides, on a [-½, ½]² grid (float64)."""
    sides, sigma, frequency, theta = (v.double() for v in (sides, sigma, frequency, theta))
    axis = torch.linspace(-0.5, 0.5, size, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    max_sides = int(sides.max())
    turns = torch.arange(max_sides, dtype=torch.float64)
    angles = theta[:, None] + math.pi * turns[None, :] / sides[:, None]  # (B, S)
    active = (turns[None, :] < sides[:, None]).double()
    cos, sin = angles.cos()[..., None, None], angles.sin()[..., None, None]
    along = x * cos + y * sin
    ortho = -x * sin + y * cos
    width = (sigma[:, None, None, None] + 1e-3) ** 2
    envelope = torch.exp(-0.5 * (along**2 + ortho**2) / width)
    wave = torch.cos(2 * math.pi * frequency[:, None, None, None] * along)
    return ((envelope * wave) * active[..., None, None]).sum(dim=1, keepdim=True)


def _minmax(values: torch.Tensor) -> torch.Tensor:
    """Per-example min-max scaling to [0,1] with detached extremes (a constant map becomes 0)."""
    flat = values.flatten(1)
    low = per_example(flat.min(dim=1).values.detach(), values)
    high = per_example(flat.max(dim=1).values.detach(), values)
    return (values - low) / (high - low).clamp_min(1e-12)


def gabor_noise(variables: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) noise in [0,1]: per-example convolution, spectral variance normalisation, min-max scaling.

    With m the mean and c = |v − m| / max|v − m| (advex-uar computes c via an FFT round trip), the map is
    m + (v − m)·(1.001 / (0.001 + c)) with m and the factor detached, then min-max scaled.
    """
    batch, _, height, width = variables.shape
    pad = kernels.shape[-1] // 2
    conv = F.conv2d(variables.reshape(1, batch, height, width), kernels, padding=pad, groups=batch)
    conv = conv.reshape(batch, 1, height, width)
    mean = conv.mean(dim=(1, 2, 3), keepdim=True).detach()
    spread = (conv - mean).abs().detach()
    spread = spread / per_example(spread.flatten(1).amax(dim=1).clamp_min(1e-30), spread)
    gain = (1 + 1e-3) / (1e-3 + spread)
    return _minmax(mean + (conv - mean) * gain)


@register_threat("gabor", tag="unseen", column="gabor")
class Gabor(UARNoise):
    """Gabor (Kang et al. 2019): adversarial Gabor noise added to the image, ε in 0–255 pixel units (ℓ∞ ε/255)."""

    def __init__(self, eps: float = 60.0, steps: int = 100, step_size: float | None = None, kernel_size: int = 23,
                 max_sides: int = 10, sigma_low: float = 0.1, sigma_high: float = 0.4,
                 density: float = 1 / 14) -> None:
        super().__init__(eps, steps, step_size)
        if kernel_size < 3 or kernel_size % 2 == 0 or max_sides < 1 or not 0 < sigma_low <= sigma_high \
                or not 0 <= density < 1:
            raise ConfigError(f"gabor: need odd kernel_size >= 3, max_sides >= 1, 0 < sigma_low <= sigma_high and "
                             f"density in [0, 1) (got {kernel_size}, {max_sides}, {sigma_low}, {sigma_high}, "
                             f"{density})")
        self.kernel_size = int(kernel_size)
        self.max_sides = int(max_sides)
        self.sigma_low = float(sigma_low)
        self.sigma_high = float(sigma_high)
        self.density = float(density)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kernel_size": self.kernel_size, "max_sides": self.max_sides,
                "sigma_low": self.sigma_low, "sigma_high": self.sigma_high, "density": self.density}

    def budget(self) -> Budget:
        return LpBudget("linf", self.eps / 255)

    def start(self, images: torch.Tensor) -> tuple[Params, Any]:
        batch, _, height, width = images.shape
        uniform = torch.rand(batch, 4, dtype=torch.float64)
        sides = torch.randint(1, self.max_sides + 1, (batch,)).double()
        sigma = self.sigma_low + (self.sigma_high - self.sigma_low) * uniform[:, 0]
        frequency = (self.kernel_size / 4 - 3) * uniform[:, 1] + 3
        theta = math.pi * uniform[:, 2]
        kernels = gabor_kernels(self.kernel_size, sides, sigma, frequency, theta).to(images)
        count = round(self.density * height * width)
        order = torch.rand(batch, height * width, device=images.device).argsort(dim=1)
        support = torch.zeros(batch, height * width, dtype=torch.bool, device=images.device)
        support.scatter_(1, order[:, :count], True)
        values = torch.rand(batch, height * width, device=images.device, dtype=images.dtype) * 2 - 1
        variables = (values * support).view(batch, 1, height, width)
        free = (variables == 0).to(images.dtype)
        return [variables], (kernels, free)

    def render(self, images: torch.Tensor, params: Params, context: Any) -> torch.Tensor:
        kernels, _ = context
        return (images + self.eps / 255 * gabor_noise(params[0], kernels)).clamp(0, 1)

    def project(self, params: Params, context: Any) -> Params:
        _, free = context
        return [params[0].clamp(-1, 1) * free]

