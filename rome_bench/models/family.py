"""Model families: how a registered backbone becomes the model a recipe trains (the backbone alone, or with experts).

A family is chosen by ``model.family``, independently of the training recipe (``train.recipe``): ``rome+max`` is
recipe ``max`` on family ``rome``. Adding a family is one decorated class in one file of ``models/`` (the package
imports every module in it)::

    @register_family("my-moe", has_experts=True, citation="…")
    class MyMoE(ModelFamily):
        Options = MyMoEOptions               # frozen dataclass, set with --set model.options.NAME=VALUE
        def build(self, config, info): ...   # an ImageClassifier taking [0,1] images; gates via models/gates.py
        def routing(self, config): ...       # the routing regulariser the trainer adds (default: none)

A family's gating modules derive from :class:`rome_bench.models.gates.ExpertGate`, so GMA, the routing losses,
``analyze gating`` and the inference-time gate variants read them through one accessor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from rome_bench.config import ModelConfig, parse_options
from rome_bench.errors import CheckpointError
from rome_bench.models.classifier import ImageClassifier
from rome_bench.models.external import read_weights_file
from rome_bench.models.registry import MODELS
from rome_bench.models.rome import add_rome_experts
from rome_bench.registry import Registry

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo


@dataclass(frozen=True)
class NoOptions:
    """A family without settings of its own."""


@dataclass(frozen=True)
class RoutingChoice:
    """The routing regulariser a family asks the trainer for: a name in the routing-loss registry and its λ."""

    loss: str
    weight: float


class ModelFamily(ABC):
    """Builds an :class:`ImageClassifier` (images in [0,1], normalisation inside) from a model config."""

    name: ClassVar[str] = "unregistered"
    has_experts: ClassVar[bool] = False
    uses_rome_config: ClassVar[bool] = False  # reads model.rome (the --experts/--gating/... switches)
    Options: ClassVar[type] = NoOptions
    paper_recipe: ClassVar[str] = "max"  # the recipe its paper trains it with (the contract tests train this one)
    micro: ClassVar[tuple[str, ...]] = ("model.backbone=vit_micro",)  # overrides of the smoke preset: a micro model

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier: ...

    def routing(self, config: ModelConfig) -> RoutingChoice | None:
        """The routing loss the trainer adds to every recipe on this family (None: no routing loss)."""
        return None

    def expert_runs(self) -> list[str]:
        """Run directories whose trained weights the family's experts start from (DWF, MORE); none by default."""
        return []


FAMILIES: Registry[type[ModelFamily]] = Registry("families")


def register_family(name: str, has_experts: bool, citation: str) -> Callable[[type[ModelFamily]], type[ModelFamily]]:
    def decorator(cls: type[ModelFamily]) -> type[ModelFamily]:
        cls.name = name
        cls.has_experts = has_experts
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        FAMILIES.add(name, cls, has_experts=has_experts, citation=citation, summary=summary)
        return cls

    return decorator


def build_family(config: ModelConfig) -> ModelFamily:
    """The family ``config.family`` with its ``model.options`` checked (unknown names fail with 'did you mean')."""
    cls = FAMILIES.get(config.family)
    return cls(parse_options(f"family '{cls.name}'", cls.Options, config.options, "model.options"))


def build_backbone(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    """The registered backbone for ``info``'s images, with local pretrained weights loaded if configured."""
    builder = MODELS.get(config.backbone)
    backbone = builder(num_classes=info.num_classes, image_size=info.image_size, patch_size=config.patch_size)
    if config.pretrained:
        load_pretrained(backbone, Path(config.pretrained))
    return backbone


@register_family("plain", has_experts=False, citation="the backbone alone")
class PlainFamily(ModelFamily):
    """The backbone alone."""

    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        return ImageClassifier(build_backbone(config, info), info.mean, info.std)


@register_family("rome", has_experts=True,
                 citation="RoME: Robust Mixture of Low-Rank Experts (ECCV 2026), Sec. 4.2-4.4")
class RomeFamily(ModelFamily):
    """LoRA experts on the configured projections with dual-scale gating (``model.rome``)."""

    uses_rome_config = True

    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        backbone = add_rome_experts(build_backbone(config, info), config.rome)
        return ImageClassifier(backbone, info.mean, info.std)

    def routing(self, config: ModelConfig) -> RoutingChoice | None:
        rome = config.rome
        if rome.routing_loss == "none" or rome.resolved_routing_weight == 0:
            return None
        return RoutingChoice(rome.routing_loss, rome.resolved_routing_weight)


def load_pretrained(backbone: nn.Module, path: Path) -> None:
    """Load a local state dict; the classifier head and mismatched shapes (e.g. pos_embed) are skipped."""
    if not path.is_file():
        raise CheckpointError(f"pretrained weights '{path}' not found; give a local .safetensors or .pth file")
    state = read_weights_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"pretrained weights '{path}' are not a state dict; save model.state_dict()")
    own = backbone.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not compatible:
        raise CheckpointError(f"pretrained weights '{path}' share no tensor with backbone {type(backbone).__name__}")
    backbone.load_state_dict(compatible, strict=False)
