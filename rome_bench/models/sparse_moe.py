"""``sparse-moe``: ResNet-18 whose last-stage residual block(s) become sparse top-1 mixture-of-experts layers.

Pavlitska, Fan, Ditschuneit & Zöllner, "Robust Experts: the Effect of Adversarial Training on CNNs with Sparse
Mixture-of-Experts Layers", ICCV Workshops 2025 (arXiv:2509.05086; code github.com/KASTEL-MobilityLab/
robust-sparse-moes, read for the choices the paper leaves open; nothing here is copied from it).

**Architecture.** The backbone is ResNet-18 for small inputs (``resnet18``: 3×3/1 stem, no max-pool; see
models/resnet.py). ``model.options.moe_layers`` picks what becomes an MoE layer:

* ``layer4.1`` (default, the paper's "layer4.1" BlockMoE): the second residual block of the last stage;
  more generally ``layerS.I`` is block I of stage S (S = 1..4);
* ``layer4`` (``layerS``): every residual block of the stage, each its own MoE layer with its own router;
* ``layer4-convs`` (``layerS-convs``, the paper's ConvMoE): every convolution of the stage, each its own MoE layer
  — conv1 and conv2 of every block and the 1×1 projection shortcut, as their code's filter (every Conv2d whose
  name contains the stage) takes it.

Each MoE layer has E = ``num_experts`` (4) experts, each a copy of the replaced module's architecture with freshly
initialised weights (convs Kaiming-normal with fan-in and ReLU gain, BatchNorm weight 1, bias 0 and fresh running
statistics, as their ``_initialize_weights``; the replaced module's own weights are dropped).

**Router.** Input x of the replaced module (B, C, H, W); p = softmax(r(x)) ∈ Δ^E with r (``gate``):

* ``gap`` (default; their ``GlobalAvgLinearRoutingNetwork``): global average pool → Linear(C, E) (with bias);
* ``conv`` (their ``ConvGlobalAvgRoutingNetwork`` with a 3×3 kernel): Conv2d(C, E, 3×3, no padding, no bias) →
  global average pool.

**Top-1 routing with a straight-through estimator.** q = varied(p) (the inference variant, ``models/gates.py``:
q = p normally, one-hot on k under ``--route-to-expert k``, Table 5's random/inverse/removed); the example goes to
k = argmax_e q_e. Every expert runs only on the examples routed to it (index selection, then the outputs are put
back in batch order; an expert with no example does not run). The layer computes, per example,

    y = w · E_k(x),   w = sg(Σ_e q_e) + q_k − sg(q_k)     (sg = stop-gradient)

so the forward value is exactly E_k(x) (w = 1; 0 under ``removed``, whose q is all zero), while ∂y/∂q_k = E_k(x):
the router's only gradient from the classification loss is ⟨∂L/∂y, E_k(x)⟩ on p_k, spread to all E logits by the
softmax Jacobian. This is the forward and backward of their ``STEFunction`` (forward 1[p·mask ≠ 0], backward the
identity) applied to p·mask. The routing itself (argmax) has no gradient.

**Training-time routing** (train mode only, never under an inference variant; their ``TopKGate``):

* ``noise_std`` — before the argmax, s = p / std(p) + N(0, noise_std²) (std over the whole batch matrix); only
  the choice of expert is noisy, w uses p. Default ``None`` = theirs: 0.1 with the switch loss, none with the
  entropy loss (their entropy branch routes by plain argmax);
* ``capacity_factor`` — 0 (default, the paper's configs: ``expert_capacity: null``) = unlimited; c ≥ 1 limits each
  expert to ⌈c·B/E⌉ examples of a batch: every unassigned example proposes its best expert with room left, each
  expert keeps its proposals with the largest score up to its room, and the rest propose again (their greedy
  reassignment). With c = 1 and E dividing B, every expert gets exactly B/E examples: the micro configuration of
  the contract tests uses that so every expert of a 6-image batch receives examples.

In eval mode (every attack and every evaluation) routing is the plain argmax of q, per example, independent of
the rest of the batch.

**Gates.** Each router is an :class:`~rome_bench.models.gates.ExpertGate` and records
``GateOutput(fused = q (B, 1, E), dispatch = one-hot(k) (B, 1, E))``, so GMA, the routing losses, ``analyze
gating`` and the inference variants read it like every other family.

**Balancing loss** (``balance``, weight ``balance_weight`` = 0.5 as in the paper; the trainer adds it through
``routing()``; formulas in training/routing.py): ``entropy`` (default, their configs' choice for the reported
BlockMoE runs): mean per-example gate entropy − entropy of the batch-mean gate, minimum −log E at confident routing
spread evenly; ``switch`` (Switch Transformer): E·Σ_e f_e·P_e with f_e the share of the batch dispatched to expert e
and P_e its mean gate, 1 at balanced dispatch (their code subtracts 1). The paper reports that the switch loss lets
routing collapse onto few experts, which then become the most robust paths; ``none`` or weight 0 train without it.

**Attacks and BatchNorm.** Every attack here — the training PGD of ``linf-at`` and every evaluation — runs with the
model in eval mode: BatchNorm uses (and never updates) its running statistics, and routing is deterministic (no
noise, no capacity). Their public code generates the training PGD with the network in train mode (``AttackModule``
does not hold the network, so its ``eval()`` leaves it training): each of the 7 attack forwards uses batch
statistics and moves the running statistics, and routing during the attack is noisy. Their numbers therefore come
from a slightly different training signal; the update itself runs in train mode in both.

**GMA on top-1 routing** (threats/gma.py). The misrouting term −log q_{k*} (k* = the clean image's least likely
expert) reads the softmax q directly and differentiates through the router: it pulls the router's softmax toward the
least likely expert, and flips the routing once q_{k*} becomes the largest. The classification term reaches the
router only through the straight-through path above (∂y/∂q_k = E_k(x) for the chosen k); its gradient through the
experts' inputs is ordinary.

**Fixed-expert evaluation** (the paper's finding that one expert can beat the gated model):
``rome-bench eval --run RUN --suite pgd20 --route-to-expert all`` stores one leaderboard row per expert
(every MoE layer routes everything to expert k).

Paper preset ``sparse-moe-cifar100``: CIFAR-100, ResNet-18, ``layer4.1``, E = 4, gap router, entropy loss 0.5;
ℓ∞ PGD-AT ε = 8/255, α = 2/255 (``threats.train_step_size``), 7 steps; SGD with Nesterov momentum 0.9, lr 0.1,
weight decay 5e-4, poly decay (1 − epoch/T)^0.9 per epoch, batch 640, 200 epochs (their launch script; their default
config says 100); augmentation random crop (pad 4) + flip (theirs adds ColorJitter 0.3, which the trainer does not
do).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.config import DataConfig, ModelConfig, RunConfig
from rome_bench.errors import ConfigError
from rome_bench.models.classifier import ImageClassifier
from rome_bench.models.family import ModelFamily, RoutingChoice, build_backbone, register_family
from rome_bench.models.gates import ExpertGate, GateOutput, relaxing, straight_through
from rome_bench.presets import preset, register_preset

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

GATE_KINDS: tuple[str, ...] = ("gap", "conv")
SWITCH_NOISE = 0.1  # their TopKGate's epsilon: routing noise with the switch loss
MAX_EXPERTS = 64
_LAYERS = re.compile(r"^layer([1-4])(?:\.(\d+)|(-convs))?$")


@dataclass(frozen=True)
class SparseMoEOptions:
    moe_layers: str = "layer4.1"  # layerS.I (one block) | layerS (every block of stage S) | layerS-convs
    num_experts: int = 4
    gate: str = "gap"  # gap (avg-pool → linear → softmax) | conv (3×3 conv → avg-pool → softmax)
    # a routing-loss name (rome-bench list routing-losses; theirs: entropy or switch) or none (None, as --set writes
    # none, = none); the name is checked when training starts
    balance: str | None = "entropy"
    balance_weight: float = 0.5
    capacity_factor: float = 0.0  # 0 = unlimited; c >= 1: at most ceil(c·B/E) examples per expert in training
    noise_std: float | None = None  # routing noise in training; None = 0.1 with switch, 0 with entropy (theirs)

    def check(self) -> None:
        if _LAYERS.match(self.moe_layers) is None:
            raise ConfigError(f"model.options.moe_layers must be layerS.I (one block, e.g. layer4.1), layerS (every "
                              f"block of stage S, e.g. layer4) or layerS-convs (every conv of it); got "
                              f"'{self.moe_layers}'")
        if not 2 <= self.num_experts <= MAX_EXPERTS:
            raise ConfigError(f"model.options.num_experts must be between 2 and {MAX_EXPERTS} "
                              f"(got {self.num_experts})")
        if self.gate not in GATE_KINDS:
            raise ConfigError(f"model.options.gate must be one of {', '.join(GATE_KINDS)} (got '{self.gate}')")
        if self.balance == "":
            raise ConfigError("model.options.balance must name a routing loss (e.g. entropy or switch) or none")
        if self.balance_weight < 0:
            raise ConfigError(f"model.options.balance_weight must be >= 0 (got {self.balance_weight})")
        if self.capacity_factor != 0 and not 1 <= self.capacity_factor <= 1000:
            raise ConfigError(f"model.options.capacity_factor must be 0 (unlimited) or between 1 and 1000, so "
                              f"every example finds an expert (got {self.capacity_factor})")
        if self.noise_std is not None and not 0 <= self.noise_std <= 100:
            raise ConfigError(f"model.options.noise_std must be between 0 and 100, or none for the paper's "
                              f"default (got {self.noise_std})")

    @property
    def routing_noise(self) -> float:
        """The training-time routing noise actually used (their default couples it to the switch loss)."""
        if self.noise_std is not None:
            return self.noise_std
        return SWITCH_NOISE if self.balance == "switch" else 0.0


def capacity_routing(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """Top-1 expert per row of ``scores`` (B, E), at most ``capacity`` rows per expert (greedy reassignment).

    Needs capacity·E >= B. Each round every unassigned row proposes its best expert with room left; each expert keeps
    the proposals with the largest score up to its room; the others propose again.
    """
    batch, experts = scores.shape
    if capacity * experts < batch:
        raise ValueError(f"capacity {capacity} × {experts} experts cannot hold {batch} examples")
    index = torch.full((batch,), -1, dtype=torch.long, device=scores.device)
    room = [capacity] * experts
    while True:
        pending = (index < 0).nonzero().squeeze(1)
        if pending.numel() == 0:
            return index
        full = torch.tensor([r == 0 for r in room], device=scores.device)
        proposals = scores[pending].masked_fill(full, float("-inf")).argmax(dim=1)
        for expert in proposals.unique().tolist():
            mine = pending[proposals == expert]
            order = scores[mine, expert].argsort(descending=True, stable=True)
            kept = mine[order[:room[expert]]]
            index[kept] = expert
            room[expert] -= len(kept)


class SparseRouter(ExpertGate):
    """softmax(r(x)) over E experts, the inference variant, top-1 choice; returns the STE weights and the choice."""

    def __init__(self, in_channels: int, num_experts: int, kind: str, layer: int, name: str,
                 capacity_factor: float = 0.0, noise_std: float = 0.0) -> None:
        super().__init__(num_experts, layer, name)
        if kind == "gap":
            self.network: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                    nn.Linear(in_channels, num_experts))
        elif kind == "conv":
            self.network = nn.Sequential(nn.Conv2d(in_channels, num_experts, kernel_size=3, bias=False),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
        else:
            raise ConfigError(f"model.options.gate must be one of {', '.join(GATE_KINDS)} (got '{kind}')")
        self.capacity_factor = capacity_factor
        self.noise_std = noise_std

    def choose(self, varied: torch.Tensor) -> torch.Tensor:
        """The expert of every example: argmax, with the training-time noise and capacity when they apply."""
        scores = varied.detach()
        if not self.training or self.variant is not None:
            return scores.argmax(dim=-1)
        if self.noise_std > 0:
            scores = scores / scores.std().clamp_min(1e-12) + self.noise_std * torch.randn_like(scores)
        if self.capacity_factor > 0:
            capacity = max(math.ceil(self.capacity_factor * len(scores) / self.num_experts), 1)
            return capacity_routing(scores, capacity)
        return scores.argmax(dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = F.softmax(self.network(x).float(), dim=-1)
        varied = self.varied(probabilities)
        choice = self.choose(varied)
        dispatch = F.one_hot(choice, self.num_experts).to(varied.dtype)
        mass = varied.detach().sum(dim=-1, keepdim=True)  # 1, or 0 under the 'removed' variant
        weights = dispatch * (mass + varied - varied.detach())  # forward: dispatch·mass; gradient: straight through
        self.record(GateOutput(varied.unsqueeze(1), self.layer, self.name, dispatch=dispatch.unsqueeze(1)))
        return weights, choice


class SparseMoELayer(nn.Module):
    """E experts and a top-1 router; each expert runs only on the examples routed to it."""

    def __init__(self, experts: list[nn.Module], router: SparseRouter) -> None:
        super().__init__()
        self.router = router
        self.experts = nn.ModuleList(experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, choice = self.router(x)
        rows, outputs = [], []
        for index, expert in enumerate(self.experts):
            mine = (choice == index).nonzero().squeeze(1)
            if mine.numel() == 0:
                continue
            out = expert(x.index_select(0, mine))
            outputs.append(out * weights[mine, index].to(out.dtype).view(-1, *[1] * (out.ndim - 1)))
            rows.append(mine)
        if not rows:  # an empty batch: the output's shape, from expert 0 on no example
            return self.experts[0](x)
        order = torch.cat(rows)
        hard = torch.cat(outputs)[torch.argsort(order)]  # back to batch order
        return straight_through(hard, self._dense(x) if relaxing() else None)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_e q_e · expert_e(x) on every example: the soft mixture a relaxed attack differentiates."""
        assert self.router.last is not None
        gates = self.router.last.fused[:, 0]
        outputs = [expert(x) for expert in self.experts]
        return sum(gates[:, e].to(out.dtype).view(-1, *[1] * (out.ndim - 1)) * out for e, out in enumerate(outputs))


def fresh_expert(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s architecture with new weights (their init: Kaiming-normal fan-in, BN 1/0)."""
    expert = copy.deepcopy(module)
    for part in expert.modules():
        if isinstance(part, nn.Conv2d):
            nn.init.kaiming_normal_(part.weight)
            if part.bias is not None:
                nn.init.zeros_(part.bias)
        elif isinstance(part, nn.BatchNorm2d):
            part.reset_parameters()  # weight 1, bias 0, fresh running statistics
    return expert


def moe_targets(backbone: nn.Module, moe_layers: str) -> list[tuple[str, nn.Module, int]]:
    """(module path, module, input channels) of every module ``moe_layers`` names, in forward order."""
    if not callable(getattr(backbone, "basic_blocks", None)):
        raise ConfigError(f"family 'sparse-moe' needs a ResNet backbone (resnet18, resnet_micro, preact_resnet18); "
                          f"got {type(backbone).__name__}: set model.backbone=resnet18")
    match = _LAYERS.match(moe_layers)
    if match is None:
        raise ConfigError(f"model.options.moe_layers '{moe_layers}' is not layerS.I, layerS or layerS-convs")
    stage, block, convs = match.groups()
    blocks = [(name, module) for name, module in backbone.basic_blocks() if name.startswith(f"layer{stage}.")]
    if block is not None:
        chosen = [(name, module) for name, module in blocks if name == f"layer{stage}.{block}"]
        if not chosen:
            raise ConfigError(f"model.options.moe_layers={moe_layers}: this backbone's layer{stage} has "
                              f"{len(blocks)} block(s) (layer{stage}.0..{len(blocks) - 1}); choose one of them or "
                              f"layer{stage} (every block)")
        blocks = chosen
    if convs is None:
        return [(name, module, module.conv1.in_channels) for name, module in blocks]
    return [(f"{name}.{part}", conv, conv.in_channels) for name, module in blocks
            for part, conv in module.named_modules() if isinstance(conv, nn.Conv2d)]


def add_sparse_moe(backbone: nn.Module, options: SparseMoEOptions) -> nn.Module:
    """Replace the modules ``options.moe_layers`` names with sparse MoE layers, in place; returns ``backbone``."""
    for layer, (path, module, channels) in enumerate(moe_targets(backbone, options.moe_layers)):
        experts = [fresh_expert(module) for _ in range(options.num_experts)]
        router = SparseRouter(channels, options.num_experts, options.gate, layer, path,
                              capacity_factor=options.capacity_factor, noise_std=options.routing_noise)
        parent_path, _, child = path.rpartition(".")
        setattr(backbone.get_submodule(parent_path), child, SparseMoELayer(experts, router))
    return backbone


@register_family("sparse-moe", has_experts=True,
                 citation="Pavlitska, Fan, Ditschuneit & Zöllner, Robust Experts: the Effect of Adversarial Training "
                          "on CNNs with Sparse Mixture-of-Experts Layers, ICCV Workshops 2025")
class SparseMoEFamily(ModelFamily):
    """ResNet-18 whose last-stage block(s) or convs become top-1 MoE layers of E re-initialised experts."""

    Options = SparseMoEOptions
    options: SparseMoEOptions
    paper_recipe = "linf-at"
    # resnet_micro has one block per stage; E = 3 with capacity 1 sends exactly 2 of the contract tests' 6 images to
    # every expert, so every parameter gets a gradient
    micro = ("model.backbone=resnet_micro", "model.options.moe_layers=layer4", "model.options.num_experts=3",
             "model.options.capacity_factor=1.0")

    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        backbone = add_sparse_moe(build_backbone(config, info), self.options)
        return ImageClassifier(backbone, info.mean, info.std)

    def routing(self, config: ModelConfig) -> RoutingChoice | None:
        if self.options.balance in (None, "none") or self.options.balance_weight == 0:
            return None
        return RoutingChoice(self.options.balance, self.options.balance_weight)


@register_preset("sparse-moe-smoke")
def sparse_moe_smoke() -> RunConfig:
    """resnet_micro with its last block as a 4-expert top-1 MoE, ℓ∞ PGD-AT with the paper's optimiser: CPU minutes."""
    config = preset("smoke")
    config.preset = "sparse-moe-smoke"
    config.model.family = "sparse-moe"
    config.model.backbone = "resnet_micro"
    config.model.options = {"moe_layers": "layer4"}  # resnet_micro's layer4 has one block, layer4.0
    config.train.recipe = "linf-at"
    config.train.optimizer = "sgd-nesterov"
    config.train.schedule = "poly"
    config.train.lr = 0.05
    config.train.weight_decay = 5e-4
    config.train.epochs = 5
    config.train.batch_size = 64
    return config


@register_preset("sparse-moe-cifar100")
def sparse_moe_cifar100() -> RunConfig:
    """The paper's CIFAR-100 setting: ResNet-18, layer4.1 MoE (E = 4), PGD-AT 8/255 × 7, SGD-Nesterov 0.1, poly 0.9."""
    config = RunConfig(preset="sparse-moe-cifar100")
    config.model.family = "sparse-moe"
    config.model.backbone = "resnet18"
    config.model.options = {}  # the defaults: layer4.1, 4 experts, gap router, entropy loss 0.5
    config.data = DataConfig(dataset="cifar100", augment=True)
    config.threats.eps = {**config.threats.eps, "linf": 8 / 255}
    config.threats.train_steps = {**config.threats.train_steps, "linf": 7}
    config.threats.train_step_size = {"linf": 2 / 255}
    config.threats.eval_steps = {**config.threats.eval_steps, "linf": 20}
    config.train.recipe = "linf-at"
    config.train.optimizer = "sgd-nesterov"
    config.train.schedule = "poly"
    config.train.lr = 0.1
    config.train.weight_decay = 5e-4
    config.train.batch_size = 640
    config.train.epochs = 200
    config.train.checkpoint_every = 100
    return config
