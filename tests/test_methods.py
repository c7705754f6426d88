import pytest
import torch

from rome_bench.config import ThreatsConfig
from rome_bench.training import recipes as _recipes  # noqa: F401
from rome_bench.training.recipe import RECIPES, build_recipe

CPU = torch.device("cpu")


def recipe(name: str):
    return build_recipe(name, {}, ThreatsConfig(), "pgd")


def test_max_takes_each_examples_worst_threat():
    method = recipe("max")
    losses = torch.tensor([1.0, 5.0, 0.1, 2.0,  # threat 0 on examples 0..3
                           3.0, 0.5, 0.2, 2.5,  # threat 1
                           0.0, 0.7, 0.9, 1.0])  # threat 2
    assert method.assign(4, 3, CPU)[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.isclose(method.aggregate(losses, 4), torch.tensor((3.0 + 5.0 + 0.9 + 2.5) / 4))


def test_max_gradient_reaches_only_the_worst_threat():
    method = recipe("max")
    losses = torch.tensor([1.0, 5.0, 3.0, 0.5], requires_grad=True)
    method.aggregate(losses, 2).backward()
    assert losses.grad.tolist() == [0.0, 0.5, 0.5, 0.0]


def test_avg_averages_all_threats():
    assert float(recipe("avg").aggregate(torch.arange(6.0), 2)) == 2.5


def test_random_draws_one_threat_per_example_uniformly():
    torch.manual_seed(0)
    examples, threats = recipe("random").assign(3000, 3, CPU)
    assert examples.tolist() == list(range(3000))
    counts = torch.bincount(threats, minlength=3).float() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.03)


@pytest.mark.parametrize("name", ["max", "avg", "random"])
def test_the_family_not_the_recipe_decides_whether_the_model_has_gates(name):
    """rome+X is recipe X on family rome: the same recipe object, only the model carries gated experts."""
    from rome_bench.data import load_dataset
    from rome_bench.models import create_model
    from rome_bench.models import gates as gate_outputs
    from rome_bench.presets import preset
    from rome_bench.training.overrides import expand_method

    assert expand_method(f"train.method=rome+{name}") == [f"train.recipe={name}", "model.family=rome"]
    assert expand_method(f"train.method={name}") == [f"train.recipe={name}", "model.family=plain"]
    config = preset("smoke").model
    config.backbone = "vit_micro"
    info = load_dataset("synthetic", "test").info
    for family, gated_layers in (("plain", 0), ("rome", 4)):  # qkv and proj of vit_micro's two blocks
        config.family, config.options = family, (preset("smoke").model.options if family == "rome" else {})
        model = create_model(config, info).eval()
        with torch.no_grad():
            model(torch.rand(2, 3, 32, 32))
        assert len(gate_outputs(model)) == gated_layers, family


def test_every_recipe_is_registered_with_a_citation():
    for entry in RECIPES.entries():
        assert entry.metadata["citation"], entry.name
