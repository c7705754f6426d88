"""L_div on the recipes with one threat per batch in their original form (issue 25 item 3): RoME+E-AT draws the norm
per example, RoME+PAT trains on AlexNet- and self-LPIPS threats, so a batch holds two threats and L_div is non-zero."""

from __future__ import annotations

import pytest
import torch

from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.models import create_model
from rome_bench.presets import preset
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import Batch, Recipe, StepContext, build_recipe
from rome_bench.training.routing import build_routing_loss

MICRO = ["model.backbone=vit_micro", "threats.train_steps.l1=1", "threats.train_steps.linf=1"]


def rome_step(method: str, *extra: str) -> tuple[Recipe, dict[str, float], dict[str, tuple[int, int]]]:
    """One objective of ``method`` on the micro RoME model with the family's routing loss: (recipe, logs, correct)."""
    config = resolve_config(preset("smoke"), [*MICRO, f"train.method={method}", *extra])
    data = load_dataset("synthetic", "train", size=8, seed=0)
    torch.manual_seed(0)
    model = create_model(config.model, data.info)
    for parameter in model.parameters():  # experts start neutral (B = 0): make the gates and experts matter
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    recipe = build_recipe(config.train.recipe, config.train.options, config.threats, config.train.attack)
    recipe.check_family(config.model.family)
    routing = build_routing_loss(config.model, num_threats=recipe.routing_groups())
    images, labels = data.dataset.batch(list(range(8)))
    torch.manual_seed(1)
    result = recipe.objective(StepContext(model, list(model.parameters()), routing), Batch(images, labels, 0, 0))
    assert torch.isfinite(result.loss)
    return recipe, result.logs, result.correct


def test_rome_e_at_draws_the_norm_per_example_so_l_div_is_non_zero():
    _, logs, correct = rome_step("rome+e-at")
    assert logs["routing"] < 0  # λ·L_div: minus the threats' gate distances
    assert 0 < logs["l1_batches"] < 1  # both norms in the batch
    assert {"l1", "linf"} <= set(correct) and correct["l1"][1] + correct["linf"][1] == 8


def test_rome_e_at_alternate_schedule_alternates_the_rows():
    recipe, logs, _ = rome_step("rome+e-at", "train.options.schedule=alternate")
    assert logs["l1_batches"] == 0.5 and logs["routing"] < 0
    assert recipe.choose_threats(1, 4).tolist() == [1, 0, 1, 0]


def test_e_at_draw_batch_keeps_one_norm_per_batch_and_l_div_zero():
    _, logs, correct = rome_step("rome+e-at", "train.options.draw=batch")
    assert logs["routing"] == 0.0 and logs["l1_batches"] in (0.0, 1.0)
    assert len(set(correct) - {"nat"}) == 1


def test_plain_e_at_still_draws_per_batch():
    config = resolve_config(preset("smoke"), [*MICRO, "train.method=e-at"])
    recipe = build_recipe(config.train.recipe, config.train.options, config.threats, config.train.attack)
    recipe.check_family(config.model.family)
    assert not recipe.per_example  # type: ignore[attr-defined]


def test_rome_pat_on_alexnet_and_self_lpips_gets_a_non_zero_l_div(fake_alexnet):
    recipe, logs, correct = rome_step("rome+pat", "train.options.steps=1", "train.options.lpips=alexnet+self")
    assert [(t.lpips, t.bound) for t in recipe.threats()] == [("alexnet", 1.0), ("self", 0.5)]  # type: ignore
    assert recipe.routing_groups() == 2
    assert logs["routing"] < 0
    assert sum(seen for column, (_, seen) in correct.items() if column != "nat") == 8


def test_rome_pat_with_one_network_keeps_l_div_zero():
    _, logs, _ = rome_step("rome+pat", "train.options.steps=1", "train.options.lpips=self")
    assert logs["routing"] == 0.0


def test_the_pat_pair_refuses_a_single_bound():
    config = resolve_config(preset("smoke"), [*MICRO, "train.method=pat", "train.options.lpips=alexnet+self",
                                              "train.options.bound=0.5"])
    with pytest.raises(ConfigError, match="bound must stay unset with lpips=alexnet"):
        build_recipe(config.train.recipe, config.train.options, config.threats, config.train.attack)


def test_rome_pat_pair_resumes_bit_exact(tmp_path, fake_alexnet):
    """The per-example threat draw comes from the checkpointed torch RNG: a killed run resumes bit for bit."""
    from tests.test_recipes_eat_ramp import FAST, assert_resume_is_bit_exact

    config = resolve_config(preset("smoke"), [*FAST, "train.method=rome+pat", "train.options.steps=1",
                                              "train.options.lpips=alexnet+self"])
    assert_resume_is_bit_exact(tmp_path, config)
