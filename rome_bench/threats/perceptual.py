"""Perceptual attacks PPGD and LPA (Laidlaw, Singla & Feizi, "Perceptual Adversarial Robustness", ICLR 2021).

Both attacks maximise the margin loss max(κ, max_{k≠y} z_k − z_y) (κ = 1) inside an LPIPS ball
{x' : d(x, x') ≤ bound} intersected with [0,1]. The RoME paper (Sec. A1) uses an LPIPS bound of 0.25 and 20
iterations for both; those are the defaults. Everything else follows perceptual-advex's ``PerceptualPGDAttack``
and ``LagrangePerceptualAttack`` defaults.

LPIPS distance, d(x, y) = ‖φ(x) − φ(y)‖₂ with φ the normalised, flattened features of a network (``LPIPS``):

* ``"self"``: Laidlaw et al.'s self-bounded LPIPS: φ concatenates the outputs of every Transformer block of the
  evaluated model itself (``model.backbone.blocks``, read with forward hooks), each position's feature vector
  (token, or channel vector at a pixel) divided by its ℓ2 norm and each layer by √(number of positions), as
  perceptual-advex's ``normalize_flatten_features`` does for ``lpips_model='self'``.
* ``"alexnet"``: the ``lpips`` package's AlexNet-LPIPS (Zhang et al. 2018: learned non-negative channel weights w,
  shipped with the package) with d = √LPIPS, i.e. φ scales each unit feature by √w. Its AlexNet trunk comes from
  torchvision's cached ImageNet weights (``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``); it is used
  only when that file exists, and nothing is ever downloaded.
* ``"auto"`` (default): ``"alexnet"`` when its weights are local, else ``"self"``; resolved when the threat is
  built, so ``params()`` (and the stored results) name the network actually used.

PPGD (perceptual projected gradient descent), per iteration t = 0..steps−1, from x₀ = x + N(0, 0.01²):
  g = ∇ margin; solve (JᵀJ) v = g with ``cg_iterations`` conjugate-gradient steps, J = Dφ(x_t), where J v is a
  forward finite difference (φ(x_t + h·v) − φ(x_t))/h (h = 1e-3) and Jᵀ(·) a vector-Jacobian product; step
  x_t + η·v/‖J v‖ (so the linearised LPIPS length is η = 2·bound/steps), clip to [0,1], then project onto the
  LPIPS ball.
LPA (Lagrangian perceptual attack), ``binary_steps`` stages of ``steps`` iterations each:
  descend −margin + λ·relu(d − bound) along the normalised gradient ĝ with the LPIPS-normalised step
  η_t/(‖φ(x) − φ(x − h·ĝ)‖/h + 1e-8), η_t = bound·0.1^(t/steps), h = 0.1; λ starts at 0.01 and is multiplied by
  10 after a stage for the examples still outside the ball; examples stop once misclassified inside the ball.
  The last iterate is finally projected onto the LPIPS ball.
Projection ("newtons", the reference default): up to 10 steps x ← clip(x − (d − bound + o)(1 + o)·∇d/‖∇d‖²)
  with overshoot o = 0.1, then bisection (10 steps) on the segment from the clean image for examples still
  outside; "bisection" uses bisection only.

Deviations from perceptual-advex, all so that the output is valid, batch-independent and monotone in iterations:

* every example keeps the FIRST iterate (start included) that is misclassified AND within the LPIPS bound, else
  the final projected iterate; examples already found are not attacked further (the reference returns the last
  iterate for PPGD, and for LPA the iterate one step after the one it checked);
* LPA also projects the not-yet-successful examples at the end of every binary-search stage and keeps a
  misclassified projection (the reference projects only after the last stage, which is our last stage-end
  projection), so with a fixed seed more binary-search stages never make it weaker; for PPGD, more ``steps`` at
  a fixed ``step_size`` never make it weaker;
* the random start is clipped to [0,1]; early stops are per example (zero gradient, CG residual ‖r‖² < 0.1, Newton
  convergence) where the reference stops or falls back for the whole batch;
* Newton's projection uses a fresh gradient each step (the reference accumulates ``.grad`` across steps) and checks
  the last step before falling back; bisection returns the largest tested point inside the ball (the reference
  returns the last tested one, which may be outside);
* if the projection still cannot bring an example inside the ball, the clean image is returned for it and counted
  in ``call_flags()`` as ``projection-failed``; the output is never outside the bound;
* the ``"alexnet"`` distance is the standard (ImageNet AlexNet, learned weights) LPIPS; Laidlaw et al. evaluate
  CIFAR-10 with an AlexNet trained on CIFAR without learned weights (``alexnet_cifar``), which is not available
  offline.
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
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.autocast import plain_model
from rome_bench.threats.base import Budget, BudgetCheck, Threat, per_example, register_threat

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
LPIPS_BACKBONES = ("auto", "self", "alexnet")
PROJECTIONS = ("newtons", "bisection")
FEATURE_EPS = 1e-10
START_STD = 0.01
CG_TOLERANCE = 0.1
FLAT_GRADIENT = 1e-4
TINY = 1e-30


# --------------------------------------------------------------------------------------------------- LPIPS
def alexnet_checkpoint() -> Path:
    """Where torchvision caches its ImageNet AlexNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def resolve_lpips_backbone(backbone: str) -> str:
    """'auto' -> 'alexnet' when its weights are cached locally, else 'self'; 'alexnet' requires those weights."""
    if backbone not in LPIPS_BACKBONES:
        raise ConfigError(f"LPIPS backbone must be one of {', '.join(LPIPS_BACKBONES)}; got '{backbone}'")
    available = alexnet_checkpoint().is_file()
    if backbone == "auto":
        return "alexnet" if available else "self"
    if backbone == "alexnet" and not available:
        raise ConfigError(f"LPIPS 'alexnet' needs torchvision's AlexNet weights at {alexnet_checkpoint()} "
                          "(rome-bench never downloads them): copy them there, or use lpips='self'")
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
    import lpips

    with warnings.catch_warnings():
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


# --------------------------------------------------------------------------------------------------- attacks
def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per example min(κ, max_{k≠y} z_k − z_y) (the CW / f6 loss); positive means misclassified."""
    correct = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return (others - correct).clamp(max=kappa)


def _norms(tensor: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(tensor.flatten(1), dim=1)


class _FirstSuccess:
    """Per example, the first candidate that is misclassified and within the LPIPS bound."""

    def __init__(self, images: torch.Tensor, bound: float) -> None:
        self.bound = bound
        self.found = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        self.result = images.clone()

    def remaining(self) -> torch.Tensor:
        return (~self.found).nonzero().squeeze(1)

    def offer(self, index: torch.Tensor, candidates: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
              distances: torch.Tensor) -> None:
        hit = (logits.argmax(dim=1) != labels) & (distances <= self.bound) & ~self.found[index]
        rows = index[hit]
        self.result[rows] = candidates[hit].detach()
        self.found[rows] = True


class PerceptualAttack(Threat):
    """Shared parts of PPGD and LPA: the LPIPS distance, projection onto the LPIPS ball, budget and flags."""

    def __init__(self, bound: float, steps: int, lpips: str, step_size: float | None, decay_step_size: bool,
                 kappa: float, projection: str, projection_overshoot: float, projection_steps: int,
                 bisection_steps: int) -> None:
        if bound <= 0 or steps < 1:
            raise ConfigError(f"{self.name}: bound must be > 0 and steps >= 1 (got bound={bound}, steps={steps})")
        if projection not in PROJECTIONS:
            raise ConfigError(f"{self.name}: projection must be one of {', '.join(PROJECTIONS)}, got '{projection}'")
        if projection_steps < 0 or bisection_steps < 1 or projection_overshoot < 0:
            raise ConfigError(f"{self.name}: need projection_steps >= 0, bisection_steps >= 1 and "
                              f"projection_overshoot >= 0")
        self.bound = float(bound)
        self.steps = int(steps)
        self.lpips = resolve_lpips_backbone(lpips)
        self.decay_step_size = bool(decay_step_size)
        default_step = self.bound if self.decay_step_size else 2 * self.bound / self.steps
        self.step_size = float(step_size) if step_size is not None else default_step
        self.kappa = float(kappa)
        self.projection = projection
        self.projection_overshoot = float(projection_overshoot)
        self.projection_steps = int(projection_steps)
        self.bisection_steps = int(bisection_steps)
        self._distance: LPIPS | None = None
        self._failed = 0

    def params(self) -> dict[str, Any]:
        return {"bound": self.bound, "steps": self.steps, "lpips": self.lpips, "step_size": self.step_size,
                "decay_step_size": self.decay_step_size, "kappa": self.kappa, "projection": self.projection,
                "projection_overshoot": self.projection_overshoot, "projection_steps": self.projection_steps,
                "bisection_steps": self.bisection_steps}

    def budget(self) -> Budget:
        return LPIPSBudget(self.bound, self._distance)

    def _attacked(self, model: nn.Module) -> nn.Module:
        """The model this attack runs: with the model's own LPIPS the distance *is* the model, read by hooks on its
        blocks, so it runs the plain model — fp32 under ``--precision bf16`` (the LPIPS budget is met and checked in
        fp32), eager under ``--compile`` (a compiled graph does not fire hooks added after compiling)."""
        return plain_model(model) if self.lpips == "self" else model

    def call_flags(self) -> dict[str, int]:
        return {"projection-failed": self._failed} if self._failed else {}

    def applicable(self, model: nn.Module) -> bool:
        """The 'self' LPIPS needs Transformer blocks to read features from; without them the threat is n/a."""
        if self.lpips != "self":
            return True
        try:
            transformer_blocks(model)
        except ConfigError:
            return False
        return True

    def _step_at(self, iteration: int) -> float:
        """The LPIPS step length of iteration t: constant, or decayed as η·0.1^(t/steps)."""
        if self.decay_step_size:
            return self.step_size * 0.1 ** (iteration / self.steps)
        return self.step_size

    def _start(self, model: nn.Module, images: torch.Tensor) -> tuple[LPIPS, torch.Tensor, torch.Tensor]:
        """Set up a call: the distance (remembered for ``budget()``), φ(clean) and the random start."""
        if self.lpips == "self" or self._distance is None:
            self._distance = LPIPS(self.lpips, model)
        self._failed = 0
        with torch.no_grad():
            clean_embedding = self._distance.embed(images)
        start = (images + START_STD * torch.randn_like(images)).clamp(0, 1)
        return self._distance, clean_embedding, start

    def _distances(self, distance: LPIPS, images: torch.Tensor, clean_embedding: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.linalg.vector_norm(distance.embed(images) - clean_embedding, dim=1)

    def project(self, distance: LPIPS, clean: torch.Tensor, clean_embedding: torch.Tensor,
                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project onto {d(clean, ·) ≤ bound} ∩ [0,1]: (projected images, mask of failures returned as clean)."""
        images = images.detach().clone()
        todo = torch.arange(len(images), device=images.device)
        if self.projection == "newtons":
            for _ in range(self.projection_steps):
                if len(todo) == 0:
                    break
                todo = self._newton_step(distance, clean_embedding, images, todo)
        failed = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        if len(todo):
            outside = self._distances(distance, images[todo], clean_embedding[todo]) > self.bound
            todo = todo[outside]
        if len(todo):
            images[todo], failed[todo] = self._bisect(distance, clean[todo], clean_embedding[todo], images[todo])
        return images, failed

    def _newton_step(self, distance: LPIPS, clean_embedding: torch.Tensor, images: torch.Tensor,
                     todo: torch.Tensor) -> torch.Tensor:
        """One overshooting Newton step on d = bound for the rows ``todo`` still outside (in place); rows left."""
        current = images[todo].requires_grad_(True)
        lpips = torch.linalg.vector_norm(distance.embed(current) - clean_embedding[todo], dim=1)
        outside = lpips > self.bound
        if not outside.any():
            return todo[:0]
        (grad,) = torch.autograd.grad(lpips[outside].sum(), current)
        grad, rows = grad[outside], todo[outside]
        squared = grad.flatten(1).square().sum(dim=1)
        excess = lpips[outside].detach() - self.bound + self.projection_overshoot
        size = torch.where(squared > 0, excess * (1 + self.projection_overshoot) / squared.clamp_min(TINY),
                           torch.zeros_like(squared))
        images[rows] = (images[rows] - per_example(size, grad) * grad).clamp(0, 1)
        return rows

    def _bisect(self, distance: LPIPS, clean: torch.Tensor, clean_embedding: torch.Tensor,
                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Largest tested λ with d(clean, clean + λ(images − clean)) ≤ bound; λ = 0 (the clean image) = failure."""
        direction = images - clean
        low = torch.zeros(len(images), dtype=images.dtype, device=images.device)
        high = torch.ones_like(low)
        for _ in range(self.bisection_steps):
            middle = (low + high) / 2
            inside = self._distances(distance, clean + per_example(middle, direction) * direction,
                                     clean_embedding) <= self.bound
            low, high = torch.where(inside, middle, low), torch.where(inside, high, middle)
        return clean + per_example(low, direction) * direction, low == 0

    def _finish(self, distance: LPIPS, images: torch.Tensor, clean_embedding: torch.Tensor, tracker: _FirstSuccess,
                fallback: torch.Tensor, fallback_failed: torch.Tensor) -> torch.Tensor:
        """First success, else the projected fallback; anything still outside the bound becomes the clean image."""
        found = per_example(tracker.found, images)
        output = torch.where(found, tracker.result, fallback)
        failed = ~tracker.found & fallback_failed
        outside = self._distances(distance, output, clean_embedding) > self.bound
        output = torch.where(per_example(outside, images), images, output)
        self._failed = int((failed | outside).sum())
        return output.detach()


@register_threat("ppgd", tag="unseen", column="ppgd")
class PerceptualPGD(PerceptualAttack):
    """Perceptual PGD (Laidlaw et al. 2021): LPIPS-steepest ascent steps by conjugate gradient, projected."""

    def __init__(self, bound: float = 0.25, steps: int = 20, lpips: str = "auto", step_size: float | None = None,
                 decay_step_size: bool = False, cg_iterations: int = 5, h: float = 1e-3, kappa: float = 1.0,
                 projection: str = "newtons", projection_overshoot: float = 0.1, projection_steps: int = 10,
                 bisection_steps: int = 10) -> None:
        super().__init__(bound, steps, lpips, step_size, decay_step_size, kappa, projection, projection_overshoot,
                         projection_steps, bisection_steps)
        if cg_iterations < 1 or h <= 0:
            raise ConfigError(f"ppgd: need cg_iterations >= 1 and h > 0 (got {cg_iterations}, {h})")
        self.cg_iterations = int(cg_iterations)
        self.h = float(h)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "cg_iterations": self.cg_iterations, "h": self.h}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, model = images.detach(), self._attacked(model)
        distance, clean_embedding, current = self._start(model, images)
        tracker = _FirstSuccess(images, self.bound)
        failed = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for iteration in range(self.steps):
            rows = tracker.remaining()
            if len(rows) == 0:
                break
            stepped, embedding, logits = self._ascent(model, distance, current[rows], labels[rows],
                                                      self._step_at(iteration))
            lpips = torch.linalg.vector_norm(embedding - clean_embedding[rows], dim=1)
            tracker.offer(rows, current[rows], logits, labels[rows], lpips)
            current[rows], failed[rows] = self.project(distance, images[rows], clean_embedding[rows], stepped)
        rows = tracker.remaining()
        if len(rows):
            with torch.no_grad():
                embedding, logits = distance.embed_logits(model, current[rows])
            lpips = torch.linalg.vector_norm(embedding - clean_embedding[rows], dim=1)
            tracker.offer(rows, current[rows], logits, labels[rows], lpips)
        return self._finish(distance, images, clean_embedding, tracker, current, failed)

    def _ascent(self, model: nn.Module, distance: LPIPS, images: torch.Tensor, labels: torch.Tensor,
                step: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One first-order step of LPIPS length ``step``; also φ and logits at the starting point."""
        images = images.detach().requires_grad_(True)
        embedding, logits = distance.embed_logits(model, images)
        loss = margin_loss(logits, labels, self.kappa)
        (grad,) = torch.autograd.grad(loss.sum(), images, retain_graph=True)
        direction = self._conjugate_gradient(distance, images, embedding, grad)
        with torch.no_grad():
            base = embedding.detach()
            length = torch.linalg.vector_norm((distance.embed(images + self.h * direction) - base) / self.h, dim=1)
            moves = (_norms(grad) >= FLAT_GRADIENT) & (length > 0)
            scale = torch.where(moves, step / length.clamp_min(TINY), torch.zeros_like(length))
            stepped = (images + per_example(scale, direction) * direction).clamp(0, 1)
        return stepped.detach(), base, logits.detach()

    def _conjugate_gradient(self, distance: LPIPS, images: torch.Tensor, embedding: torch.Tensor,
                            grad: torch.Tensor) -> torch.Tensor:
        """Approximately solve (JᵀJ) v = grad per example, J = Dφ(images), with finite-difference J·v."""
        base = embedding.detach()

        def gram(vector: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                jacobian_vector = (distance.embed(images.detach() + self.h * vector) - base) / self.h
            return torch.autograd.grad(embedding, images, grad_outputs=jacobian_vector, retain_graph=True)[0]

        solution = torch.zeros_like(grad)
        residual, direction = grad, grad
        running = torch.ones(len(grad), dtype=torch.bool, device=grad.device)
        for iteration in range(self.cg_iterations):
            squared = residual.flatten(1).square().sum(dim=1)
            if iteration > 0:
                running = running & (squared >= CG_TOLERANCE)
            if not running.any():
                break
            product = gram(direction)
            curvature = (direction * product).flatten(1).sum(dim=1)
            running = running & (curvature != 0)
            alpha = torch.where(running, squared / torch.where(running, curvature, torch.ones_like(curvature)),
                                torch.zeros_like(curvature))
            solution = solution + per_example(alpha, grad) * direction
            if iteration < self.cg_iterations - 1:
                new_residual = residual - per_example(alpha, grad) * product
                beta = new_residual.flatten(1).square().sum(dim=1) / squared.clamp_min(TINY)
                new_direction = new_residual + per_example(beta, grad) * direction
                keep = per_example(running, grad)
                residual = torch.where(keep, new_residual, residual)
                direction = torch.where(keep, new_direction, direction)
        return solution.detach()


@register_threat("lpa", tag="unseen", column="lpa")
class LagrangePerceptual(PerceptualAttack):
    """Lagrangian perceptual attack (Laidlaw et al. 2021): margin loss + growing LPIPS penalty, then projection."""

    def __init__(self, bound: float = 0.25, steps: int = 20, lpips: str = "auto", step_size: float | None = None,
                 decay_step_size: bool = True, binary_steps: int = 5, h: float = 0.1, kappa: float = 1.0,
                 initial_penalty: float = 0.01, penalty_factor: float = 10.0, projection: str = "newtons",
                 projection_overshoot: float = 0.1, projection_steps: int = 10, bisection_steps: int = 10) -> None:
        super().__init__(bound, steps, lpips, step_size, decay_step_size, kappa, projection, projection_overshoot,
                         projection_steps, bisection_steps)
        if binary_steps < 1 or h <= 0 or initial_penalty < 0 or penalty_factor < 1:
            raise ConfigError("lpa: need binary_steps >= 1, h > 0, initial_penalty >= 0 and penalty_factor >= 1")
        self.binary_steps = int(binary_steps)
        self.h = float(h)
        self.initial_penalty = float(initial_penalty)
        self.penalty_factor = float(penalty_factor)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "binary_steps": self.binary_steps, "h": self.h,
                "initial_penalty": self.initial_penalty, "penalty_factor": self.penalty_factor}

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, model = images.detach(), self._attacked(model)
        distance, clean_embedding, current = self._start(model, images)
        tracker = _FirstSuccess(images, self.bound)
        penalty = torch.full((len(images),), self.initial_penalty, dtype=images.dtype, device=images.device)
        projected = images.clone()
        failed = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.binary_steps):
            last_lpips = torch.zeros_like(penalty)
            for iteration in range(self.steps):
                rows = tracker.remaining()
                if len(rows) == 0:
                    break
                current[rows], last_lpips[rows] = self._descend(model, distance, current[rows], labels[rows],
                                                                clean_embedding[rows], penalty[rows], tracker, rows,
                                                                self._step_at(iteration))
            penalty = torch.where(last_lpips >= self.bound, penalty * self.penalty_factor, penalty)
            rows = tracker.remaining()
            if len(rows) == 0:
                break
            projected[rows], failed[rows] = self.project(distance, images[rows], clean_embedding[rows],
                                                         current[rows])
            with torch.no_grad():
                embedding, logits = distance.embed_logits(model, projected[rows])
            lpips = torch.linalg.vector_norm(embedding - clean_embedding[rows], dim=1)
            tracker.offer(rows, projected[rows], logits, labels[rows], lpips)
        return self._finish(distance, images, clean_embedding, tracker, projected, failed)

    def _descend(self, model: nn.Module, distance: LPIPS, images: torch.Tensor, labels: torch.Tensor,
                 clean_embedding: torch.Tensor, penalty: torch.Tensor, tracker: _FirstSuccess, rows: torch.Tensor,
                 step: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Offer the current iterate, then one LPIPS-normalised step on −margin + λ·relu(d − bound)."""
        images = images.detach().requires_grad_(True)
        embedding, logits = distance.embed_logits(model, images)
        lpips = torch.linalg.vector_norm(embedding - clean_embedding, dim=1)
        loss = -margin_loss(logits, labels, self.kappa) + penalty * F.relu(lpips - self.bound)
        (grad,) = torch.autograd.grad(loss.sum(), images)
        with torch.no_grad():
            tracker.offer(rows, images, logits, labels, lpips)
            unit = grad / per_example(_norms(grad) + 1e-8, grad)
            rate = torch.linalg.vector_norm(embedding - distance.embed(images - self.h * unit), dim=1) / self.h
            stepped = (images - per_example(step / (rate + 1e-8), unit) * unit).clamp(0, 1)
        return stepped.detach(), lpips.detach()
