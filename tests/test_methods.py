import pytest
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


@pytest.mark.parametrize("name", ["max", "avg", "random"])
def test_a_rome_variant_optimises_its_recipe_on_a_model_with_gates(name):
    """rome+X draws the same threats and aggregates the same losses as X; only its model carries gated experts."""
    from rome_bench.config import preset
    from rome_bench.data import load_dataset
    from rome_bench.models import create_model
    from rome_bench.models.rome import gate_outputs

    plain, rome = METHODS.get(name), METHODS.get(f"rome+{name}")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    plain_assignment = plain.assign(4, 3, cpu)
    torch.manual_seed(0)
    rome_assignment = rome.assign(4, 3, cpu)
    assert all(torch.equal(a, b) for a, b in zip(plain_assignment, rome_assignment, strict=True))
    losses = torch.rand(len(plain_assignment[0]))
    assert torch.equal(plain.aggregate(losses, plain_assignment, 4), rome.aggregate(losses, rome_assignment, 4))
    config = preset("smoke").model
    config.backbone = "vit_micro"
    info = load_dataset("synthetic", "test").info
    for method, gated_layers in ((plain, 0), (rome, 4)):  # qkv and proj of vit_micro's two blocks
        model = create_model(config, info, with_experts=method.uses_experts).eval()
        with torch.no_grad():
            model(torch.rand(2, 3, 32, 32))
        assert len(gate_outputs(model)) == gated_layers, method.name
