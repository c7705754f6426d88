"""Every RoME switch changes the computation it names: expert types, expert layers, gating variants, inference-time
variants, and the DeiT/Swin backbones."""

import copy

import pytest
import torch
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models import MODELS, gating_modules
from rome_bench.models import gates as gate_outputs
from rome_bench.models.dual_gate import beta_schedule
from rome_bench.models.gates import inference_variant
from rome_bench.models.rome import (
    AdapterExpertMixture,
    FFNExpertMixture,
    LoRAExpertMixture,
    RomeOptions,
    add_rome_experts,
)
from rome_bench.models.timm_backbones import swin_window

IMAGES = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS.get("vit_micro")(num_classes=10, image_size=32, patch_size=8, depth=3).eval()


def with_experts(backbone: nn.Module, **switches: object) -> nn.Module:
    config = RomeOptions(**{"num_experts": 4, "rank": 2, "gate_hidden": 4, **switches})
    return add_rome_experts(copy.deepcopy(backbone), config).eval()


def perturb_experts(model: nn.Module) -> nn.Module:
    """Give every expert a nonzero output (B, U and the FFN experts' weights start at neutral values)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, LoRAExpertMixture):
            module.lora_B.data = torch.randn(module.lora_B.shape, generator=generator) * 0.2
        elif isinstance(module, AdapterExpertMixture):
            module.up.data = torch.randn(module.up.shape, generator=generator) * 0.2
        elif isinstance(module, FFNExpertMixture):
            module.fc2_weight.data += torch.randn(module.fc2_weight.shape, generator=generator) * 0.2
    return model


def mlp_parameters(block: nn.Module) -> int:
    return sum(p.numel() for name, p in block.mlp.named_parameters() if not name.startswith("gate."))


# expert architectures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("switches", [{"expert_type": "lora"}, {"expert_type": "adapter"},
                                      {"expert_type": "ffn", "targets": ("mlp",)}])
def test_every_expert_type_starts_equal_to_the_backbone_and_then_differs(switches):
    backbone = tiny_vit()
    model = with_experts(backbone, **switches)
    assert torch.allclose(model(IMAGES), backbone(IMAGES), atol=1e-5)
    assert not torch.allclose(perturb_experts(model)(IMAGES), backbone(IMAGES), atol=1e-3)


def test_ffn_experts_have_k_times_the_ffn_parameters_and_replace_the_mlp():
    backbone = tiny_vit()
    model = with_experts(backbone, expert_type="ffn", targets=("mlp",), num_experts=3)
    for plain_block, block in zip(backbone.blocks, model.blocks, strict=True):
        assert isinstance(block.mlp, FFNExpertMixture)
        assert mlp_parameters(block) == 3 * mlp_parameters(plain_block)
        assert not isinstance(block.attn.qkv, LoRAExpertMixture)


def test_ffn_mixture_is_the_gate_weighted_sum_of_expert_ffns():
    model = perturb_experts(with_experts(tiny_vit(), expert_type="ffn", targets=("mlp",), num_experts=3))
    layer = model.blocks[0].mlp
    hidden = torch.randn(2, 5, 32)
    output = layer(hidden)
    gates = layer.gate.last.fused
    size = layer.hidden
    expected = torch.zeros_like(output)
    for k in range(3):
        fc1 = layer.fc1_weight[k * size:(k + 1) * size], layer.fc1_bias[k * size:(k + 1) * size]
        inner = layer.act(torch.nn.functional.linear(hidden, *fc1))
        expert = torch.nn.functional.linear(inner, layer.fc2_weight[:, k * size:(k + 1) * size], layer.fc2_bias[k])
        expected = expected + gates[..., k:k + 1] * expert
    assert torch.allclose(output, expected, atol=1e-5)


def test_adapter_mixture_is_the_gate_weighted_sum_of_bottlenecks_on_the_output():
    model = perturb_experts(with_experts(tiny_vit(), expert_type="adapter", num_experts=3))
    layer = model.blocks[0].attn.proj
    hidden = torch.randn(2, 5, 32)
    output = layer(hidden)
    gates = layer.gate.last.fused
    base = layer.base(hidden)
    expected = base.clone()
    for k in range(3):
        rows = slice(k * layer.rank, (k + 1) * layer.rank)
        bottleneck = torch.nn.functional.gelu(base @ layer.down.weight[rows].T + layer.down.bias[rows])
        expected = expected + gates[..., k:k + 1] * (bottleneck @ layer.up[:, rows].T)
    assert torch.allclose(output, expected, atol=1e-5)


def test_number_of_experts_and_rank_set_the_expert_shapes():
    model = with_experts(tiny_vit(), num_experts=6, rank=8)
    layer = model.blocks[0].attn.qkv
    assert layer.lora_A.shape == (6 * 8, 32) and layer.lora_B.shape == (96, 6 * 8)
    model(IMAGES)
    assert all(gate.fused.shape[-1] == 6 for gate in gate_outputs(model))


# expert layers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [("qkv",), ("proj",), ("fc1", "fc2"), ("qkv", "proj", "fc1", "fc2")])
def test_expert_layers_wrap_exactly_the_named_linears(targets):
    model = with_experts(tiny_vit(), targets=targets)
    places = {"qkv": "attn", "proj": "attn", "fc1": "mlp", "fc2": "mlp"}
    for block in model.blocks:
        for name, owner in places.items():
            assert isinstance(getattr(getattr(block, owner), name), LoRAExpertMixture) == (name in targets)
    model(IMAGES)
    assert len(gate_outputs(model)) == len(targets) * len(model.blocks)


def test_an_unknown_expert_layer_is_refused_by_the_family():
    from rome_bench.config import apply_override
    from rome_bench.models import build_family
    from rome_bench.presets import preset

    with pytest.raises(ConfigError, match="targets"):
        build_family(apply_override(preset("smoke"), "model.options.targets=qkv,attn").model)
    with pytest.raises(ConfigError, match="ffn experts replace the block MLP"):
        build_family(apply_override(preset("smoke"), "model.options.expert_type=ffn").model)


# gating variants ---------------------------------------------------------------------------------------------------


def test_none_gating_gives_equal_weights_and_has_no_gate_parameters():
    model = perturb_experts(with_experts(tiny_vit(), gating="none"))
    model(IMAGES)
    for gate in gate_outputs(model):
        assert torch.equal(gate.fused, torch.full_like(gate.fused, 0.25))
    assert all(not list(module.parameters()) for module in gating_modules(model))


def test_local_and_global_gating_use_one_branch_only():
    local = with_experts(tiny_vit(), gating="local")
    local(IMAGES)
    for gate in gate_outputs(local):
        assert torch.equal(gate.fused, gate.local)
    global_ = with_experts(tiny_vit(), gating="global")
    global_(IMAGES)
    for gate in gate_outputs(global_):
        assert torch.equal(gate.fused, gate.global_.unsqueeze(1).expand_as(gate.fused))
        assert (gate.fused == gate.fused[:, :1]).all()  # the same gate for every token of an image
    assert all(module.global_in is None for module in gating_modules(local))
    assert all(module.local_in is None for module in gating_modules(global_))


def test_dual_inverted_reverses_the_beta_schedule():
    dual = gating_modules(with_experts(tiny_vit(), gating="dual"))
    inverted = gating_modules(with_experts(tiny_vit(), gating="dual-inverted"))
    depth = 3
    for gate, reversed_gate in zip(dual, inverted, strict=True):
        assert gate.beta == pytest.approx(beta_schedule(gate.layer, depth))
        assert reversed_gate.beta == pytest.approx(beta_schedule(depth + 1 - gate.layer, depth))
    assert inverted[0].beta < inverted[-1].beta and dual[0].beta > dual[-1].beta


def test_beta_s_and_b_are_used():
    gates = gating_modules(with_experts(tiny_vit(), beta_s=8.0, beta_b=1.0))
    assert gates[0].beta == pytest.approx(beta_schedule(1, 3, 8.0, 1.0))


def test_dual_learned_beta_is_a_parameter_that_starts_at_the_schedule_and_gets_gradients():
    model = with_experts(tiny_vit(), gating="dual-learned")
    gates = gating_modules(model)
    assert all(isinstance(gate.beta_logit, nn.Parameter) for gate in gates)
    assert float(gates[0].beta.detach()) == pytest.approx(beta_schedule(1, 3), rel=1e-5)
    model(IMAGES)
    (gate_outputs(model)[0].fused * torch.arange(4.0)).sum().backward()
    assert gates[0].beta_logit.grad is not None and gates[0].beta_logit.grad != 0


def test_dual_cls_takes_the_global_gate_from_the_cls_token_only():
    model = with_experts(tiny_vit(), gating="dual-cls")
    layer = model.blocks[0].attn.qkv
    hidden = torch.randn(2, 5, 32)
    layer(hidden)
    before = layer.gate.last.global_.clone()
    changed = hidden.clone()
    changed[:, 1:] += torch.randn(2, 4, 32)  # every token but the CLS token
    layer(changed)
    assert torch.allclose(layer.gate.last.global_, before)
    mean_model = with_experts(tiny_vit(), gating="dual")
    mean_layer = mean_model.blocks[0].attn.qkv
    mean_layer(hidden)
    before = mean_layer.gate.last.global_.clone()
    mean_layer(changed)
    assert not torch.allclose(mean_layer.gate.last.global_, before)


# inference-time variants (Table 5) -------------------------------------------------------------------------------


@pytest.mark.parametrize("switches", [{}, {"expert_type": "adapter"}, {"targets": ("qkv", "proj", "fc1", "fc2")}])
def test_removing_experts_gives_the_backbone(switches):
    backbone = tiny_vit()
    model = perturb_experts(with_experts(backbone, **switches))
    assert not torch.allclose(model(IMAGES), backbone(IMAGES), atol=1e-3)
    with inference_variant(model, "removed"):
        assert torch.allclose(model(IMAGES), backbone(IMAGES), atol=1e-5)
    assert not torch.allclose(model(IMAGES), backbone(IMAGES), atol=1e-3)  # restored on exit


def test_inverse_gating_is_one_minus_g_renormalised_and_random_gating_is_a_fresh_simplex_point():
    model = perturb_experts(with_experts(tiny_vit(), gating="local"))
    model(IMAGES)
    learned = [gate.local for gate in gate_outputs(model)]
    with inference_variant(model, "inverse"):
        model(IMAGES)
        for gate in gate_outputs(model):  # later layers see other inputs: compare within the same forward
            assert torch.allclose(gate.fused, (1 - gate.local) / 3, atol=1e-6)
    with inference_variant(model, "random"):
        model(IMAGES)
        first = [gate.fused for gate in gate_outputs(model)]
        model(IMAGES)
        for gate, earlier, local in zip(gate_outputs(model), first, learned, strict=True):
            assert torch.allclose(gate.fused.sum(-1), torch.ones_like(gate.fused[..., 0]), atol=1e-5)
            assert not torch.allclose(gate.fused, earlier) and not torch.allclose(gate.fused, local)


def test_inference_variants_refuse_unknown_names_and_models_without_experts():
    model = with_experts(tiny_vit())
    with pytest.raises(ConfigError, match="unknown gating variant"), inference_variant(model, "flip"):
        pass
    with pytest.raises(ConfigError, match="needs a model with experts"), inference_variant(tiny_vit(), "random"):
        pass


# DeiT and Swin -----------------------------------------------------------------------------------------------------


def test_deit_gets_experts_on_its_attention_projections_and_starts_equal():
    torch.manual_seed(0)
    deit = MODELS.get("deit_micro")(num_classes=10, image_size=32, patch_size=8).eval()
    model = with_experts(deit)
    assert all(isinstance(block.attn.qkv, LoRAExpertMixture) for block in model.blocks)
    assert torch.equal(model(IMAGES), deit(IMAGES))


def test_swin_gates_are_image_level_across_windows():
    torch.manual_seed(0)
    swin = MODELS.get("swin_micro")(num_classes=10, image_size=32, patch_size=4).eval()
    assert swin_window(32, 4) == 4 and swin_window(224, 4) == 7
    model = with_experts(swin, num_experts=3)
    assert torch.equal(model(IMAGES), swin(IMAGES))
    model(IMAGES)
    gates = gate_outputs(model)
    tokens = [(32 // 4) ** 2] * 4 + [(32 // 8) ** 2] * 4  # two stages of two blocks, qkv and proj each
    for gate, count in zip(gates, tokens, strict=True):
        assert gate.global_.shape == (3, 3) and gate.local.shape == gate.fused.shape == (3, count, 3)
    groups = [module.group for module in gating_modules(model)]
    assert groups[0] == 4 and groups[-1] == 1  # 8×8 tokens in 4×4 windows, then one 4×4 window
    with pytest.raises(ConfigError, match="CLS token"):
        with_experts(swin, gating="dual-cls")
