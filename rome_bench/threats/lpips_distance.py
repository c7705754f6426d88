"""The LPIPS distance of the perceptual threats and of PAT: d(x, y) = ‖φ(x) − φ(y)‖₂ with φ the normalised, flattened
features of a network (:class:`LPIPS`), and the budget that checks it (:class:`LPIPSBudget`).

* ``"self"``: Laidlaw et al.'s self-bounded LPIPS ("Perceptual Adversarial Robustness", ICLR 2021): φ concatenates
  the outputs of every Transformer block of the evaluated model itself (``model.backbone.blocks``, read with forward
  hooks), each position's feature vector (token, or channel vector at a pixel) divided by its ℓ2 norm and each layer
  by √(number of positions), as perceptual-advex's ``normalize_flatten_features`` does for ``lpips_model='self'``.
* ``"alexnet"``: the ``lpips`` package's AlexNet-LPIPS (Zhang et al. 2018: learned non-negative channel weights w,
  shipped with the package) with d = √LPIPS, i.e. φ scales each unit feature by √w. Its AlexNet trunk comes from
  torchvision's cached ImageNet weights (``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``); it is used
  only when that file exists, and nothing is ever downloaded.
* ``"auto"``: ``"alexnet"`` when its weights are local, else ``"self"``; only PAT's training attack takes it (its run
  records the network it resolved to). The evaluation threats never do: the network is part of their registered
  name (``ppgd-alexnet``, ``ppgd-self``, ``lpa-alexnet``, ``lpa-self``; ``perceptual.py``), so a missing AlexNet
  file is an error naming it, never a silent switch to ``"self"``.

Deviation from perceptual-advex: the ``"alexnet"`` distance is the standard (ImageNet AlexNet, learned weights)
LPIPS; Laidlaw et al. evaluate CIFAR-10 with an AlexNet trained on CIFAR without learned weights (``alexnet_cifar``),
which is not available offline.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.autocast import plain_model
from rome_bench.optional import require
from rome_bench.threats.base import Budget, BudgetCheck

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
LPIPS_BACKBONES = ("auto", "self", "alexnet")
FEATURE_EPS = 1e-10


def alexnet_checkpoint() -> Path:
    """Where torchvision caches its ImageNet AlexNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def missing_alexnet(user: str, instead: str) -> str:
    """The one-line error for a missing AlexNet file: which file, where to put it, and the alternative."""
    return (f"{user} needs torchvision's ImageNet AlexNet weights {ALEXNET_CHECKPOINT} in "
            f"{alexnet_checkpoint().parent} (torch.hub's cache, moved by TORCH_HOME; rome-bench never downloads "
            f"them): copy the file there, or {instead}")


def resolve_lpips_backbone(backbone: str) -> str:
    """'auto' -> 'alexnet' when its weights are cached locally, else 'self'; 'alexnet' requires those weights."""
    if backbone not in LPIPS_BACKBONES:
        raise ConfigError(f"LPIPS backbone must be one of {', '.join(LPIPS_BACKBONES)}; got '{backbone}'")
    available = alexnet_checkpoint().is_file()
    if backbone == "auto":
        return "alexnet" if available else "self"
    if backbone == "alexnet" and not available:
        raise ConfigError(missing_alexnet("LPIPS 'alexnet'", "use lpips='self'"))
    return backbone


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The Transformer blocks ``model.backbone.blocks`` whose outputs are the self-LPIPS features (looking through
    evaluation wrappers that keep the model as ``.model``: ``--compile``, bf16 attacks)."""
    blocks = getattr(getattr(plain_model(model), "backbone", None), "blocks", None)
    children = list(blocks.children()) if isinstance(blocks, nn.Module) else []
    if not children:
        raise ConfigError(f"LPIPS 'self' reads the outputs of model.backbone.blocks, which a "
                          f"{type(model).__name__} does not have; use lpips='alexnet' for this model")
    return children


def _positions_last(feature: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,HW,C); (B,T,D) stays; (B,D) -> (B,1,D): positions in dim 1, channels last."""
    if feature.dim() == 4:
        return feature.flatten(2).transpose(1, 2)
    if feature.dim() == 3:
        return feature
    if feature.dim() == 2:
        return feature.unsqueeze(1)
    raise ConfigError(f"LPIPS features must have 2 to 4 dimensions, got shape {tuple(feature.shape)}")


def normalize_flatten_features(features: list[torch.Tensor],
                               channel_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Unit-normalise each position's channel vector, divide each layer by √positions, flatten, concatenate.

    With ``channel_weights`` (one non-negative (C,) tensor per layer) each channel is also scaled by √w, so that
    the squared L2 distance between two such vectors is the (learned) LPIPS value.
    """
    parts = []
    for index, feature in enumerate(features):
        tokens = _positions_last(feature)
        unit = tokens / (torch.linalg.vector_norm(tokens, dim=-1, keepdim=True) + FEATURE_EPS)
        if channel_weights is not None:
            unit = unit * channel_weights[index].clamp_min(0).sqrt().to(unit)
        parts.append((unit / math.sqrt(tokens.shape[1])).flatten(1))
    return torch.cat(parts, dim=1)


@lru_cache(maxsize=2)
def _alexnet_lpips(checkpoint: str) -> nn.Module:
    """The lpips package's AlexNet-LPIPS with its trunk loaded from a local torchvision checkpoint (no download)."""
    lpips = require("lpips", "unseen", "AlexNet-LPIPS")

    # fork_rng: building the network draws its random initial weights, which must not move the global RNG (a
    # threat's first call would otherwise start from other random draws than its later ones)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # torchvision's deprecation of ``pretrained=`` inside lpips
        network = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    trunk = network.net
    try:
        for stage in (trunk.slice1, trunk.slice2, trunk.slice3, trunk.slice4, trunk.slice5):
            for index, layer in stage.named_children():
                own = layer.state_dict()
                if own:
                    layer.load_state_dict({key: state[f"features.{index}.{key}"] for key in own})
    except (KeyError, RuntimeError) as error:
        raise ConfigError(f"{checkpoint} is not a torchvision AlexNet checkpoint ({error})") from error
    return network.eval().requires_grad_(False)


class LPIPS(nn.Module):
    """LPIPS distance d(x, y) = ‖φ(x) − φ(y)‖₂ between [0,1] images, φ from the model itself or AlexNet-LPIPS."""

    def __init__(self, backbone: str = "auto", model: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = resolve_lpips_backbone(backbone)
        if self.backbone == "self":
            if model is None:
                raise ConfigError("LPIPS 'self' needs the model whose features define the distance")
            self._blocks = transformer_blocks(model)
            self.model = model
        else:
            self.net = _alexnet_lpips(str(alexnet_checkpoint()))

    @contextmanager
    def _capture(self) -> Iterator[list[torch.Tensor]]:
        """Collect the output of every Transformer block during a forward pass of the model."""
        outputs: list[torch.Tensor] = []

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs.append(output[0] if isinstance(output, tuple) else output)

        handles = [block.register_forward_hook(hook) for block in self._blocks]
        try:
            yield outputs
        finally:
            for handle in handles:
                handle.remove()

    def _self_embed_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._capture() as outputs:
            logits = self.model(images)
        return normalize_flatten_features(outputs), logits

    def _alexnet_embed(self, images: torch.Tensor) -> torch.Tensor:
        network = self.net.to(device=images.device, dtype=images.dtype)
        features = network.net(network.scaling_layer(2 * images - 1))
        weights = [lin.model[-1].weight.flatten() for lin in network.lins]
        return normalize_flatten_features(list(features), weights)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """φ(images): (B, F) normalised, flattened features."""
        if self.backbone == "self":
            return self._self_embed_logits(images)[0]
        return self._alexnet_embed(images)

    def embed_logits(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """φ(images) and model(images), in one forward pass when the distance is the model's own."""
        if self.backbone == "self" and model is self.model:
            return self._self_embed_logits(images)
        return self.embed(images), model(images)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(self.embed(first) - self.embed(second), dim=1)


@dataclass(frozen=True)
class LPIPSBudget(Budget):
    """LPIPS(x, x_adv) ≤ bound under the distance network the threat used, with a relative tolerance of 1e-4."""

    bound: float
    distance: LPIPS | None
    rel_tol: float = 1e-4

    def check(self, clean: torch.Tensor, perturbed: torch.Tensor) -> BudgetCheck:
        if self.distance is None:
            raise ConfigError("an LPIPS budget is known only after the threat has run (its distance may be the "
                              "model's own features)")
        with torch.no_grad():
            measured = self.distance(clean, perturbed).double()
        return BudgetCheck(measured, self.bound * (1 + self.rel_tol), f"LPIPS_{self.distance.backbone}(x, x_adv)")
