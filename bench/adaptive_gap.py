"""How much the adaptive suite adds to AutoAttack on one run: examples it breaks that AA left robust, and its cost.

    python bench/adaptive_gap.py --run DIR --n 100 [--n-iter 100 --n-queries 5000] [--data-dir D] [--store S]

Evaluates the ``adaptive`` suite's threats (``evaluation/suites.adaptive_threats``; ``--n-iter``/``--n-queries``
shorten AA, router APGD and Square for a CPU measurement, GMA keeps 20 steps) into a store, records the suite run
(so ``rome-bench leaderboard --suite adaptive --store S --costs`` shows it when the settings are the suite's own),
and prints: clean-correct examples, robust under AA (per example over ℓ1/ℓ2/ℓ∞), robust under Adaptive, the
examples only the router attacks or GMA broke (by attack), and the cost of Adaptive relative to AA alone (wall
time, and forward+backward images through the model).
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from rome_bench.api import load_run_with_data
from rome_bench.data import evaluation_indices
from rome_bench.evaluation.runner import evaluate_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import adaptive_threats
from rome_bench.threats import Clean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--n-iter", type=int, default=100)
    parser.add_argument("--n-queries", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--data-dir")
    parser.add_argument("--store", type=Path, default=Path(tempfile.mkdtemp()) / "adaptive.sqlite")
    args = parser.parse_args()
    run, data = load_run_with_data(args.run, "cpu", args.data_dir)
    ids = evaluation_indices(len(data.dataset), args.n)
    threats = [Clean(), *adaptive_threats(run.config.threats.eps, args.n_iter, args.n_queries)]
    with ResultStore(args.store) as store:
        store.record_model(run.model_hash, Path(args.run).name, run.method, str(args.run), run.describe())
        evaluate_threats(run.model, run.model_hash, threats, data, ids, store, args.batch_size,
                         torch.device("cpu"), progress=False)
        store.record_suite_run(run.model_hash, "adaptive", data.fingerprint, data.info.name,
                               [t.key for t in threats], ids, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        report(store, run.model_hash, data.fingerprint, threats, ids)
    print(f"store: {args.store}")


def report(store: ResultStore, model_hash: str, dataset: str, threats: list, ids: list[int]) -> None:
    """Print AA vs Adaptive robust counts, the examples each extra attack alone broke, and the cost ratio."""
    results = {t.name: store.correctness(model_hash, t.key, dataset) for t in threats
               if not store.not_applicable(model_hash, t.key, dataset)}
    aa = [name for name in results if name.startswith("autoattack-")]
    extra = [name for name in results if name != "clean" and name not in aa]
    aa_robust = {i for i in ids if all(results[name][i] for name in aa)}
    adaptive_robust = {i for i in aa_robust if all(results[name][i] for name in extra)}
    print(f"examples {len(ids)}, clean-correct {sum(results['clean'][i] for i in ids)}, "
          f"robust under AA {len(aa_robust)}, under Adaptive {len(adaptive_robust)}, "
          f"broken only by the adaptive attacks {len(aa_robust - adaptive_robust)}")
    for name in extra:
        print(f"  {name}: robust {sum(results[name][i] for i in ids)}, breaks "
              f"{sum(not results[name][i] for i in aa_robust)} AA-robust examples")
    costs = {t.name: store.cost(model_hash, t.key, dataset) for t in threats if t.name in results}
    aa_seconds = sum(costs[name].seconds for name in aa)
    all_seconds = sum(costs[name].seconds for name in aa + extra)
    aa_images = sum(costs[name].forward_images + costs[name].backward_images for name in aa)
    all_images = sum(costs[name].forward_images + costs[name].backward_images for name in aa + extra)
    print(f"cost: AA {aa_seconds:.0f} s, Adaptive {all_seconds:.0f} s (×{all_seconds / max(aa_seconds, 1e-9):.2f}); "
          f"images f+b AA {aa_images}, Adaptive {all_images} (×{all_images / max(aa_images, 1):.2f})")


if __name__ == "__main__":
    main()
