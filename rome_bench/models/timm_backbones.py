"""DeiT and Swin (paper Table A1) and XCiT (Table 3) from timm, sized for the dataset, experts on their attention.

DeiT is timm's VisionTransformer with DeiT's recipe (``deit_*``; the distilled variants carry a second prefix
token, handled by the experts' prefix count). Swin's window attention sees the tokens of one window at a time;
the RoME gates join the windows of each image so that the global gate stays image-level (see models/rome.py).

On 32×32 images with patch 4, Swin gets 8×8 tokens: the window is 4 (7 does not divide 8), and timm shrinks it to
the whole map in the later stages. Pretrained starts (``model.pretrained``: a file or a timm tag) are loaded by
models/pretrained.py.

XCiT (El-Nouby et al., "XCiT: Cross-Covariance Image Transformers", NeurIPS 2021): ``xcit_s`` is timm's
``xcit_small_12_p16_224`` (XCiT-S12: d 384, 12 XCA blocks, 8 heads, 2 class-attention layers), the ImageNet-1K
backbone of the paper's Table 3 (RobustBench's Debenedetti et al. 2022 ℓ∞ model). Its patch embedding is a stack of
four 3×3 stride-2 convs (patch 16); timm builds no other stem than 16 or 8. For a smaller patch p the first
log2(16/p) of these convs get stride 1, which is how RobustBench adapts XCiT to 32×32 CIFAR-10 images (p = 4), so the
parameters (and state-dict keys) stay those of the patch-16 model. The positional encoding is Fourier features of the
token grid, computed at every size. The XCA blocks see patch tokens only (the CLS token joins in the class-attention
layers after them), so the model reports ``num_prefix_tokens = 0`` and RoME's experts go on the blocks' qkv/proj
without a CLS token (``dual-cls`` is refused).
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.registry import MODELS

DEIT_SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    "deit_micro": ("deit_tiny_patch16_224", {"embed_dim": 32, "depth": 2, "num_heads": 2}),  # for tests
    "deit_tiny": ("deit_tiny_patch16_224", {}),
    "deit_small": ("deit_small_patch16_224", {}),
    "deit_base": ("deit_base_patch16_224", {}),
    "deit_base_distilled": ("deit_base_distilled_patch16_224", {}),
}

SWIN_SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    "swin_micro": ("swin_tiny_patch4_window7_224", {"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)}),
    "swin_tiny": ("swin_tiny_patch4_window7_224", {}),
    "swin_small": ("swin_small_patch4_window7_224", {}),
    "swin_base": ("swin_base_patch4_window7_224", {}),
}

XCIT_SIZES: dict[str, tuple[str, dict[str, Any]]] = {
    "xcit_micro": ("xcit_small_12_p16_224", {"embed_dim": 32, "depth": 2, "num_heads": 2, "cls_attn_layers": 1}),
    "xcit_s": ("xcit_small_12_p16_224", {}),
}
XCIT_STEM_PATCH = 16  # the patch of the four-conv stem the XCiT checkpoints have


def swin_window(image_size: int, patch_size: int) -> int:
    """Swin's window: 7 when it tiles the token map (224/4 = 56), else the largest of 4, 2, 1 that does."""
    tokens = image_size // patch_size
    return next(window for window in (7, 4, 2, 1) if tokens % window == 0)


def _deit_builder(timm_name: str, size: dict[str, Any]):
    def build(num_classes: int, image_size: int, patch_size: int, **overrides: Any) -> nn.Module:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, img_size=image_size,
                                 patch_size=patch_size, **{**size, **overrides})

    return build


def _swin_builder(timm_name: str, size: dict[str, Any]):
    def build(num_classes: int, image_size: int, patch_size: int, **overrides: Any) -> nn.Module:
        kwargs = {"window_size": swin_window(image_size, patch_size), **size, **overrides}
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, img_size=image_size,
                                 patch_size=patch_size, **kwargs)

    return build


def xcit_stride_one_convs(patch_size: int) -> int:
    """How many of the stem's four stride-2 convs get stride 1 for ``patch_size``: log2(16 / p), p in 1, 2, 4, 8, 16."""
    allowed = [XCIT_STEM_PATCH >> n for n in range(5)]
    if patch_size not in allowed:
        raise ConfigError(f"XCiT takes patch size {', '.join(map(str, allowed))} (its stem halves the image up to "
                          f"four times); got {patch_size}: set model.patch_size")
    return allowed.index(patch_size)


def _xcit_builder(timm_name: str, size: dict[str, Any]):
    def build(num_classes: int, image_size: int, patch_size: int, **overrides: Any) -> nn.Module:
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, img_size=image_size,
                                  patch_size=XCIT_STEM_PATCH, **{**size, **overrides})
        stride_two = [stage[0] for stage in model.patch_embed.proj if isinstance(stage, nn.Sequential)]
        for conv in stride_two[:xcit_stride_one_convs(patch_size)]:
            conv.stride = (1, 1)
        model.patch_embed.patch_size = patch_size
        model.patch_embed.num_patches = (image_size // patch_size) ** 2
        model.num_prefix_tokens = 0  # the XCA blocks see patch tokens only
        return model

    return build


for _name, (_timm, _size) in DEIT_SIZES.items():
    MODELS.add(_name, _deit_builder(_timm, _size), family="deit", timm=_timm, **_size)
for _name, (_timm, _size) in SWIN_SIZES.items():
    MODELS.add(_name, _swin_builder(_timm, _size), family="swin", timm=_timm, **_size)
for _name, (_timm, _size) in XCIT_SIZES.items():
    MODELS.add(_name, _xcit_builder(_timm, _size), family="xcit", timm=_timm, **_size)
