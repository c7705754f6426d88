"""The model registry: a builder ``(num_classes, image_size, patch_size, **overrides) -> nn.Module``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rome_bench.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("models")
