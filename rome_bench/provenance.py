"""Where and how a result was computed: world size, device, numeric precision, library versions, git commit.

Training runs record :func:`training_provenance` in every sidecar; the results store records
:func:`evaluation_provenance` once per evaluating process and points each stored result to it. Nothing here changes a
result; it only describes the process.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch
from torch import nn

from rome_bench.checkpoint import git_commit
from rome_bench.models.autocast import attack_dtype

LIBRARIES = ("rome-bench", "torch", "numpy", "timm", "safetensors", "pyautoattack")


def library_versions() -> dict[str, str | None]:
    """Python's and the installed versions of the libraries a result depends on (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__  # with its build (+cu…, +cpu)
    versions["cuda"] = torch.version.cuda
    return versions


def autocast_state(device: torch.device) -> str:
    """``off``, or the dtype autocast computes in on ``device`` right now (e.g. ``bfloat16``): the attacks' (as
    ``eval --precision`` sets it, ``models/autocast.py``) or an enclosing ``torch.autocast``."""
    if (dtype := attack_dtype()) is not None:
        return str(dtype).removeprefix("torch.")
    if not torch.is_autocast_enabled(device.type):
        return "off"
    return str(torch.get_autocast_dtype(device.type)).removeprefix("torch.")


def precision(device: torch.device, amp: str | None = None) -> dict[str, Any]:
    """The parameters' dtype, autocast (AMP) and TF32 settings in effect for ``device``."""
    return {"dtype": str(torch.get_default_dtype()).removeprefix("torch."), "amp": amp or autocast_state(device),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def device_description(device: torch.device) -> str:
    """``cpu`` (with the processor where known), or ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()})" if platform.processor() or platform.machine() \
        else "cpu"


def training_provenance(device: torch.device, world_size: int, backend: str | None,
                        amp: str | None = None) -> dict[str, Any]:
    """The provenance record of a training run (one per sidecar)."""
    return {"world_size": world_size, "backend": backend, "device": str(device),
            "device_name": device_description(device), **precision(device, amp), "versions": library_versions(),
            "git_commit": git_commit()}


def evaluation_provenance(model: nn.Module, device: torch.device, world_size: int = 1,
                          executor: str = "local") -> dict[str, Any]:
    """World size (the processes the shards were cut for) and executor, device, the model's dtype, autocast and TF32
    settings, library versions, git commit."""
    parameter = next(iter(model.parameters()), None)
    record = {"world_size": world_size, "executor": executor, "device": device_description(device),
              **precision(device), "versions": library_versions(), "git_commit": git_commit()}
    record["dtype"] = str(parameter.dtype).removeprefix("torch.") if parameter is not None else None
    from rome_bench.models.compiled import FixedBatchCompiled

    record["compile"] = model.backend if isinstance(model, FixedBatchCompiled) else "off"
    return record
