"""bf16 for attacks (``eval --precision bf16``, ``train.precision=bf16``): the model's passes only, nothing else.

Autocast around a whole attack would also run the threat's own arithmetic in bf16: the differentiable renderers of
the parametric threats (snow, Gabor, elastic, JPEG-ℓ∞, ReColorAdv), whose outputs must re-render from the recorded
parameters, and pyautoattack's bookkeeping (Square's best-loss buffers mixed bf16 and fp32). So attacks get the
model through :func:`attack_model`: inside :func:`autocast_attacks` that is an :class:`AutocastModel`, whose forward
— and, through autograd, whose backward — runs under autocast and whose logits come back as fp32. Steps,
projections, clipping, losses and renderers stay fp32, and the runner classifies with the model itself, in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

from rome_bench.models.compiled import FixedBatchCompiled

_ATTACK_DTYPE: ContextVar[torch.dtype | None] = ContextVar("rome_bench_attack_dtype", default=None)


class AutocastModel(nn.Module):
    """``model`` run under autocast to ``dtype`` (its backward follows autograd's record); fp32 logits out."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=self.dtype):
            logits = self.model(images)
        return logits.float()

    def extra_repr(self) -> str:
        return f"dtype={str(self.dtype).removeprefix('torch.')}"


@contextlib.contextmanager
def autocast_attacks(dtype: torch.dtype) -> Iterator[None]:
    """While active, :func:`attack_model` hands attacks the model under autocast to ``dtype``."""
    token = _ATTACK_DTYPE.set(dtype)
    try:
        yield
    finally:
        _ATTACK_DTYPE.reset(token)


def attack_dtype() -> torch.dtype | None:
    """The dtype attacks run the model in right now (None: the model's own)."""
    return _ATTACK_DTYPE.get()


def plain_model(model: nn.Module) -> nn.Module:
    """The model itself — eager, in its own precision — under the evaluation's wrappers (bf16 attacks,
    ``--compile``): for an attack that reads the model's internals (PPGD/LPA's own-feature LPIPS hooks its blocks)."""
    while isinstance(model, AutocastModel | FixedBatchCompiled):
        model = model.model
    return model


def attack_model(model: nn.Module) -> nn.Module:
    """The model as an attack should call it: under :func:`autocast_attacks`, an :class:`AutocastModel`."""
    dtype = _ATTACK_DTYPE.get()
    return model if dtype is None else AutocastModel(model, dtype)
