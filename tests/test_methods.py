import torch

from rome_bench.training.methods import METHODS


def test_max_takes_each_examples_worst_threat():
    method = METHODS.get("max")
    assignment = method.assign(4, 3, torch.device("cpu"))
    losses = torch.tensor([1.0, 5.0, 0.1, 2.0,  # threat 0 on examples 0..3
                           3.0, 0.5, 0.2, 2.5,  # threat 1
                           0.0, 0.7, 0.9, 1.0])  # threat 2
    assert torch.isclose(method.aggregate(losses, assignment, 4), torch.tensor((3.0 + 5.0 + 0.9 + 2.5) / 4))


def test_max_gradient_reaches_only_the_worst_threat():
    method = METHODS.get("max")
    losses = torch.tensor([1.0, 5.0, 3.0, 0.5], requires_grad=True)
    method.aggregate(losses, method.assign(2, 2, torch.device("cpu")), 2).backward()
    assert losses.grad.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_avg_averages_all_threats():
    method = METHODS.get("avg")
    losses = torch.arange(6.0)
    assert float(method.aggregate(losses, method.assign(2, 3, torch.device("cpu")), 2)) == 2.5


def test_random_draws_one_threat_per_example_uniformly():
    method = METHODS.get("random")
    torch.manual_seed(0)
    examples, threats = method.assign(3000, 3, torch.device("cpu"))
    assert examples.tolist() == list(range(3000))
    counts = torch.bincount(threats, minlength=3).float() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.03)


def test_rome_variants_use_experts_and_plain_ones_do_not():
    for name in ("max", "avg", "random"):
        assert not METHODS.get(name).uses_experts
        assert METHODS.get(f"rome+{name}").uses_experts
