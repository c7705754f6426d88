"""Where and how a result was computed: world size, device, numeric precision, library versions, git commit.

Recorded in every training run's sidecars (``provenance``) so that a stored result can be traced to the setup that
produced it. Nothing here changes a result; it only describes the process.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from rome_bench.checkpoint import git_commit

LIBRARIES = ("torch", "timm", "numpy", "safetensors", "rome-bench")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a result depends on (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__  # with its build (+cu…, +cpu)
    versions["cuda"] = torch.version.cuda
    return versions


def precision(device: torch.device) -> dict[str, Any]:
    """The training dtype, autocast (AMP) and TF32 settings in effect for ``device``."""
    cuda = device.type == "cuda"
    return {"dtype": str(torch.get_default_dtype()).removeprefix("torch."), "amp": None,
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32) if cuda else None}


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def training_provenance(device: torch.device, world_size: int, backend: str | None) -> dict[str, Any]:
    """The provenance record of a training run (one per sidecar)."""
    return {"world_size": world_size, "backend": backend, "device": str(device),
            "device_name": device_description(device), **precision(device), "versions": library_versions(),
            "git_commit": git_commit()}
