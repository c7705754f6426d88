"""Data-parallel training under ``torchrun``: the process group, the batch split and the collectives of a step.

A run of W processes trains one model on the same global batches as one process would:

* ``train.batch_size`` is the GLOBAL batch. Global batch b of an epoch is the same slice of the seeded permutation
  for every W; rank r trains on its r-th contiguous chunk (``torch.tensor_split``: sizes differ by at most one).
* Gradients are averaged through the step context's one seam (``StepContext.backward``/``grads``): each rank's
  gradient is weighted by its share n_r/N of the global batch and summed with one all-reduce, so a loss that is a
  mean over examples gets the single-process gradient (up to float rounding). A parameter that no rank's loss
  reaches (a top-k expert that got no token) keeps ``grad = None`` as in one process; one reached on some rank
  only gets zeros elsewhere. No ``DistributedDataParallel`` wrapper: the seam already sees every gradient, and
  unused parameters need no ``find_unused_parameters`` search.
* Routing losses see the gates of the GLOBAL batch: every rank gathers all ranks' gates (and threat ids) and
  computes the same loss; the gather's backward keeps only this rank's rows, scaled by 1/share so the weighted sum
  of the ranks' gradients is the single-process gradient of the loss.

* A recipe's batch-level decisions use ``StepContext.global_sum`` / ``rank0_value`` (RAMP's threat pair and
  pairing set, E-AT's norm draw and running counts).

``rome-bench train --nproc N`` launches this itself: :func:`launch_processes` runs the same command line again under
torchrun (:func:`torchrun_command`).

Not global (per rank, documented in docs/distributed.md): BatchNorm batch statistics, the sparse MoE's per-batch
capacity and routing-noise scale.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from rome_bench import errors
from rome_bench.errors import ConfigError, RomeBenchError

T = TypeVar("T")
RANK_SEED_STRIDE = 7_919  # rank r > 0 reseeds its global RNG with seed·RANK_SEED_STRIDE + r (+ the step on resume)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from error


class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1, every collective a no-op)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} of world size {world_size} is not a valid place; launch with torchrun")
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend: str | None = None
        self.device = torch.device("cpu")  # where collectives run (this rank's GPU with NCCL)
        self._owns_group = False

    @classmethod
    def from_env(cls) -> Distributed:
        """torchrun's RANK, WORLD_SIZE and LOCAL_RANK (absent: one process)."""
        return cls(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's training device."""
        if not self.active:
            return device
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"local rank {self.local_rank} has no GPU (this node has "
                                  f"{torch.cuda.device_count()}): start at most that many processes per node")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.device = device if self.backend == "nccl" else torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size)
            self._owns_group = True
        return device

    def stop(self) -> None:
        """Leave the process group this object joined."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def main_first(self, action: Callable[[], T]) -> T:
        """Rank 0 runs ``action`` first (checks, downloads); the others run it after it succeeded, or raise its
        error; one process just runs it."""
        if not self.active:
            return action()
        failure: list[Any] = [None]
        if self.is_main:
            try:
                result = action()
            except Exception as error:
                failure = [(type(error).__name__, str(error).splitlines()[0] if str(error) else type(error).__name__)]
                dist.broadcast_object_list(failure, src=0)
                raise
            dist.broadcast_object_list(failure, src=0)
            return result
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            name, message = failure[0]
            raise getattr(errors, name, RomeBenchError)(message)
        return action()

    def on_main(self, action: Callable[[], T]) -> T | None:
        """Rank 0 runs ``action`` (the writes) while the others wait; its RomeBenchError reaches every rank."""
        if not self.active:
            return action()
        return self.main_first(action) if self.is_main else self.main_first(lambda: None)

    def sum_floats(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (float64)."""
        if not self.active or not values:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (small picklable things: RNG states, counts)."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_model(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (they are already equal when seeded alike)."""
        if not self.active:
            return
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() or tensor.dtype in (torch.int64, torch.int32, torch.bool):
                moved = tensor.data.to(self.device)
                dist.broadcast(moved, src=0)
                tensor.data.copy_(moved)

    def reduce_gradients(self, parameters: list[nn.Parameter], grads: list[torch.Tensor | None], share: float
                         ) -> list[torch.Tensor | None]:
        """Σ_r share_r·g_r with one all-reduce; None where no rank's loss reached the parameter."""
        if not self.active:
            return grads
        pieces = [(g.detach() * share if g is not None else torch.zeros_like(p)).reshape(-1).float()
                  for p, g in zip(parameters, grads, strict=True)]
        flags = torch.tensor([float(g is not None) for g in grads], device=parameters[0].device)
        buffer = torch.cat([*pieces, flags]).to(self.device)
        dist.all_reduce(buffer)
        buffer = buffer.to(parameters[0].device)
        reached = buffer[-len(grads):] > 0
        result: list[torch.Tensor | None] = []
        offset = 0
        for index, parameter in enumerate(parameters):
            size = parameter.numel()
            flat = buffer[offset:offset + size]
            offset += size
            result.append(flat.view_as(parameter).to(parameter.dtype) if reached[index] else None)
        return result

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' ``tensor`` concatenated along dim 0 in rank order (row counts may differ); the backward
        passes this rank's rows of the gradient back, nothing to the other ranks."""
        if not self.active:
            return tensor
        return _GatherRows.apply(tensor, self)

    def gather_gate(self, gate: Any) -> Any:
        """A gate record (a dataclass of (B, …) tensors) of the global batch."""
        if not self.active:
            return gate
        changes = {field.name: self.gather_rows(getattr(gate, field.name)) for field in dataclasses.fields(gate)
                   if isinstance(getattr(gate, field.name), torch.Tensor)}
        return dataclasses.replace(gate, **changes)


class _GatherRows(torch.autograd.Function):
    """all_gather with uneven row counts; backward: this rank's slice of the (identical-on-every-rank) loss's grad."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Distributed) -> torch.Tensor:  # type: ignore[override]
        sizes = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=group.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(group.world_size)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(size) for size in all_sizes]
        padded = torch.zeros((max(counts), *tensor.shape[1:]), dtype=tensor.dtype, device=group.device)
        padded[:tensor.shape[0]] = tensor.detach().to(group.device)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.start = sum(counts[:group.rank])
        ctx.count = tensor.shape[0]
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).to(tensor.device)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad[ctx.start:ctx.start + ctx.count], None


def local_slice(global_indices: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, int]:
    """This rank's contiguous chunk of a global batch and where it starts in it."""
    chunks = torch.tensor_split(global_indices, world_size)
    return chunks[rank], sum(len(chunk) for chunk in chunks[:rank])


def check_batches(num_examples: int, batch_size: int, world_size: int) -> None:
    """Every rank gets at least one example of every global batch, or one ConfigError line that says what to change."""
    if world_size == 1:
        return
    last = num_examples % batch_size
    if batch_size < world_size or 0 < last < world_size:
        smallest = batch_size if batch_size < world_size else last
        raise ConfigError(f"a global batch of {smallest} examples cannot be split over {world_size} processes "
                          f"(train size {num_examples}, train.batch_size {batch_size}): make --batch-size and the "
                          f"last batch (train size mod batch size, or 0) at least {world_size}, or use fewer processes")


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The global-RNG seed of rank ``rank`` > 0 when it starts (step 0) or resumes at ``step`` on another world size."""
    return (seed * RANK_SEED_STRIDE + rank) * 1_000_003 + step


def check_world_batch(batch_size: int, nproc: int) -> None:
    """Before a launch: the global batch must give each of the ``nproc`` processes at least one example."""
    if batch_size < nproc:
        raise ConfigError(f"a global batch of {batch_size} examples (--batch-size) cannot be split over {nproc} "
                          f"processes: give --batch-size >= {nproc}, or fewer processes with --nproc")


def launch_processes(nproc: int, argv: list[str]) -> int:
    """Run this ``rome-bench`` command line again under torchrun with ``nproc`` local processes; its exit code.

    The processes' output passes through as it comes; once a rank prints rome-bench's one-line ``error: …``, what
    follows (torchrun's ChildFailedError report and traceback) is dropped and the exit code is 2, as for one process.
    """
    import subprocess

    process = subprocess.Popen(torchrun_command(nproc, argv), stderr=subprocess.PIPE)
    assert process.stderr is not None
    user_error = False
    line = b""
    while chunk := os.read(process.stderr.fileno(), 4096):
        if user_error:
            continue  # drain, so the processes never block on a full pipe
        start = len(line)
        line += chunk
        lines = line.split(b"\n")
        for index, complete in enumerate(lines[:-1]):
            if complete.startswith(b"error: "):
                user_error = True
                written = sum(len(part) + 1 for part in lines[:index + 1])
                _write_stderr(line[start:written] if written > start else b"")
                break
        if not user_error:
            _write_stderr(line[start:])
            line = lines[-1]
    code = process.wait()
    return 2 if user_error and code != 0 else code


def _write_stderr(data: bytes) -> None:
    sys.stderr.flush()
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node=N -m rome_bench ARGV`` without --nproc."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
            "rome_bench", *kept]
