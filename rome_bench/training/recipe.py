"""The recipe interface: what one training step optimises, given a small step context from the trainer.

The trainer owns everything around the step (seeded data order and augmentation, the learning-rate schedule,
atomic checkpoints with the RNG state, metrics); a recipe owns the step itself through a :class:`StepContext`:

* ``ctx.attack(threat, images, labels)`` runs a training attack with the model in eval mode;
* ``ctx.forward(images, routing_ids=ids)`` is the model in train mode (the update's forward); ``routing_ids``
  labels each input row (by its threat, or its group) for the family's routing loss: the step's one labelled
  forward is the one whose gates the routing loss reads;
* :meth:`Recipe.update` adds λ·(the family's routing loss) of that forward to the recipe's loss and logs it as
  ``routing`` (``ctx.add_routing``); a recipe never computes it. On a family with a routing loss, a step whose
  objective labels no forward is an error;
* ``ctx.backward(loss)`` is the one seam through which every gradient reaches the parameters (DDP and AMP hook
  here); ``ctx.grads(loss)`` / ``ctx.set_grads(grads)`` serve recipes that combine gradients (RAMP);
* ``ctx.global_sum(values)`` / ``ctx.rank0_value(value)`` make a recipe's batch-level decisions those of the
  global batch when several processes train (``training/distributed.py``); ``ctx.share`` is this rank's share.

Adding a recipe is one decorated class in one file under ``training/recipes/``::

    @register_recipe("my-at", citation="Someone et al. 2027")
    class MyAT(Recipe):
        def build_threats(self): ...      # the training threats; their order fixes the routing threat ids
        def loss(self, ctx, batch): ...   # a StepResult; the default update() adds the routing loss, back-propagates

Recipe settings are a frozen dataclass ``Options`` (set with ``--set train.options.NAME=VALUE``); state that must
survive a resume (e.g. a running estimate) goes through ``state_dict``/``load_state_dict`` into checkpoints.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from rome_bench.config import ThreatsConfig
from rome_bench.config import parse_options as parse_table
from rome_bench.errors import ConfigError
from rome_bench.models.autocast import AutocastModel
from rome_bench.models.gates import GateOutput
from rome_bench.models.gates import gates as read_gates
from rome_bench.registry import Registry
from rome_bench.threats import Threat
from rome_bench.training.distributed import Distributed


@dataclass(frozen=True)
class Batch:
    """One training batch as a recipe sees it."""

    images: torch.Tensor  # [0, 1], on the training device (augmented)
    labels: torch.Tensor
    step: int  # global optimizer step, 0-based
    epoch: int


@dataclass
class StepResult:
    """What a recipe's step returns: its loss, values to log and per-column correct counts."""

    loss: torch.Tensor  # the recipe's loss; after Recipe.update, what was back-propagated (+ the routing loss)
    logs: dict[str, float] = field(default_factory=dict)  # averaged per epoch into the progress bar and metadata
    correct: dict[str, tuple[int, int]] = field(default_factory=dict)  # column -> (correct, total) this step


class StepContext:
    """What a recipe may do to the model during one step (built once per run by the trainer)."""

    def __init__(self, model: nn.Module, parameters: list[nn.Parameter], routing_loss: nn.Module | None,
                 distributed: Distributed | None = None, precision: str = "fp32") -> None:
        self.model = model
        self.parameters = parameters
        self._routing_loss = routing_loss
        self._labelled: tuple[list[GateOutput], torch.Tensor] | None = None  # gates and ids of the labelled forward
        self.distributed = distributed or Distributed()
        self.share = 1.0  # this rank's fraction n_r/N of the global batch (set by the trainer every step)
        self.precision = precision

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast around the model's forward passes (``train.precision = bf16``); backward runs outside it,
        and the weights, optimizer state and gradients stay fp32."""
        if self.precision == "bf16":
            device = next(iter(self.model.parameters())).device
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _full(self, logits: torch.Tensor) -> torch.Tensor:
        """bf16 logits back in fp32 (losses are taken in fp32); any other dtype as it is."""
        return logits.float() if logits.dtype == torch.bfloat16 else logits

    def attack(self, threat: Threat, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial examples of ``threat`` with the model in eval mode (detached, in the images' dtype)."""
        self.model.eval()
        model = AutocastModel(self.model) if self.precision == "bf16" else self.model  # the model's passes only
        return threat(model, images, labels).detach().to(images.dtype)

    def eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits in eval mode without a graph (clean accuracy, vulnerability estimates), as fp32."""
        self.model.eval()
        with torch.no_grad(), self._autocast():
            return self._full(self.model(images))

    def forward(self, images: torch.Tensor, routing_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits in train mode, with a graph: the forward of the update (fp32 logits: the loss is taken in fp32).

        ``routing_ids`` (one id per row of ``images``) makes this the step's labelled forward: its gates are kept
        for the routing loss that :meth:`add_routing` adds (nothing is kept when the family has no routing loss).
        """
        self.model.train()
        with self._autocast():
            logits = self._full(self.model(images))
        if routing_ids is not None and self._routing_loss is not None:
            if self._labelled is not None:
                raise RuntimeError("two forwards of one step are labelled with routing_ids; the routing loss reads "
                                   "one forward's gates: label only the forward it should see")
            self._labelled = (read_gates(self.model), routing_ids)
        return logits

    def add_routing(self, result: StepResult, recipe: str) -> StepResult:
        """``result`` with λ·(routing loss) of the labelled forward added to its loss and logged as ``routing``.

        Computed here, after the recipe's loss, on the gates the labelled forward recorded (with several processes,
        the global batch's gates; the gradient scaled by 1/share, which the weighted all-reduce undoes). Without a
        routing loss the result is returned as it is.
        """
        labelled, self._labelled = self._labelled, None
        if self._routing_loss is None:
            return result
        if labelled is None:
            raise RuntimeError(f"recipe {recipe} labelled no forward with routing_ids, so the model family's routing "
                               "loss has no gates to read: pass routing_ids to the forward of the update")
        gates, ids = labelled
        group = self.distributed
        if not group.active:
            routing = self._routing_loss(gates, ids)
        else:
            value = self._routing_loss([group.gather_gate(gate) for gate in gates], group.gather_rows(ids))
            routing = value.detach() + (value - value.detach()) / self.share
        result.loss = result.loss + routing
        result.logs["routing"] = float(routing.detach())
        return result

    def global_sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the training processes (the values themselves in one process): batch statistics
        of the global batch, e.g. RAMP's per-threat adversarial accuracies."""
        return self.distributed.sum_floats([float(value) for value in values])

    def rank0_value(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a draw from rank 0's RNG stream, which is the one-process stream)."""
        return self.global_sum([value if self.distributed.is_main else 0.0])[0]

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate d loss / d parameters into ``.grad``: the one seam every update goes through (with several
        processes: the global batch's gradient, see ``training/distributed.py``)."""
        if not self.distributed.active:
            loss.backward()
            return
        for parameter, grad in zip(self.parameters, self._reduced_grads(loss, False), strict=True):
            if grad is not None:
                parameter.grad = grad if parameter.grad is None else parameter.grad + grad

    def grads(self, loss: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
        """d loss / d parameter for every trained parameter (zeros where the loss does not reach it); with several
        processes, of the global batch."""
        grads = self._reduced_grads(loss, retain_graph)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.parameters, grads, strict=True)]

    def _reduced_grads(self, loss: torch.Tensor, retain_graph: bool) -> list[torch.Tensor | None]:
        trained = [p for p in self.parameters if p.requires_grad]
        found = iter(torch.autograd.grad(loss, trained, retain_graph=retain_graph, allow_unused=True))
        grads = [next(found) if p.requires_grad else None for p in self.parameters]
        return self.distributed.reduce_gradients(self.parameters, grads, self.share)

    def set_grads(self, grads: list[torch.Tensor]) -> None:
        """Make ``grads`` the gradients the optimizer steps with."""
        for parameter, grad in zip(self.parameters, grads, strict=True):
            parameter.grad = grad.detach().clone()


@dataclass(frozen=True)
class NoOptions:
    """A recipe without settings of its own."""


class Recipe(ABC):
    """A training objective; subclasses are registered with :func:`register_recipe`."""

    name: ClassVar[str] = "unregistered"
    Options: ClassVar[type] = NoOptions
    own_attack: ClassVar[str | None] = None
    """The recipe's own attack (e.g. "Fast-LPA"); such a recipe refuses ``--train-attack`` other than pgd."""
    families: ClassVar[tuple[str, ...] | None] = None
    """The model families the recipe trains (None: any); e.g. MORE's stage 2 needs the ``more`` family's gate."""

    def __init__(self, options: Any, threats: ThreatsConfig, attack: str) -> None:
        self.options = options
        self.threat_config = threats
        self.attack_kind = attack
        self._threats: list[Threat] | None = None

    @abstractmethod
    def build_threats(self) -> list[Threat]:
        """The recipe's training threats (their order fixes the threat ids the routing loss sees)."""

    def threats(self) -> list[Threat]:
        """The training threats, built once (:meth:`build_threats`); refuses ``--train-attack`` for a recipe with its
        own attack."""
        if self.own_attack is not None and self.attack_kind != "pgd":
            raise ConfigError(f"{self.name} generates its examples with {self.own_attack}; --train-attack "
                              f"{self.attack_kind} does not apply: use --train-attack pgd")
        if self._threats is None:
            self._threats = self.build_threats()
        return self._threats

    def check_family(self, family: str) -> None:
        """One ConfigError line when the recipe needs a model family other than ``family``."""
        if self.families is not None and family not in self.families:
            wanted = " or ".join(self.families)
            raise ConfigError(f"recipe {self.name} trains the {wanted} family, not '{family}': use --family {wanted} "
                              f"(or --method {self.families[0]}+{self.name})")

    def routing_groups(self) -> int:
        """How many threat labels (ids 0..n−1) the routing loss sees: one per training threat by default."""
        return len(self.threats())

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the optimizer trains (all by default; fine-tuning schemes may freeze some)."""
        return list(model.parameters())

    @abstractmethod
    def loss(self, ctx: StepContext, batch: Batch) -> StepResult:
        """The step's objective without the routing loss, not yet back-propagated; the forward whose gates the
        routing loss should read is called with ``routing_ids``."""

    def objective(self, ctx: StepContext, batch: Batch) -> StepResult:
        """:meth:`loss` plus the routing loss of its labelled forward: what an update back-propagates."""
        return ctx.add_routing(self.loss(ctx, batch), self.name)

    def update(self, ctx: StepContext, batch: Batch) -> StepResult:
        """Fill the parameters' gradients for one optimizer step: by default back-propagate :meth:`objective`."""
        result = self.objective(ctx, batch)
        ctx.backward(result.loss)
        return result

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Recipe state that a resumed run needs (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # noqa: B027  (most recipes hold none)
        """Restore :meth:`state_dict`'s tensors."""


RECIPES: Registry[type[Recipe]] = Registry("recipes", "methods")  # plugins: rome_bench.recipes or .methods


def register_recipe(name: str, citation: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator: register a Recipe under ``name`` with the paper it implements."""

    def decorator(cls: type[Recipe]) -> type[Recipe]:
        cls.name = name
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        RECIPES.add(name, cls, citation=citation, summary=summary)
        return cls

    return decorator


def parse_options(recipe: type[Recipe], values: dict[str, Any]) -> Any:
    """``train.options`` checked against the recipe's Options dataclass: known names, right types, one-line errors."""
    return parse_table(f"recipe '{recipe.name}'", recipe.Options, values, "train.options")


def build_recipe(name: str, options: dict[str, Any], threats: ThreatsConfig, attack: str) -> Recipe:
    """The registered recipe ``name`` with its options checked (an unknown name fails with 'did you mean')."""
    cls = RECIPES.get(name)
    return cls(parse_options(cls, options), threats, attack)
