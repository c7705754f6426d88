"""The training loop: adversarial examples in eval mode, one update per batch, atomic resumable checkpoints.

Everything random is either drawn from a generator seeded by (seed, epoch) or (seed, step) — the data order and
the augmentation — or from the global torch RNG, whose state is saved in every checkpoint — model initialisation,
PGD random starts and RANDOM's threat draws. A run resumed from a checkpoint therefore continues bit for bit.

What happens inside a step is the recipe's (``training/recipe.py``); the model is built by its family
(``model.family``). The optimiser and schedule live in ``training/optim.py``, what a step reports in
``training/metrics.py``, the cost count in ``costs.py`` and the checkpoint's key layout in ``checkpoint.py``.

Under ``torchrun`` (``training/distributed.py``) the same loop trains one model over W processes: ``train.batch_size``
is the global batch, each rank takes its contiguous chunk of it, gradients are all-reduced through the step
context, and only rank 0 writes (config, checkpoints, curve, final model) while the others wait. Step counts are
global batches, so a checkpoint resumes on any world size. Rank 0 draws from the same global RNG stream as one
process would; rank r > 0 from its own seed, so attacks with random starts differ in their draws (not in
distribution) from a one-process run; everything else — data order, augmentation, model initialisation — is the
same.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rome_bench.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    MODEL_STEM,
    RUN_FILES,
    TrainingState,
    atomic_write_text,
    git_commit,
    latest_training_checkpoint,
    load_tensors_with_sidecar,
    read_run_config,
    save_tensors_with_sidecar,
    save_training_checkpoint,
)
from rome_bench.config import RunConfig, validate
from rome_bench.costs import CostMeter
from rome_bench.data import LoadedDataset, fetch_batch, load_dataset
from rome_bench.device import check_bf16, resolve_device
from rome_bench.errors import CheckpointError, TrainingError
from rome_bench.models import build_family, create_model
from rome_bench.models.family import with_stored_options
from rome_bench.provenance import training_provenance
from rome_bench.training import recipes as _recipes  # noqa: F401  (registers the built-in recipes)
from rome_bench.training.curve import TrainingCurve
from rome_bench.training.distributed import Distributed, check_batches, local_slice, rank_seed
from rome_bench.training.experts import load_expert_runs
from rome_bench.training.finetune import load_initial_weights
from rome_bench.training.metrics import RunningMetrics, global_result
from rome_bench.training.optim import build_optimizer, learning_rate, set_learning_rate
from rome_bench.training.recipe import Batch, Recipe, StepContext, StepResult, build_recipe
from rome_bench.training.routing import routing_loss_for


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the examples in ``epoch``, drawn from a generator seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def augment_batch(images: torch.Tensor, seed: int, step: int, padding: int = 4, start: int = 0,
                  global_size: int | None = None) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip, drawn from a generator seeded by (seed, step).

    The draws are made for the whole global batch (``global_size`` rows) and rows ``start …`` taken, so a rank's
    chunk is augmented exactly as in a one-process run.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    batch, _, height, width = images.shape
    drawn = global_size or batch
    flips = (torch.rand(drawn, generator=generator) < 0.5)[start:start + batch]
    shifts = torch.randint(0, 2 * padding + 1, (drawn, 2), generator=generator)[start:start + batch]
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (shifts[:, 0].view(-1, 1) + torch.arange(height)).to(images.device)
    cols = (shifts[:, 1].view(-1, 1) + torch.arange(width)).to(images.device)
    index = torch.arange(batch, device=images.device).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    cropped = padded[index, channels, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]
    return torch.where(flips.to(images.device).view(-1, 1, 1, 1), cropped.flip(-1), cropped)


def train_step(recipe: Recipe, ctx: StepContext, optimizer: torch.optim.Optimizer, batch: Batch) -> StepResult:
    """One optimizer step: the recipe fills the gradients; a non-finite loss leaves the weights untouched.

    With several processes the result is the global batch's (losses and logs weighted by share, counts summed),
    so every rank takes the same decision.
    """
    optimizer.zero_grad(set_to_none=True)
    result = global_result(ctx, recipe.update(ctx, batch))
    if torch.isfinite(result.loss.detach()).all():
        optimizer.step()
    return result


def check_run_dir(run_dir: Path, config: RunConfig, resume: bool, force: bool) -> bool:
    """Refuse to overwrite a run unless --resume or --force; on resume the saved config must match.

    Returns whether an old run must be cleared (with --force), which the trainer does only once the new run's
    data and model have been built, so a failing start never loses the old run.
    """
    saved = run_dir / CONFIG_FILE
    has_run = saved.exists() or (run_dir / CHECKPOINT_DIR).exists() or (run_dir / f"{MODEL_STEM}.json").exists()
    if resume:
        if not saved.exists():
            raise CheckpointError(f"nothing to resume in {run_dir}: no {CONFIG_FILE}; start it without --resume")
        previous = read_run_config(run_dir)
        previous.train.device = config.train.device
        if previous.to_dict() != config.to_dict():
            raise CheckpointError(f"--resume with settings that differ from {saved}; resume without changing flags")
        return False
    if has_run and not force:
        raise CheckpointError(f"run directory {run_dir} already holds a run; use --resume to continue it, "
                              f"--force to overwrite it, or another --out")
    return has_run


def clear_run_dir(run_dir: Path) -> None:
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


class Trainer:
    """Trains one run described by a RunConfig into ``run_dir``."""

    def __init__(self, config: RunConfig, run_dir: Path, progress: bool = True,
                 distributed: Distributed | None = None) -> None:
        validate(config)
        config = with_stored_options(config)  # unknown names and bad model.options fail here
        self.config = config
        self.run_dir = run_dir
        self.distributed = distributed or Distributed.from_env()  # torchrun's RANK/WORLD_SIZE, else one process
        self.rank = self.distributed.rank
        self.world_size = self.distributed.world_size
        self.progress = progress and self.rank == 0
        self.family = build_family(config.model)
        self.recipe: Recipe = build_recipe(config.train.recipe, config.train.options, config.threats,
                                           config.train.attack)
        self.recipe.check_family(config.model.family)
        self.recipe.threats()  # a recipe that cannot build its threats fails here, before anything is written
        self.device = resolve_device(config.train.device)
        if config.train.precision == "bf16":
            check_bf16(self.device)  # before anything is written
        self._routing_loss(self.recipe.routing_groups())  # an unknown or unfit routing loss fails here too
        self.expert_records: list[dict[str, Any]] = []  # the expert runs loaded (DWF, MORE), for the sidecar

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def fit(self, resume: bool = False, force: bool = False,
            on_step: Callable[[int], None] | None = None) -> Path:
        """Train to the end; returns the final model's sidecar path. ``on_step(global_step)`` runs after each step.

        Under torchrun every rank calls this; it joins the process group first and leaves it at the end.
        """
        self.device = self.distributed.start(self.device)
        try:
            return self._fit(resume, force, on_step)
        finally:
            self.distributed.stop()

    def _fit(self, resume: bool, force: bool, on_step: Callable[[int], None] | None) -> Path:
        config, group = self.config, self.distributed
        must_clear = bool(group.on_main(lambda: check_run_dir(self.run_dir, config, resume, force)))
        data = group.main_first(lambda: load_dataset(config.data.dataset, "train", config.data.data_dir,
                                                     size=config.data.train_size, seed=config.train.seed))
        check_batches(len(data.dataset), config.train.batch_size, self.world_size)
        model, optimizer, ctx = self.setup(data)
        costs = CostMeter(model, self.device, backward="grad-enabled").start()
        curve = TrainingCurve(config, self.run_dir, self.device) if config.train.eval_every and self.writes else None
        if not resume:
            group.on_main(lambda: self._start_run_dir(must_clear))
        global_step = self._restore(model, optimizer, costs) if resume else 0
        self._loop(ctx, optimizer, data, global_step, costs, curve, on_step)
        return self._save_final(model, data, costs)

    def setup(self, data: LoadedDataset) -> tuple[nn.Module, torch.optim.Optimizer, StepContext]:
        """What :meth:`fit` trains with: the model, the optimiser and the step context, built from the config.

        The model is created under ``train.seed`` (so every rank builds the same one), gets its expert runs
        (DWF, MORE) and ``model.init_from`` weights, moves to the trainer's device and is shared by every rank;
        the optimiser covers the recipe's parameters; the step context carries λ·(the family's routing loss).
        ``rome-bench demo`` times a step on exactly this set-up.
        """
        config = self.config
        torch.manual_seed(config.train.seed)
        model = create_model(config.model, data.info)
        self.expert_records = load_expert_runs(model, self.family, config, data.info)
        if config.model.init_from:
            load_initial_weights(model, config.model, data.info)
        model = model.to(self.device)
        self.distributed.broadcast_model(model)
        if self.rank > 0:  # rank 0 keeps the one-process stream; the others draw their own
            torch.manual_seed(rank_seed(config.train.seed, self.rank, 0))
        parameters = self.recipe.parameters(model)
        optimizer = build_optimizer(parameters, config.train)
        ctx = StepContext(model, parameters, self._routing_loss(self.recipe.routing_groups()), self.distributed,
                          config.train.precision)
        return model, optimizer, ctx

    def _start_run_dir(self, must_clear: bool) -> None:
        if must_clear:
            clear_run_dir(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / CONFIG_FILE, self.config.to_json())

    def _routing_loss(self, num_threats: int) -> nn.Module | None:
        """λ·(the routing regulariser the family asks for); None for a family without one or with λ = 0."""
        loss = routing_loss_for(self.family.routing(self.config.model), self.family.options, num_threats)
        return None if loss is None else loss.to(self.device)

    def steps_per_epoch(self, num_examples: int) -> int:
        """Optimizer steps (global batches) per epoch: the same for every world size."""
        return math.ceil(num_examples / self.config.train.batch_size)

    def _loop(self, ctx: StepContext, optimizer: torch.optim.Optimizer, data: LoadedDataset, global_step: int,
              costs: CostMeter, curve: TrainingCurve | None, on_step: Callable[[int], None] | None) -> None:
        train = self.config.train
        per_epoch = self.steps_per_epoch(len(data.dataset))
        metrics = RunningMetrics()
        start_epoch, start_batch = divmod(global_step, per_epoch)
        for epoch in range(start_epoch, train.epochs):
            metrics.reset()
            order = epoch_permutation(len(data.dataset), train.seed, epoch)
            batches = range(start_batch if epoch == start_epoch else 0, per_epoch)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{train.epochs}", disable=not self.progress, leave=False,
                       file=sys.stderr)
            for batch in bar:
                batch_indices = order[batch * train.batch_size:(batch + 1) * train.batch_size]
                indices, start = local_slice(batch_indices, self.rank, self.world_size)
                ctx.share = len(indices) / len(batch_indices)
                images, labels = self._batch(data, indices, global_step, start, len(batch_indices))
                lr = learning_rate(train, global_step / per_epoch)
                set_learning_rate(optimizer, lr)
                result = train_step(self.recipe, ctx, optimizer, Batch(images, labels, global_step, epoch))
                self._stop_if_diverged(result, global_step + 1, lr)
                metrics.add(result)
                global_step += 1
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.summary().items()}, refresh=False)
                if curve is not None and global_step % train.eval_every == 0:
                    with costs.paused():
                        curve.record(ctx.model, global_step, costs.wall_seconds())
                if global_step % train.checkpoint_every == 0 or batch == per_epoch - 1:
                    self._checkpoint(ctx.model, optimizer, global_step, epoch, metrics.summary(), data, costs)
                if on_step is not None:
                    on_step(global_step)
            bar.close()
            if self.writes:
                summary = "  ".join(f"{k} {v:.4g}" for k, v in metrics.summary().items())
                print(f"epoch {epoch + 1}/{train.epochs}  {summary}", file=sys.stderr)

    def _stop_if_diverged(self, result: StepResult, step: int, lr: float) -> None:
        """Stop before a NaN or infinite loss reaches a checkpoint: the ones on disk stay the last good weights."""
        loss = float(result.loss.detach())
        if math.isfinite(loss):
            return
        latest = latest_training_checkpoint(self.run_dir)
        kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint had been written yet"
        raise TrainingError(f"training loss became {loss} at step {step} (lr {lr:.3g}); "
                            f"stopped, {kept}: lower train.lr (--lr) and train again with --force")

    def _batch(self, data: LoadedDataset, indices: torch.Tensor, step: int, start: int = 0,
               global_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = fetch_batch(data.dataset, indices)
        if self.config.data.augment:
            images = augment_batch(images, self.config.train.seed, step, start=start, global_size=global_size)
        return images.to(self.device), labels.to(self.device)

    def _state_tensors(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """The training state; with several processes also every rank's RNG states (``rng.rank<r>.*``)."""
        rng_states = self.distributed.gather_objects(_rng_states(self.device if self.world_size > 1 else None))
        optimizer_state = {index: {name: torch.as_tensor(value) for name, value in state.items()}
                           for index, state in optimizer.state_dict()["state"].items()}
        state = TrainingState(model=model.state_dict(), optimizer=optimizer_state, recipe=self.recipe.state_dict(),
                              cpu_rng=torch.get_rng_state(),
                              cuda_rngs=list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
                              rank_rngs=dict(enumerate(rng_states[1:], start=1)))
        return state.to_tensors()

    def _checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, global_step: int, epoch: int,
                    metrics: dict[str, float], data: LoadedDataset, costs: CostMeter) -> None:
        """Every rank contributes (RNG states, image counts); rank 0 writes while the others wait."""
        tensors = self._state_tensors(model, optimizer)
        train_cost = self._train_cost(costs)

        def write() -> None:
            metadata = self._metadata(data, epoch=epoch, metrics=metrics, train_cost=train_cost)
            metadata["param_groups"] = [{k: v for k, v in g.items() if k != "params"}
                                        for g in optimizer.state_dict()["param_groups"]]
            save_training_checkpoint(self.run_dir, global_step, tensors, metadata)

        self.distributed.on_main(write)

    def _train_cost(self, costs: CostMeter) -> dict[str, Any]:
        """The cost summary with the images of all ranks (rank 0 carries the counts of earlier sessions)."""
        summary = costs.summary()
        forward, backward = self.distributed.sum_floats([costs.forward_images, costs.backward_images])
        summary.update(forward_images=round(forward), backward_images=round(backward))
        return summary

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, costs: CostMeter) -> int:
        sidecar = latest_training_checkpoint(self.run_dir)
        if sidecar is None:
            return 0  # killed before the first checkpoint: start over, which is the same run
        tensors, metadata = load_tensors_with_sidecar(sidecar)
        state = TrainingState.from_tensors(tensors)
        model.load_state_dict(state.model)
        groups = optimizer.state_dict()["param_groups"]
        for group, saved in zip(groups, metadata["param_groups"], strict=True):
            group.update(saved)
        optimizer.load_state_dict({"state": state.optimizer, "param_groups": groups})
        self.recipe.load_state_dict(state.recipe)
        step = int(metadata["step"])
        saved_cost = metadata.get("train_cost") or {}
        if self.rank > 0:  # the counts so far are rank 0's to carry (they are summed over the ranks when saved)
            saved_cost = {"wall_seconds": saved_cost.get("wall_seconds", 0.0)}
        costs.restore(saved_cost)
        self._restore_rng(state, int(metadata.get("world_size", 1)), step)
        return step

    def _restore_rng(self, state: TrainingState, saved_world_size: int, step: int) -> None:
        """Rank 0 continues the saved stream; rank r > 0 its own when the world size is unchanged, else a fresh
        seed (resuming on another world size continues the run, not bit for bit)."""
        if self.rank == 0:
            torch.set_rng_state(state.cpu_rng)
            if state.cuda_rngs and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state.cuda_rngs)
            return
        saved = state.rank_rngs.get(self.rank, {})
        if saved_world_size != self.world_size or "cpu" not in saved:
            torch.manual_seed(rank_seed(self.config.train.seed, self.rank, step))
            return
        torch.set_rng_state(saved["cpu"])
        if "cuda" in saved and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda"], self.device)

    def _metadata(self, data: LoadedDataset, **extra: Any) -> dict[str, Any]:
        return {"method": self.config.method, "recipe": self.config.train.recipe,
                "family": self.config.model.family, "config": self.config.to_dict(), "git_commit": git_commit(),
                "data_fingerprint": data.fingerprint, "data_source": data.source, "world_size": self.world_size,
                "provenance": training_provenance(self.device, self.world_size, self.distributed.backend,
                                                  "bfloat16" if self.config.train.precision == "bf16" else "off"),
                **({"experts": self.expert_records} if self.expert_records else {}), **extra}

    def _save_final(self, model: nn.Module, data: LoadedDataset, costs: CostMeter) -> Path:
        train_cost = self._train_cost(costs)

        def write() -> None:
            metadata = self._metadata(data, epoch=self.config.train.epochs, dataset=data.info.name,
                                      num_classes=data.info.num_classes, train_cost=train_cost)
            save_tensors_with_sidecar(self.run_dir, MODEL_STEM, model.state_dict(), metadata)

        self.distributed.on_main(write)
        return self.run_dir / f"{MODEL_STEM}.json"


def _rng_states(device: torch.device | None) -> dict[str, torch.Tensor]:
    """This process's CPU RNG state and, on a GPU rank, its device's (``device`` None: not needed)."""
    if device is None:
        return {}
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states
