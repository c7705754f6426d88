"""The training loop: adversarial examples in eval mode, one update per batch, atomic resumable checkpoints.

Everything random is either drawn from a generator seeded by (seed, epoch) or (seed, step) — the data order and
the augmentation — or from the global torch RNG, whose state is saved in every checkpoint — model initialisation,
PGD random starts and RANDOM's threat draws. A run resumed from a checkpoint therefore continues bit for bit.

The loop is ready for torchrun DDP: it takes ``rank`` and ``world_size``, each rank reads its own shard of the
epoch's permutation, and only rank 0 writes.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rome_bench.config import DEVICE_NAMES, RunConfig, TrainConfig, is_device_name, validate
from rome_bench.data import LoadedDataset, fetch_batch, load_dataset
from rome_bench.errors import CheckpointError, ConfigError, TrainingError
from rome_bench.jsonfiles import read_json
from rome_bench.models import create_model, gate_outputs
from rome_bench.threats import Threat, seen_threats
from rome_bench.training.checkpoint import (
    CHECKPOINT_DIR,
    MODEL_STEM,
    atomic_write_text,
    git_commit,
    latest_training_checkpoint,
    load_tensors_with_sidecar,
    save_tensors_with_sidecar,
    save_training_checkpoint,
)
from rome_bench.training.methods import METHODS, Method
from rome_bench.training.routing import build_routing_loss

CONFIG_FILE = "config.json"
RUN_FILES = (CONFIG_FILE, f"{MODEL_STEM}.json", f"{MODEL_STEM}.safetensors")


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run was trained with."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with rome-bench train")
    try:
        return RunConfig.from_dict(read_json(path, "run config"))
    except ConfigError as error:
        raise CheckpointError(f"{path}: {error}; restore the run's config.json or retrain") from error


def learning_rate(config: TrainConfig, epoch_progress: float) -> float:
    """The paper's schedule: linear warm-up, linear decay to decay_floor·lr, then to final_floor·lr.

    The three phases are scaled to ``config.epochs`` when it differs from their sum.
    """
    phases = config.warmup_epochs + config.decay_epochs + config.final_epochs
    scale = config.epochs / phases if phases > 0 else 1.0
    warmup, decay, final = (config.warmup_epochs * scale, config.decay_epochs * scale, config.final_epochs * scale)
    e = epoch_progress
    if e < warmup:
        return config.lr * e / warmup
    if e < warmup + decay:
        return config.lr * (1 - (1 - config.decay_floor) * (e - warmup) / decay)
    if e < warmup + decay + final:
        fraction = (e - warmup - decay) / final
        return config.lr * (config.decay_floor - (config.decay_floor - config.final_floor) * fraction)
    return config.lr * config.final_floor


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (the paper's optimiser), with the fused kernel: one launch for all parameters."""
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def resolve_device(name: str) -> torch.device:
    if not is_device_name(name):
        raise ConfigError(f"unknown device '{name}'; use {DEVICE_NAMES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def augment_batch(images: torch.Tensor, seed: int, step: int, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip, drawn from a generator seeded by (seed, step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    batch, _, height, width = images.shape
    flips = torch.rand(batch, generator=generator) < 0.5
    shifts = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (shifts[:, 0].view(-1, 1) + torch.arange(height)).to(images.device)
    cols = (shifts[:, 1].view(-1, 1) + torch.arange(width)).to(images.device)
    index = torch.arange(batch, device=images.device).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    cropped = padded[index, channels, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]
    return torch.where(flips.to(images.device).view(-1, 1, 1, 1), cropped.flip(-1), cropped)


@dataclass
class StepStats:
    loss: float
    routing_loss: float
    clean_correct: int
    examples: int
    threat_correct: list[int] = field(default_factory=list)
    threat_examples: list[int] = field(default_factory=list)


def adversarial_training_step(model: nn.Module, method: Method, threats: list[Threat], images: torch.Tensor,
                              labels: torch.Tensor, routing_loss: nn.Module | None,
                              optimizer: torch.optim.Optimizer) -> StepStats:
    """Generate the method's adversarial examples in eval mode, then one optimizer step in train mode."""
    model.eval()
    with torch.no_grad():
        clean_correct = int((model(images).argmax(1) == labels).sum())
    example_index, threat_ids = method.assign(len(images), len(threats), images.device)
    adversarial = torch.empty((len(example_index), *images.shape[1:]), device=images.device)
    for threat_id, threat in enumerate(threats):
        chosen = threat_ids == threat_id
        if chosen.any():
            picked = example_index[chosen]
            adversarial[chosen] = threat(model, images[picked], labels[picked])
    model.train()
    targets = labels[example_index]
    logits = model(adversarial)
    losses = F.cross_entropy(logits, targets, reduction="none")
    loss = method.aggregate(losses, (example_index, threat_ids), len(images))
    routing = routing_loss(gate_outputs(model), threat_ids) if routing_loss is not None else None
    total = loss + routing if routing is not None else loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    correct = logits.argmax(1) == targets
    return StepStats(
        loss=float(loss.detach()), routing_loss=float(routing.detach()) if routing is not None else 0.0,
        clean_correct=clean_correct,
        examples=len(images),
        threat_correct=[int(correct[threat_ids == t].sum()) for t in range(len(threats))],
        threat_examples=[int((threat_ids == t).sum()) for t in range(len(threats))],
    )


class RunningMetrics:
    """Epoch averages shown on the progress bar and stored in checkpoints."""

    def __init__(self, threat_columns: list[str]) -> None:
        self.columns = threat_columns
        self.reset()

    def reset(self) -> None:
        self.loss_sum = self.routing_sum = 0.0
        self.steps = self.clean_correct = self.examples = 0
        self.threat_correct = [0] * len(self.columns)
        self.threat_examples = [0] * len(self.columns)

    def add(self, stats: StepStats) -> None:
        self.steps += 1
        self.loss_sum += stats.loss
        self.routing_sum += stats.routing_loss
        self.clean_correct += stats.clean_correct
        self.examples += stats.examples
        for i in range(len(self.columns)):
            self.threat_correct[i] += stats.threat_correct[i]
            self.threat_examples[i] += stats.threat_examples[i]

    def summary(self) -> dict[str, float]:
        result = {"loss": self.loss_sum / max(self.steps, 1), "routing": self.routing_sum / max(self.steps, 1),
                  "clean_acc": self.clean_correct / max(self.examples, 1)}
        for column, correct, total in zip(self.columns, self.threat_correct, self.threat_examples, strict=True):
            result[f"{column}_acc"] = correct / max(total, 1)
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

    def __init__(self, config: RunConfig, run_dir: Path, rank: int = 0, world_size: int = 1,
                 progress: bool = True) -> None:
        validate(config)
        self.config = config
        self.run_dir = run_dir
        self.rank = rank
        self.world_size = world_size
        self.progress = progress and rank == 0
        self.method: Method = METHODS.get(config.train.method)
        self.device = resolve_device(config.train.device)

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def fit(self, resume: bool = False, force: bool = False,
            on_step: Callable[[int], None] | None = None) -> Path:
        """Train to the end; returns the final model's sidecar path. ``on_step(global_step)`` runs after each step."""
        config = self.config
        must_clear = check_run_dir(self.run_dir, config, resume, force) if self.writes else False
        data = load_dataset(config.data.dataset, "train", config.data.data_dir, size=config.data.train_size,
                            seed=config.train.seed)
        torch.manual_seed(config.train.seed)
        model = create_model(config.model, data.info, with_experts=self.method.uses_experts).to(self.device)
        optimizer = build_optimizer(model, config.train)
        threats = seen_threats(config.threats.eps, config.threats.train_steps, config.threats.l1_sparsity,
                               keep_adversarial=False)
        routing_loss = self._routing_loss(len(threats))
        if self.writes and not resume:
            if must_clear:
                clear_run_dir(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG_FILE, config.to_json())
        global_step = self._restore(model, optimizer) if resume else 0
        self._loop(model, optimizer, threats, routing_loss, data, global_step, on_step)
        return self._save_final(model, data)

    def _routing_loss(self, num_threats: int) -> nn.Module | None:
        """λ·(the configured routing regulariser) for a model with experts; None without experts or with λ = 0."""
        if not self.method.uses_experts:
            return None
        loss = build_routing_loss(self.config.model.rome, num_threats)
        return None if loss is None else loss.to(self.device)

    def _shard(self, num_examples: int, epoch: int) -> torch.Tensor:
        return epoch_permutation(num_examples, self.config.train.seed, epoch)[self.rank::self.world_size]

    def steps_per_epoch(self, num_examples: int) -> int:
        return math.ceil(len(range(self.rank, num_examples, self.world_size)) / self.config.train.batch_size)

    def _loop(self, model: nn.Module, optimizer: torch.optim.Optimizer, threats: list[Threat],
              routing_loss: nn.Module | None, data: LoadedDataset, global_step: int,
              on_step: Callable[[int], None] | None) -> None:
        train = self.config.train
        per_epoch = self.steps_per_epoch(len(data.dataset))
        metrics = RunningMetrics([threat.column for threat in threats])
        start_epoch, start_batch = divmod(global_step, per_epoch)
        for epoch in range(start_epoch, train.epochs):
            metrics.reset()
            order = self._shard(len(data.dataset), epoch)
            batches = range(start_batch if epoch == start_epoch else 0, per_epoch)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{train.epochs}", disable=not self.progress, leave=False,
                       file=sys.stderr)
            for batch in bar:
                indices = order[batch * train.batch_size:(batch + 1) * train.batch_size]
                images, labels = self._batch(data, indices, global_step)
                lr = learning_rate(train, global_step / per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                stats = adversarial_training_step(model, self.method, threats, images, labels, routing_loss,
                                                  optimizer)
                self._stop_if_diverged(stats, global_step + 1, lr)
                metrics.add(stats)
                global_step += 1
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.summary().items()}, refresh=False)
                if self.writes and (global_step % train.checkpoint_every == 0 or batch == per_epoch - 1):
                    self._checkpoint(model, optimizer, global_step, epoch, metrics.summary(), data)
                if on_step is not None:
                    on_step(global_step)
            bar.close()
            if self.writes:
                summary = "  ".join(f"{k} {v:.4g}" for k, v in metrics.summary().items())
                print(f"epoch {epoch + 1}/{train.epochs}  {summary}", file=sys.stderr)

    def _stop_if_diverged(self, stats: StepStats, step: int, lr: float) -> None:
        """Stop before a NaN or infinite loss reaches a checkpoint: the ones on disk stay the last good weights."""
        if math.isfinite(stats.loss) and math.isfinite(stats.routing_loss):
            return
        latest = latest_training_checkpoint(self.run_dir)
        kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint had been written yet"
        raise TrainingError(f"training loss became {stats.loss + stats.routing_loss} at step {step} (lr {lr:.3g}); "
                            f"stopped, {kept}: lower train.lr (--lr) and train again with --force")

    def _batch(self, data: LoadedDataset, indices: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = fetch_batch(data.dataset, indices)
        if self.config.data.augment:
            images = augment_batch(images, self.config.train.seed, step)
        return images.to(self.device), labels.to(self.device)

    def _state_tensors(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for index, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{index}"] = state
        return tensors

    def _checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, global_step: int, epoch: int,
                    metrics: dict[str, float], data: LoadedDataset) -> None:
        metadata = self._metadata(data, epoch=epoch, metrics=metrics)
        metadata["param_groups"] = [{k: v for k, v in g.items() if k != "params"}
                                    for g in optimizer.state_dict()["param_groups"]]
        save_training_checkpoint(self.run_dir, global_step, self._state_tensors(model, optimizer), metadata)

    def _restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        sidecar = latest_training_checkpoint(self.run_dir)
        if sidecar is None:
            return 0  # killed before the first checkpoint: start over, which is the same run
        tensors, metadata = load_tensors_with_sidecar(sidecar)
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        groups = optimizer.state_dict()["param_groups"]
        for group, saved in zip(groups, metadata["param_groups"], strict=True):
            group.update(saved)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.cpu"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        return int(metadata["step"])

    def _metadata(self, data: LoadedDataset, **extra: Any) -> dict[str, Any]:
        return {"method": self.config.train.method, "config": self.config.to_dict(), "git_commit": git_commit(),
                "data_fingerprint": data.fingerprint, "data_source": data.source, **extra}

    def _save_final(self, model: nn.Module, data: LoadedDataset) -> Path:
        path = self.run_dir / f"{MODEL_STEM}.json"
        if self.writes:
            metadata = self._metadata(data, epoch=self.config.train.epochs, dataset=data.info.name,
                                      num_classes=data.info.num_classes)
            path = save_tensors_with_sidecar(self.run_dir, MODEL_STEM, model.state_dict(), metadata)
        return path
