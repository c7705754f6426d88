"""The RoME switches through the command line: each trains, is saved in the run's config and rebuilds the model it
names; inference-time gating variants are stored as their own leaderboard rows."""

import json
from pathlib import Path

import pytest
import torch

from rome_bench.data import load_dataset
from rome_bench.evaluation.runner import load_run
from rome_bench.models.gates import gating_modules
from rome_bench.models.rome import AdapterExpertMixture, FFNExpertMixture
from tests.test_cli import TINY, assert_one_line_error

ONE_STEP = [*TINY, "--train-size", "16", "--batch-size", "16"]


def load(run: Path):
    data = load_dataset("synthetic", "test", None)
    return load_run(run, data.info, torch.device("cpu"))


@pytest.mark.parametrize("switches,expected", [
    (["--experts", "ffn", "--top-k", "2", "--gating", "global", "--routing-loss", "load-balance"],
     {"expert_type": "ffn", "targets": ["mlp"], "gating": "global", "routing_loss": "load-balance", "top_k": 2}),
    (["--set", "model.backbone=wrn_micro", "--div-distance", "wasserstein1", "--div-projection", "none", "--gating",
      "dual-inverted"],
     {"div_distance": "wasserstein1", "div_projection": "none", "gating": "dual-inverted"}),
    (["--experts", "adapter", "--rank", "3", "--expert-layers", "qkv,fc2", "--gating", "local"],
     {"expert_type": "adapter", "rank": 3, "targets": ["qkv", "fc2"], "gating": "local"}),
], ids=["ffn", "wrn", "adapter"])
def test_every_switch_trains_and_is_saved_with_the_run(cli_main, tmp_path, switches, expected):
    run = tmp_path / "run"
    result = cli_main("train", "--method", "rome+max", *ONE_STEP, *switches, "--out", str(run))
    assert result.returncode == 0, result.stderr
    saved = json.loads((run / "config.json").read_text())["model"]["options"]
    assert {key: saved[key] for key in expected} == expected
    model = load(run).model
    if expected.get("expert_type") == "ffn":
        assert any(isinstance(module, FFNExpertMixture) and module.top_k == expected["top_k"]
                   for module in model.modules())
    if expected.get("expert_type") == "adapter":
        adapters = [module for module in model.modules() if isinstance(module, AdapterExpertMixture)]
        assert len(adapters) == 2 * len(model.backbone.blocks)  # qkv and fc2 in every block
        assert all(adapter.rank == expected["rank"] for adapter in adapters)
    assert all(gate.gating == saved["gating"] for gate in gating_modules(model))
    if "wrn_micro" in switches:
        assert type(model.backbone).__name__ == "WideResNet"


@pytest.mark.parametrize("flags,needle", [
    (["--method", "max", "--gating", "local"], "--gating sets model.options.gating, which family 'plain'"),
    (["--method", "rome+max", "--gating", "dual-cls", "--set", "model.backbone=wrn_micro"], "CLS token"),
    (["--method", "rome+max", "--routing-loss", "gate-classification"], "needs model.options.num_experts = 3"),
    (["--method", "rome+max", "--expert-layers", "qkv,attn"], "model.options.targets must be"),
    (["--method", "rome+max", "--div-distance", "l3"], "(model.options.div_distance): choose one of"),
])
def test_bad_switches_fail_with_one_line(cli_main, tmp_path, flags, needle):
    result = cli_main("train", *ONE_STEP, *flags, "--out", str(tmp_path / "x"))
    assert_one_line_error(result, needle)


def test_inference_variants_are_their_own_leaderboard_rows(cli_main, tmp_path):
    run = tmp_path / "demo"
    assert cli_main("train", "--method", "rome+max", *ONE_STEP, "--out", str(run)).returncode == 0
    store = tmp_path / "results.sqlite"
    for variant in (None, "inverse", "removed", "random"):
        extra = ["--gating-variant", variant] if variant else []
        result = cli_main("eval", "--run", str(run), "--suite", "seen-pgd", "--n-examples", "8", "--store",
                            str(store), "--no-progress", *extra)
        assert result.returncode == 0, result.stderr
    fixed = cli_main("eval", "--run", str(run), "--suite", "seen-pgd", "--n-examples", "8", "--store", str(store),
                     "--no-progress", "--route-to-expert", "all")
    assert fixed.returncode == 0, fixed.stderr
    board = json.loads(cli_main("leaderboard", "--suite", "seen-pgd", "--store", str(store), "--format",
                                  "json").stdout)
    labels = sorted(row["label"] for row in board["rows"])
    assert labels == ["rome+max (demo)", *(f"rome+max (demo) [expert {k}]" for k in range(4)),
                      "rome+max (demo) [experts removed]", "rome+max (demo) [inverse gating]",
                      "rome+max (demo) [random gating]"]
    out_of_range = cli_main("eval", "--run", str(run), "--suite", "seen-pgd", "--n-examples", "8", "--store",
                            str(store), "--no-progress", "--route-to-expert", "4")
    assert_one_line_error(out_of_range, "--route-to-expert takes an expert index 0..3")
    plain = cli_main("train", "--method", "max", *ONE_STEP, "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    refused = cli_main("eval", "--run", str(tmp_path / "plain"), "--suite", "seen-pgd", "--n-examples", "8",
                         "--store", str(store), "--no-progress", "--gating-variant", "inverse")
    assert_one_line_error(refused, "needs a model with experts")
