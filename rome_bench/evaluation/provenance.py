"""What the results store records about the process that computed a result (see ``ResultStore.use_provenance``)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch
from torch import nn

from rome_bench.checkpoint import git_commit

LIBRARIES = ("rome-bench", "torch", "numpy", "timm", "pyautoattack")


def library_versions() -> dict[str, str | None]:
    """Python's and the installed versions of the libraries an evaluation's numbers depend on (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def evaluation_provenance(model: nn.Module, device: torch.device, world_size: int = 1,
                          executor: str = "local") -> dict[str, Any]:
    """World size (the processes the shards were cut for) and executor, device, the model's dtype, TF32 and autocast
    settings, library versions, git commit."""
    parameter = next(iter(model.parameters()), None)
    autocast = torch.is_autocast_enabled(device.type)
    return {
        "world_size": world_size, "executor": executor, "device": describe_device(device),
        "dtype": str(parameter.dtype).removeprefix("torch.") if parameter is not None else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "amp": str(torch.get_autocast_dtype(device.type)).removeprefix("torch.") if autocast else "off",
        "versions": library_versions(), "git_commit": git_commit(),
    }
