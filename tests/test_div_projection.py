"""Eq. 7's K -> K' projection as the gates' own Linear layers (issue 25, item 2), and the older fixed matrix for runs
trained with it."""

import json

import pytest
import torch

from rome_bench.checkpoint import read_run_config, upgrade_stored_config
from rome_bench.config import ModelConfig, RunConfig
from rome_bench.data import SYNTHETIC_INFO
from rome_bench.errors import ConfigError
from rome_bench.models import build_family, create_model
from rome_bench.models.family import with_stored_options
from rome_bench.models.gates import gates, gating_modules
from rome_bench.training.diversification import DiversificationLoss, pairwise_squared_distance_sum, per_threat_means
from tests.test_model_identity import REFERENCE_MODELS

THREATS = torch.arange(3).repeat_interleave(2)


def micro(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ModelConfig(backbone="vit_micro", options=options), SYNTHETIC_INFO)


def labelled_forward(model: torch.nn.Module) -> list:
    model.train()
    model(torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return gates(model)


@pytest.mark.parametrize("reading", ["per-layer", "trainable"])
def test_every_gated_layer_owns_a_k_to_k_prime_linear_in_its_state_dict(reading):
    model = micro(div_projection=reading, projection_dim=7)
    modules = gating_modules(model)
    assert modules and all(tuple(m.div_projection.weight.shape) == (7, 4) for m in modules)
    keys = [key for key in model.state_dict() if "div_projection" in key]
    assert len(keys) == 2 * len(modules)  # weight and bias of each
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in micro(div_projection="fixed").parameters()) + len(modules) * (4 * 7 + 7)


def test_the_projections_leave_the_rest_of_the_models_initial_weights_unchanged():
    with_them, without = micro().state_dict(), micro(div_projection="fixed").state_dict()
    assert {key for key in with_them if "div_projection" not in key} == set(without)
    assert all(torch.equal(with_them[key], tensor) for key, tensor in without.items())


def test_fixed_and_none_and_other_routing_losses_add_no_parameters():
    for options in ({"div_projection": "fixed"}, {"div_projection": "none"}, {"routing_loss": "load-balance"}):
        assert all(m.div_projection is None for m in gating_modules(micro(**options)))


@pytest.mark.parametrize("reading", ["per-layer", "trainable"])
def test_the_loss_uses_each_layers_own_projection(reading):
    model = micro(div_projection=reading)
    outputs = labelled_forward(model)
    expected = 0.0
    for output, module in zip(outputs, gating_modules(model), strict=True):
        projected = output.global_ @ module.div_projection.weight.T + module.div_projection.bias
        expected = expected - pairwise_squared_distance_sum(per_threat_means(output.local, THREATS)) / \
            output.local.shape[1] - pairwise_squared_distance_sum(per_threat_means(projected, THREATS))
    loss = DiversificationLoss(4, 100, weight=0.1, projection=reading)(outputs, THREATS)
    assert torch.allclose(loss, 0.1 * expected / len(outputs), rtol=1e-5)


@pytest.mark.parametrize("reading,reaches", [("per-layer", False), ("trainable", True)])
def test_l_divs_gradient_reaches_the_projection_only_when_trainable(reading, reaches):
    model = micro(div_projection=reading)
    DiversificationLoss(4, 100, 0.1, projection=reading)(labelled_forward(model), THREATS).backward()
    module = gating_modules(model)[0]
    assert (module.div_projection.weight.grad is not None) == reaches
    assert module.div_projection.weight.requires_grad == reaches  # per-layer: a frozen parameter
    assert module.global_in.weight.grad is not None and module.global_in.weight.grad.abs().sum() > 0  # gates learn


def test_inference_never_computes_the_projection():
    model = micro().eval()
    model(torch.rand(2, 3, 32, 32))
    assert all(output.projected is None for output in gates(model))
    with pytest.raises(ConfigError, match="training-mode forward"):
        DiversificationLoss(4, 100, 0.1, projection="per-layer")(gates(model), torch.tensor([0, 1]))


def test_runs_stored_before_the_option_read_as_the_fixed_matrix():
    old_bool = read_run_config(REFERENCE_MODELS / "cifar10-cpu-rome-max")  # model.rome with div_projection: true
    missing = read_run_config(REFERENCE_MODELS / "cifar10-smoke-rome-max")  # model.rome without it
    today = RunConfig.from_dict(upgrade_stored_config({"model": {"family": "rome", "options": {}}}))
    for config in (old_bool, missing, today):
        assert build_family(config.model).options.div_projection == "fixed"
    stored = {"model": {"family": "rome", "options": {"div_projection": False}}}
    assert upgrade_stored_config(stored)["model"]["options"]["div_projection"] == "none"


def test_new_runs_store_the_reading_they_were_trained_with():
    config = with_stored_options(RunConfig())
    assert config.model.options["div_projection"] == "per-layer"
    reread = RunConfig.from_dict(upgrade_stored_config(json.loads(config.to_json())))
    assert reread.model.options == config.model.options
