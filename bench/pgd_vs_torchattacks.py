"""Own ℓ∞ and ℓ2 PGD against torchattacks' PGD and PGDL2: same model, same examples, same ε, steps and step size.

Runs alternate (own, reference, reference, own, …) so drifting machine load hits both; each time is the median
of ``--repeats`` runs and the ratio is the median of the per-repeat ratios [interquartile range]. Robust accuracy
is what each library's output leaves correct (own PGD keeps the first adversarial iterate it finds, torchattacks
returns the last one, so own is at least as strong at equal steps).
rome-bench's ℓ2 projection is the exact one onto ball ∩ box; torchattacks scales onto the ball, then clips.

    python bench/pgd_vs_torchattacks.py --run leaderboards/reference/models/cifar10-smoke-rome-max --threads 1
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
from rome_bench.threats import L2PGD, LinfPGD

REFERENCE_RUN = Path("leaderboards/reference/models/cifar10-smoke-rome-max")


def timed(attack: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    adversarial = attack()
    return time.perf_counter() - start, adversarial


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    config = read_run_config(args.run)
    data = load_dataset(args.dataset or config.data.dataset, "test", config.data.data_dir)
    model = load_run(args.run, data.info, torch.device("cpu")).model.eval()
    images, labels = fetch_batch(data.dataset, evaluation_indices(len(data.dataset), args.n_examples))
    clean = robust(model, images, labels)
    print(f"{args.run.name}: {len(images)} examples, clean {clean}; {args.steps} steps; median of {args.repeats}; "
          f"{args.threads} thread(s)")
    print(f"{'threat':<14}{'own s':>9}{'torchattacks s':>16}{'ratio [IQR]':>20}{'own robust':>12}{'ta robust':>11}")
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
              f"{statistics.median(counts['own']):>12}{statistics.median(counts['ta']):>11}")


if __name__ == "__main__":
    main()
