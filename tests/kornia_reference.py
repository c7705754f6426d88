"""Frozen copies of rome-bench's hand-written operations that kornia was measured against (issue 14).

These are the implementations as they were before any was replaced by kornia, kept verbatim (as functions) so
that tests/test_kornia_ops.py and bench/kornia_ops.py can compare the kornia-backed code to them. Nothing in
``rome_bench`` imports this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SNOW_LUMINANCE = (0.2126, 0.7152, 0.0722)


def gaussian_kernel(size: int, std: float, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """uar_geometric.gaussian_kernel: normalised 2-D Gaussian, the outer product of 1-D Gaussians."""
    positions = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-0.5 * (positions / std) ** 2)
    weights = weights / weights.sum()
    return torch.outer(weights, weights).to(dtype=dtype, device=device)


def snow_gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """snow._gaussian_kernel: a normalised (size, size) float64 Gaussian centred in the window."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = profile[:, None] * profile[None, :]
    return kernel / kernel.sum()


def identity_grid(height: int, width: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """uar_geometric.identity_grid: grid_sample's (1, H, W, 2) identity grid under align_corners=True."""
    ys = torch.linspace(-1, 1, height, dtype=dtype, device=device)
    xs = torch.linspace(-1, 1, width, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


def smooth_flow(flow: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Elastic.smooth: reflect-pad the (B, 2, H, W) flow and convolve each channel with ``kernel`` (2, 1, k, k)."""
    pad = (kernel.shape[-1] - 1) // 2
    return F.conv2d(F.pad(flow, (pad,) * 4, mode="reflect"), kernel, groups=2)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding (gamma expansion) step of CIELUV.from_rgb."""
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """The sRGB encoding (gamma compression) step of CIELUV.to_rgb, before its final clamp."""
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def snow_luminance(images: torch.Tensor) -> torch.Tensor:
    """The BT.709 luminance (B, 1, H, W) inside snow.discolour."""
    weights = images.new_tensor(SNOW_LUMINANCE).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def stadv_identity_grid(images: torch.Tensor) -> torch.Tensor:
    """StAdv.identity_grid: grid_sample's identity grid (1, H, W, 2) for align_corners=False (pixel centres)."""
    height, width = images.shape[-2:]
    eye = torch.eye(2, 3, dtype=images.dtype, device=images.device).unsqueeze(0)
    return F.affine_grid(eye, [1, images.shape[1], height, width], align_corners=False)



def cieluv_from_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """CIELUV.from_rgb with its hand-written sRGB decoding (the rest is unchanged package code)."""
    from rome_bench.threats.functional import _RGB_TO_XYZ, CIELUV, _mix

    space = CIELUV()
    x, y, z = _mix(_RGB_TO_XYZ, srgb_to_linear(rgb)).unbind(1)
    denominator = x + 15 * y + 3 * z + space.EPS
    u_prime, v_prime = 4 * x / denominator, 9 * y / denominator
    lightness = torch.where(y <= (6 / 29) ** 3, (29 / 3) ** 3 * y, 116 * y.clamp_min((6 / 29) ** 3) ** (1 / 3) - 16)
    u = 13 * lightness * (u_prime - space.white_u)
    v = 13 * lightness * (v_prime - space.white_v)
    return torch.stack([lightness / 100, (u + 100) / 200, (v + 100) / 200], dim=1)


def cieluv_to_rgb(colours: torch.Tensor) -> torch.Tensor:
    """CIELUV.to_rgb with its hand-written sRGB encoding."""
    from rome_bench.threats.functional import _XYZ_TO_RGB, CIELUV, _mix

    space = CIELUV()
    lightness = colours[:, 0].clamp_min(0) * 100
    u, v = colours[:, 1] * 200 - 100, colours[:, 2] * 200 - 100
    u_prime = u / (13 * lightness + space.EPS) + space.white_u
    v_prime = v / (13 * lightness + space.EPS) + space.white_v
    y = torch.where(lightness <= 8, lightness * (3 / 29) ** 3, ((lightness + 16) / 116) ** 3)
    denominator = (4 * v_prime).clamp_min(1e-6)
    x = y * 9 * u_prime / denominator
    z = y * (12 - 3 * u_prime - 20 * v_prime) / denominator
    linear = _mix(_XYZ_TO_RGB, torch.stack([x, y, z], dim=1).clamp(0, 1.1))
    return linear_to_srgb(linear).clamp(0, 1)



def elastic_apply(images: torch.Tensor, flow: torch.Tensor, kernel_size: int = 5,
                  kernel_std: float = 3.0 / 224.0 * 32) -> torch.Tensor:
    """Elastic.apply (prepare + render) with its hand-written flow smoothing."""
    height, width = images.shape[-2:]
    kernel = gaussian_kernel(kernel_size, kernel_std, images.dtype, images.device).expand(2, 1, -1, -1)
    to_grid = torch.tensor([2.0 / width, 2.0 / height], dtype=images.dtype, device=images.device).view(1, 2, 1, 1)
    offset = (smooth_flow(flow.to(images), kernel) * to_grid).permute(0, 2, 3, 1)
    grid = identity_grid(height, width, images.dtype, images.device) + offset
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp(0, 1)
