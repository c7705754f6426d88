"""Sparse top-k FFN experts (``moe-ffn`` family, ``--experts ffn --top-k``): real dispatch, exact mixture, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rome_bench.config import ModelConfig, apply_override
from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.models import MODELS, build_family, create_model, gates
from rome_bench.models.rome import FFNExpertMixture, RomeOptions, add_rome_experts
from rome_bench.presets import preset


def ffn_model(top_k: int, experts: int = 4):
    torch.manual_seed(0)
    backbone = MODELS.get("vit_micro")(num_classes=10, image_size=32, patch_size=8)
    model = add_rome_experts(backbone, RomeOptions(expert_type="ffn", targets=("mlp",), num_experts=experts,
                                                  top_k=top_k, gating="local"))
    for mixture in model.modules():  # experts start as identical copies: make them differ
        if isinstance(mixture, FFNExpertMixture):
            for parameter in mixture.parameters():
                parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model


def mixtures(model) -> list[FFNExpertMixture]:
    return [module for module in model.modules() if isinstance(module, FFNExpertMixture)]


def test_sparse_dispatch_equals_the_renormalised_top_k_mixture_of_every_expert():
    model = ffn_model(top_k=2)
    mixture = mixtures(model)[0]
    tokens = torch.randn(3, 5, mixture.fc1_weight.shape[1])
    output = mixture(tokens)
    gate = mixture.gate.last
    weights = gate.fused.reshape(-1, 4)
    mask = gate.dispatch.reshape(-1, 4)
    renormalised = weights * mask / (weights * mask).sum(-1, keepdim=True)
    flat = tokens.reshape(-1, tokens.shape[-1])
    every_expert = torch.stack([mixture._expert(e, flat) for e in range(4)], dim=1)  # (N, K, d)
    expected = (renormalised.unsqueeze(-1) * every_expert).sum(1)
    assert torch.allclose(output.reshape(-1, output.shape[-1]), expected, atol=1e-5)
    assert torch.equal(mask.sum(-1), torch.full((len(flat),), 2.0))
    assert torch.equal(mask, F.one_hot(weights.topk(2, -1).indices, 4).sum(1).float())


def test_each_expert_runs_only_on_the_tokens_routed_to_it():
    model = ffn_model(top_k=1)
    mixture = mixtures(model)[0]
    seen: list[int] = []
    original = mixture._expert
    mixture._expert = lambda expert, inputs: (seen.append(len(inputs)), original(expert, inputs))[1]  # type: ignore
    tokens = torch.randn(2, 7, mixture.fc1_weight.shape[1])
    mixture(tokens)
    routed = mixture.gate.last.dispatch.reshape(-1, 4).sum(0)
    assert sum(seen) == 14 and sorted(seen) == sorted(int(n) for n in routed if n > 0)


def test_dense_and_top_k_of_all_experts_are_the_same_model():
    dense, all_k = ffn_model(top_k=0), ffn_model(top_k=4)
    images = torch.rand(2, 3, 32, 32)
    assert mixtures(all_k)[0].top_k == 0 and torch.allclose(dense(images), all_k(images), atol=1e-6)


def test_the_router_gets_gradients_through_the_chosen_experts_weights():
    model = ffn_model(top_k=2)
    model(torch.rand(2, 3, 32, 32)).logsumexp(1).sum().backward()
    router = mixtures(model)[0].gate.local_in.weight
    assert router.grad is not None and router.grad.abs().sum() > 0


def test_sparse_routing_costs_fewer_flops_than_dense():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.rand(2, 3, 32, 32))
        return counter.get_total_flops()

    assert flops(ffn_model(top_k=2)) < 0.8 * flops(ffn_model(top_k=0))


def test_top_k_is_checked_in_one_line():
    with pytest.raises(ConfigError, match="applies to ffn experts"):
        build_family(apply_override(preset("smoke"), "model.options.top_k=2").model)
    with pytest.raises(ConfigError, match="top_k must be between"):
        build_family(ModelConfig(family="moe-ffn", options={"top_k": 9}))


def test_the_moe_ffn_family_is_top_2_of_4_with_a_balancing_loss():
    family = build_family(ModelConfig(family="moe-ffn"))
    model = create_model(ModelConfig(family="moe-ffn", backbone="vit_micro"), load_dataset("synthetic", "test").info)
    model(torch.rand(2, 3, 32, 32))
    assert all(gate.dispatch is not None and bool((gate.dispatch.sum(-1) == 2).all())
               for gate in gates(model))
    assert family.routing(ModelConfig()).loss == "load-balance"
