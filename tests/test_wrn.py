import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.classifier import ImageClassifier
from rome_bench.models.dual_gate import layer_beta
from rome_bench.models.gates import gates as gate_outputs
from rome_bench.models.gates import gating_modules, inference_variant
from rome_bench.models.registry import MODELS
from rome_bench.models.rome import RomeOptions
from rome_bench.models.wrn import ConvDualScaleGate, ConvLoRAExpertMixture, WideResNet

SMALL = RomeOptions(num_experts=3, rank=2, gate_hidden=4)


def plain_wrn(name: str = "wrn_micro", seed: int = 0) -> WideResNet:
    torch.manual_seed(seed)
    return MODELS.get(name)(num_classes=10, image_size=32, patch_size=4)


def rome_wrn(config: RomeOptions = SMALL, name: str = "wrn_micro") -> WideResNet:
    return plain_wrn(name).add_rome_experts(config)


def mixtures(model: nn.Module) -> list[ConvLoRAExpertMixture]:
    return [module for module in model.modules() if isinstance(module, ConvLoRAExpertMixture)]


def randomise_B(model: nn.Module) -> None:
    for mixture in mixtures(model):
        nn.init.normal_(mixture.lora_B, std=0.1)


def test_wrn_28_10_has_the_robustbench_parameter_count_and_key_names():
    with torch.device("meta"):
        model = plain_wrn("wrn_28_10")
    assert sum(p.numel() for p in model.parameters()) == 36_479_194
    keys = set(model.state_dict())
    for key in ("conv1.weight", "block1.layer.0.bn1.running_mean", "block1.layer.0.conv1.weight",
                "block1.layer.0.convShortcut.weight", "block2.layer.3.conv2.weight", "block3.layer.0.bn2.bias",
                "bn1.weight", "fc.weight", "fc.bias"):
        assert key in keys
    assert "block1.layer.1.convShortcut.weight" not in keys
    assert len(model.block1.layer) == len(model.block3.layer) == 4


def test_registered_sizes_accept_depth_and_width_overrides_and_reject_bad_ones():
    images = torch.rand(2, 3, 32, 32)
    assert plain_wrn("wrn_smoke")(images).shape == (2, 10)
    model = MODELS.get("wrn_micro")(num_classes=5, image_size=32, patch_size=4, depth=16, widen_factor=2)
    assert len(model.basic_blocks()) == 6 and model.fc.in_features == 128 and model(images).shape == (2, 5)
    assert {"wrn_28_10", "wrn_34_10", "wrn_70_16"} <= set(MODELS.names())
    with pytest.raises(ConfigError):
        MODELS.get("wrn_micro")(num_classes=10, image_size=32, patch_size=4, depth=12)
    with pytest.raises(ConfigError):
        MODELS.get("wrn_micro")(num_classes=10, image_size=32, patch_size=4, heads=2)


def test_trades_state_dict_with_sub_block1_loads_strictly():
    trades = WideResNet(depth=10, widen_factor=1, sub_block1=True)
    model = WideResNet(depth=10, widen_factor=1, sub_block1=True)
    model.load_state_dict(trades.state_dict(), strict=True)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(trades.eval()(images), model.eval()(images))


def test_rome_with_zero_B_equals_the_plain_wrn_exactly():
    images = torch.rand(3, 3, 32, 32)
    assert torch.equal(plain_wrn()(images), rome_wrn()(images))


def test_rome_with_random_B_differs_and_removed_gates_give_the_plain_wrn_back():
    images = torch.rand(3, 3, 32, 32)
    model = rome_wrn()
    randomise_B(model)
    assert not torch.allclose(plain_wrn()(images), model(images))
    with inference_variant(model, "removed"):
        assert torch.equal(plain_wrn()(images), model(images))


def test_experts_wrap_the_block_convs_only_and_follow_targets():
    model = rome_wrn()
    for _, block in model.basic_blocks():
        assert isinstance(block.conv1, ConvLoRAExpertMixture) and isinstance(block.conv2, ConvLoRAExpertMixture)
        assert block.convShortcut is None or isinstance(block.convShortcut, nn.Conv2d)
    assert isinstance(model.conv1, nn.Conv2d)
    names = [gate.name for gate in gating_modules(model)]
    assert names[:2] == ["block1.layer.0.conv1", "block1.layer.0.conv2"] and "block2.layer.0.conv1" in names
    only_conv2 = rome_wrn(RomeOptions(num_experts=3, rank=2, gate_hidden=4, targets=("conv2",)))
    assert [gate.name for gate in gating_modules(only_conv2)] == [n for n in names if n.endswith("conv2")]
    with pytest.raises(ConfigError, match="already has experts"):
        model.add_rome_experts(SMALL)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("gating", ["dual", "local"])
def test_fused_conv_lora_equals_the_term_by_term_sum(stride: int, gating: str):
    torch.manual_seed(1)
    base = nn.Conv2d(6, 5, kernel_size=3, stride=stride, padding=1, bias=True).double()
    gate = ConvDualScaleGate(6, 3, 4, 0.3, 1, "conv", gating).double()
    mixture = ConvLoRAExpertMixture(base, 3, 2, gate).double()
    nn.init.normal_(mixture.lora_B)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    output = mixture(x)
    height = width = (9 + 2 - 3) // stride + 1
    gates = gate.last.fused.transpose(1, 2).reshape(2, 3, height, width)
    expected = base(x)
    for k in range(3):
        expected = expected + gates[:, k:k + 1] * F.conv2d(x, mixture.delta_weight(k), None, stride, 1)
    assert output.shape == expected.shape == (2, 5, height, width)
    assert torch.allclose(output, expected, atol=1e-10)


def test_gates_match_the_output_map_and_sum_to_one_per_position():
    model = rome_wrn()
    sizes: dict[str, tuple[int, int]] = {}
    for path, block in model.basic_blocks():
        for target in ("conv1", "conv2"):
            block.get_submodule(target).register_forward_hook(
                lambda _m, _i, out, key=f"{path}.{target}": sizes.__setitem__(key, tuple(out.shape[-2:])))
    model(torch.rand(2, 3, 32, 32))
    assert sizes["block2.layer.0.conv1"] == (16, 16) and sizes["block3.layer.0.conv1"] == (8, 8)
    for gate in gate_outputs(model):
        positions = sizes[gate.name][0] * sizes[gate.name][1]
        assert gate.local.shape == gate.fused.shape == (2, positions, 3) and gate.global_.shape == (2, 3)
        for gates in (gate.local, gate.fused, gate.global_):
            assert torch.allclose(gates.sum(-1), torch.ones(gates.shape[:-1]), atol=1e-6) and (gates >= 0).all()


def test_fused_gates_are_the_beta_mixture_with_beta_per_basic_block():
    model = rome_wrn()
    model(torch.rand(2, 3, 32, 32))
    blocks = len(model.basic_blocks())
    for gate, output in zip(gating_modules(model), gate_outputs(model), strict=True):
        block_index = [path for path, _ in model.basic_blocks()].index(gate.name.rsplit(".", 1)[0]) + 1
        assert gate.layer == output.layer == block_index
        assert gate.beta == pytest.approx(layer_beta("dual", block_index, blocks, 4.0, 2.0))
        expected = (1 - gate.beta) * output.local + gate.beta * output.global_.unsqueeze(1)
        assert torch.allclose(output.fused, expected, atol=1e-6)


def test_none_gating_is_uniform_and_local_or_global_gating_use_one_branch():
    images = torch.rand(2, 3, 32, 32)
    uniform = rome_wrn(RomeOptions(num_experts=4, rank=2, gating="none"))
    uniform(images)
    assert all(torch.equal(out.fused, torch.full_like(out.fused, 0.25)) for out in gate_outputs(uniform))
    assert not list(gating_modules(uniform)[0].parameters())
    for gating, beta in (("local", 0.0), ("global", 1.0)):
        model = rome_wrn(RomeOptions(num_experts=3, rank=2, gate_hidden=0, gating=gating))
        model(images)
        for gate, output in zip(gating_modules(model), gate_outputs(model), strict=True):
            assert gate.beta == beta
            branch = output.local if gating == "local" else output.global_.unsqueeze(1).expand_as(output.fused)
            assert torch.equal(output.fused, branch)
            assert torch.allclose(output.global_, output.local.mean(1), atol=1e-6)


def test_dual_learned_beta_starts_at_the_schedule_and_gets_gradients():
    model = rome_wrn(RomeOptions(num_experts=3, rank=2, gate_hidden=4, gating="dual-learned"))
    randomise_B(model)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    gate = gating_modules(model)[0]
    assert float(gate.beta.detach()) == pytest.approx(layer_beta("dual", 1, len(model.basic_blocks()), 4.0, 2.0))
    assert gate.beta_logit.grad is not None and gate.beta_logit.grad != 0


@pytest.mark.parametrize("config", [
    RomeOptions(gating="dual-cls"), RomeOptions(expert_type="adapter"),
    RomeOptions(expert_type="ffn", targets=("mlp",)), RomeOptions(targets=("qkv",)),
    RomeOptions(targets=("conv1", "fc1")),
])
def test_unsupported_configs_raise_config_error(config: RomeOptions):
    with pytest.raises(ConfigError):
        rome_wrn(config)


def test_conv_gate_and_mixture_reject_cls_gating_and_grouped_convs():
    with pytest.raises(ConfigError, match="CLS"):
        ConvDualScaleGate(4, 3, 4, 0.5, 1, "conv", "dual-cls")
    with pytest.raises(ConfigError, match="groups"):
        ConvLoRAExpertMixture(nn.Conv2d(4, 4, 3, groups=2), 3, 2, ConvDualScaleGate(4, 3, 4, 0.5, 1, "conv"))


def test_training_step_through_image_classifier_reaches_experts_and_gates():
    model = ImageClassifier(rome_wrn(), (0.5,) * 3, (0.25,) * 3)
    randomise_B(model)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(images), labels).backward()
    expert_parameters = [(name, p) for name, p in model.named_parameters()  # not the frozen L_div projections
                         if ("lora_" in name or ".gate." in name) and p.requires_grad]
    assert any("lora_A" in n for n, _ in expert_parameters) and any(".gate." in n for n, _ in expert_parameters)
    for name, parameter in expert_parameters:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    before = model(images).detach()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.allclose(before, model(images))
