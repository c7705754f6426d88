"""ℓ1 PGD (SLIDE step) against APGD-CE ℓ1 at equal ε and steps, on the same examples of committed models.

For each run (default: the two committed reference models) this attacks the first N examples of the evaluation's
fixed test subset and prints how many stay robust (correct after the attack; a clean error is never robust):

* ``pgd sp=S``: rome-bench's :class:`~rome_bench.threats.L1PGD` with sparsity S (the fraction of coordinates one
  step moves), the evaluation rule (first misclassified iterate) and the training rule (last iterate), over
  ``--seeds`` random starts (printed as min–max when they differ);
* ``pgd q~U[a,b]``: the same with SLIDE's randomised percentile, the sparsity drawn per example and step;
* ``apgd-ce ×R``: APGD-CE ℓ1 of pyautoattack as the ``apgd-l1`` threat configures it (AutoAttack-standard: the
  ε-schedule 3ε→2ε→ε, seed 0), with exactly ``steps`` iterations and R restarts (R = 1: the same number of
  gradients as PGD; R = 5: AutoAttack's). The ``apgd-l1`` threat's own ``n_iter`` does not reach pyautoattack's
  ℓ1 schedule (it reads the iteration count fixed at construction, 100), so the iteration count is set here on
  the attack object itself; ``apgd-l1 as run`` is the threat exactly as the suites run it (100 iterations).

The margin printed is two binomial standard errors of the APGD-CE ×5 robust count, √(p̂(1−p̂)/N) with p̂ ≥ 1/N.

    python bench/l1_pgd_strength.py --data-dir ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from rome_bench.data import evaluation_indices, fetch_batch, load_dataset
from rome_bench.errors import RomeBenchError
from rome_bench.evaluation.runner import load_run
from rome_bench.threats import L1APGD, L1PGD

REFERENCE_MODELS = Path(__file__).resolve().parents[1] / "rome_bench" / "references" / "reference" / "models"
DEFAULT_RUNS = (REFERENCE_MODELS / "synthetic-micro-max", REFERENCE_MODELS / "cifar10-smoke-rome-max")


def robust_count(model: nn.Module, adversarial: torch.Tensor, labels: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(adversarial).argmax(1) == labels).sum())


def apgd_ce_l1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
               restarts: int) -> torch.Tensor:
    """APGD-CE ℓ1 as the ``apgd-l1`` threat configures it, run for exactly ``steps`` iterations per restart."""
    adversary = L1APGD(eps, attacks=("apgd-ce",), n_iter=steps).adversary(model, images.device)
    attack = adversary.apgd
    attack.n_iter = attack.n_iter_orig = steps  # the ℓ1 ε-schedule splits n_iter_orig, not n_iter
    attack.n_restarts = restarts
    attack.loss, attack.seed = "ce", adversary.get_seed()
    with torch.no_grad():
        return attack.perturb(images.clone(), labels.clone())


def two_standard_errors(count: int, n: int) -> float:
    """Two binomial standard errors of a count of ``n`` at its own rate (floored at 1/n)."""
    rate = min(max(count / n, 1 / n), 1 - 1 / n)
    return 2 * n * math.sqrt(rate * (1 - rate) / n)


def pgd_counts(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seeds: int, **kwargs) -> str:
    counts = {"eval": [], "last": []}
    for seed in range(seeds):
        for rule, keep in (("eval", True), ("last", False)):
            torch.manual_seed(seed)
            counts[rule].append(robust_count(model, L1PGD(keep_adversarial=keep, **kwargs)(model, images, labels),
                                             labels))
    return "  ".join(f"{rule} {_span(values)}" for rule, values in counts.items())


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}–{max(values)}"


def measure(run: Path, args: argparse.Namespace) -> None:
    config_data = load_run_data(run, args.data_dir)
    if config_data is None:
        print(f"\n{run.name}: skipped (its dataset is not available; pass --data-dir)")
        return
    data, loaded = config_data
    ids = evaluation_indices(len(data.dataset), args.n_examples)
    images, labels = fetch_batch(data.dataset, ids)
    model = loaded.model
    threats = loaded.config.threats
    steps_list = args.steps or sorted({threats.train_steps["l1"], threats.eval_steps["l1"]})
    for scale in args.eps_scale:
        eps = threats.eps["l1"] * scale
        print(f"\n{run.name} ({loaded.config.data.dataset}, {len(ids)} test examples, clean correct "
              f"{robust_count(model, images, labels)}), ℓ1 ε = {eps:g}; robust counts")
        for steps in steps_list:
            started = time.perf_counter()
            apgd = {r: robust_count(model, apgd_ce_l1(model, images, labels, eps, steps, r), labels) for r in (1, 5)}
            margin = two_standard_errors(apgd[5], len(ids))
            print(f"  steps {steps}: apgd-ce ×1 {apgd[1]}  apgd-ce ×5 {apgd[5]}  (2 SE of ×5: {margin:.1f})")
            for sparsity in args.sparsities:
                counts = pgd_counts(model, images, labels, args.seeds, eps=eps, steps=steps, sparsity=sparsity)
                print(f"    pgd sp={sparsity:<6g} {counts}")
            for low, high in args.random_sparsity:
                counts = pgd_counts(model, images, labels, args.seeds, eps=eps, steps=steps,
                                    random_sparsity=(low, high))
                q = f"U[{100 * (1 - high):g},{100 * (1 - low):g}]"
                print(f"    pgd q~{q:<10} {counts}")
            print(f"    ({time.perf_counter() - started:.1f} s)")
        if args.as_run:
            adversarial = L1APGD(eps, attacks=("apgd-ce",))(model, images, labels)
            print(f"  apgd-l1 as run (APGD-CE, 100 iterations ×5): {robust_count(model, adversarial, labels)}")


def load_run_data(run: Path, data_dir: str | None):
    from rome_bench.checkpoint import read_run_config

    config = read_run_config(run)
    try:
        data = load_dataset(config.data.dataset, "test", data_dir or config.data.data_dir)
    except RomeBenchError:
        return None
    return data, load_run(run, data.info, torch.device("cpu"))


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ranges(text: str) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in part.split(":")) for part in text.split(",") if part]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", help="run directory (default: the committed two)")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 (folder or the JPEG archive)")
    parser.add_argument("--n-examples", type=int, default=100)
    parser.add_argument("--steps", type=lambda t: [int(v) for v in t.split(",")], default=None,
                        help="comma list (default: the run's ℓ1 training and evaluation steps)")
    parser.add_argument("--sparsities", type=_floats, default=_floats("0.05,0.02,0.01,0.005,0.002"))
    parser.add_argument("--random-sparsity", type=_ranges, default=_ranges("0.01:0.2,0.005:0.02"),
                        help="low:high sparsity ranges for SLIDE's randomised percentile (0.01:0.2 = q~U[80,99])")
    parser.add_argument("--eps-scale", type=_floats, default=[1.0], help="comma list of multiples of the run's ε")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--as-run", action="store_true", help="also the apgd-l1 threat as the suites run it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.run or DEFAULT_RUNS:
        measure(run, args)


if __name__ == "__main__":
    main()
