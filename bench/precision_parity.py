"""bf16 vs fp32 attacks on one run's model: robust accuracy (paired, per example) and time, threat by threat.

Each threat of ``--suite`` (``--only`` picks some) attacks the first ``--n-examples`` images of the evaluation's
fixed test subset in batches, once with the model's forward and backward passes inside the attacks under bf16
autocast and once in fp32, exactly as ``rome-bench eval --precision`` runs them: same per-batch seeds, decisions
taken in fp32, budgets checked. Every image is attacked (not only the clean-correct ones), so the times compare
precisions at equal work and "s / 1000 images" of ``autoattack-linf`` is AutoAttack-standard ℓ∞'s time per 1,000
CIFAR-10 images on this device. Robust counts are compared per example: Δ is bf16 − fp32 in points and SE the
standard error of that paired difference, √(b + c)/n with b, c the examples on which the two disagree; |Δ| ≤ 2·SE
is what "the same robust accuracy within binomial noise" means here.

    python bench/precision_parity.py --device cuda --n-examples 1000 --batch-size 500         # the GPU check
    python bench/precision_parity.py --suite seen-pgd --n-examples 64 --batch-size 64 --threads 2   # a CPU try
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from rome_bench.api import load_run, plan, test_data
from rome_bench.data import fetch_batch
from rome_bench.device import resolve_device
from rome_bench.evaluation.runner import attack_precision, batch_seed, full_precision, verify_threat_output
from rome_bench.evaluation.suites import SUITES
from rome_bench.models.autocast import attack_model
from rome_bench.threats import Clean, Threat

PRECISIONS = ("fp32", "bf16")


@dataclass
class Outcome:
    """Per-example robustness of one threat at one precision, and the seconds its attacks took."""

    robust: torch.Tensor
    seconds: float


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(images: torch.Tensor, labels: torch.Tensor, ids: list[int], size: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    for start in range(0, len(ids), size):
        yield images[start:start + size], labels[start:start + size], ids[start:start + size]


def attack_all(model: torch.nn.Module, threat: Threat, images: torch.Tensor, labels: torch.Tensor, ids: list[int],
               batch_size: int, precision: str, device: torch.device) -> Outcome:
    """Attack every image at ``precision``; classify the results in fp32, as the runner does."""
    robust, seconds = [], 0.0
    for x, y, batch_ids in batches(images, labels, ids, batch_size):
        torch.manual_seed(batch_seed(threat.key, batch_ids[0]))
        extra = {"example_ids": batch_ids} if threat.uses_example_ids else {}
        synchronize(device)
        started = time.perf_counter()
        with attack_precision(precision, device):
            perturbed = threat(attack_model(model), x, y, **extra).detach().to(x.dtype)
        synchronize(device)
        seconds += time.perf_counter() - started
        verify_threat_output(threat, x, perturbed, batch_ids)
        with full_precision(x):
            robust.append((model(perturbed).argmax(1) == y).cpu())
    return Outcome(torch.cat(robust), seconds)


def warm_up(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> None:
    """One forward and backward at each precision, so that neither timed precision pays the device's first calls."""
    for precision in PRECISIONS:
        inputs = images.clone().requires_grad_(True)
        with attack_precision(precision, device):
            attack_model(model)(inputs).logsumexp(dim=1).sum().backward()
    synchronize(device)


def paired_difference(fp32: torch.Tensor, bf16: torch.Tensor) -> tuple[float, float]:
    """bf16 − fp32 robust accuracy in points and the standard error of that paired difference."""
    n = len(fp32)
    discordant = int((fp32 != bf16).sum())
    return 100 * (int(bf16.sum()) - int(fp32.sum())) / n, 100 * math.sqrt(discordant) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path,
                        default=Path("rome_bench/references/reference/models/cifar10-smoke-rome-max"))
    parser.add_argument("--suite", default="seen", help="the threats to compare (default: AutoAttack-standard)")
    parser.add_argument("--only", default="", help="comma-separated threat names of the suite (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-examples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loaded = load_run(args.run, device=str(device))
    data = test_data(loaded)
    planned, ids = plan(loaded, SUITES.get(args.suite), data, args.n_examples, [n for n in args.only.split(",") if n])
    images, labels = (tensor.to(device) for tensor in fetch_batch(data.dataset, ids))
    threats = [threat for threat in planned if not isinstance(threat, Clean) and threat.applicable(loaded.model)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"{args.run.name} on {name}: {len(ids)} images of {data.info.name}, batch {args.batch_size}, "
          f"suite {args.suite}; bf16 = the model's passes inside attacks under bf16 autocast, decisions in fp32")
    warm_up(loaded.model, images[:args.batch_size], device)
    print("| threat | fp32 robust % | bf16 robust % | Δ pp | SE pp | within 2 SE | fp32 s / 1000 images | "
          "bf16 s / 1000 images | bf16 / fp32 time |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for threat in threats:
        outcomes = {precision: attack_all(loaded.model, threat, images, labels, ids, args.batch_size, precision,
                                          device) for precision in PRECISIONS}
        fp32, bf16 = outcomes["fp32"], outcomes["bf16"]
        delta, error = paired_difference(fp32.robust, bf16.robust)
        per_thousand = {precision: 1000 * outcome.seconds / len(ids) for precision, outcome in outcomes.items()}
        print(f"| {threat.name} | {100 * fp32.robust.float().mean():.1f} | {100 * bf16.robust.float().mean():.1f} | "
              f"{delta:+.1f} | {error:.1f} | {'yes' if abs(delta) <= 2 * error else 'NO'} | "
              f"{per_thousand['fp32']:.1f} | {per_thousand['bf16']:.1f} | {bf16.seconds / fp32.seconds:.2f}× |")


if __name__ == "__main__":
    main()
