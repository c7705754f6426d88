"""Hostile and careless input: every case is one line on stderr, exit code 2, and nothing written or changed.

Each case names the input a user could give and a fragment of the one line it must print (issue: no NaN result
stored as a number, no traceback, no code run from data).
"""

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.errors import TrainingError
from rome_bench.training import trainer as trainer_module
from rome_bench.training.trainer import Trainer
from tests.test_cli import TINY, assert_one_line_error
from tests.test_training import tiny_config


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: what must be byte-identical before and after a refused command."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(("flags", "needle"), [
    (["--set", "train.lr=Infinity"], "train.lr must be a finite number"),
    (["--set", "train.lr=NaN"], "train.lr must be a finite number"),
    (["--lr", "1e30"], "train.lr must be > 0 and <= 10"),
    (["--set", "threats.eps.l2=Infinity"], "threats.eps.l2 must be a finite number"),
    (["--eps-linf", "nan"], "threats.eps.linf must be a number, got 'nan'"),
    (["--set", "model.options.beta_s=-Infinity"], "model.options.beta_s must be a finite number"),
    (["--epochs", "100000000000000000000000"], "train.epochs must be between 1 and 10000"),
    (["--batch-size", "10000000"], "train.batch_size must be between 1 and 1000000"),
    (["--seed", "-3"], "train.seed must be between 0 and 2147483647"),
    (["--set", "threats.train_steps.l1=1000000"], "threats.train_steps values must be whole numbers <= 100000"),
    (["--set", "train.decay_floor=2"], "train.final_floor <= train.decay_floor must lie in [0, 1]"),
    (["--num-experts", "5000"], "model.options.num_experts must be between 1 and 1024"),
    (["--set", "model=3"], "config field 'model' is a section"),
    (["--set", "data.dataset=5"], "config field 'data.dataset' must be a text value"),
    (["--set", "threats.eps=[1, 2]"], "config field 'threats.eps' must be a table of l1, l2, linf values"),
])
def test_train_refuses_numbers_no_run_can_use(cli_main, tmp_path, flags, needle):
    result = cli_main("train", "--method", "rome+max", *TINY, *flags, "--out", str(tmp_path / "run"))
    assert_one_line_error(result, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scales", ["nan", "inf", "0.5,inf", "-1", "1e9"])
def test_eps_scale_must_be_finite_and_positive(cli_main, tmp_path, scales):
    result = cli_main("eval", "--model-file", "torch.nn:Identity", "--preset", "smoke", "--eps-scale", scales,
                      "--store", str(tmp_path / "s.sqlite"))
    assert_one_line_error(result, "--eps-scale takes distinct numbers in (0, 100]")
    assert not (tmp_path / "s.sqlite").exists()


MODELS = {
    "seven_logits": ("return self.linear(x.flatten(1))[:, :7]", "logits of shape (8, 7) for 8 images"),
    "nan_logits": ("return self.linear(x.flatten(1)) * float('nan')", "NaN or infinite logits"),
    "scalar": ("return self.linear(x.flatten(1)).sum()", "logits of shape () for 8 images"),
    "tuple": ("return self.linear(x.flatten(1)), None", "returns a tuple"),
    "wrong_size": ("return self.linear(torch.nn.functional.interpolate(x, size=224).flatten(1))",
                   "the model fails on (8, 3, 32, 32) images"),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_model_with_unusable_outputs_gets_no_stored_row(cli_main, tmp_path, kind):
    body, needle = MODELS[kind]
    module = tmp_path / "net.py"
    module.write_text("import torch\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                      "        super().__init__()\n        self.linear = torch.nn.Linear(3 * 32 * 32, 10)\n\n"
                      f"    def forward(self, x):\n        {body}\n")
    store = tmp_path / "s.sqlite"
    result = cli_main("eval", "--model-file", f"{module}:Net", "--preset", "smoke", "--suite", "seen-pgd",
                      "--n-examples", "8", "--store", str(store), "--no-progress")
    assert_one_line_error(result, needle)
    leaderboard = cli_main("leaderboard", "--suite", "seen-pgd", "--store", str(store)) if store.exists() else None
    assert leaderboard is None or "external (net:Net)" not in leaderboard.stdout


def test_a_loss_that_becomes_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Poisoned weights after step 4 (a checkpoint) make step 5's loss NaN: the run stops there, nothing NaN saved."""
    run_dir = tmp_path / "run"
    trained = []
    build_optimizer = trainer_module.build_optimizer
    monkeypatch.setattr(trainer_module, "build_optimizer", lambda parameters, config: (
        trained.extend(parameters), build_optimizer(parameters, config))[1])
    written = {}

    def poison(step: int) -> None:
        if step == 4:
            written.update(tree_digest(run_dir))
            for parameter in trained:
                parameter.data.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"training loss became nan at step 5 .* the last good checkpoint .*"
                                            r"step-00000004\.json is kept"):
        Trainer(tiny_config("max"), run_dir, progress=False).fit(on_step=poison)
    assert tree_digest(run_dir) == written, "nothing was written after the loss became NaN"
    assert not (run_dir / "model.json").exists()
    last = load_file(run_dir / "checkpoints" / "step-00000004.safetensors")
    assert all(torch.isfinite(tensor).all() for name, tensor in last.items() if name.startswith("model."))


@pytest.mark.parametrize(("name", "params"), [
    ("pgd-linf", {"eps": -1.0}), ("pgd-l2", {"eps": 0.5, "steps": 0}), ("patch", {"placement": "corner"}),
    ("patch", {"size": 0}), ("sparsefool-l0", {"steps": 0}), ("fog", {"eps": -1.0}), ("snow", {"kernel_size": 4}),
    ("gabor", {"kernel_size": 2}), ("elastic", {"eps": 0.0}), ("jpeg-linf", {"quality": 100}),
    ("stadv", {"bound": -0.1}), ("recoloradv", {"colour_space": "cmyk"}),
])
def test_every_threat_refuses_bad_settings_with_a_rome_bench_error(name, params):
    """A threat built from the Python API or a plugin config fails as the CLI reports it: one RomeBenchError line."""
    from rome_bench.errors import RomeBenchError
    from rome_bench.threats import THREATS

    with pytest.raises(RomeBenchError, match=name.split("-")[0] if name != "sparsefool-l0" else "sparsefool"):
        THREATS.get(name)(**params)


@pytest.fixture
def empty_store(tmp_path) -> Path:
    from rome_bench.evaluation.store import ResultStore

    with ResultStore(tmp_path / "empty.sqlite") as store:
        return store.path


def test_unusable_stores_and_output_paths_are_one_line(cli_main, tmp_path, empty_store):
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("these are my notes, not a database\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    before = tree_digest(tmp_path)
    cases = [
        (["leaderboard", "--store", str(not_a_database)], f"results store {not_a_database}: file is not a database"),
        (["leaderboard", "--store", str(folder)], f"results store {folder}: unable to open database file"),
        (["export", "--store", str(not_a_database), "--out", str(tmp_path / "m.csv")], "file is not a database"),
        (["leaderboard", "--store", str(empty_store), "--out", str(folder)], f"cannot use {folder}: Is a directory"),
        (["export", "--store", str(empty_store), "--out", str(folder)], f"cannot use {folder}: Is a directory"),
        (["leaderboard", "--store", str(empty_store), "--out", str(not_a_database / "x.md")],
         f"cannot use {not_a_database}: File exists"),
        (["leaderboard", "--store", str(empty_store), "--out", "/proc/rome-bench-board.md"],
         "cannot use /proc/rome-bench-board.md:"),  # the file asked for, not our temporary file
    ]
    for args, needle in cases:
        assert_one_line_error(cli_main(*args), needle)
    assert tree_digest(tmp_path) == before, "nothing written, nothing changed, no partial file left"


def test_eval_refuses_an_unknown_device(cli_main, tmp_path):
    result = cli_main("eval", "--model-file", "torch.nn:Identity", "--preset", "smoke", "--device", "gpu",
                      "--store", str(tmp_path / "s.sqlite"))
    assert_one_line_error(result, "unknown device 'gpu'; use auto, cpu, cuda or cuda:N")
    assert not (tmp_path / "s.sqlite").exists()


def test_a_truncated_archive_is_a_data_error_not_an_interruption(cli_main, tmp_path):
    import tarfile

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(bytes(range(256)) * 4000)  # ~1 MB that gzip cannot shrink much
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    result = cli_main("eval", "--model-file", "torch.nn:Identity", "--preset", "cifar10", "--data-dir", str(archive),
                      "--store", str(tmp_path / "s.sqlite"))
    assert result.returncode == 2, "a truncated archive is not a Ctrl-C (exit 130)"
    assert_one_line_error(result, f"cannot extract {archive}", "copy or download it again")


def test_two_models_from_one_file_get_their_own_rows(cli_main, tmp_path):
    module = tmp_path / "zoo.py"
    module.write_text("import torch\n\nclass Small(torch.nn.Module):\n    def __init__(self):\n"
                      "        super().__init__()\n        self.linear = torch.nn.Linear(3 * 32 * 32, 10)\n\n"
                      "    def forward(self, x):\n        return self.linear(x.flatten(1))\n\n\n"
                      "class Other(Small):\n    def forward(self, x):\n        return -self.linear(x.flatten(1))\n")
    store = tmp_path / "s.sqlite"
    for name in ("Small", "Other"):
        result = cli_main("eval", "--model-file", f"{module}:{name}", "--preset", "smoke", "--suite", "seen-pgd",
                          "--n-examples", "4", "--store", str(store), "--no-progress")
        assert result.returncode == 0, result.stderr
    board = cli_main("leaderboard", "--suite", "seen-pgd", "--store", str(store)).stdout
    assert "| external (zoo:Small) |" in board and "| external (zoo:Other) |" in board


def test_a_run_whose_weights_do_not_fit_its_config_names_the_keys(cli_main, tmp_path):
    import json

    run = tmp_path / "run"
    Trainer(tiny_config("max"), run, progress=False).fit()
    config = json.loads((run / "config.json").read_text())
    config["model"]["backbone"] = "vit_smoke"  # another width and depth than the weights were trained with
    (run / "config.json").write_text(json.dumps(config))
    before = tree_digest(run)
    result = cli_main("eval", "--run", str(run), "--suite", "seen-pgd", "--n-examples", "4",
                      "--store", str(tmp_path / "s.sqlite"))
    assert_one_line_error(result, "do not fit the model its config.json describes", "missing (e.g.",
                          "wrong-shaped (e.g.")
    assert tree_digest(run) == before and not (tmp_path / "s.sqlite").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from tests.test_training import tiny_config

    run = tmp_path_factory.mktemp("json") / "run"
    Trainer(tiny_config("max"), run, progress=False).fit()
    return run


JSON_CASES = {  # file, what is written into it, a fragment of the one line
    "config binary": ("config.json", b"\x89PNG\r\n\x1a\n\x00\x00", "(run config) is not text (byte 0 is not UTF-8)"),
    "config list": ("config.json", b"[1, 2]", "(run config): the file must be an object, got [1, 2]"),
    "config section": ("config.json", b'{"model": 1, "data": {}, "threats": {}, "train": {}}',
                       "(run config): model must be an object, got 1"),
    "config field type": ("config.json", None, "config field 'train.epochs' must be an integer, got '3'"),
    "sidecar type": ("model.json", b'{"tensors_file": 7, "tensors_sha256": "x"}',
                     "(checkpoint sidecar): tensors_file must be text, got 7"),
    "sidecar missing": ("model.json", b'{"step": 1}', "(checkpoint sidecar): the file lacks the field 'tensors_file'"),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_a_run_file_of_the_wrong_shape_is_one_line(cli_main, tmp_path, finished_run, case):
    import json
    import shutil

    name, content, needle = JSON_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if content is None:  # a well-formed config with one wrongly typed field
        config = json.loads((run / name).read_text())
        config["train"]["epochs"] = "3"
        content = json.dumps(config).encode()
    (run / name).write_bytes(content)
    before = tree_digest(run)
    result = cli_main("eval", "--run", str(run), "--suite", "seen-pgd", "--n-examples", "4",
                      "--store", str(tmp_path / "s.sqlite"))
    assert_one_line_error(result, str(run / name), needle)
    assert tree_digest(run) == before and not (tmp_path / "s.sqlite").exists()


REFERENCE_CASES = {
    "leaderboard": [
        ("[]", "(paper reference): the file must be an object, got []"),
        ('{"name": "x", "source": "y", "columns": ["nat"], "rows": [{"method": "m"}]}',
         "(paper reference): rows[0] lacks the field 'dataset'"),
        ('{"name": "x", "source": "y", "columns": ["nat"], "rows": [{"method": "m", "dataset": "d", "nat": "high"}]}',
         "m's 'nat' must be a percentage in [0, 100], got 'high'"),
        ('{"name": "x", "source": "y", "columns": "nat", "rows": []}', 'columns must be a list, got "nat"'),
    ],
    "check": [
        ('{"checks": {}}', "(regression reference): checks must be a list, got {}"),
        ('{"checks": [{"name": "c", "run": "r", "suite": "seen", "dataset": "synthetic", "n_examples": "100"}]}',
         "checks[0].n_examples must be an integer, got \"100\""),
        ('{"checks": [{"name": "c", "run": "r", "suite": "seen", "dataset": "synthetic", "n_examples": 100, '
         '"correct": {"nat": 1.5}}]}', "checks[0].correct.nat must be an integer, got 1.5"),
        ("{nope", "(regression reference) is not valid JSON"),
    ],
}


@pytest.mark.parametrize(("command", "index"), [(c, i) for c, cases in REFERENCE_CASES.items()
                                                for i in range(len(cases))])
def test_a_reference_file_of_the_wrong_shape_is_one_line(cli_main, tmp_path, empty_store, command, index):
    content, needle = REFERENCE_CASES[command][index]
    reference = tmp_path / "reference.json"
    reference.write_text(content)
    args = (["leaderboard", "--store", str(empty_store), "--reference", str(reference)] if command == "leaderboard"
            else ["check", "--reference", str(reference)])
    assert_one_line_error(cli_main(*args), str(reference), needle)


@pytest.mark.parametrize("content", ["pickled-object", "garbage"])
def test_unreadable_pt_weights_are_one_plain_line(cli_main, tmp_path, content):
    """torch's own refusal is paragraphs long with terminal escapes: the user gets one plain line instead."""
    module = tmp_path / "net.py"
    module.write_text("from torch import nn\n\nclass Net(nn.Sequential):\n"
                      "    def __init__(self):\n        super().__init__(nn.Flatten(), nn.Linear(3072, 10))\n")
    weights = tmp_path / "w.pt"
    if content == "garbage":
        weights.write_bytes(b"not a torch file" * 8)
    else:
        torch.save({"0.weight": torch.zeros(1), "note": Path("x")}, weights)  # an object only unpickling can build
    result = cli_main("eval", "--model-file", f"{module}:Net", "--weights", str(weights), "--preset", "smoke",
                      "--suite", "seen-pgd", "--n-examples", "4", "--store", str(tmp_path / "s.sqlite"),
                      "--no-progress")
    assert_one_line_error(result, "not a torch file of plain tensors", "torch.save(model.state_dict(), path)")
    assert "\x1b" not in result.stderr and not (tmp_path / "s.sqlite").exists()
