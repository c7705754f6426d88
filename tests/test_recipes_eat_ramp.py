"""E-AT (training/recipes/eat.py) and RAMP (training/recipes/ramp.py): their defining properties and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.models import create_model
from rome_bench.presets import preset
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import Batch, StepContext, build_recipe
from rome_bench.training.recipes.eat import L1, LINF, l1_probability
from rome_bench.training.recipes.ramp import gradient_projection, logit_pairing_loss, most_vulnerable_pair
from rome_bench.training.trainer import Trainer
from tests.test_training import Killed, kill_at

FAST = ["model.backbone=vit_micro", "data.train_size=24", "train.batch_size=8", "train.epochs=2",
        "train.checkpoint_every=2", "threats.train_steps.l1=1", "threats.train_steps.l2=1",
        "threats.train_steps.linf=1", "threats.apgd_steps.l1=2", "threats.apgd_steps.l2=2",
        "threats.apgd_steps.linf=2"]


def fast_config(method: str, *extra: str):
    return resolve_config(preset("smoke"), [*FAST, f"train.method={method}", *extra])


def assert_resume_is_bit_exact(tmp_path, config) -> tuple[Trainer, Trainer]:
    """6 steps unbroken vs killed at step 5 (one after the checkpoint at step 4) and resumed: identical weights and
    identical recipe state at the end."""
    unbroken = Trainer(config, tmp_path / "unbroken", progress=False)
    unbroken_final = unbroken.fit()
    with pytest.raises(Killed):
        Trainer(config, tmp_path / "broken", progress=False).fit(on_step=kill_at(5))
    resumed = Trainer(config, tmp_path / "broken", progress=False)
    resumed_final = resumed.fit(resume=True)
    expected = load_file(unbroken_final.with_suffix(".safetensors"))
    got = load_file(resumed_final.with_suffix(".safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    expected_state, got_state = unbroken.recipe.state_dict(), resumed.recipe.state_dict()
    assert expected_state.keys() == got_state.keys()
    assert all(torch.equal(expected_state[key], got_state[key]) for key in expected_state)
    return unbroken, resumed


class RecordingContext(StepContext):
    """A StepContext that remembers the gradients a recipe asked for and the ones it set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[list[torch.Tensor]] = []
        self.set: list[torch.Tensor] = []

    def grads(self, loss, retain_graph=False):
        grads = super().grads(loss, retain_graph)
        self.asked.append([g.clone() for g in grads])
        return grads

    def set_grads(self, grads):
        self.set = [g.clone() for g in grads]
        super().set_grads(grads)


def recipe_and_context(method: str, *extra: str, context: type[StepContext] = StepContext):
    config = fast_config(method, *extra)
    data = load_dataset("synthetic", "train", size=24, seed=0)
    torch.manual_seed(0)
    model = create_model(config.model, data.info)
    recipe = build_recipe(config.train.recipe, config.train.options, config.threats, config.train.attack)
    ctx = context(model, list(model.parameters()), None)
    images, labels = data.dataset.batch(list(range(8)))
    return recipe, ctx, images, labels


# --- E-AT ------------------------------------------------------------------------------------------------------


def test_e_at_alternate_schedule_uses_l1_and_linf_one_to_one_over_an_epoch():
    recipe, ctx, images, labels = recipe_and_context("e-at", "train.options.schedule=alternate")
    used = []
    for step in range(6):  # one epoch of 6 batches
        result = recipe.update(ctx, Batch(images, labels, step, epoch=0))
        used.append([column for column in result.correct if column != "nat"])
        assert result.logs["l1_batches"] == float(used[-1] == ["l1"])
    assert used == [["l1"], ["linf"]] * 3
    assert recipe.robust_seen.tolist() == [24.0, 24.0]


def test_e_at_draws_l1_in_proportion_to_its_running_robust_error():
    recipe = recipe_and_context("e-at")[0]
    assert l1_probability(recipe.robust_correct, recipe.robust_seen) == 0.5  # nothing seen yet: 1/2 : 1/2
    recipe.load_state_dict({"robust_correct": torch.tensor([40.0, 80.0]), "robust_seen": torch.tensor([100.0, 100.0])})
    assert l1_probability(recipe.robust_correct, recipe.robust_seen) == pytest.approx(0.6 / (0.6 + 0.2))
    torch.manual_seed(0)
    draws = [recipe.choose_threat(step) for step in range(4000)]
    share = draws.count(L1) / len(draws)
    assert abs(share - 0.75) < 0.03, share  # 4.4 standard deviations of a fair estimate of 0.75
    recipe.load_state_dict({"robust_correct": torch.tensor([30.0, 30.0]), "robust_seen": torch.tensor([50.0, 50.0])})
    torch.manual_seed(1)
    draws = [recipe.choose_threat(step) for step in range(4000)]
    assert abs(draws.count(LINF) / len(draws) - 0.5) < 0.03


def test_e_at_counts_each_batch_under_the_norm_it_drew_and_resumes_bit_exact(tmp_path):
    recipe, ctx, images, labels = recipe_and_context("e-at")
    for step in range(4):
        recipe.update(ctx, Batch(images, labels, step, epoch=0))
    assert recipe.robust_seen.sum() == 4 * len(labels)
    unbroken, resumed = assert_resume_is_bit_exact(tmp_path, fast_config("e-at", "train.attack=apgd"))
    assert torch.equal(unbroken.recipe.robust_seen, resumed.recipe.robust_seen)  # the counts survived the kill
    assert torch.equal(unbroken.recipe.robust_correct, resumed.recipe.robust_correct)
    assert float(resumed.recipe.robust_seen.sum()) == 6 * 8  # 6 steps of 8 examples


def test_e_at_refuses_an_unknown_schedule():
    config = fast_config("e-at", "train.options.schedule=sometimes")
    with pytest.raises(ConfigError, match="e-at: unknown schedule 'sometimes'"):
        Trainer(config, Path("unused"), progress=False)


# --- RAMP ------------------------------------------------------------------------------------------------------


def test_pairing_term_is_zero_when_the_two_predictions_agree():
    torch.manual_seed(0)
    logits = torch.randn(6, 10)
    labels = logits.argmax(1)
    assert float(logit_pairing_loss(logits, logits.clone(), labels)) == 0.0
    other = torch.randn(6, 10)
    assert float(logit_pairing_loss(logits, other, labels)) > 0  # ℓq right everywhere: every pair counts
    wrong = (labels + 1) % 10  # ℓq wrong everywhere: S is empty, nothing to pair
    assert float(logit_pairing_loss(logits, other, wrong)) == 0.0


def test_the_pair_is_the_two_threats_with_the_fewest_correct_adversarial_examples():
    assert most_vulnerable_pair([5, 2, 9]) == (0, 1)  # (q, r): r most vulnerable
    assert most_vulnerable_pair([7, 7, 1]) == (0, 2)  # ties go to the lower threat id


def tangent(vector: torch.Tensor, unit: torch.Tensor) -> float:
    """tan of the angle between ``vector`` and the unit vector ``unit``."""
    along = vector @ unit
    return float((vector - along * unit).norm() / along)


def assert_angle_property(projected, adversarial, natural, beta) -> None:
    """tan∠(g, g_n) = (1 − β)·tan∠(g_a, g_n) when ⟨g_a, g_n⟩ > 0, else g = (1 − β)·g_a; and ⟨g, g_a⟩ ≥ (1 − β)‖g_a‖²."""
    for g, g_a, g_n in zip(projected, adversarial, natural, strict=True):
        g, g_a, g_n = g.double().flatten(), g_a.double().flatten(), g_n.double().flatten()
        assert g @ g_a >= (1 - beta) * (g_a @ g_a) - 1e-9 * (g_a @ g_a).clamp_min(1e-30)
        if g_a @ g_n <= 0 or g_n.norm() == 0:
            assert torch.allclose(g, (1 - beta) * g_a, rtol=1e-5, atol=1e-12)
            continue
        unit = g_n / g_n.norm()
        assert tangent(g, unit) == pytest.approx((1 - beta) * tangent(g_a, unit), rel=1e-4, abs=1e-9)
        assert float(g @ unit) == pytest.approx(float(g_a @ unit), rel=1e-5)  # the natural component is kept


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_gradient_projection_satisfies_the_angle_property(beta):
    torch.manual_seed(0)
    natural = [torch.randn(4, 5), torch.randn(7), torch.randn(3, 3)]
    adversarial = [natural[0] + 0.5 * torch.randn(4, 5), -natural[1] + 0.1 * torch.randn(7), torch.randn(3, 3)]
    natural.append(torch.zeros(2))  # a layer the clean loss does not reach
    adversarial.append(torch.randn(2))
    projected = gradient_projection(adversarial, natural, beta)
    assert_angle_property(projected, adversarial, natural, beta)
    assert (adversarial[0] * natural[0]).sum() > 0 and (adversarial[1] * natural[1]).sum() < 0  # both cases ran


def test_a_ramp_step_sets_the_projected_gradient_of_its_natural_and_adversarial_losses():
    recipe, ctx, images, labels = recipe_and_context("ramp", context=RecordingContext)
    torch.manual_seed(0)
    result = recipe.update(ctx, Batch(images, labels, step=0, epoch=0))
    natural, adversarial = ctx.asked
    assert_angle_property(ctx.set, adversarial, natural, recipe.options.gp_beta)
    agreeing = sum(bool((a * n).sum() > 0) for a, n in zip(adversarial, natural, strict=True))
    assert agreeing > 0  # the natural gradient does enter some layers
    assert all(torch.equal(p.grad, g) for p, g in zip(ctx.parameters, ctx.set, strict=True))
    assert sum(result.logs[f"pair_{column}"] for column in ("l1", "l2", "linf")) == 2
    assert math.isfinite(float(result.loss.detach())) and "nat_loss" in result.logs


def test_ramp_warm_up_epochs_are_natural_training():
    recipe, ctx, images, labels = recipe_and_context("ramp", "train.options.natural_warmup_epochs=1")
    result = recipe.update(ctx, Batch(images, labels, step=0, epoch=0))
    assert set(result.correct) == {"nat"} and "pairing" not in result.logs


@pytest.mark.parametrize("option", ["gp_beta=1.5", "pairing_weight=-1", "gp_rule=mean", "natural_warmup_epochs=-1"])
def test_ramp_refuses_bad_settings(option):
    config = fast_config("ramp", f"train.options.{option}")
    with pytest.raises(ConfigError, match=f"ramp: .*{option.split('=')[0]}"):
        Trainer(config, Path("unused"), progress=False)


def test_rome_ramp_resumed_after_a_kill_ends_bit_identical_to_an_unbroken_run(tmp_path):
    """rome+ramp (routing loss on), one natural warm-up epoch, then RAMP with GP; killed mid-epoch 2."""
    assert_resume_is_bit_exact(tmp_path, fast_config("rome+ramp", "train.options.natural_warmup_epochs=1"))
