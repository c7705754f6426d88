"""Sharded evaluation: the examples cut into batch-aligned shards, each evaluated on its own, merged by one writer.

A unit of work is (model hash, threat key, dataset fingerprint, example shard), named by a content hash. One worker
evaluates a shard's units (the suite's threats, clean first) into the shard's own SQLite file under
``<store>.units/``, one transaction per batch as in the main store: a killed worker loses only its batch in flight
and its re-run resumes after the last stored batch. Workers never write the main store; they read it (read-only)
first, so results it holds are neither recomputed nor duplicated. :func:`merge_shards` is the single writer: it
copies every finished unit into the main store once (its key goes into the ``units`` table in the same
transaction), so merging again adds nothing, then deletes the shard files.

Shards are cut at multiples of the batch size, so each batch of a sharded run holds exactly the examples of the same
batch of a single-process run, seeded the same way (``runner.batch_seed``: the threat and the batch's first
example). Attacks draw their randomness per batch (our PGD's random starts, pyautoattack's seeded draws), so an
example's result depends on its batch-mates; batch-aligned shards make a sharded run store exactly the per-example
results of a single-process run.

:class:`ShardingRequest` is the eval command's orchestration: its sharding flags checked, and the steps they ask for
run by an executor of ``executors.py`` (this process, the ranks of a torchrun launch, or a Slurm job array that
re-runs the command line once per unfinished shard), then merged by the single writer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rome_bench.data import LoadedDataset
from rome_bench.errors import ConfigError
from rome_bench.evaluation.executors import (
    EXECUTORS,
    barrier,
    default_executor,
    parse_submitit_parameters,
    process_group,
    rank_device,
    submit_array,
    torchrun_rank,
    wait_for,
)
from rome_bench.evaluation.runner import LoadedRun, check_model_output, evaluate_threats
from rome_bench.evaluation.store import FULL, ResultStore
from rome_bench.evaluation.validity import refresh_computed_flags
from rome_bench.provenance import evaluation_provenance
from rome_bench.threats import Threat


def make_shards(example_ids: list[int], shards: int, batch_size: int) -> list[list[int]]:
    """``shards`` contiguous runs of whole batches (the last batch may be short), as even as possible."""
    batches = [example_ids[start:start + batch_size] for start in range(0, len(example_ids), batch_size)]
    if shards < 1:
        raise ConfigError("--shards must be >= 1")
    if shards > len(batches):
        raise ConfigError(f"--shards {shards} is more than the {len(batches)} batches of {batch_size} examples; "
                          f"give --shards <= {len(batches)} or a smaller --batch-size")
    size, extra = divmod(len(batches), shards)
    cut, start = [], 0
    for index in range(shards):
        count = size + (index < extra)
        cut.append([i for batch in batches[start:start + count] for i in batch])
        start += count
    return cut


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def check_slurm_available() -> None:
    """Before anything loads: Slurm's commands are on PATH, or one line that says what to use instead."""
    import shutil

    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if missing:
        raise ConfigError(f"Slurm is not available here ({missing[0]} not found): run the shards in this process "
                          f"with --executor local, or as local processes through submitit with --cluster local")


@dataclass(frozen=True)
class ShardPlan:
    """The units of one model's evaluation on a suite's threats, cut into shards, and where their files go."""

    store: Path
    model_hash: str
    threat_keys: tuple[str, ...]
    dataset: str
    shards: tuple[tuple[int, ...], ...]
    batch_size: int

    @classmethod
    def cut(cls, store: Path, model_hash: str, threats: list[Threat], dataset: str, example_ids: list[int],
            shards: int, batch_size: int) -> ShardPlan:
        cut = make_shards(example_ids, shards, batch_size)
        return cls(store, model_hash, tuple(threat.key for threat in threats), dataset,
                   tuple(tuple(ids) for ids in cut), batch_size)

    @property
    def folder(self) -> Path:
        """Where the shard files live: beside the store (on a cluster, a filesystem every node sees)."""
        return self.store.with_name(self.store.name + ".units")

    def ids(self, index: int) -> list[int]:
        return list(self.shards[index])

    def units(self, index: int) -> list[tuple[str, str]]:
        """(unit key, threat key) of every unit of shard ``index``: the content hash of what it computes."""
        ids = json.dumps(self.ids(index))
        return [(_digest(self.model_hash, key, self.dataset, ids, str(self.batch_size)), key)
                for key in self.threat_keys]

    def path(self, index: int) -> Path:
        """The shard's file, named by the hash of its units."""
        return self.folder / f"{_digest(*(unit for unit, _ in self.units(index)))[:32]}.sqlite"

    def finished(self, store: ResultStore, index: int) -> bool:
        """Every threat of the shard has a result for each of its examples in ``store``, or does not apply."""
        ids = set(self.shards[index])
        return all(store.not_applicable(self.model_hash, key, self.dataset)
                   or ids <= store.stored_example_ids(self.model_hash, key, self.dataset)
                   for key in self.threat_keys)

    def pending(self, main: ResultStore) -> list[int]:
        """The shards whose results are neither in the main store nor in a finished shard file."""
        return [index for index in range(len(self.shards))
                if not self.finished(main, index) and not self._file_finished(index)]

    def _file_finished(self, index: int) -> bool:
        if not self.path(index).exists():
            return False
        with ResultStore(self.path(index), read_only=True) as shard:
            return self.finished(shard, index)


def _copy_stored(shard: ResultStore, main_path: Path, plan: ShardPlan, index: int) -> None:
    """Copy into the shard file what the main store holds for the shard already (read-only: workers never write it)."""
    if not main_path.exists():
        return
    ids = set(plan.shards[index])
    with ResultStore(main_path, read_only=True) as main:
        for key in plan.threat_keys:
            if reason := main.not_applicable(plan.model_hash, key, plan.dataset):
                shard.mark_not_applicable(plan.model_hash, key, plan.dataset, reason)
                continue
            have = shard.stored_example_ids(plan.model_hash, key, plan.dataset)
            stored = {i: c for i, c in main.correctness(plan.model_hash, key, plan.dataset).items()
                      if i in ids and i not in have}
            if stored:
                shard.add_results(plan.model_hash, key, plan.dataset, list(stored), list(stored.values()))


def run_shard(plan: ShardPlan, index: int, run: LoadedRun, threats: list[Threat], data: LoadedDataset,
              device: torch.device, label: str, provenance: dict[str, Any], progress: bool = False) -> Path:
    """Evaluate shard ``index``'s units into its own file (resuming it), skipping what the main store holds."""
    ids = plan.ids(index)
    plan.folder.mkdir(parents=True, exist_ok=True)
    with ResultStore(plan.path(index)) as shard:
        _copy_stored(shard, plan.store, plan, index)
        check_model_output(run.model, data, ids, device)
        shard.record_model(run.model_hash, label, run.method, str(run.source), run.describe())
        shard.use_provenance(provenance)
        evaluate_threats(run.model, run.model_hash, threats, data, ids, shard, plan.batch_size, device, progress)
    return plan.path(index)


def merge_shards(plan: ShardPlan, main: ResultStore, run: LoadedRun, label: str) -> int:
    """Merge every finished shard file into the main store (the single writer) and delete it; how many units.

    Raises ConfigError naming the unfinished shards, before writing anything, unless all are finished.
    """
    if pending := plan.pending(main):
        shown = ", ".join(map(str, pending[:10])) + (", …" if len(pending) > 10 else "")
        raise ConfigError(f"{len(pending)} of {len(plan.shards)} shards are not finished (shard {shown}); run them "
                          f"again (the same command, or --shard-index I for one), then merge")
    main.record_model(run.model_hash, label, run.method, str(run.source), run.describe())
    merged_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    merged = 0
    for index in range(len(plan.shards)):
        path = plan.path(index)
        if path.exists():
            merged += main.merge_units(path, plan.units(index), plan.model_hash, plan.dataset, plan.ids(index),
                                       merged_at)
            path.unlink()
    refresh_computed_flags(main, plan.model_hash, plan.dataset)
    return merged


Row = tuple[Callable[[], LoadedRun], str]  # a leaderboard row: its model (made when its turn comes), label
ShardJob = Callable[[str, list[str]], None]  # job(cwd, argv): one Slurm task, the eval command line argv in cwd


@dataclass(frozen=True)
class ShardingRequest:
    """The eval command's sharding flags, checked: how many shards, who evaluates them, and which step this is."""

    shards: int | None
    executor: str
    shard_index: int | None
    merge: bool
    wait: bool
    slurm: list[str]
    cluster: str

    @classmethod
    def from_flags(cls, shards: int | None, executor: str | None, shard_index: int | None, merge: bool, wait: bool,
                   slurm: list[str], cluster: str, unsharded_only: bool = False) -> ShardingRequest | None:
        """None for an unsharded evaluation (no sharding flag given, not under torchrun); ``unsharded_only``: the
        evaluation asked for runs unsharded only (--union-only, --eps-scale), so a sharding flag is an error."""
        chosen = executor or default_executor()
        if chosen not in EXECUTORS:
            raise ConfigError(f"--executor takes {' | '.join(EXECUTORS)} (got '{chosen}')")
        if (wait or slurm) and chosen != "slurm":
            raise ConfigError("--wait and --slurm go with --executor slurm")
        if shards is None and shard_index is None and not merge and chosen == "local":
            return None
        if chosen == "torchrun" and torchrun_rank() is None:
            raise ConfigError("--executor torchrun runs under torchrun: torchrun --nproc-per-node N -m rome_bench eval "
                              "...")
        if chosen == "torchrun" and (shard_index is not None or merge):
            raise ConfigError("under torchrun the ranks evaluate and merge every shard: drop --shard-index and --merge")
        if chosen != "torchrun" and shards is None:
            raise ConfigError(f"--executor {chosen}, --shard-index and --merge need --shards N")
        if shards is not None and shards < 1:
            raise ConfigError("--shards must be >= 1")
        if shard_index is not None and merge:
            raise ConfigError("--shard-index evaluates one shard, --merge merges them all: give one of them")
        if shard_index is not None and shards is not None and not 0 <= shard_index < shards:
            raise ConfigError(f"--shard-index takes 0..{shards - 1} for --shards {shards} (got {shard_index})")
        if unsharded_only:
            raise ConfigError("--union-only and --eps-scale run unsharded: drop --shards, --executor, --shard-index "
                              "and --merge")
        if chosen == "slurm" and cluster == "slurm" and shard_index is None and not merge:
            check_slurm_available()
        return cls(shards, chosen, shard_index, merge, wait, slurm, cluster)

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: under torchrun, the rank's own GPU."""
        launch = torchrun_rank()
        return rank_device(device, launch[2]) if self.executor == "torchrun" and launch is not None else device

    def evaluate(self, rows: list[Row], suite: str, threats: list[Threat], data: LoadedDataset, ids: list[int],
                 store: Path, batch_size: int, device: torch.device, progress: bool, complete: bool,
                 echo: Callable[[str], None] = print, job: ShardJob | None = None, argv: Sequence[str] = ()) -> None:
        """Evaluate the shards by this request's executor, then merge them (one writer), or do the one step asked.

        For Slurm, each array task runs ``job(cwd, [*argv, "--executor", "slurm", "--shard-index", I])``: the eval
        command line ``argv`` again, restricted to one unfinished shard (submitit pickles ``job`` by name).
        """
        def plan_of(run: LoadedRun, shards: int) -> ShardPlan:
            return ShardPlan.cut(store, run.model_hash, threats, data.fingerprint, ids, shards, batch_size)

        if self.executor == "torchrun":
            self._torchrun(rows, plan_of, threats, data, store, device, progress, suite, complete, echo)
            return
        shards = int(self.shards)  # type: ignore[arg-type]
        if self.shard_index is not None:
            for make, row_label in rows:
                run = make()
                run_shard(plan_of(run, shards), self.shard_index, run, threats, data, device, row_label,
                          self._provenance(run, device, shards), progress)
            echo(f"evaluated shard {self.shard_index} of {shards} -> {store.name}.units; merge with --merge once "
                 f"every shard is")
            return
        if self.executor == "slurm" and not self.merge:
            with open_read_only(store) as main:
                pending = sorted({i for make, _ in rows for i in plan_of(make(), shards).pending(main)})  # type: ignore[arg-type]
            if not pending:
                echo(f"every shard of {shards} is finished: nothing to submit")
            else:
                if job is None:
                    raise ConfigError("--executor slurm needs the command line its tasks re-run (job and argv)")
                folder = store.with_name(store.name + ".units") / "slurm"
                arguments = [(os.getcwd(), [*argv, "--executor", "slurm", "--shard-index", str(i)]) for i in pending]
                jobs = submit_array(job, arguments, folder, self.cluster, parse_submitit_parameters(self.slurm))
                echo(f"submitted {len(jobs)} shard jobs of {shards} (job {jobs[0].job_id}…; logs in {folder})")
                if not self.wait:
                    echo("merge them once they are done: the same command with --merge instead of --executor slurm")
                    return
                wait_for(jobs, pending)
        if self.executor == "local" and not self.merge:
            for make, row_label in rows:
                run = make()
                plan = plan_of(run, shards)
                with open_read_only(store) as main:
                    pending = plan.pending(main)  # type: ignore[arg-type]
                for index in pending:
                    run_shard(plan, index, run, threats, data, device, row_label, self._provenance(run, device, 1),
                              progress)
        self._merge(rows, plan_of, shards, data, store, suite, complete, echo)

    def _torchrun(self, rows: list[Row], plan_of: Callable[[LoadedRun, int], ShardPlan], threats: list[Threat],
                  data: LoadedDataset, store: Path, device: torch.device, progress: bool, suite: str,
                  complete: bool, echo: Callable[[str], None]) -> None:
        """Rank r evaluates shards r, r + N, …; after a barrier rank 0 alone merges them into the store."""
        rank, world, _ = torchrun_rank()  # type: ignore[misc]
        shards = self.shards or world
        with process_group():
            for make, row_label in rows:
                run = make()
                plan = plan_of(run, shards)
                for index in range(rank, shards, world):
                    run_shard(plan, index, run, threats, data, device, row_label,
                              self._provenance(run, device, world), progress and rank == 0)
            barrier()
            if rank == 0:
                self._merge(rows, plan_of, shards, data, store, suite, complete, echo)

    def _merge(self, rows: list[Row], plan_of: Callable[[LoadedRun, int], ShardPlan], shards: int,
               data: LoadedDataset, store: Path, suite: str, complete: bool, echo: Callable[[str], None]) -> None:
        """The single writer: every row's finished shards into the store, then its suite run and the leaderboard."""
        from rome_bench.evaluation.render import render_leaderboard
        from rome_bench.evaluation.suites import SUITES

        with ResultStore(store) as results:
            for make, row_label in rows:
                run = make()
                plan = plan_of(run, shards)
                units = merge_shards(plan, results, run, row_label)
                if complete:
                    results.record_suite_run(run.model_hash, suite, data.fingerprint, data.info.name,
                                             list(plan.threat_keys), [i for ids in plan.shards for i in ids],
                                             datetime.now(timezone.utc).isoformat(timespec="seconds"), FULL)
                echo(f"merged {units} units of {shards} shards of {row_label} on suite '{suite}' -> {store}")
            if complete:
                echo(render_leaderboard(results, SUITES.get(suite), data.info.name))
            else:
                echo("only some threats were run: the suite's leaderboard row appears once all have been")

    def _provenance(self, run: LoadedRun, device: torch.device, world_size: int) -> dict[str, object]:
        return {**evaluation_provenance(run.model, device, world_size, self.executor), "shards": self.shards}


def open_read_only(store: Path) -> ResultStore | _NoStore:
    """The main store opened for reading (shard workers and submitters never write it); a stand-in if it is absent."""
    return ResultStore(store, read_only=True) if store.exists() else _NoStore()


class _NoStore:
    """An absent store: no results, nothing not applicable."""

    def __enter__(self) -> _NoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def stored_example_ids(self, *key: str) -> set[int]:
        return set()

    def not_applicable(self, *key: str) -> str | None:
        return None
