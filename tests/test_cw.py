"""C&W-20 (ℓ∞ PGD on the C&W margin loss) and ReMoE's suite: the loss is the margin, not the cross-entropy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rome_bench.evaluation.suites import SUITES
from rome_bench.threats import THREATS


class Fixed(nn.Module):
    """Returns given logits whatever the input, plus a term linear in it so gradients exist."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits + 0 * images.flatten(1).sum(1, keepdim=True)


def test_the_objective_is_the_clamped_cw_margin():
    """−max(z_y − max_{j≠y} z_j, −κ) summed: 2 − 5 = −3 → 3, and 1 − 80 = −79 clamped at κ = 50 → 50."""
    logits = torch.tensor([[2.0, 5.0, 1.0], [80.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    attack = THREATS.get("cw-linf")(8 / 255)
    _, loss = attack.objective(Fixed(logits), torch.zeros(2, 3, 4, 4), labels)
    assert loss.item() == pytest.approx(3.0 + 50.0)
    unclamped = THREATS.get("cw-linf")(8 / 255, kappa=float("inf"))
    assert unclamped.objective(Fixed(logits), torch.zeros(2, 3, 4, 4), labels)[1].item() == pytest.approx(82.0)


def test_cw20_stays_in_the_ball_and_fools_the_undefended_model(undefended_model, correct_batch):
    images, labels = correct_batch
    torch.manual_seed(0)
    attack = THREATS.get("cw-linf")(8 / 255, 20, step_size=2 / 255)
    adversarial = attack(undefended_model, images, labels)
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6 and adversarial.min() >= 0 and adversarial.max() <= 1
    with torch.no_grad():
        robust = (undefended_model(adversarial).argmax(1) == labels).float().mean().item()
    assert robust < 0.2


def test_the_remoe_suite_runs_pgd20_and_cw20_at_a_quarter_eps_step():
    from rome_bench.presets import preset

    suite = SUITES.get("remoe")
    assert suite.columns == ("nat", "linf", "cw-linf") and suite.titles["cw-linf"] == "C&W-20 ℓ∞"
    threats = suite.build(preset("cifar10").threats)
    assert [t.name for t in threats] == ["clean", "pgd-linf", "cw-linf"]
    for attack in threats[1:]:
        assert (attack.eps, attack.steps, attack.step_size) == (pytest.approx(8 / 255), 20, pytest.approx(2 / 255))
    assert threats[2].params()["kappa"] == 50.0
