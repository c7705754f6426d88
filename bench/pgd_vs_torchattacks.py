"""Own ℓ∞ and ℓ2 PGD against torchattacks' PGD and PGDL2: same model, same examples, same ε, steps and step size.

Runs alternate (own, reference, reference, own, …) so drifting machine load hits both; each time is the median
of ``--repeats`` runs and the ratio is the median of the per-repeat ratios [interquartile range]. Robust accuracy
is what each library's output leaves correct (own PGD keeps the first adversarial iterate it finds, torchattacks
returns the last one, so own is at least as strong at equal steps).
rome-bench's ℓ2 projection is the exact one onto ball ∩ box; torchattacks scales onto the ball, then clips.

    python bench/pgd_vs_torchattacks.py --run rome_bench/references/reference/models/cifar10-smoke-rome-max --threads 1
    python bench/pgd_vs_torchattacks.py --linear --repeats 30  # each library's own per-step cost: a linear model

``--linear`` swaps the run's model for a seeded flatten + linear classifier, whose forward and backward cost next to
nothing, so the per-step times are each library's own work (steps, projections, bookkeeping). The last line times
the ℓ2 projections alone on the steps of one attack: the exact one against torchattacks' scale-then-clip.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rome_bench.checkpoint import read_run_config
from rome_bench.data import evaluation_indices, fetch_batch, load_dataset
from rome_bench.evaluation.runner import load_run
from rome_bench.threats import L2PGD, LinfPGD, project_l2_box

REFERENCE_RUN = Path("rome_bench/references/reference/models/cifar10-smoke-rome-max")


def timed(attack: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    adversarial = attack()
    return time.perf_counter() - start, adversarial


def linear_model(image_shape: torch.Size, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.Linear(image_shape.numel(), num_classes)
    return torch.nn.Sequential(torch.nn.Flatten(), layer).eval().requires_grad_(False)


def scale_then_clip(delta: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """torchattacks' PGDL2 projection: onto the ball by scaling, then into the box by clipping (not exact)."""
    factor = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
    return (images + delta * factor).clamp(0, 1) - images


class RecordingL2PGD(L2PGD):
    """ℓ2 PGD that keeps every perturbation it projects (to time the projections alone on real steps)."""

    def __init__(self, eps: float, steps: int) -> None:
        super().__init__(eps, steps=steps)
        self.projected: list[torch.Tensor] = []

    def project(self, images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self.projected.append(delta)
        return super().project(images, delta)


def projection_times(attack: RecordingL2PGD, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     repeats: int) -> tuple[float, float]:
    """Median ms per projection of the exact and of torchattacks' ℓ2 projection, on the steps of one attack."""
    attack(model, images, labels)
    times: dict[str, list[float]] = {"exact": [], "scale-then-clip": []}
    for _ in range(repeats):
        for name, project in (("exact", project_l2_box), ("scale-then-clip", scale_then_clip)):
            start = time.perf_counter()
            for delta in attack.projected:
                project(delta, images, attack.eps)
            times[name].append((time.perf_counter() - start) / len(attack.projected) * 1e3)
    return statistics.median(times["exact"]), statistics.median(times["scale-then-clip"])


def robust(model: torch.nn.Module, adversarial: torch.Tensor, labels: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(adversarial).argmax(1) == labels).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REFERENCE_RUN)
    parser.add_argument("--dataset", help="evaluate on this dataset instead of the run's (e.g. synthetic)")
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--linear", action="store_true", help="a linear model: time each library's own work")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    config = read_run_config(args.run)
    data = load_dataset(args.dataset or config.data.dataset, "test", config.data.data_dir)
    model = load_run(args.run, data.info, torch.device("cpu")).model.eval()
    images, labels = fetch_batch(data.dataset, evaluation_indices(len(data.dataset), args.n_examples))
    if args.linear:
        model = linear_model(images.shape[1:], data.info.num_classes)
    clean = robust(model, images, labels)
    name = "linear model" if args.linear else args.run.name
    print(f"{name}: {len(images)} examples, clean {clean}; {args.steps} steps; median of {args.repeats}; "
          f"{args.threads} thread(s)")
    print(f"{'threat':<14}{'own s':>9}{'torchattacks s':>16}{'ratio [IQR]':>20}{'own robust':>12}{'ta robust':>11}"
          f"{'own ms/step':>13}{'ta ms/step':>12}")
    for own in (LinfPGD(8 / 255, steps=args.steps), L2PGD(0.5, steps=args.steps)):
        kind = torchattacks.PGD if own.norm == "linf" else torchattacks.PGDL2
        reference = kind(model, eps=own.eps, alpha=own.step_size, steps=args.steps, random_start=True)
        times: dict[str, list[float]] = {"own": [], "ta": []}
        counts: dict[str, list[int]] = {"own": [], "ta": []}
        attacks = [("own", functools.partial(own, model, images, labels)),
                   ("ta", functools.partial(reference, images, labels))]
        for repeat in range(args.repeats):
            for name, attack in attacks if repeat % 2 == 0 else attacks[::-1]:  # who goes first alternates too
                torch.manual_seed(repeat)
                seconds, adversarial = timed(attack)
                times[name].append(seconds)
                counts[name].append(robust(model, adversarial, labels))
        own_s, ta_s = statistics.median(times["own"]), statistics.median(times["ta"])
        ratios = [o / t for o, t in zip(times["own"], times["ta"], strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
        print(f"{own.norm + ' ε=' + format(own.eps, '.4g'):<14}{own_s:>9.2f}{ta_s:>16.2f}"
              f"{statistics.median(ratios):>7.2f}× [{low:.2f}–{high:.2f}]"
              f"{statistics.median_low(counts['own']):>12}{statistics.median_low(counts['ta']):>11}"
              f"{own_s / args.steps * 1e3:>13.2f}{ta_s / args.steps * 1e3:>12.2f}")
    exact, scaled = projection_times(RecordingL2PGD(0.5, args.steps), model, images, labels, args.repeats)
    print(f"ℓ2 projection alone, {len(images)} images: exact {exact:.2f} ms, torchattacks' scale-then-clip "
          f"{scaled:.2f} ms")


if __name__ == "__main__":
    main()
