"""Conv experts in loralib's ConvLoRA factorisation (issue 25, item 4) beside the older im2col one (models/wrn.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.checkpoint import read_run_config
from rome_bench.errors import ConfigError
from rome_bench.models import build_family
from rome_bench.models.rome import RomeOptions
from rome_bench.models.wrn import ConvDualScaleGate, ConvLoRAExpertMixture
from tests.test_model_identity import REFERENCE_MODELS
from tests.test_wrn import mixtures, rome_wrn

C_IN, C_OUT, KERNEL, RANK, EXPERTS = 6, 5, 3, 2, 3


def mixture(layout: str, alpha: float = 1.0, stride: int = 1) -> ConvLoRAExpertMixture:
    torch.manual_seed(1)
    base = nn.Conv2d(C_IN, C_OUT, KERNEL, stride=stride, padding=1, bias=True).double()
    gate = ConvDualScaleGate(C_IN, EXPERTS, 0, 0.0, 1, "conv", "none").double()  # uniform 1/K gates
    module = ConvLoRAExpertMixture(base, EXPERTS, RANK, gate, layout, alpha).double()
    nn.init.normal_(module.lora_B)
    return module


def test_loralib_factors_have_loralibs_shapes_per_expert():
    module = mixture("loralib")
    assert module.lora_A.shape == (EXPERTS * RANK * KERNEL, C_IN * KERNEL)  # K stacked (r·k × C_in·k)
    assert module.lora_B.shape == (C_OUT * KERNEL, EXPERTS * RANK * KERNEL)  # K side by side (C_out·k × r·k)
    old = mixture("im2col")
    assert old.lora_A.shape == (EXPERTS * RANK, C_IN * KERNEL * KERNEL) and old.lora_B.shape == (C_OUT, EXPERTS * RANK)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("alpha", [1.0, 4.0])
def test_loralib_output_is_the_base_conv_with_alpha_over_r_times_the_reshaped_product(alpha, stride):
    module = mixture("loralib", alpha, stride)
    x = torch.randn(2, C_IN, 7, 7, dtype=torch.float64)
    rows = RANK * KERNEL
    delta = sum((module.lora_B[:, k * rows:(k + 1) * rows] @ module.lora_A[k * rows:(k + 1) * rows])
                .reshape(C_OUT, C_IN, KERNEL, KERNEL) for k in range(EXPERTS)) / EXPERTS  # uniform gates: mean
    expected = F.conv2d(x, module.base.weight + alpha / RANK * delta, module.base.bias, stride, 1)
    assert torch.allclose(module(x), expected, atol=1e-10)


def test_loralib_delta_has_rank_r_times_k_and_im2col_rank_r():
    loralib, im2col = mixture("loralib").delta_weight(0), mixture("im2col").delta_weight(0)
    assert torch.linalg.matrix_rank(loralib.reshape(C_OUT * KERNEL, C_IN * KERNEL)) == RANK * KERNEL
    assert torch.linalg.matrix_rank(im2col.reshape(C_OUT, C_IN * KERNEL * KERNEL)) == RANK
    doubled = mixture("loralib", alpha=2.0).delta_weight(0)
    assert torch.allclose(doubled, 2 * loralib)  # α/r


def test_new_configs_get_loralib_and_stored_runs_keep_im2col():
    assert all(module.layout == "loralib" and module.scale == 1 / 2 for module in mixtures(rome_wrn()))
    old = read_run_config(REFERENCE_MODELS / "cifar10-cpu-rome-max")  # conv experts, stored before the option
    assert build_family(old.model).options.conv_lora == "im2col"
    assert all(module.layout == "im2col" for module in mixtures(rome_wrn(RomeOptions(conv_lora="im2col"))))


def test_loralib_needs_a_square_kernel():
    gate = ConvDualScaleGate(4, 3, 0, 0.5, 1, "conv")
    with pytest.raises(ConfigError, match="square kernel"):
        ConvLoRAExpertMixture(nn.Conv2d(4, 4, (3, 1)), 3, 2, gate, "loralib")
