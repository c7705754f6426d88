"""Snow (Kang et al. 2019; advex-uar's snow attack): adversarial flake intensities under random streak kernels.

``eps`` is in [0,1] image units, as advex-uar's ``apply_snow`` works on ``img/255`` (paper ε = 0.5). Flake intensities
θ ∈ [1e-9, 1] on seven interleaved stride-4 grids, each block of 8×8 flakes with mean ≤ ``flake_budget`` = 0.2, are
raised to the 4th power and convolved with seven random 13×13 streak kernels (drawn once per call, shared by the
batch); the output is ``clip(0.75·x + 0.25·max(x, 1.5·lum(x) + 0.5) + ε·snow, 0, 1)``. The discolouring term is
applied even at ε = 0. The intensities start at ``exp(-U/flake_budget)`` (as in advex-uar) and are optimised by
:class:`~rome_bench.threats.uar_noise.UARNoise`.

``budget()``: the snow layer cannot be recovered from images alone (its kernels are random), so the threat records the
flake intensities and kernels behind each returned image and the budget verifies both that the output is their
rendering at strength ε and that the intensities are feasible (in [0,1], block means ≤ ``flake_budget``): the
measured value is the larger of the ℓ∞ re-rendering error and the constraint violation, ≤ 1e-5.

Deviation from advex-uar: the intensities are projected (clamped and budget-rescaled) at initialisation and after
every step, including the last (advex-uar skips the projection before the first and after the last step, so its
final intensities may leave [0,1]). Kept from advex-uar although it looks unintended: the line width scales with
√(1+|slope|)/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, BudgetCheck, register_threat
from rome_bench.threats.uar_noise import Params, UARNoise

LUMINANCE = (0.2126, 0.7152, 0.0722)
SNOW_KERNELS = 7
SNOW_STRIDE = 4
SNOW_FLOOR = 1e-9


def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """A normalised (size, size) Gaussian centred in the window."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = profile[:, None] * profile[None, :]
    return kernel / kernel.sum()


def streak_kernel(size: int, end_row: int, end_col: int, width: int, flip: bool, blur: float) -> torch.Tensor:
    """One snow-flake streak (size, size), float64: an anti-aliased line through the centre, then a Gaussian blur.

    The half-line from the centre to (end_row, end_col) (both past the centre) is drawn with a trapezoidal profile
    of half-width w/2, w = width·√(1+|slope|)/2, over the lower-right quadrant; the upper-left quadrant is its 180°
    rotation; ``flip`` mirrors the kernel left-right; the blur has σ = ``blur`` and a ⌈5σ⌉ window.
    """
    mid = size // 2
    rise, run = end_row - mid, end_col - mid
    steep = run < rise
    major, minor_end = (rise, run) if steep else (run, rise)
    slope = minor_end / major
    half_width = width * math.sqrt(1 + abs(slope)) / 2 / 2
    along = torch.arange(major + 1, dtype=torch.float64)
    centre = mid + along * slope
    across = torch.arange(size, dtype=torch.float64)
    values = (1 + half_width - (across[None, :] - centre[:, None]).abs()).clamp(0, 1)
    values[:, :mid] = 0  # the line is confined to the lower-right quadrant
    kernel = torch.zeros(size, size, dtype=torch.float64)
    if steep:
        kernel[mid:mid + major + 1, :] = values
    else:
        kernel[:, mid:mid + major + 1] = values.T
    kernel[:mid + 1, :mid + 1] = kernel.flip(0, 1)[:mid + 1, :mid + 1]
    if flip:
        kernel = kernel.flip(1)
    window = math.ceil(5 * blur)
    gaussian = _gaussian_kernel(window, blur)
    blurred = F.conv2d(kernel[None, None], gaussian[None, None], padding=(window - 1) // 2)
    return blurred[0, 0]


def draw_snow_kernels(size: int) -> torch.Tensor:
    """advex-uar's seven random streaks (1, 7, size, size), float64 on the CPU, from torch's global RNG."""
    mid = size // 2
    flip = bool(torch.rand(()) < 0.5)
    widths = torch.tensor([1, 3, 5])
    kernels = []
    for _ in range(SNOW_KERNELS):
        end_row, end_col = (int(v) for v in torch.randint(mid + 2, size, (2,)))
        width = int(widths[torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), 1)])
        blur = 0.41 + 0.19 * float(torch.rand(()))
        kernels.append(streak_kernel(size, end_row, end_col, width, flip, blur))
    return torch.stack(kernels).unsqueeze(0)


def snow_layer(flakes: torch.Tensor, kernels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B,1,H,W) snow: flakes⁴ placed on seven interleaved stride-4 grids, each convolved with its streak."""
    grid = flakes.new_zeros(len(flakes), SNOW_KERNELS, height, width)
    power = flakes.pow(4)
    for k in range(4):  # kernels 0-3: rows 0 mod 4, columns k mod 4
        grid[:, k, ::SNOW_STRIDE, k::SNOW_STRIDE] = power[:, k]
    for k in range(3):  # kernels 4-6: rows k+1 mod 4, columns 0 mod 4
        grid[:, 4 + k, k + 1::SNOW_STRIDE, ::SNOW_STRIDE] = power[:, 4 + k]
    return F.conv2d(grid, kernels.to(flakes), padding=kernels.shape[-1] // 2)


def discolour(images: torch.Tensor, amount: float) -> torch.Tensor:
    """advex-uar's snow backdrop: (1−a)·x + a·max(x, 1.5·luminance(x) + 0.5)."""
    weights = images.new_tensor(LUMINANCE).view(1, 3, 1, 1)
    bright = (images * weights).sum(dim=1, keepdim=True) * 1.5 + 0.5
    return (1 - amount) * images + amount * torch.maximum(images, bright)


def apply_snow(images: torch.Tensor, snow: torch.Tensor, strength: float, amount: float) -> torch.Tensor:
    """clip(discolour(x) + ε·snow, 0, 1)."""
    return (discolour(images, amount) + strength * snow).clamp(0, 1)


def _block_means(flakes: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of each block×block tile of the flake grid (partial edge tiles average their own entries)."""
    height, width = flakes.shape[-2:]
    pad_h, pad_w = -height % block, -width % block
    sums = F.avg_pool2d(F.pad(flakes, (0, pad_w, 0, pad_h)), block, divisor_override=1)
    counts = F.avg_pool2d(F.pad(torch.ones_like(flakes[:1, :1]), (0, pad_w, 0, pad_h)), block, divisor_override=1)
    return sums / counts


def _expand_blocks(values: torch.Tensor, block: int, height: int, width: int) -> torch.Tensor:
    """Repeat per-tile values back to the flake grid."""
    return values.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :height, :width]


def project_flakes(flakes: torch.Tensor, flake_budget: float, block: int) -> torch.Tensor:
    """Clamp to [1e-9, 1], then scale every tile whose mean exceeds the budget down to mean = budget."""
    flakes = flakes.clamp(SNOW_FLOOR, 1)
    means = _block_means(flakes, block).clamp_min(flake_budget)
    return flakes * _expand_blocks(flake_budget / means, block, *flakes.shape[-2:])


@dataclass(frozen=True)
class SnowRecord:
    """The flake intensities behind each returned image and the call's kernels."""

    flakes: torch.Tensor
    kernels: torch.Tensor


@dataclass(frozen=True)
class SnowBudget(Budget):
    """max(ℓ∞ error of re-rendering x_adv from the recorded flakes at strength ε, flake-constraint violation)."""

    eps: float
    discolor: float
    flake_budget: float
    block_size: int
    record: SnowRecord | None
    tolerance: float = 1e-5

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        description = f"snow re-rendering error / flake-constraint violation at ε={self.eps:g}"
        if self.record is None or len(self.record.flakes) != len(clean):
            infinite = torch.full((len(clean),), float("inf"), dtype=torch.float64)
            return BudgetCheck(infinite, self.tolerance, description + " (no recorded snow call for this batch)")
        flakes = self.record.flakes.to(clean.device, torch.float64)
        snow = snow_layer(flakes, self.record.kernels.to(clean.device), *clean.shape[-2:])
        expected = apply_snow(clean.double(), snow, self.eps, self.discolor)
        error = (perturbed.double() - expected).abs().flatten(1).amax(dim=1)
        box = torch.maximum(SNOW_FLOOR - flakes, flakes - 1).clamp_min(0).flatten(1).amax(dim=1)
        means = _block_means(flakes, self.block_size)
        over = ((means - self.flake_budget) / self.flake_budget - 1e-6).clamp_min(0).flatten(1).amax(dim=1)
        return BudgetCheck(torch.maximum(error, torch.maximum(box, over)).cpu(), self.tolerance, description)


@register_threat("snow", tag="unseen", column="snow")
class Snow(UARNoise):
    """Snow (Kang et al. 2019): adversarial flake intensities under streak kernels, ε in [0,1] image units."""

    def __init__(self, eps: float = 0.5, steps: int = 100, step_size: float | None = None,
                 flake_budget: float = 0.2, discolor: float = 0.25, kernel_size: int = 13,
                 block_size: int = 8) -> None:
        super().__init__(eps, steps, step_size)
        if not 0 < flake_budget <= 1 or kernel_size < 5 or kernel_size % 2 == 0 or block_size < 1:
            raise ConfigError(f"snow: need 0 < flake_budget <= 1, odd kernel_size >= 5 and block_size >= 1 (got "
                             f"{flake_budget}, {kernel_size}, {block_size})")
        self.flake_budget = float(flake_budget)
        self.discolor = float(discolor)
        self.kernel_size = int(kernel_size)
        self.block_size = int(block_size)
        self._record: SnowRecord | None = None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "flake_budget": self.flake_budget, "discolor": self.discolor,
                "kernel_size": self.kernel_size, "block_size": self.block_size}

    def budget(self) -> Budget:
        return SnowBudget(self.eps, self.discolor, self.flake_budget, self.block_size, self._record)

    def start(self, images: torch.Tensor) -> tuple[Params, Any]:
        height, width = images.shape[-2:]
        if height % SNOW_STRIDE or width % SNOW_STRIDE:
            raise ConfigError(f"snow: image sides must be multiples of {SNOW_STRIDE}, got {height}×{width}")
        kernels = draw_snow_kernels(self.kernel_size)
        uniform = torch.rand(len(images), SNOW_KERNELS, height // SNOW_STRIDE, width // SNOW_STRIDE,
                             device=images.device, dtype=images.dtype)
        flakes = torch.exp(-uniform / self.flake_budget)
        return self.project([flakes], kernels), kernels.to(images)

    def render(self, images: torch.Tensor, params: Params, context: Any) -> torch.Tensor:
        return apply_snow(images, snow_layer(params[0], context, *images.shape[-2:]), self.eps, self.discolor)

    def project(self, params: Params, context: Any) -> Params:
        return [project_flakes(params[0], self.flake_budget, self.block_size)]

    def record(self, params: Params, context: Any) -> None:
        self._record = SnowRecord(params[0].detach().double(), context.detach().double())
