"""Functional adversarial threats: StAdv (Xiao et al. 2018) and ReColorAdv (Laidlaw & Feizi 2019).

Both attacks optimise the parameters of a smooth function applied to the image, not an additive δ, with the
protocol of perceptual-advex (Laidlaw et al. 2021, ``StAdvAttack`` and ``ReColorAdvAttack``, built on mister_ed),
which is what the RoME paper's unseen-threat evaluation (Sec. A1) uses. Each runs Adam on

    minimise  margin(x') + λ · smoothness(θ),   margin = z_y − max_{j≠y} z_j  (C&W f6, κ = ∞: not clamped),

summed over the batch (Adam is element-wise, so every example is optimised independently), starting at the
identity θ = 0, projecting θ onto the threat's set before every forward pass, and taking ``steps`` Adam steps.
The smoothness term is Xiao et al.'s Eq. 4, Σ_p Σ_{q ∈ N(p)} √(‖θ_p − θ_q‖² + 1e-10) over the 4 (2-D flow) or 6
(3-D colour grid) neighbours of every grid point, with replicated borders, as in mister_ed.

**StAdv** (``stadv``): θ is a per-pixel flow field (B, H, W, 2) in grid_sample's normalised coordinates, where
the image spans [−1, 1] (1 pixel = 2/W; so bound 0.05 is 0.8 px on 32×32 images). The image is resampled
bilinearly at identity grid + flow (``align_corners=False``, zero padding), so the zero flow returns the image
exactly. Projection: the grid is clipped to [−1, 1] and the flow to ℓ∞ ≤ ``bound``. perceptual-advex's CIFAR
settings: bound 0.05, Adam lr 0.01, flow-smoothness weight τ = 0.0025 / bound = 0.05 (the paper's τ = 0.05),
100 iterations (perceptual-advex's CIFAR evaluation; the RoME paper gives no count).

**ReColorAdv** (``recoloradv``): θ is an offset on a regular grid over the colour cube of a colour space
(CIELUV by default, scaled to [0,1]³), resolution 16 × 32 × 32 (L, u, v); each pixel's colour c is mapped to
c + trilinear(θ)(c) and converted back to RGB. Projection: θ to ℓ∞ ≤ ``bound`` and the grid values id + θ to
[0, 1]. Settings: bound 0.06 and 20 iterations (RoME paper); Adam lr 0.001 and colour-smoothness weight
0.0036 / bound = 0.06 (perceptual-advex).

Deviations from perceptual-advex, all so that the zero perturbation is exactly the identity and the budget is
exactly what is optimised:

* ReColorAdv's function is id + trilinear(θ) with the interpolation weights clamped at the grid's border, not
  trilinear(id + θ) with clamped indices: they agree inside [0,1]³, but mister_ed maps colours outside the cube
  (saturated reds have u > 1 in scaled CIELUV) to the border even at θ = 0. mister_ed's extra projection of the
  grid onto the sRGB gamut is dropped (out-of-gamut colours are clipped when converted back to RGB).
* The output is x + (rgb(c') − rgb(c)), which equals rgb(c') up to the colour conversion's float round trip, so
  θ = 0 returns x bit for bit. Our sRGB↔XYZ matrices are exact inverses (mister_ed's are rounded separately).
* Each example returns the first iterate the model misclassifies, else the last (rome-bench's rule);
  perceptual-advex always returns the last iterate. So with the same settings ours is never weaker, and more
  steps never make it weaker.

``budget()`` verifies what each threat promises from the parameters recorded by its last call: it replays the
recorded transform on the clean images, requires the replay to match the output, and measures ‖θ‖∞ per example
(StAdv also reports the flow smoothness).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.optional import optional_module
from rome_bench.threats.base import Budget, BudgetCheck, Threat, keep_first_success, per_example, register_threat

kornia_color = optional_module("kornia.color", "unseen", "ReColorAdv")

SMOOTHNESS_EPS = 1e-10
REPLAY_TOLERANCE = 1e-5


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """C&W's f6 margin z_y − max_{j≠y} z_j per example (negative once misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true - others.amax(dim=1)


def grid_smoothness(field_: torch.Tensor, dims: tuple[int, ...], channel_dim: int) -> torch.Tensor:
    """Σ over grid points and their neighbours along ``dims`` of √(‖θ_p − θ_q‖² + ε), replicated borders.

    Every interior edge appears twice (once from each end) and each border point contributes √ε per missing
    neighbour, exactly as mister_ed's ``stAdv_norm`` and ReColorAdv's ``smoothness``.
    """
    total = field_.new_zeros(field_.shape[0])
    for dim in dims:
        diff = field_.diff(dim=dim)
        edges = (diff.square().sum(dim=channel_dim) + SMOOTHNESS_EPS).sqrt().flatten(1).sum(dim=1)
        border_points = math.prod(size for i, size in enumerate(field_.shape) if i not in (0, dim, channel_dim))
        total = total + 2 * edges + 2 * border_points * SMOOTHNESS_EPS**0.5
    return total


@dataclass(frozen=True)
class ReplayBudget(Budget):
    """‖θ‖∞ ≤ bound for the parameters θ recorded by the threat's last call, replayed to confirm the output.

    An example whose replayed output differs from ``perturbed`` (or a batch the last call did not produce)
    measures ∞, so the runner rejects it.
    """

    bound: float
    params: torch.Tensor | None
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    name: str = "θ"
    rel_tol: float = 1e-5

    def measure(self, clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Per-example ‖θ‖∞ in float64, ∞ where the recorded θ does not reproduce ``perturbed``."""
        infinite = torch.full((len(clean),), float("inf"), dtype=torch.float64, device=clean.device)
        if self.params is None or self.apply is None or len(self.params) != len(clean):
            return infinite
        params = self.params.to(clean.device)
        with torch.no_grad():
            replay = self.apply(clean, params)
        matches = (replay - perturbed).flatten(1).abs().amax(dim=1) <= REPLAY_TOLERANCE
        size = params.flatten(1).abs().amax(dim=1).double()
        return torch.where(matches, size, infinite)

    def describe(self) -> str:
        return f"‖{self.name}‖∞ of the recorded parameters (∞ if they do not reproduce the output)"

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        return BudgetCheck(self.measure(clean, perturbed), self.bound * (1 + self.rel_tol), self.describe())


@dataclass(frozen=True)
class FlowBudget(ReplayBudget):
    """StAdv: the flow's ℓ∞ size in normalised grid units ≤ bound; also reports the flow smoothness L_flow."""

    smoothness: torch.Tensor | None = field(default=None)
    name: str = "flow"

    def describe(self) -> str:
        mean = float(self.smoothness.mean()) if self.smoothness is not None and self.smoothness.numel() else 0.0
        return f"{super().describe()}; mean flow smoothness L_flow = {mean:.4g}"


@dataclass(frozen=True)
class ColourGridBudget(ReplayBudget):
    """ReColorAdv: the colour-grid offsets' ℓ∞ size (scaled colour-space units) ≤ bound."""

    name: str = "colour-grid offset"


class FunctionalAttack(Threat):
    """Adam on margin + weight · smoothness over transform parameters θ, keeping the first misclassified iterate."""

    def __init__(self, bound: float, steps: int, step_size: float, smoothness_weight: float) -> None:
        if bound <= 0 or steps < 1 or step_size <= 0 or smoothness_weight < 0:
            raise ConfigError(f"{self.name}: need bound > 0, steps >= 1, step_size > 0 and a non-negative "
                             f"smoothness weight (got {bound}, {steps}, {step_size}, {smoothness_weight})")
        self.bound = float(bound)
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.smoothness_weight = float(smoothness_weight)
        self.last_params: torch.Tensor | None = None

    @abstractmethod
    def zero_params(self, images: torch.Tensor) -> torch.Tensor:
        """The identity transform's parameters θ = 0 for this batch."""

    @abstractmethod
    def project(self, params: torch.Tensor) -> torch.Tensor:
        """θ moved into the threat's feasible set (ℓ∞ ≤ bound and valid grid values)."""

    @abstractmethod
    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The transformed images in [0, 1] (differentiable in ``params``)."""

    @abstractmethod
    def smoothness(self, params: torch.Tensor) -> torch.Tensor:
        """Per-example smoothness penalty of θ."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        params = self.zero_params(images).requires_grad_(True)
        optimizer = torch.optim.Adam([params], lr=self.step_size)
        found = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        kept = torch.zeros_like(params)
        with torch.enable_grad():
            for _ in range(self.steps):
                with torch.no_grad():
                    params.copy_(self.project(params))
                logits = model(self.apply(images, params))
                loss = (margin(logits, labels) + self.smoothness_weight * self.smoothness(params)).sum()
                (params.grad,) = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    found, kept = keep_first_success(logits, labels, params, found, kept)
                optimizer.step()
        with torch.no_grad():
            last = self.project(params.detach())
            found, kept = keep_first_success(model(self.apply(images, last)), labels, last, found, kept)
            chosen = torch.where(per_example(found, kept), kept, last)
            self.last_params = chosen
            self._record(chosen)
            return self.apply(images, chosen)

    def _record(self, params: torch.Tensor) -> None:
        """Hook for subclasses to remember more about the returned parameters."""



@register_threat("stadv", tag="unseen", column="stadv")
class StAdv(FunctionalAttack):
    """StAdv (Xiao et al. 2018): a smooth per-pixel flow field, ℓ∞-bounded, optimised with Adam (perceptual-advex)."""

    def __init__(self, bound: float = 0.05, steps: int = 100, step_size: float = 0.01, tau: float = 0.05) -> None:
        super().__init__(bound, steps, step_size, tau)
        self.tau = self.smoothness_weight
        self.last_smoothness: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"bound": self.bound, "steps": self.steps, "step_size": self.step_size, "tau": self.tau}

    def budget(self) -> Budget:
        return FlowBudget(self.bound, self.last_params, self.apply, smoothness=self.last_smoothness)

    @staticmethod
    def identity_grid(images: torch.Tensor) -> torch.Tensor:
        """grid_sample's identity sampling grid (1, H, W, 2) for ``align_corners=False``: pixel centres."""
        height, width = images.shape[-2:]
        eye = torch.eye(2, 3, dtype=images.dtype, device=images.device).unsqueeze(0)
        return F.affine_grid(eye, [1, images.shape[1], height, width], align_corners=False)

    def zero_params(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        return images.new_zeros(len(images), height, width, 2)

    def project(self, params: torch.Tensor) -> torch.Tensor:
        identity = self.identity_grid(params.new_zeros(1, 1, *params.shape[1:3]))
        flow = params.clamp(-self.bound, self.bound)
        return (identity + flow).clamp(-1, 1) - identity

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        grid = self.identity_grid(images) + params
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped.clamp(0, 1)

    def smoothness(self, params: torch.Tensor) -> torch.Tensor:
        return grid_smoothness(params, dims=(1, 2), channel_dim=3)

    def _record(self, params: torch.Tensor) -> None:
        self.last_smoothness = self.smoothness(params).double()


class ColourSpace:
    """A differentiable map between RGB in [0,1] and a colour space scaled to (roughly) [0,1]³, channels first."""

    def from_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        return rgb

    def to_rgb(self, colours: torch.Tensor) -> torch.Tensor:
        return colours.clamp(0, 1)


class YPbPr(ColourSpace):
    """YPbPr (ITU-R BT.601, 'YUV'), chroma shifted by 0.5 into [0, 1]."""

    KR, KB = 0.299, 0.114

    def from_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        r, g, b = rgb.unbind(1)
        y = self.KR * r + (1 - self.KR - self.KB) * g + self.KB * b
        return torch.stack([y, (b - y) / (2 * (1 - self.KB)) + 0.5, (r - y) / (2 * (1 - self.KR)) + 0.5], dim=1)

    def to_rgb(self, colours: torch.Tensor) -> torch.Tensor:
        y, pb, pr = colours.unbind(1)
        b = (pb - 0.5) * 2 * (1 - self.KB) + y
        r = (pr - 0.5) * 2 * (1 - self.KR) + y
        g = (y - self.KR * r - self.KB * b) / (1 - self.KR - self.KB)
        return torch.stack([r, g, b], dim=1).clamp(0, 1)


_RGB_TO_XYZ = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
                           dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)


def _mix(matrix: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Apply a 3×3 matrix to the channel dimension of (B, 3, ...) colours."""
    return torch.einsum("ij,bj...->bi...", matrix.to(colours), colours)


class CIELUV(ColourSpace):
    """CIE 1976 L*u*v* of sRGB (D65 white of the sRGB matrix), scaled as (L/100, (u+100)/200, (v+100)/200).

    The sRGB transfer curves are kornia's (bit-identical to the hand-written ones they replaced); the XYZ matrix,
    white point and L*u*v* formulas stay hand-written: kornia's ``rgb_to_luv`` uses other constants (docs/kornia.md,
    "What is kornia, what stays hand-written").
    """

    EPS = 1e-10

    def __init__(self) -> None:
        white_x, white_y, white_z = _RGB_TO_XYZ.sum(dim=1).tolist()
        denominator = white_x + 15 * white_y + 3 * white_z
        self.white_u, self.white_v = 4 * white_x / denominator, 9 * white_y / denominator

    def from_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        linear = kornia_color.rgb_to_linear_rgb(rgb)
        x, y, z = _mix(_RGB_TO_XYZ, linear).unbind(1)
        denominator = x + 15 * y + 3 * z + self.EPS
        u_prime, v_prime = 4 * x / denominator, 9 * y / denominator
        lightness = torch.where(y <= (6 / 29) ** 3, (29 / 3) ** 3 * y, 116 * y.clamp_min((6 / 29) ** 3) ** (1 / 3) - 16)
        u = 13 * lightness * (u_prime - self.white_u)
        v = 13 * lightness * (v_prime - self.white_v)
        return torch.stack([lightness / 100, (u + 100) / 200, (v + 100) / 200], dim=1)

    def to_rgb(self, colours: torch.Tensor) -> torch.Tensor:
        lightness = colours[:, 0].clamp_min(0) * 100
        u, v = colours[:, 1] * 200 - 100, colours[:, 2] * 200 - 100
        u_prime = u / (13 * lightness + self.EPS) + self.white_u
        v_prime = v / (13 * lightness + self.EPS) + self.white_v
        y = torch.where(lightness <= 8, lightness * (3 / 29) ** 3, ((lightness + 16) / 116) ** 3)
        denominator = (4 * v_prime).clamp_min(1e-6)  # v' ≤ 0 is no real colour; the clamp below clips it
        x = y * 9 * u_prime / denominator
        z = y * (12 - 3 * u_prime - 20 * v_prime) / denominator
        linear = _mix(_XYZ_TO_RGB, torch.stack([x, y, z], dim=1).clamp(0, 1.1))
        return kornia_color.linear_rgb_to_rgb(linear).clamp(0, 1)


COLOUR_SPACES: dict[str, type[ColourSpace]] = {"cieluv": CIELUV, "yuv": YPbPr, "rgb": ColourSpace}


@register_threat("recoloradv", tag="unseen", column="recoloradv")
class ReColorAdv(FunctionalAttack):
    """ReColorAdv (Laidlaw & Feizi 2019): a smooth, ℓ∞-bounded piecewise-trilinear colour map in CIELUV."""

    def __init__(self, bound: float = 0.06, steps: int = 20, step_size: float = 0.001,
                 smoothness_weight: float = 0.06, resolution: tuple[int, int, int] | list[int] = (16, 32, 32),
                 colour_space: str = "cieluv") -> None:
        super().__init__(bound, steps, step_size, smoothness_weight)
        self.resolution = tuple(int(r) for r in resolution)
        if len(self.resolution) != 3 or min(self.resolution) < 2:
            raise ConfigError(f"recoloradv: resolution must be three sizes >= 2, got {resolution}")
        if colour_space not in COLOUR_SPACES:
            raise ConfigError(f"recoloradv: colour_space must be one of {sorted(COLOUR_SPACES)}, got '{colour_space}'")
        self.colour_space = colour_space
        self.space = COLOUR_SPACES[colour_space]()

    def params(self) -> dict[str, Any]:
        return {"bound": self.bound, "steps": self.steps, "step_size": self.step_size,
                "smoothness_weight": self.smoothness_weight, "resolution": self.resolution,
                "colour_space": self.colour_space}

    def budget(self) -> Budget:
        return ColourGridBudget(self.bound, self.last_params, self.apply)

    def identity_values(self, like: torch.Tensor) -> torch.Tensor:
        """The identity grid's values (1, 3, R0, R1, R2): each vertex's own colour coordinates."""
        axes = [torch.linspace(0, 1, size, dtype=like.dtype, device=like.device) for size in self.resolution]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)

    def zero_params(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(len(images), 3, *self.resolution)

    def project(self, params: torch.Tensor) -> torch.Tensor:
        identity = self.identity_values(params)
        return (identity + params.clamp(-self.bound, self.bound)).clamp(0, 1) - identity

    def colour_offsets(self, colours: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation of the offset grid at each pixel's colour, clamped to the grid's border."""
        # grid_sample's 5-D input is (B, C, D, H, W) and its grid's last axis is ordered (W, H, D).
        coordinates = colours.permute(0, 2, 3, 1).flip(-1).unsqueeze(1) * 2 - 1
        offsets = F.grid_sample(params, coordinates, mode="bilinear", padding_mode="border", align_corners=True)
        return offsets.squeeze(2)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        colours = self.space.from_rgb(images)
        with torch.no_grad():
            unchanged = self.space.to_rgb(colours)
        recoloured = self.space.to_rgb(colours + self.colour_offsets(colours, params))
        return (images + (recoloured - unchanged)).clamp(0, 1)

    def smoothness(self, params: torch.Tensor) -> torch.Tensor:
        return grid_smoothness(params, dims=(2, 3, 4), channel_dim=1)
