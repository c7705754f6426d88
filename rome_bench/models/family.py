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

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from rome_bench.config import ModelConfig, RunConfig, parse_options
from rome_bench.models.classifier import ImageClassifier
from rome_bench.models.pretrained import load_pretrained, resolve_start
from rome_bench.models.registry import MODELS
from rome_bench.registry import Registry

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo


@dataclass(frozen=True)
class NoOptions:
    """A family without settings of its own."""


@dataclass(frozen=True)
class RoutingChoice:
    """The routing regulariser a family asks the trainer for: a name in the routing-loss registry and its λ
    (None: the loss's registered default weight)."""

    loss: str
    weight: float | None = None


class ModelFamily(ABC):
    """Builds an :class:`ImageClassifier` (images in [0,1], normalisation inside) from a model config."""

    name: ClassVar[str] = "unregistered"
    has_experts: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    paper_recipe: ClassVar[str] = "max"  # the recipe its paper trains it with (the contract tests train this one)
    micro: ClassVar[tuple[str, ...]] = ("model.backbone=vit_micro",)  # overrides of the smoke preset: a micro model

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        """The model: an :class:`ImageClassifier` taking [0, 1] images of the dataset ``info`` describes."""

    def routing(self, config: ModelConfig) -> RoutingChoice | None:
        """The routing loss the trainer adds to every recipe on this family (None: no routing loss)."""
        return None

    def stored_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The options ``given`` as this family parsed them, in JSON form: what a run's config.json keeps."""
        values = dataclasses.asdict(self.options)
        return json.loads(json.dumps({name: values[name] for name in given}))

    def identity_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The model config's fields as the model hash covers them (a family whose stored layout changed maps its
        options back to the old layout here, so old runs keep their hashes)."""
        return fields

    def expert_runs(self) -> list[str]:
        """Run directories whose trained weights the family's experts start from (DWF, MORE); none by default."""
        return []


FAMILIES: Registry[type[ModelFamily]] = Registry("families")


def register_family(name: str, has_experts: bool, citation: str) -> Callable[[type[ModelFamily]], type[ModelFamily]]:
    """Class decorator: register a :class:`ModelFamily` under ``name`` (``--family NAME``, ``NAME+RECIPE``)."""

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


def with_stored_options(config: RunConfig) -> RunConfig:
    """``config`` with ``model.options`` checked by its family and typed (``--set`` gives text) as config.json keeps
    them, so a resumed run compares equal to the config it was started with."""
    options = build_family(config.model).stored_options(config.model.options)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, options=options))


def build_backbone(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    """The registered backbone for ``info``'s images, with its pretrained start loaded if configured (a file or a
    timm tag, by timm's machinery: see ``models/pretrained.py``)."""
    builder = MODELS.get(config.backbone)
    backbone = builder(num_classes=info.num_classes, image_size=info.image_size, patch_size=config.patch_size)
    source = resolve_start(config).pretrained
    if source:
        load_pretrained(backbone, source, config.backbone, info.num_classes)
    return backbone


@register_family("plain", has_experts=False, citation="the backbone alone")
class PlainFamily(ModelFamily):
    """The backbone alone."""

    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        return ImageClassifier(build_backbone(config, info), info.mean, info.std)

