import pytest
import torch

from rome_bench.errors import ThreatOutputError
from rome_bench.evaluation.runner import verify_threat_output
from rome_bench.threats import (
    L1PGD,
    L2PGD,
    THREATS,
    LinfPGD,
    LpBudget,
    Threat,
    project_l1_box,
    project_l2_box,
    project_l2_box_sorted,
    register_threat,
)
from tests.measures import accuracy

BUDGETS = {"l1": 12.0, "l2": 0.5, "linf": 8 / 255}
ATTACKS = {"l1": L1PGD, "l2": L2PGD, "linf": LinfPGD}
ORDERS = {"l1": 1, "l2": 2, "linf": float("inf")}


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_perturbation_within_budget_and_box(norm, undefended_model, correct_batch):
    images, labels = correct_batch
    torch.manual_seed(0)
    adversarial = ATTACKS[norm](BUDGETS[norm], steps=5)(undefended_model, images, labels)
    delta = (adversarial - images).flatten(1).double()
    assert delta.norm(p=ORDERS[norm], dim=1).max() <= BUDGETS[norm] * (1 + 1e-5)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert torch.isfinite(adversarial).all()


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_undefended_model_falls_to_at_most_10_percent(norm, undefended_model, correct_batch):
    images, labels = correct_batch
    torch.manual_seed(0)
    adversarial = ATTACKS[norm](BUDGETS[norm], steps=20)(undefended_model, images, labels)
    assert accuracy(undefended_model, adversarial, labels) <= 0.10


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_accuracy_does_not_rise_with_more_steps(norm, undefended_model, correct_batch):
    images, labels = correct_batch
    small = {"l1": 2.0, "l2": 0.1, "linf": 1 / 255}[norm]  # a budget where the attack is not saturated
    results = []
    for steps in (1, 3, 10):
        torch.manual_seed(0)
        attack = ATTACKS[norm](small, steps=steps, step_size=small / 4)
        results.append(accuracy(undefended_model, attack(undefended_model, images, labels), labels))
    assert results[0] >= results[1] >= results[2]
    assert results[2] < results[0], f"more steps should help on a non-saturated budget: {results}"


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_accuracy_falls_as_eps_grows(norm, undefended_model, correct_batch):
    images, labels = correct_batch
    results = []
    for scale in (0.05, 0.25, 1.0):
        torch.manual_seed(0)
        attack = ATTACKS[norm](BUDGETS[norm] * scale, steps=10)
        results.append(accuracy(undefended_model, attack(undefended_model, images, labels), labels))
    assert results[0] >= results[1] >= results[2] and results[0] > results[2]


def _bisection_reference(z, x, eps, p):
    """Projection by 200 bisection steps on the Lagrange multiplier, in float64."""
    z, x = z.flatten(1).double(), x.flatten(1).double()
    low_bound, high_bound = -x, 1 - x

    def candidate(t):
        if p == 1:
            return torch.minimum(torch.maximum(z.sign() * (z.abs() - t).clamp_min(0), low_bound), high_bound)
        return torch.minimum(torch.maximum(z / (1 + t), low_bound), high_bound)

    low = torch.zeros(len(z), 1, dtype=torch.double)
    high = torch.full((len(z), 1), 1e6, dtype=torch.double)
    for _ in range(200):
        mid = (low + high) / 2
        too_big = candidate(mid).norm(p=p, dim=1, keepdim=True) > eps
        low, high = torch.where(too_big, mid, low), torch.where(too_big, high, mid)
    inside = candidate(torch.zeros_like(low)).norm(p=p, dim=1, keepdim=True) <= eps
    return torch.where(inside, candidate(torch.zeros_like(low)), candidate(high))


@pytest.mark.parametrize("p,project", [(1, project_l1_box), (2, project_l2_box), (2, project_l2_box_sorted)])
@pytest.mark.parametrize("eps", [0.3, 5.0, 60.0])
def test_projection_is_exact(p, project, eps):
    torch.manual_seed(1)
    images = torch.rand(6, 3, 8, 8)
    z = torch.randn(6, 3, 8, 8) * (0.7 if p == 1 else 2.0)
    projected = project(z, images, eps if p == 1 else eps / 10)
    reference = _bisection_reference(z, images, eps if p == 1 else eps / 10, p).view_as(z).float()
    assert torch.allclose(projected, reference, atol=1e-5)
    assert torch.allclose(project(projected, images, eps if p == 1 else eps / 10), projected, atol=1e-6)


@pytest.mark.parametrize("rounds", [1, 2, 8])  # 1: every example outside falls back to the sorted solve
def test_active_set_l2_projection_equals_the_sorted_one(rounds, monkeypatch):
    from rome_bench.threats import pgd

    monkeypatch.setattr(pgd, "ACTIVE_SET_ROUNDS", rounds)
    torch.manual_seed(2)
    images = torch.rand(48, 3, 16, 16)
    images[:16, :, :3] = 0.0  # coordinates on the box's faces
    images[16:32, :, -3:] = 1.0
    z = torch.randn(48, 3, 16, 16) * torch.tensor([0.001, 0.05, 3.0]).repeat_interleave(16).view(-1, 1, 1, 1)
    z[:, 0, 4] = 0.0  # coordinates that do not move
    for eps in (0.05, 0.5, 4.0):
        fast, sorted_ = project_l2_box(z, images, eps), project_l2_box_sorted(z, images, eps)
        assert torch.allclose(fast, sorted_, rtol=0, atol=1e-6)  # float32 elementwise, float64 sums
        assert (fast.flatten(1).double().norm(dim=1) <= eps * (1 + 1e-6)).all()  # the runner allows 1e-5
        assert ((images + fast) >= -1e-6).all() and ((images + fast) <= 1 + 1e-6).all()


def test_runner_rejects_a_threat_that_breaks_its_budget(correct_batch):
    with THREATS.scoped():

        @register_threat("test-cheater", tag="unseen")
        class Cheater(Threat):
            def params(self):
                return {}

            def budget(self):
                return LpBudget("linf", 0.01)

            def __call__(self, model, images, labels):
                out = images.clone()
                out[3] = (out[3] + 0.5).clamp(0, 1)
                return out

        images, labels = correct_batch
        cheater = Cheater()
        with pytest.raises(ThreatOutputError, match=r"test-cheater exceeded its budget at example 103"):
            verify_threat_output(cheater, images, cheater(None, images, labels), list(range(100, 164)))
        outside = images.clone()
        outside[5, 0, 0, 0] = 1.02
        with pytest.raises(ThreatOutputError, match=r"left \[0,1\] by 0.02 at example 5"):
            verify_threat_output(cheater, images, outside, list(range(64)))
        with pytest.raises(ThreatOutputError, match="non-finite"):
            verify_threat_output(cheater, images, images * float("nan"), list(range(64)))
    assert "test-cheater" not in THREATS


def test_seen_threats_are_registered_with_metadata():
    for name, norm in (("pgd-l1", "l1"), ("pgd-l2", "l2"), ("pgd-linf", "linf")):
        entry = THREATS.entry(name)
        assert entry.metadata["tag"] == "seen" and entry.metadata["column"] == norm
    attack = L1PGD(12.0, steps=20)
    assert attack.params()["step_size"] == pytest.approx(2.5 * 12 / 20)
    assert attack.key != L1PGD(12.0, steps=10).key
