"""Pretrained starts: a backbone's weights from a timm tag or a local file, loaded by timm's own machinery.

``model.pretrained`` is one of

* a local ``.safetensors`` / torch state-dict file (read without unpickling objects);
* a timm pretrained tag, e.g. ``vit_base_patch16_224.augreg_in1k`` (timm downloads it into the Hugging Face cache
  when the network allows; offline, a tag not in the cache fails in one line naming it);
* ``imagenet1k``: the backbone's ImageNet-1K checkpoint in :data:`IMAGENET1K_TAGS` (what the paper presets set:
  "standard ImageNet-1K pre-trained ViT-B, DeiT-B, Swin-B", RoME Sec. 5.1). A backbone without one (WRN, ResNets,
  the micro test sizes: the paper trains its CNNs from scratch) starts from scratch; :func:`resolve_start` writes
  that into the config as ``null``;
* ``none`` (or null): no pretrained start (``--pretrained none`` opts out of a paper preset's default).

Loading is timm's ``load_pretrained`` with the backbone architecture's own ``checkpoint_filter_fn`` (for ViT/DeiT it
resamples ``pos_embed`` to the target token grid and ``patch_embed.proj.weight`` FlexiViT-style to the target patch
size, e.g. a patch-16/224 checkpoint into the patch-4/32 CIFAR model). Nothing is silently skipped: after timm's
filter, every tensor must fit the backbone by name and shape, else one error names the first that does not. The one
exception is the classifier head when the checkpoint's class count differs (timm's rule): it keeps its fresh
initialisation, and one line says so.

Only training loads a pretrained start: a finished run's weights are self-contained, so evaluation and ``describe``
build the architecture with ``pretrained`` cleared (:func:`architecture_only`), and the model hash leaves the start
out (as it leaves out ``init_from``): the trained weights are the content it hashes.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from rome_bench.config import ModelConfig
from rome_bench.errors import CheckpointError
from rome_bench.models.external import read_weights_file

PAPER_START = "imagenet1k"  # the paper presets' model.pretrained: the backbone's ImageNet-1K checkpoint
NO_START = "none"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

# ImageNet-1K-trained checkpoints (timm tags) of the backbones the paper fine-tunes (ViT-B/16 AugReg IN-1k,
# DeiT (FB IN-1k), Swin (MS IN-1k), XCiT-S12 (FB IN-1k)), and their smaller sizes with IN-1k-only weights.
IMAGENET1K_TAGS: dict[str, str] = {
    "vit_small": "vit_small_patch16_224.augreg_in1k",
    "vit_base": "vit_base_patch16_224.augreg_in1k",
    "deit_tiny": "deit_tiny_patch16_224.fb_in1k",
    "deit_small": "deit_small_patch16_224.fb_in1k",
    "deit_base": "deit_base_patch16_224.fb_in1k",
    "deit_base_distilled": "deit_base_distilled_patch16_224.fb_in1k",
    "swin_tiny": "swin_tiny_patch4_window7_224.ms_in1k",
    "swin_small": "swin_small_patch4_window7_224.ms_in1k",
    "swin_base": "swin_base_patch4_window7_224.ms_in1k",
    "xcit_s": "xcit_small_12_p16_224.fb_in1k",
}


def resolve_start(config: ModelConfig) -> ModelConfig:
    """``config`` with ``pretrained`` made concrete: ``imagenet1k`` becomes the backbone's tag (or null when it has
    none), ``none`` becomes null."""
    if config.pretrained == PAPER_START:
        return dataclasses.replace(config, pretrained=IMAGENET1K_TAGS.get(config.backbone))
    if config.pretrained is not None and config.pretrained.strip().lower() == NO_START:
        return dataclasses.replace(config, pretrained=None)
    return config


def architecture_only(config: ModelConfig) -> ModelConfig:
    """``config`` without a pretrained start: the architecture a finished run's own weights are loaded into."""
    return dataclasses.replace(config, pretrained=None)


def pretrained_cfg(source: str, backbone: str) -> dict[str, Any]:
    """timm's pretrained config for ``source``: a local file (its tensors, read safely) or a timm tag."""
    path = Path(source).expanduser()
    if path.is_file():
        state = read_weights_file(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"pretrained weights '{path}' are not a state dict; save model.state_dict()")
        return {"state_dict": state, "architecture": str(path)}
    if path.suffix in WEIGHT_SUFFIXES or "/" in source:
        raise CheckpointError(f"pretrained weights '{source}' not found; give a local .safetensors or .pth file, "
                              f"a timm tag, or --pretrained none")
    try:
        cfg = timm.models.get_pretrained_cfg(source)
    except RuntimeError:
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise CheckpointError(f"--pretrained '{source}' is neither a file nor a timm pretrained tag (e.g. "
                              f"{IMAGENET1K_TAGS.get(backbone, IMAGENET1K_TAGS['vit_base'])}); give a "
                              f".safetensors/.pth file, a tag, or 'none'")
    return {**cfg.to_dict(), "architecture": source}


def checkpoint_filter(backbone: nn.Module) -> Callable[..., dict[str, torch.Tensor]] | None:
    """The ``checkpoint_filter_fn`` of the timm module that defines the backbone's class (None for other models)."""
    module = sys.modules.get(type(backbone).__module__) or importlib.import_module(type(backbone).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def classifier_name(backbone: nn.Module) -> str | None:
    """The qualified name of the backbone's classifier head (timm's ``get_classifier``), None when it has none."""
    get_classifier = getattr(backbone, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    return next((name for name, module in backbone.named_modules() if module is head and name), None)


@dataclasses.dataclass
class StartReport:
    """What a pretrained load did: tensors loaded, those resampled, the head tensors left at initialisation."""

    source: str
    loaded: int = 0
    resampled: list[str] = dataclasses.field(default_factory=list)
    reinitialised: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        """The one line a training run prints."""
        resampled = f", resampled {', '.join(self.resampled)}" if self.resampled else ""
        head = (f"; classifier head {', '.join(self.reinitialised)} re-initialised (class count differs)"
                if self.reinitialised else "")
        return f"pretrained start {self.source}: {self.loaded} tensors loaded{resampled}{head}"


def fitted_filter(backbone: nn.Module, report: StartReport) -> Callable[..., dict[str, torch.Tensor]]:
    """timm's filter for the backbone, then the check that every tensor fits (the head excepted, kept fresh)."""
    own = backbone.state_dict()
    architecture_filter = checkpoint_filter(backbone)
    head = classifier_name(backbone)

    def fit(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        given = {name: tuple(tensor.shape) for name, tensor in state.items()}
        mapped = dict(architecture_filter(state, model)) if architecture_filter else dict(state)
        for name, tensor in list(mapped.items()):
            if name in own and own[name].shape != tensor.shape and head and name.startswith(f"{head}."):
                mapped[name] = own[name].clone()  # timm's rule: a head of another class count starts fresh
                report.reinitialised.append(name)
            elif name not in own or own[name].shape != tensor.shape:
                expected = tuple(own[name].shape) if name in own else "no such tensor"
                raise CheckpointError(f"pretrained tensor '{name}' {tuple(tensor.shape)} cannot be mapped onto "
                                      f"backbone {type(backbone).__name__} ({expected}); give a checkpoint of the "
                                      f"same architecture or --pretrained none")
            elif name in given and given[name] != own[name].shape:
                report.resampled.append(name)
        if missing := sorted(set(own) - set(mapped)):
            raise CheckpointError(f"pretrained weights have no tensor '{missing[0]}' of backbone "
                                  f"{type(backbone).__name__} ({len(missing)} missing); give a checkpoint of the "
                                  f"same architecture or --pretrained none")
        report.loaded = len(mapped) - len(report.reinitialised)
        return mapped

    return fit


def load_pretrained(backbone: nn.Module, source: str, backbone_name: str, num_classes: int) -> StartReport:
    """Load ``source`` (a file or a timm tag) into ``backbone`` by timm's ``load_pretrained``; see the module doc."""
    cfg = pretrained_cfg(source, backbone_name)
    cfg["classifier"] = None  # the head is handled by fitted_filter, so that timm's load stays strict
    report = StartReport(source)
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its per-retry warnings: the failure is reported in one line below
    try:
        timm.models.load_pretrained(backbone, pretrained_cfg=cfg, num_classes=num_classes,
                                    filter_fn=fitted_filter(backbone, report), strict=True)
    except CheckpointError:
        raise
    except Exception as error:  # download and cache failures of every kind end in one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "state_dict" in cfg:
            raise CheckpointError(f"pretrained weights '{source}' cannot be loaded: {reason[:160]}") from error
        raise CheckpointError(f"pretrained weights '{source}' are not in timm's (Hugging Face) cache and cannot be "
                              f"downloaded ({reason[:120]}): download them, give a local file with --pretrained "
                              f"FILE, or start from scratch with --pretrained none") from error
    finally:
        hub_logger.setLevel(level)
    print(report.line(), file=sys.stderr)
    return report
