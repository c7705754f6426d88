"""PAT and PAT+VR (training/recipes/pat.py): Fast-LPA's examples, the variation estimate, the recipes' steps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.models import create_model
from rome_bench.presets import preset
from rome_bench.threats.lpips_distance import LPIPS
from rome_bench.threats.perceptual import margin_loss
from rome_bench.training.overrides import expand_method, resolve_config
from rome_bench.training.recipe import Batch, StepContext, build_recipe, parse_options
from rome_bench.training.recipes import pat
from rome_bench.training.recipes.pat import FastLagrangePerceptualAttack, FastLagrangeVariation, PATVRRecipe
from rome_bench.training.routing import build_routing_loss
from rome_bench.training.trainer import Trainer

FAST = {"steps": 3, "lpips": "self"}


def micro_model(family: str = "plain") -> torch.nn.Module:
    config = preset("smoke").model
    config.backbone, config.family = "vit_micro", family
    config.options = config.options if family == "rome" else {}  # the smoke preset's options are RoME's
    torch.manual_seed(0)
    model = create_model(config, load_dataset("synthetic", "test").info)
    for parameter in model.parameters():  # experts start neutral (B = 0): make them matter
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return load_dataset("synthetic", "test").dataset.batch(list(range(8)))


def lpips_to(model: torch.nn.Module, clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return LPIPS("self", model)(clean, perturbed)


def context(model: torch.nn.Module, routing: torch.nn.Module | None = None) -> StepContext:
    return StepContext(model, list(model.parameters()), routing)


def test_fast_lpa_examples_respect_the_lpips_bound_measured_with_the_same_lpips(batch):
    images, labels = batch
    model = micro_model()
    bound = 0.1
    torch.manual_seed(0)
    unprojected = context(model).attack(FastLagrangePerceptualAttack(bound, projection="none", **FAST), images,
                                        labels)
    assert (lpips_to(model, images, unprojected) > bound).any()  # Fast-LPA alone overshoots: the check has teeth
    threat = FastLagrangePerceptualAttack(bound, **FAST)
    torch.manual_seed(0)
    adversarial = context(model).attack(threat, images, labels)
    distances = lpips_to(model, images, adversarial)
    assert (distances <= bound * (1 + 1e-4)).all(), distances
    assert distances.max() > 0.5 * bound  # projected onto the ball, not sent back to the clean image
    check = threat.budget().check(images, adversarial)
    assert (check.measured <= check.limit).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_fast_lpa_keeps_pushing_after_the_first_misclassification(batch):
    """Training uses the last iterate: examples misclassified from the start still move to the bound."""
    images, labels = batch
    model = micro_model().eval()
    bound = 0.2
    torch.manual_seed(0)
    adversarial = context(model).attack(FastLagrangePerceptualAttack(bound, **FAST), images, labels)
    with torch.no_grad():
        clean_logits, adversarial_logits = model(images), model(adversarial)
    wrong_from_start = clean_logits.argmax(1) != labels
    assert wrong_from_start.any()
    assert (lpips_to(model, images, adversarial)[wrong_from_start] > 0.5 * bound).all()
    assert margin_loss(adversarial_logits, labels, float("inf")).mean() > margin_loss(clean_logits, labels,
                                                                                      float("inf")).mean()


def test_variation_points_lie_in_the_ball_and_beat_the_pair_clean_and_fast_lpa(batch):
    """V(x) = max over pairs of the ball: its estimate must clearly beat the feasible pair (x, Fast-LPA(x))."""
    images, labels = batch
    model = micro_model().eval()
    bound = 0.2
    torch.manual_seed(0)
    first, second = FastLagrangeVariation(bound, **FAST).pair(model, images)
    for point in (first, second):
        assert (lpips_to(model, images, point) <= bound * (1 + 1e-4)).all()
    torch.manual_seed(0)
    adversarial = FastLagrangePerceptualAttack(bound, **FAST)(model, images, labels)
    with torch.no_grad():
        variation = torch.linalg.vector_norm(model(first) - model(second), dim=1)
        clean_to_adversarial = torch.linalg.vector_norm(model(images) - model(adversarial), dim=1)
    assert (variation >= 0).all() and variation.mean() > 1.5 * clean_to_adversarial.mean()


def recipe_step(name: str, options: dict, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                routing: torch.nn.Module | None = None):
    recipe = build_recipe(name, options, preset("smoke").threats, "pgd")
    torch.manual_seed(3)
    return recipe.objective(context(model, routing), Batch(images, labels, step=0, epoch=0))


def test_pat_vr_with_weight_0_is_pat_and_its_variation_term_is_non_negative(batch):
    images, labels = batch
    model = micro_model()
    plain = {**FAST, "only_attack_correct": False}
    pat_result = recipe_step("pat", plain, model, images, labels)
    zero = recipe_step("pat+vr", {**plain, "variation_weight": 0.0}, model, images, labels)
    assert torch.equal(zero.loss, pat_result.loss)
    weighted = recipe_step("pat+vr", {**plain, "variation_weight": 0.5}, model, images, labels)
    assert weighted.logs["adv_loss"] == pat_result.logs["adv_loss"]  # same Fast-LPA examples, same CE
    assert weighted.logs["variation"] > 0
    expected = pat_result.logs["adv_loss"] + 0.5 * weighted.logs["variation"]
    assert float(weighted.loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_only_attack_correct_leaves_misclassified_examples_clean(batch, monkeypatch):
    images, labels = batch
    model = micro_model()
    seen: list[torch.Tensor] = []
    original = pat.attack_rows

    def spy(ctx, threat, images, labels, rows):
        seen.append(rows)
        return original(ctx, threat, images, labels, rows)

    monkeypatch.setattr(pat, "attack_rows", spy)
    recipe_step("pat", FAST, model, images, labels)
    with torch.no_grad():
        correct = model.eval()(images).argmax(1) == labels
    assert torch.equal(seen[0], correct)


def test_rome_with_one_threat_gets_a_zero_diversification_loss_not_nan(batch):
    images, labels = batch
    model = micro_model("rome")
    routing = build_routing_loss(preset("smoke").model, num_threats=1)
    result = recipe_step("pat+vr", FAST, model, images, labels, routing)
    assert result.logs["routing"] == 0.0 and torch.isfinite(result.loss)
    result.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("method", ["pat", "pat+vr", "rome+pat", "rome+pat+vr"])
def test_two_training_steps_give_finite_changed_weights(tmp_path, method):
    config = resolve_config(preset("smoke"), [
        "model.backbone=vit_micro", "data.train_size=16", "train.batch_size=8", "train.epochs=1",
        f"train.method={method}", "train.options.steps=2", "train.options.lpips=self"])
    final = Trainer(config, tmp_path / "run", progress=False).fit()
    weights = load_file(final.with_suffix(".safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    initial = micro_model("rome" if method.startswith("rome+") else "plain").state_dict()
    assert any(not torch.equal(weights[k], initial[k]) for k in weights if weights[k].is_floating_point())


def test_method_names_with_a_plus_split_into_recipe_and_family():
    assert expand_method("train.method=pat+vr") == ["train.recipe=pat+vr", "model.family=plain"]
    assert expand_method("train.method=rome+pat+vr") == ["train.recipe=pat+vr", "model.family=rome"]
    assert expand_method("train.method=rome+pat") == ["train.recipe=pat", "model.family=rome"]


def test_default_bound_is_the_papers_for_the_lpips_network(monkeypatch):
    recipe = build_recipe("pat", {"lpips": "self"}, preset("smoke").threats, "pgd")
    assert recipe.threats()[0].bound == 0.5 and recipe.threats()[0].steps == 10
    monkeypatch.setattr(pat, "resolve_lpips_backbone", lambda name: "alexnet")
    assert build_recipe("pat", {}, preset("smoke").threats, "pgd").attack_settings()["bound"] == 1.0
    assert PATVRRecipe.Options().variation_weight == 0.1


@pytest.mark.parametrize("options, field", [({"bound": -1.0}, "bound"), ({"lpips": "vgg"}, "lpips"),
                                            ({"steps": 0}, "steps"), ({"projection": "box"}, "projection"),
                                            ({"variation_weight": -0.1}, "variation_weight")])
def test_bad_options_fail_in_one_line_naming_the_option(options, field):
    with pytest.raises(ConfigError, match=f"train.options.{field}"):
        parse_options(PATVRRecipe, options)


def test_a_run_started_with_alexnet_lpips_refuses_to_resume_with_self_lpips():
    recipe = build_recipe("pat", {"lpips": "self"}, preset("smoke").threats, "pgd")
    recipe.load_state_dict(recipe.state_dict())
    with pytest.raises(ConfigError, match="LPIPS 'alexnet'"):
        recipe.load_state_dict({"lpips_alexnet": torch.tensor(1)})


@pytest.mark.parametrize("name", ["pat", "pat+vr"])
def test_pat_refuses_the_apgd_training_attack_it_would_not_use(name):
    """Fast-LPA is PAT's attack: --train-attack apgd is refused in one line, not silently ignored."""
    with pytest.raises(ConfigError, match="--train-attack apgd does not apply"):
        build_recipe(name, {}, preset("smoke").threats, "apgd").threats()
