"""ResNet-18 with the CIFAR stem and PreAct ResNet-18, for 32×32 images (and any other size: the heads pool adaptively).

**ResNet-18** (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1 with the
BasicBlock of Fig. 2 and projection shortcuts, option B of Sec. 3.3); ``resnet18``:

    stem:   conv3×3(3 → 64, stride 1) → BN → ReLU          (the CIFAR stem: no 7×7/2 conv, no 3×3/2 max-pool)
    stages: 2 BasicBlocks each, widths 64, 128, 256, 512, strides 1, 2, 2, 2
    block:  y = ReLU(BN(conv3×3(ReLU(BN(conv3×3_s(x))))) + s(x)),  s = BN(conv1×1_s) when the shape changes, else x
    head:   global average pool → Linear

Names and init follow torchvision's ``resnet18`` (``conv1, bn1, layer{1..4}.{i}.{conv1,bn1,conv2,bn2,downsample.{0,1}},
fc``; convs Kaiming-normal fan-out, BN weight 1 / bias 0), with the stem conv 3×3/1 and no max-pool. 11,173,962
parameters with 10 classes.

**PreAct ResNet-18** (He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016, Fig. 4(e):
full pre-activation), the network RAMP (Jiang & Singh 2024) and E-AT (Croce & Hein 2022) train on CIFAR-10;
``preact_resnet18``:

    stem:   conv3×3(3 → 64, stride 1)                       (no BN/ReLU: each unit pre-activates its input)
    block:  a = ReLU(BN(x));  y = conv3×3(ReLU(BN(conv3×3_s(a)))) + s,  s = conv1×1_s(a) when the shape changes, else x
    head:   BN → ReLU (after the last unit, paper Sec. 4.1) → global average pool → Linear

Names are those of the CIFAR ``PreActResNet18`` of the adversarial-training literature (``conv1``,
``layer{1..4}.{i}.{bn1,conv1,bn2,conv2,shortcut.0}``, ``bn``, ``linear``), so its ReLU state dicts load. E-AT's own
checkpoints use softplus activations; that variant is not provided. Init: as the ResNet-18 above.

**RoME** on either network puts gated conv-LoRA experts on both 3×3 convs of every residual block (the WideResNet's
experts, models/wrn.py; l = 1..8 counts the blocks, never the stem or the 1×1 shortcuts).

``resnet_micro`` and ``preact_resnet_micro`` (one block per stage, widths 8..64) are for tests; ``preact_resnet_cpu``
(one block per stage, widths 16..128, NHWC activations) is the ``cifar10-cpu`` preset's network (presets.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.errors import ConfigError
from rome_bench.models.registry import MODELS
from rome_bench.models.rome import RomeOptions
from rome_bench.models.wrn import add_conv_experts

STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2)


def _conv3x3(in_planes: int, out_planes: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, plus the (projection) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (None if stride == 1 and in_planes == planes else nn.Sequential(
            nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class PreActBlock(nn.Module):
    """Full pre-activation basic block: BN-ReLU-conv-BN-ReLU-conv, plus the shortcut (no activation after the sum)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1)
        self.shortcut = (None if stride == 1 and in_planes == planes else
                         nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return out + shortcut


def _stage(block: type[BasicBlock] | type[PreActBlock], in_planes: int, planes: int, num_blocks: int,
           stride: int) -> nn.Sequential:
    return nn.Sequential(*[block(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                           for i in range(num_blocks)])


def _check_shape(blocks: tuple[int, ...], base_width: int) -> None:
    if len(blocks) != len(STAGE_STRIDES) or min(blocks) < 1:
        raise ConfigError(f"a ResNet takes 4 stages of >= 1 blocks each (ResNet-18: 2,2,2,2); got {blocks}")
    if base_width < 1:
        raise ConfigError(f"ResNet base_width must be >= 1 (ResNet-18: 64); got {base_width}")


def _init_weights(model: nn.Module) -> None:
    """torchvision's ResNet init: convs Kaiming-normal (fan-out, ReLU gain), BN weight 1 / bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class _ResidualNetwork(nn.Module):
    """What both ResNets share: four stages ``layer1..layer4``, their blocks in order, and conv experts."""

    architecture = "ResNet"

    def basic_blocks(self) -> list[tuple[str, nn.Module]]:
        """All residual blocks in forward order with their module paths (``layer2.0``)."""
        return [(f"layer{s}.{i}", block) for s in range(1, 5) for i, block in enumerate(getattr(self, f"layer{s}"))]

    def add_rome_experts(self, config: RomeOptions) -> _ResidualNetwork:
        """Wrap conv1/conv2 (per ``config.targets``) of every block in gated conv-LoRA experts, in place."""
        add_conv_experts(self.basic_blocks(), config, self.architecture)
        return self


class CifarResNet(_ResidualNetwork):
    """ResNet-18 (or other ``blocks`` per stage) with the CIFAR stem and torchvision's names."""

    def __init__(self, num_classes: int = 10, blocks: tuple[int, ...] = (2, 2, 2, 2), base_width: int = 64) -> None:
        super().__init__()
        _check_shape(blocks, base_width)
        widths = [base_width * 2**s for s in range(4)]
        self.conv1 = _conv3x3(3, base_width, 1)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU()
        ins = [base_width, *widths[:-1]]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            _stage(BasicBlock, ins[s], widths[s], blocks[s], STAGE_STRIDES[s]) for s in range(4))
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PreActResNet(_ResidualNetwork):
    """PreAct ResNet-18 (or other ``blocks`` per stage) with the CIFAR stem and the literature's CIFAR names."""

    architecture = "PreActResNet"

    def __init__(self, num_classes: int = 10, blocks: tuple[int, ...] = (2, 2, 2, 2), base_width: int = 64,
                 channels_last: bool = False) -> None:
        super().__init__()
        _check_shape(blocks, base_width)
        widths = [base_width * 2**s for s in range(4)]
        self.channels_last = channels_last
        self.conv1 = _conv3x3(3, base_width, 1)
        ins = [base_width, *widths[:-1]]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            _stage(PreActBlock, ins[s], widths[s], blocks[s], STAGE_STRIDES[s]) for s in range(4))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # NHWC activations: oneDNN's faster CPU convs (1.2-1.4x per training step, measured)
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


RESNET_SIZES: dict[str, tuple[type[_ResidualNetwork], dict[str, object]]] = {
    "resnet_micro": (CifarResNet, {"blocks": (1, 1, 1, 1), "base_width": 8}),  # for tests
    "resnet18": (CifarResNet, {"blocks": (2, 2, 2, 2), "base_width": 64}),
    "preact_resnet_micro": (PreActResNet, {"blocks": (1, 1, 1, 1), "base_width": 8}),  # for tests
    "preact_resnet18": (PreActResNet, {"blocks": (2, 2, 2, 2), "base_width": 64}),
    # the cifar10-cpu preset's network (presets.py): one block per stage, widths 16..128, 0.31M parameters
    "preact_resnet_cpu": (PreActResNet, {"blocks": (1, 1, 1, 1), "base_width": 16, "channels_last": True}),
}
RESNET_OVERRIDES: frozenset[str] = frozenset({"blocks", "base_width"})


def _make_resnet_builder(network: type[_ResidualNetwork], size: dict[str, object]) -> Callable[..., nn.Module]:
    def build(num_classes: int, image_size: int, patch_size: int | None = None, **overrides: object) -> nn.Module:
        """A ResNet for ``num_classes`` (any image size: the head pools adaptively); ``patch_size`` is ignored."""
        unknown = sorted(set(overrides) - RESNET_OVERRIDES)
        if unknown:
            raise ConfigError(f"unknown ResNet option(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(sorted(RESNET_OVERRIDES))}")
        kwargs = {**size, **overrides}
        kwargs["blocks"] = tuple(kwargs["blocks"])  # type: ignore[call-overload]
        return network(num_classes=num_classes, **kwargs)  # type: ignore[arg-type]

    return build


for _name, (_network, _size) in RESNET_SIZES.items():
    MODELS.add(_name, _make_resnet_builder(_network, _size), family="resnet",
               layout="preact" if _network is PreActResNet else "post-activation", **_size)
