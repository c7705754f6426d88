"""Paired comparison of two methods' robustness on the same examples: ``rome-bench compare``.

Two leaderboard rows measured on the same test examples are not independent samples: most examples are robust
under both models or under neither, and only the discordant ones carry the difference. Two separate Wilson
intervals therefore overstate the uncertainty of a difference many times over. This module pairs per example:

* Each side (``a``, ``b``) is one or more models (seeds of one method), each with a 0/1 vector over the common
  examples (robust under every threat of the suite: the union; or one column).
* Per example i, ``d_i`` = mean over ``a``'s seeds − mean over ``b``'s seeds; the estimate is Δ = mean_i d_i, in
  percentage points.
* Its 95% interval is a paired bootstrap over examples (the same resampled examples for every model; 10,000
  resamples, percentile interval, fixed seed). It covers the sampling of test examples for these trained models; the
  spread between seeds (training randomness) is shown by the per-seed-pair differences beside it.
* Each seed pair (a_k, b_k) also gets McNemar's exact test: under "no difference" each discordant example is
  equally likely to favour either side, so the two-sided p-value is the binomial tail of the discordant counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rome_bench.errors import ConfigError, RomeBenchError
from rome_bench.evaluation.leaderboard import stored_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import Suite

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class PairTest:
    """One model of side a against one of side b: discordant counts and McNemar's exact p."""

    a_only: int  # robust under a's model, not under b's
    b_only: int
    p_value: float

    @property
    def difference(self) -> int:
        return self.a_only - self.b_only


@dataclass(frozen=True)
class PairedDifference:
    estimate: float  # mean over examples of (mean over a's seeds − mean over b's seeds), a fraction
    low: float
    high: float
    n_examples: int
    pairs: tuple[PairTest, ...]


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: P(a binomial(n, ½) count at least as far from n/2 as the observed one)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def pair_test(a: np.ndarray, b: np.ndarray) -> PairTest:
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return PairTest(a_only, b_only, mcnemar_exact(a_only, b_only))


def paired_difference(a: list[np.ndarray], b: list[np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """Δ = mean(a) − mean(b) per example over the seeds of each side, with a paired bootstrap 95% interval.

    Every vector is boolean over the same examples, in the same order. Seeds pair up in the order given (a[k] with
    b[k]) for the McNemar tests; unequal seed counts pair up to the shorter side.
    """
    if not a or not b:
        raise ValueError("each side needs at least one model")
    lengths = {len(vector) for vector in (*a, *b)}
    if len(lengths) != 1:
        raise ValueError(f"every model needs results on the same examples; got lengths {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("no common examples to compare")
    a_bool, b_bool = [np.asarray(v, dtype=bool) for v in a], [np.asarray(v, dtype=bool) for v in b]
    per_example = np.mean(a_bool, axis=0) - np.mean(b_bool, axis=0)
    generator = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # 1,000 resamples at a time: bounded memory for large n
        count = min(1000, resamples - start)
        picks = generator.integers(0, n, size=(count, n))
        means[start:start + count] = per_example[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    pairs = tuple(pair_test(x, y) for x, y in zip(a_bool, b_bool, strict=False))
    return PairedDifference(float(per_example.mean()), float(low), float(high), n, pairs)


def render_difference(name_a: str, name_b: str, column: str, result: PairedDifference) -> str:
    """One headline line plus one line per seed pair."""
    lines = [f"{column}: {name_a} − {name_b} = {100 * result.estimate:+.1f} pp "
             f"[95% paired bootstrap {100 * result.low:+.1f}, {100 * result.high:+.1f}] on {result.n_examples} "
             f"examples"]
    for k, pair in enumerate(result.pairs):
        lines.append(f"  pair {k}: {pair.a_only} examples robust only under {name_a}, {pair.b_only} only under "
                     f"{name_b} (Δ {100 * pair.difference / result.n_examples:+.1f} pp, McNemar exact "
                     f"p = {pair.p_value:.3g})")
    return "\n".join(lines)


def robust_by_example(store: ResultStore, suite: Suite, model_hash: str, dataset: str,
                      column: str = "union") -> dict[int, bool]:
    """Per example of the model's stored run of ``suite`` on ``dataset``: robust under every threat (``union``) or
    under every threat of one column."""
    run = next((r for r in store.suite_runs(suite.name) if r.model_hash == model_hash and r.dataset == dataset), None)
    if run is None:
        raise RomeBenchError(f"no stored run of suite '{suite.name}' for model {model_hash[:12]} on this data; "
                             f"run rome-bench eval --suite {suite.name} on it first")
    stored = stored_threats(store, model_hash, dataset, run.threat_keys)
    if column == "union":
        per_threat = stored.all_results()
    elif column in suite.columns and any(m in stored.results for m in suite.members(column)):
        per_threat = [r for m in suite.members(column) for r in stored.results.get(m, [])]
    else:
        raise ConfigError(f"column '{column}' is not in suite '{suite.name}'; choose union or one of "
                          f"{', '.join(suite.columns)}")
    missing = [i for i in run.example_ids if not all(i in r for r in per_threat) and
               not any(r.get(i) is False for r in per_threat)]
    if missing:
        raise RomeBenchError(f"model {model_hash[:12]}: suite '{suite.name}' has no result for {len(missing)} "
                             f"examples; finish its evaluation first")
    return {i: all(r.get(i, False) for r in per_threat) for i in run.example_ids}


def common_vectors(per_model: list[dict[int, bool]]) -> tuple[list[int], list[np.ndarray]]:
    """The examples every model has results on (sorted) and each model's 0/1 vector over them."""
    common = sorted(set.intersection(*(set(results) for results in per_model)))
    return common, [np.array([results[i] for i in common], dtype=bool) for results in per_model]


def compare_runs(a: list[Path], b: list[Path], suite: str = "seen", column: str = "union", store: Path | None = None,
                 data_dir: str | None = None) -> str:
    """``rome-bench compare``: the paired difference a − b between two groups of runs (the seeds of two methods,
    paired in order) on the examples every run was evaluated on, read from ``store`` and rendered."""
    import torch

    from rome_bench.checkpoint import read_run_config
    from rome_bench.data import load_dataset
    from rome_bench.evaluation.runner import load_run
    from rome_bench.evaluation.store import existing_store
    from rome_bench.evaluation.suites import SUITES

    chosen = SUITES.get(suite)
    runs = [*a, *b]
    configs = [read_run_config(run) for run in runs]
    datasets = {config.data.dataset for config in configs}
    if len(datasets) != 1:
        raise ConfigError(f"--a and --b runs must share one dataset; got {', '.join(sorted(datasets))}")
    data = load_dataset(datasets.pop(), "test", data_dir)
    cpu = torch.device("cpu")
    with ResultStore(existing_store(store)) as results:  # type: ignore[arg-type]
        per_model = [robust_by_example(results, chosen, load_run(run, data.info, cpu).model_hash, data.fingerprint,
                                       column) for run in runs]
    examples, vectors = common_vectors(per_model)
    if not examples:
        raise RomeBenchError("the runs have no evaluated examples in common; evaluate them on the same examples")
    outcome = paired_difference(vectors[:len(a)], vectors[len(a):])
    name_a, name_b = configs[0].method, configs[len(a)].method
    if name_a == name_b:
        name_a, name_b = "a", "b"
    return render_difference(name_a, name_b, column, outcome)
