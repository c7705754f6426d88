"""The UAR threats Elastic and JPEG-ℓ∞ (Kang et al. 2019, "Testing robustness against unforeseen adversaries").

Both are adversarial: signed-gradient ascent on the cross-entropy over parameters θ confined to the ℓ∞ box
‖θ‖∞ ≤ ε, and the output is a fixed, differentiable function x' = T(x, θ) of the clean image and θ. The RoME
paper (Sec. A1) follows Laidlaw et al. (perceptual-advex, which wraps advex-uar) and sets ε = 0.125 for both, with
100 iterations; those are the defaults here. The parameterisation, scaling of ε, kernels, colour space, tables,
random start and step rule follow advex-uar (``advex_uar/attacks/{elastic,jpeg}_attack.py``), re-implemented
batched and device-agnostic in plain torch.

**Elastic** (``elastic``, column "elastic"). θ is a flow field of shape (B, 2, H, W) (x then y displacement) in
*pixels*, exactly advex-uar's ``eps_max`` unit: advex-uar optimises the flow in grid_sample's [-1, 1] coordinates
bounded by ε·2/resolution, and a sign step is invariant to that constant factor, so optimising in pixels and
converting with 2/W (x) and 2/H (y) is the same attack. The flow is reflect-padded and smoothed by a normalised
Gaussian kernel (CIFAR settings of advex-uar: size 5, σ = 3/224·32 ≈ 0.43 px; ImageNet: 25 and 3; kornia's
``filter2d``, bit-identical to the pad + depthwise convolution it replaced), added to the
identity grid and applied with bilinear ``grid_sample``, zero padding, ``align_corners=True``. advex-uar builds
its identity grid with ``linspace(-1, 1, resol)``, which is the identity only under ``align_corners=True`` (the
only behaviour of the torch it was written for; torch ≥ 1.3 defaults to False). Hence one "pixel" of flow moves
the sampling point by (W−1)/W pixels of the image, as in the reference. Smoothing is a convex combination, so the
applied displacement is also ≤ ε.

**JPEG-ℓ∞** (``jpeg-linf``, column "jpeg"). The image (scaled to [0, 255]) goes to JFIF YCbCr, chroma is
subsampled 4:2:0 by 2×2 averaging, each channel is cut into 8×8 blocks (minus 128) and transformed by the
orthonormal 8×8 DCT-II (a matrix product C·B·Cᵀ), and divided by the standard JPEG luminance / chrominance
tables (ITU T.81 Annex K) times the quality factor (quality 50 → factor 1, which advex-uar always uses; the
scaled table is not rounded). advex-uar's "noisy rounding" replaces rounding by adding θ/2 to each quantised
coefficient, with θ ∈ [-ε, ε] (its ``cat_var``; the rounding offset is ε·(noise − ½) with noise = ½ + ½·θ/ε).
So **ε bounds θ, and every quantised coefficient moves by at most ε/2 quantisation steps** (the DCT coefficient,
in 0–255 pixel units, by at most Q[u,v]·factor·ε/2). Decoding multiplies back by the table, inverts the DCT,
upsamples chroma by pixel repetition, converts to RGB and clamps to [0, 255]. There is no actual rounding, so at
θ = 0 the output is the image with 4:2:0 chroma subsampling (exactly the image with ``subsample_chroma=False``).
Height and width must be multiples of 16 (8 without chroma subsampling), as advex-uar requires.

**Protocol.** Uniform random start in the box; each of ``steps`` iterations evaluates the model on T(x, θ),
takes θ ← clip(θ + α·sign(∇θ CE), −ε, ε); the final iterate is evaluated too. Each example keeps the θ of its
first misclassified iterate, else the last one, so with a fixed seed and step size more iterations never make
the attack weaker. Step size α defaults to ε/√steps, the rule of perceptual-advex (``UARAttack``) and of
advex-uar's ``get_step_size``.

**Budget.** The output is a function of bounded parameters, not a bounded pixel change, and no property of
(clean, perturbed) alone bounds θ: the final clamp to [0, 1] is not invertible, so re-encoding a clamped JPEG
output (or un-warping an elastic one) does not recover θ. Each threat therefore records the θ behind every
example of its most recent output; :class:`RecordedParameterBudget` re-renders T(clean, θ), requires it to match
``perturbed`` to 1e-4, and measures ‖θ‖∞ (≤ ε·(1 + 1e-5)); a mismatch, or no recorded call for a batch of that
size, measures +∞ and so fails the check.

**Deviations.** advex-uar's JPEG attack computes its first gradient at the wrong point (it passes ``cat_var``
unscaled to the codec before the first step; every later iterate divides by ε): here every iterate is rendered
the same way. Loss is summed, not averaged, over the batch (sign steps are unaffected). advex-uar returns its
last iterate; here the first misclassified iterate is kept (the evaluation rule of every rome-bench attack).
Images may be non-square (advex-uar assumes square).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.optional import optional_module
from rome_bench.threats.base import Budget, BudgetCheck, Threat, keep_first_success, per_example, register_threat

kornia_filters = optional_module("kornia.filters", "unseen", "the elastic threat")

RECONSTRUCTION_ATOL = 1e-4
"""How far (in [0,1] units) a re-rendered output may differ from the returned one in the budget check."""


class ParametricAttack(Threat):
    """Signed-gradient ascent on the cross-entropy over parameters θ with ‖θ‖∞ ≤ ε; the output is T(x, θ)."""

    parameter_description: ClassVar[str] = "‖θ‖∞"

    def __init__(self, eps: float, steps: int, step_size: float | None, random_start: bool) -> None:
        if eps <= 0 or steps < 1:
            raise ConfigError(f"{self.name}: eps must be > 0 and steps >= 1 (got eps={eps}, steps={steps})")
        self.eps = float(eps)
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else self.eps / math.sqrt(self.steps)
        if self.step_size <= 0:
            raise ConfigError(f"{self.name}: step_size must be > 0, got {self.step_size}")
        self.random_start = bool(random_start)
        self.last_parameters: torch.Tensor | None = None
        """θ behind each example of the most recent output (read by the budget check)."""

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size, "random_start": self.random_start}

    def budget(self) -> RecordedParameterBudget:
        return RecordedParameterBudget(self)

    @abstractmethod
    def parameter_shape(self, images: torch.Tensor) -> tuple[int, ...]:
        """Shape of θ for this batch (leading dimension the batch size); raises if the images do not fit."""

    @abstractmethod
    def prepare(self, images: torch.Tensor) -> Any:
        """Whatever T needs from the clean images, computed once per call."""

    @abstractmethod
    def render(self, state: Any, theta: torch.Tensor) -> torch.Tensor:
        """T(x, θ) in [0, 1], differentiable in θ."""

    def apply(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """T(images, θ) for given parameters (no attack)."""
        return self.render(self.prepare(images), theta.to(images))

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        self.last_parameters = None
        shape = self.parameter_shape(images)
        state = self.prepare(images)
        theta = torch.zeros(shape, dtype=images.dtype, device=images.device)
        if self.random_start:
            theta.uniform_(-self.eps, self.eps)
        kept = theta.clone()
        found = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.steps):
            theta.requires_grad_(True)
            logits = model(self.render(state, theta))
            loss = F.cross_entropy(logits, labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, theta)
            with torch.no_grad():
                found, kept = keep_first_success(logits, labels, theta, found, kept)
                theta = (theta + self.step_size * grad.sign()).clamp(-self.eps, self.eps)
        with torch.no_grad():
            found, kept = keep_first_success(model(self.render(state, theta)), labels, theta, found, kept)
            chosen = torch.where(per_example(found, theta), kept, theta)
            output = self.render(state, chosen)
        self.last_parameters = chosen.detach()
        return output



@dataclass(frozen=True, eq=False)
class RecordedParameterBudget(Budget):
    """‖θ‖∞ ≤ ε for the θ the threat recorded on its last call, which must re-render ``perturbed`` from ``clean``.

    Measures ‖θ‖∞ per example, or +∞ where T(clean, θ) differs from ``perturbed`` by more than
    ``atol`` or where no θ was recorded for a batch of this shape.
    """

    threat: ParametricAttack
    rel_tol: float = 1e-5
    atol: float = RECONSTRUCTION_ATOL

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        limit = self.threat.eps * (1 + self.rel_tol)
        description = f"{self.threat.parameter_description} (recorded, re-rendered within {self.atol:g})"
        theta = self.threat.last_parameters
        failed = torch.full((len(clean),), math.inf, dtype=torch.float64, device=clean.device)
        try:
            expected = self.threat.parameter_shape(clean)
        except ValueError:
            return BudgetCheck(failed, limit, description)
        if theta is None or tuple(theta.shape) != tuple(expected):
            return BudgetCheck(failed, limit, description)
        theta = theta.to(clean.device)
        with torch.no_grad():
            rebuilt = self.threat.apply(clean.detach(), theta)
        error = (rebuilt.double() - perturbed.detach().double()).flatten(1).abs().amax(dim=1)
        size = theta.flatten(1).abs().amax(dim=1).double()
        return BudgetCheck(torch.where(error <= self.atol, size, failed), limit, description)


# --------------------------------------------------------------------------------------------------- elastic


def gaussian_kernel(size: int, std: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 2-D Gaussian (size × size), centred at (size−1)/2: the outer product of 1-D Gaussians."""
    positions = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-0.5 * (positions / std) ** 2)
    weights = weights / weights.sum()
    return torch.outer(weights, weights).to(dtype=dtype, device=device)


def identity_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (1, H, W, 2) sampling grid of grid_sample (x, y in [-1, 1], align_corners=True) that copies an image."""
    ys = torch.linspace(-1, 1, height, dtype=dtype, device=device)
    xs = torch.linspace(-1, 1, width, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


@dataclass(frozen=True)
class _ElasticState:
    images: torch.Tensor
    grid: torch.Tensor
    kernel: torch.Tensor  # (size, size)
    to_grid: torch.Tensor  # (1, 2, 1, 1): pixels → grid units for x and y


@register_threat("elastic", tag="unseen", column="elastic")
class Elastic(ParametricAttack):
    """UAR elastic attack: a Gaussian-smoothed flow field with ‖flow‖∞ ≤ ε pixels warps the image (bilinear)."""

    parameter_description = "‖flow‖∞ (pixels)"

    def __init__(self, eps: float = 0.125, steps: int = 100, step_size: float | None = None,
                 random_start: bool = True, kernel_size: int = 5, kernel_std: float = 3.0 / 224.0 * 32) -> None:
        super().__init__(eps, steps, step_size, random_start)
        if kernel_size < 1 or kernel_size % 2 == 0 or kernel_std <= 0:
            raise ConfigError(f"elastic: kernel_size must be odd and positive and kernel_std > 0 "
                             f"(got {kernel_size}, {kernel_std})")
        self.kernel_size = int(kernel_size)
        self.kernel_std = float(kernel_std)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kernel_size": self.kernel_size, "kernel_std": self.kernel_std}

    def parameter_shape(self, images: torch.Tensor) -> tuple[int, ...]:
        batch, _, height, width = images.shape
        pad = (self.kernel_size - 1) // 2
        if pad >= min(height, width):
            raise ConfigError(f"elastic: kernel size {self.kernel_size} is too large for {height}×{width} images")
        return (batch, 2, height, width)

    def prepare(self, images: torch.Tensor) -> _ElasticState:
        height, width = images.shape[-2:]
        kernel = gaussian_kernel(self.kernel_size, self.kernel_std, images.dtype, images.device)
        to_grid = torch.tensor([2.0 / width, 2.0 / height], dtype=images.dtype, device=images.device)
        return _ElasticState(images, identity_grid(height, width, images.dtype, images.device), kernel,
                             to_grid.view(1, 2, 1, 1))

    def smooth(self, flow: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Reflect-pad and convolve each flow channel with the (size, size) Gaussian kernel (same size out)."""
        return kornia_filters.filter2d(flow, kernel[None], border_type="reflect")

    def render(self, state: _ElasticState, theta: torch.Tensor) -> torch.Tensor:
        offset = (self.smooth(theta, state.kernel) * state.to_grid).permute(0, 2, 3, 1)
        warped = F.grid_sample(state.images, state.grid + offset, mode="bilinear", padding_mode="zeros",
                               align_corners=True)
        return warped.clamp(0, 1)


# ------------------------------------------------------------------------------------------------------ JPEG

RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
"""JFIF full-range RGB → YCbCr (rows Y, Cb, Cr), applied to 0–255 values; Cb and Cr are then shifted by 128."""
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
"""JFIF YCbCr → RGB (rows R, G, B), applied after removing the 128 shift of Cb and Cr."""
CHROMA_SHIFT = (0.0, 128.0, 128.0)

LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
"""ITU T.81 Annex K luminance quantisation table; row = vertical frequency, column = horizontal frequency."""
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)
"""ITU T.81 Annex K chrominance quantisation table."""


def quality_factor(quality: int) -> float:
    """The libjpeg scaling of the tables for a quality in [1, 99] (advex-uar's ``quality_to_factor``)."""
    return 50.0 / quality if quality < 50 else (200.0 - 2.0 * quality) / 100.0


def dct_matrix(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal 8×8 DCT-II matrix C (C[u, x] = α(u)·cos((2x+1)uπ/16)), so C·Cᵀ = I."""
    index = torch.arange(8, dtype=torch.float64)
    matrix = torch.cos((2 * index[None, :] + 1) * index[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] = math.sqrt(1 / 8)
    return matrix.to(dtype=dtype, device=device)


def dct_8x8(blocks: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II of every 8×8 block (..., 8, 8): C·B·Cᵀ."""
    matrix = dct_matrix(blocks.dtype, blocks.device)
    return matrix @ blocks @ matrix.T


def idct_8x8(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct_8x8`: Cᵀ·D·C."""
    matrix = dct_matrix(coefficients.dtype, coefficients.device)
    return matrix.T @ coefficients @ matrix


def to_blocks(channel: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → (B, H/8·W/8, 8, 8), blocks in row-major order."""
    batch, height, width = channel.shape
    blocks = channel.reshape(batch, height // 8, 8, width // 8, 8).permute(0, 1, 3, 2, 4)
    return blocks.reshape(batch, -1, 8, 8)


def from_blocks(blocks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`to_blocks`."""
    batch = blocks.shape[0]
    return blocks.reshape(batch, height // 8, width // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(batch, height, width)


@dataclass(frozen=True)
class _JPEGState:
    coefficients: torch.Tensor  # (B, blocks, 8, 8): quantised DCT coefficients of Y, then Cb, then Cr
    tables: torch.Tensor  # (blocks, 8, 8): the (scaled) quantisation table of each block
    height: int
    width: int
    luma_blocks: int


@register_threat("jpeg-linf", tag="unseen", column="jpeg")
class JPEGLinf(ParametricAttack):
    """UAR JPEG-ℓ∞ attack: every quantised JPEG DCT coefficient is shifted by θ/2 with ‖θ‖∞ ≤ ε."""

    parameter_description = "‖θ‖∞ (JPEG offsets; quantised coefficients move by θ/2)"

    def __init__(self, eps: float = 0.125, steps: int = 100, step_size: float | None = None,
                 random_start: bool = True, quality: int = 50, subsample_chroma: bool = True) -> None:
        super().__init__(eps, steps, step_size, random_start)
        if not 1 <= quality <= 99:
            raise ConfigError(f"jpeg-linf: quality must be in [1, 99], got {quality}")
        self.quality = int(quality)
        self.subsample_chroma = bool(subsample_chroma)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "quality": self.quality, "subsample_chroma": self.subsample_chroma}

    def parameter_shape(self, images: torch.Tensor) -> tuple[int, ...]:
        batch, channels, height, width = images.shape
        multiple = 16 if self.subsample_chroma else 8
        if channels != 3 or height % multiple or width % multiple:
            raise ConfigError(f"jpeg-linf: needs RGB images with height and width multiples of {multiple}, "
                             f"got {tuple(images.shape)}")
        luma = height * width // 64
        chroma = luma // 4 if self.subsample_chroma else luma
        return (batch, luma + 2 * chroma, 8, 8)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Quantised (not rounded) DCT coefficients (B, blocks, 8, 8) of Y, Cb, Cr, before scaling by the tables."""
        convert = torch.tensor(RGB_TO_YCBCR, dtype=images.dtype, device=images.device)
        shift = torch.tensor(CHROMA_SHIFT, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        ycbcr = torch.einsum("dc,bchw->bdhw", convert, images * 255) + shift
        luma, chroma = ycbcr[:, 0], ycbcr[:, 1:]
        if self.subsample_chroma:
            chroma = F.avg_pool2d(chroma, kernel_size=2)
        blocks = torch.cat([to_blocks(luma), to_blocks(chroma[:, 0]), to_blocks(chroma[:, 1])], dim=1)
        return dct_8x8(blocks - 128)

    def decode(self, coefficients: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Unquantised DCT coefficients (B, blocks, 8, 8) → RGB image in [0, 1] (clamped)."""
        pixels = idct_8x8(coefficients) + 128
        luma_blocks = height * width // 64
        chroma_height, chroma_width = (height // 2, width // 2) if self.subsample_chroma else (height, width)
        chroma_blocks = (pixels.shape[1] - luma_blocks) // 2
        luma = from_blocks(pixels[:, :luma_blocks], height, width)
        chroma = torch.stack([
            from_blocks(pixels[:, luma_blocks:luma_blocks + chroma_blocks], chroma_height, chroma_width),
            from_blocks(pixels[:, luma_blocks + chroma_blocks:], chroma_height, chroma_width),
        ], dim=1)
        if self.subsample_chroma:
            chroma = chroma.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        shift = torch.tensor(CHROMA_SHIFT, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        ycbcr = torch.cat([luma.unsqueeze(1), chroma], dim=1) - shift
        convert = torch.tensor(YCBCR_TO_RGB, dtype=pixels.dtype, device=pixels.device)
        rgb = torch.einsum("dc,bchw->bdhw", convert, ycbcr)
        return (rgb / 255).clamp(0, 1)

    def tables(self, luma_blocks: int, chroma_blocks: int, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        """The quantisation table of every block (blocks, 8, 8), scaled by the quality factor."""
        factor = quality_factor(self.quality)
        luminance = torch.tensor(LUMINANCE_TABLE, dtype=dtype, device=device) * factor
        chrominance = torch.tensor(CHROMINANCE_TABLE, dtype=dtype, device=device) * factor
        return torch.cat([luminance.expand(luma_blocks, 8, 8), chrominance.expand(2 * chroma_blocks, 8, 8)])

    def prepare(self, images: torch.Tensor) -> _JPEGState:
        height, width = images.shape[-2:]
        total = self.parameter_shape(images)[1]
        luma_blocks = height * width // 64
        tables = self.tables(luma_blocks, (total - luma_blocks) // 2, images.dtype, images.device)
        return _JPEGState(self.encode(images) / tables, tables, height, width, luma_blocks)

    def render(self, state: _JPEGState, theta: torch.Tensor) -> torch.Tensor:
        return self.decode((state.coefficients + theta / 2) * state.tables, state.height, state.width)
