"""DeiT and Swin from timm (paper Table A1), sized for the dataset, experts on their attention projections.

DeiT is timm's VisionTransformer with DeiT's recipe (``deit_*``; the distilled variants carry a second prefix
token, handled by the experts' prefix count). Swin's window attention sees the tokens of one window at a time;
the RoME gates join the windows of each image so that the global gate stays image-level (see models/rome.py).

On 32×32 images with patch 4, Swin gets 8×8 tokens: the window is 4 (7 does not divide 8), and timm shrinks it to
the whole map in the later stages. Nothing is downloaded: start from local weights with ``model.pretrained``.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

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


for _name, (_timm, _size) in DEIT_SIZES.items():
    MODELS.add(_name, _deit_builder(_timm, _size), family="deit", timm=_timm, **_size)
for _name, (_timm, _size) in SWIN_SIZES.items():
    MODELS.add(_name, _swin_builder(_timm, _size), family="swin", timm=_timm, **_size)
