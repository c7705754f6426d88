"""Who evaluates the shards of ``sharding.py``: this process, the ranks of a torchrun launch, or a Slurm job array.

torchrun: every rank runs the same ``rome-bench eval`` command, evaluates shards i ≡ rank (mod world size), waits at
a barrier (gloo: it needs no GPU and carries no tensors), and rank 0 alone merges into the store. Slurm: submitit
submits one array task per unfinished shard, each running the eval command restricted to its shard
(``--shard-index``); the merge is a separate step (``--merge``) or follows ``--wait``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from rome_bench.errors import ConfigError

EXECUTORS = ("local", "torchrun", "slurm")
CLUSTERS = ("slurm", "local")
BARRIER_TIMEOUT = timedelta(days=7)  # rank 0 waits at the barrier for the slowest rank's shards


def torchrun_rank() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


def default_executor() -> str:
    return "torchrun" if torchrun_rank() is not None else "local"


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """A rank's GPU is cuda:LOCAL_RANK when the command asked for the (auto-chosen) GPU without an index."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


@contextmanager
def process_group() -> Iterator[None]:
    """The torchrun ranks' gloo group, for the barrier before rank 0 merges."""
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def parse_submitit_parameters(assignments: Sequence[str]) -> dict[str, Any]:
    """``["slurm_partition=gpu", "timeout_min=240"]`` -> {"slurm_partition": "gpu", "timeout_min": 240}."""
    parameters: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm takes KEY=VALUE, e.g. slurm_partition=gpu or timeout_min=240 "
                              f"(got '{assignment}')")
        parameters[key] = int(value) if value.lstrip("-").isdigit() else value
    return parameters


def submit_array(job: Callable[..., None], arguments: list[tuple[Any, ...]], folder: Path, cluster: str,
                 parameters: dict[str, Any]) -> list[Any]:
    """Submit ``job(*arguments[i])`` as one array task each through submitit; the jobs, in order."""
    try:
        import submitit
    except ImportError as error:
        raise ConfigError("--executor slurm needs submitit: pip install 'rome-bench[slurm]'") from error
    if cluster not in CLUSTERS:
        raise ConfigError(f"--cluster takes {' or '.join(CLUSTERS)} (got '{cluster}')")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(**parameters)
        return executor.map_array(job, *zip(*arguments, strict=True))
    except (ValueError, TypeError) as error:  # a parameter submitit does not know, or a bad value
        raise ConfigError(f"--slurm: {str(error).splitlines()[0]}") from error
    except (OSError, RuntimeError) as error:  # no sbatch here, or sbatch refused the job
        raise ConfigError(f"could not submit the Slurm jobs: {str(error).splitlines()[0]}; run on a Slurm login "
                          f"node, or try the shards here with --cluster local") from error


def wait_for(jobs: list[Any], shards: list[int]) -> None:
    """Wait for every job; a failed one is a ConfigError naming its shard and log folder."""
    for job, index in zip(jobs, shards, strict=True):
        try:
            job.result()
        except Exception as error:  # submitit re-raises the job's failure (FailedJobError, UncompletedJobError)
            lines = [line for line in str(error).splitlines() if line.strip()]
            detail = lines[-1] if lines else type(error).__name__
            raise ConfigError(f"shard {index} (job {job.job_id}) failed: {detail}; its log is in "
                              f"{job.paths.folder}; run the same command again to retry the unfinished "
                              f"shards") from error
