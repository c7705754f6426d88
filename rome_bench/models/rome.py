"""RoME: mixture of low-rank (LoRA) experts with dual-scale gating (paper Sec. 4.2-4.3, Eq. 2-5), and the
variants its ablations compare (Table 4, Table A4, Table 5).

Every wrapped linear layer W computes, for token i of an image,

    o_i = W h_i + Σ_k g_{i,k} B_k A_k h_i                                  (Eq. 2)
    u_i = softmax(MLP_local(h_i)),  v = softmax(MLP_global(mean_i h_i))    (Eq. 3, 4)
    g_i = (1 - β(l)) u_i + β(l) v,  β(l) = σ(s (1 - l/L) - b)               (Eq. 5)

with l = 1..L the index of the Transformer block that holds the layer. The experts are computed fused: all
A_k stacked as one (K·r × d_in) matrix and all B_k as one (d_out × K·r) matrix, so an expert mixture costs
two matmuls whatever K is. The gates of the last forward pass stay on the gating module (with their graph, so
losses can use them) and are read through :func:`rome_bench.models.gates.gates`.

Switches (:class:`RomeOptions`, set with ``--set model.options.NAME=VALUE`` or the ``train`` flags):

* ``expert_type``: ``lora`` (above); ``adapter``: Houlsby bottleneck experts on the layer's output,
  o + Σ_k g_k U_k GELU(D_k o + d_k), U_k = 0 at init; ``ffn``: conventional MoE, K copies of the block's MLP
  (upcycled: each starts as the MLP, so the model starts equal to the backbone) mixed per token by the gates.
  With ``top_k`` = 0 all K FFN experts are computed (dense soft routing), so their FLOPs are K× the MLP's; with
  ``top_k`` = k < K each token runs only its k largest-gated experts (the paper's Table 6 MoE (FFN): top-2 of 4).
* ``targets``: any subset of the attention's ``qkv`` and ``proj`` and the MLP's ``fc1`` and ``fc2``.
* ``gating``: ``none`` (uniform 1/K, no parameters), ``local`` (β = 0), ``global`` (β = 1), ``dual`` (fixed β(l)),
  ``dual-inverted`` (β(L + 1 − l): the schedule reversed over layers), ``dual-learned`` (a learnable β per gated
  layer, σ of a logit initialised at β(l)), ``dual-cls`` (the CLS token instead of the token mean for v).
  With one branch only, the missing one is recorded as the other's summary (``local`` records the token mean of u
  as the global gate, ``global`` records v at every token as the local gate) so routing losses always find both.

Inference-time variants (Table 5) are not model changes: ``models.gates.inference_variant`` switches every gate
of a model to ``random`` (gates drawn uniformly from the simplex, per token), ``inverse`` ((1 − g)/(K − 1)) or
``removed`` (all gates 0: the experts contribute nothing, so a LoRA or adapter model computes its backbone).

Swin's window attention sees (B·windows, N, C): a gate built with ``group`` = windows per image averages its
global branch over all windows of an image (timm partitions windows batch-major), so v stays image-level.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.checkpoint import ROME_OPTIONS_BEFORE
from rome_bench.config import MAX_EXPERTS, ModelConfig
from rome_bench.errors import ConfigError
from rome_bench.models.classifier import ImageClassifier
from rome_bench.models.dual_gate import DualScaleGate, layer_beta
from rome_bench.models.family import ModelFamily, RoutingChoice, build_backbone, register_family
from rome_bench.models.gates import relaxing, straight_through

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo

EXPERT_TYPES: tuple[str, ...] = ("lora", "ffn", "adapter")
EXPERT_LAYERS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2", "conv1", "conv2")  # conv*: WideResNet / ResNet blocks
GATINGS: tuple[str, ...] = ("none", "local", "global", "dual", "dual-inverted", "dual-learned", "dual-cls")
# Eq. 7's K -> K' projection of the global gates (training/diversification.py says which reading each is)
DIV_PROJECTIONS: tuple[str, ...] = ("per-layer", "trainable", "fixed", "none")
GATE_OWNED_PROJECTIONS: frozenset[str] = frozenset({"per-layer", "trainable"})
# the conv experts' factorisation (models/wrn.py): loralib's ConvLoRA, or rank-r on the im2col patch (older runs)
CONV_LORA_LAYOUTS: tuple[str, ...] = ("loralib", "im2col")


@dataclass(frozen=True)
class RomeOptions:
    """RoME's settings (``model.options`` of family ``rome``; paper Sec. 4.2-4.4) and every switch its ablations
    (Tables 4, A4, A5) turn. The routing loss is a name in the routing-loss registry (``rome-bench list
    routing-losses``); it is checked, with its default λ, when training starts."""

    expert_type: str = "lora"  # lora | ffn (K FFNs replacing the block MLP) | adapter (Houlsby bottleneck)
    num_experts: int = 4
    rank: int = 16  # LoRA rank r, or the adapter's bottleneck width
    targets: tuple[str, ...] = ("qkv", "proj")  # ViT: ⊆ qkv,proj,fc1,fc2; WRN: ⊆ conv1,conv2; ffn experts: ("mlp",)
    gating: str | None = "dual"  # none | local | global | dual | dual-inverted | dual-learned | dual-cls
    # hidden width of the gating MLPs; 0 = one Linear per branch, which is what the paper's parameter counts imply
    # (Table 6: 88.85M = ViT-B 85.15M + LoRA 3.54M + 24 gated layers × (2 Linear d→K + a K→K' Linear))
    gate_hidden: int = 0
    beta_s: float = 4.0
    beta_b: float = 2.0
    routing_loss: str | None = "diversification"  # a routing-loss registry name, or none
    routing_weight: float | None = None  # λ of the routing loss; None = that loss's default (0.1 div, 0.5 balance)
    div_distance: str = "l2"  # l2 | cosine | sym-kl | wasserstein1 (Table A5; checked by the diversification loss)
    # Eq. 7's projection of the global gates for L_div-global (training/diversification.py): per-layer (a K -> K'
    # Linear on each gate, counted and saved, not trained: L_div would grow it without bound), trainable (the same,
    # trained by L_div), fixed (one seeded K x K' matrix for all layers: older runs) or none (Table 4's w/o)
    div_projection: str | None = "per-layer"
    projection_dim: int = 100  # K' of that projection
    top_k: int = 0  # ffn experts only: 0 = dense (all K per token); k < K = sparse top-k dispatch (Table 6: 2 of 4)
    conv_lora: str = "loralib"  # conv experts (WRN/ResNet): loralib's ConvLoRA (scaled α/r) | im2col (older runs)
    conv_lora_alpha: float = 1.0  # α of the loralib layout's α/r scale (loralib's default 1)

    def __post_init__(self) -> None:
        # --set writes the choice "none" as None where the options do not hold the name yet (hence the | None)
        for name in ("gating", "routing_loss", "div_projection"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, "none")

    def legacy_section(self) -> dict[str, Any]:
        """Every setting, as the model hash covered the old ``model.rome`` section: ``top_k`` left out when dense (as
        before it existed), ``div_projection`` fixed/none as the old true/false, the conv layout and its α left out
        when im2col (as before they existed)."""
        settings = dataclasses.asdict(self)
        if not settings["top_k"]:
            settings.pop("top_k")
        old_names: dict[str | None, bool] = {"fixed": True, "none": False}
        settings["div_projection"] = old_names.get(self.div_projection, self.div_projection)
        if self.conv_lora == "im2col":
            settings.pop("conv_lora")
            settings.pop("conv_lora_alpha")
        return settings

    @property
    def gate_projection_dim(self) -> int:
        """K' of the projection each gate owns (``div_projection`` per-layer or trainable, routing loss
        diversification, gates that are not uniform), else 0."""
        owned = self.div_projection in GATE_OWNED_PROJECTIONS and self.routing_loss == "diversification" and \
            self.gating != "none"  # uniform gates: L_div is 0
        return self.projection_dim if owned else 0

    def check(self) -> None:
        """One ConfigError line for the first setting no RoME model can use."""
        for ok, message in self._checks():
            if not ok:
                raise ConfigError(message)

    def _checks(self) -> list[tuple[bool, str]]:
        targets = set(self.targets)
        return [
            (1 <= self.num_experts <= MAX_EXPERTS,
             f"model.options.num_experts must be between 1 and {MAX_EXPERTS} (got {self.num_experts})"),
            (self.rank >= 1, "model.options.rank must be >= 1"),
            (self.gate_hidden >= 0, "model.options.gate_hidden must be >= 0 (0 = one linear layer)"),
            (self.expert_type in EXPERT_TYPES, f"model.options.expert_type must be one of {', '.join(EXPERT_TYPES)} "
                                               f"(got '{self.expert_type}')"),
            (self.expert_type != "ffn" or tuple(self.targets) == ("mlp",),
             "ffn experts replace the block MLP: set model.options.targets=mlp (--expert-layers is for lora/adapter)"),
            (self.expert_type == "ffn" or (bool(targets) and targets <= set(EXPERT_LAYERS)),
             f"model.options.targets must be a non-empty subset of {','.join(EXPERT_LAYERS)} "
             f"(got {','.join(self.targets)})"),
            (self.gating in GATINGS, f"model.options.gating must be one of {', '.join(GATINGS)} (got '{self.gating}')"),
            (bool(self.routing_loss), "model.options.routing_loss must name a routing loss (or none)"),
            (self.routing_weight is None or self.routing_weight >= 0,
             "model.options.routing_weight must be a number >= 0 (or none for the routing loss's default)"),
            (self.routing_loss != "switch" or self.top_k > 0,
             "routing loss switch reads a top-k router's dispatch: add --experts ffn --top-k K, or use load-balance"),
            (self.projection_dim >= 1, "model.options.projection_dim must be >= 1"),
            (self.div_projection in DIV_PROJECTIONS, f"model.options.div_projection must be one of "
                                                     f"{', '.join(DIV_PROJECTIONS)} (got '{self.div_projection}')"),
            (self.conv_lora in CONV_LORA_LAYOUTS, f"model.options.conv_lora must be one of "
                                                  f"{', '.join(CONV_LORA_LAYOUTS)} (got '{self.conv_lora}')"),
            (self.conv_lora_alpha > 0, "model.options.conv_lora_alpha must be > 0"),
            (0 <= self.top_k <= self.num_experts,
             f"model.options.top_k must be between 0 (dense) and num_experts = {self.num_experts} (got {self.top_k})"),
            (self.top_k == 0 or self.expert_type == "ffn",
             "model.options.top_k (sparse dispatch) applies to ffn experts: add --experts ffn, or set top_k=0"),
        ]


def _as_tokens(hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """(B, …, C) → (B, T, C) and the original shape (timm layers may see (B, H, W, C))."""
    shape = hidden_states.shape
    return hidden_states.reshape(shape[0], -1, shape[-1]), shape


class LoRAExpertMixture(nn.Module):
    """A linear layer plus K gated LoRA experts (Eq. 2); B = 0 at init, so it starts equal to the base layer.

    One matmul computes all experts' A h and the gates' first layers; a second computes Σ_k g_k B_k (A_k h).
    """

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, gate: DualScaleGate) -> None:
        super().__init__()
        self.base = base
        self.num_experts = num_experts
        self.rank = rank
        self.lora_A = nn.Parameter(torch.empty(num_experts * rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, num_experts * rank))
        for expert_A in self.lora_A.data.split(rank):
            nn.init.kaiming_uniform_(expert_A, a=math.sqrt(5))
        self.gate = gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens_in, shape = _as_tokens(hidden_states)
        batch, tokens, _ = tokens_in.shape
        down, gate_first = self._down(tokens_in)
        gates = self.gate.from_first_layer(gate_first)  # (B, T, K)
        mixed = (down.view(batch, tokens, self.num_experts, self.rank) * gates.unsqueeze(-1)).flatten(2)
        # W h + B·mixed as one matmul over [h, mixed]: avoids two thin matmuls when K·r is small
        output = F.linear(torch.cat([tokens_in, mixed], dim=-1), self._joined_weight(), self.base.bias)
        return output.reshape(*shape[:-1], output.shape[-1])

    def _joined_weight(self) -> torch.Tensor:
        """[W, B]; for a frozen model (no ``requires_grad``: evaluation, attacks on it) the concatenation is kept and
        reused until either tensor is replaced or changed in place, instead of being copied every call. A trainable
        model concatenates every call: fused optimizers update weights in place without bumping their version."""
        tensors = (self.base.weight, self.lora_B)
        if any(tensor.requires_grad for tensor in tensors) or torch.compiler.is_compiling():
            return torch.cat(tensors, dim=1)  # a compiled graph folds the concatenation of frozen weights itself
        key = tuple((tensor.data_ptr(), tensor._version, tensor.dtype, tensor.device) for tensor in tensors)
        cached = getattr(self, "_joined_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, torch.cat(tensors, dim=1))
            self._joined_cache = cached
        return cached[1]

    def _down(self, tokens_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All experts' A h and the gates' first layers, from one matmul."""
        gate_weight, gate_bias = self.gate.first_layer()
        if not len(gate_bias):
            return F.linear(tokens_in, self.lora_A), tokens_in[..., :0]
        no_bias = gate_bias.new_zeros(len(self.lora_A))  # the experts' A has no bias
        down = F.linear(tokens_in, torch.cat([self.lora_A, gate_weight]), torch.cat([no_bias, gate_bias]))
        return down.split([len(self.lora_A), len(gate_bias)], dim=-1)  # type: ignore[return-value]


class AdapterExpertMixture(nn.Module):
    """A linear layer followed by K gated Houlsby bottleneck adapters: o + Σ_k g_k U_k GELU(D_k o + d_k).

    The gates read the layer's input, like the LoRA experts' gates; U = 0 at init, so it starts as the base layer.
    """

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, gate: DualScaleGate) -> None:
        super().__init__()
        self.base = base
        self.num_experts = num_experts
        self.rank = rank
        self.down = nn.Linear(base.out_features, num_experts * rank)
        self.up = nn.Parameter(torch.zeros(base.out_features, num_experts * rank))
        self.gate = gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens_in, shape = _as_tokens(hidden_states)
        batch, tokens, _ = tokens_in.shape
        gates = self.gate(tokens_in)
        output = self.base(tokens_in)
        bottleneck = F.gelu(self.down(output)).view(batch, tokens, self.num_experts, self.rank)
        output = output + F.linear((bottleneck * gates.unsqueeze(-1)).flatten(2), self.up)
        return output.reshape(*shape[:-1], output.shape[-1])


class FFNExpertMixture(nn.Module):
    """K FFN experts replacing a block's MLP (conventional MoE), mixed per token: Σ_k g_k FFN_k(h).

    Dense (``top_k`` = 0): the experts' first layers are one (K·H × d) matmul; the second layers one (d × K·H) matmul
    over the gate-weighted hidden units, plus Σ_k g_k b_k. Sparse (``top_k`` = k < K, Shazeer et al. 2017 /
    GShard-style top-k): each token goes to the k experts with the largest gates, weighted by those gates
    renormalised over the k (w_e = g_e / Σ_{e' ∈ top-k} g_e'); each expert's FFN runs only on the tokens routed to
    it (index dispatch, scatter-add back), so an expert costs FLOPs in proportion to its tokens. The gate records the
    soft g as ``fused`` (routing losses and GMA read it) and the top-k assignment as ``dispatch``; the gradient
    reaches the router through the renormalised weights of the chosen experts. Each expert starts as a copy of the
    MLP it replaces.
    """

    def __init__(self, mlp: nn.Module, num_experts: int, gate: DualScaleGate, top_k: int = 0) -> None:
        super().__init__()
        self.top_k = top_k if 0 < top_k < num_experts else 0
        fc1, fc2 = mlp.fc1, mlp.fc2
        if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
            raise ConfigError(f"ffn experts need an MLP with Linear fc1 and fc2; got {type(mlp).__name__}")
        self.num_experts = num_experts
        self.hidden = fc1.out_features
        self.act = copy.deepcopy(getattr(mlp, "act", nn.GELU()))
        self.fc1_weight = nn.Parameter(fc1.weight.detach().repeat(num_experts, 1).clone())
        self.fc1_bias = nn.Parameter(_bias(fc1).repeat(num_experts))
        self.fc2_weight = nn.Parameter(fc2.weight.detach().repeat(1, num_experts).clone())
        self.fc2_bias = nn.Parameter(_bias(fc2).repeat(num_experts, 1))
        self.gate = gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens_in, shape = _as_tokens(hidden_states)
        gates = self.gate(tokens_in)  # (B, T, K)
        if self.top_k:
            dense = self._dense(tokens_in, gates).flatten(0, 1) if relaxing() else None
            return straight_through(self._sparse(tokens_in, gates), dense).reshape(*shape[:-1], -1)
        return self._dense(tokens_in, gates).reshape(*shape[:-1], -1)

    def _dense(self, tokens_in: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """All K FFN experts on every token, weighted by the soft gates: (B, T, d)."""
        batch, tokens, _ = tokens_in.shape
        hidden = self.act(F.linear(tokens_in, self.fc1_weight, self.fc1_bias))
        weighted = (hidden.view(batch, tokens, self.num_experts, self.hidden) * gates.unsqueeze(-1)).flatten(2)
        return F.linear(weighted, self.fc2_weight) + gates @ self.fc2_bias

    def _sparse(self, tokens_in: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Top-k dispatch: every expert's FFN on its routed tokens only, outputs scattered back with their weights."""
        flat, weights = tokens_in.reshape(-1, tokens_in.shape[-1]), gates.reshape(-1, self.num_experts)
        top_weights, top_experts = weights.topk(self.top_k, dim=-1)
        top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        dispatch = torch.zeros_like(weights).scatter_(-1, top_experts, 1.0)
        if self.gate.last is not None:
            self.gate.last.dispatch = dispatch.view_as(gates)
        output = flat.new_zeros(len(flat), self.fc2_weight.shape[0])
        for expert in range(self.num_experts):
            rows, slot = (top_experts == expert).nonzero(as_tuple=True)
            if not len(rows):
                continue
            routed = self._expert(expert, flat[rows]) * top_weights[rows, slot].unsqueeze(-1)
            output.index_add_(0, rows, routed.to(output.dtype))  # under bf16 autocast the experts compute in bf16
        return output

    def _expert(self, expert: int, inputs: torch.Tensor) -> torch.Tensor:
        """FFN_expert on (N, d) inputs."""
        hidden_slice = slice(expert * self.hidden, (expert + 1) * self.hidden)
        hidden = self.act(F.linear(inputs, self.fc1_weight[hidden_slice], self.fc1_bias[hidden_slice]))
        return F.linear(hidden, self.fc2_weight[:, hidden_slice], self.fc2_bias[expert])


def _bias(layer: nn.Linear) -> torch.Tensor:
    return layer.bias.detach().clone() if layer.bias is not None else torch.zeros(layer.out_features)


@dataclass
class ExpertSite:
    """A Transformer block that can take experts: its 1-based layer index and how its attention sees tokens."""

    layer: int
    path: str  # the block's module path, e.g. blocks.3 or layers.1.blocks.0
    block: nn.Module
    prefix_tokens: int  # CLS-like tokens before the patch tokens (0 for Swin)
    attn_group: int  # rows per image the attention's linears see (windows per image for Swin, else 1)


def expert_sites(backbone: nn.Module) -> list[ExpertSite]:
    """The blocks of a timm ViT/DeiT (``.blocks``) or Swin (``.layers[i].blocks``), in forward order."""
    if isinstance(getattr(backbone, "blocks", None), nn.Sequential | nn.ModuleList):
        prefix = int(getattr(backbone, "num_prefix_tokens", 1))
        return [ExpertSite(i + 1, f"blocks.{i}", block, prefix, 1) for i, block in enumerate(backbone.blocks)]
    stages = getattr(backbone, "layers", None)
    if stages is not None and all(hasattr(stage, "blocks") for stage in stages):
        blocks = [(f"layers.{s}.blocks.{b}", block) for s, stage in enumerate(stages)
                  for b, block in enumerate(stage.blocks)]
        return [ExpertSite(i + 1, path, block, 0, _windows_per_image(block)) for i, (path, block) in enumerate(blocks)]
    raise ConfigError(f"RoME experts need a ViT/DeiT (.blocks) or Swin (.layers[i].blocks) backbone, or one "
                      f"with its own add_rome_experts(config); {type(backbone).__name__} is none of these")


def _windows_per_image(block: nn.Module) -> int:
    height, width = block.input_resolution
    window_h, window_w = block.window_size
    return math.ceil(height / window_h) * math.ceil(width / window_w)


def add_rome_experts(backbone: nn.Module, config: RomeOptions) -> nn.Module:
    """Add the configured experts to a backbone, in place; returns the backbone.

    A backbone with its own ``add_rome_experts(config)`` method (the WideResNet's conv experts) does it itself;
    Transformers get experts on ``attn.{qkv,proj}`` / ``mlp.{fc1,fc2}`` (or FFN experts replacing ``mlp``).
    """
    own = getattr(backbone, "add_rome_experts", None)
    if callable(own):
        own(config)
        return backbone
    sites = expert_sites(backbone)
    if config.gating == "dual-cls" and any(site.prefix_tokens == 0 for site in sites):
        raise ConfigError("gating dual-cls needs a CLS token; this backbone has none: use --gating dual")
    for site in sites:
        beta = layer_beta(config.gating, site.layer, len(sites), config.beta_s, config.beta_b)
        if config.expert_type == "ffn":
            _add_ffn_experts(site, config, beta)
            continue
        for target in config.targets:
            _add_linear_experts(site, target, config, beta)
    return backbone


def _gate(config: RomeOptions, dim_in: int, beta: float, layer: int, name: str, group: int) -> DualScaleGate:
    return DualScaleGate(dim_in, config.num_experts, config.gate_hidden, beta, layer, name, config.gating, group,
                         config.gate_projection_dim, config.div_projection == "trainable")


def _add_linear_experts(site: ExpertSite, target: str, config: RomeOptions, beta: float) -> None:
    owner_name = "attn" if target in ("qkv", "proj") else "mlp"
    owner = getattr(site.block, owner_name)
    base = getattr(owner, target, None)
    name = f"{site.path}.{owner_name}.{target}"
    if not isinstance(base, nn.Linear):
        raise ConfigError(f"{name} is {type(base).__name__}, not nn.Linear: experts cannot go on '{target}' here")
    group = site.attn_group if owner_name == "attn" else 1
    gate = _gate(config, base.in_features, beta, site.layer, name, group)
    wrapper = AdapterExpertMixture if config.expert_type == "adapter" else LoRAExpertMixture
    setattr(owner, target, wrapper(base, config.num_experts, config.rank, gate))


def _add_ffn_experts(site: ExpertSite, config: RomeOptions, beta: float) -> None:
    mlp = site.block.mlp
    gate = _gate(config, mlp.fc1.in_features, beta, site.layer, f"{site.path}.mlp", 1)
    site.block.mlp = FFNExpertMixture(mlp, config.num_experts, gate, config.top_k)


@register_family("rome", has_experts=True,
                 citation="RoME: Robust Mixture of Low-Rank Experts (ECCV 2026), Sec. 4.2-4.4")
class RomeFamily(ModelFamily):
    """LoRA experts on the configured projections with dual-scale gating (``model.options``: :class:`RomeOptions`)."""

    Options = RomeOptions
    options: RomeOptions

    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        backbone = add_rome_experts(build_backbone(config, info), self.options)
        return ImageClassifier(backbone, info.mean, info.std)

    def routing(self, config: ModelConfig) -> RoutingChoice | None:
        if self.options.routing_loss == "none":
            return None
        return RoutingChoice(self.options.routing_loss, self.options.routing_weight)

    def stored_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The options given, plus those whose default changed (``checkpoint.ROME_OPTIONS_BEFORE``) always: a stored
        config without them was written before the change and is read with the old values."""
        return super().stored_options({**dict.fromkeys(ROME_OPTIONS_BEFORE), **given})

    def identity_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Hashed as before the settings moved from ``model.rome`` to ``model.options``: all of them, under
        ``rome``, with ``top_k`` left out when dense (as before it existed)."""
        return {**{k: v for k, v in fields.items() if k != "options"}, "rome": self.options.legacy_section()}
