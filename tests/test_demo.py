"""``rome-bench demo``: the main job end to end in one command, resumable, and a second call reuses everything."""

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.data import fetch_batch, load_dataset
from rome_bench.demo import plan_demo, run_demo, run_state, time_training_step
from rome_bench.evaluation.store import ResultStore
from rome_bench.training.recipe import Batch
from rome_bench.training.trainer import Trainer, train_step
from tests.test_cli import assert_one_line_error
from tests.test_training import Killed, kill_at

TINY = ["model.backbone=vit_micro", "data.train_size=96", "train.batch_size=32", "train.epochs=1",
        "train.checkpoint_every=1", "threats.train_steps.l1=2", "threats.train_steps.l2=2",
        "threats.train_steps.linf=1", "threats.eval_steps.l1=3", "threats.eval_steps.l2=3",
        "threats.eval_steps.linf=3"]


def tiny_flags() -> list[str]:
    return [flag for assignment in TINY for flag in ("--set", assignment)]


def stored_results(store_path) -> int:
    """Per-example results held for every completed seen-pgd evaluation in the store."""
    with ResultStore(store_path) as store:
        return sum(len(store.correctness(run.model_hash, key, run.dataset))
                   for run in store.suite_runs("seen-pgd") for key in run.threat_keys)


def test_demo_trains_evaluates_and_prints_the_leaderboard_then_reuses_everything(cli_main, tmp_path):
    out = tmp_path / "demo"
    first = cli_main("demo", "--out", str(out), "--n-examples", "16", "--no-progress", *tiny_flags())
    assert first.returncode == 0, first.stderr
    assert "estimated time on this machine: about" in first.stdout
    assert "[1/5] training max" in first.stdout and "[2/5] training rome+max" in first.stdout
    for label in ("max (demo)", "rome+max (demo)"):
        row = next(line for line in first.stdout.splitlines() if line.startswith(f"| {label} |"))
        assert row.split("|")[2].strip() == "16", row
    assert "| Nat | ℓ1 | ℓ2 | ℓ∞ | Avg | Union |" in first.stdout
    assert run_state(out / "max") == run_state(out / "rome+max") == "done"
    results = stored_results(out / "results.sqlite")
    assert results == 2 * 4 * 16, "clean and three threats, 16 examples, two models"

    again = cli_main("demo", "--out", str(out), "--n-examples", "16", "--no-progress", *tiny_flags())
    assert again.returncode == 0, again.stderr
    assert "trained already: reused" in again.stdout and "training max" not in again.stdout
    assert "estimated time on this machine: about 0 s" in again.stdout
    assert stored_results(out / "results.sqlite") == results
    assert [line for line in again.stdout.splitlines() if "(demo) |" in line] == \
        [line for line in first.stdout.splitlines() if "(demo) |" in line]

    changed = cli_main("demo", "--out", str(out), "--n-examples", "16", *tiny_flags(), "--set", "train.lr=0.01")
    assert_one_line_error(changed, "other settings than this demo's")
    assert stored_results(out / "results.sqlite") == results


def test_an_interrupted_demo_resumes_where_an_unbroken_demo_ends(tmp_path):
    unbroken = plan_demo(tmp_path / "unbroken", n_examples=8, overrides=TINY)
    run_demo(unbroken, progress=False, echo=lambda _: None)
    broken = plan_demo(tmp_path / "broken", n_examples=8, overrides=TINY)
    with pytest.raises(Killed):  # killed during the first run's second step, after its first checkpoint
        run_demo(broken, progress=False, echo=lambda _: None, on_step=kill_at(2))
    assert run_state(broken.run_dir("max")) == "resume" and run_state(broken.run_dir("rome+max")) == "new"
    run_demo(broken, progress=False, echo=lambda _: None)
    for method in ("max", "rome+max"):
        expected = load_file(unbroken.run_dir(method) / "model.safetensors")
        actual = load_file(broken.run_dir(method) / "model.safetensors")
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[name], actual[name]) for name in expected), method


@pytest.mark.parametrize(("flags", "needle"), [
    (["--suite", "sen"], "unknown suites 'sen'"),
    (["--n-examples", "0"], "--n-examples must be >= 1"),
    (["--set", "train.epochs=0"], "train.epochs must be between 1 and 10000"),
])
def test_bad_demo_flags_fail_cleanly_and_write_nothing(cli_main, tmp_path, flags, needle):
    result = cli_main("demo", "--out", str(tmp_path / "demo"), *flags)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "demo").exists()


def test_the_demo_times_the_trainers_own_step_with_the_routing_loss(tmp_path):
    """Trainer.setup builds what fit trains with and what the demo times: rome+max's step adds its routing loss."""
    plan = plan_demo(tmp_path / "demo", n_examples=8, overrides=TINY)
    for method, routed in (("max", False), ("rome+max", True)):
        config = plan.configs[method]
        trainer = Trainer(config, plan.run_dir(method), progress=False)
        data = load_dataset(config.data.dataset, "train", config.data.data_dir, size=config.train.batch_size)
        _, optimizer, ctx = trainer.setup(data)
        images, labels = fetch_batch(data.dataset, list(range(len(data.dataset))))
        result = train_step(trainer.recipe, ctx, optimizer, Batch(images, labels, 0, 0))
        assert ("routing" in result.logs) is routed, method
        start_up, step = time_training_step(config, plan.run_dir(method))
        assert start_up > step > 0, "start-up covers set-up and the first step, besides one step"
    assert not plan.out.exists(), "setting up and timing a step writes nothing"
