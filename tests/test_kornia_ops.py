"""The kornia-backed operations of the threats equal the hand-written code they replaced (values and gradients),
and the hand-written operations kept because kornia's differ do differ (so docs/kornia.md's reasons stay true).

The references are frozen copies of the pre-kornia code in tests/kornia_reference.py; timings are in
bench/kornia_ops.py (not tested: they depend on the machine).
"""

from __future__ import annotations

import kornia
import pytest
import torch

from rome_bench.threats.functional import CIELUV, YPbPr
from rome_bench.threats.uar_geometric import Elastic
from tests import kornia_reference as ref


def _inputs(*shape: int, low: float = 0.0, high: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * (high - low) + low


def _value_and_grad(function, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) and ∂⟨f(x), w⟩/∂x for a fixed random w."""
    leaf = source.detach().clone().requires_grad_(True)
    output = function(leaf)
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=output.dtype)
    (grad,) = torch.autograd.grad((output * weights).sum(), leaf)
    return output.detach(), grad


def _assert_same(ours, theirs, source: torch.Tensor, atol: float = 0.0) -> None:
    ours_value, ours_grad = _value_and_grad(ours, source)
    theirs_value, theirs_grad = _value_and_grad(theirs, source)
    assert torch.allclose(ours_value, theirs_value, rtol=0, atol=atol)
    assert torch.allclose(ours_grad, theirs_grad, rtol=0, atol=atol)


def _with_thresholds(values: torch.Tensor, *points: float) -> torch.Tensor:
    """``values`` with the piecewise curves' break points (and their float neighbours) written into it."""
    flat = values.flatten().clone()
    specials = torch.tensor([p for point in points for p in (point, point * (1 - 1e-7), point * (1 + 1e-7))])
    flat[:len(specials)] = specials
    return flat.view_as(values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_srgb_transfer_curves_are_bit_identical_to_the_hand_written_ones(dtype):
    # decoding sees only images in [0, 1] (CIELUV.from_rgb); below -0.055 kornia < 0.9 has NaN gradients
    images = _with_thresholds(_inputs(4, 3, 16, 16), 0.04045).to(dtype)
    _assert_same(ref.srgb_to_linear, kornia.color.rgb_to_linear_rgb, images)
    # encoding sees linear RGB before CIELUV.to_rgb's final clamp, which can leave the unit box
    linear = _with_thresholds(_inputs(4, 3, 16, 16, low=-0.2, high=1.2), 0.0031308).to(dtype)
    _assert_same(ref.linear_to_srgb, kornia.color.linear_rgb_to_rgb, linear)


def test_cieluv_round_trip_equals_the_pre_kornia_implementation():
    images = _inputs(8, 3, 16, 16)
    space = CIELUV()
    _assert_same(ref.cieluv_from_rgb, space.from_rgb, images)
    colours = space.from_rgb(images)
    shifted = colours + _inputs(*colours.shape, low=-0.06, high=0.06, seed=2)  # as ReColorAdv perturbs them
    _assert_same(ref.cieluv_to_rgb, space.to_rgb, shifted)


def test_elastic_flow_smoothing_equals_the_pre_kornia_implementation():
    """Elastic smooths its flow with kornia's filter2d (reflect border): bit-identical to the pad + conv it replaced."""
    images, flow = _inputs(4, 3, 32, 32), _inputs(4, 2, 32, 32, low=-0.125, high=0.125, seed=3)
    elastic = Elastic()
    kernel = ref.gaussian_kernel(elastic.kernel_size, elastic.kernel_std, torch.float32)
    _assert_same(lambda f: ref.smooth_flow(f, kernel.expand(2, 1, -1, -1)), lambda f: elastic.smooth(f, kernel), flow)
    _assert_same(lambda f: ref.elastic_apply(images, f), lambda f: elastic.apply(images, f), flow)


def test_kornia_colour_conversions_that_stay_hand_written_differ_from_ours():
    """docs/kornia.md keeps our CIELUV, YPbPr and JFIF YCbCr because kornia's constants differ by more than 1e-5."""
    images = _inputs(8, 3, 16, 16)
    luv = kornia.color.rgb_to_luv(images)
    scaled = torch.stack([luv[:, 0] / 100, (luv[:, 1] + 100) / 200, (luv[:, 2] + 100) / 200], dim=1)
    assert (scaled - CIELUV().from_rgb(images)).abs().max() > 1e-5
    assert (kornia.color.rgb_to_ycbcr(images) - YPbPr().from_rgb(images)).abs().max() > 1e-5
    jfif_cb = 128 + (-0.168736 * images[:, 0] - 0.331264 * images[:, 1] + 0.5 * images[:, 2]) * 255
    assert (kornia.color.rgb_to_ycbcr(images)[:, 1] * 255 - jfif_cb).abs().max() > 0.4  # 127.5 vs 128 offset


def test_kornia_elastic_transform_differs_from_advex_uar_elastic_at_the_border():
    """kornia's elastic_transform2d zero-pads the flow before smoothing; advex-uar (and ours) reflect-pads."""
    images = _inputs(2, 3, 32, 32)
    flow = torch.full((2, 2, 32, 32), 0.125)
    ours = Elastic().apply(images, flow)
    theirs = kornia.geometry.transform.elastic_transform2d(images, flow, (5, 5), (Elastic().kernel_std,) * 2,
                                                           alpha=(2 / 32, 2 / 32), align_corners=True)
    inner = (ours - theirs.clamp(0, 1))[..., 3:-3, 3:-3]
    assert inner.abs().max() < 1e-5  # same warp away from the border
    assert (ours - theirs.clamp(0, 1)).abs().max() > 1e-3  # not at it
