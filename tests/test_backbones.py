"""The backbones of the paper's other rows: ResNet-18, PreAct ResNet-18, XCiT-S, WRN-94-16 (and their micro sizes).

Big networks are built on the meta device only (shapes, no memory); forward/backward runs on the micro sizes.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from rome_bench.config import ModelConfig
from rome_bench.data import DatasetInfo
from rome_bench.errors import ConfigError
from rome_bench.models import create_model
from rome_bench.models.gates import gates, gating_modules
from rome_bench.models.registry import MODELS
from rome_bench.models.resnet import BasicBlock, PreActBlock
from rome_bench.models.rome import RomeOptions
from rome_bench.models.wrn import ConvLoRAExpertMixture, DeepMindBlock

MICROS = ["resnet_micro", "preact_resnet_micro", "dm_wrn_micro", "xcit_micro"]
EXPERTS = RomeOptions(num_experts=3, rank=2, gate_hidden=4)
INFO = DatasetInfo("synthetic-32", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))


def build(name: str, num_classes: int = 10, image_size: int = 32, patch_size: int = 4, seed: int = 0,
          **kw) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS.get(name)(num_classes=num_classes, image_size=image_size, patch_size=patch_size, **kw)


def on_meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build(name, **kw)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_every_parameter_gets_a_gradient(model: nn.Module) -> None:
    model.train()
    logits = model(torch.rand(4, 3, 32, 32))
    F.cross_entropy(logits, torch.arange(4)).backward()
    silent = [name for name, p in model.named_parameters()  # frozen ones (the per-layer L_div projections) aside
              if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not silent, silent


def randomise_lora_B(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, ConvLoRAExpertMixture):
            nn.init.normal_(module.lora_B, std=0.1)


@pytest.mark.parametrize("name", MICROS)
def test_micro_backbones_classify_a_32x32_batch_and_every_parameter_learns(name):
    model = build(name)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert_every_parameter_gets_a_gradient(model)


@pytest.mark.parametrize("name", ["resnet_micro", "preact_resnet_micro", "dm_wrn_micro"])
def test_conv_experts_start_as_the_backbone_and_then_every_parameter_learns(name):
    images = torch.rand(3, 3, 32, 32)
    plain = build(name).eval()
    model = build(name).add_rome_experts(EXPERTS).eval()
    assert torch.equal(plain(images), model(images))  # B = 0: the experts add nothing at init
    blocks = model.basic_blocks()
    assert len(gating_modules(model)) == 2 * len(blocks)  # both 3x3 convs of every residual block
    randomise_lora_B(model)
    assert not torch.allclose(plain(images), model(images))
    assert_every_parameter_gets_a_gradient(model)


def test_resnet18_is_torchvisions_resnet18_with_the_cifar_stem():
    ours = build("resnet_micro", base_width=64)  # ResNet-18's widths, one block per stage (to stay small)
    reference = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    reference.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    reference.maxpool = nn.Identity()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    ours.load_state_dict(reference.state_dict())
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ours.eval()(images), reference.eval()(images), atol=1e-5)
    assert count(on_meta("resnet18")) == 11_173_962  # the CIFAR ResNet-18 of the literature, 10 classes


def test_preact_resnet18_has_the_literatures_names_and_size():
    model = on_meta("preact_resnet18")
    keys = set(model.state_dict())
    for key in ("conv1.weight", "layer1.0.bn1.weight", "layer1.1.conv2.weight", "layer2.0.shortcut.0.weight",
                "layer4.1.bn2.running_var", "bn.weight", "linear.weight", "linear.bias"):
        assert key in keys
    assert not any(k.startswith(("layer1.0.shortcut", "layer2.1.shortcut", "bn1.")) for k in keys)
    assert count(model) == 11_172_170  # 11,171,146 of PreActResNet18 + the final BN (512 weights and biases)


def test_preact_blocks_keep_an_identity_path_and_post_activation_blocks_do_not():
    x = torch.randn(2, 8, 6, 6)  # negative values included
    preact, post = PreActBlock(8, 8, 1).eval(), BasicBlock(8, 8, 1).eval()
    for block in (preact, post):
        nn.init.zeros_(block.conv2.weight)
    assert torch.equal(preact(x), x)  # y = x + F(x), nothing after the sum (He et al. 2016, Identity Mappings)
    assert torch.equal(post(x), F.relu(x))  # y = ReLU(x + F(x)) (He et al. 2016, Deep Residual Learning)


def test_wrn_94_16_is_robustbenchs_deepmind_layout():
    model = on_meta("wrn_94_16")
    assert count(model) == 365_915_610  # RobustBench's Bartoldson2024Adversarial_WRN-94-16
    assert [len(group.block) for group in model.layer] == [15, 15, 15]
    keys = set(model.state_dict())
    for key in ("init_conv.weight", "layer.0.block.0.batchnorm_0.running_mean", "layer.0.block.0.conv_0.weight",
                "layer.0.block.0.shortcut.weight", "layer.2.block.14.conv_1.weight", "batchnorm.bias",
                "logits.weight", "logits.bias"):
        assert key in keys
    assert "layer.1.block.1.shortcut.weight" not in keys
    assert isinstance(model.relu, nn.SiLU)


def test_deepmind_blocks_pad_like_tensorflow_same():
    model = build("dm_wrn_micro").eval()
    inputs: dict[str, torch.Tensor] = {}
    for path, block in model.basic_blocks():
        block.conv_0.register_forward_hook(lambda _m, args, _o, key=path: inputs.__setitem__(key, args[0]))
    model(torch.rand(1, 3, 32, 32))
    stride_one, stride_two = inputs["layer.0.block.0"], inputs["layer.1.block.0"]
    assert stride_one.shape[-2:] == (34, 34) and stride_one[..., 0, :].abs().sum() == 0
    assert stride_two.shape[-2:] == (33, 33)  # stride 2: one zero row and column, at the bottom and right only
    assert stride_two[..., -1, :].abs().sum() == 0 and stride_two[..., :, -1].abs().sum() == 0
    assert stride_two[..., 0, :].abs().sum() > 0 and stride_two[..., :, 0].abs().sum() > 0
    assert isinstance(model.layer[1].block[0], DeepMindBlock)


def test_xcit_s_is_timms_xcit_s12_with_its_stem_adapted_to_the_patch_size():
    imagenet = on_meta("xcit_s", num_classes=1000, image_size=224, patch_size=16)
    assert count(imagenet) == 26_253_304  # timm's xcit_small_12_p16_224
    assert (len(imagenet.blocks), imagenet.embed_dim) == (12, 384)
    cifar = on_meta("xcit_s", image_size=32, patch_size=4)
    assert {k: v.shape for k, v in cifar.state_dict().items() if not k.startswith("head.")} == {
        k: v.shape for k, v in imagenet.state_dict().items() if not k.startswith("head.")}
    micro = build("xcit_micro", patch_size=4).eval()
    _, grid = micro.patch_embed(torch.rand(1, 3, 32, 32))
    assert grid == (8, 8)  # 32 / 4 tokens per side: the first two stride-2 convs of the stem run at stride 1
    assert build("xcit_micro", patch_size=8).patch_embed(torch.rand(1, 3, 32, 32))[1] == (4, 4)
    with pytest.raises(ConfigError, match="patch size"):
        build("xcit_micro", patch_size=3)


def test_rome_family_builds_on_the_new_backbones():
    for backbone, first_gate in (("resnet_micro", "layer1.0.conv1"), ("preact_resnet_micro", "layer1.0.conv1"),
                                 ("dm_wrn_micro", "layer.0.block.0.conv_0"), ("xcit_micro", "blocks.0.attn.qkv")):
        model = create_model(ModelConfig(family="rome", backbone=backbone, options=dataclasses.asdict(EXPERTS)), INFO)
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert gating_modules(model)[0].name == first_gate, backbone
        assert len(gates(model)) == len(gating_modules(model))


@pytest.mark.parametrize("backbone", ["resnet_micro", "xcit_micro"])
def test_rome_switches_a_backbone_cannot_take_fail_in_one_line(backbone):
    with pytest.raises(ConfigError, match="CLS token"):
        create_model(ModelConfig(family="rome", backbone=backbone, options={"gating": "dual-cls"}), INFO)
    if backbone == "resnet_micro":
        with pytest.raises(ConfigError, match="lora experts only"):
            create_model(ModelConfig(family="rome", backbone=backbone, options={"expert_type": "adapter"}), INFO)
        with pytest.raises(ConfigError, match="subset of conv1,conv2"):
            create_model(ModelConfig(family="rome", backbone=backbone, options={"targets": ["fc1"]}), INFO)


def test_registered_names_and_unknown_options():
    assert {"resnet18", "preact_resnet18", "xcit_s", "wrn_94_16"} <= set(MODELS.names())
    with pytest.raises(ConfigError, match="unknown ResNet option"):
        build("resnet_micro", depth=3)
    with pytest.raises(ConfigError, match="4 stages"):
        build("resnet_micro", blocks=(1, 1))
    with pytest.raises(ConfigError, match="unknown WideResNet option"):
        build("dm_wrn_micro", drop_rate=0.1)
