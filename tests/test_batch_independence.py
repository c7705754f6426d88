"""Batch independence: under evaluation an example's prediction must not depend on the other examples of its batch.

A contract over every family and routing variant (micro models, eval mode): each example's logits are the same at
batch size 1, in the evaluation batch and in a shuffled batch. A model that breaks it — here a sparse MoE whose
capacity-limited routing is left on at evaluation — gets the validity flag ``batch-dependent`` from the runner's
clean pass (``evaluation/validity.py``), stored under the clean threat and shown in the leaderboard's Flags column.
"""

from __future__ import annotations

import pytest
import torch

from rome_bench.data import load_dataset
from rome_bench.evaluation.runner import evaluate_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.validity import batch_dependence
from rome_bench.models import FAMILIES, create_model
from rome_bench.models.gates import inference_variant
from rome_bench.models.sparse_moe import SparseRouter
from rome_bench.threats import Clean
from rome_bench.training.overrides import resolve_config
from tests.test_contracts import fast_config

ROUTING_VARIANTS = [
    *((family, ()) for family in FAMILIES.names()),
    ("sparse-moe", ("model.options.noise_std=1.0",)),  # routing noise (a training-time setting)
    ("moe-ffn", ("model.options.top_k=1",)),
    ("rome", ("model.options.expert_type=ffn", "model.options.targets=mlp", "model.options.top_k=2")),
    ("remoe", ("model.options.top_k=2",)),
]
VARIANT_IDS = [f"{family}{'[' + ','.join(o.split('options.')[-1] for o in extra) + ']' if extra else ''}"
               for family, extra in ROUTING_VARIANTS]


def variant_model(family: str, extra: tuple[str, ...]) -> torch.nn.Module:
    """The family's micro model with extra option overrides, eval mode, weights perturbed off their neutral start."""
    config = resolve_config(fast_config(FAMILIES.get(family).paper_recipe, family), list(extra))
    torch.manual_seed(0)
    model = create_model(config.model, load_dataset("synthetic", "test").info)
    for parameter in model.parameters():  # experts start neutral (B = 0): make every expert matter
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize(("family", "extra"), ROUTING_VARIANTS, ids=VARIANT_IDS)
def test_every_family_and_routing_variant_is_batch_independent_in_eval_mode(family, extra):
    model = variant_model(family, extra)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    variants = [None, "inverse", "expert-1"] if FAMILIES.get(family).has_experts else [None]
    for variant in variants:
        with inference_variant(model, variant), torch.no_grad():
            logits = model(images)
            dependent = batch_dependence(model, images, logits)
        assert not dependent.any(), f"{family} {extra} under gating {variant}: examples {dependent.nonzero()}"


def capacity_left_on() -> torch.nn.Module:
    """A sparse MoE (3 experts, capacity ⌈B/3⌉ per expert) whose routers stay in training mode at evaluation."""
    model = variant_model("sparse-moe", ("model.options.capacity_factor=1.0", "model.options.noise_std=0"))
    for module in model.modules():
        if isinstance(module, SparseRouter):
            module.train()
    return model


def test_capacity_routing_left_on_in_eval_mode_is_flagged_batch_dependent(tmp_path):
    """The runner's clean pass stores ``batch-dependent`` for it, and not for the same model routed properly."""
    data = load_dataset("synthetic", "test")
    ids = list(range(12))
    broken = capacity_left_on()
    with ResultStore(tmp_path / "r.sqlite") as store:
        for name, model in (("broken", broken), ("fixed", variant_model("sparse-moe", ()))):
            evaluate_threats(model, name, [Clean()], data, ids, store, len(ids), torch.device("cpu"),
                             progress=False)
        flagged = store.flags("broken", Clean().key, data.fingerprint).get("batch-dependent", 0)
        assert flagged > 0
        assert "batch-dependent" not in store.flags("fixed", Clean().key, data.fingerprint)
