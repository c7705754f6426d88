import math

import pytest
import torch
import torch.nn.functional as F

from rome_bench.models import MODELS, ImageClassifier
from rome_bench.models import gates as gate_outputs
from rome_bench.models.dual_gate import beta_schedule
from rome_bench.models.rome import LoRAExpertMixture, RomeOptions, add_rome_experts


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return MODELS.get("vit_smoke")(num_classes=10, image_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2)


def rome_vit(config: RomeOptions | None = None):
    return add_rome_experts(tiny_vit(), config or RomeOptions(num_experts=4, rank=2, gate_hidden=4))


def test_rome_with_zero_B_equals_the_backbone_exactly():
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(tiny_vit()(images), rome_vit()(images))


def test_rome_with_nonzero_B_differs_from_the_backbone():
    model = rome_vit()
    for module in model.modules():
        if isinstance(module, LoRAExpertMixture):
            torch.nn.init.normal_(module.lora_B, std=0.1)
    images = torch.rand(4, 3, 32, 32)
    assert not torch.allclose(tiny_vit()(images), model(images))


def test_experts_wrap_qkv_and_proj_of_every_block():
    model = rome_vit()
    for block in model.blocks:
        assert isinstance(block.attn.qkv, LoRAExpertMixture)
        assert isinstance(block.attn.proj, LoRAExpertMixture)
    only_qkv = rome_vit(RomeOptions(rank=2, gate_hidden=4, targets=("qkv",)))
    assert not isinstance(only_qkv.blocks[0].attn.proj, LoRAExpertMixture)


def test_gates_sum_to_one_per_token_and_have_the_documented_shapes():
    model = ImageClassifier(rome_vit(), (0.5,) * 3, (0.25,) * 3)
    model(torch.rand(5, 3, 32, 32))
    gates = gate_outputs(model)
    assert gate_outputs(ImageClassifier(tiny_vit(), (0.5,) * 3, (0.25,) * 3)) == []
    model = model.backbone
    assert len(gates) == 2 * len(model.blocks)
    tokens = 1 + (32 // 4) ** 2
    for gate in gates:
        assert gate.local.shape == gate.fused.shape == (5, tokens, 4) and gate.global_.shape == (5, 4)
        for probabilities in (gate.local, gate.fused):
            assert torch.allclose(probabilities.sum(-1), torch.ones(5, tokens), atol=1e-6)
            assert (probabilities >= 0).all()
        assert torch.allclose(gate.global_.sum(-1), torch.ones(5), atol=1e-6)


@pytest.mark.parametrize("layers,s,b", [(12, 4.0, 2.0), (4, 4.0, 2.0), (6, 8.0, 1.0)])
def test_beta_matches_the_formula(layers, s, b):
    for layer in range(1, layers + 1):
        expected = 1 / (1 + math.exp(-(s * (1 - layer / layers) - b)))
        assert beta_schedule(layer, layers, s, b) == pytest.approx(expected, rel=1e-12)
    assert beta_schedule(1, layers, s, b) > beta_schedule(layers, layers, s, b)  # global weighs more early


def test_fused_gate_is_the_beta_mixture_and_used_by_each_layer():
    model = rome_vit()
    model(torch.rand(3, 3, 32, 32))
    depth = len(model.blocks)
    for gate in gate_outputs(model):
        beta = beta_schedule(gate.layer, depth, 4.0, 2.0)
        expected = (1 - beta) * gate.local + beta * gate.global_.unsqueeze(1)
        assert torch.allclose(gate.fused, expected, atol=1e-7)


def test_fused_expert_computation_equals_the_per_expert_sum():
    """Eq. 2 term by term: W h + Σ_k g_k B_k A_k h."""
    model = rome_vit()
    layer = model.blocks[0].attn.qkv
    torch.nn.init.normal_(layer.lora_B, std=0.1)
    hidden = torch.randn(2, 7, 32)
    output = layer(hidden)
    gates = layer.gate.last.fused
    expected = layer.base(hidden)
    for k in range(layer.num_experts):
        A = layer.lora_A[k * layer.rank:(k + 1) * layer.rank]
        B = layer.lora_B[:, k * layer.rank:(k + 1) * layer.rank]
        expected = expected + gates[..., k:k + 1] * F.linear(F.linear(hidden, A), B)
    assert torch.allclose(output, expected, atol=1e-5)


def test_smoke_rome_adds_at_most_5_percent_parameters():
    from rome_bench.presets import preset

    config = preset("smoke")
    torch.manual_seed(0)
    plain = MODELS.get("vit_smoke")(num_classes=10, image_size=32, patch_size=4)
    torch.manual_seed(0)
    backbone = MODELS.get("vit_smoke")(num_classes=10, image_size=32, patch_size=4)
    rome = add_rome_experts(backbone, RomeOptions(**config.model.options))
    forward = [p for name, p in rome.named_parameters() if "div_projection" not in name]  # L_div's: no forward
    ratio = sum(p.numel() for p in forward) / sum(p.numel() for p in plain.parameters())
    assert 1.0 < ratio <= 1.05


def test_frozen_inference_reuses_the_joined_weight_until_a_weight_changes():
    model = rome_vit()
    mixtures = [m for m in model.modules() if isinstance(m, LoRAExpertMixture)]
    for module in mixtures:
        torch.nn.init.normal_(module.lora_B, std=0.1)
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        trainable = model(images)  # trainable weights: concatenated afresh every call, nothing cached
    assert all(getattr(m, "_joined_cache", None) is None for m in mixtures)
    model.requires_grad_(False)  # frozen, as evaluation loads it
    with torch.no_grad():
        first = model(images)
        kept = [m._joined_cache[1] for m in mixtures]
        assert torch.equal(model(images), first)
        assert all(m._joined_cache[1] is k for m, k in zip(mixtures, kept, strict=True))
        mixtures[0].lora_B.mul_(3)  # changed in place
        mixtures[1].base.weight = torch.nn.Parameter(mixtures[1].base.weight * 0.5, requires_grad=False)  # replaced
        changed = model(images)
    assert torch.allclose(trainable, first, atol=1e-6)
    model.requires_grad_(True)
    assert torch.allclose(model(images), changed, atol=1e-6) and not torch.allclose(changed, first)
    model.requires_grad_(False)  # an attack on a frozen model: the cache serves, and the input still gets a gradient
    inputs = images.clone().requires_grad_(True)
    model(inputs).sum().backward()
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0
