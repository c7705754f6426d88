"""Time per 100 images of every threat of a suite on one run's model: each threat attacks all N images.

The leaderboard's cost column counts only what an evaluation did (only clean-correct examples are attacked);
this benchmark attacks every one of the first N test images (the evaluation's fixed subset) in one batch, so
the numbers compare threats at equal work. Threats sharing a column (the 75 corruption × severity threats) are
summed per column. Prints seconds per 100 images and forward/backward images per image.

    python bench/threat_times.py --run runs/cifar-smoke-rome+max --suite unseen --n-examples 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rome_bench.checkpoint import read_run_config
from rome_bench.costs import CostMeter
from rome_bench.data import evaluation_indices, fetch_batch, load_dataset
from rome_bench.device import resolve_device
from rome_bench.evaluation.runner import batch_seed, load_run, verify_threat_output
from rome_bench.evaluation.suites import SUITES
from rome_bench.threats import Clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--suite", default="unseen")
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = read_run_config(args.run)
    data = load_dataset(config.data.dataset, "test", config.data.data_dir)
    loaded = load_run(args.run, data.info, device)
    ids = evaluation_indices(len(data.dataset), args.n_examples)
    images, labels = (tensor.to(device) for tensor in fetch_batch(data.dataset, ids))
    totals: dict[str, list[float]] = {}
    for threat in SUITES.get(args.suite).build(loaded.config.threats):
        if isinstance(threat, Clean) or not threat.applicable(loaded.model):
            continue
        torch.manual_seed(batch_seed(threat.key, ids[0]))
        extra = {"example_ids": ids} if threat.uses_example_ids else {}
        started = time.perf_counter()
        with CostMeter(loaded.model) as meter:
            perturbed = threat(loaded.model, images, labels, **extra)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        verify_threat_output(threat, images, perturbed.detach(), ids)
        with torch.no_grad():
            robust = int((loaded.model(perturbed).argmax(1) == labels).sum())
        entry = totals.setdefault(threat.column.split("/")[0], [0.0, 0, 0, 0, 0])
        entry[0] += seconds
        entry[1] += meter.forward_images
        entry[2] += meter.backward_images
        entry[3] += robust
        entry[4] += 1
    n = len(ids)
    print(f"{args.suite} threats on {n} images of {data.info.name}, {loaded.method} ({args.run.name}), {device}")
    print("| threat | instances | s per 100 images | forward images per image | backward images per image |"
          " correct after (all N, not only clean-correct) |")
    print("|---|---:|---:|---:|---:|---:|")
    for column, (seconds, forward, backward, robust, count) in totals.items():
        print(f"| {column} | {count} | {100 * seconds / n:.2f} | {forward / n:.0f} | {backward / n:.0f} | "
              f"{100 * robust / (n * count):.1f}% |")


if __name__ == "__main__":
    main()
