"""The sparse-MoE family (Pavlitska et al., ICCVW 2025): real top-1 dispatch, the straight-through router gradient,
the balancing losses, fixed-expert routing, its presets, suites, optimiser and schedule, and the CIFAR-100 loader."""

from __future__ import annotations

import copy
import itertools
import json
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.config import TrainConfig, apply_override
from rome_bench.data import load_dataset
from rome_bench.errors import ConfigError
from rome_bench.evaluation.suites import SUITES
from rome_bench.models import FAMILIES, build_family, create_model, gates
from rome_bench.models.family import RoutingChoice
from rome_bench.models.gates import GateOutput, inference_variant
from rome_bench.models.sparse_moe import (
    SparseMoELayer,
    SparseMoEOptions,
    SparseRouter,
    capacity_routing,
)
from rome_bench.presets import preset
from rome_bench.threats import LinfAPGD, LinfPGD
from rome_bench.training.optim import build_optimizer, learning_rate
from rome_bench.training.overrides import resolve_config
from rome_bench.training.routing import entropy_balance, routing_loss_for, switch_balance
from tests.test_cli import assert_one_line_error

INFO = load_dataset("synthetic", "test").info


def micro_config(*overrides: str):
    return resolve_config(preset("sparse-moe-smoke"), [*FAMILIES.get("sparse-moe").micro, *overrides])


def conv_layer(experts: int = 3, channels: int = 4, **router: float) -> SparseMoELayer:
    """An MoE layer of plain conv experts (no BatchNorm: per-example outputs are exact) and a gap router."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(channels, 5, 3, padding=1) for _ in range(experts)]
    return SparseMoELayer(convs, SparseRouter(channels, experts, "gap", 0, "test", **router))


def spread_router(layer: SparseMoELayer, channels: int = 4) -> None:
    """Router logits = the first E channel means ×10, so an input chooses its expert by its brightest channel."""
    linear = layer.router.network[2]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        for expert in range(linear.out_features):
            linear.weight[expert, expert % channels] = 10.0


def recorded_inputs(layer: SparseMoELayer) -> dict[int, list[torch.Tensor]]:
    seen: dict[int, list[torch.Tensor]] = {index: [] for index in range(len(layer.experts))}
    for index, expert in enumerate(layer.experts):
        expert.register_forward_pre_hook(lambda _m, args, index=index: seen[index].append(args[0].detach().clone()))
    return seen


def test_each_expert_runs_only_on_the_examples_routed_to_it():
    layer = conv_layer().eval()
    spread_router(layer)
    seen = recorded_inputs(layer)
    x = torch.rand(7, 4, 6, 6)
    x[:, :3] *= 0.1
    for row, expert in enumerate([0, 1, 2, 0, 0, 2, 1]):
        x[row, expert] += 1.0
    out = layer(x)
    choice = gates_of(layer).dispatch[:, 0].argmax(-1)
    assert choice.tolist() == [0, 1, 2, 0, 0, 2, 1]
    for expert in range(3):
        assert len(seen[expert]) == 1 and torch.equal(seen[expert][0], x[choice == expert])
    layer(x[choice == 1])  # a batch routed to one expert alone: the others do not run at all
    assert [len(seen[e]) for e in range(3)] == [1, 2, 1]
    reference = torch.stack([layer.experts[int(k)](x[i:i + 1])[0] for i, k in enumerate(choice)])
    assert torch.allclose(out, reference, atol=1e-6)  # forward = E_k(x) exactly (STE weight 1), in batch order
    assert layer(x[:0]).shape == (0, *out.shape[1:])  # an empty batch (attack cascades may send one)


def gates_of(module: nn.Module) -> GateOutput:
    (output,) = gates(module)
    return output


def test_straight_through_gradient_reaches_the_router_as_the_chosen_experts_output():
    layer = conv_layer().eval()
    spread_router(layer)
    x = torch.rand(5, 4, 6, 6)
    target = torch.randn(5, 5, 6, 6)
    loss = ((layer(x) - target) ** 2).sum()
    loss.backward()
    router = layer.router.network[2]
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    # by hand: y = E_k(x) · (1 + p_k − sg p_k), so ∂L/∂p_k = ⟨∂L/∂y, E_k(x)⟩ and the logits get J_softmaxᵀ of it
    logits = router(x.mean(dim=(2, 3))).detach().requires_grad_(True)
    probabilities = F.softmax(logits, dim=-1)
    choice = probabilities.argmax(-1)
    with torch.no_grad():
        outputs = torch.stack([layer.experts[int(k)](x[i:i + 1])[0] for i, k in enumerate(choice)])
        upstream = 2 * (outputs - target)
        on_p = torch.zeros_like(probabilities)
        on_p[torch.arange(5), choice] = (upstream * outputs).flatten(1).sum(1)
    (probabilities * on_p).sum().backward()
    expected = logits.grad.T @ x.mean(dim=(2, 3))  # Linear: ∂L/∂W = (∂L/∂logits)ᵀ · input
    assert torch.allclose(router.weight.grad, expected, rtol=1e-4, atol=1e-5)


def test_every_expert_and_router_of_a_micro_model_gets_a_gradient_in_training():
    config = micro_config()
    model = create_model(config.model, INFO).train()
    images = torch.rand(6, 3, 32, 32)
    F.cross_entropy(model(images), torch.arange(6) % 10).backward()
    dispatch = gates_of(model).dispatch[:, 0]
    assert dispatch.sum(0).tolist() == [2.0, 2.0, 2.0]  # capacity ⌈1·6/3⌉ = 2 spreads the batch over all experts
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_capacity_routing_keeps_the_best_examples_and_fills_every_expert():
    generator = torch.Generator().manual_seed(0)
    for batch, experts, capacity in [(6, 3, 2), (8, 3, 3), (10, 4, 5), (1, 4, 1)]:
        scores = torch.rand(batch, experts, generator=generator).softmax(-1)
        index = capacity_routing(scores, capacity)
        counts = torch.bincount(index, minlength=experts)
        assert (index >= 0).all() and counts.max() <= capacity
        # an expert that took fewer than its capacity refused nobody: everyone who prefers it got it
        preferred = scores.argmax(-1)
        for expert in range(experts):
            if counts[expert] < capacity:
                assert (index[preferred == expert] == expert).all()
    assert capacity_routing(torch.eye(3)[[0, 0, 0, 1]] + torch.tensor([0.3, 0.2, 0.1, 0.0]).view(-1, 1),
                            2).tolist() == [0, 0, 1, 1]


def test_switch_balance_is_one_at_balanced_dispatch_and_grows_with_collapse():
    experts = 4

    def output(probabilities: torch.Tensor, choice: torch.Tensor) -> GateOutput:
        dispatch = F.one_hot(choice, experts).float()
        return GateOutput(probabilities.unsqueeze(1), 0, "t", dispatch=dispatch.unsqueeze(1))

    balanced = torch.arange(8) % experts
    soft = torch.rand(8, experts).softmax(-1)
    assert switch_balance(output(soft, balanced)).item() == pytest.approx(1.0)  # Σ_k P_k = 1 whatever P is
    # when the gates agree with the dispatch (P = f) the loss is K·Σ f² ≥ 1, equal to 1 only when balanced
    for counts in itertools.product(range(5), repeat=experts):
        if sum(counts) != 4:
            continue
        choice = torch.tensor([k for k, n in enumerate(counts) for _ in range(n)])
        value = switch_balance(output(F.one_hot(choice, experts).float(), choice)).item()
        assert value >= 1 - 1e-6
        assert (abs(value - 1) < 1e-6) == (counts == (1, 1, 1, 1))
    collapsed = torch.zeros(8, dtype=torch.long)
    assert switch_balance(output(F.one_hot(collapsed, experts).float(), collapsed)).item() == pytest.approx(experts)
    with pytest.raises(ConfigError, match="dispatch"):
        switch_balance(GateOutput(soft.unsqueeze(1), 0, "soft"))


def test_entropy_balance_is_minimal_at_confident_routing_spread_evenly():
    experts, floor = 4, -math.log(4)
    one_hot_balanced = F.one_hot(torch.arange(8) % experts, experts).float()
    assert entropy_balance(GateOutput(one_hot_balanced.unsqueeze(1), 0, "t")).item() == pytest.approx(floor)
    uniform = torch.full((8, experts), 1 / experts)
    assert entropy_balance(GateOutput(uniform.unsqueeze(1), 0, "t")).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = F.one_hot(torch.zeros(8, dtype=torch.long), experts).float()
    assert entropy_balance(GateOutput(collapsed.unsqueeze(1), 0, "t")).item() == pytest.approx(0.0, abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.1, 1.0, 10.0):
        logits = torch.randn(200, 16, experts, generator=generator) * temperature
        values = torch.stack([entropy_balance(GateOutput(g.softmax(-1).unsqueeze(1), 0, "t")) for g in logits])
        assert (values > floor - 1e-6).all()


def test_the_family_asks_for_its_balancing_loss_with_weight_one_half():
    family = build_family(micro_config().model)
    assert family.routing(micro_config().model) == RoutingChoice("entropy", 0.5)
    switch = micro_config("model.options.balance=switch")
    loss = routing_loss_for(build_family(switch.model).routing(switch.model), build_family(switch.model).options, 1)
    model = create_model(switch.model, INFO).eval()
    model(torch.rand(4, 3, 32, 32))
    output = gates_of(model)
    assert loss(gates(model), torch.zeros(4)).item() == pytest.approx(0.5 * switch_balance(output).item())
    for none in ("model.options.balance=none", "model.options.balance_weight=0"):
        config = micro_config(none)
        assert build_family(config.model).routing(config.model) is None


def test_route_to_expert_k_sends_every_example_to_expert_k():
    config = micro_config("model.options.num_experts=4")
    model = create_model(config.model, INFO).eval()
    layer = next(m for m in model.modules() if isinstance(m, SparseMoELayer))
    seen = recorded_inputs(layer)
    images = torch.rand(5, 3, 32, 32)
    swapped = create_model(config.model, INFO).eval()
    swapped.load_state_dict(model.state_dict())
    for expert in range(4):
        with inference_variant(model, f"expert-{expert}"):
            logits = model(images)
        output = gates_of(model)
        assert (output.dispatch[:, 0].argmax(-1) == expert).all() and torch.equal(output.fused, output.dispatch)
        assert [[len(batch) for batch in seen[k]] for k in range(4)] == [[5] if k == expert else [] for k in range(4)]
        swapped.backbone.layer4[0] = copy.deepcopy(layer.experts[expert])  # the MoE layer swapped for expert k
        assert torch.allclose(logits, swapped(images), atol=1e-5)
        for inputs in seen.values():
            inputs.clear()
    model.train()  # in training too: no capacity or noise overrides a fixed expert
    with inference_variant(model, "expert-1"):
        model(images)
    assert (gates_of(model).dispatch[:, 0].argmax(-1) == 1).all()


def test_removed_zeroes_the_moe_layer_and_inverse_picks_the_least_likely_expert():
    layer = conv_layer().eval()
    spread_router(layer)
    x = torch.rand(4, 4, 6, 6)
    learned = layer.router(x)[1]
    with inference_variant(layer, "removed"):
        assert layer(x).abs().max() == 0
    with inference_variant(layer, "inverse"):
        layer(x)
    probabilities = F.softmax(layer.router.network(x), -1)
    assert torch.equal(gates_of(layer).dispatch[:, 0].argmax(-1), probabilities.argmin(-1))
    assert not torch.equal(learned, probabilities.argmin(-1))


def test_moe_layer_choices_build_the_named_layers():
    big = resolve_config(preset("sparse-moe-cifar100"), [])
    assert big.data.dataset == "cifar100" and big.train.batch_size == 640 and big.train.optimizer == "sgd-nesterov"
    model = create_model(big.model, INFO)
    assert [g.name for g in gates_with_forward(model)] == ["layer4.1"]
    assert isinstance(model.backbone.layer4[1], SparseMoELayer) and not isinstance(model.backbone.layer4[0],
                                                                                   SparseMoELayer)
    stage = resolve_config(preset("sparse-moe-cifar100"), ["model.options.moe_layers=layer4"])
    assert [g.name for g in gates_with_forward(create_model(stage.model, INFO))] == ["layer4.0", "layer4.1"]
    convs = micro_config("model.options.moe_layers=layer4-convs", "model.options.gate=conv")
    model = create_model(convs.model, INFO)
    names = [g.name for g in gates_with_forward(model)]
    assert names == ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0"]
    assert all(isinstance(m.router.network[0], nn.Conv2d) for m in model.modules() if isinstance(m, SparseMoELayer))


def gates_with_forward(model: nn.Module) -> list[GateOutput]:
    model.eval()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    return gates(model)


@pytest.mark.parametrize("overrides,needle", [
    (["model.options.moe_layers=layer4.1"], "layer4 has 1 block(s)"),
    (["model.options.moe_layers=block7"], "moe_layers must be layerS.I"),
    (["model.options.gate=mlp"], "gate must be one of gap, conv"),
    (["model.options.capacity_factor=0.5"], "capacity_factor must be 0"),
    (["model.backbone=vit_micro"], "needs a ResNet backbone"),
])
def test_bad_options_fail_in_one_line(overrides, needle):
    with pytest.raises(ConfigError) as error:
        create_model(micro_config(*overrides).model, INFO)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_balance_is_any_registered_routing_loss_checked_when_training_starts(tmp_path):
    from rome_bench.errors import UnknownEntryError
    from rome_bench.training.routing import ImportanceLoss, build_routing_loss
    from rome_bench.training.trainer import Trainer

    assert isinstance(build_routing_loss(micro_config("model.options.balance=importance").model, 1), ImportanceLoss)
    with pytest.raises(UnknownEntryError, match="entropy"):
        Trainer(micro_config("model.options.balance=entropi"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_noise_default_follows_the_balancing_loss():
    assert SparseMoEOptions().routing_noise == 0.0
    assert SparseMoEOptions(balance="switch").routing_noise == 0.1
    assert SparseMoEOptions(balance="switch", noise_std=0.0).routing_noise == 0.0


def test_pgd20_and_apgd20_suites_attack_at_the_runs_linf_budget():
    threats = preset("sparse-moe-cifar100").threats
    _, pgd = SUITES.get("pgd20").build(threats)
    assert isinstance(pgd, LinfPGD) and pgd.steps == 20
    assert pgd.eps == pytest.approx(8 / 255) and pgd.step_size == pytest.approx(2 / 255)
    _, apgd = SUITES.get("apgd20").build(threats)
    assert isinstance(apgd, LinfAPGD) and apgd.params()["attacks"] == ["apgd-ce"] and apgd.n_iter == 20


def test_sgd_nesterov_and_the_poly_schedule():
    config = TrainConfig(optimizer="sgd-nesterov", schedule="poly", lr=0.1, weight_decay=5e-4, epochs=10)
    optimizer = build_optimizer([nn.Parameter(torch.zeros(2))], config)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and group["nesterov"] and group["momentum"] == 0.9
    assert group["weight_decay"] == 5e-4
    assert learning_rate(config, 0.0) == learning_rate(config, 0.99) == pytest.approx(0.1)
    assert learning_rate(config, 3.5) == pytest.approx(0.1 * 0.7 ** 0.9)
    assert learning_rate(config, 10.0) == 0.0
    base = preset("smoke")
    for field, value in (("optimizer", "adam"), ("schedule", "cosine")):
        with pytest.raises(ConfigError, match=f"train.{field} must be one of"):
            apply_override(base, f"train.{field}={value}")


def fake_cifar100(root, sizes=(("train", 12), ("test", 6))) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in sizes:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [(7 * i) % 100 for i in
                                                                                           range(n)],
                 "coarse_labels": [0] * n, "filenames": [f"{i}.png" for i in range(n)], "batch_label": split}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": []}, protocol=2))


def test_cifar100_loads_torchvisions_pickle_layout(tmp_path):
    fake_cifar100(tmp_path)
    for data_dir in (tmp_path, tmp_path / "cifar-100-python"):
        train = load_dataset("cifar100", "train", data_dir)
        assert train.info.num_classes == 100 and len(train.info.class_names) == 100
        images, labels = train.dataset.batch(list(range(12)))
        assert images.shape == (12, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
        assert labels.tolist() == [(7 * i) % 100 for i in range(12)]
    raw = pickle.loads((tmp_path / "cifar-100-python" / "test").read_bytes())["data"]
    test = load_dataset("cifar100", "test", tmp_path, size=3, seed=1)
    assert len(test.dataset) == 3
    first, _ = load_dataset("cifar100", "test", tmp_path).dataset.batch([0])
    assert torch.equal((first[0] * 255).round().to(torch.uint8), torch.from_numpy(raw[0].reshape(3, 32, 32)))


def test_cifar100_refuses_a_folder_without_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no CIFAR-100 data"):
        load_dataset("cifar100", "train", tmp_path / "empty")
    broken = tmp_path / "broken" / "cifar-100-python"
    broken.mkdir(parents=True)
    for split in ("train", "test"):
        (broken / split).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(Exception, match="not a CIFAR-100 train file"):
        load_dataset("cifar100", "train", broken)


def test_fixed_expert_rows_from_the_command_line(cli_main, tmp_path):
    run = tmp_path / "sparse"
    trained = cli_main("train", "--family", "sparse-moe", "--method", "linf-at", "--preset", "sparse-moe-smoke",
                       "--train-size", "16", "--batch-size", "8", "--epochs", "1", "--no-progress",
                       "--set", "threats.train_steps.linf=1", "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    assert json.loads((run / "config.json").read_text())["model"]["family"] == "sparse-moe"
    store = tmp_path / "results.sqlite"
    for extra in ([], ["--route-to-expert", "all"]):
        result = cli_main("eval", "--run", str(run), "--suite", "pgd20", "--n-examples", "4", "--store", str(store),
                          "--no-progress", *extra)
        assert result.returncode == 0, result.stderr
    board = json.loads(cli_main("leaderboard", "--suite", "pgd20", "--store", str(store), "--format", "json").stdout)
    labels = sorted(row["label"] for row in board["rows"])
    assert labels == ["sparse-moe+linf-at (sparse)", *(f"sparse-moe+linf-at (sparse) [expert {k}]" for k in range(4))]
    refused = cli_main("eval", "--run", str(run), "--suite", "pgd20", "--n-examples", "4", "--store", str(store),
                       "--no-progress", "--route-to-expert", "4")
    assert_one_line_error(refused, "expert index 0..3")


def test_the_paper_preset_trains_with_their_pgd_step_size():
    from rome_bench.presets import preset
    from rome_bench.training.attacks import training_threats

    linf = training_threats(preset("sparse-moe-cifar100").threats, "pgd")[-1]
    assert (linf.eps, linf.steps, linf.step_size) == (8 / 255, 7, 2 / 255)
