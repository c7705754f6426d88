"""The evaluation runner: every threat of a suite on the same examples, verified, stored per example.

An example counts as robust to a threat only if the model classifies it correctly both clean and perturbed
(as in AutoAttack and RobustBench), so no threat column can exceed natural accuracy; only clean-correct
examples are attacked. Every threat's output is verified here, not by the threat: finite, in [0, 1], and within
the threat's declared budget; a violation is a ThreatOutputError naming the threat and the worst example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rome_bench.config import RunConfig
from rome_bench.data import DatasetInfo, LoadedDataset, fetch_batch
from rome_bench.errors import CheckpointError, ThreatOutputError
from rome_bench.evaluation.store import ResultStore
from rome_bench.models import content_hash, create_model
from rome_bench.threats import Clean, Threat
from rome_bench.training.checkpoint import MODEL_STEM, load_tensors_with_sidecar
from rome_bench.training.methods import METHODS
from rome_bench.training.trainer import read_run_config


@dataclass
class LoadedRun:
    model: nn.Module
    config: RunConfig
    metadata: dict[str, Any]
    model_hash: str
    run_dir: Path


def load_run(run_dir: Path, info: DatasetInfo, device: torch.device) -> LoadedRun:
    """Rebuild a finished run's model from config.json and model.safetensors (sha256-checked).

    The model hash covers the weights and the model config (β schedule, gating, …), which weights alone do not fix.
    """
    config = read_run_config(run_dir)
    sidecar = run_dir / f"{MODEL_STEM}.json"
    if not sidecar.exists():
        raise CheckpointError(f"run {run_dir} has no final model yet; finish it with "
                              f"rome-bench train --out {run_dir} --resume")
    tensors, metadata = load_tensors_with_sidecar(sidecar)
    model = create_model(config.model, info, with_experts=METHODS.get(config.train.method).uses_experts)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        raise CheckpointError(f"weights in {run_dir} do not fit the model its config describes: "
                              f"{str(error).splitlines()[0]}") from error
    model.to(device).eval().requires_grad_(False)
    model_config = json.dumps(dataclasses.asdict(config.model), sort_keys=True)
    model_hash = hashlib.sha256(f"{content_hash(model)}/{model_config}".encode()).hexdigest()
    return LoadedRun(model, config, metadata, model_hash, run_dir)


def verify_threat_output(threat: Threat, clean: torch.Tensor, perturbed: torch.Tensor,
                         example_ids: list[int]) -> None:
    """Raise ThreatOutputError unless the output is finite, in [0,1] and within the threat's budget."""
    if perturbed.shape != clean.shape:
        raise ThreatOutputError(f"threat {threat.name} returned shape {tuple(perturbed.shape)}, "
                                f"expected {tuple(clean.shape)}")
    flat = perturbed.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    if not finite.all():
        worst = int((~finite).nonzero()[0])
        raise ThreatOutputError(f"threat {threat.name} returned non-finite values for example {example_ids[worst]}")
    outside = torch.maximum(-flat.min(dim=1).values, flat.max(dim=1).values - 1).clamp_min(0)
    if (outside > 0).any():
        worst = int(outside.argmax())
        raise ThreatOutputError(f"threat {threat.name} left [0,1] by {float(outside[worst]):.3g} "
                                f"at example {example_ids[worst]}")
    budget = threat.budget()
    if budget is None:
        return
    check = budget.check(clean, perturbed)
    if (check.measured > check.limit).any():
        worst = int(check.measured.argmax())
        raise ThreatOutputError(
            f"threat {threat.name} exceeded its budget at example {example_ids[worst]}: "
            f"{check.description} = {float(check.measured[worst]):.6g} > {check.limit:.6g}")


def batch_seed(threat_key: str, first_example_id: int) -> int:
    """A seed that depends only on the threat and the batch's first example, so re-runs are identical."""
    digest = hashlib.sha256(f"{threat_key}/{first_example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def _dataset_batch(data: LoadedDataset, ids: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fetch_batch(data.dataset, ids)
    return images.to(device), labels.to(device)


def evaluate_threats(model: nn.Module, model_hash: str, threats: list[Threat], data: LoadedDataset,
                     example_ids: list[int], store: ResultStore, batch_size: int, device: torch.device,
                     progress: bool = True) -> None:
    """Run each threat on every example not yet stored; 'clean' must come first."""
    if not threats or not isinstance(threats[0], Clean):
        raise ValueError("the first threat of an evaluation must be 'clean'")
    clean_key = threats[0].key
    for threat in threats:
        store.record_threat(threat.key, threat.name, threat.column, threat.tag, threat.params())
        stored = store.stored_example_ids(model_hash, threat.key, data.fingerprint)
        todo = [i for i in example_ids if i not in stored]
        clean_correct = store.correctness(model_hash, clean_key, data.fingerprint)
        bar = tqdm(total=len(example_ids), initial=len(example_ids) - len(todo), desc=threat.name,
                   disable=not progress, leave=True)
        for start in range(0, len(todo), batch_size):
            ids = todo[start:start + batch_size]
            images, labels = _dataset_batch(data, ids, device)
            correct = _correct_under_threat(model, threat, images, labels, ids, clean_correct)
            store.add_results(model_hash, threat.key, data.fingerprint, ids, correct.tolist())
            bar.update(len(ids))
        bar.close()


def _correct_under_threat(model: nn.Module, threat: Threat, images: torch.Tensor, labels: torch.Tensor,
                          ids: list[int], clean_correct: dict[int, bool]) -> torch.Tensor:
    torch.manual_seed(batch_seed(threat.key, ids[0]))
    if isinstance(threat, Clean):
        with torch.no_grad():
            return (model(images).argmax(1) == labels).cpu()
    attacked = torch.tensor([clean_correct[i] for i in ids], dtype=torch.bool)
    correct = torch.zeros(len(ids), dtype=torch.bool)
    if attacked.any():
        chosen = attacked.nonzero().squeeze(1)
        clean, chosen_labels = images[chosen.to(images.device)], labels[chosen.to(labels.device)]
        perturbed = threat(model, clean, chosen_labels)
        verify_threat_output(threat, clean, perturbed.detach(), [ids[i] for i in chosen.tolist()])
        with torch.no_grad():
            correct[chosen] = (model(perturbed).argmax(1) == chosen_labels).cpu()
    return correct


def evaluate_run(run: LoadedRun, suite_name: str, threats: list[Threat], data: LoadedDataset,
                 example_ids: list[int], store: ResultStore, batch_size: int, device: torch.device,
                 label: str, progress: bool = True, complete: bool = True) -> None:
    """Evaluate a loaded run on a suite; a ``complete`` run (every threat) is recorded for the leaderboard."""
    store.record_model(run.model_hash, label, run.config.train.method, str(run.run_dir),
                       {"git_commit": run.metadata.get("git_commit"), "preset": run.config.preset})
    evaluate_threats(run.model, run.model_hash, threats, data, example_ids, store, batch_size, device, progress)
    if not complete:
        return
    store.record_suite_run(run.model_hash, suite_name, data.fingerprint, data.info.name,
                           [threat.key for threat in threats], example_ids,
                           datetime.now(timezone.utc).isoformat(timespec="seconds"))
