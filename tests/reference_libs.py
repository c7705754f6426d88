"""Independent reference implementations used only by tests; each importer skips the test when it is absent.

``tox`` installs them without their pinned dependencies (tests/reference-requirements.txt; docs/testing.md).
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch


def perceptual_advex() -> Any:
    """perceptual-advex (Laidlaw et al.): ``perceptual_advex.attacks`` and ``perceptual_advex.perceptual_attacks``.

    It imports ``torchvision.models.utils``, which torchvision removed; the one function it takes from there is
    ``torch.hub.load_state_dict_from_url``, so a shim module provides it.
    """
    if "torchvision.models.utils" not in sys.modules:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        sys.modules["torchvision.models.utils"] = shim
    try:
        import perceptual_advex.attacks
        import perceptual_advex.perceptual_attacks
    except ImportError as error:
        pytest.skip(f"perceptual-advex is not installed ({error}); .ci/run installs it")
    return perceptual_advex


def torchattacks() -> Any:
    """torchattacks (installed with --no-deps: its requests pin would downgrade other packages)."""
    return pytest.importorskip("torchattacks", reason="torchattacks is not installed; .ci/run installs it")
