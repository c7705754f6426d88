"""Devices: the accepted names, choosing one, probing what it can run (bf16) and switching TF32 on where it helps.

Torch is imported inside the functions, so that reading configs stays light.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rome_bench.errors import ConfigError

if TYPE_CHECKING:
    import torch


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def is_device_name(name: str) -> bool:
    """Whether ``name`` is a device rome-bench accepts (the one check behind train.device and every --device)."""
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())


def resolve_device(name: str) -> torch.device:
    """The torch device for a device name (``auto``: CUDA when available, else the CPU)."""
    import torch

    if not is_device_name(name):
        raise ConfigError(f"unknown device '{name}'; use {DEVICE_NAMES}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here; use --device cpu")
    device = torch.device(name)
    if device.type == "cuda":
        enable_tf32(device)
    return device


def check_bf16(device: torch.device) -> None:
    """Raise one ConfigError line when this device's kernels cannot run a bf16 attention forward and backward
    (PyTorch's CPU attention kernel needs AVX512 for bf16; GPUs from Ampere on have bf16)."""
    import torch
    import torch.nn.functional as F

    try:
        query = torch.rand(1, 1, 65, 16, device=device, requires_grad=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            F.scaled_dot_product_attention(query, query, query).sum().backward()
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"bf16 does not run on this {device.type} ({reason}); use precision fp32 here, or a GPU "
                          f"with bf16 (Ampere or later)") from error


TF32_VARIABLE = "ROME_BENCH_TF32"  # 0 keeps float32 matmuls in full precision on Ampere and later GPUs


def enable_tf32(device: torch.device) -> bool:
    """TF32 matmuls and convolutions on GPUs from Ampere on (compute capability ≥ 8), unless $ROME_BENCH_TF32=0;
    whether they are on is recorded in every result's provenance. Returns whether it switched them on."""
    import torch

    if os.environ.get(TF32_VARIABLE, "1") == "0" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def device_name(device: torch.device) -> str:
    """The hardware behind ``device``: the GPU's name, else the CPU's (as the platform reports it)."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"
