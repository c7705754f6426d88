"""Routing regularisers (Table 4) and diversification distances (Table A5): minima, values and gradient signs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rome_bench.config import ModelConfig
from rome_bench.errors import ConfigError, UnknownEntryError
from rome_bench.models.gates import DualScaleGateOutput as GateOutput
from rome_bench.models.rome import RomeFamily, RomeOptions
from rome_bench.training.diversification import (
    DISTANCES,
    DiversificationLoss,
    diversification_loss,
    fixed_projection,
    global_means,
    pairwise_distance_sum,
    pairwise_squared_distance_sum,
    per_threat_means,
)
from rome_bench.training.routing import (
    ROUTING_LOSSES,
    GateClassificationLoss,
    ImportanceLoss,
    LoadBalanceLoss,
    RoutingLoss,
    routing_loss_for,
)

THREATS = torch.arange(3).repeat_interleave(2)  # 6 examples, 2 per threat
PROJECTIONS = ["fixed", "none"]  # the loss-side readings; the gate-owned ones: tests/test_div_projection.py


def gate(fused: torch.Tensor, global_: torch.Tensor | None = None, local: torch.Tensor | None = None) -> GateOutput:
    """A GateOutput whose local gates default to the fused ones and global gates to their token mean."""
    local = fused if local is None else local
    global_ = local.mean(dim=1) if global_ is None else global_
    return GateOutput(fused, 1, "test", local=local, global_=global_)


def per_threat_gates(per_threat: torch.Tensor, tokens: int = 5) -> GateOutput:
    """Every example of threat p has the gate per_threat[p] at every token."""
    rows = per_threat[THREATS]
    local = rows.unsqueeze(1).expand(len(THREATS), tokens, per_threat.shape[-1])
    return gate(local, rows)


def collapsed(batch: int = 4, tokens: int = 6, experts: int = 4) -> torch.Tensor:
    """All gate mass on expert 0."""
    return F.one_hot(torch.zeros(batch, tokens, dtype=torch.long), experts).float()


def uniform(batch: int = 4, tokens: int = 6, experts: int = 4) -> torch.Tensor:
    return torch.full((batch, tokens, experts), 1.0 / experts)


def sgd_step(logits: list[torch.Tensor], loss: torch.Tensor, lr: float = 0.05) -> None:
    loss.backward()
    with torch.no_grad():
        for leaf in logits:
            leaf -= lr * leaf.grad
            leaf.grad = None


# ---------------------------------------------------------------- load balance


def test_load_balance_is_one_at_uniform_and_k_when_collapsed():
    loss = LoadBalanceLoss(weight=1.0)
    assert float(loss([gate(uniform())], THREATS[:4])) == pytest.approx(1.0, abs=1e-6)
    assert float(loss([gate(collapsed())], THREATS[:4])) == pytest.approx(4.0, abs=1e-6)
    peaked = torch.softmax(torch.randn(4, 6, 4) + 3 * F.one_hot(torch.zeros(4, 6, dtype=torch.long), 4), -1)
    assert float(loss([gate(peaked)], THREATS[:4])) > 1.5


def test_load_balance_is_one_for_balanced_one_hot_routing():
    balanced = F.one_hot(torch.arange(4).repeat(6).view(4, 6), 4).float()  # each expert wins a quarter
    assert float(LoadBalanceLoss(1.0)([gate(balanced)], THREATS[:4])) == pytest.approx(1.0, abs=1e-6)


def test_load_balance_step_lowers_the_dominant_experts_gate():
    logits = (torch.randn(4, 6, 4) * 0.3 + torch.tensor([2.0, 0, 0, 0])).requires_grad_()
    before = logits.softmax(-1)[..., 0].mean().item()
    sgd_step([logits], LoadBalanceLoss(1.0)([gate(logits.softmax(-1))], THREATS[:4]))
    assert logits.softmax(-1)[..., 0].mean().item() < before


# ---------------------------------------------------------------- importance


def test_importance_is_zero_exactly_when_balanced():
    loss = ImportanceLoss(weight=1.0)
    assert float(loss([gate(uniform())], THREATS[:4])) == pytest.approx(0.0, abs=1e-10)
    balanced = F.one_hot(torch.arange(4).repeat(6).view(4, 6), 4).float()
    assert float(loss([gate(balanced)], THREATS[:4])) == pytest.approx(0.0, abs=1e-10)
    assert float(loss([gate(collapsed())], THREATS[:4])) == pytest.approx(3.0, abs=1e-5)  # CV² = K − 1
    assert float(loss([gate(torch.softmax(torch.randn(4, 6, 4), -1))], THREATS[:4])) > 0


def test_importance_uses_the_population_std():
    fused = torch.softmax(torch.randn(2, 3, 4), -1)
    importance = fused.sum(dim=(0, 1))
    expected = (importance.std(unbiased=False) / importance.mean()) ** 2
    assert torch.allclose(ImportanceLoss(1.0)([gate(fused)], THREATS[:2]), expected, atol=1e-6)


def test_importance_step_lowers_the_dominant_experts_gate():
    logits = (torch.randn(4, 6, 4) * 0.3 + torch.tensor([2.0, 0, 0, 0])).requires_grad_()
    before = logits.softmax(-1)[..., 0].mean().item()
    sgd_step([logits], ImportanceLoss(1.0)([gate(logits.softmax(-1))], THREATS[:4]))
    assert logits.softmax(-1)[..., 0].mean().item() < before


# ---------------------------------------------------------------- gate classification


def test_gate_classification_is_zero_on_each_threats_own_expert():
    own = F.one_hot(THREATS, 3).float().unsqueeze(1).expand(6, 5, 3)
    wrong = F.one_hot((THREATS + 1) % 3, 3).float().unsqueeze(1).expand(6, 5, 3)
    loss = GateClassificationLoss(weight=1.0)
    assert float(loss([gate(own)], THREATS)) == pytest.approx(0.0, abs=1e-7)
    assert float(loss([gate(wrong)], THREATS)) > 15  # −log(1e-8) ≈ 18.4
    assert float(loss([gate(torch.full((6, 5, 3), 1 / 3))], THREATS)) == pytest.approx(math.log(3), abs=1e-5)


def test_gate_classification_step_raises_the_correct_experts_gate():
    logits = torch.randn(6, 5, 3, requires_grad=True)
    correct = F.one_hot(THREATS, 3).bool().unsqueeze(1).expand(6, 5, 3)
    before = logits.softmax(-1)[correct].detach().clone()
    sgd_step([logits], GateClassificationLoss(1.0)([gate(logits.softmax(-1))], THREATS), lr=0.5)
    assert bool((logits.softmax(-1)[correct] > before).all())


# ---------------------------------------------------------------- weights and layers


@pytest.mark.parametrize("cls", [LoadBalanceLoss, ImportanceLoss, GateClassificationLoss])
def test_weight_scales_and_layers_are_averaged(cls):
    first, second = torch.softmax(torch.randn(6, 5, 3), -1), torch.softmax(torch.randn(6, 5, 3), -1)
    one, two = cls(1.0)([gate(first)], THREATS), cls(1.0)([gate(second)], THREATS)
    both = cls(0.5)([gate(first), gate(second)], THREATS)
    assert torch.allclose(both, 0.5 * (one + two) / 2, atol=1e-6)


@pytest.mark.parametrize("cls", [LoadBalanceLoss, ImportanceLoss, GateClassificationLoss])
def test_no_gates_is_a_config_error(cls):
    with pytest.raises(ConfigError, match="routing_loss = none"):
        cls(1.0)([], THREATS)


# ---------------------------------------------------------------- diversification distances


def test_distances_match_their_definitions():
    a, b = torch.softmax(torch.randn(7, 4), -1), torch.softmax(torch.randn(7, 4), -1)
    assert torch.allclose(DISTANCES["l2"](a, b), ((a - b) ** 2).sum(-1), atol=1e-6)
    assert torch.allclose(DISTANCES["cosine"](a, b), 1 - F.cosine_similarity(a, b, dim=-1), atol=1e-6)
    kl = (a * (a / b).log()).sum(-1) + (b * (b / a).log()).sum(-1)
    assert torch.allclose(DISTANCES["sym-kl"](a, b), kl, atol=1e-5)
    cdf_gap = (a.sort(-1).values.cumsum(-1) - b.sort(-1).values.cumsum(-1)).abs().sum(-1)
    assert torch.allclose(DISTANCES["wasserstein1"](a, b), cdf_gap, atol=1e-6)
    half, one_hot = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    assert float(DISTANCES["wasserstein1"](half, one_hot)) == pytest.approx(0.5)
    assert float(DISTANCES["cosine"](torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(1.0)
    assert torch.isfinite(DISTANCES["sym-kl"](one_hot, half))  # the clamp keeps log 0 finite


def test_pairwise_distance_sum_runs_over_ordered_pairs():
    means = torch.randn(3, 5, 4)
    expected = sum(((means[p] - means[q]) ** 2).sum() for p in range(3) for q in range(3) if p != q)
    assert torch.allclose(pairwise_distance_sum(means, DISTANCES["l2"]), expected, atol=1e-5)


def test_projected_global_gates_are_softmaxed_only_for_probability_distances():
    gates = per_threat_gates(torch.softmax(torch.randn(3, 4), -1))
    projection = fixed_projection(4, 100)
    raw = per_threat_means(gates.global_, THREATS) @ projection
    for distance in ("l2", "cosine"):
        assert torch.allclose(global_means(gates, THREATS, projection, distance), raw, atol=1e-6)
    for distance in ("sym-kl", "wasserstein1"):
        assert torch.allclose(global_means(gates, THREATS, projection, distance), raw.softmax(-1), atol=1e-6)
    assert global_means(gates, THREATS, None, "sym-kl").shape == (3, 4)


@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("distance", list(DISTANCES))
def test_diversification_is_zero_alike_and_more_negative_further_apart(distance, projection):
    matrix = fixed_projection(4, 100) if projection == "fixed" else None
    alike = per_threat_gates(torch.softmax(torch.randn(1, 4), -1).expand(3, 4))
    assert float(diversification_loss([alike], THREATS, matrix, distance)) == 0.0
    base = torch.full((4,), 0.25)
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.2, 0.8]])  # distinct experts and shapes
    values = [float(diversification_loss([per_threat_gates((1 - t) * base + t * targets)], THREATS, matrix,
                                         distance)) for t in (0.0, 0.3, 0.6, 0.9)]
    assert values[0] == 0.0
    assert values[0] > values[1] > values[2] > values[3]


@pytest.mark.parametrize("distance", list(DISTANCES))
def test_diversification_is_zero_with_one_threat(distance):
    gates = gate(torch.softmax(torch.randn(6, 5, 4), -1))
    assert float(diversification_loss([gates], torch.zeros(6, dtype=torch.long), None, distance)) == 0.0


@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("distance", list(DISTANCES))
def test_diversification_step_moves_threat_means_apart(distance, projection):
    torch.manual_seed(0)
    local_logits = (torch.randn(6, 3, 4) * 0.5).requires_grad_()
    global_logits = (torch.randn(6, 4) * 0.5).requires_grad_()
    loss_fn = DiversificationLoss(4, 100, weight=1.0, distance=distance, projection=projection)
    measure = DISTANCES[distance]

    def spreads() -> tuple[float, ...]:
        with torch.no_grad():
            gates = gate(local_logits.softmax(-1), global_logits.softmax(-1))
            local_means = per_threat_means(gates.local, THREATS)
            compared = global_means(gates, THREATS, loss_fn.matrix, distance)
            own = (float(pairwise_distance_sum(local_means, measure)), float(pairwise_distance_sum(compared, measure)))
            l2 = (float(pairwise_squared_distance_sum(local_means)),
                  float(pairwise_squared_distance_sum(per_threat_means(gates.global_, THREATS))))
            return own + l2

    before = spreads()
    loss = loss_fn([gate(local_logits.softmax(-1), global_logits.softmax(-1))], THREATS)
    sgd_step([local_logits, global_logits], loss, lr=0.01)
    after = spreads()
    assert after[0] > before[0] and after[1] > before[1]  # apart in the distance the loss maximises
    if distance != "wasserstein1":  # sorted-CDF W1 ignores which expert holds the mass, so L2 may not grow
        assert after[2] > before[2] and after[3] > before[3]


def test_default_diversification_equals_the_paper_loss_times_its_weight():
    torch.manual_seed(1)
    layers = [gate(torch.softmax(torch.randn(6, 5, 4), -1), torch.softmax(torch.randn(6, 4), -1)) for _ in range(2)]
    projection = fixed_projection(4, 100)
    expected = sum(-pairwise_squared_distance_sum(per_threat_means(layer.local, THREATS)) / 5
                   - pairwise_squared_distance_sum(per_threat_means(layer.global_ @ projection, THREATS))
                   for layer in layers) / 2
    loss = build_routing_loss(RomeOptions(div_projection="fixed"), num_threats=3)
    assert isinstance(loss, DiversificationLoss) and loss.distance == "l2" and loss.matrix is not None
    assert torch.allclose(loss(layers, THREATS), 0.1 * expected, rtol=1e-5)
    assert torch.allclose(diversification_loss(layers, THREATS, projection), expected, rtol=1e-5)


def test_diversification_saves_nothing_and_rejects_unknown_distances():
    assert not DiversificationLoss(4, 100, 0.1).state_dict()
    assert not DiversificationLoss(4, 100, 0.1, projection="none").state_dict()
    assert not DiversificationLoss(4, 100, 0.1, projection="per-layer").state_dict()  # the model owns those
    with pytest.raises(ConfigError, match="choose one of"):
        DiversificationLoss(4, 100, 0.1, distance="l3")


# ---------------------------------------------------------------- build_routing_loss


def build_routing_loss(options: RomeOptions, num_threats: int):
    """The routing loss a RoME model with ``options`` trains with."""
    return routing_loss_for(RomeFamily(options).routing(ModelConfig()), options, num_threats)


def test_every_registered_loss_carries_its_default_weight():
    for entry in ROUTING_LOSSES.entries():
        assert isinstance(entry.obj.default_weight, float) and entry.obj.default_weight > 0, entry.name


def test_an_unknown_loss_fails_with_the_registry_suggestion():
    with pytest.raises(UnknownEntryError, match="load-balance"):
        build_routing_loss(RomeOptions(routing_loss="load-balanse"), 3)


def test_a_registered_loss_is_usable_by_name_without_editing_another_file():
    class Constant(RoutingLoss):
        default_weight = 0.25

        def layer_loss(self, gate, threat_ids):
            return gate.fused.sum() * 0

    with ROUTING_LOSSES.scoped() as scoped:
        scoped.add("constant-zero", Constant)
        loss = build_routing_loss(RomeOptions(routing_loss="constant-zero"), 3)
    assert isinstance(loss, Constant) and loss.weight == 0.25


def test_build_returns_none_for_none_and_zero_weight():
    assert build_routing_loss(RomeOptions(routing_loss="none"), 3) is None
    assert build_routing_loss(RomeOptions(routing_loss="none", routing_weight=1.0), 3) is None
    assert build_routing_loss(RomeOptions(routing_loss="load-balance", routing_weight=0.0), 3) is None
    assert build_routing_loss(RomeOptions(routing_loss="diversification", routing_weight=0.0), 3) is None


@pytest.mark.parametrize(("name", "cls", "default"), [
    ("load-balance", LoadBalanceLoss, 0.5), ("importance", ImportanceLoss, 0.5),
    ("gate-classification", GateClassificationLoss, 0.1), ("diversification", DiversificationLoss, 0.1),
])
def test_build_applies_default_and_explicit_weights(name, cls, default):
    experts = 3 if name == "gate-classification" else 4
    loss = build_routing_loss(RomeOptions(routing_loss=name, num_experts=experts), 3)
    assert isinstance(loss, cls) and loss.weight == default
    assert build_routing_loss(RomeOptions(routing_loss=name, num_experts=experts, routing_weight=2.5), 3).weight == 2.5


def test_built_load_balance_is_half_at_uniform_gates():
    loss = build_routing_loss(RomeOptions(routing_loss="load-balance"), 3)
    assert float(loss([gate(uniform())], THREATS[:4])) == pytest.approx(0.5, abs=1e-6)


def test_build_passes_distance_and_projection():
    loss = build_routing_loss(RomeOptions(div_distance="sym-kl", div_projection="none", projection_dim=7), 3)
    assert loss.distance == "sym-kl" and loss.projection == "none" and loss.matrix is None
    loss = build_routing_loss(RomeOptions(div_distance="cosine", div_projection="fixed", projection_dim=7), 3)
    assert loss.distance == "cosine" and loss.matrix.shape == (4, 7)
    assert build_routing_loss(RomeOptions(), 3).projection == "per-layer"  # the default: the gates' own


def test_gate_classification_needs_one_expert_per_threat():
    with pytest.raises(ConfigError, match="num_experts = 3"):
        build_routing_loss(RomeOptions(routing_loss="gate-classification", num_experts=4), 3)
