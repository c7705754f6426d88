"""Fog, Snow and Gabor: the procedural-noise threats of Kang et al. 2019, "Testing robustness against unforeseen
adversaries" (reference code: ``advex-uar``), as used by Laidlaw et al. 2021 and the RoME paper (Sec. A1).

Each threat renders a perturbed image from a small set of bounded parameters and optimises the parameters with
signed-gradient ascent on the cross-entropy loss, projecting them back onto their feasible set after every step.
ε does not bound the parameters: as in advex-uar, the parameters live in fixed boxes and ε scales the rendered
noise. The units of ε are advex-uar's (its attacks work on 0–255 pixels):

* **fog** (``eps`` in 0–255 pixel units, paper ε = 12): a diamond-square fog map ``f`` ∈ [0,1]^{H×W}, shared by the
  channels, built from 3·log2(M) random grids (M = 2^(⌊log2 H⌋+1), the map is cropped to the image; ``wibble_decay``
  = 2) with entries in [0,1]; the output is ``(x + e·f) / (max_c x + e)`` with ``e = ε/255`` and ``max_c x`` each
  channel's maximum over the image. Even ε = 0 rescales each channel by its maximum.
* **snow** (``eps`` in [0,1] image units, as advex-uar's ``apply_snow`` works on ``img/255``; paper ε = 0.5): flake
  intensities θ ∈ [1e-9, 1] on seven interleaved stride-4 grids, each block of 8×8 flakes with mean ≤
  ``flake_budget`` = 0.2, are raised to the 4th power and convolved with seven random 13×13 streak kernels (drawn
  once per call, shared by the batch); the output is ``clip(0.75·x + 0.25·max(x, 1.5·lum(x) + 0.5) + ε·snow, 0, 1)``.
  The discolouring term is applied even at ε = 0.
* **gabor** (``eps`` in 0–255 pixel units, paper ε = 60): per example a random 23×23 Gabor kernel with 1–10 sides
  is convolved with a variable map v ∈ [-1,1]^{H×W}, the result is spectrally variance-normalised and min-max scaled
  to g ∈ [0,1] (shared by the channels), and the output is ``clip(x + (ε/255)·g, 0, 1)``: only brightening, at most
  ε/255 per pixel.

Step size: advex-uar's rule ``ε/√steps`` (``get_step_size``; perceptual-advex's ``UARAttack`` uses the same
default), applied to the parameters directly. For the paper settings (100 steps) this is 1.2 for fog and 6 for gabor,
so each step moves every parameter to a face of its box, and 0.05 for snow. Initialisation as in advex-uar: fog grids
uniform in [0,1]; snow intensities ``exp(-U/flake_budget)``; gabor variables sparse (a ``density`` = 1/14 fraction
of positions, values uniform in [-1,1]).

Evaluation protocol (house rule, not in advex-uar): per example the first iterate the model misclassifies is kept,
else the last iterate, so with a fixed seed and step size more steps never make an attack weaker.

What ``budget()`` verifies (from the clean and perturbed images; advex-uar bounds parameters, not pixels):

* fog: the ℓ∞ distance (image units) from the output to the fog set of strength ε,
  {(x + e·f)/(max_c x + e) : f ∈ [0,1]^{H×W}}, ≤ 1e-5; the fog map is recovered from the images.
* gabor: ‖x_adv − x‖∞ ≤ ε/255 (an exact consequence of the rendering, g ∈ [0,1]).
* snow: the snow layer cannot be recovered from images alone (its kernels are random), so the threat records the
  flake intensities and kernels behind each returned image and the budget verifies both that the output is their
  rendering at strength ε and that the intensities are feasible (in [0,1], block means ≤ ``flake_budget``): the
  measured value is the larger of the ℓ∞ re-rendering error and the constraint violation, ≤ 1e-5.

Deviations from advex-uar, all to make the threats batch-independent, deterministic and well defined:

* fog: the map is min-max normalised per example (advex-uar normalises over the whole batch, so an example's fog
  depends on the other examples in its batch).
* snow: the intensities are projected (clamped and budget-rescaled) at initialisation and after every step,
  including the last (advex-uar skips the projection before the first and after the last step, so its final
  intensities may leave [0,1]).
* gabor: each example gets exactly round(density·H·W) initial non-zeros (advex-uar draws that count over the whole
  batch); the spectral variance of advex-uar (rfft2 followed by irfft2 of (v − mean)², an identity) is computed
  directly as |v − mean|; a constant map renders as g = 0 instead of NaN (perceptual-advex zeroes NaN outputs).
* Kept from advex-uar although they look unintended: fog's diamond step pairs a centre with the centre two rows
  (columns) away (``roll(…, 2)``); gabor's mask frees the positions where the sparse initialisation is *zero* and
  freezes its support at 0 after the first step; the snow line width scales with √(1+|slope|)/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.threats.base import Budget, BudgetCheck, LpBudget, Threat, per_example, register_threat

Params = list[torch.Tensor]
LUMINANCE = (0.2126, 0.7152, 0.0722)


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


# ----------------------------------------------------------------------------------------------------------- fog


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


# ---------------------------------------------------------------------------------------------------------- snow

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


# --------------------------------------------------------------------------------------------------------- gabor


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

