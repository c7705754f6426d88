"""Each hand-written differentiable operation of the threats against kornia's same-named operation (issue 14).

For every candidate: the outputs on a CIFAR-size batch (128×3×32×32, float32) are compared (max |Δ|, and the
input gradients of a fixed random projection of the output), and forward+backward time is measured with one
thread as the process's CPU time (on a machine shared with other jobs, wall time also counts the time the process
waits for a core, which made the same comparison swing between 0.9× and 1.5×). Each of ``--repeats`` rounds
times ours and kornia back to back (in alternating order; each timing runs enough calls to last ≥ 20 ms); the
table shows the median time of each and the median (and interquartile range) of the per-round ratios
kornia / ours, which a drifting load affects less than the ratio of the medians. "ours" is the code rome-bench had
before this comparison (tests/kornia_reference.py for the operations that were replaced, the package's code for
those that stay).

Decision rule: use kornia only if its output and gradients equal ours to ≤ 1e-5 · max(1, max|ours|) **and** it is
not slower (time ratio kornia / ours ≤ 1.05); otherwise keep ours and say why.

    PYTHONPATH=$PWD python bench/kornia_ops.py [--repeats 101]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import kornia
import torch
from kornia.enhance.jpeg import _dct_8x8 as kornia_private_dct_8x8

from rome_bench.threats.functional import CIELUV, YPbPr
from rome_bench.threats.uar_geometric import CHROMA_SHIFT, RGB_TO_YCBCR, Elastic, JPEGLinf, dct_8x8
from tests import kornia_reference as ref

TOLERANCE = 1e-5
MAX_RATIO = 1.05
ROUND_SECONDS = 0.02
BATCH = (128, 3, 32, 32)
ELASTIC_SIZE, ELASTIC_STD = 5, 3.0 / 224.0 * 32


@dataclass(frozen=True)
class Candidate:
    operation: str
    ours: Callable[[torch.Tensor], torch.Tensor]
    kornia: Callable[[torch.Tensor], torch.Tensor]
    make_input: Callable[[], torch.Tensor]
    differentiable: bool = True
    differs_because: str = ""
    """Why the outputs differ, when they do (printed instead of the bare number)."""
    veto: str = ""
    """A reason to keep ours whatever the measurements say (e.g. a private kornia function)."""


@dataclass(frozen=True)
class Measured:
    ours_ms: float
    kornia_ms: float
    ratio: float
    """Median over rounds of kornia's time / ours in the same round (robust to load drifting between rounds)."""
    ratio_iqr: tuple[float, float]
    diff: float
    grad_diff: float
    scale: float


def _images() -> torch.Tensor:
    return torch.rand(BATCH, generator=torch.Generator().manual_seed(0))


def _flow() -> torch.Tensor:
    return (torch.rand(BATCH[0], 2, *BATCH[2:], generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.125


def _dummy() -> torch.Tensor:
    return torch.zeros(1)


def _luv_scaled(rgb: torch.Tensor) -> torch.Tensor:
    luv = kornia.color.rgb_to_luv(rgb)
    return torch.stack([luv[:, 0] / 100, (luv[:, 1] + 100) / 200, (luv[:, 2] + 100) / 200], dim=1)


def _luv_unscaled_to_rgb(colours: torch.Tensor) -> torch.Tensor:
    luv = torch.stack([colours[:, 0] * 100, colours[:, 1] * 200 - 100, colours[:, 2] * 200 - 100], dim=1)
    return kornia.color.luv_to_rgb(luv).clamp(0, 1)


def _jfif_ours(rgb: torch.Tensor) -> torch.Tensor:
    convert = torch.tensor(RGB_TO_YCBCR, dtype=rgb.dtype)
    return torch.einsum("dc,bchw->bdhw", convert, rgb * 255) + torch.tensor(CHROMA_SHIFT).view(1, 3, 1, 1)


def _blocks() -> torch.Tensor:
    return torch.rand(BATCH[0], 24, 8, 8, generator=torch.Generator().manual_seed(2)) * 255


def candidates() -> list[Candidate]:
    """Every hand-written operation of the threats that kornia has an operation for."""
    elastic = Elastic(kernel_size=ELASTIC_SIZE, kernel_std=ELASTIC_STD)
    images = _images()
    kernel = ref.gaussian_kernel(ELASTIC_SIZE, ELASTIC_STD, torch.float32)
    depthwise = kernel.expand(2, 1, -1, -1)
    kernel_1d = kornia.filters.get_gaussian_kernel1d(ELASTIC_SIZE, ELASTIC_STD, dtype=torch.float64).float()
    jpeg = JPEGLinf()
    jpeg_theta = torch.zeros(jpeg.parameter_shape(images))
    quality = torch.tensor([50.0])
    cieluv, ypbpr = CIELUV(), YPbPr()
    size = (ELASTIC_SIZE, ELASTIC_SIZE)
    sigma = (ELASTIC_STD, ELASTIC_STD)
    return [
        Candidate("elastic: Gaussian kernel 5×5 (built once per call)",
                  lambda _: ref.gaussian_kernel(ELASTIC_SIZE, ELASTIC_STD, torch.float32),
                  lambda _: kornia.filters.get_gaussian_kernel2d(size, sigma, dtype=torch.float64)[0].float(),
                  _dummy, differentiable=False),
        Candidate("elastic: flow smoothing, precomputed kernel (reflect pad + depthwise conv)",
                  lambda flow: ref.smooth_flow(flow, depthwise),
                  lambda flow: kornia.filters.filter2d(flow, kernel[None], border_type="reflect"), _flow),
        Candidate("elastic: Elastic.apply, hand-written vs kornia filter2d smoothing (as now in the package)",
                  lambda flow: ref.elastic_apply(images, flow), lambda flow: elastic.apply(images, flow), _flow),
        Candidate("elastic: flow smoothing, separable 1-D passes (kornia filter2d_separable)",
                  lambda flow: ref.smooth_flow(flow, depthwise),
                  lambda flow: kornia.filters.filter2d_separable(flow, kernel_1d, kernel_1d, border_type="reflect"),
                  _flow),
        Candidate("elastic: flow smoothing, kernel rebuilt per call (kornia gaussian_blur2d)",
                  lambda flow: ref.smooth_flow(flow, depthwise),
                  lambda flow: kornia.filters.gaussian_blur2d(flow, size, sigma, border_type="reflect"), _flow),
        Candidate("elastic: identity grid (align_corners=True)",
                  lambda _: ref.identity_grid(32, 32, torch.float32),
                  lambda _: kornia.geometry.create_meshgrid(32, 32, normalized_coordinates=True), _dummy,
                  differentiable=False),
        Candidate("elastic: whole warp vs kornia elastic_transform2d",
                  lambda flow: elastic.apply(images, flow),
                  lambda flow: kornia.geometry.transform.elastic_transform2d(
                      images, flow, size, sigma, alpha=(2 / 32, 2 / 32), align_corners=True).clamp(0, 1),
                  _flow, differs_because="kornia zero-pads the flow before smoothing (advex-uar reflect-pads)"),
        Candidate("stadv: identity grid (align_corners=False)",
                  ref.stadv_identity_grid, lambda x: kornia.geometry.create_meshgrid(32, 32), _images,
                  differentiable=False,
                  differs_because="kornia's meshgrid is corner-aligned; StAdv samples at pixel centres"),
        Candidate("recoloradv: sRGB → linear RGB", ref.srgb_to_linear, kornia.color.rgb_to_linear_rgb, _images),
        Candidate("recoloradv: linear RGB → sRGB",
                  ref.linear_to_srgb, kornia.color.linear_rgb_to_rgb, lambda: ref.srgb_to_linear(_images())),
        Candidate("recoloradv: CIELUV.from_rgb, hand-written vs kornia sRGB curve (as now in the package)",
                  ref.cieluv_from_rgb, cieluv.from_rgb, _images),
        Candidate("recoloradv: CIELUV.to_rgb, hand-written vs kornia sRGB curve (as now in the package)",
                  ref.cieluv_to_rgb, cieluv.to_rgb, lambda: cieluv.from_rgb(_images())),
        Candidate("recoloradv: RGB → CIELUV (scaled)", cieluv.from_rgb, _luv_scaled, _images,
                  differs_because="kornia's sRGB→XYZ matrix has 6 digits and white (0.95047, 1, 1.08883); "
                                  "ours/mister_ed's has 4 digits and its own row sums as white"),
        Candidate("recoloradv: CIELUV (scaled) → RGB", cieluv.to_rgb, _luv_unscaled_to_rgb,
                  lambda: cieluv.from_rgb(_images()),
                  differs_because="different matrix and white, and ours clamps XYZ and v' as mister_ed"),
        Candidate("recoloradv: RGB → YPbPr", ypbpr.from_rgb, kornia.color.rgb_to_ycbcr, _images,
                  differs_because="kornia rounds the chroma scales to 0.564 / 0.713 (ours: 1/1.772, 1/1.402)"),
        Candidate("recoloradv: YPbPr → RGB", ypbpr.to_rgb, lambda c: kornia.color.ycbcr_to_rgb(c).clamp(0, 1),
                  lambda: ypbpr.from_rgb(_images()), differs_because="inverse of kornia's rounded scales"),
        Candidate("jpeg-linf: RGB → JFIF YCbCr (0–255)", _jfif_ours,
                  lambda x: kornia.color.rgb_to_ycbcr(x) * 255, _images,
                  differs_because="JFIF shifts chroma by 128 (kornia: 0.5·255 = 127.5) and has 6-digit scales"),
        Candidate("jpeg-linf: 8×8 DCT-II of blocks − 128", lambda b: dct_8x8(b - 128), kornia_private_dct_8x8,
                  _blocks, veto="kornia's DCT is private (kornia.enhance.jpeg._dct_8x8), no public API"),
        Candidate("jpeg-linf: codec at θ = 0 vs kornia jpeg_codec_differentiable(q=50)",
                  lambda x: jpeg.apply(x, jpeg_theta), lambda x: kornia.enhance.jpeg_codec_differentiable(x, quality),
                  _images, differs_because="kornia rounds (differentiably) the quantised coefficients; advex-uar's "
                                           "JPEG-ℓ∞ never rounds, it adds θ/2 to them"),
        Candidate("snow: streak blur Gaussian 3×3 (float64, once per call)",
                  lambda _: ref.snow_gaussian_kernel(3, 0.5),
                  lambda _: kornia.filters.get_gaussian_kernel2d((3, 3), (0.5, 0.5), dtype=torch.float64)[0],
                  _dummy, differentiable=False),
        Candidate("snow: BT.709 luminance", ref.snow_luminance,
                  lambda x: kornia.color.rgb_to_grayscale(x, rgb_weights=x.new_tensor(ref.SNOW_LUMINANCE)), _images),
    ]


def _run(function: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, weights: torch.Tensor | None,
         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output and (for a differentiable op) gradient of ⟨output, weights⟩ w.r.t. the input."""
    if weights is None:
        with torch.no_grad():
            return function(source), None
    leaf = source.detach().clone().requires_grad_(True)
    output = function(leaf)
    output.backward(weights)
    return output.detach(), leaf.grad


def _seconds_per_call(function: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor,
                      weights: torch.Tensor | None, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        _run(function, source, weights)
    return (time.process_time() - started) / calls


def measure(candidate: Candidate, repeats: int) -> Measured:
    """Output and gradient differences, and the median forward+backward time of ours and kornia."""
    source = candidate.make_input()
    ours_out, _ = _run(candidate.ours, source, None)
    weights = (torch.randn(ours_out.shape, generator=torch.Generator().manual_seed(3))
               if candidate.differentiable else None)
    ours_out, ours_grad = _run(candidate.ours, source, weights)
    kornia_out, kornia_grad = _run(candidate.kornia, source, weights)
    diff = float((ours_out.double() - kornia_out.double().reshape(ours_out.shape)).abs().max()) \
        if kornia_out.numel() == ours_out.numel() else math.inf
    grad_diff = float((ours_grad - kornia_grad).abs().max()) if ours_grad is not None else 0.0
    for function in (candidate.ours, candidate.kornia):
        _seconds_per_call(function, source, weights, 3)  # warm-up (allocator, oneDNN primitives)
    calls = max(1, math.ceil(ROUND_SECONDS / max(_seconds_per_call(candidate.ours, source, weights, 1), 1e-7)))
    ours_times, kornia_times = [], []
    for round_ in range(repeats):
        order = [(candidate.ours, ours_times), (candidate.kornia, kornia_times)]
        for function, times in order if round_ % 2 == 0 else order[::-1]:
            times.append(_seconds_per_call(function, source, weights, calls))
    ratios = [k / o for k, o in zip(kornia_times, ours_times, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    scale = max(1.0, float(ours_out.abs().max()))
    return Measured(statistics.median(ours_times) * 1e3, statistics.median(kornia_times) * 1e3, quartiles[1],
                    (quartiles[0], quartiles[2]), diff, grad_diff, scale)


def decide(candidate: Candidate, measured: Measured) -> str:
    """The decision column: kornia, or ours with the reason."""
    limit = TOLERANCE * measured.scale
    if measured.diff > limit or measured.grad_diff > limit:
        return f"keep ours: outputs differ ({candidate.differs_because or 'see diff'})"
    if candidate.veto:
        return f"keep ours: {candidate.veto}"
    if measured.ratio > MAX_RATIO:
        return f"keep ours: same output, kornia {measured.ratio:.2f}× slower"
    return "kornia"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=101)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, {args.threads} thread(s), batch {BATCH}, "
          f"median of {args.repeats}; forward+backward where differentiable, else forward")
    print("| operation | ours (ms) | kornia (ms) | ratio (IQR) | max abs diff (out / grad) | decision |")
    print("|---|---:|---:|---|---|---|")
    table = candidates()
    for candidate in table:  # one pass over everything first, so the first row is not timed on a cold process
        measure(candidate, repeats=1)
    for candidate in table:
        measured = measure(candidate, args.repeats)
        grad = f"{measured.grad_diff:.1e}" if candidate.differentiable else "–"
        low, high = measured.ratio_iqr
        print(f"| {candidate.operation} | {measured.ours_ms:.4f} | {measured.kornia_ms:.4f} | "
              f"{measured.ratio:.2f} ({low:.2f}–{high:.2f}) | {measured.diff:.1e} / {grad} | "
              f"{decide(candidate, measured)} |", flush=True)


if __name__ == "__main__":
    main()
