"""The optimiser and the learning-rate schedule of a training run (``train.optimizer``, ``train.schedule``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from rome_bench.config import TrainConfig

POLY_POWER = 0.9  # the sparse-MoE paper's poly decay (their PolyLR exponent)


def learning_rate(config: TrainConfig, epoch_progress: float) -> float:
    """The paper's schedule: linear warm-up, linear decay to decay_floor·lr, then to final_floor·lr.

    The three phases are scaled to ``config.epochs`` when it differs from their sum. ``train.schedule = poly``
    (Pavlitska et al.'s PolyLR): lr·(1 − e/epochs)^0.9 with e the epoch index, constant within an epoch.
    """
    if config.schedule == "poly":
        return config.lr * (1 - min(math.floor(epoch_progress), config.epochs) / config.epochs) ** POLY_POWER
    phases = config.warmup_epochs + config.decay_epochs + config.final_epochs
    scale = config.epochs / phases if phases > 0 else 1.0
    warmup, decay, final = (config.warmup_epochs * scale, config.decay_epochs * scale, config.final_epochs * scale)
    e = epoch_progress
    if e < warmup:
        return config.lr * e / warmup
    if e < warmup + decay:
        return config.lr * (1 - (1 - config.decay_floor) * (e - warmup) / decay)
    if e < warmup + decay + final:
        fraction = (e - warmup - decay) / final
        return config.lr * (config.decay_floor - (config.decay_floor - config.final_floor) * fraction)
    return config.lr * config.final_floor


SGD_MOMENTUM = 0.9  # the sparse-MoE paper's


def build_optimizer(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (the paper's optimiser), with the fused kernel: one launch for all parameters; or ``sgd-nesterov``
    (SGD, Nesterov momentum 0.9, weight decay as an L2 term: the sparse-MoE paper's)."""
    if config.optimizer == "sgd-nesterov":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group of ``optimizer`` steps with ``lr`` from now on."""
    for group in optimizer.param_groups:
        group["lr"] = lr
