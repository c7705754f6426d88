"""What the union cascade (``rome-bench eval --union-only``) saves over a full evaluation of a suite.

Evaluates one run twice, each in its own fresh store: full (every threat attacks every clean-correct example)
and union-only (each threat attacks only the examples still robust to the earlier ones). Prints wall time and
images through the model's forward and backward passes for each, their ratio, and both Union numbers (equal up
to the attacks' randomness, since batches are composed differently).

    python bench/union_cascade.py --run runs/cifar-smoke-rome+max --suite seen --n-examples 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rome_bench.checkpoint import read_run_config
from rome_bench.data import evaluation_indices, load_dataset
from rome_bench.device import resolve_device
from rome_bench.evaluation.leaderboard import measured_row
from rome_bench.evaluation.runner import evaluate_run, load_run
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES


def evaluate_once(run_dir: Path, suite_name: str, n_examples: int, union_only: bool, store_path: Path,
                  device: torch.device, batch_size: int) -> dict[str, float]:
    if store_path.exists():
        raise SystemExit(f"{store_path} exists: the benchmark needs fresh stores (remove it or pick another folder)")
    """One evaluation in its own store: seconds, forward/backward images summed over threats, Union."""
    config = read_run_config(run_dir)
    data = load_dataset(config.data.dataset, "test", config.data.data_dir)
    loaded = load_run(run_dir, data.info, device)
    suite = SUITES.get(suite_name)
    threats = suite.build(loaded.config.threats)
    ids = evaluation_indices(len(data.dataset), n_examples)
    with ResultStore(store_path) as store:
        started = time.perf_counter()
        evaluate_run(loaded, suite.name, threats, data, ids, store, batch_size, device,
                     f"{loaded.method} ({run_dir.name})", progress=False,
                     union_only=union_only)
        seconds = time.perf_counter() - started
        costs = [store.cost(loaded.model_hash, t.key, data.fingerprint) for t in threats]
        row = measured_row(store, store.suite_runs(suite.name)[0], suite)
    assert row is not None
    return {"seconds": seconds, "forward": sum(c.forward_images for c in costs if c),
            "backward": sum(c.backward_images for c in costs if c),
            "attacked": sum(c.attacked for c in costs[1:] if c), "union": row.values["union"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--suite", default="seen")
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep-stores", type=Path, help="Keep the two stores (full.sqlite, cascade.sqlite) here.")
    args = parser.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep_stores or Path(scratch)
        full = evaluate_once(args.run, args.suite, args.n_examples, False, folder / "full.sqlite", device,
                             args.batch_size)
        cascade = evaluate_once(args.run, args.suite, args.n_examples, True, folder / "cascade.sqlite", device,
                                args.batch_size)
    print(f"| {args.run.name}, suite {args.suite}, n={args.n_examples} | full | union-only | ratio |")
    print("|---|---:|---:|---:|")
    for key, title in (("seconds", "wall time (s)"), ("attacked", "attacked examples (sum over threats)"),
                       ("forward", "forward images"), ("backward", "backward images")):
        ratio = cascade[key] / full[key] if full[key] else float("nan")
        print(f"| {title} | {full[key]:.1f} | {cascade[key]:.1f} | {ratio:.3f} |")
    print(f"| Union % | {100 * full['union']:.1f} | {100 * cascade['union']:.1f} | |")


if __name__ == "__main__":
    main()
