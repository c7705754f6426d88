"""What the threat tests measure on a model: accuracy on a batch, and which examples are fooled."""

from __future__ import annotations

import torch
from torch import nn


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def fooled(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A (B,) mask of the examples the model misclassifies."""
    with torch.no_grad():
        return model(images).argmax(1) != labels
