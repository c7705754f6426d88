"""Optimisation efficiency (paper Fig. 8): union robustness of a fixed test subset against training wall time.

With ``train.eval_every = N`` the trainer calls :meth:`TrainingCurve.record` every N optimizer steps: the ℓ1, ℓ2
and ℓ∞ PGD threats at the preset's ε and *training* steps (evaluation rule: each example keeps its first
misclassified iterate) attack the first ``train.eval_examples`` examples of the seeded test permutation; an example
counts as robust only if it is classified correctly clean and under every threat (the union). Each record holds
(step, training wall seconds so far, n, accuracy per column and union) and is appended to the run's
``training-curve.json`` atomically. The evaluation runs inside ``torch.random.fork_rng``, with the model restored
to its mode afterwards, so it changes nothing about the training run: a run with ``eval_every`` ends with the same
weights as one without. Its own time is not counted in the training wall time.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from rome_bench.checkpoint import append_training_curve
from rome_bench.config import RunConfig
from rome_bench.data import evaluation_indices, fetch_batch, load_dataset
from rome_bench.threats import Threat, seen_threats

CURVE_SEED = 0  # the PGD random starts of every record (so records differ only by the weights)


class TrainingCurve:
    """The fixed subset and threats of one run's --eval-every records."""

    def __init__(self, config: RunConfig, run_dir: Path, device: torch.device) -> None:
        test = load_dataset(config.data.dataset, "test", config.data.data_dir)
        ids = evaluation_indices(len(test.dataset), min(config.train.eval_examples, len(test.dataset)))
        images, labels = fetch_batch(test.dataset, ids)
        self.images, self.labels = images.to(device), labels.to(device)
        self.threats: list[Threat] = seen_threats(config.threats.eps, config.threats.train_steps)
        self.run_dir = run_dir
        self.batch_size = config.train.batch_size
        self.seconds_spent = 0.0  # evaluation time, left out of the training wall time

    def accuracy(self, model: nn.Module) -> dict[str, float]:
        """Accuracy per column ('nat', 'l1', 'l2', 'linf') and the per-example union, on the fixed subset."""
        correct: dict[str, torch.Tensor] = {}
        for start in range(0, len(self.images), self.batch_size):
            images = self.images[start:start + self.batch_size]
            labels = self.labels[start:start + self.batch_size]
            with torch.no_grad():
                clean = model(images).argmax(1) == labels
            columns = {"nat": clean}
            for threat in self.threats:
                adversarial = threat(model, images, labels)
                with torch.no_grad():
                    columns[threat.column] = clean & (model(adversarial).argmax(1) == labels)
            columns["union"] = torch.stack(list(columns.values())).all(dim=0)
            for column, hits in columns.items():
                correct[column] = torch.cat([correct.get(column, hits[:0]), hits])
        return {column: float(hits.float().mean()) for column, hits in correct.items()}

    def record(self, model: nn.Module, step: int, train_seconds: float) -> dict[str, float]:
        """Evaluate now, append the record to the run's curve, and return the accuracies."""
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[self.images.device] if self.images.is_cuda else []):
            torch.manual_seed(CURVE_SEED)
            accuracy = self.accuracy(model)
        model.train(was_training)
        append_training_curve(self.run_dir, {"step": step, "wall_seconds": round(train_seconds, 3),
                                             "n": len(self.images), "accuracy": accuracy})
        self.seconds_spent += time.perf_counter() - started
        return accuracy
