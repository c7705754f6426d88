"""The gating-misrouting attack: within budget, moves gates toward the least likely expert, is plain ℓ∞ PGD without
its misrouting term, and on models without gates is its CE term alone (ℓ∞ PGD), flagged ``ce-only-no-gates``.
GMA itself can leave robust examples that PGD breaks (its misrouting term pulls away from the classification loss;
``rome_bench/threats/gma.py``), so GMA∪PGD is the evaluation at least as strong as plain ℓ∞ PGD with the same
budget: per example."""

import copy

import pytest
import torch

from rome_bench.evaluation.runner import evaluate_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.models.rome import LoRAExpertMixture, RomeOptions, add_rome_experts
from rome_bench.threats import Clean, LinfPGD
from rome_bench.threats.gma import (
    CE_ONLY_FLAG,
    GatingMisrouting,
    GatingMisroutingOrPGD,
    misrouting_loss,
    model_gates,
)
from tests.measures import fooled


@pytest.fixture(scope="module")
def gated_model(undefended_model):
    """The tiny undefended ViT with 4 rank-2 experts on qkv/proj, non-zero experts and peaked (non-uniform) gates."""
    model = copy.deepcopy(undefended_model)
    torch.manual_seed(0)  # the experts' A is drawn from the global RNG: fix it, whatever ran before
    add_rome_experts(model.backbone, RomeOptions(num_experts=4, rank=2, gate_hidden=8))
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, LoRAExpertMixture):
            module.lora_B.data.normal_(0, 0.05, generator=generator)
            for linear in (module.gate.local_in, module.gate.global_in, module.gate.local_out, module.gate.global_out):
                linear.weight.data.normal_(0, 0.5, generator=generator)
    return model.eval().requires_grad_(False)


def mean_misrouting(model, images, targets) -> float:
    with torch.no_grad():
        model(images)
        return float(misrouting_loss(model_gates(model), targets).mean())


def test_gma_stays_in_budget_and_box_and_is_deterministic(gated_model, correct_batch):
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    threat = GatingMisrouting(eps=4 / 255, steps=5)
    torch.manual_seed(1)
    first = threat(gated_model, images, labels)
    torch.manual_seed(1)
    second = threat(gated_model, images, labels)
    assert torch.equal(first, second)
    check = threat.budget().check(images, first)
    assert (check.measured <= check.limit).all()
    assert first.min() >= 0 and first.max() <= 1


def test_gma_moves_gates_toward_the_least_likely_expert(gated_model, correct_batch):
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    with torch.no_grad():
        gated_model(images)
        targets = [gate.argmin(-1) for gate in model_gates(gated_model)]
    torch.manual_seed(0)
    attacked = GatingMisrouting(eps=8 / 255, steps=10, keep_adversarial=False)(gated_model, images, labels)
    torch.manual_seed(0)
    plain = LinfPGD(8 / 255, steps=10, keep_adversarial=False)(gated_model, images, labels)
    clean_loss = mean_misrouting(gated_model, images, targets)
    assert mean_misrouting(gated_model, attacked, targets) < clean_loss - 0.05
    assert mean_misrouting(gated_model, attacked, targets) < mean_misrouting(gated_model, plain, targets)


def test_gma_without_its_misrouting_term_is_plain_pgd(gated_model, correct_batch):
    """gate_weight = 0 leaves the paper's loss CE(f): the same iterates as ℓ∞ PGD from the same random start."""
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    torch.manual_seed(0)
    gma = GatingMisrouting(eps=1.5 / 255, steps=10, gate_weight=0.0)(gated_model, images, labels)
    torch.manual_seed(0)
    pgd = LinfPGD(1.5 / 255, steps=10)(gated_model, images, labels)
    assert torch.equal(gma, pgd)


def test_gma_union_is_at_least_as_strong_as_plain_pgd_with_the_same_budget(gated_model, correct_batch):
    """Per example, GMA∪PGD breaks every example that plain ℓ∞ PGD breaks with the same ε, steps and step size
    (deterministic starts), on a budget where GMA alone leaves some of them robust (measured: 1, 3 and 6 of 64 under
    ROME_BENCH_TEST_SEED 0, 1 and 2)."""
    images, labels = correct_batch
    union = GatingMisroutingOrPGD(eps=1.5 / 255, steps=10, random_start=False)
    pgd = LinfPGD(1.5 / 255, 10, union.gma.step_size, random_start=False)
    union_fooled = fooled(gated_model, union(gated_model, images, labels), labels)
    pgd_fooled = fooled(gated_model, pgd(gated_model, images, labels), labels)
    assert 0 < pgd_fooled.sum() < len(labels), "the budget should leave the comparison informative"
    missed = (pgd_fooled & ~union_fooled).nonzero().flatten().tolist()
    assert not missed, f"GMA∪PGD leaves robust examples {missed} that PGD breaks"


def test_gma_on_a_model_without_gates_is_its_ce_term_flagged_as_such(undefended_model, correct_batch):
    """No gates: the misrouting term is empty, so GMA is ℓ∞ PGD with the same settings and start, and says so."""
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    gma = GatingMisrouting(eps=1.5 / 255, steps=10)
    torch.manual_seed(0)
    attacked = gma(undefended_model, images, labels)
    torch.manual_seed(0)
    assert torch.equal(attacked, LinfPGD(1.5 / 255, steps=10)(undefended_model, images, labels))
    assert gma.call_flags() == {CE_ONLY_FLAG: 16}
    union = GatingMisroutingOrPGD(eps=1.5 / 255, steps=10)
    union(undefended_model, images, labels)
    assert union.call_flags() == {CE_ONLY_FLAG: 16}


def test_gma_on_a_gated_model_raises_no_ce_only_flag(gated_model, correct_batch):
    gma = GatingMisrouting(steps=1)
    gma(gated_model, *correct_batch)
    assert gma.call_flags() == {}


def test_gma_gives_a_number_on_a_plain_model_and_replaces_an_old_na_mark(tmp_path, undefended_model,
                                                                         synthetic_test):
    threat = GatingMisrouting(steps=2)
    ids, data = list(range(8)), synthetic_test.fingerprint
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.mark_not_applicable("plain", threat.key, data, "gma does not apply to this model")  # older store
        evaluate_threats(undefended_model, "plain", [Clean(), threat], synthetic_test, ids, store, 8,
                         torch.device("cpu"), progress=False)
        assert store.not_applicable("plain", threat.key, data) is None
        assert len(store.correctness("plain", threat.key, data)) == 8
        clean = sum(store.correctness("plain", Clean().key, data).values())
        assert store.flags("plain", threat.key, data) == {CE_ONLY_FLAG: clean}  # the clean-correct ones attacked


@pytest.mark.parametrize("eps", [1 / 255, 2 / 255])
def test_gma_union_breaks_exactly_what_gma_or_pgd_breaks(gated_model, correct_batch, eps):
    """Per example, GMA∪PGD is the worst case of GMA and of PGD on the same budget (deterministic starts)."""
    images, labels = correct_batch[0][:32], correct_batch[1][:32]
    union = GatingMisroutingOrPGD(eps=eps, steps=5, random_start=False)
    gma = GatingMisrouting(eps=eps, steps=5, random_start=False)
    pgd = LinfPGD(eps, 5, gma.step_size, random_start=False)
    adversarial = {name: threat(gated_model, images, labels)
                   for name, threat in (("union", union), ("gma", gma), ("pgd", pgd))}
    with torch.no_grad():
        broken = {name: gated_model(x).argmax(1) != labels for name, x in adversarial.items()}
    assert torch.equal(broken["union"], broken["gma"] | broken["pgd"])
    assert broken["union"].sum() >= max(broken["gma"].sum(), broken["pgd"].sum())
    check = union.budget().check(images, adversarial["union"])
    assert bool((check.measured <= check.limit).all())
