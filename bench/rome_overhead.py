"""Cost of RoME experts over the same backbone: params, FLOPs, train-step time, inference latency.

Both models are built from the same preset and measured side by side in one process; timings alternate between
the two models (plain, rome, plain, rome, …) so that drift in machine load affects both alike, and the median
of the repeats is reported.

    python bench/rome_overhead.py --preset smoke            # CPU, smoke size (targets: params ≤ 1.05×, step ≤ 1.25×)
    python bench/rome_overhead.py --preset cifar10 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rome_bench.config import preset
from rome_bench.data import DatasetInfo
from rome_bench.models import create_model
from rome_bench.training.trainer import build_optimizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inference(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(images)

    return run


def alternate_median(jobs: dict[str, Callable[[], None]], repeats: int, warmup: int,
                     device: torch.device) -> dict[str, float]:
    for _ in range(warmup):
        for job in jobs.values():
            job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            times[name].append(timed(job, device))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = preset(args.preset)
    size = 32 if config.model.patch_size == 4 else 224
    num_classes = {"imagenet1k": 1000, "imagenet100": 100}.get(config.data.dataset, 10)
    info = DatasetInfo(config.data.dataset, num_classes, size, (0.5,) * 3, (0.25,) * 3, tuple(map(str, range(10))))
    models = {}
    for name, experts in (("plain", False), ("rome", True)):
        torch.manual_seed(0)
        models[name] = create_model(config.model, info, with_experts=experts).to(device)
    images = torch.rand(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(num_classes, (args.batch_size,), device=device)
    single = images[:1]

    params = {name: count_parameters(m) for name, m in models.items()}
    flops = {name: forward_flops(m, single) for name, m in models.items()}
    steps = alternate_median({name: train_step(m.train(), build_optimizer(m, config.train), images, labels)
                              for name, m in models.items()}, args.repeats, args.warmup, device)
    batch_latency = alternate_median({name: inference(m.eval(), images) for name, m in models.items()},
                                     args.repeats, args.warmup, device)
    single_latency = alternate_median({name: inference(m.eval(), single) for name, m in models.items()},
                                      args.repeats, args.warmup, device)

    rome = config.model.rome
    print(f"preset {args.preset}: {config.model.backbone}, patch {config.model.patch_size}, image {size}px, "
          f"K={rome.num_experts} r={rome.rank} gate_hidden={rome.gate_hidden} on {','.join(rome.targets)}; "
          f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, median of {args.repeats}")
    rows = [
        ("params", params, "{:,.0f}"),
        ("forward GFLOPs / image", {k: v / 1e9 for k, v in flops.items()}, "{:.4f}"),
        (f"train step ms (batch {args.batch_size})", {k: v * 1e3 for k, v in steps.items()}, "{:.1f}"),
        ("inference ms / image (batched)", {k: v * 1e3 / args.batch_size for k, v in batch_latency.items()}, "{:.3f}"),
        ("inference ms (batch 1)", {k: v * 1e3 for k, v in single_latency.items()}, "{:.2f}"),
    ]
    print(f"{'':34s} {'plain':>14s} {'rome':>14s} {'rome/plain':>11s}")
    for title, values, fmt in rows:
        print(f"{title:34s} {fmt.format(values['plain']):>14s} {fmt.format(values['rome']):>14s} "
              f"{values['rome'] / values['plain']:>10.3f}x")


if __name__ == "__main__":
    main()
