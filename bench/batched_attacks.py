"""Time per training step of a multi-threat recipe: the threats' PGD one after another vs in one batched pass.

One step = ``recipe.update`` (clean eval forward, the ℓ1/ℓ2/ℓ∞ PGD training attacks in eval mode, the train-mode
forward over all adversarial inputs, backward) on random 32×32 images, with the option
``train.options.batched_attacks`` false (sequential, the default) and true (training/batched.py). Each setting is
warmed up once, then timed ``--repeats`` times, alternating sequential and batched so load from other processes
hits both alike; the median is printed with the ratio sequential / batched (> 1: batching is faster).

Measured on the 2-core development CPU (shared with other jobs; figures in rome_bench/training/batched.py): ratios
0.85-1.11, i.e. no gain on a CPU, which is already saturated at batch 32.

    python bench/batched_attacks.py                                   # vit_smoke and vit_small, batch 32 and 64
    python bench/batched_attacks.py --backbones vit_small --batch-sizes 128 --steps 20,20,10 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rome_bench.data import load_dataset
from rome_bench.device import resolve_device
from rome_bench.models import create_model
from rome_bench.presets import preset
from rome_bench.training import recipes as _recipes  # noqa: F401  (registers every recipe)
from rome_bench.training.recipe import Batch, StepContext, build_recipe


def step_seconds(recipe_name: str, family: str, backbone: str, batch_size: int, steps: dict[str, int],
                 batched: bool, device: torch.device) -> float:
    """Wall time of one ``recipe.update`` (after a warm-up step) on a fresh model."""
    config = preset("smoke")
    config.model.backbone, config.model.family = backbone, family
    config.threats.train_steps = dict(steps)
    torch.manual_seed(0)
    model = create_model(config.model, load_dataset("synthetic", "test").info).to(device)
    recipe = build_recipe(recipe_name, {"batched_attacks": batched}, config.threats, "pgd")
    ctx = StepContext(model, list(model.parameters()), routing_loss=None)
    images = torch.rand(batch_size, 3, 32, 32, device=device)
    labels = torch.randint(10, (batch_size,), device=device)
    timings = []
    for _ in range(2):  # warm-up, then the timed step
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        recipe.update(ctx, Batch(images, labels, 0, 0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    return timings[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="max")
    parser.add_argument("--family", default="plain")
    parser.add_argument("--backbones", default="vit_smoke,vit_small")
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--steps", default="5,5,3", help="ℓ1,ℓ2,ℓ∞ PGD steps (smoke: 5,5,3; CIFAR-10: 20,20,10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    steps = dict(zip(("l1", "l2", "linf"), (int(v) for v in args.steps.split(",")), strict=True))
    print(f"recipe {args.recipe} on family {args.family}, PGD steps {steps}, device {device}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} steps")
    print(f"{'backbone':<10} {'batch':>5} {'sequential s':>13} {'batched s':>10} {'ratio':>6}")
    for backbone in args.backbones.split(","):
        for batch_size in (int(v) for v in args.batch_sizes.split(",")):
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):
                for batched in (False, True):
                    times[batched].append(step_seconds(args.recipe, args.family, backbone, batch_size, steps,
                                                       batched, device))
            sequential, batched_time = statistics.median(times[False]), statistics.median(times[True])
            print(f"{backbone:<10} {batch_size:>5} {sequential:>13.3f} {batched_time:>10.3f} "
                  f"{sequential / batched_time:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
