"""What a model's passes cost: images through its forward and backward, and (for training) wall time.

Training and evaluation both count with :class:`CostMeter`, which neither owns, so neither imports the other. They
count a backward differently, because their passes differ:

* ``backward="grad-enabled"`` (training): a forward run with autograd on counts as a backward too; every such forward
  in training is followed by exactly one backward, of the attack's or of the update's loss.
* ``backward="observed"`` (evaluation): each backward that reaches the forward's output counts when it runs; an
  attack may take several gradients of one forward (one per class) or none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from rome_bench.device import device_name

BackwardCount = Literal["grad-enabled", "observed"]


class CostMeter:
    """Counts images through ``model``'s forward and backward passes (a hook, no wrapper) while started.

    Used as a context manager it counts inside the block; :meth:`start` counts until :meth:`stop`. The wall clock
    runs from construction; counts and time accumulate across a resumed run (:meth:`restore`).
    """

    def __init__(self, model: nn.Module, device: torch.device | None = None,
                 backward: BackwardCount = "observed") -> None:
        self.model = model
        self.device = device
        self.backward = backward
        self.forward_images = 0
        self.backward_images = 0
        self.seconds = 0.0
        self._started = time.perf_counter()
        self._counting = True
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def start(self) -> CostMeter:
        """Count every forward of the model from now on; returns the meter."""
        if self._handle is None:
            self._handle = self.model.register_forward_hook(self._on_forward)
        return self

    def stop(self) -> None:
        """Stop counting (the counts so far stay)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> CostMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_forward(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not self._counting:
            return
        count = len(inputs[0]) if inputs and isinstance(inputs[0], torch.Tensor) else 0
        self.forward_images += count
        if self.backward == "grad-enabled":
            if torch.is_grad_enabled():
                self.backward_images += count
        elif isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: self._on_backward(count))

    def _on_backward(self, count: int) -> None:
        self.backward_images += count

    def wall_seconds(self) -> float:
        """Wall time so far (all sessions of a resumed run; time spent while paused left out)."""
        return self.seconds + time.perf_counter() - self._started

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Neither the time nor the images of what runs inside count (training-curve evaluations)."""
        started, self._counting = time.perf_counter(), False
        try:
            yield
        finally:
            self._counting = True
            self._started += time.perf_counter() - started

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a saved :meth:`summary` (missing fields count from zero); the clock restarts now."""
        self.forward_images = int(saved.get("forward_images", 0))
        self.backward_images = int(saved.get("backward_images", 0))
        self.seconds = float(saved.get("wall_seconds", 0.0))
        self._started = time.perf_counter()

    def summary(self) -> dict[str, Any]:
        """The cost record a run stores: wall seconds, the device and the image counts."""
        device = {} if self.device is None else {"device": str(self.device), "device_name": device_name(self.device)}
        return {"wall_seconds": round(self.wall_seconds(), 3), **device,
                "forward_images": self.forward_images, "backward_images": self.backward_images}
