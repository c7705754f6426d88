import torch

from rome_bench.models.gates import DualScaleGateOutput as GateOutput
from rome_bench.training.diversification import (
    DiversificationLoss,
    diversification_loss,
    fixed_projection,
    pairwise_squared_distance_sum,
)


def gates_from(local: torch.Tensor, global_: torch.Tensor) -> GateOutput:
    return GateOutput(local, 1, "test", local=local, global_=global_)


def test_pairwise_sum_matches_the_definition():
    means = torch.randn(3, 5, 4)
    expected = sum(((means[p] - means[q]) ** 2).sum() for p in range(3) for q in range(3) if p != q)
    assert torch.allclose(pairwise_squared_distance_sum(means), expected, atol=1e-5)


def test_zero_when_all_threats_route_alike():
    local = torch.softmax(torch.randn(1, 9, 4), -1).expand(12, 9, 4)
    global_ = torch.softmax(torch.randn(1, 4), -1).expand(12, 4)
    threat_ids = torch.arange(3).repeat_interleave(4)
    loss = diversification_loss([gates_from(local, global_)], threat_ids, fixed_projection(4, 100))
    assert abs(float(loss)) < 1e-6


def test_zero_with_a_single_threat_in_the_batch():
    local = torch.softmax(torch.randn(6, 9, 4), -1)
    loss = diversification_loss([gates_from(local, local[:, 0])], torch.zeros(6, dtype=torch.long),
                                fixed_projection(4, 100))
    assert float(loss) == 0.0


def test_decreases_as_threat_gates_move_apart():
    base = torch.full((4,), 0.25)
    threat_ids = torch.arange(3).repeat_interleave(2)
    targets = torch.eye(4)[:3]
    values = []
    for t in (0.0, 0.3, 0.6, 0.9):
        per_threat = (1 - t) * base + t * targets  # threats p move towards distinct experts
        local = per_threat[threat_ids].unsqueeze(1).expand(6, 5, 4)
        values.append(float(diversification_loss([gates_from(local, per_threat[threat_ids])], threat_ids,
                                                 fixed_projection(4, 100))))
    assert values[0] > values[1] > values[2] > values[3]


def test_gradient_pushes_threat_gates_apart():
    logits = torch.randn(6, 4, requires_grad=True)
    threat_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss_fn = DiversificationLoss(4, 100, weight=0.1)
    before = None
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(20):
        local = logits.softmax(-1).unsqueeze(1).expand(6, 3, 4)
        loss = loss_fn([gates_from(local, logits.softmax(-1))], threat_ids)
        before = float(loss.detach()) if before is None else before
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < before


def test_projection_is_fixed_and_bounded():
    assert torch.equal(fixed_projection(4, 100), fixed_projection(4, 100))
    assert fixed_projection(4, 100).abs().max() <= 0.5
    assert not DiversificationLoss(4, 100, 0.1).state_dict()  # nothing trainable or saved
