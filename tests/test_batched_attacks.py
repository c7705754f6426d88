"""Batched PGD generation (training/batched.py): the sequential attacks' examples in one pass, inside every budget."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.models import create_model
from rome_bench.presets import preset
from rome_bench.training.attacks import training_threats
from rome_bench.training.batched import BatchedPGD, batched_attack_inputs
from rome_bench.training.overrides import resolve_config
from rome_bench.training.recipe import Batch, StepContext, build_recipe
from rome_bench.training.recipes.mat import adversarial_inputs, all_threats_every_example
from rome_bench.training.trainer import Trainer


def micro_model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    config = preset("smoke").model
    config.backbone, config.family = "vit_micro", family
    config.options = config.options if family == "rome" else {}  # the smoke preset's options are RoME's
    torch.manual_seed(0)
    model = create_model(config, load_dataset("synthetic", "test").info)
    for parameter in model.parameters():  # RoME experts start at B = 0: perturb so the gates change the output
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    return model.to(dtype).eval()


def smoke_threats():
    """The smoke preset's ℓ1/ℓ2/ℓ∞ PGD training attacks: 5, 5 and 3 steps, so ℓ∞ is frozen after step 3."""
    threats = training_threats(preset("smoke").threats, "pgd")
    assert len({t.steps for t in threats}) > 1
    return threats


def sequential(model, threats, images, labels, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [threat(model, images, labels) for threat in threats]


def batched(model, threats, images, labels, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    stacked = BatchedPGD(threats, [len(images)] * len(threats))(model, images.repeat(len(threats), 1, 1, 1),
                                                                   labels.repeat(len(threats)))
    return list(stacked.split(len(images)))


@pytest.mark.parametrize("family", ["plain", "rome"])
def test_batched_equals_sequential_with_the_same_random_starts(family):
    model = micro_model(family, torch.float64)  # float64: the only difference left is summation order
    images, labels = torch.rand(6, 3, 32, 32, dtype=torch.float64), torch.arange(6) % 10
    threats = smoke_threats()
    expected = sequential(model, threats, images, labels, seed=3)
    state_after_sequential = torch.get_rng_state()
    got = batched(model, threats, images, labels, seed=3)
    assert torch.equal(torch.get_rng_state(), state_after_sequential), "the same draws, in the same order"
    for threat, e, g in zip(threats, expected, got, strict=True):
        assert (e - images).abs().max() > 0, threat.name
        torch.testing.assert_close(g, e, rtol=0, atol=1e-9, msg=threat.name)


def test_batched_float32_stays_within_every_budget_and_the_box_and_matches_closely():
    model = micro_model("rome")
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    threats = smoke_threats()
    expected = sequential(model, threats, images, labels, seed=0)
    got = batched(model, threats, images, labels, seed=0)
    for threat, e, g in zip(threats, expected, got, strict=True):
        assert g.min() >= 0 and g.max() <= 1, threat.name
        check = threat.budget().check(images, g)
        assert (check.measured <= check.limit).all(), (threat.name, check.measured.max(), check.limit)
        # float32: a stacked matmul rounds differently, which may flip a sign step on a near-zero gradient
        # coordinate; the examples still agree almost everywhere
        assert ((g - e).abs() > 1e-4).float().mean() < 0.01, threat.name


@pytest.fixture
def float64_default():
    """mat.adversarial_inputs allocates its output in the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("recipe", ["max", "random"])
def test_the_recipe_option_generates_the_sequential_inputs(recipe, float64_default):
    model = micro_model("plain", torch.float64)
    ctx = StepContext(model, list(model.parameters()), routing_loss=None)
    images, labels = torch.rand(5, 3, 32, 32, dtype=torch.float64), torch.arange(5)
    threats = smoke_threats()
    torch.manual_seed(1)
    if recipe == "max":
        assignment = all_threats_every_example(len(images), len(threats), images.device)
    else:
        assignment = (torch.arange(5), torch.tensor([0, 2, 0, 2, 2]))  # ℓ2 unused: an empty slice is skipped
    torch.manual_seed(1)
    expected = adversarial_inputs(ctx, threats, images, labels, assignment)
    torch.manual_seed(1)
    got = batched_attack_inputs(ctx, threats, images, labels, assignment)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    assert not model.training, "attacks run in eval mode"


def test_the_option_is_off_by_default_and_refuses_attacks_it_cannot_batch():
    threats = preset("smoke").threats
    assert build_recipe("max", {}, threats, "pgd").options.batched_attacks is False
    assert len(build_recipe("avg", {"batched_attacks": True}, threats, "pgd").threats()) == 3
    with pytest.raises(ConfigError, match=r"batched_attacks=true batches plain PGD .* use --train-attack pgd"):
        build_recipe("max", {"batched_attacks": True}, threats, "apgd").threats()


def test_a_batched_max_step_trains_like_the_sequential_one():
    model = micro_model("plain")
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    losses = []
    for option in (False, True):
        recipe = build_recipe("max", {"batched_attacks": option}, preset("smoke").threats, "pgd")
        torch.manual_seed(0)
        result = recipe.loss(StepContext(model, list(model.parameters()), None), Batch(images, labels, 0, 0))
        losses.append(float(result.loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


class Killed(Exception):
    pass


def batched_run_config():
    return resolve_config(preset("smoke"), [
        "model.backbone=vit_micro", "data.train_size=24", "train.batch_size=8", "train.epochs=2",
        "train.checkpoint_every=2", "train.recipe=max", "model.family=rome", "train.options.batched_attacks=true",
        "threats.train_steps.l1=2", "threats.train_steps.l2=2", "threats.train_steps.linf=1"])


def test_a_batched_rome_max_run_resumes_bit_exact(tmp_path):
    config = batched_run_config

    def die_at_5(step: int) -> None:
        if step == 5:
            raise Killed

    unbroken = Trainer(config(), tmp_path / "unbroken", progress=False).fit()
    with pytest.raises(Killed):
        Trainer(config(), tmp_path / "broken", progress=False).fit(on_step=die_at_5)
    resumed = Trainer(config(), tmp_path / "broken", progress=False).fit(resume=True)
    expected, got = load_file(unbroken.with_suffix(".safetensors")), load_file(resumed.with_suffix(".safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
