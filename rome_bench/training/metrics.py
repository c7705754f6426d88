"""What a training step reports: its result over all ranks, and the epoch's running averages."""

from __future__ import annotations

import torch

from rome_bench.training.recipe import StepContext, StepResult


def global_result(ctx: StepContext, result: StepResult) -> StepResult:
    """The step's result over all ranks: loss and logs as share-weighted sums, correct counts summed."""
    group = ctx.distributed
    if not group.active:
        return result
    names, columns = list(result.logs), list(result.correct)  # the same recipe code: the same order on every rank
    values = [float(result.loss.detach()) * ctx.share, *(result.logs[name] * ctx.share for name in names)]
    for column in columns:
        values.extend(float(count) for count in result.correct[column])
    summed = group.sum_floats(values)
    logs = dict(zip(names, summed[1:1 + len(names)], strict=True))
    counts = summed[1 + len(names):]
    correct = {column: (round(counts[2 * i]), round(counts[2 * i + 1])) for i, column in enumerate(columns)}
    return StepResult(torch.tensor(summed[0]), logs, correct)


class RunningMetrics:
    """Epoch averages shown on the progress bar and stored in checkpoints: losses, logs, per-column accuracy."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new epoch: no steps, no sums."""
        self.steps = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, list[int]] = {}

    def add(self, result: StepResult) -> None:
        """Count one step's loss, logs and correct counts."""
        self.steps += 1
        for name, value in {"loss": float(result.loss.detach()), **result.logs}.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        for column, (correct, total) in result.correct.items():
            counts = self.counts.setdefault(column, [0, 0])
            counts[0] += correct
            counts[1] += total

    def summary(self) -> dict[str, float]:
        """Mean loss and logs per step, and ``<column>_acc`` per accuracy column."""
        result = {name: total / max(self.steps, 1) for name, total in self.sums.items()}
        result.update({f"{column}_acc": correct / max(total, 1) for column, (correct, total) in self.counts.items()})
        return result
