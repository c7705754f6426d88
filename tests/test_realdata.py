"""Real CIFAR-10: train smoke on a subset, evaluate, leaderboard. Runs only when ROME_BENCH_DATA is set."""

import json
import os
from pathlib import Path

import pytest

from tests.test_cli import rome_bench

pytestmark = [pytest.mark.realdata, pytest.mark.skipif(not os.environ.get("ROME_BENCH_DATA"),
                                                       reason="ROME_BENCH_DATA is not set")]


def test_smoke_on_a_cifar10_subset_end_to_end(tmp_path):
    run, store = tmp_path / "cifar-demo", tmp_path / "results.sqlite"
    train = rome_bench("train", "--method", "rome+max", "--preset", "smoke", "--dataset", "cifar10",
                       "--train-size", "256", "--epochs", "1", "--set", "threats.train_steps.l1=2", "--set",
                       "threats.train_steps.l2=2", "--set", "threats.train_steps.linf=1", "--out", str(run),
                       "--no-progress")
    assert train.returncode == 0, train.stderr
    sidecar = json.loads((run / "model.json").read_text())
    assert sidecar["dataset"] == "cifar10" and sidecar["num_classes"] == 10
    evaluation = rome_bench("eval", "--run", str(run), "--suite", "seen-pgd", "--n-examples", "32", "--store",
                            str(store), "--no-progress")
    assert evaluation.returncode == 0, evaluation.stderr
    board = rome_bench("leaderboard", "--store", str(store), "--dataset", "cifar10", "--suite", "seen-pgd",
                       "--reference", "rome-paper-table1")
    assert board.returncode == 0, board.stderr
    assert any(line.startswith("| rome+max (cifar-demo) | 32 |") for line in board.stdout.splitlines())
    assert "reported by the paper" in board.stdout


def test_pyautoattacks_shipped_resnet18_is_accurate_and_at_zero_under_autoattack(tmp_path):
    """A real CIFAR-10 model none of us trained (pyautoattack's examples/model_test.pt), through --model-file."""
    pyautoattack = pytest.importorskip("pyautoattack")
    examples = Path(pyautoattack.__file__).parent / "examples"
    if not (examples / "model_test.pt").is_file():
        pytest.skip("this pyautoattack build does not ship examples/model_test.pt")
    store = tmp_path / "results.sqlite"
    evaluation = rome_bench("eval", "--model-file", f"{examples / 'resnet.py'}:ResNet18", "--weights",
                            str(examples / "model_test.pt"), "--preset", "cifar10", "--suite", "seen",
                            "--n-examples", "4", "--batch-size", "4", "--store", str(store), "--no-progress")
    assert evaluation.returncode == 0, evaluation.stderr
    board = json.loads(rome_bench("leaderboard", "--store", str(store), "--format", "json").stdout)
    accuracy = board["rows"][0]["accuracy"]
    assert accuracy["nat"] >= 0.8  # pyautoattack reports ~94% clean accuracy for it
    assert accuracy["l1"] == accuracy["l2"] == accuracy["linf"] == accuracy["union"] == 0.0
