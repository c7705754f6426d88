"""``rome-bench demo``: the main job end to end on the embedded synthetic data, in one resumable command.

It trains MAX and RoME+MAX at the ``smoke`` preset (synthetic data, no files needed), evaluates both on one
suite (``seen-pgd`` by default) on the same fixed test subset, and prints the leaderboard. Everything lands in
one folder (default ``runs/demo``): ``<method>/`` run directories and ``results.sqlite``. Running the command
again continues where it stopped: a finished run is reused, an interrupted one resumes from its last checkpoint
(bit for bit), and the store skips every result it already holds.

Before starting it prints what it will do and how long that should take on this machine, measured by timing one
training step per method and one evaluation batch on fresh models (a few seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rome_bench.checkpoint import (
    CONFIG_FILE,
    MODEL_STEM,
    latest_training_checkpoint,
    load_tensors_with_sidecar,
    read_run_config,
)
from rome_bench.config import RunConfig
from rome_bench.data import evaluation_indices, fetch_batch, load_dataset
from rome_bench.device import resolve_device
from rome_bench.errors import CheckpointError, ConfigError
from rome_bench.evaluation.runner import evaluate_run, load_run
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.models import create_model
from rome_bench.models.family import with_stored_options
from rome_bench.presets import preset
from rome_bench.training.distributed import Distributed
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import Batch
from rome_bench.training.trainer import Trainer, train_step

DEMO_METHODS: dict[str, tuple[str, str]] = {"max": ("max", "plain"), "rome+max": ("max", "rome")}  # recipe, family
DEMO_PRESET = "smoke"
DEMO_SUITE = "seen-pgd"
DEMO_EXAMPLES = 200
STORE_NAME = "results.sqlite"
_TIMING_EXAMPLES = 16


@dataclass(frozen=True)
class DemoPlan:
    """What the demo does: which runs, where, evaluated on which suite and how many examples."""

    out: Path
    configs: dict[str, RunConfig]  # method -> resolved config
    suite: str
    n_examples: int

    @property
    def store_path(self) -> Path:
        return self.out / STORE_NAME

    def run_dir(self, method: str) -> Path:
        return self.out / method


def plan_demo(out: Path, suite: str = DEMO_SUITE, n_examples: int = DEMO_EXAMPLES,
              overrides: list[str] | None = None) -> DemoPlan:
    """Resolve the demo's configs (the smoke preset plus ``overrides``, section.field=value) and check its choices."""
    SUITES.get(suite)  # an unknown suite fails here, with the registered names
    if n_examples < 1:
        raise ConfigError("--n-examples must be >= 1")
    configs = {}
    for method, (recipe, family) in DEMO_METHODS.items():
        config = with_stored_options(resolve_config(preset(DEMO_PRESET), [*(overrides or []), f"train.recipe={recipe}",
                                                                          f"model.family={family}"]))
        if run_state(out / method) != "new" and read_run_config(out / method).to_dict() != config.to_dict():
            raise CheckpointError(f"{out / method} holds a {method} run with other settings than this demo's; give "
                                  f"another --out, the same --set flags as before, or delete {out / method}")
        configs[method] = config
    return DemoPlan(out, configs, suite, n_examples)


def run_state(run_dir: Path) -> str:
    """``done`` (a final model exists), ``resume`` (a run was started) or ``new``."""
    if (run_dir / f"{MODEL_STEM}.json").exists():
        return "done"
    return "resume" if (run_dir / CONFIG_FILE).exists() else "new"


def steps_done(run_dir: Path) -> int:
    sidecar = latest_training_checkpoint(run_dir)
    return 0 if sidecar is None else int(load_tensors_with_sidecar(sidecar)[1]["step"])


def total_steps(config: RunConfig) -> int:
    train_size = config.data.train_size or len(load_dataset(config.data.dataset, "train", config.data.data_dir)
                                               .dataset)
    return config.train.epochs * -(-train_size // config.train.batch_size)


def time_training_step(config: RunConfig, run_dir: Path) -> tuple[float, float]:
    """Seconds to start training ``config``'s method (trainer, data, model, the first, warm-up step) and of one
    training step after it (the second), set up as the trainer of ``run_dir`` sets it up (routing loss included);
    nothing is written."""
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, progress=False, distributed=Distributed())
    device = trainer.device
    data = load_dataset(config.data.dataset, "train", config.data.data_dir, size=config.train.batch_size)
    _, optimizer, ctx = trainer.setup(data)
    load_dataset(config.data.dataset, "train", config.data.data_dir)  # the whole split, as the run reads it
    images, labels = (t.to(device) for t in fetch_batch(data.dataset, list(range(len(data.dataset)))))
    times = []
    for step in range(2):
        step_started = time.perf_counter()
        train_step(trainer.recipe, ctx, optimizer, Batch(images, labels, step, 0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - step_started)
    return time.perf_counter() - started - times[1], times[1]


def time_evaluation(config: RunConfig, suite: str, n_examples: int) -> float:
    """Seconds to evaluate ``n_examples`` on the suite, timed on a few examples with a fresh model (all attacked),
    plus the start-up it timed (test data, model, the threats' first calls).

    For a cascade such as AutoAttack this is a lower bound: on a fresh model the first attack breaks nearly every
    example, while on a trained one more of them reach the later, costlier attacks.
    """
    setup_started = time.perf_counter()
    device = resolve_device(config.train.device)
    data = load_dataset(config.data.dataset, "test", config.data.data_dir)
    model = create_model(config.model, data.info).to(device).eval()
    images, labels = (t.to(device) for t in fetch_batch(data.dataset, list(range(_TIMING_EXAMPLES))))
    threats = SUITES.get(suite).build(config.threats)
    for threat in threats:  # warm-up: the first call of each threat (kernels, caches) is start-up
        threat(model, images[:1], labels[:1])
    started = time.perf_counter()
    for threat in threats:
        threat(model, images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return started - setup_started + (time.perf_counter() - started) * n_examples / _TIMING_EXAMPLES


def evaluation_left(plan: DemoPlan, method: str) -> float:
    """The fraction of (threat, example) results of ``method``'s evaluation that the store does not hold yet."""
    run_dir = plan.run_dir(method)
    if run_state(run_dir) != "done" or not plan.store_path.exists():
        return 1.0
    config = plan.configs[method]
    data = load_dataset(config.data.dataset, "test", config.data.data_dir)
    loaded = load_run(run_dir, data.info, torch.device("cpu"))
    ids = set(evaluation_indices(len(data.dataset), plan.n_examples))
    threats = SUITES.get(plan.suite).build(loaded.config.threats)
    with ResultStore(plan.store_path) as results:
        missing = sum(len(ids - results.stored_example_ids(loaded.model_hash, threat.key, data.fingerprint))
                      for threat in threats)
    return missing / (len(ids) * len(threats))


def estimate_seconds(plan: DemoPlan) -> float:
    """Wall time the demo still needs on this machine: each remaining training run's start-up and steps, and each
    evaluation's start-up and examples, timed here."""
    seconds = 0.0
    for method, config in plan.configs.items():
        run_dir = plan.run_dir(method)
        state = run_state(run_dir)
        if state != "done":
            remaining = total_steps(config) - (steps_done(run_dir) if state == "resume" else 0)
            start_up, step = time_training_step(config, run_dir)
            seconds += start_up + max(remaining - 1, 0) * step
        if (left := evaluation_left(plan, method)) > 0:
            seconds += left * time_evaluation(config, plan.suite, plan.n_examples)
    return seconds


def describe(plan: DemoPlan) -> str:
    """What the demo will do, in a few lines."""
    lines = [f"rome-bench demo -> {plan.out}"]
    for method, config in plan.configs.items():
        state = run_state(plan.run_dir(method))
        what = {"done": "trained already: reused", "resume": "interrupted earlier: resumed from its last checkpoint",
                "new": "trained"}[state]
        lines.append(f"  {method:9s} {config.preset} preset, {config.data.dataset} data, {config.train.epochs} "
                     f"epoch(s) of {total_steps(config) // config.train.epochs} steps: {what}")
    lines.append(f"  then both evaluated on suite '{plan.suite}' ({plan.n_examples} test examples) into "
                 f"{plan.store_path}, and the leaderboard")
    return "\n".join(lines)


def run_demo(plan: DemoPlan, progress: bool = True, echo: Callable[[str], None] = print,
             on_step: Callable[[int], None] | None = None) -> str:
    """Train what is missing, evaluate, and return the leaderboard (Markdown). Safe to re-run after a kill.

    ``on_step(global_step)`` runs after each training step (as in ``Trainer.fit``).
    """
    from rome_bench.evaluation.leaderboard import build_leaderboard
    from rome_bench.evaluation.render import RENDERERS

    stages = 2 * len(plan.configs) + 1
    for stage, (method, config) in enumerate(plan.configs.items(), 1):
        run_dir = plan.run_dir(method)
        state = run_state(run_dir)
        if state == "done":
            echo(f"[{stage}/{stages}] {method}: trained already, reused")
            continue
        echo(f"[{stage}/{stages}] training {method} -> {run_dir}")
        Trainer(config, run_dir, progress=progress).fit(resume=state == "resume", on_step=on_step)
    suite = SUITES.get(plan.suite)
    with ResultStore(plan.store_path) as results:
        hashes, dataset = set(), None
        for stage, (method, config) in enumerate(plan.configs.items(), len(plan.configs) + 1):
            device = resolve_device(config.train.device)
            data = load_dataset(config.data.dataset, "test", config.data.data_dir)
            loaded = load_run(plan.run_dir(method), data.info, device)
            ids = evaluation_indices(len(data.dataset), plan.n_examples)
            echo(f"[{stage}/{stages}] evaluating {method} on '{plan.suite}' ({len(ids)} examples)")
            evaluate_run(loaded, suite.name, suite.build(loaded.config.threats), data, ids, results, 128, device,
                         f"{method} (demo)", progress)
            hashes.add(loaded.model_hash)
            dataset = data.info.name
        echo(f"[{stages}/{stages}] leaderboard")
        rows = [row for row in build_leaderboard(results, suite, dataset) if row.model_hash in hashes]
        return RENDERERS["md"](rows, suite)


def demo(out: Path, suite: str = DEMO_SUITE, n_examples: int = DEMO_EXAMPLES, overrides: list[str] | None = None,
         progress: bool = True, echo: Callable[[str], None] = print) -> DemoPlan:
    """``rome-bench demo``: plan, say what will happen and how long it should take here, run, and print the
    leaderboard and where the runs and results are."""
    plan = plan_demo(out, suite, n_examples, overrides)
    echo(describe(plan))
    echo(f"estimated time on this machine: about {_minutes(estimate_seconds(plan))} from now, start-up included "
         "(timed just now on two training steps and one evaluation batch per model)")
    echo(run_demo(plan, progress, echo))
    echo(f"demo done: runs in {plan.out}, results in {plan.store_path} "
         f"(rome-bench leaderboard --suite {plan.suite} --store {plan.store_path})")
    return plan


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
