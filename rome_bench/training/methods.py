"""Multi-perturbation adversarial training recipes (paper Eq. 1 and Eq. 9).

A recipe decides which threats attack which examples (``assign``) and how the per-example adversarial losses
are aggregated into φ(L_1, L_2, L_∞) (``aggregate``):

* ``max`` (Tramèr & Boneh): every threat attacks every example; each example contributes its worst threat's loss.
* ``avg`` (Tramèr & Boneh): every threat attacks every example; the losses are averaged.
* ``random`` (Madaan et al.): each example draws one threat uniformly; its loss is that threat's loss.
* ``rome+max``, ``rome+random``, ``rome+avg``: the same on a model with RoME experts, plus λ·(routing loss):
  L_div (Eq. 9) by default, or the one ``--routing-loss`` chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rome_bench.registry import Registry

Assignment = tuple[torch.Tensor, torch.Tensor]  # (example index, threat id), one entry per adversarial input


def all_threats_every_example(batch_size: int, num_threats: int, device: torch.device) -> Assignment:
    """Threat-major order: entries p·B … p·B+B−1 are threat p on examples 0 … B−1."""
    examples = torch.arange(batch_size, device=device).repeat(num_threats)
    threats = torch.arange(num_threats, device=device).repeat_interleave(batch_size)
    return examples, threats


def one_random_threat_per_example(batch_size: int, num_threats: int, device: torch.device) -> Assignment:
    """Cat(1/P, …, 1/P) per example, drawn from the global torch RNG (saved in checkpoints)."""
    threats = torch.randint(num_threats, (batch_size,)).to(device)
    return torch.arange(batch_size, device=device), threats


def worst_threat_loss(losses: torch.Tensor, assignment: Assignment, batch_size: int) -> torch.Tensor:
    """φ_MAX: mean over examples of the largest per-threat loss."""
    return losses.view(-1, batch_size).max(dim=0).values.mean()


def mean_threat_loss(losses: torch.Tensor, assignment: Assignment, batch_size: int) -> torch.Tensor:
    """φ_AVG (and φ_RANDOM, where each example has one entry): mean of all adversarial losses."""
    return losses.mean()


@dataclass(frozen=True)
class Method:
    name: str
    assign: Callable[[int, int, torch.device], Assignment]
    aggregate: Callable[[torch.Tensor, Assignment, int], torch.Tensor]
    uses_experts: bool
    description: str


METHODS: Registry[Method] = Registry("methods")


def register_method(method: Method) -> Method:
    METHODS.add(method.name, method, uses_experts=method.uses_experts, description=method.description)
    return method


_RECIPES = {
    "max": (all_threats_every_example, worst_threat_loss, "MAX: each example's worst threat (Tramèr & Boneh 2019)"),
    "avg": (all_threats_every_example, mean_threat_loss, "AVG: mean over threats (Tramèr & Boneh 2019)"),
    "random": (one_random_threat_per_example, mean_threat_loss, "RANDOM: one random threat per example"),
}

for _name, (_assign, _aggregate, _text) in _RECIPES.items():
    register_method(Method(_name, _assign, _aggregate, False, _text))
    register_method(Method(f"rome+{_name}", _assign, _aggregate, True, f"RoME experts + L_div on {_text}"))
