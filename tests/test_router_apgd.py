"""Router-aware APGD (``threats/router_apgd.py``) and the adaptive suite built on it (``evaluation/suites.py``).

* the attack is pyautoattack's APGD: without its misrouting term it returns APGD-CE's output exactly;
* its loss hook reads the gates of the forward it is called after: the targeted run moves gates toward its expert;
* it stays in every norm's budget and [0, 1] on every gated family, deterministic under a seed;
* the adaptive suite's Adaptive column is, per example, the union over AA, router APGD and GMA: never above AA.
"""

from __future__ import annotations

import pytest
import torch
from pyautoattack.autopgd_base import APGDAttack

from rome_bench.evaluation.leaderboard import build_leaderboard
from rome_bench.evaluation.runner import attack_precision, evaluate_threats, verify_threat_output
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES, adaptive_threats
from rome_bench.models import FAMILIES
from rome_bench.models.autocast import attack_model
from rome_bench.threats import THREATS, Clean
from rome_bench.threats.gma import model_gates
from rome_bench.threats.router_apgd import RouterAwareAPGD, expert_count, misrouting_apgd
from tests.test_contracts import micro_model
from tests.test_gma import gated_model  # noqa: F401  (the fixture: the tiny ViT with RoME's experts)
from tests.test_precision import bf16_unsupported

GATED_FAMILIES = [name for name in FAMILIES.names() if FAMILIES.get(name).has_experts]
BUDGETS = {"linf": 2 / 255, "l2": 0.25, "l1": 4.0}


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_without_the_misrouting_term_it_is_pyautoattacks_apgd_ce(gated_model, correct_batch, norm):  # noqa: F811
    """gate_weight 0: the hooked loss is CE, so the output equals the library's own APGD-CE with the same seed."""
    images, labels = correct_batch[0][:8], correct_batch[1][:8]
    ours = misrouting_apgd(gated_model, norm, BUDGETS[norm], 4, 0, 0.0, None, 1).perturb(images, labels)
    theirs = APGDAttack(gated_model, n_iter=4, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm],
                        n_restarts=5 if norm == "l1" else 1, eps=BUDGETS[norm], seed=0, loss="ce",
                        use_largereps=norm == "l1")
    from rome_bench.threats.autoattack import set_apgd_iterations

    set_apgd_iterations(theirs, 4)
    assert torch.equal(ours, theirs.perturb(images, labels))


def mean_gate_on(model, images, expert: int) -> float:
    with torch.no_grad():
        model(images)
    return float(torch.stack([gate[..., expert].mean() for gate in model_gates(model)]).mean())


def test_the_targeted_loss_pulls_every_gate_toward_its_expert(gated_model, correct_batch):  # noqa: F811
    """The highest-loss points of a targeted run (misrouting term dominant) route more mass to the target expert."""
    images, labels = correct_batch[0][:16], correct_batch[1][:16]
    for expert in range(expert_count(gated_model)):
        attack = misrouting_apgd(gated_model, "linf", 8 / 255, 10, 0, 100.0, expert, 1)
        pushed = attack.perturb(images, labels, best_loss=True)
        assert mean_gate_on(gated_model, pushed, expert) > mean_gate_on(gated_model, images, expert) + 0.05, expert


@pytest.mark.parametrize("family", GATED_FAMILIES)
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_router_apgd_on_every_gated_family_stays_in_budget_and_is_deterministic(family, norm):
    """The contract of tests/test_contracts.py on gated micro models (the shared model there has no gates); ℓ1
    untargeted only and bf16 under ℓ∞ only (ℓ1 APGD's 5 restarts × 3 ε-stages per expert take a minute on 2 cores)."""
    model = micro_model(family).eval().requires_grad_(False)
    attacks = ("untargeted",) if norm == "l1" else ("untargeted", "targeted")
    threat = THREATS.get(f"router-apgd-{norm}")(BUDGETS[norm], attacks=attacks, n_iter=2)
    assert threat.applicable(model) and type(threat)(**threat.params()).key == threat.key
    torch.manual_seed(0)
    images, labels = torch.rand(3, 3, 32, 32), torch.arange(3)
    first, second = threat(model, images, labels), threat(model, images, labels)
    verify_threat_output(threat, images, first, [0, 1, 2])
    assert torch.equal(first, second)
    if norm == "linf" and bf16_unsupported() is None:
        with attack_precision("bf16", torch.device("cpu")):
            output = threat(attack_model(model), images, labels)
        verify_threat_output(threat, images, output.detach(), [0, 1, 2])


def test_router_apgd_does_not_apply_without_gates(undefended_model):
    assert not RouterAwareAPGD.__subclasses__()[0](8 / 255).applicable(undefended_model)


def run_adaptive(store, model, model_hash, data, ids):
    """The adaptive suite's threats, shortened (2 iterations, 10 Square queries), recorded as a complete run."""
    threats = [Clean(), *adaptive_threats({"linf": 2 / 255, "l2": 0.15, "l1": 2.0}, n_iter=2, n_queries=10,
                                          gma_steps=3)]
    store.record_model(model_hash, model_hash, None, None, {})
    evaluate_threats(model, model_hash, threats, data, ids, store, len(ids), torch.device("cpu"), progress=False)
    store.record_suite_run(model_hash, "adaptive", data.fingerprint, data.info.name, [t.key for t in threats], ids,
                           "2026-01-01T00:00:00")
    return threats


def test_adaptive_is_the_per_example_union_and_never_above_autoattack(tmp_path, gated_model, undefended_model,  # noqa: F811
                                                                      synthetic_test):
    """Gated model: Adaptive = examples robust under every AA, router-APGD and GMA threat; AA = under every AA
    threat; so Adaptive ≤ AA and the gap column is their difference. Plain model: the router attacks and GMA are n/a
    and Adaptive = AA."""
    ids = list(range(8))
    suite = SUITES.get("adaptive")
    with ResultStore(tmp_path / "r.sqlite") as store:
        threats = run_adaptive(store, gated_model, "gated", synthetic_test, ids)
        run_adaptive(store, undefended_model, "plain", synthetic_test, ids)
        rows = {row.model_hash: row for row in build_leaderboard(store, suite)}
        results = {t.column: store.correctness("gated", t.key, synthetic_test.fingerprint) for t in threats}
        costs = [store.cost("gated", t.key, synthetic_test.fingerprint) for t in threats if t.name != "clean"]
    aa_robust = [i for i in ids if all(results[c][i] for c in ("l1", "l2", "linf"))]
    adaptive_robust = [i for i in aa_robust if all(results[c][i] for c in ("router-l1", "router-l2", "router-linf",
                                                                           "gma"))]
    gated = rows["gated"]
    assert gated.counts["aa"].correct == len(aa_robust) and gated.counts["adaptive"].correct == len(adaptive_robust)
    assert gated.values["adaptive"] <= gated.values["aa"] and gated.values["adaptive"] == gated.values["union"]
    assert gated.values["gap"] == pytest.approx(gated.values["aa"] - gated.values["adaptive"])
    aa_cost, adaptive_cost = gated.costs["aa"], gated.costs["adaptive"]  # totals over each column's threats
    assert aa_cost.examples == adaptive_cost.examples == len(ids) and adaptive_cost.seconds > aa_cost.seconds
    assert adaptive_cost.forward_images == sum(store_cost.forward_images for store_cost in costs)
    plain = rows["plain"]
    assert plain.values["adaptive"] == plain.values["aa"] and plain.values["gap"] == 0


def test_stochastic_routing_gets_expectation_over_transformation(gated_model, correct_batch):  # noqa: F811
    """Under random gating (two forwards differ) the gradient is averaged over eot_random draws; else eot_iter."""
    from rome_bench.models.gates import inference_variant

    images, labels = correct_batch[0][:4], correct_batch[1][:4]
    threat = THREATS.get("router-apgd-linf")(1 / 255, attacks=("untargeted",), n_iter=1, eot_random=3)
    threat(gated_model, images, labels)
    assert threat.draws == 1
    with inference_variant(gated_model, "random"):
        threat(gated_model, images, labels)
    assert threat.draws == 3
