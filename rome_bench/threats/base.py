"""The threat interface, the threat registry, and budgets that the evaluation runner verifies.

A threat maps (model, images in [0,1], labels) to perturbed images in [0,1]. It never sees normalised space:
normalisation is inside the model. Adding a threat is one decorated class in one new file in ``rome_bench/threats/``
(importing the package imports every module in it, which registers the class; no other file changes)::

    @register_threat("my-threat", tag="unseen", column="mine")
    class MyThreat(Threat):
        def __init__(self, strength: float = 0.1) -> None:
            self.strength = strength
        def params(self): return {"strength": self.strength}
        def budget(self): return LpBudget("linf", self.strength)
        def __call__(self, model, images, labels): ...

The threat is then known by its name everywhere the registry is read (``rome-bench list threats``,
``THREATS.get("my-threat")``). A suite that should evaluate it names it in ``evaluation/suites.py``. Third-party
packages do the same in their own module and name that module in the ``rome_bench.threats`` entry-point group.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.registry import Registry

THREATS: Registry[type[Threat]] = Registry("threats")

LP_ORDERS: dict[str, float] = {"l1": 1.0, "l2": 2.0, "linf": float("inf")}


def register_threat(name: str, tag: str, column: str | None = None) -> Callable[[type[Threat]], type[Threat]]:
    """Class decorator: register a Threat subclass under ``name``; ``tag`` is 'seen' or 'unseen'."""
    if tag not in ("seen", "unseen"):
        raise ConfigError(f"threat tag must be 'seen' or 'unseen', got '{tag}'")

    def decorator(cls: type[Threat]) -> type[Threat]:
        cls.name = name
        cls.tag = tag
        cls.column = column or name
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        THREATS.add(name, cls, tag=tag, column=cls.column, summary=summary)
        return cls

    return decorator


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast against ``like`` (B, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def keep_first_success(logits: torch.Tensor, labels: torch.Tensor, candidate: torch.Tensor, found: torch.Tensor,
                       kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation rule of every iterative attack: each example keeps the first candidate (image or attack
    parameters) the model misclassifies, so with a fixed seed more iterations never make an attack weaker.

    ``logits`` are the model's outputs on ``candidate``; returns the updated (found mask, kept candidates).
    """
    newly = (logits.argmax(dim=1) != labels) & ~found
    if logits.device.type == "cpu" and not bool(newly.any()):  # most steps copy nothing (on a GPU the check syncs)
        return found, kept
    kept = torch.where(per_example(newly, kept), candidate.detach(), kept)
    return found | newly, kept


@dataclass(frozen=True)
class BudgetCheck:
    """Per-example size of a perturbation under a budget and the largest size allowed."""

    measured: torch.Tensor
    limit: float
    description: str


class Budget(ABC):
    """What a threat promises about its output; checked by the runner on every batch."""

    @abstractmethod
    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        """Measure each example of ``perturbed`` against the budget, relative to ``clean``."""


@dataclass(frozen=True)
class LpBudget(Budget):
    """‖x_adv − x‖_p ≤ ε, verified with a relative tolerance of 1e-5."""

    norm: str
    eps: float
    rel_tol: float = 1e-5

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        """Each example's ‖δ‖_p against ε·(1 + ``rel_tol``)."""
        delta = (perturbed - clean).flatten(1).double()
        measured = delta.norm(p=LP_ORDERS[self.norm], dim=1)
        return BudgetCheck(measured, self.eps * (1 + self.rel_tol), f"‖δ‖_{self.norm.removeprefix('l')}")


@dataclass(frozen=True)
class UnboundedBudget(Budget):
    """No norm bound (e.g. a common corruption at a fixed severity): only finiteness and [0,1] are verified."""

    description: str

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        """Nothing to measure: every example passes (finiteness and [0, 1] are checked by the runner)."""
        return BudgetCheck(torch.zeros(len(clean), dtype=torch.float64), 0.0, self.description)


class Threat(ABC):
    """A perturbation model; subclasses are registered with :func:`register_threat`."""

    name: ClassVar[str] = "unregistered"
    tag: ClassVar[str] = "unseen"
    column: ClassVar[str] = "unregistered"
    uses_example_ids: ClassVar[bool] = False
    """When True the runner also passes ``example_ids=[...]`` (dataset indices), e.g. to look up stored images."""
    given_clean: bool = True
    """True (adversarial threats): an example counts only if correct clean and perturbed, and only clean-correct
    examples are attacked. False (common corruptions): every example is perturbed and its own prediction counts,
    so the column is plain accuracy on the perturbed images (the union still requires clean)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Every setting that changes the threat's output (hashed into the store key)."""

    @abstractmethod
    def budget(self) -> Budget | None:
        """The constraint the runner verifies, or None for a threat without one (clean images)."""

    @abstractmethod
    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def require(self) -> None:
        """Raise ConfigError, in one line, unless what the threat needs besides the model is at hand (a weights
        file, …); the runner asks every threat before it evaluates anything. Nothing is needed by default."""
        return

    def applicable(self, model: nn.Module) -> bool:
        """Whether the threat can attack this model at all (e.g. a gating attack needs gates); True by default."""
        return True

    def call_flags(self) -> dict[str, int]:
        """Validity warnings raised by the last call, as flag name -> number of examples (none by default)."""
        return {}

    def scaled(self, factor: float) -> Threat:
        """The same threat with its budget ε (and step size, if any) multiplied by ``factor``: for ε sweeps.

        By convention the keys of ``params()`` are the constructor's arguments, so a copy can be rebuilt from them.
        """
        params = self.params()
        if "eps" not in params:
            raise ConfigError(f"threat {self.name} has no scalar budget ε to sweep")
        params["eps"] = params["eps"] * factor
        if params.get("step_size") is not None:
            params["step_size"] = params["step_size"] * factor
        return type(self)(**params)

    @property
    def key(self) -> str:
        """Registry name plus a short hash of the parameters: identifies stored results."""
        blob = json.dumps({"name": self.name, **self.params()}, sort_keys=True, default=str)
        return f"{self.name}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})"


@register_threat("clean", tag="seen", column="nat")
class Clean(Threat):
    """No perturbation: natural accuracy."""

    def params(self) -> dict[str, Any]:
        return {}

    def budget(self) -> Budget | None:
        return LpBudget("linf", 0.0)

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return images
