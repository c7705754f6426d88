"""``torch.compile`` for evaluation at one fixed batch size (``rome-bench eval --compile``).

Attacks call the model on ever smaller batches (AutoAttack keeps attacking only the examples still robust; the
runner attacks only the clean-correct ones), and a compiled model recompiles for every new shape. So the wrapper
compiles for one batch size — the evaluation's — pads a smaller batch with zero images up to it and returns the
logits of the real rows only; gradients reach the real rows only. A larger batch runs the eager model. Gate records
(``gates(model)``) are cut back to the real rows after each call, so GMA and the gating analysis see what the eager
model would record.

This is exact only for models that treat the examples of a batch independently at evaluation (eval-mode BatchNorm,
no batch-level randomness): the padded rows then change nothing. The equality with the eager model is what
``tests/test_compiled.py`` checks; ``bench/compile_speed.py`` measures the speed behind the same check.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from rome_bench.models.gates import gating_modules


class FixedBatchCompiled(nn.Module):
    """``model`` compiled once for ``batch_size`` rows; smaller batches are zero-padded, larger ones run eagerly."""

    def __init__(self, model: nn.Module, batch_size: int, backend: str = "inductor") -> None:
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        self.backend = backend
        self.compiled = torch.compile(model, backend=backend, dynamic=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rows = len(images)
        if rows > self.batch_size:
            return self.model(images)
        if rows < self.batch_size:
            padding = images.new_zeros(self.batch_size - rows, *images.shape[1:])
            images = torch.cat([images, padding])
        logits = self.compiled(images)
        if rows < self.batch_size:
            self._trim_gate_records(rows)
        return logits[:rows]

    def _trim_gate_records(self, rows: int) -> None:
        """Each gate's last record without the padded rows (tensor fields whose first axis is the padded batch)."""
        for gate in gating_modules(self.model):
            record = gate.last
            if record is None:
                continue
            trimmed = {field.name: value[:rows] for field in dataclasses.fields(record)
                       if isinstance(value := getattr(record, field.name), torch.Tensor)
                       and value.dim() > 0 and value.shape[0] == self.batch_size}
            gate.last = dataclasses.replace(record, **trimmed)

    def extra_repr(self) -> str:
        return f"batch_size={self.batch_size}, backend={self.backend}"
