"""Sharded evaluation: local, torchrun and submitit-local executors store exactly a single-process run's results."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file

from rome_bench.errors import ConfigError
from rome_bench.evaluation.sharding import make_shards
from rome_bench.evaluation.store import ResultStore

N_EXAMPLES, BATCH = 24, 4  # 6 batches
NET = '''"""The shared undefended model behind a random-noise defence, whose draws (torch's global RNG, per batch) make
each example's result depend on its batch-mates: a shard cut inside a batch changes results. With HANG_AT_CALL=k
its k-th forward call hangs (a worker to kill)."""
import os
import time
from pathlib import Path

import torch

from rome_bench.models import MODELS, ImageClassifier


class Net(torch.nn.Module):
    calls = 0

    def __init__(self):
        super().__init__()
        backbone = MODELS.get("vit_smoke")(num_classes=10, image_size=32, patch_size=4, embed_dim=32, depth=2,
                                           num_heads=2)
        self.net = ImageClassifier(backbone, MEAN, STD)

    def forward(self, x):
        Net.calls += 1
        if Net.calls == int(os.environ.get("HANG_AT_CALL", "0")):
            Path(os.environ["HANG_MARK"]).write_text("hanging")
            time.sleep(600)
        return self.net(x + 0.1 * torch.randn_like(x))
'''


@pytest.fixture(scope="module")
def model_source(tmp_path_factory, undefended_model) -> tuple[str, Path]:
    """The undefended model as a model file and its weights (a source any process can load)."""
    folder = tmp_path_factory.mktemp("sharded")
    mean = tuple(undefended_model.mean.flatten().tolist())
    std = tuple(undefended_model.std.flatten().tolist())
    (folder / "net.py").write_text(NET.replace("MEAN, STD", f"{mean}, {std}"))
    weights = folder / "net.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in undefended_model.state_dict().items()}, str(weights))
    return f"{folder / 'net.py'}:Net", weights


def eval_args(model_source: tuple[str, Path], store: Path, *extra: str) -> list[str]:
    source, weights = model_source
    return ["eval", "--model-file", source, "--weights", str(weights), "--preset", "smoke", "--suite", "seen-pgd",
            "--n-examples", str(N_EXAMPLES), "--batch-size", str(BATCH), "--store", str(store), "--no-progress",
            *extra]


@pytest.fixture(scope="module")
def single_process(model_source, tmp_path_factory) -> Path:
    """The reference: the same evaluation in one process, unsharded (the API runs what rome-bench eval runs)."""
    import rome_bench

    store = tmp_path_factory.mktemp("single") / "single.sqlite"
    source, weights = model_source
    model = rome_bench.load_model(source, weights, preset="smoke", device="cpu")
    rome_bench.benchmark(model, suite="seen-pgd", n_examples=N_EXAMPLES, batch_size=BATCH, store=store, device="cpu",
                         progress=False)
    return store


def per_example(store: Path) -> dict[tuple[str, int], int]:
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT threat_key, example_id, correct FROM results").fetchall()
    return {(key, example): correct for key, example, correct in rows}


def examples_counted(store: Path) -> dict[str, int]:
    """Per threat, how many examples its batches' costs add up to: each example once unless work was redone."""
    with sqlite3.connect(store) as connection:
        return dict(connection.execute("SELECT threat_key, examples FROM costs").fetchall())


def provenance_records(store: Path) -> list[dict]:
    with sqlite3.connect(store) as connection:
        rows = connection.execute("SELECT DISTINCT p.record FROM results r JOIN provenance p "
                                  "ON p.provenance_id = r.provenance").fetchall()
    return [json.loads(record) for (record,) in rows]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shards_are_whole_batches_covering_every_example_once():
    ids = list(range(100, 123))  # 23 examples: 5 full batches of 4 and one of 3
    shards = make_shards(ids, 4, 4)
    assert [i for shard in shards for i in shard] == ids
    assert [len(shard) for shard in shards] == [8, 8, 4, 3]
    assert all(len(shard) % 4 == 0 for shard in shards[:-1])
    with pytest.raises(ConfigError, match="more than the 6 batches"):
        make_shards(ids, 7, 4)


def test_local_shards_equal_one_process_and_merging_again_adds_nothing(cli_main, model_source, single_process,
                                                                       tmp_path):
    reference = per_example(single_process)
    assert 0 < sum(reference.values()) < len(reference), "some examples robust, some not: results that can differ"
    store = tmp_path / "sharded.sqlite"
    result = cli_main(*eval_args(model_source, store, "--shards", "3"))
    assert result.returncode == 0, result.stderr
    assert "merged 12 units of 3 shards" in result.stdout
    assert per_example(store) == reference
    assert set(examples_counted(store).values()) == {N_EXAMPLES}
    assert not list((tmp_path / "sharded.sqlite.units").glob("*.sqlite")), "merged shard files are deleted"
    again = cli_main(*eval_args(model_source, store, "--shards", "3", "--merge"))
    assert again.returncode == 0 and "merged 0 units" in again.stdout
    assert set(examples_counted(store).values()) == {N_EXAMPLES}
    (record,) = provenance_records(store)
    assert (record["world_size"], record["executor"], record["shards"]) == (1, "local", 3)
    assert record["device"].startswith("cpu")
    assert record["dtype"] == "float32" and record["amp"] == "off" and "tf32_matmul" in record
    assert record["versions"]["torch"] and "git_commit" in record


def test_torchrun_two_ranks_store_the_single_process_results(model_source, single_process, tmp_path):
    store = tmp_path / "ranks.sqlite"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "rome_bench", *eval_args(model_source, store)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("merged 8 units of 2 shards") == 1, "rank 0 alone merges"
    assert per_example(store) == per_example(single_process)
    assert set(examples_counted(store).values()) == {N_EXAMPLES}
    assert {(r["world_size"], r["executor"]) for r in provenance_records(store)} == {(2, "torchrun")}


def test_killed_shard_reruns_alone_on_submitit_and_workers_never_write_the_store(cli_main, model_source,
                                                                                 single_process, tmp_path):
    store = tmp_path / "slurm.sqlite"
    ResultStore(store).close()  # an existing, empty main store: workers may read it, never write it
    before = file_digest(store)
    for index in ("0", "2"):
        assert cli_main(*eval_args(model_source, store, "--shards", "3", "--shard-index", index)).returncode == 0
    # shard 1's worker hangs at its 4th forward (the probe, 2 clean batches, then PGD-ℓ1's first batch): kill it
    mark = tmp_path / "hanging"
    worker = subprocess.Popen([sys.executable, "-m", "rome_bench",
                               *eval_args(model_source, store, "--shards", "3", "--shard-index", "1")],
                              env={**os.environ, "HANG_AT_CALL": "4", "HANG_MARK": str(mark)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not mark.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert mark.exists(), worker.stderr.read().decode()[-2000:]
    assert file_digest(store) == before, "shard workers never write the main store"

    unfinished = cli_main(*eval_args(model_source, store, "--shards", "3", "--merge"))
    assert unfinished.returncode != 0 and "1 of 3 shards are not finished (shard 1)" in unfinished.stderr
    assert file_digest(store) == before, "a refused merge writes nothing"

    result = cli_main(*eval_args(model_source, store, "--shards", "3", "--executor", "slurm", "--cluster", "local",
                                 "--wait", "--slurm", "timeout_min=5"))
    assert result.returncode == 0, result.stderr
    assert "submitted 1 shard jobs of 3" in result.stdout, result.stdout
    assert per_example(store) == per_example(single_process)
    assert set(examples_counted(store).values()) == {N_EXAMPLES}, "no batch was evaluated twice"
    executors = {record["executor"] for record in provenance_records(store)}
    assert executors == {"local", "slurm"}, "shards 0 and 2 kept their results; only shard 1's rest ran on slurm"


@pytest.mark.parametrize(("flags", "needle"), [
    (["--executor", "torchrun"], "runs under torchrun"),
    (["--executor", "slurm"], "need --shards N"),
    (["--shards", "2", "--union-only"], "run unsharded"),
    (["--shards", "7"], "more than the 6 batches"),
    (["--shards", "3", "--shard-index", "3"], "--shard-index takes 0..2"),
    (["--wait"], "go with --executor slurm"),
])
def test_bad_sharding_flags_fail_in_one_line(cli_main, model_source, tmp_path, flags, needle):
    result = cli_main(*eval_args(model_source, tmp_path / "s.sqlite", *flags))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


def test_store_without_provenance_stays_readable_and_records_it_from_now_on(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:  # the results table as rome-bench wrote it before provenance
        old.execute("CREATE TABLE results (model_hash TEXT NOT NULL, threat_key TEXT NOT NULL, dataset TEXT NOT NULL, "
                    "example_id INTEGER NOT NULL, correct INTEGER NOT NULL, "
                    "PRIMARY KEY (model_hash, threat_key, dataset, example_id))")
        old.execute("INSERT INTO results VALUES ('m', 'clean:1', 'd', 3, 1)")
    with ResultStore(path) as store:
        assert store.correctness("m", "clean:1", "d") == {3: True}
        assert store.provenance("m", "clean:1", "d") == [{}]
        store.use_provenance({"world_size": 2, "device": "cpu"})
        store.add_results("m", "clean:1", "d", [4], [False])
        assert store.correctness("m", "clean:1", "d") == {3: True, 4: False}
        assert store.provenance("m", "clean:1", "d") == [{}, {"device": "cpu", "world_size": 2}]
