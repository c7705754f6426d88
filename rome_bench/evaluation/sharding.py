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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rome_bench.data import LoadedDataset
from rome_bench.errors import ConfigError
from rome_bench.evaluation.runner import LoadedRun, check_model_output, evaluate_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.validity import refresh_computed_flags
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
