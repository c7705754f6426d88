"""The ``synthetic`` dataset: procedurally generated 10-class 32×32 RGB shapes and textures.

Train 10,000 images (generator seed 0), test 2,000 (seed 1). Generated in well under a second, bit-identical on every
call, needs no files.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from rome_bench.data.base import DATASETS, DatasetInfo, ImageTensorDataset, LoadedDataset, digest

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "disc", "square", "triangle", "ring", "cross",
    "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "dots",
)  # fmt: skip
SYNTHETIC_VERSION = 1
SYNTHETIC_SPLITS: dict[str, tuple[int, int]] = {"train": (10_000, 0), "test": (2_000, 1)}  # (size, seed)
SYNTHETIC_INFO = DatasetInfo(
    name="synthetic",
    num_classes=10,
    image_size=32,
    mean=(0.5741, 0.5742, 0.5726),
    std=(0.1699, 0.1697, 0.1704),
    class_names=SYNTHETIC_CLASSES,
)
_SIZE = 32
_TEXTURE_STRENGTH = 0.7  # textures carry more evidence than shapes; weaker contrast keeps them attackable


def generate_synthetic(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` synthetic images (uint8 N×3×32×32) with balanced labels, determined by ``seed`` alone.

    Each image is a shape (disc, square, triangle, ring, cross) or a texture patch (horizontal, vertical or
    diagonal stripes, checkerboard, dots) with random position, size, period and colours (foreground lighter
    than the background by 0.25–0.45, textures by 70% of that) and Gaussian noise (σ 0.02–0.05). Tuned so
    that a tiny ViT learns it in a minute on a CPU while an undefended model falls to the standard ℓp
    budgets. Only exactly rounded operations are used, so the result does not depend on the CPU's vector
    width or thread count.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return torch.rand(n, *shape, generator=g) * (high - low) + low

    labels = torch.randperm(n, generator=g) % 10
    centre_x, centre_y = uniform(11, 21, 1, 1), uniform(11, 21, 1, 1)
    radius, period, phase = uniform(9, 13, 1, 1), uniform(4, 7, 1, 1), uniform(0, 1, 1, 1)
    background = uniform(0.3, 0.7, 3, 1, 1)
    contrast = uniform(0.25, 0.45, 1, 1, 1) + uniform(-0.15, 0.15, 3, 1, 1)  # luminance + colour tint
    foreground = (background + contrast).clamp(0, 1)
    noise = torch.randn(n, 3, _SIZE, _SIZE, generator=g) * uniform(0.02, 0.05, 1, 1, 1)

    coords = torch.arange(_SIZE, dtype=torch.float32) + 0.5
    ys, xs = coords.view(1, _SIZE, 1), coords.view(1, 1, _SIZE)
    mask = torch.empty(n, _SIZE, _SIZE)
    for label in range(10):
        i = (labels == label).nonzero().squeeze(1)
        field = _synthetic_field(label, xs, ys, centre_x[i], centre_y[i], radius[i], period[i], phase[i])
        strength = 1.0 if label < 5 else _TEXTURE_STRENGTH
        mask[i] = (0.5 - field / 1.5).clamp(0, 1) * strength  # with a 1.5-pixel anti-aliased edge
    images = background + (foreground - background) * mask.unsqueeze(1) + noise
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _triangle_wave(t: Tensor) -> Tensor:
    """Periodic wave with period 1 and range [-1, 1], for t >= 0."""
    return (torch.frac(t) - 0.5).abs() * 4 - 1


def _synthetic_field(
    label: int, xs: Tensor, ys: Tensor, cx: Tensor, cy: Tensor, r: Tensor, period: Tensor, phase: Tensor
) -> Tensor:
    """Approximate signed distance in pixels to the foreground of class ``label`` (negative inside)."""
    dx, dy = xs - cx, ys - cy
    if label < 5:
        distance = torch.sqrt(dx * dx + dy * dy)
        if label == 0:  # disc
            return distance - r
        if label == 1:  # square
            return torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
        if label == 2:  # triangle
            half = math.sqrt(3) / 2
            edges = (-dy - 0.5 * r, half * dx + 0.5 * dy - 0.5 * r, -half * dx + 0.5 * dy - 0.5 * r)
            return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2])
        if label == 3:  # ring
            return (distance - 0.75 * r).abs() - 0.25 * r
        arm = 0.25 * r  # cross
        horizontal = torch.maximum(dx.abs() - 1.2 * r, dy.abs() - arm)
        vertical = torch.maximum(dx.abs() - arm, dy.abs() - 1.2 * r)
        return torch.minimum(horizontal, vertical)
    window = torch.maximum(dx.abs(), dy.abs()) - r  # textures fill a square patch
    u, v = xs / period + phase, ys / period + phase
    if label == 5:
        wave = _triangle_wave(v)
    elif label == 6:
        wave = _triangle_wave(u)
    elif label == 7:
        wave = _triangle_wave((u + v) * (1 / math.sqrt(2)))
    elif label == 8:
        wave = _triangle_wave(u) * _triangle_wave(v)
    else:  # dots of radius 0.3 period on a square grid
        px, py = torch.frac(u) - 0.5, torch.frac(v) - 0.5
        return torch.maximum(window, (torch.sqrt(px * px + py * py) - 0.3) * period)
    return torch.maximum(window, -wave * period / 4)


@DATASETS.register("synthetic", num_classes=10, image_size=32, description="generated shapes and textures")
def load_synthetic(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """The generated synthetic split (``data_dir`` is ignored)."""
    n, seed = SYNTHETIC_SPLITS[split]
    images, labels = generate_synthetic(n, seed)
    fingerprint = digest("synthetic", SYNTHETIC_VERSION, split, n, seed)
    source = f"generated (synthetic v{SYNTHETIC_VERSION}, {n} images, seed {seed})"
    return LoadedDataset(ImageTensorDataset(images, labels), SYNTHETIC_INFO, fingerprint, source)

