"""The training APGD (threats/apgd_train.py): budget, best-loss iterate, global-RNG start, APGD's schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rome_bench.errors import ConfigError
from rome_bench.evaluation.runner import verify_threat_output
from rome_bench.presets import preset
from rome_bench.threats import THREATS
from rome_bench.threats.apgd_train import (
    CheckpointHalving,
    L1TrainingAPGD,
    SearchState,
    TrainingAPGD,
    checkpoint_iterations,
)
from rome_bench.training.attacks import training_threat

EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}  # CIFAR-10 budgets
NORMS = tuple(EPS)


def attack(norm: str, steps: int = 15, **kwargs) -> TrainingAPGD:
    return THREATS.get(f"apgd-train-{norm}")(EPS[norm], steps=steps, **kwargs)


def per_example_loss(model, images, labels) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(images), labels, reduction="none")


@pytest.fixture(scope="module")
def batch(correct_batch):
    images, labels = correct_batch
    return images[:16], labels[:16]


@pytest.mark.parametrize("norm", NORMS)
def test_output_is_in_budget_and_in_the_box(norm, undefended_model, batch):
    images, labels = batch
    torch.manual_seed(0)
    adversarial = attack(norm)(undefended_model, images, labels)
    verify_threat_output(attack(norm), images, adversarial, list(range(len(images))))
    check = attack(norm).budget().check(images, adversarial)
    assert (check.measured <= check.limit).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (check.measured > 0.5 * EPS[norm]).float().mean() > 0.5  # it does move the images


@pytest.mark.parametrize("norm", NORMS)
def test_returned_loss_is_at_least_the_random_starts_for_every_example(norm, undefended_model, batch):
    images, labels = batch
    threat = attack(norm)
    torch.manual_seed(3)
    start = threat.start_point(images)  # the call's first draw, so the same seed gives the call's start
    torch.manual_seed(3)
    adversarial = threat(undefended_model, images, labels)
    start_loss = per_example_loss(undefended_model, start, labels)
    final_loss = per_example_loss(undefended_model, adversarial, labels)
    assert not torch.equal(start, images)
    assert (final_loss >= start_loss - 1e-6).all()
    assert final_loss.mean() > start_loss.mean() + 1.0  # a real ascent, not the start returned


@pytest.mark.parametrize("norm", NORMS)
def test_more_steps_never_give_a_lower_mean_loss_on_a_trained_model(norm, undefended_model, batch):
    """The batch's mean best loss grows with N. Per example this is not guaranteed: APGD's checkpoints scale with
    N, so runs of different lengths follow different trajectories (a few examples end lower, measured)."""
    images, labels = batch
    means = []
    for steps in (1, 3, 8, 15):
        torch.manual_seed(0)
        result = attack(norm, steps=steps).run(undefended_model, images, labels)
        assert torch.allclose(result.loss, per_example_loss(undefended_model, result.images, labels), atol=1e-5)
        means.append(float(result.loss.mean()))
    assert means == sorted(means), means
    assert means[-1] > means[0]


@pytest.mark.parametrize("norm", NORMS)
def test_deterministic_under_a_seed_and_drawn_from_the_global_rng(norm, undefended_model, batch):
    images, labels = batch
    outputs, after = [], []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(attack(norm, steps=3)(undefended_model, images, labels))
        after.append(torch.rand(1))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(after[0], after[1])
    assert not torch.equal(outputs[0], outputs[2])  # the start comes from the global RNG …
    assert not torch.equal(after[0], after[2])  # … and the attack never reseeds it


def test_checkpoints_are_the_papers():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, Sec. 3.2)
    assert checkpoint_iterations(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoint_iterations(15) == [4, 7, 9, 11, 12, 14, 15]


def state_for(x: torch.Tensor, best_x: torch.Tensor, loss: float, best_loss: float) -> SearchState:
    losses = torch.tensor([loss])
    best = torch.tensor([best_loss])
    return SearchState(x, x, losses, torch.ones_like(x), best_x, best, -torch.ones_like(x), torch.tensor([1.0]))


def test_a_checkpoint_without_enough_increases_halves_the_step_and_restarts_from_the_best_point():
    x, best_x = torch.zeros(1, 3), torch.ones(1, 3)
    schedule = CheckpointHalving(steps=15, momentum=0.75, rho=0.75, start_loss=torch.tensor([0.0]))
    state = state_for(x, best_x, loss=0.5, best_loss=1.0)
    schedule.count(torch.tensor([True]))  # 1 increase in the 4 iterations to w_1 = 4: fewer than 0.75·4
    schedule.adapt(x, state, iteration=4)
    assert float(state.eta) == 0.5
    assert torch.equal(state.x, best_x) and torch.equal(state.x_prev, best_x) and float(state.loss) == 1.0


def test_a_checkpoint_after_steady_progress_keeps_the_step():
    x, best_x = torch.zeros(1, 3), torch.ones(1, 3)
    schedule = CheckpointHalving(steps=15, momentum=0.75, rho=0.75, start_loss=torch.tensor([0.0]))
    state = state_for(x, best_x, loss=1.0, best_loss=1.0)
    for _ in range(3):  # 3 of 4 increases: not fewer than 0.75·4, and the best loss improved
        schedule.count(torch.tensor([True]))
    schedule.adapt(x, state, iteration=4)
    assert float(state.eta) == 1.0 and torch.equal(state.x, x)
    schedule.adapt(x, state, iteration=5)  # not a checkpoint: nothing happens
    assert float(state.eta) == 1.0
    for _ in range(3):
        schedule.count(torch.tensor([True]))
    schedule.adapt(x, state, iteration=7)  # condition (2): not halved at w_1 and no better best loss since
    assert float(state.eta) == 0.5


def test_l1_step_moves_the_k_largest_free_coordinates_with_unit_l1_norm():
    threat = L1TrainingAPGD(eps=1.0)
    grad = torch.tensor([[[[5.0, -4.0, 3.0, 2.0, -1.0, 0.5]]]])
    x = torch.tensor([[[[1.0, 0.5, 0.5, 0.5, 0.5, 0.5]]]])  # coordinate 0 sits on the box and points out
    state = SearchState(x, x, torch.zeros(1), grad, x, torch.zeros(1), grad, torch.ones(1),
                        sparsity=torch.tensor([0.5]))  # k = 3 of 6
    direction = threat.direction(grad, state).flatten()
    assert direction.tolist() == pytest.approx([0.0, -1 / 3, 1 / 3, 1 / 3, 0.0, 0.0])


def test_training_attack_apgd_builds_these_threats_with_the_configs_steps():
    config = preset("cifar10").threats
    for norm in NORMS:
        threat = training_threat(config, norm, "apgd")
        assert threat.name == f"apgd-train-{norm}" and threat.column == norm
        assert threat.steps == config.apgd_steps[norm] and threat.eps == config.eps[norm]
        assert type(threat)(**threat.params()).key == threat.key


@pytest.mark.parametrize("arguments", [{"eps": 0.0}, {"eps": 1.0, "steps": 0}, {"eps": 1.0, "momentum": 0.0},
                                       {"eps": 1.0, "rho": 1.5}])
def test_bad_settings_are_config_errors(arguments):
    with pytest.raises(ConfigError):
        THREATS.get("apgd-train-linf")(**arguments)
    with pytest.raises(ConfigError):
        L1TrainingAPGD(eps=1.0, initial_sparsity=0.0)


class LossRecorder(torch.nn.Module):
    """The model, recording each example's cross-entropy at every input the attack evaluates."""

    def __init__(self, model: torch.nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.model, self.labels, self.losses = model, labels, []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        self.losses.append(F.cross_entropy(logits.detach(), self.labels, reduction="none"))
        return logits


@pytest.mark.parametrize("norm", NORMS)
def test_each_example_gets_its_highest_loss_iterate_not_the_last(norm, undefended_model, batch):
    images, labels = batch
    recorder = LossRecorder(undefended_model, labels)
    torch.manual_seed(0)
    result = attack(norm, steps=15).run(recorder, images, labels)
    evaluated = torch.stack(recorder.losses)  # (start + 15 iterates, examples)
    assert len(evaluated) == 16
    assert torch.equal(result.loss, evaluated.max(dim=0).values)
    assert torch.allclose(per_example_loss(undefended_model, result.images, labels), result.loss, atol=1e-5)
