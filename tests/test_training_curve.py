"""Training cost in run metadata and on the leaderboard; --eval-every training curves and their plot."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.checkpoint import read_training_curve
from rome_bench.presets import preset
from rome_bench.training.overrides import resolve_config
from rome_bench.training.trainer import Trainer
from tests.test_training import Killed, kill_at

TINY = ["model.backbone=vit_micro", "data.train_size=48", "train.batch_size=16", "train.epochs=2",
        "train.checkpoint_every=2", "threats.train_steps.l1=1", "threats.train_steps.l2=1",
        "threats.train_steps.linf=1", "train.method=max", "train.eval_examples=12"]


def tiny(*extra: str):
    return resolve_config(preset("smoke"), [*TINY, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 6-step run without and with a training curve every 2 steps."""
    root = tmp_path_factory.mktemp("curve")
    plain = Trainer(tiny(), root / "plain", progress=False).fit()
    curved = Trainer(tiny("train.eval_every=2"), root / "curved", progress=False).fit()
    return plain, curved


def test_a_training_curve_changes_nothing_about_the_trained_weights(runs):
    plain, curved = (load_file(path.with_suffix(".safetensors")) for path in runs)
    assert all(torch.equal(plain[k], curved[k]) for k in plain)


def test_the_curve_holds_one_record_per_interval_and_union_is_below_every_column(runs):
    records = read_training_curve(runs[1].parent)
    assert [record["step"] for record in records] == [2, 4, 6]
    times = [record["wall_seconds"] for record in records]
    assert times == sorted(times) and times[0] > 0
    for record in records:
        accuracy = record["accuracy"]
        assert set(accuracy) == {"nat", "l1", "l2", "linf", "union"} and record["n"] == 12
        assert all(accuracy["union"] <= accuracy[c] <= accuracy["nat"] for c in ("l1", "l2", "linf"))


def test_the_sidecar_records_the_training_cost(runs):
    cost = json.loads(runs[0].read_text())["train_cost"]
    # 6 MAX steps on 16 images: three one-step PGD attacks (a forward with grad each, on 16 images), the update's
    # forward on the 3×16 adversarial images, and the clean-accuracy forward without grad (16 images).
    assert cost["backward_images"] == 6 * (3 * 16 + 3 * 16), cost
    assert cost["forward_images"] == cost["backward_images"] + 6 * 16, cost
    assert cost["wall_seconds"] > 0 and cost["device"] == "cpu"


def test_a_resumed_run_keeps_one_curve_record_per_step(tmp_path):
    with pytest.raises(Killed):  # dies after the record at step 4 and the checkpoint at step 4
        Trainer(tiny("train.eval_every=2"), tmp_path / "run", progress=False).fit(on_step=kill_at(5))
    Trainer(tiny("train.eval_every=2"), tmp_path / "run", progress=False).fit(resume=True)
    assert [record["step"] for record in read_training_curve(tmp_path / "run")] == [2, 4, 6]


def test_plot_training_and_leaderboard_costs_from_the_command_line(runs, cli_main, tmp_path):
    figure = tmp_path / "curves.png"
    result = cli_main("plot", "training", "--run", str(runs[1].parent), "--out", str(figure))
    assert result.returncode == 0, result.stderr
    assert figure.read_bytes().startswith(b"\x89PNG") and "union" in result.stdout
    missing = cli_main("plot", "training", "--run", str(runs[0].parent), "--out", str(tmp_path / "x.png"))
    assert missing.returncode == 2 and "--eval-every" in missing.stderr
    store = tmp_path / "s.sqlite"
    evaluated = cli_main("eval", "--run", str(runs[0].parent), "--suite", "seen-pgd", "--n-examples", "4",
                         "--store", str(store), "--no-progress")
    assert evaluated.returncode == 0, evaluated.stderr
    board = cli_main("leaderboard", "--suite", "seen-pgd", "--store", str(store), "--costs")
    assert "Train cost" in board.stdout and " min cpu, " in board.stdout
    csv = cli_main("leaderboard", "--suite", "seen-pgd", "--store", str(store), "--costs", "--format", "csv")
    header, row = csv.stdout.splitlines()[:2]
    assert "train_backward_images" in header.split(",") and ",cpu," in row
