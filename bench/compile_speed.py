"""Eager vs ``torch.compile`` (``eval --compile BACKEND``) on one run's model: an ℓ∞ PGD attack timed both ways,
behind an equality check (logits and input gradients of the compiled model within float tolerance of the eager one).

The first compiled call (the compilation itself) is timed apart; then the attacks alternate (eager, compiled, …) and
each time is the median of ``--repeats``. Robust counts are printed for both (they may differ only where float
rounding flips a decision at a boundary).

    python bench/compile_speed.py --run rome_bench/references/reference/models/cifar10-smoke-rome-max --threads 1
    python bench/compile_speed.py --run runs/rome+max-cifar10 --device cuda --n-examples 1000 --batch-size 500
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rome_bench.checkpoint import read_run_config
from rome_bench.data import evaluation_indices, fetch_batch, load_dataset
from rome_bench.device import resolve_device
from rome_bench.evaluation.runner import load_run
from rome_bench.models.compiled import FixedBatchCompiled
from rome_bench.threats import LinfPGD


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def equality(eager: torch.nn.Module, compiled: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Max |Δ| of the logits and of the input gradients of logsumexp, compiled vs eager."""
    results = []
    for model in (eager, compiled):
        inputs = images.clone().requires_grad_(True)
        logits = model(inputs)
        logits.logsumexp(dim=1).sum().backward()
        results.append((logits.detach(), inputs.grad))
    return (float((results[0][0] - results[1][0]).abs().max()), float((results[0][1] - results[1][1]).abs().max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path,
                        default=Path("rome_bench/references/reference/models/cifar10-smoke-rome-max"))
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = read_run_config(args.run)
    data = load_dataset(config.data.dataset, "test", config.data.data_dir)
    eager = load_run(args.run, data.info, device).model
    compiled = FixedBatchCompiled(eager, args.batch_size, args.backend)
    images, labels = (t.to(device) for t in fetch_batch(data.dataset, evaluation_indices(len(data.dataset),
                                                                                            args.n_examples)))
    start = time.perf_counter()
    logits_diff, grad_diff = equality(eager, compiled, images[:args.batch_size])
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    print(f"{args.run.name} on {device}: compile + first call {compile_seconds:.1f} s; max |Δ| logits "
          f"{logits_diff:.2e}, input gradients {grad_diff:.2e}")
    attack = LinfPGD(8 / 255, steps=args.steps)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    robust: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name, model in (("eager", eager), ("compiled", compiled)):
            torch.manual_seed(repeat)
            synchronize(device)
            started = time.perf_counter()
            adversarial = torch.cat([attack(model, x, y) for x, y in zip(images.split(args.batch_size),
                                                                         labels.split(args.batch_size), strict=True)])
            synchronize(device)
            times[name].append(time.perf_counter() - started)
            with torch.no_grad():
                robust[name] = int((eager(adversarial).argmax(1) == labels).sum())
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"ℓ∞ PGD-{args.steps} on {len(images)} images (batch {args.batch_size}): eager {eager_s:.2f} s, "
          f"compiled ({args.backend}) {compiled_s:.2f} s, ratio {compiled_s / eager_s:.2f}×; robust "
          f"{robust['eager']} vs {robust['compiled']}")


if __name__ == "__main__":
    main()
