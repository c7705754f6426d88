"""Stored runs keep their model hashes when the config layout changes (their results are filed under them).

The committed reference runs were written before RoME's settings moved from ``model.rome`` to ``model.options``;
their hashes below were printed by the code before that move (``load_run(...).model_hash``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rome_bench.checkpoint import read_run_config, upgrade_stored_config
from rome_bench.data import CIFAR10_INFO, SYNTHETIC_INFO
from rome_bench.evaluation.runner import load_run
from rome_bench.models import build_family, model_identity

REFERENCE_MODELS = Path(__file__).parent.parent / "rome_bench" / "references" / "reference" / "models"
HASHES_BEFORE_THE_MOVE = {
    "cifar10-cpu-max": "db2680f16d18d98d16bd336b397f715718c0e6d621530090980a61333a2aa6e5",
    "cifar10-cpu-rome-max": "e30dd94346d2e9f05a3f4f50181e5fdc3bb9808032ea2a1df87909476aab1d02",
    "cifar10-smoke-rome-max": "9f5bb6630b80e80ef832242c5631a708f7877146625796077a0d3a43ccef2a11",
    "synthetic-micro-max": "a921b1ab1b9120ae1bbc137c8b9d556885ca6e14cbac9480bcfdbd54ed807c97",
}


@pytest.mark.parametrize("name", sorted(HASHES_BEFORE_THE_MOVE))
def test_committed_reference_runs_keep_their_model_hashes(name):
    run = REFERENCE_MODELS / name
    assert "rome" in json.loads((run / "config.json").read_text())["model"]  # stored in the old layout
    info = SYNTHETIC_INFO if read_run_config(run).data.dataset == "synthetic" else CIFAR10_INFO
    assert load_run(run, info, torch.device("cpu")).model_hash == HASHES_BEFORE_THE_MOVE[name]


def test_an_old_rome_section_becomes_the_rome_familys_options():
    old = json.loads((REFERENCE_MODELS / "cifar10-cpu-rome-max" / "config.json").read_text())
    upgraded = upgrade_stored_config(old)["model"]
    assert "rome" not in upgraded and upgraded["options"]["targets"] == old["model"]["rome"]["targets"]
    config = read_run_config(REFERENCE_MODELS / "cifar10-cpu-rome-max")
    assert build_family(config.model).options.rank == old["model"]["rome"]["rank"]
    assert config.model.legacy_identity == {}


def test_another_familys_old_rome_section_is_kept_for_its_hash_only():
    config = read_run_config(REFERENCE_MODELS / "cifar10-cpu-max")
    assert config.model.family == "plain" and config.model.options == {}
    assert config.model.legacy_identity["rome"]["targets"] == ["conv1", "conv2"]
    assert '"rome"' in model_identity(config.model)
    config.model.legacy_identity = {}
    assert '"rome"' not in model_identity(config.model)  # a new plain run's identity names no RoME setting


def test_the_old_lambda_div_name_is_upgraded():
    stored = {"model": {"family": "rome", "rome": {"lambda_div": 0.3}}}
    options = upgrade_stored_config(stored)["model"]["options"]
    assert options["routing_weight"] == 0.3 and "lambda_div" not in options
