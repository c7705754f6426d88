"""Data-parallel training (CPU, gloo): a 2-process torchrun run trains the weights one process trains on the same
global batches; only rank 0 writes; a checkpoint resumes on another world size."""

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.checkpoint import TrainingState
from rome_bench.errors import ConfigError
from rome_bench.presets import preset
from rome_bench.training.distributed import Distributed, check_batches, local_slice, rank_seed, torchrun_command
from rome_bench.training.overrides import resolve_config
from rome_bench.training.trainer import Trainer, augment_batch

# RoME with the diversification loss over the global batch's threat groups, and augmentation; training PGD from the
# clean image, so the attacks draw nothing from the per-rank RNG streams. 40 examples in global batches of 16: the
# last one (8) splits 4 + 4; checkpoints at steps 2 and 3 (the epoch's end).
FLAGS = ["--method", "rome+max", "--preset", "smoke", "--set", "model.backbone=vit_micro", "--train-size", "40",
         "--batch-size", "16", "--epochs", "1", "--checkpoint-every", "2", "--set", "threats.train_random_start=false",
         "--set", "threats.train_steps.l1=1", "--set", "threats.train_steps.l2=1", "--set",
         "threats.train_steps.linf=1", "--set", "data.augment=true", "--no-progress"]
RECIPES = {
    # ctx.backward, on top-1 FFN experts (an expert a step leaves unused on one rank, or on all)
    "rome+max": ["--set", "model.options.expert_type=ffn", "--set", "model.options.targets=mlp", "--set",
                 "model.options.top_k=1"],
    # ctx.grads / set_grads: the gradient projection of the global gradients; the pair and S of the global batch.
    # On LoRA experts: top-1 gates get no gradient but the routing loss's, and projecting that onto a natural
    # gradient of pure float noise makes AdamW's first (sign-like) steps differ at the 1e-3 level between any two
    # summation orders.
    "rome+ramp": ["--set", "train.options.pairing_weight=1.0"],
}
WEIGHT_TOLERANCE = 2e-5  # float rounding of the summed gradients, through AdamW (measured: ~2e-6)


def flags_of(method: str) -> list[str]:
    return [*FLAGS[:1], method, *FLAGS[2:], *RECIPES[method]]


def config_of(flags: list[str]):
    """The RunConfig the CLI builds from these flags (the --set ones and the named ones used here)."""
    named = {"--train-size": "data.train_size", "--batch-size": "train.batch_size", "--epochs": "train.epochs",
             "--checkpoint-every": "train.checkpoint_every", "--method": "train.method"}
    assignments, index = [], 0
    while index < len(flags):
        flag = flags[index]
        if flag == "--set":
            assignments.append(flags[index + 1])
        elif flag in named:
            assignments.append(f"{named[flag]}={flags[index + 1]}")
        elif flag in ("--no-progress",):
            index += 1
            continue
        elif flag != "--preset":
            raise AssertionError(flag)
        index += 2
    return resolve_config(preset("smoke"), assignments)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "rome_bench", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)


def max_difference(first: Path, second: Path) -> float:
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.fixture(scope="module", params=list(RECIPES))
def runs(tmp_path_factory, request) -> dict[str, Path]:
    """A run in one process (in this one) and under torchrun with 2 processes (cwd: an empty folder)."""
    root = tmp_path_factory.mktemp("ddp")
    flags = flags_of(request.param)
    Trainer(config_of(flags), root / "one", progress=False).fit()
    (root / "cwd").mkdir()
    result = torchrun("train", *flags, "--out", str(root / "two"), cwd=root / "cwd")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"trained {request.param}") == 1, result.stdout  # rank 0 reports
    return {"one": root / "one", "two": root / "two", "cwd": root / "cwd", "flags": flags}


def test_two_processes_train_the_weights_of_one_process_on_the_same_global_batches(runs):
    difference = max_difference(runs["one"] / "model.safetensors", runs["two"] / "model.safetensors")
    assert difference < WEIGHT_TOLERANCE
    # the tolerance is far below what one step moves: a run that did not average gradients would miss it
    step_2 = {k.removeprefix("model."): v for k, v in
              load_file(runs["one"] / "checkpoints" / "step-00000002.safetensors").items() if k.startswith("model.")}
    final = load_file(runs["one"] / "model.safetensors")
    assert max(float((final[k] - step_2[k]).abs().max()) for k in final) > 10 * WEIGHT_TOLERANCE


def test_only_rank_0_writes_the_files_of_a_one_process_run(runs):
    assert files_under(runs["two"]) == files_under(runs["one"])
    assert files_under(runs["cwd"]) == []
    one, two = (json.loads((runs[name] / "model.json").read_text()) for name in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["provenance"]["backend"] == "gloo" and two["provenance"]["versions"]["torch"] == torch.__version__
    assert one["provenance"]["world_size"] == 1 and one["provenance"]["dtype"] == "float32"
    # the images of both ranks are counted, the metrics are the global batch's
    assert two["train_cost"]["forward_images"] == one["train_cost"]["forward_images"]
    checkpoint = [json.loads((runs[name] / "checkpoints" / "step-00000003.json").read_text())
                  for name in ("one", "two")]
    assert checkpoint[0]["metrics"].keys() == checkpoint[1]["metrics"].keys()
    for name, value in checkpoint[0]["metrics"].items():
        assert checkpoint[1]["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["two"], run)
    for path in [run / "model.json", run / "model.safetensors", *(run / "checkpoints").glob("step-00000003.*")]:
        path.unlink()  # as if killed after the checkpoint at step 2
    Trainer(config_of(runs["flags"]), run, progress=False).fit(resume=True)
    assert max_difference(runs["one"] / "model.safetensors", run / "model.safetensors") < WEIGHT_TOLERANCE
    assert json.loads((run / "model.json").read_text())["world_size"] == 1


def test_nproc_reruns_the_command_under_torchrun_without_itself():
    command = torchrun_command(2, ["train", "--nproc", "2", "--epochs", "1", "--nproc=3", "--out", "x"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "rome_bench",
                           "train", "--epochs", "1", "--out", "x"]


def test_a_global_batch_splits_into_contiguous_chunks_that_cover_it():
    batch = torch.arange(11)
    chunks = [local_slice(batch, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat([chunk for chunk, _ in chunks]), batch)
    assert [start for _, start in chunks] == [0, 4, 8]


def test_a_rank_is_augmented_as_its_rows_of_the_global_batch():
    images = torch.rand(10, 3, 8, 8)
    whole = augment_batch(images, seed=3, step=5)
    part = augment_batch(images[4:7], seed=3, step=5, start=4, global_size=10)
    assert torch.equal(part, whole[4:7])


def test_a_batch_a_rank_would_get_nothing_of_is_refused_in_one_line():
    check_batches(40, 16, 2)  # 16, 16, 8
    with pytest.raises(ConfigError, match="cannot be split over 4 processes"):
        check_batches(33, 16, 4)  # the last batch holds 1 example
    with pytest.raises(ConfigError, match="at least 4"):
        check_batches(64, 2, 4)


def test_per_gpu_rng_keys_sort_by_device_index():
    tensors = {f"rng.cuda.{index}": torch.tensor([index]) for index in (10, 2, 0, 11, 1)}
    state = TrainingState.from_tensors({"rng.cpu": torch.zeros(1), **tensors})
    assert [int(rng) for rng in state.cuda_rngs] == [0, 1, 2, 10, 11]


def test_training_checkpoint_keys_keep_their_names():
    """The key layout is the checkpoint format: checkpoints written before resume only under these names."""
    one = torch.ones(1)
    state = TrainingState(model={"head.weight": one}, optimizer={0: {"step": one, "exp_avg": one}},
                          recipe={"weights": one}, cpu_rng=one, cuda_rngs=[one, one],
                          rank_rngs={1: {"cpu": one, "cuda": one}})
    tensors = state.to_tensors()
    assert list(tensors) == ["model.head.weight", "optim.0.step", "optim.0.exp_avg", "recipe.weights", "rng.cpu",
                             "rng.cuda.0", "rng.cuda.1", "rng.rank1.cpu", "rng.rank1.cuda"]
    again = TrainingState.from_tensors(tensors)
    assert again.to_tensors().keys() == tensors.keys() and again.optimizer == state.optimizer


def _collectives(rank: int, store: str, results) -> None:
    """One of two forked ranks: the gradient all-reduce and the row gather of the step context's seam."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    group = Distributed(rank, 2)
    group.start(torch.device("cpu"))
    parameters = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3)),
                  torch.nn.Parameter(torch.zeros(1))]
    grads = [torch.tensor([1.0, 2.0]), None, None] if rank == 0 else [torch.tensor([3.0, 4.0]), torch.ones(3), None]
    reduced = group.reduce_gradients(parameters, grads, share=0.75 if rank == 0 else 0.25)
    rows = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)  # rank 0: 1 row, rank 1: 2 rows
    gathered = group.gather_rows(rows)
    (gathered * torch.arange(6.0).view(3, 2)).sum().backward()
    results.put((rank, [None if g is None else g.tolist() for g in reduced], gathered.tolist(), rows.grad.tolist()))
    torch.distributed.destroy_process_group()


def test_gradients_are_share_weighted_sums_and_gathered_rows_send_back_only_their_own_gradient(tmp_path):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    ranks = [context.Process(target=_collectives, args=(rank, str(tmp_path / "store"), results)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    found = {item[0]: item[1:] for item in (results.get(timeout=60) for _ in ranks)}
    for process in ranks:
        process.join(timeout=30)
    for rank in (0, 1):
        reduced, gathered, _ = found[rank]
        # 0.75·g₀ + 0.25·g₁; zeros from the rank whose loss missed a parameter; None where no rank reached it
        assert reduced == [[1.5, 2.5], [0.25, 0.25, 0.25], None]
        assert gathered == [[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]
    assert found[0][2] == [[0.0, 1.0]] and found[1][2] == [[2.0, 3.0], [4.0, 5.0]]


def test_a_rank_resumes_its_own_rng_stream_on_the_same_world_size_and_a_fresh_one_on_another():
    config = config_of(FLAGS)
    trainer = Trainer(config, Path("unused"), progress=False, distributed=Distributed(1, 2))
    saved = torch.Generator().manual_seed(99).get_state()
    with torch.random.fork_rng(devices=[]):  # the global RNG of this test process is left as it was
        state = TrainingState.from_tensors({"rng.cpu": torch.get_rng_state(), "rng.rank1.cpu": saved})
        trainer._restore_rng(state, 2, step=4)
        assert torch.equal(torch.get_rng_state(), saved)
        trainer._restore_rng(state, 4, step=4)
        assert torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(rank_seed(0, 1, 4)).get_state())


@pytest.mark.parametrize(("flags", "needle"), [
    (["--nproc", "0"], "--nproc must be >= 1"),
    (["--nproc", "2"], "already holds a run"),  # refused once, before torchrun starts any process
])
def test_nproc_mistakes_are_one_line_errors_before_any_process_starts(tmp_path, cli_main, flags, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    result = cli_main("train", *FLAGS, *flags, "--out", str(run))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
