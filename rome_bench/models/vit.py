"""Vision Transformers from timm, sized for the dataset (patch 4 on 32x32 images, 16 on 224x224)."""

from __future__ import annotations

from typing import Any

from timm.models.vision_transformer import VisionTransformer

from rome_bench.models.registry import MODELS

VIT_SIZES: dict[str, dict[str, int]] = {
    "vit_micro": {"embed_dim": 32, "depth": 2, "num_heads": 2},  # for tests
    "vit_smoke": {"embed_dim": 64, "depth": 4, "num_heads": 4},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


def _make_vit_builder(size: dict[str, int]):
    def build(num_classes: int, image_size: int, patch_size: int, **overrides: int) -> VisionTransformer:
        kwargs: dict[str, Any] = {**size, **overrides}
        return VisionTransformer(img_size=image_size, patch_size=patch_size, num_classes=num_classes, **kwargs)

    return build


for _name, _size in VIT_SIZES.items():
    MODELS.add(_name, _make_vit_builder(_size), family="vit", **_size)
