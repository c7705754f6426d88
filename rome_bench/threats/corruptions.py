"""Common corruptions: the 15 CIFAR-10-C corruptions × 5 severities (Hendrycks & Dietterich, ICLR 2019).

The RoME paper (Sec. A1, "Setup for unseen threats") follows existing benchmarks in evaluating "common corruptions
across 5 levels of severity across all corruption types"; on CIFAR-10 that is CIFAR-10-C: gaussian_noise,
shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog, brightness,
contrast, elastic_transform, pixelate and jpeg_compression, each at severities 1–5 (75 threats, registered once as
``corruption`` with column ``corr``). The accuracy under a corruption is an average, not a worst case: the model
is never queried.

The metric is CIFAR-10-C's: plain accuracy on the corrupted images. Every example is corrupted, clean-correct or
not, and its own prediction is stored (``given_clean=False``, ``Threat.given_clean``), so a model right on a
corrupted image but wrong on its clean image counts in Com. Corr.; the leaderboard's union still requires clean
and every threat. ``given_clean=True`` gives the older P(clean ∧ corrupted correct) under its own key. Stores
written before this choice hold corruption results whose parameters lack ``given_clean``: those were computed
with the older rule, and the leaderboard flags their cells ``clean-conditioned`` (see ``leaderboard.py``).

Two ways to get the corrupted images:

* ``corruptions_dir`` names the published CIFAR-10-C ``.npy`` files (``<corruption>.npy``: uint8, shape
  (5·N, 32, 32, 3), the five severities stacked, N = 10,000 test images each in the original CIFAR-10 test order).
  The threat then returns stored image ``(severity − 1)·N + example_id`` (it needs the runner's example ids, which
  must index the CIFAR-10 test set in its original order). The files are memory-mapped and opened once.
* Otherwise the corruption is generated per batch with the **CIFAR-10-C constants** of ``make_cifar_c.py``
  (github.com/hendrycks/robustness, ImageNet-C/create_c), not imagecorruptions' ImageNet constants. Each function
  below states its constants. Images are quantised to uint8 first and the result is truncated to uint8 as the
  reference does (``np.uint8(corruption(image))``), so outputs lie on the 1/255 grid.

Size-agnostic helpers come from imagecorruptions via :mod:`rome_bench.threats.imagecorruptions_compat`
(anti-aliased disk kernel, numpy motion blur, plasma fractal, frost textures); the clipped zoom is re-done batched
(:func:`centre_zoom`: imagecorruptions' ``clipped_zoom`` followed by make_cifar_c's centre trim). Randomness comes
only from torch's global RNG: each call draws one seed with ``torch.randint`` and seeds a ``numpy.random.Generator``
with it; numpy's global RNG is never used, so a ``torch.manual_seed`` fixes the output.

Deviations from ``make_cifar_c.py`` (the constants are all the reference's):

* motion_blur and snow use imagecorruptions' numpy motion blur (a 1-D Gaussian kernel of width 2·radius+1 along the
  angle, edges replicated) instead of ImageMagick's ``MotionBlurImage`` through Wand, as imagecorruptions does for
  ImageNet-C; the blurred result is rounded to uint8 as ImageMagick's 8-bit output is.
* impulse_noise is written directly: each value is independently replaced with probability ``amount`` by 0 or 1
  (equal odds), as ``skimage.util.random_noise(mode="s&p")`` does today.
* Random draws happen in a different order than the reference's per-image ``np.random`` calls (same distributions).
* JPEG encoding and PIL/OpenCV resampling are those of the installed Pillow/OpenCV.
* Images other than 32×32 get the CIFAR constants with the image size in place of 32 (elastic_transform scales
  with the height, fog's plasma map is the next power of two ≥ the larger side, frost textures are enlarged only
  when a 0.2-scaled texture is smaller than the image); CIFAR-10-C is defined on 32×32 only.

Exact, though restructured: glass_blur's "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` only copies (numpy
views: ``x[h', w']`` gets its own value back), and with ``max_delta = 1`` (every severity) each source pixel lies
up-left of its target and is not yet visited by the descending scan; so a pass is the gather
``x[h, w] ← x[h + dy, w + dx]`` from the pass's start, done here for the whole batch at once (:func:`local_shuffle`).
Note that CIFAR-10-C's elastic_transform is not monotone in pixel change: severity 1 is a pure affine warp with
2.56 px corner jitter, which moves pixels more than severity 5 (0.96 px jitter plus a displacement field, α = 3.2).
"""

from __future__ import annotations

import functools
import io
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.optional import optional_module
from rome_bench.threats.base import Budget, Threat, UnboundedBudget, register_threat

_WHAT = "common corruptions"
cv2 = optional_module("cv2", "unseen", _WHAT)
ndimage = optional_module("scipy.ndimage", "unseen", _WHAT)
color = optional_module("skimage.color", "unseen", _WHAT)
compat = optional_module("rome_bench.threats.imagecorruptions_compat", "unseen", _WHAT)

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
"""(uint8 images (B,H,W,3), severity, rng) -> float images (B,H,W,3) on the 0–255 scale."""


def _unit(images: np.ndarray) -> np.ndarray:
    return images / 255.0


def _blur_spatial(images: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage ``gaussian(..., channel_axis=-1)`` applied to every image of a (B,H,W,C) batch."""
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """x + N(0, σ²), σ = 0.04, 0.06, 0.08, 0.09, 0.10."""
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    x = _unit(images)
    return np.clip(x + rng.normal(scale=sigma, size=x.shape), 0, 1) * 255


def shot_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson(λ·x)/λ, λ = 500, 250, 100, 75, 50."""
    rate = (500, 250, 100, 75, 50)[severity - 1]
    return np.clip(rng.poisson(_unit(images) * rate) / rate, 0, 1) * 255


def impulse_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on each value independently with probability 0.01, 0.02, 0.03, 0.05, 0.07."""
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[severity - 1]
    flipped = rng.random(images.shape) < amount
    salt = rng.random(images.shape) < 0.5
    return np.where(flipped, salt.astype(np.float64), _unit(images)) * 255


def defocus_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolution with an anti-aliased disk; (radius, alias σ) = (.3,.4), (.4,.5), (.5,.6), (1,.2), (1.5,.1)."""
    radius, alias_blur = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[severity - 1]
    kernel = compat.disk(radius=radius, alias_blur=alias_blur)
    blurred = np.stack([cv2.filter2D(image, -1, kernel) for image in _unit(images)])
    return np.clip(blurred, 0, 1) * 255


def local_shuffle(images: np.ndarray, offsets: np.ndarray, max_delta: int = 1) -> np.ndarray:
    """One glass-blur pass: x[h, w] ← x[h + dy, w + dx] for h, w in (max_delta, size − max_delta].

    ``offsets`` (B, rows, cols, 2) holds (dx, dy) per visited pixel, rows and columns in descending order as the
    reference visits them. Exact for offsets in [−1, 0] (max_delta = 1, every CIFAR-10-C severity): no source is
    visited before its target, so reading all sources at once equals the reference's sequential scan.
    """
    _, height, width, _ = images.shape
    rows = np.arange(height - max_delta, max_delta, -1)[None, :, None]
    cols = np.arange(width - max_delta, max_delta, -1)[None, None, :]
    batch = np.arange(len(images))[:, None, None]
    shuffled = images.copy()
    shuffled[batch, rows, cols] = images[batch, rows + offsets[..., 1], cols + offsets[..., 0]]
    return shuffled


def glass_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, shuffle locally, blur; (σ, max_delta, passes) = (.05,1,1), (.25,1,1), (.4,1,1), (.25,1,2), (.4,1,2)."""
    sigma, max_delta, passes = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[severity - 1]
    x = (_blur_spatial(_unit(images), sigma) * 255).astype(np.uint8)
    _, height, width, _ = x.shape
    for _ in range(passes):
        size = (len(x), max(height - 2 * max_delta, 0), max(width - 2 * max_delta, 0), 2)
        x = local_shuffle(x, rng.integers(-max_delta, max_delta, size=size), max_delta)
    return np.clip(_blur_spatial(_unit(x), sigma), 0, 1) * 255


def motion_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Motion blur at an angle uniform in [−45°, 45°], (radius, σ) = (6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)."""
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[severity - 1]
    angles = rng.uniform(-45, 45, size=len(images))
    blurred = np.stack([compat.motion_blur(image, radius=radius, sigma=sigma, angle=angle)
                        for image, angle in zip(images, angles, strict=True)])
    return np.clip(np.round(blurred), 0, 255)


def centre_zoom(images: np.ndarray, factor: float) -> np.ndarray:
    """Zoom a (B,H,W,C) batch into its centre by ``factor`` ≥ 1 (bilinear), keeping H×W.

    The batched form of make_cifar_c's ``clipped_zoom``: crop the central ⌈H/f⌉×⌈W/f⌉ window, zoom it by f
    (``scipy.ndimage.zoom``, order 1, with batch and channels stacked on one axis zoomed by 1, the identity) and
    trim the result back to H×W at the centre.
    """
    batch, height, width, channels = images.shape
    crop_h, crop_w = math.ceil(height / factor), math.ceil(width / factor)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = images[:, top:top + crop_h, left:left + crop_w].transpose(1, 2, 0, 3)
    crop = crop.reshape(crop_h, crop_w, batch * channels)
    zoomed = ndimage.zoom(crop, (factor, factor, 1), order=1)  # batch × channels stacked on the last axis
    top, left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    zoomed = zoomed[top:top + height, left:left + width].reshape(height, width, batch, channels)
    return zoomed.transpose(2, 0, 1, 3)


def zoom_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of the image and its centre zooms by np.arange(1, stop, 0.01), stop = 1.06, 1.11, 1.16, 1.21, 1.26."""
    factors = np.arange(1, (1.06, 1.11, 1.16, 1.21, 1.26)[severity - 1], 0.01)
    x = _unit(images).astype(np.float32)
    total = x + sum(centre_zoom(x, factor) for factor in factors)
    return np.clip(total / (len(factors) + 1), 0, 1) * 255


SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
"""(mean, std, zoom, threshold, blur radius, blur σ, image weight) per severity."""


def snow(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Thresholded zoomed Gaussian flakes, motion-blurred at [−135°, −45°], added twice (180° apart) to a whitened x."""
    mean, std, zoom, threshold, radius, sigma, keep = SNOW[severity - 1]
    x = _unit(images).astype(np.float32)
    batch, height, width, _ = x.shape
    flakes = centre_zoom(rng.normal(loc=mean, scale=std, size=(batch, height, width, 1)), zoom)[..., 0]
    flakes[flakes < threshold] = 0
    flakes = (np.clip(flakes, 0, 1) * 255).astype(np.uint8)  # the reference's 8-bit PIL 'L' image
    angles = rng.uniform(-135, -45, size=batch)
    layers = np.stack([compat.motion_blur(layer, radius=radius, sigma=sigma, angle=angle)
                       for layer, angle in zip(flakes, angles, strict=True)])  # type: ignore[call-overload]
    layers = (np.clip(np.round(layers), 0, 255) / 255.0)[..., None]
    grey = (x @ np.float32([0.299, 0.587, 0.114]))[..., None]  # type: ignore[arg-type, operator]  # cv2's RGB2GRAY weights
    whitened = keep * x + (1 - keep) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(whitened + layers + np.rot90(layers, k=2, axes=(1, 2)), 0, 1) * 255


@functools.lru_cache(maxsize=16)
def _frost_texture(index: int, min_height: int, min_width: int) -> np.ndarray:
    """Frost texture ``index`` (RGB uint8) resized by 0.2 as in the reference, or more if that is too small."""
    path = compat.frost_texture_path(index)
    texture = cv2.imread(path)
    if texture is None:
        raise ConfigError(f"cannot read the frost texture {path} shipped with imagecorruptions")
    scale = max(0.2, (min_height + 1) / texture.shape[0], (min_width + 1) / texture.shape[1])
    texture = cv2.resize(texture, (0, 0), fx=scale, fy=scale)
    return np.ascontiguousarray(texture[..., ::-1])


def frost(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """a·x + b·(random crop of one of frost1–5), (a, b) = (1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)."""
    weight, frost_weight = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[severity - 1]
    _, height, width, _ = images.shape
    out = np.empty(images.shape, dtype=np.float64)
    for i, image in enumerate(images):
        texture = _frost_texture(int(rng.integers(5)), height, width)
        top = int(rng.integers(0, texture.shape[0] - height))
        left = int(rng.integers(0, texture.shape[1] - width))
        out[i] = weight * image + frost_weight * texture[top:top + height, left:left + width]
    return np.clip(out, 0, 255)


def fog(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """(x + s·plasma)·max/(max + s), wibble decay d; (s, d) = (.2,3), (.5,3), (.75,2.5), (1,2), (1.5,1.75)."""
    strength, decay = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[severity - 1]
    x = _unit(images)
    _, height, width, _ = x.shape
    mapsize = 1 << (max(height, width) - 1).bit_length()
    fractals = np.stack([compat.plasma_fractal(mapsize, decay, rng)[:height, :width] for _ in range(len(x))])
    brightest = x.max(axis=(1, 2, 3), keepdims=True)
    fogged = x + strength * fractals[..., None]
    return np.clip(fogged * brightest / (brightest + strength), 0, 1) * 255


def brightness(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value + 0.05, 0.1, 0.15, 0.2, 0.3 (clipped)."""
    shift = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    hsv = color.rgb2hsv(_unit(images))
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return np.clip(color.hsv2rgb(hsv), 0, 1) * 255


def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """(x − per-channel mean)·c + mean, c = 0.75, 0.5, 0.4, 0.3, 0.15."""
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    x = _unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * factor + means, 0, 1) * 255


ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
"""(displacement scale α, smoothing σ, affine jitter) per severity, in units of the image size (32 on CIFAR)."""


def elastic_transform(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Random affine warp (corner jitter) then a smooth random displacement field (α, σ scaled by the image size)."""
    _, height, width, channels = images.shape
    alpha, sigma, jitter = (value * height for value in ELASTIC[severity - 1])
    centre = np.float32((height, width)) // 2  # type: ignore[arg-type]
    third = min(height, width) // 3
    anchors = np.float32([centre + third, [centre[0] + third, centre[1] - third], centre - third])  # type: ignore[arg-type, index]
    grid = np.indices((height, width, channels), dtype=np.float32)
    out = np.empty(images.shape, dtype=np.float64)
    for i, image in enumerate(_unit(images).astype(np.float32)):
        moved = anchors + rng.uniform(-jitter, jitter, size=anchors.shape).astype(np.float32)
        warp = cv2.getAffineTransform(anchors, moved)  # type: ignore[call-overload]
        image = cv2.warpAffine(image, warp, (width, height), borderMode=cv2.BORDER_REFLECT_101)
        dx, dy = (
            (ndimage.gaussian_filter(rng.uniform(-1, 1, size=(height, width)), sigma, mode="reflect", truncate=3)
             * alpha).astype(np.float32)
            for _ in range(2)
        )
        coordinates = np.stack([grid[0] + dy[..., None], grid[1] + dx[..., None], grid[2]])
        out[i] = ndimage.map_coordinates(image, coordinates, order=1, mode="reflect")
    return np.clip(out, 0, 1) * 255


def pixelate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample by 0.95, 0.9, 0.85, 0.75, 0.65 and box-upsample back (PIL)."""
    factor = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    _, height, width, _ = images.shape
    small = (int(width * factor), int(height * factor))
    box = Image.Resampling.BOX
    return np.stack([np.asarray(Image.fromarray(image).resize(small, box).resize((width, height), box))
                     for image in images]).astype(np.float64)


def jpeg_compression(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """PIL JPEG round trip at quality 80, 65, 58, 50, 40."""
    quality = (80, 65, 58, 50, 40)[severity - 1]
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return np.stack(out).astype(np.float64)


CORRUPTION_FUNCTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}


def corrupt_uint8(images: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Corrupt uint8 images (B,H,W,3); the result is truncated to uint8 as in ``make_cifar_c.py``."""
    return np.clip(CORRUPTION_FUNCTIONS[corruption](images, severity, rng), 0, 255).astype(np.uint8)


def corrupt_batch(images: torch.Tensor, corruption: str, severity: int) -> torch.Tensor:
    """Corrupt a (B,3,H,W) batch in [0,1]; the numpy Generator is seeded from torch's global RNG."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ConfigError(f"common corruptions need RGB images of shape (B,3,H,W), got {tuple(images.shape)}")
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    if len(images) == 0:
        return images.detach().clone()
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()
    corrupted = corrupt_uint8(pixels.numpy(), corruption, severity, rng)
    return _to_tensor(corrupted, images)


def _to_tensor(pixels: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """uint8 (B,H,W,3) -> (B,3,H,W) in [0,1] with ``like``'s device and dtype."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
    return tensor.to(like.device, like.dtype) / 255


@functools.lru_cache(maxsize=32)
def open_stored(corruptions_dir: str, corruption: str) -> np.ndarray:
    """Memory-map ``<corruptions_dir>/<corruption>.npy`` (uint8, (5·N, H, W, 3)), checked and opened once."""
    path = Path(corruptions_dir).expanduser() / f"{corruption}.npy"
    if not path.is_file():
        raise ConfigError(f"CIFAR-10-C file not found: {path} (corruptions_dir must hold <corruption>.npy files)")
    try:
        stored = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path} as a .npy array: {error}") from error
    if stored.dtype != np.uint8 or stored.ndim != 4 or stored.shape[-1] != 3 or len(stored) == 0 or len(stored) % 5:
        raise ConfigError(f"{path}: expected a uint8 array of shape (5·N, H, W, 3) (CIFAR-10-C: (50000, 32, 32, 3)), "
                          f"got {stored.dtype} {tuple(stored.shape)}")
    return stored


@functools.lru_cache(maxsize=4)
def _stored_labels(corruptions_dir: str) -> np.ndarray | None:
    path = Path(corruptions_dir).expanduser() / "labels.npy"
    return np.load(path) if path.is_file() else None


def check_stored_labels(corruptions_dir: str, rows: np.ndarray, labels: torch.Tensor) -> None:
    """When ``labels.npy`` is there, the stored labels of the looked-up rows must equal the batch's labels: the
    files are in CIFAR-10's original test order, and a dataset in another order would silently mismatch."""
    stored = _stored_labels(corruptions_dir)
    if stored is None:
        return
    expected = torch.as_tensor(np.asarray(stored[rows]), dtype=torch.long)
    mismatch = (expected != labels.detach().cpu().long()).nonzero()
    if len(mismatch):
        raise ConfigError(f"the CIFAR-10-C files in {corruptions_dir} are not in this dataset's order (label differs "
                          f"at batch position {int(mismatch[0])}); --corruptions-dir needs CIFAR-10 in its original "
                          "test order, i.e. loaded from torchvision's python batches, not an image folder")


@register_threat("corruption", tag="unseen", column="corr")
class CommonCorruption(Threat):
    """A CIFAR-10-C common corruption at one severity (Hendrycks & Dietterich 2019), generated or loaded."""

    uses_example_ids: ClassVar[bool] = True
    corruption: str
    severity: int
    corruptions_dir: str | None

    def __init__(self, corruption: str, severity: int, corruptions_dir: str | None = None,
                 given_clean: bool = False) -> None:
        if corruption not in CORRUPTIONS:
            raise ConfigError(f"unknown corruption '{corruption}'; valid: {', '.join(CORRUPTIONS)}")
        if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
            raise ConfigError(f"corruption severity must be one of {', '.join(map(str, SEVERITIES))}, got {severity!r}")
        self.corruption = corruption
        self.severity = int(severity)
        # Stored per corruption (its 5 severities pooled); the unseen suite's Com. Corr. column pools all 15.
        self.column = f"corr/{corruption}"  # type: ignore[misc]
        self.corruptions_dir = None if corruptions_dir is None else str(corruptions_dir)
        self.given_clean = bool(given_clean)
        if self.corruptions_dir is not None:
            open_stored(self.corruptions_dir, corruption)  # fail early on a missing or malformed file

    def params(self) -> dict[str, Any]:
        return {"corruption": self.corruption, "severity": self.severity, "corruptions_dir": self.corruptions_dir,
                "given_clean": self.given_clean}

    def budget(self) -> Budget:
        return UnboundedBudget(f"common corruption {self.corruption} severity {self.severity}: no norm bound")

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 example_ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        if self.corruptions_dir is None:
            return corrupt_batch(images, self.corruption, self.severity)
        return self._load(images, labels, example_ids)

    def _load(self, images: torch.Tensor, labels: torch.Tensor,
              example_ids: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        """Stored images ``(severity − 1)·N + example_id`` from the memory-mapped ``.npy`` file."""
        stored = open_stored(str(self.corruptions_dir), self.corruption)
        per_severity = len(stored) // 5
        if example_ids is None:
            raise ConfigError(f"{self!r} loads stored images and needs example_ids (indices into the test set)")
        ids = torch.as_tensor(example_ids, dtype=torch.long).reshape(-1).cpu().numpy()
        if len(ids) != len(images):
            raise ConfigError(f"{self.corruption}: got {len(ids)} example ids for {len(images)} images")
        if len(ids) and (ids.min() < 0 or ids.max() >= per_severity):
            raise ConfigError(f"{self.corruption}: example ids must lie in [0, {per_severity}), "
                              f"got {ids.min()}..{ids.max()}")
        if tuple(stored.shape[1:3]) != tuple(images.shape[2:]):
            raise ConfigError(f"{self.corruption}: stored images are {stored.shape[1]}×{stored.shape[2]}, "
                              f"the batch is {images.shape[2]}×{images.shape[3]}")
        rows = (self.severity - 1) * per_severity + ids
        check_stored_labels(str(self.corruptions_dir), rows, labels)
        return _to_tensor(stored[rows], images)


def clean_conditioned(name: str, params: dict[str, Any]) -> bool:
    """Whether a stored threat is a corruption whose results count only clean-correct examples: stored with
    ``given_clean=True``, or before the parameter existed (when that was the rule)."""
    return name == CommonCorruption.name and bool(params.get("given_clean", True))


def cifar10_c_threats(corruptions_dir: str | None = None) -> list[CommonCorruption]:
    """All 75 CIFAR-10-C threats: every corruption in :data:`CORRUPTIONS` order, severities 1 to 5."""
    return [CommonCorruption(name, severity, corruptions_dir) for name in CORRUPTIONS for severity in SEVERITIES]
