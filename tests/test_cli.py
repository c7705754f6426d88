"""The command line end to end, through the installed entry point, on the synthetic dataset."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TINY = ["--preset", "smoke", "--set", "model.backbone=vit_micro", "--train-size", "128", "--epochs", "1",
        "--set", "threats.train_steps.l1=2", "--set", "threats.train_steps.l2=2", "--set",
        "threats.train_steps.linf=1", "--no-progress"]


def rome_bench(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rome_bench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "demo"
    result = rome_bench("train", "--method", "rome+max", *TINY, "--out", str(run))
    assert result.returncode == 0, result.stderr
    return run


def test_train_eval_leaderboard_end_to_end(cli_main, trained_run, tmp_path):
    store = tmp_path / "results.sqlite"
    config = json.loads((trained_run / "config.json").read_text())
    assert (config["train"]["recipe"], config["model"]["family"]) == ("max", "rome")
    assert config["data"]["dataset"] == "synthetic"
    result = cli_main("eval", "--run", str(trained_run), "--suite", "seen", "--n-examples", "10", "--store",
                        str(store), "--no-progress")
    assert result.returncode == 0, result.stderr
    board = cli_main("leaderboard", "--suite", "seen", "--store", str(store))
    assert board.returncode == 0, board.stderr
    row = next(line for line in board.stdout.splitlines() if line.startswith("| rome+max (demo)"))
    assert "| 10 |" in row
    as_json = json.loads(cli_main("leaderboard", "--store", str(store), "--format", "json").stdout)
    values = as_json["rows"][0]["accuracy"]
    assert values["union"] <= min(values["l1"], values["l2"], values["linf"])


def test_unknown_method_fails_cleanly_and_writes_nothing(cli_main, tmp_path):
    result = cli_main("train", "--method", "rome+maxx", *TINY, "--out", str(tmp_path / "x"))
    assert_one_line_error(result, "unknown method 'rome+maxx'", "did you mean 'rome+max'")
    assert not (tmp_path / "x").exists()


def test_unknown_suite_fails_cleanly(cli_main, trained_run, tmp_path):
    result = cli_main("eval", "--run", str(trained_run), "--suite", "sen", "--store", str(tmp_path / "s.db"))
    assert_one_line_error(result, "unknown suites 'sen'", "did you mean 'seen'")
    assert not (tmp_path / "s.db").exists()


def test_unknown_threat_fails_cleanly(cli_main, trained_run, tmp_path):
    result = cli_main("eval", "--run", str(trained_run), "--threat", "pgd-lnf", "--store", str(tmp_path / "s.db"))
    assert_one_line_error(result, "unknown threats 'pgd-lnf'", "did you mean 'pgd-linf'")
    assert not (tmp_path / "s.db").exists()


def test_missing_data_fails_cleanly_and_writes_nothing(cli_main, tmp_path):
    result = cli_main("train", *TINY, "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"), "--out",
                        str(tmp_path / "x"))
    assert_one_line_error(result, "nowhere")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--epochs", "0"], "train.epochs must be between 1 and 10000"),
    (["--set", "train.lr=fast"], "train.lr must be a number"),
    (["--set", "train.nonsense=1"], "unknown config field 'train.nonsense'"),
    (["--preset", "tiny"], "unknown preset 'tiny'"),
    (["--epochs", "many"], "Invalid value for '--epochs'"),
    (["--no-such-flag"], "No such option: --no-such-flag"),
])
def test_bad_flag_values_fail_cleanly(cli_main, tmp_path, flags, needle):
    result = cli_main("train", *TINY, *flags, "--out", str(tmp_path / "x"))
    assert_one_line_error(result, needle)
    assert not (tmp_path / "x").exists()


def test_corrupt_checkpoint_fails_cleanly(cli_main, trained_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.json", "model.safetensors"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    result = cli_main("eval", "--run", str(broken), "--store", str(tmp_path / "s.db"))
    assert_one_line_error(result, "sha256")


def test_existing_run_needs_resume_or_force(cli_main, trained_run):
    before = (trained_run / "model.safetensors").read_bytes()
    result = cli_main("train", "--method", "rome+max", *TINY, "--out", str(trained_run))
    assert_one_line_error(result, "--resume", "--force")
    assert (trained_run / "model.safetensors").read_bytes() == before


def test_list_shows_registered_entries(cli_main):
    result = cli_main("list", "threats")
    assert result.returncode == 0
    assert "pgd-l1" in result.stdout and "tag=seen" in result.stdout


# Runs `rome-bench train …` in a child process that sends itself SIGKILL right after training step 5 (the newest
# checkpoint is step 4's): a real kill -9, at the same point on every machine, so the test never races the run.
_KILLED_AT_STEP_5 = """
import os, signal, sys
from rome_bench.training import trainer
fit = trainer.Trainer.fit
def fit_then_die(self, resume=False, force=False, on_step=None):
    return fit(self, resume, force, on_step=lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 5 else None)
trainer.Trainer.fit = fit_then_die
from rome_bench.cli import main
sys.argv = ["rome-bench", *sys.argv[1:]]
main()
"""


def test_sigkill_mid_run_then_resume_ends_where_an_unbroken_run_ends(tmp_path):
    """A real kill -9 of the training process, then `--resume` with only --out: same final weights."""
    args = ["--method", "rome+random", *TINY, "--train-size", "96", "--batch-size", "16", "--epochs", "3",
            "--checkpoint-every", "2"]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    assert rome_bench("train", *args, "--out", str(unbroken)).returncode == 0
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_STEP_5, "train", *args, "--out", str(broken)],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (broken / "model.json").exists()
    assert sorted(path.name for path in (broken / "checkpoints").glob("*.json")) == ["step-00000002.json",
                                                                                      "step-00000004.json"]
    resumed = rome_bench("train", "--out", str(broken), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = load_file(unbroken / "model.safetensors"), load_file(broken / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_check_passes_on_its_own_numbers_and_fails_beyond_re_measurement_noise(cli_main, trained_run, tmp_path):
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"name": "test", "checks": [
        {"name": "tiny", "run": str(trained_run), "suite": "seen-pgd", "dataset": "synthetic", "n_examples": 40}]}))
    updated = cli_main("check", "--reference", str(reference), "--update", "--no-progress")
    assert updated.returncode == 0, updated.stderr
    entry = json.loads(reference.read_text())["checks"][0]
    assert entry["totals"]["union"] == 40 and set(entry["correct"]) >= {"nat", "l1", "l2", "linf", "avg", "union"}
    passed = cli_main("check", "--reference", str(reference), "--no-progress")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "all 6 numbers within tolerance" in passed.stdout
    measured = entry["correct"]["nat"]
    sign = 1 if measured <= 20 else -1  # a reference count that stays inside 0..40
    for shift, expected_code in ((2 * sign, 0), (3 * sign, 1)):  # 40 examples: ±max(2, 0.2) = ±2 examples
        edited = json.loads(reference.read_text())
        edited["checks"][0]["correct"]["nat"] = measured + shift
        reference.write_text(json.dumps(edited))
        result = cli_main("check", "--reference", str(reference), "--no-progress")
        assert result.returncode == expected_code, (shift, result.stdout)
    assert "| tiny | nat |" in result.stdout and "FAIL" in result.stdout


def test_model_file_export_and_latex(cli_main, tmp_path, trained_run):
    module = tmp_path / "net.py"
    module.write_text("import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                      "        super().__init__()\n        self.linear = torch.nn.Linear(3 * 32 * 32, 10)\n\n"
                      "    def forward(self, x):\n"
                      "        return self.linear(x.flatten(1))\n")
    store = tmp_path / "s.sqlite"
    result = cli_main("eval", "--model-file", f"{module}:Net", "--preset", "smoke", "--suite", "seen-pgd",
                        "--n-examples", "16", "--store", str(store), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "external (net:Net)" in result.stdout
    matrix = tmp_path / "matrix.csv"
    assert cli_main("export", "--suite", "seen-pgd", "--store", str(store), "--out", str(matrix)).returncode == 0
    assert len(matrix.read_text().splitlines()) == 17
    tex = cli_main("leaderboard", "--suite", "seen-pgd", "--store", str(store), "--format", "tex")
    assert tex.returncode == 0 and "\\bottomrule" in tex.stdout
    both = cli_main("eval", "--run", str(trained_run), "--model-file", f"{module}:Net")
    assert_one_line_error(both, "exactly one of --run")


def test_costs_in_a_format_without_cost_columns_is_one_clear_error(cli_main, tmp_path):
    """tex follows the paper's tables, which have no cost columns: --costs with it is refused, not ignored."""
    from rome_bench.evaluation.store import ResultStore

    store = tmp_path / "s.sqlite"
    ResultStore(store).close()
    rows = ["--store", str(store), "--reference", "rome-paper-table1"]  # the paper's rows: a table to render
    tex = cli_main("leaderboard", *rows, "--format", "tex", "--costs")
    assert_one_line_error(tex, "--format tex has no cost columns", "drop --costs")
    assert tex.returncode == 2 and tex.stdout == ""
    markdown = cli_main("leaderboard", *rows, "--format", "md", "--costs")
    assert markdown.returncode == 0 and "Eval cost" in markdown.stdout, markdown.stderr


def test_bad_eps_scale_fails_cleanly(cli_main, trained_run, tmp_path):
    result = cli_main("eval", "--run", str(trained_run), "--eps-scale", "0.5,x", "--store", str(tmp_path / "s.db"))
    assert_one_line_error(result, "--eps-scale")
    assert not (tmp_path / "s.db").exists()


def test_unseen_suite_end_to_end_with_union_over_seen_and_unseen(cli_main, trained_run, tmp_path, fake_alexnet):
    store = tmp_path / "results.sqlite"
    for suite in ("seen-apgd", "unseen"):
        result = cli_main("eval", "--run", str(trained_run), "--suite", suite, "--n-examples", "6", "--store",
                            str(store), "--no-progress", "--batch-size", "6")
        assert result.returncode == 0, result.stderr
    as_json = json.loads(cli_main("leaderboard", "--suite", "unseen", "--store", str(store), "--format", "json",
                                    "--reference", "rome-paper-table2").stdout)
    assert as_json["columns"] == ["nat", "corr", "l0", "percep", "ppgd", "lpa", "patch", "stadv", "recoloradv", "gma",
                                  "union", "union-all"]
    measured = next(row for row in as_json["rows"] if row["source"] == "measured")
    values = measured["accuracy"]
    assert set(as_json["columns"]) <= set(values)  # GMA applies: the model has RoME gates
    assert values["union"] <= min(v for c, v in values.items() if c not in ("union", "union-all"))
    assert values["union-all"] <= values["union"]
    reported = [row for row in as_json["rows"] if row["source"] != "measured"]
    assert len(reported) == 17 and reported[0]["accuracy"]["corr"] > 0.7
    detail = cli_main("leaderboard", "--suite", "unseen", "--store", str(store), "--detail")
    assert detail.returncode == 0, detail.stderr
    header = next(line for line in detail.stdout.splitlines() if line.startswith("| Method"))
    for title in ("gaussian noise", "jpeg compression", "Fog", "JPEG-ℓ∞", "GMA", "Union (all)"):
        assert f"| {title} |" in header, header
    matrix = tmp_path / "matrix.csv"
    assert cli_main("export", "--out", str(matrix), "--suite", "unseen", "--store", str(store)).returncode == 0
    assert "corr/fog/5" in matrix.read_text().splitlines()[0]
