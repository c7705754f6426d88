"""Models take images in [0,1]; normalisation lives inside the model."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """Normalise [0,1] images with the dataset's mean/std, then run the backbone."""

    mean: torch.Tensor  # buffers, (1, C, 1, 1)
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)

    def without_normalisation(self) -> None:
        """Feed images to the backbone unchanged (mean 0, std 1): for backbones that normalise, or need nothing."""
        self.mean = torch.zeros_like(self.mean)
        self.std = torch.ones_like(self.std)


def content_hash(model: nn.Module) -> str:
    """sha256 over parameter and buffer names and bytes: identical weights give identical hashes."""
    return state_hash(model.state_dict())


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """:func:`content_hash` of a model whose state dict is ``state`` (e.g. a weights file's tensors, unbuilt)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
