"""Dual-scale gating (paper Eq. 3-5) once, for every kind of expert layer: the β(l) schedule, the gating variants
the ablations compare (Table 4), and how the gates are recorded.

    u = softmax(MLP_local(·)) per token,  v = softmax(MLP_global(summary)) per image,  g = (1 − β(l)) u + β(l) v

:class:`DualScaleGating` owns what does not depend on where the gates read their input: the variant switches
(``none``: uniform 1/K; ``local``: β = 0; ``global``: β = 1; ``dual``: fixed β(l); ``dual-inverted``: β(L + 1 − l);
``dual-learned``: a learnable β, σ of a logit initialised at β(l); ``dual-cls``: the token gate's CLS summary), the
mixing, and the record (local, global and fused gates; with one branch only, the missing one is recorded as the other's
summary, so routing losses always find both) and, for ``div_projection`` per-layer (frozen: L_div's gradient does not
reach it) or trainable, the layer's own K → K' projection of its global gate (Eq. 7): an ``nn.Linear`` off the routing
path, initialised from its own seed, whose output v·Pᵀ + b per image is recorded as ``projected`` in training mode only
(inference never computes it).
Its subclasses compute u and v from their layer's input:
:class:`DualScaleGate` here for the Transformers' linears (tokens), ``ConvDualScaleGate`` in ``models/wrn.py`` for
convolutions (output positions).
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.models.gates import DualScaleGateOutput, ExpertGate

PROJECTION_SEED = 1234  # the per-layer L_div projections' (training/diversification.py's fixed one uses it too)


def beta_schedule(layer: int, num_layers: int, s: float = 4.0, b: float = 2.0) -> float:
    """β(l) = σ(s·(1 − l/L) − b): the global gate's weight in layer l (1-based); larger in early layers."""
    return 1.0 / (1.0 + math.exp(-(s * (1.0 - layer / num_layers) - b)))


def layer_beta(gating: str, layer: int, num_layers: int, s: float, b: float) -> float:
    """The fixed (or initial) β of a gated layer under a gating variant."""
    if gating in ("none", "local"):
        return 0.0
    if gating == "global":
        return 1.0
    if gating == "dual-inverted":
        return beta_schedule(num_layers + 1 - layer, num_layers, s, b)
    return beta_schedule(layer, num_layers, s, b)


class DualScaleGating(ExpertGate):
    """The β mixing of a local and a global gate, its ablated variants and the record, whatever the layer.

    ``group`` rows of the layer's input belong to one image (Swin's windows; 1 elsewhere): the global gate is per
    image, and the gates are recorded in image layout (the windows of one image side by side).
    """

    def __init__(self, num_experts: int, layer: int, name: str, gating: str, group: int = 1) -> None:
        super().__init__(num_experts, layer, name)
        self.gating = gating
        self.group = group
        self.uses_local = gating not in ("none", "global")
        self.uses_global = gating not in ("none", "local")

    def init_beta(self, beta: float, projection_dim: int = 0, train_projection: bool = True) -> None:
        """β of this layer: fixed, or for ``dual-learned`` a parameter σ(logit) starting at ``beta``; then the K → K'
        projection of L_div (``projection_dim`` = K', 0 = none; ``train_projection`` False: L_div's gradient does
        not reach it). Subclasses call it after creating their branches (the parameters' order in the state dict)."""
        self.beta_logit = nn.Parameter(torch.tensor(math.log(beta / (1 - beta)))) if self.gating == "dual-learned" \
            else None
        self.fixed_beta = beta
        self.div_projection = self._projection(projection_dim) if projection_dim else None
        self.train_projection = train_projection
        if self.div_projection is not None and not train_projection:
            self.div_projection.requires_grad_(False)  # a frozen parameter: counted and saved, never trained

    def _projection(self, projection_dim: int) -> nn.Linear:
        """nn.Linear(K, K') initialised as nn.Linear is, from its own seed (PROJECTION_SEED and the layer's name), so
        the rest of the model draws the same initial weights with or without it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PROJECTION_SEED + zlib.crc32(self.name.encode()))
            return nn.Linear(self.num_experts, projection_dim)

    def project(self, global_: torch.Tensor) -> torch.Tensor | None:
        """v·Pᵀ + b (images, K') for L_div in a training-mode forward; None without a projection or in eval mode."""
        if self.div_projection is None or not self.training:
            return None
        weight: torch.Tensor = self.div_projection.weight
        bias: torch.Tensor = self.div_projection.bias
        if not self.train_projection:  # detached as well as frozen: L_div's gradient never reaches it
            weight, bias = weight.detach(), bias.detach()
        return F.linear(global_, weight, bias)

    @property
    def beta(self) -> float | torch.Tensor:
        """β of this layer: a float, or a 0-d tensor for ``dual-learned``."""
        return self.fixed_beta if self.beta_logit is None else torch.sigmoid(self.beta_logit)

    def mix(self, local: torch.Tensor | None, global_: torch.Tensor | None, rows: int, tokens: int,
            like: torch.Tensor) -> torch.Tensor:
        """The gates to use (rows, tokens, K) from u (rows, tokens, K) and v (images, K), either None when its
        branch is off; records local, global and fused gates. ``like`` gives the dtype and device of uniform gates."""
        if local is None and global_ is None:
            uniform = like.new_full((rows, tokens, self.num_experts), 1.0 / self.num_experts)
            return self._record(uniform, uniform[:, 0], uniform)
        if local is None:
            everywhere = self._per_row(global_).unsqueeze(1).expand(rows, tokens, -1)  # type: ignore[arg-type]
            return self._record(everywhere, global_, everywhere)  # type: ignore[arg-type]
        if global_ is None:
            return self._record(local, self._image_tokens(local).mean(dim=1), local)
        fused = torch.lerp(local, self._per_row(global_).unsqueeze(1), self.beta)  # (1 − β)·u + β·v
        return self._record(local, global_, fused)

    def _record(self, local: torch.Tensor, global_: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """Apply the inference variant, record the gates in image layout, return the per-row gates to use."""
        fused = self.varied(fused)
        projected = self.project(global_)
        self.record(DualScaleGateOutput(self._image_tokens(fused), self.layer, self.name,
                                        local=self._image_tokens(local), global_=global_, projected=projected))
        return fused

    def _image_tokens(self, values: torch.Tensor) -> torch.Tensor:
        """(images·group, T, …) → (images, group·T, …): the windows of one image side by side."""
        if self.group == 1:
            return values
        if values.shape[0] % self.group:
            raise RuntimeError(f"gate got {values.shape[0]} rows, not a multiple of its {self.group} windows per "
                               f"image")
        return values.reshape(values.shape[0] // self.group, self.group * values.shape[1], *values.shape[2:])

    def _per_row(self, global_: torch.Tensor) -> torch.Tensor:
        """(images, K) → (images·group, K): each window row gets its image's global gate."""
        return global_ if self.group == 1 else global_.repeat_interleave(self.group, dim=0)

    def extra_repr(self) -> str:
        beta = self.beta if isinstance(self.beta, float) else float(self.beta.detach())
        group = f", group={self.group}" if self.group != 1 else ""
        return f"layer={self.layer}, gating={self.gating}, beta={beta:.4f}{group}"


class DualScaleGate(DualScaleGating):
    """Per-token local gate and mean-token global gate of a Transformer's linear layer (Eq. 3-5).

    MLP_local and MLP_global are Linear → GELU → Linear (``hidden`` units; 0 = a single Linear). Their first
    layers are exposed as one stacked matrix so that the expert layer can compute them in the same matmul as the
    experts' A; the global branch averages the first layer's output over tokens, which equals applying it to the
    token mean because the layer is affine (``dual-cls``: the CLS token's instead of the mean).
    """

    def __init__(self, dim_in: int, num_experts: int, hidden: int, beta: float, layer: int, name: str,
                 gating: str = "dual", group: int = 1, projection_dim: int = 0, train_projection: bool = True) -> None:
        super().__init__(num_experts, layer, name, gating, group)
        self.width = hidden or num_experts
        self.local_in = nn.Linear(dim_in, self.width) if self.uses_local else None
        self.global_in = nn.Linear(dim_in, self.width) if self.uses_global else None
        self.local_out = nn.Linear(hidden, num_experts) if hidden and self.uses_local else None
        self.global_out = nn.Linear(hidden, num_experts) if hidden and self.uses_global else None
        self.init_beta(beta, projection_dim, train_projection)

    def first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked weight (w_local + w_global × d_in) and bias of the first layers in use (may be empty)."""
        layers = [layer for layer in (self.local_in, self.global_in) if layer is not None]
        if not layers:
            return torch.empty(0, 0), torch.empty(0)
        return torch.cat([layer.weight for layer in layers]), torch.cat([layer.bias for layer in layers])

    @property
    def first_width(self) -> int:
        return self.width * (int(self.uses_local) + int(self.uses_global))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.first_width == 0:
            return self.from_first_layer(hidden_states[..., :0])
        return self.from_first_layer(F.linear(hidden_states, *self.first_layer()))

    def from_first_layer(self, first: torch.Tensor) -> torch.Tensor:
        """Gates from the first layers' output (B, T, w); records local, global and fused gates."""
        rows, tokens = first.shape[:2]
        if not self.uses_local and not self.uses_global:
            return self.mix(None, None, rows, tokens, first)
        parts = first.split(self.width, dim=-1)
        # contiguous: GELU on a strided slice is several times slower on CPU (bench/moe_costs.py --profile)
        local = _second_layer(parts[0].contiguous(), self.local_out).softmax(dim=-1) if self.uses_local else None
        global_ = self._global_gate(parts[-1]) if self.uses_global else None
        return self.mix(local, global_, rows, tokens, first)

    def _global_gate(self, global_first: torch.Tensor) -> torch.Tensor:
        """v (images, K) from the global first layer's per-token output (rows, T, w)."""
        cls = self.gating == "dual-cls"
        summary = global_first[:, 0] if cls else self._image_tokens(global_first).mean(dim=1)
        return _second_layer(summary, self.global_out).softmax(dim=-1)


def _second_layer(first: torch.Tensor, layer: nn.Linear | None) -> torch.Tensor:
    return first if layer is None else layer(F.gelu(first))
