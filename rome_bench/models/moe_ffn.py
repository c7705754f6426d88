"""``moe-ffn``: the conventional mixture of FFN experts the RoME paper compares with (Table 6, "MoE (FFN)" [56]).

Every Transformer block's MLP becomes K FFN experts (each upcycled from the MLP, so the model starts equal to its
backbone), routed per token by a learned linear router (softmax over K, RoME's ``local`` gate without a global
branch) with sparse top-k dispatch: each token runs only its k largest-gated experts, their outputs weighted by the
gates renormalised over the k (``models.rome.FFNExpertMixture``). Defaults follow the paper's Table 6 row, whose
1.66× FLOPs of RANDOM match top-2 of 4 experts: K = 4, k = 2, and the load-balancing loss (Shazeer et al. 2017;
λ = 0.5) that keeps sparse routers from collapsing. ``top_k = 0`` computes all K experts densely (soft routing).

The same experts are reachable on the ``rome`` family with ``--experts ffn --top-k 2``; this family fixes the
conventional choices so that a leaderboard row named ``moe-ffn`` means one architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rome_bench.config import ModelConfig
from rome_bench.errors import ConfigError
from rome_bench.models.classifier import ImageClassifier
from rome_bench.models.family import ModelFamily, RoutingChoice, build_backbone, register_family
from rome_bench.models.rome import RomeOptions, add_rome_experts

if TYPE_CHECKING:
    from rome_bench.data import DatasetInfo


@dataclass(frozen=True)
class MoEFFNOptions:
    num_experts: int = 4
    top_k: int = 2  # experts per token; 0 = all K (dense)
    balance_weight: float = 0.5  # λ of the load-balancing loss (0 = none)

    def check(self) -> None:
        if not 2 <= self.num_experts <= 64:
            raise ConfigError(f"model.options.num_experts must be between 2 and 64 (got {self.num_experts})")
        if not 0 <= self.top_k <= self.num_experts:
            raise ConfigError(f"model.options.top_k must be between 0 (dense) and num_experts = {self.num_experts} "
                              f"(got {self.top_k})")
        if self.balance_weight < 0:
            raise ConfigError(f"model.options.balance_weight must be >= 0 (got {self.balance_weight})")


@register_family("moe-ffn", has_experts=True,
                 citation="Shazeer et al., ICLR 2017 (sparsely-gated MoE); RoME paper Table 6, MoE (FFN)")
class MoEFFNFamily(ModelFamily):
    """K upcycled FFN experts per block, a per-token router, sparse top-k dispatch (default top-2 of 4)."""

    Options = MoEFFNOptions
    options: MoEFFNOptions

    def expert_options(self) -> RomeOptions:
        """The expert machinery's settings this family fixes (FFN experts, per-token linear router, top-k)."""
        return RomeOptions(expert_type="ffn", targets=("mlp",), num_experts=self.options.num_experts,
                          top_k=self.options.top_k, gating="local", gate_hidden=0, routing_loss="load-balance",
                          routing_weight=self.options.balance_weight)

    def build(self, config: ModelConfig, info: DatasetInfo) -> ImageClassifier:
        backbone = add_rome_experts(build_backbone(config, info), self.expert_options())
        return ImageClassifier(backbone, info.mean, info.std)

    def routing(self, config: ModelConfig) -> RoutingChoice | None:
        if self.options.balance_weight == 0:
            return None
        return RoutingChoice("load-balance", self.options.balance_weight)
