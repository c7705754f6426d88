"""The evaluation runner: every threat of a suite on the same examples, verified, stored per example.

An example counts as robust to an adversarial threat only if the model classifies it correctly both clean and
perturbed (as in AutoAttack and RobustBench), so no such column can exceed natural accuracy; only clean-correct
examples are attacked. A threat with ``given_clean`` False (common corruptions) is applied to every example and
stores the prediction on the perturbed image itself, so its column is plain accuracy on the perturbed images
(CIFAR-10-C's metric); the union, per example over every stored threat including clean, still requires clean.

Every threat's output is verified here, not by the threat: finite, in [0, 1], and within the threat's declared
budget; a violation is a ThreatOutputError naming the threat and the worst example.

A random model (routing noise, random gating) is classified ``draws`` times, clean and perturbed, and an example
counts as correct only if it is correct in every draw: the per-example worst case over m evaluation draws (the
``adaptive`` suite's ``draws``; one draw elsewhere). A deterministic model gives the same answer in every draw.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from rome_bench.checkpoint import load_final_weights, read_run_config, run_model_hash
from rome_bench.config import PRECISIONS, RunConfig
from rome_bench.costs import CostMeter
from rome_bench.data import DatasetInfo, LoadedDataset, fetch_batch
from rome_bench.device import check_bf16
from rome_bench.errors import CheckpointError, ConfigError, ModelOutputError, ThreatOutputError
from rome_bench.evaluation.health import HEALTH_EXAMPLES, attack_health
from rome_bench.evaluation.store import FULL, UNION_ONLY, BatchCost, Progress, ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.validity import batch_model_flags, refresh_computed_flags
from rome_bench.models import build_family, content_hash, create_model, model_identity
from rome_bench.models.autocast import attack_model, autocast_attacks
from rome_bench.models.external import state_dict_mismatch
from rome_bench.models.gates import fixed_expert, fixed_expert_variant, gating_modules, set_inference_variant
from rome_bench.models.pretrained import architecture_only
from rome_bench.provenance import evaluation_provenance
from rome_bench.threats import Clean, Threat


@dataclass
class LoadedRun:
    """A model ready to evaluate: a rome-bench run, or an external module (``method`` None, ``source`` its spec)."""

    model: nn.Module
    config: RunConfig
    metadata: dict[str, Any]
    model_hash: str
    source: Path | str
    method: str | None

    def describe(self) -> dict[str, Any]:
        """What the store keeps about the model besides its hash."""
        return {"git_commit": self.metadata.get("git_commit"), "preset": self.config.preset,
                **{k: v for k, v in self.metadata.items() if k in ("external", "gating_variant", "train_cost")}}


def load_run(run_dir: Path, info: DatasetInfo, device: torch.device) -> LoadedRun:
    """Rebuild a finished run's model from config.json and model.safetensors (sha256-checked).

    The model hash covers the weights and the model config (β schedule, gating, …), which weights alone do not fix.
    """
    config = read_run_config(run_dir)
    tensors, metadata = load_final_weights(run_dir)
    model = create_model(architecture_only(config.model), info)  # self-contained: no pretrained file is read
    if problem := state_dict_mismatch(model.state_dict(), tensors):
        raise CheckpointError(f"weights in {run_dir} do not fit the model its config.json describes: {problem}; "
                              f"restore the run's own config.json and model files, or retrain")
    model.load_state_dict(tensors)
    model.to(device).eval().requires_grad_(False)
    model_hash = run_model_hash(content_hash(model), model_identity(config.model))
    return LoadedRun(model, config, metadata, model_hash, run_dir, config.method)


def compiled_run(run: LoadedRun, backend: str, batch_size: int) -> LoadedRun:
    """The run with its model compiled by ``torch.compile(backend=...)`` for ``batch_size`` rows (same hash: the
    compiled model computes the same function; see ``models/compiled.py``)."""
    import torch._dynamo

    from rome_bench.models.compiled import FixedBatchCompiled

    backends = torch._dynamo.list_backends(exclude_tags=())  # with the debugging ones (eager, aot_eager)
    if backend not in backends:
        raise ConfigError(f"--compile takes a torch.compile backend: {' | '.join(backends)} (got '{backend}')")
    return dataclasses.replace(run, model=FixedBatchCompiled(run.model, batch_size, backend))


def with_gating_variant(run: LoadedRun, variant: str) -> LoadedRun:
    """The run's model under an inference-time gating variant (Table 5: random, inverse, removed), as its own model.

    The variant is part of the model's identity: its results are stored under a hash of (model, variant), so they
    form their own leaderboard row next to the learned gating's.
    """
    if variant == "removed" and (run.config.model.family != "rome"
                               or build_family(run.config.model).options.expert_type == "ffn"):
        raise ConfigError("gating variant 'removed' needs experts beside a backbone (RoME's lora or adapter "
                          "experts); ffn experts and the other MoE families have no backbone path without experts")
    set_inference_variant(run.model, variant)
    model_hash = hashlib.sha256(f"{run.model_hash}/gating-variant={variant}".encode()).hexdigest()
    metadata = {**run.metadata, "gating_variant": variant}
    return dataclasses.replace(run, metadata=metadata, model_hash=model_hash)


def route_variants(model: nn.Module, route_to_expert: str) -> list[str | None]:
    """The fixed-expert variants ``--route-to-expert K|all`` asks for, checked against the model's gates."""
    modules = gating_modules(model)
    if not modules:
        raise ConfigError("--route-to-expert needs a model with gates; this one has none "
                          "(see rome-bench list families)")
    experts = min(module.num_experts for module in modules)
    if route_to_expert == "all":
        return [fixed_expert_variant(k) for k in range(experts)]
    if not route_to_expert.isdigit() or int(route_to_expert) >= experts:
        raise ConfigError(f"--route-to-expert takes an expert index 0..{experts - 1} or 'all' "
                          f"(got '{route_to_expert}')")
    return [fixed_expert_variant(int(route_to_expert))]


def variant_suffix(variant: str | None) -> str:
    """What a gating variant's row adds to its label: ' [expert K]', ' [experts removed]', ' [random gating]', …"""
    if variant is None:
        return ""
    if (expert := fixed_expert(variant)) is not None:
        return f" [expert {expert}]"
    return " [experts removed]" if variant == "removed" else f" [{variant} gating]"


def load_external_run(source: str, weights: Path | None, config: RunConfig, device: torch.device) -> LoadedRun:
    """Any nn.Module taking [0,1] images (``FILE.py:Name`` or ``module:Name``), evaluated under ``config``'s ε."""
    from rome_bench.models.external import load_external_model

    model, model_hash = load_external_model(source, weights)
    model.to(device)
    metadata = {"external": {"source": source, "weights": str(weights) if weights else None}}
    return LoadedRun(model, config, metadata, model_hash, source, None)


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


def attack_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context an evaluation runs in: with bf16, attacks call the model under bf16 autocast (its forward and
    backward passes; ``models/autocast.py``), or nothing changes.

    The attacks' own arithmetic — steps, projections, clipping, losses, the threats' renderers — and the budget
    checks stay fp32, and the runner classifies clean and adversarial images with the model itself in fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision takes {' | '.join(PRECISIONS)} (got '{precision}')")
    if precision == "bf16":
        check_bf16(device)
        return autocast_attacks(torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(images: torch.Tensor, gradients: bool = False) -> contextlib.AbstractContextManager:
    """Autocast off (and no gradients unless asked): what is stored — decisions, flags — is computed in fp32."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(images.device.type, enabled=False))
    if not gradients:
        stack.enter_context(torch.no_grad())
    return stack


def batch_seed(threat_key: str, first_example_id: int) -> int:
    """A seed that depends only on the threat and the batch's first example, so re-runs are identical.

    An attack's random draws (our PGD's random starts, pyautoattack's per-batch draws) still depend on which examples
    share the batch: a sharded run equals a single-process one because its shards are cut at batch boundaries.
    """
    digest = hashlib.sha256(f"{threat_key}/{first_example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def _dataset_batch(data: LoadedDataset, ids: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = fetch_batch(data.dataset, ids)
    return images.to(device), labels.to(device)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _examples_to_attack(stored: Progress, example_ids: list[int], earlier: list[dict[int, bool]]) -> list[int]:
    """Examples still without a result for the threat, and robust under every result of ``earlier`` (the union-only
    cascade's earlier threats; none otherwise)."""
    todo = [i for i in example_ids if i not in stored.done]
    return [i for i in todo if all(results.get(i, False) for results in earlier)]


def check_model_output(model: nn.Module, data: LoadedDataset, example_ids: list[int], device: torch.device,
                       probe: int = 8) -> None:
    """Raise ModelOutputError unless the model gives finite (B, num_classes) logits on the first examples.

    Runs before anything is stored, so a model that returns a scalar, a tuple, too few classes or NaN never gets a
    leaderboard row.
    """
    images, _ = _dataset_batch(data, example_ids[:probe], device)
    expected = (len(images), data.info.num_classes)
    try:
        with full_precision(images):
            logits = model(images)
    except RuntimeError as error:
        raise ModelOutputError(f"the model fails on {tuple(images.shape)} images in [0, 1] of {data.info.name}: "
                               f"{str(error).splitlines()[0]}") from error
    if not isinstance(logits, torch.Tensor):
        raise ModelOutputError(f"the model returns a {type(logits).__name__}; it must return a logits tensor of "
                               f"shape (batch, {data.info.num_classes})")
    if tuple(logits.shape) != expected:
        raise ModelOutputError(f"the model returns logits of shape {tuple(logits.shape)} for {len(images)} images; "
                               f"{data.info.name} needs {expected} (one logit per class)")
    if not torch.isfinite(logits).all():
        raise ModelOutputError(f"the model returns NaN or infinite logits on clean {data.info.name} images; "
                               f"nothing was stored")


def evaluate_threats(model: nn.Module, model_hash: str, threats: list[Threat], data: LoadedDataset,
                     example_ids: list[int], store: ResultStore, batch_size: int, device: torch.device,
                     progress: bool = True, union_only: bool = False, draws: int = 1) -> None:
    """Run each threat on every example not yet stored; 'clean' must come first. A threat that cannot attack the
    model is stored as not applicable instead. Each image is classified ``draws`` times (correct only if correct in
    every draw: the worst case over the draws of a random model).

    With ``union_only`` the threats form a cascade: each attacks only the examples still robust to every earlier
    one that applies, which is all the union needs; the per-threat results of the skipped examples are not stored.
    """
    if not threats or not isinstance(threats[0], Clean):
        raise ValueError("the first threat of an evaluation must be 'clean'")
    for threat in threats:  # a missing file (AlexNet-LPIPS's weights) fails here, before anything is stored
        threat.require()
    earlier: list[dict[int, bool]] = []  # results of the threats so far that apply: the cascade's filter
    for threat in threats:
        store.record_threat(threat.key, threat.name, threat.column, threat.tag, threat.params())
        if not threat.applicable(model):
            store.mark_not_applicable(model_hash, threat.key, data.fingerprint,
                                      f"{threat.name} does not apply to this model")
            if progress:
                tqdm.write(f"{threat.name}: not applicable to this model (stored as n/a)")
            continue
        stored = store.progress(model_hash, threat.key, data.fingerprint, threats[0].key)
        if stored.not_applicable is not None:  # marked by an older rome-bench (GMA without gates): it applies now
            store.clear_not_applicable(model_hash, threat.key, data.fingerprint)
        todo = _examples_to_attack(stored, example_ids, earlier if union_only else [])
        added = _evaluate_examples(model, model_hash, threat, data, todo, stored, store, batch_size, device, progress,
                                   draws)
        earlier.append({**stored.done, **added})


def _evaluate_examples(model: nn.Module, model_hash: str, threat: Threat, data: LoadedDataset, todo: list[int],
                       stored: Progress, store: ResultStore, batch_size: int, device: torch.device,
                       progress: bool, draws: int = 1) -> dict[int, bool]:
    """Evaluate the threat on ``todo`` batch by batch, storing each batch as it finishes; the results added."""
    added: dict[int, bool] = {}
    robust, seen = sum(stored.done.values()), len(stored.done)
    bar = tqdm(total=seen + len(todo), initial=seen, desc=threat.name, disable=not progress, leave=True)
    for start in range(0, len(todo), batch_size):
        ids = todo[start:start + batch_size]
        images, labels = _dataset_batch(data, ids, device)
        correct, cost, flags = _evaluate_batch(model, threat, images, labels, ids, stored.clean_correct, device,
                                               draws)
        store.add_results(model_hash, threat.key, data.fingerprint, ids, correct.tolist(), cost, flags)
        added.update(zip(ids, correct.tolist(), strict=True))
        robust, seen = robust + int(correct.sum()), seen + len(ids)
        bar.set_postfix_str(f"robust {100 * robust / seen:.1f}%")
        bar.update(len(ids))
    bar.close()
    return added


def _evaluate_batch(model: nn.Module, threat: Threat, images: torch.Tensor, labels: torch.Tensor, ids: list[int],
                    clean_correct: dict[int, bool], device: torch.device, draws: int = 1
                    ) -> tuple[torch.Tensor, BatchCost, dict[str, int]]:
    """Correctness of one batch under a threat, what it cost, and the validity flags it raised."""
    torch.manual_seed(batch_seed(threat.key, ids[0]))
    _synchronise(device)
    started = time.perf_counter()
    with CostMeter(model) as meter:
        if isinstance(threat, Clean):
            with full_precision(images):
                logits = model(images)
                correct = ((logits.argmax(1) == labels) & correct_in_draws(model, images, labels, draws - 1)).cpu()
            attacked = len(ids)
        else:
            correct, attacked = _correct_under_threat(model, threat, images, labels, ids, clean_correct, draws)
    _synchronise(device)
    cost = BatchCost(len(ids), attacked, time.perf_counter() - started, meter.forward_images, meter.backward_images)
    if isinstance(threat, Clean):
        with full_precision(images, gradients=True):
            flags = batch_model_flags(model, images, labels, logits, correct)
    else:
        flags = threat.call_flags() if attacked else {}
    return correct, cost, flags


def _correct_under_threat(model: nn.Module, threat: Threat, images: torch.Tensor, labels: torch.Tensor,
                          ids: list[int], clean_correct: dict[int, bool], draws: int = 1
                          ) -> tuple[torch.Tensor, int]:
    """Only clean-correct examples are attacked, the others counting as not robust; a threat that is not
    ``given_clean`` (a common corruption) perturbs every example."""
    attacked = torch.tensor([clean_correct[i] or not threat.given_clean for i in ids], dtype=torch.bool)
    correct = torch.zeros(len(ids), dtype=torch.bool)
    if attacked.any():
        chosen = attacked.nonzero().squeeze(1)
        clean, chosen_labels = images[chosen.to(images.device)], labels[chosen.to(labels.device)]
        chosen_ids = [ids[i] for i in chosen.tolist()]
        extra = {"example_ids": chosen_ids} if threat.uses_example_ids else {}
        perturbed = threat(attack_model(model), clean, chosen_labels, **extra)
        perturbed = perturbed.detach().to(clean.dtype)
        verify_threat_output(threat, clean, perturbed, chosen_ids)
        with full_precision(clean):
            correct[chosen] = correct_in_draws(model, perturbed, chosen_labels, draws).cpu()
    return correct, int(attacked.sum())


def correct_in_draws(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, draws: int) -> torch.Tensor:
    """Per example: correct in each of ``draws`` forward passes (all True for 0 draws)."""
    correct = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    for _ in range(draws):
        correct &= model(images).argmax(1) == labels
    return correct


def store_attack_health(model: nn.Module, model_hash: str, clean_key: str, data: LoadedDataset,
                        example_ids: list[int], store: ResultStore, linf_eps: float, device: torch.device,
                        draws: int = 2) -> None:
    """Compute the attack-health flags (``evaluation/health.py``) on the first examples; store them under the
    clean threat (set, not added: a re-run replaces them)."""
    ids = example_ids[:HEALTH_EXAMPLES]
    images, labels = _dataset_batch(data, ids, device)
    torch.manual_seed(batch_seed(f"{clean_key}/health", ids[0]))
    with full_precision(images, gradients=True):
        flags = attack_health(model, images, labels, linf_eps, draws)
    for flag, count in flags.items():
        store.set_flag(model_hash, clean_key, data.fingerprint, flag, count)


def evaluate_run(run: LoadedRun, suite_name: str, threats: list[Threat], data: LoadedDataset,
                 example_ids: list[int], store: ResultStore, batch_size: int, device: torch.device,
                 label: str, progress: bool = True, complete: bool = True, union_only: bool = False,
                 draws: int | None = None) -> None:
    """Evaluate a loaded run on a suite; a ``complete`` run (every threat) is recorded for the leaderboard.

    ``draws`` (default: the suite's) is how many times each image is classified (see the module's docstring); a
    suite with ``health`` then stores its attack-health flags."""
    if draws is not None and draws < 1:
        raise ConfigError(f"--draws must be >= 1 (got {draws})")
    check_model_output(run.model, data, example_ids, device)
    store.record_model(run.model_hash, label, run.method, str(run.source), run.describe())
    store.use_provenance(evaluation_provenance(run.model, device))
    suite = SUITES.get(suite_name) if suite_name in SUITES else None
    draws = draws or (suite.draws if suite is not None else 1)
    evaluate_threats(run.model, run.model_hash, threats, data, example_ids, store, batch_size, device, progress,
                     union_only, draws)
    if suite is not None and suite.health and "linf" in run.config.threats.eps:
        store_attack_health(run.model, run.model_hash, threats[0].key, data, example_ids, store,
                            run.config.threats.eps["linf"], device, draws)
    refresh_computed_flags(store, run.model_hash, data.fingerprint)
    if not complete:
        return
    store.record_suite_run(run.model_hash, suite_name, data.fingerprint, data.info.name,
                           [threat.key for threat in threats], example_ids,
                           datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           UNION_ONLY if union_only else FULL)
