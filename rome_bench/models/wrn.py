"""WideResNet (Zagoruyko & Komodakis) with RobustBench's layout, and RoME's conv-LoRA experts for it (paper Sec. 5.1).

The network has RobustBench's ``WideResNet`` parameter names (``conv1``, ``block{1,2,3}.layer.{i}`` BasicBlocks with
``bn1, relu1, conv1, bn2, relu2, conv2`` and ``convShortcut`` when C_in ≠ C_out, then ``bn1, relu, fc``), so
RobustBench and TRADES state dicts load as they are (``sub_block1=True`` adds TRADES' unused ``sub_block1``). The head
pools with ``adaptive_avg_pool2d(·, 1)``, which equals RobustBench's ``avg_pool2d(·, 8)`` on 32x32 images.

RoME on a convolution W (C_out × C_in × k × k) with K experts of rank r (Eq. 2 per output position p):

    o_p = (W * x)_p + Σ_k g_{p,k} (ΔW_k * x)_p,   ΔW_k = s · reshape(B_k A_k, C_out × C_in × k × k)

with A_k kaiming-uniform per expert and B_k = 0 at init (the model starts as W), in one of two factorisations
(``model.options.conv_lora``):

* ``loralib`` (the default; the paper's footnote 3 cites microsoft/LoRA's ``loralib/layers.py``, whose ``Conv2d``
  this follows): A_k ∈ R^{r·k × C_in·k}, B_k ∈ R^{C_out·k × r·k}, s = α/r (``conv_lora_alpha``, loralib's default
  α = 1). B_k A_k (C_out·k × C_in·k) is reshaped row-major to the kernel, so ΔW_k has rank ≤ r·k as that matrix, and
  r·k²·(C_in + C_out) parameters per expert. With per-position gates the experts cannot be merged into W as loralib
  merges its one, and building every ΔW_k for a conv costs K× the base conv; computed instead on the im2col patches
  (``F.unfold``, k²·C_in values per position: memory, not FLOPs), whose k chunks of C_in·k values each A_k maps to
  r·k values, then all B_k in one product: K·r·k²·(k·C_in + C_out) multiply-adds per position (WRN-28-10, K = 4,
  r = 16: 10.18 GMACs/image against the backbone's 5.24; im2col: 6.60; ΔW_k built: 33.06).
* ``im2col`` (runs before the option existed; older configs are read as it): A_k ∈ R^{r × C_in·k·k} acts on the
  im2col patch, B_k ∈ R^{C_out × r}, s = 1: ΔW_k has rank ≤ r as a C_out × C_in·k·k matrix, r·(C_in·k² + C_out)
  parameters per expert. Computed fused: one conv with all A_k stacked (K·r output channels, the base conv's
  stride/padding/dilation), the result multiplied per position by the gates repeated over r, then one 1×1 conv with
  all B_k (C_out × K·r); (B_k A_k) * x = B_k (A_k * x) channel-wise.

Dual-scale gates (Eq. 3-5), one gate vector per OUTPUT position p of the conv:

    u_p = softmax(MLP_local(x̃_p)),   x̃ = adaptive_avg_pool2d(x, (H', W'))  (x itself when H', W' = H, W)
    v   = softmax(MLP_global(mean_{all input positions} x)),   g_p = (1 − β(l)) u_p + β(l) v

MLP_local is Conv1x1 → GELU → Conv1x1 (``gate_hidden`` units; 0 = one Conv1x1), MLP_global the same as Linears.
Stride choice: a stride-2 conv's gates read the input averaged to the output map; for the even maps of a WideResNet
(32 → 16 → 8) adaptive pooling is exactly ``avg_pool2d(kernel=2, stride=2)``, and it also matches odd sizes.
Gates are recorded through :meth:`DualScaleGating.mix` (``models/dual_gate.py``, shared with the Transformers'
gates) in token layout (positions row-major): local (B, H'·W', K), global (B, K), fused (B, H'·W', K). Gating
variants are those of :class:`DualScaleGate` except ``dual-cls``.

Layer index: l = 1..L counts the BasicBlocks of block1..block3 in forward order (L = 3·(depth − 4)/6); both convs of
a BasicBlock share its β(l). Targets: a subset of ``conv1``/``conv2`` of every BasicBlock (never the stem conv or the
1×1 shortcuts); the Transformer default ``("qkv", "proj")`` is read as both convs. :func:`add_conv_experts` does this
for any network that lists its residual blocks (the ResNets of models/resnet.py use it too).

**DeepMind layout** (``DeepMindWideResNet``; ``wrn_94_16``, ``dm_wrn_*``): the WideResNet of Gowal et al. 2020
("Uncovering the limits of adversarial training") as RobustBench ships it (``DMWideResNet``), which is the architecture
of every RobustBench WRN-94-16 (Bartoldson et al. 2024, "Adversarial robustness limits via scaling-law and
human-alignment studies": depth 94, width 16, SiLU, 365,915,610 parameters with 10 classes). Same blocks as above, but
SiLU activations, TensorFlow 'SAME' padding of the first conv of a block (input padded by (1, 1, 1, 1) at stride 1 and
by (0, 1, 0, 1) at stride 2, conv with padding 0) and its own names (``init_conv``, ``layer.{g}.block.{i}`` with
``batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut``, then ``batchnorm, logits``), so RobustBench's state dicts load
(their ``mean``/``std`` buffers aside: here the classifier normalises). Experts go on ``conv_0``/``conv_1`` (read
from the ``conv1``/``conv2`` targets). Initialisation: as the other WideResNet (RobustBench's port keeps PyTorch's).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.dual_gate import DualScaleGating, layer_beta
from rome_bench.models.registry import MODELS
from rome_bench.models.rome import RomeOptions

CONV_TARGETS: tuple[str, ...] = ("conv1", "conv2")
TRANSFORMER_DEFAULT_TARGETS: frozenset[str] = frozenset({"qkv", "proj"})  # read as CONV_TARGETS for a WRN
CONV_GATINGS: tuple[str, ...] = ("none", "local", "global", "dual", "dual-inverted", "dual-learned")


class BasicBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out else
                             nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``num_layers`` BasicBlocks in ``.layer``; the first changes width and applies the stride."""

    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(num_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor with RobustBench's parameter names; ``add_rome_experts`` adds conv-LoRA experts."""

    def __init__(self, depth: int = 28, num_classes: int = 10, widen_factor: int = 10, drop_rate: float = 0.0,
                 sub_block1: bool = False, bias_last: bool = True) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n ≥ 1 (10, 16, 28, 34, 70, …); got {depth}")
        if widen_factor < 1:
            raise ConfigError(f"WideResNet widen_factor must be ≥ 1; got {widen_factor}")
        blocks_per_stage = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks_per_stage, channels[0], channels[1], 1, drop_rate)
        if sub_block1:  # present (and unused) in TRADES' WRN-34-10 checkpoints
            self.sub_block1 = NetworkBlock(blocks_per_stage, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(blocks_per_stage, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(blocks_per_stage, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes, bias=bias_last)
        self.num_channels = channels[3]
        he_init(self)

    def stages(self) -> list[tuple[str, NetworkBlock]]:
        """The NetworkBlocks of the forward pass (not TRADES' unused ``sub_block1``)."""
        return [("block1", self.block1), ("block2", self.block2), ("block3", self.block3)]

    def basic_blocks(self) -> list[tuple[str, BasicBlock]]:
        """All BasicBlocks in forward order with their module paths (``block2.layer.0``)."""
        return [(f"{stage_name}.layer.{i}", block) for stage_name, stage in self.stages()
                for i, block in enumerate(stage.layer)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)

    def add_rome_experts(self, config: RomeOptions) -> WideResNet:
        """Wrap conv1/conv2 (per ``config.targets``) of every BasicBlock in gated conv-LoRA experts, in place."""
        add_conv_experts(self.basic_blocks(), config, "WideResNet")
        return self


def he_init(model: nn.Module) -> None:
    """RobustBench's WideResNet init: conv N(0, 2/(kh·kw·C_out)), BN weight 1 / bias 0, Linear bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def add_conv_experts(blocks: list[tuple[str, nn.Module]], config: RomeOptions, architecture: str,
                     conv_names: dict[str, str] | None = None) -> None:
    """Wrap the two 3×3 convs of each residual block (per ``config.targets``) in gated conv-LoRA experts, in place.

    ``blocks``: (module path, block) in forward order; block l (1-based) gets β(l) of L = len(blocks).
    ``conv_names`` maps the targets ``conv1``/``conv2`` to the block's attribute names (default: the same).
    """
    if config.expert_type != "lora":
        raise ConfigError(f"expert_type '{config.expert_type}': {architecture} supports lora experts only")
    if config.gating == "dual-cls":
        raise ConfigError(f"gating dual-cls needs a CLS token; a {architecture} has none: use --gating dual")
    names = conv_names or {target: target for target in CONV_TARGETS}
    targets = conv_targets(config.targets, architecture)
    for layer, (path, block) in enumerate(blocks, start=1):
        beta = layer_beta(config.gating, layer, len(blocks), config.beta_s, config.beta_b)
        for target in targets:
            _wrap_conv(block, names[target], f"{path}.{names[target]}", config, beta, layer, architecture)


def conv_targets(targets: tuple[str, ...], architecture: str = "WideResNet") -> tuple[str, ...]:
    """A CNN's expert targets: a subset of conv1/conv2, with the Transformer default (qkv, proj) read as both."""
    if set(targets) == TRANSFORMER_DEFAULT_TARGETS:
        return CONV_TARGETS
    unknown = [target for target in targets if target not in CONV_TARGETS]
    if unknown or not targets:
        raise ConfigError(f"{architecture} experts go on a subset of {','.join(CONV_TARGETS)}; got targets "
                          f"'{','.join(targets)}'")
    return tuple(target for target in CONV_TARGETS if target in targets)


def _wrap_conv(block: nn.Module, target: str, name: str, config: RomeOptions, beta: float, layer: int,
               architecture: str) -> None:
    base = getattr(block, target)
    if not isinstance(base, nn.Conv2d):
        raise ConfigError(f"{name} is {type(base).__name__}, not nn.Conv2d: this {architecture} already has experts")
    gate = ConvDualScaleGate(base.in_channels, config.num_experts, config.gate_hidden, beta, layer, name,
                             config.gating, config.gate_projection_dim, config.div_projection == "trainable")
    setattr(block, target, ConvLoRAExpertMixture(base, config.num_experts, config.rank, gate, config.conv_lora,
                                                 config.conv_lora_alpha))


class ConvDualScaleGate(DualScaleGating):
    """Per-output-position local gate and global-average-pool gate of a convolution (Eq. 3-5), or an ablated variant.

    ``forward(x, out_size)`` takes the conv's input (B, C_in, H, W) and its output size (H', W') and returns the gates
    to use as maps (B, K, H', W'); the recorded gates are in token layout (see the module docstring).
    """

    def __init__(self, dim_in: int, num_experts: int, hidden: int, beta: float, layer: int, name: str,
                 gating: str = "dual", projection_dim: int = 0, train_projection: bool = True) -> None:
        if gating not in CONV_GATINGS:
            hint = ": a CNN has no CLS token" if gating == "dual-cls" else ""
            raise ConfigError(f"gating '{gating}' is not available for conv experts{hint}; choose one of "
                              f"{', '.join(CONV_GATINGS)}")
        super().__init__(num_experts, layer, name, gating)
        self.local_mlp = _gate_mlp(dim_in, hidden, num_experts, conv=True) if self.uses_local else None
        self.global_mlp = _gate_mlp(dim_in, hidden, num_experts, conv=False) if self.uses_global else None
        self.init_beta(beta, projection_dim, train_projection)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        local = self.local_gate(x, out_size) if self.uses_local else None
        global_ = self.global_gate(x) if self.uses_global else None
        return _as_maps(self.mix(local, global_, x.shape[0], out_size[0] * out_size[1], x), out_size)

    def local_gate(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """u (B, H'·W', K) from the input averaged to the output map."""
        pooled = x if tuple(x.shape[-2:]) == tuple(out_size) else F.adaptive_avg_pool2d(x, out_size)
        logits = self.local_mlp(pooled)  # type: ignore[misc]
        return logits.flatten(2).transpose(1, 2).softmax(dim=-1)

    def global_gate(self, x: torch.Tensor) -> torch.Tensor:
        """v (B, K) from the global average pool of the input."""
        return self.global_mlp(x.mean(dim=(2, 3))).softmax(dim=-1)  # type: ignore[misc]

def _gate_mlp(dim_in: int, hidden: int, num_experts: int, conv: bool) -> nn.Module:
    """Conv1x1 (or Linear) → GELU → Conv1x1 (or Linear); ``hidden`` = 0 gives a single layer."""
    def layer(n_in: int, n_out: int) -> nn.Module:
        return nn.Conv2d(n_in, n_out, kernel_size=1) if conv else nn.Linear(n_in, n_out)

    if not hidden:
        return layer(dim_in, num_experts)
    return nn.Sequential(layer(dim_in, hidden), nn.GELU(), layer(hidden, num_experts))


def _as_maps(tokens: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """(B, H'·W', K) → (B, K, H', W')."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *out_size)


class ConvLoRAExpertMixture(nn.Module):
    """A Conv2d plus K gated conv-LoRA experts (Eq. 2 per output position) in the ``layout`` of the module docstring
    (``loralib`` or ``im2col``); B = 0 at init, so it starts as the base."""

    def __init__(self, base: nn.Conv2d, num_experts: int, rank: int, gate: ConvDualScaleGate,
                 layout: str = "im2col", alpha: float = 1.0) -> None:
        super().__init__()
        if base.groups != 1:
            raise ConfigError(f"conv-LoRA experts need groups = 1; this conv has groups = {base.groups}")
        if base.padding_mode != "zeros":
            raise ConfigError(f"conv-LoRA experts need padding_mode 'zeros'; this conv has '{base.padding_mode}'")
        kernel_h, kernel_w = base.kernel_size
        if layout == "loralib" and kernel_h != kernel_w:
            raise ConfigError(f"loralib's ConvLoRA needs a square kernel; this conv's is {kernel_h}x{kernel_w}: "
                              f"set model.options.conv_lora=im2col")
        self.base = base
        self.num_experts = num_experts
        self.rank = rank
        self.layout = layout
        side = kernel_h if layout == "loralib" else 1  # loralib: r·k rows of A per expert, C_in·k columns
        self.inner = rank * side
        self.scale = alpha / rank if layout == "loralib" else 1.0
        columns = base.in_channels * kernel_h * kernel_w // side  # loralib: C_in·k; im2col: C_in·kh·kw
        self.lora_A = nn.Parameter(torch.empty(num_experts * self.inner, columns))
        self.lora_B = nn.Parameter(torch.zeros(base.out_channels * side, num_experts * self.inner))
        for expert_A in self.lora_A.data.split(self.inner):
            nn.init.kaiming_uniform_(expert_A, a=math.sqrt(5))
        self.gate = gate

    def down_kernel(self) -> torch.Tensor:
        """im2col layout: all A_k as one conv kernel (K·r, C_in, kh, kw)."""
        return self.lora_A.view(len(self.lora_A), self.base.in_channels, *self.base.kernel_size)

    def delta_weight(self, expert: int) -> torch.Tensor:
        """ΔW_k = s · B_k A_k reshaped to the base kernel (C_out, C_in, kh, kw)."""
        rows = slice(expert * self.inner, (expert + 1) * self.inner)
        return self.scale * (self.lora_B[:, rows] @ self.lora_A[rows]).view_as(self.base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "loralib":
            return self._loralib(x)
        base = self.base
        down = F.conv2d(x, self.down_kernel(), None, base.stride, base.padding, base.dilation)  # (B, K·r, H', W')
        batch, _, height, width = down.shape
        gates = self.gate(x, (height, width))  # (B, K, H', W')
        mixed = down.view(batch, self.num_experts, self.rank, height, width) * gates.unsqueeze(2)
        up = F.conv2d(mixed.view(batch, -1, height, width), self.lora_B[:, :, None, None])
        return base(x) + up

    def _loralib(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_k g_k (ΔW_k * x) without building ΔW_k: output o's kernel, flattened like an im2col patch, is rows
        o·k … o·k + k − 1 of B_k A_k side by side, so (ΔW_k * x)_o = Σ_q B_k[o·k + q] · (A_k · patch chunk q), where
        chunk q is the q-th of the patch's k pieces of C_in·k values."""
        base, side, experts = self.base, self.base.kernel_size[0], self.num_experts
        output = base(x)
        batch, _, height, width = output.shape
        patches = F.unfold(x, base.kernel_size, base.dilation, base.padding, base.stride)  # (B, C_in·k·k, H'·W')
        chunks = patches.view(batch, side, -1, height * width)  # (B, k, C_in·k, H'·W')
        down = torch.einsum("jc,bqcl->bqjl", self.lora_A, chunks)  # (B, k, K·r·k, H'·W'): every A_k, every chunk
        gates = self.gate(x, (height, width)).flatten(2)  # (B, K, H'·W')
        mixed = down.view(batch, side, experts, self.inner, -1) * gates.view(batch, 1, experts, 1, -1)
        up = torch.einsum("oqm,bqml->bol", self.lora_B.view(base.out_channels, side, -1), mixed.flatten(2, 3))
        return output + self.scale * up.view_as(output)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rank={self.rank}, layout={self.layout}, scale={self.scale:g}"


ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}
DM_CONV_NAMES: dict[str, str] = {"conv1": "conv_0", "conv2": "conv_1"}  # expert targets -> DeepMind block names


class DeepMindBlock(nn.Module):
    """Pre-activation wide block, DeepMind layout: act(BN) → SAME-padded conv3x3(stride) → act(BN) → conv3x3 + shortcut.

    The shortcut is the raw input when C_in = C_out, else a 1×1 conv (stride) of the activated input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"DeepMind WideResNet blocks take stride 1 or 2; got {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = (None if in_planes == out_planes else
                         nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False))
        self.same_padding = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)  # TensorFlow 'SAME' for a 3×3 kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(F.pad(activated, self.same_padding))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return (x if self.shortcut is None else self.shortcut(activated)) + out


class DeepMindBlockGroup(nn.Module):
    """``num_blocks`` DeepMindBlocks in ``.block``; the first changes width and applies the stride."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            DeepMindBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
            for i in range(num_blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DeepMindWideResNet(nn.Module):
    """WRN-depth-widen_factor in RobustBench's ``DMWideResNet`` layout and names (see the module docstring)."""

    def __init__(self, depth: int = 28, num_classes: int = 10, widen_factor: int = 10,
                 activation: str = "silu") -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n ≥ 1 (10, 16, 28, 34, 70, 94, …); got {depth}")
        if widen_factor < 1:
            raise ConfigError(f"WideResNet widen_factor must be ≥ 1; got {widen_factor}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown WideResNet activation '{activation}'; choose one of {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        blocks_per_group = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.init_conv = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(*[
            DeepMindBlockGroup(blocks_per_group, channels[g], channels[g + 1], 1 if g == 0 else 2, act)
            for g in range(3)
        ])
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = act()
        self.logits = nn.Linear(channels[3], num_classes)
        self.num_channels = channels[3]
        he_init(self)

    def basic_blocks(self) -> list[tuple[str, DeepMindBlock]]:
        """All blocks in forward order with their module paths (``layer.1.block.0``)."""
        return [(f"layer.{g}.block.{i}", block) for g, group in enumerate(self.layer)
                for i, block in enumerate(group.block)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.batchnorm(self.layer(self.init_conv(x))))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def add_rome_experts(self, config: RomeOptions) -> DeepMindWideResNet:
        """Wrap conv_0/conv_1 (targets conv1/conv2) of every block in gated conv-LoRA experts, in place."""
        add_conv_experts(self.basic_blocks(), config, "WideResNet", DM_CONV_NAMES)
        return self


WRN_SIZES: dict[str, dict[str, int]] = {
    "wrn_micro": {"depth": 10, "widen_factor": 1},  # for tests
    "wrn_smoke": {"depth": 16, "widen_factor": 2},
    "wrn_28_10": {"depth": 28, "widen_factor": 10},
    "wrn_34_10": {"depth": 34, "widen_factor": 10},
    "wrn_70_16": {"depth": 70, "widen_factor": 16},
}
WRN_OVERRIDES: frozenset[str] = frozenset({"depth", "widen_factor", "drop_rate", "sub_block1", "bias_last"})
# RobustBench's DMWideResNet layout (SiLU): its WRN-94-16 (Bartoldson et al. 2024; paper Table 3) and the
# Gowal/Rebuffi/Wang WRN-28-10 and WRN-70-16 checkpoints
DM_WRN_SIZES: dict[str, dict[str, int]] = {
    "dm_wrn_micro": {"depth": 10, "widen_factor": 1},  # for tests
    "dm_wrn_28_10": {"depth": 28, "widen_factor": 10},
    "dm_wrn_70_16": {"depth": 70, "widen_factor": 16},
    "wrn_94_16": {"depth": 94, "widen_factor": 16},
}
DM_WRN_OVERRIDES: frozenset[str] = frozenset({"depth", "widen_factor", "activation"})


def _check_overrides(overrides: dict[str, object], allowed: frozenset[str]) -> None:
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"unknown WideResNet option(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(sorted(allowed))}")


def _make_wrn_builder(size: dict[str, int]) -> Callable[..., WideResNet]:
    def build(num_classes: int, image_size: int, patch_size: int | None = None, **overrides: float) -> WideResNet:
        """A WideResNet (any image size: the head pools adaptively); ``patch_size`` is ignored."""
        _check_overrides(overrides, WRN_OVERRIDES)
        return WideResNet(num_classes=num_classes, **{**size, **overrides})  # type: ignore[arg-type]

    return build


def _make_dm_wrn_builder(size: dict[str, int]) -> Callable[..., DeepMindWideResNet]:
    def build(num_classes: int, image_size: int, patch_size: int | None = None,
              **overrides: int | str) -> DeepMindWideResNet:
        """A DeepMind-layout WideResNet (any image size: the head pools adaptively); ``patch_size`` is ignored."""
        _check_overrides(overrides, DM_WRN_OVERRIDES)
        return DeepMindWideResNet(num_classes=num_classes, **{**size, **overrides})  # type: ignore[arg-type]

    return build


for _name, _size in WRN_SIZES.items():
    MODELS.add(_name, _make_wrn_builder(_size), family="wrn", **_size)
for _name, _size in DM_WRN_SIZES.items():
    MODELS.add(_name, _make_dm_wrn_builder(_size), family="wrn", layout="deepmind", activation="silu", **_size)
