"""The evaluation protocol: union cascade, ε sweeps and their flags, cost recording, per-example export."""

import csv
import io

import torch

from rome_bench.evaluation.export import matrix_csv
from rome_bench.evaluation.leaderboard import build_leaderboard, measured_row
from rome_bench.evaluation.render import RENDERERS
from rome_bench.evaluation.runner import evaluate_threats
from rome_bench.evaluation.store import FULL, UNION_ONLY, ResultStore, SweepPointRecord
from rome_bench.evaluation.suites import Suite
from rome_bench.evaluation.sweep import sweep_series, sweep_threats
from rome_bench.evaluation.validity import refresh_computed_flags
from rome_bench.threats import L1PGD, L2PGD, Clean, LinfPGD, LpBudget, Threat

CPU = torch.device("cpu")
SUITE = Suite("test-seen", lambda _: [], ("nat", "l1", "l2", "linf"), {}, "deterministic PGD for protocol tests")


def deterministic_threats(scale: float = 1.0) -> list[Threat]:
    """PGD without random start: each example's result does not depend on the batch it is in."""
    return [Clean(), L1PGD(4.0 * scale, steps=4, random_start=False), L2PGD(0.25 * scale, steps=4, random_start=False),
            LinfPGD(2 / 255 * scale, steps=4, random_start=False)]


def evaluate(store, model, data, ids, threats, union_only, model_hash="m"):
    evaluate_threats(model, model_hash, threats, data, ids, store, 16, CPU, progress=False, union_only=union_only)
    store.record_model(model_hash, "tiny", "none", None, {})
    store.record_suite_run(model_hash, SUITE.name, data.fingerprint, "synthetic", [t.key for t in threats], ids,
                           "2026-01-01T00:00:00", UNION_ONLY if union_only else FULL)
    refresh_computed_flags(store, model_hash, data.fingerprint)
    return measured_row(store, store.suite_runs(SUITE.name)[0], SUITE)


def test_union_cascade_gives_the_full_union_with_fewer_attacks(tmp_path, undefended_model, synthetic_test):
    ids = list(range(48))
    threats = deterministic_threats()
    with ResultStore(tmp_path / "cascade.sqlite") as cascade, ResultStore(tmp_path / "full.sqlite") as full:
        union_row = evaluate(cascade, undefended_model, synthetic_test, ids, threats, union_only=True)
        full_row = evaluate(full, undefended_model, synthetic_test, ids, threats, union_only=False)
        cascade_attacked = sum(cascade.cost("m", t.key, synthetic_test.fingerprint).attacked for t in threats[1:])
        full_attacked = sum(full.cost("m", t.key, synthetic_test.fingerprint).attacked for t in threats[1:])
        assert union_row.values["union"] == full_row.values["union"]
        assert cascade_attacked < full_attacked
        assert "l2" not in union_row.values and union_row.mode == UNION_ONLY
        assert "–" in RENDERERS["md"]([union_row], SUITE)
        # a full run after the cascade reuses its results and attacks only what is missing
        before = sum(cascade.cost("m", t.key, synthetic_test.fingerprint).attacked for t in threats[1:])
        completed = evaluate(cascade, undefended_model, synthetic_test, ids, threats, union_only=False)
        after = sum(cascade.cost("m", t.key, synthetic_test.fingerprint).attacked for t in threats[1:])
        assert after - before == full_attacked - cascade_attacked
        assert completed.values == full_row.values and completed.mode == FULL


def test_a_union_only_run_never_replaces_a_full_one(tmp_path, undefended_model, synthetic_test):
    ids = list(range(16))
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate(store, undefended_model, synthetic_test, ids, deterministic_threats(), union_only=False)
        row = evaluate(store, undefended_model, synthetic_test, ids, deterministic_threats(), union_only=True)
    assert row.mode == FULL and "l2" in row.values


def test_costs_count_forward_and_backward_passes(tmp_path, undefended_model, synthetic_test):
    ids = list(range(16))
    threats = deterministic_threats()
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate(store, undefended_model, synthetic_test, ids, threats, union_only=False)
        clean = store.cost("m", threats[0].key, synthetic_test.fingerprint)
        linf = store.cost("m", threats[3].key, synthetic_test.fingerprint)
    assert clean.forward_images == 16 and clean.backward_images == 0
    assert linf.examples == 16 and linf.attacked <= 16 and linf.seconds > 0
    assert linf.backward_images == 4 * linf.attacked  # one backward per step per attacked example
    assert linf.forward_images == 5 * linf.attacked  # 4 steps + the runner's classification of the output


def test_eps_sweep_is_monotone_for_pgd_and_scales_every_budget(tmp_path, undefended_model, synthetic_test):
    ids = list(range(32))
    threats = deterministic_threats()
    with ResultStore(tmp_path / "r.sqlite") as store:
        for scale in (0.5, 1.0, 2.0):
            scaled = sweep_threats(threats, scale)
            assert scaled[3].budget() == LpBudget("linf", 2 / 255 * scale)
            evaluate_threats(undefended_model, "m", scaled, synthetic_test, ids, store, 16, CPU, progress=False)
            for threat in scaled[1:]:
                store.record_sweep_point("m", "seen", synthetic_test.fingerprint, SweepPointRecord(
                    threat.name, scale, threat.params()["eps"], threat.key, ids))
        series = sweep_series(store, "m", "seen", synthetic_test.fingerprint)
    assert set(series) == {"pgd-l1", "pgd-l2", "pgd-linf"}
    for points in series.values():
        accuracies = [p.accuracy for p in points]
        assert accuracies == sorted(accuracies, reverse=True) and not any(p.flagged for p in points)
        assert accuracies[0] > accuracies[-1]


class WeakerWhenLarger(Threat):
    """A broken attack: ℓ∞ PGD below ε = 4/255, no perturbation at all above it."""

    name = "weaker-when-larger"
    column = "linf"
    tag = "seen"

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def params(self):
        return {"eps": self.eps}

    def budget(self):
        return LpBudget("linf", self.eps)

    def __call__(self, model, images, labels):
        return LinfPGD(self.eps, steps=4)(model, images, labels) if self.eps < 4 / 255 else images


def test_accuracy_rising_with_eps_is_flagged(tmp_path, undefended_model, synthetic_test):
    ids = list(range(32))
    base = [Clean(), WeakerWhenLarger(2 / 255)]
    with ResultStore(tmp_path / "r.sqlite") as store:
        for scale in (1.0, 4.0):
            evaluate_threats(undefended_model, "m", sweep_threats(base, scale), synthetic_test, ids, store, 16, CPU,
                             progress=False)
        refresh_computed_flags(store, "m", synthetic_test.fingerprint)
        flags = store.flags("m", base[1].key, synthetic_test.fingerprint)
    assert flags["eps-non-monotone"] > 0


def test_a_weaker_attack_of_the_same_norm_is_flagged(tmp_path, undefended_model, synthetic_test):
    ids = list(range(32))
    weak, strong = LinfPGD(2 / 255, steps=1, step_size=1e-4), LinfPGD(2 / 255, steps=8)
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate_threats(undefended_model, "m", [Clean(), weak, strong], synthetic_test, ids, store, 16, CPU,
                         progress=False)
        refresh_computed_flags(store, "m", synthetic_test.fingerprint)
        assert store.flags("m", weak.key, synthetic_test.fingerprint)["weaker-than-other"] > 0
        assert "weaker-than-other" not in store.flags("m", strong.key, synthetic_test.fingerprint)


class LinfPGDInItsOwnColumn(LinfPGD):
    """An ℓ∞ attack shown in another leaderboard column (as GMA is)."""

    column = "elsewhere"


def test_the_weaker_flag_compares_by_budget_not_by_column(tmp_path, undefended_model, synthetic_test):
    """Same norm and no larger ε: compared across columns; a larger ε or another norm is not evidence."""
    ids = list(range(32))
    weak = LinfPGDInItsOwnColumn(2 / 255, steps=1, step_size=1e-4)
    strong, larger = LinfPGD(2 / 255, steps=8), LinfPGD(8 / 255, steps=8)
    l2 = L2PGD(0.5, steps=8)
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate_threats(undefended_model, "m", [Clean(), weak, l2], synthetic_test, ids, store, 16, CPU,
                         progress=False)
        refresh_computed_flags(store, "m", synthetic_test.fingerprint)
        assert "weaker-than-other" not in store.flags("m", weak.key, synthetic_test.fingerprint)  # ℓ2 is no evidence
        evaluate_threats(undefended_model, "m", [Clean(), larger], synthetic_test, ids, store, 16, CPU,
                         progress=False)
        refresh_computed_flags(store, "m", synthetic_test.fingerprint)
        assert "weaker-than-other" not in store.flags("m", weak.key, synthetic_test.fingerprint)  # larger ε
        evaluate_threats(undefended_model, "m", [Clean(), strong], synthetic_test, ids, store, 16, CPU,
                         progress=False)
        refresh_computed_flags(store, "m", synthetic_test.fingerprint)
        assert store.flags("m", weak.key, synthetic_test.fingerprint)["weaker-than-other"] > 0


def test_per_example_matrix_matches_the_leaderboard(tmp_path, undefended_model, synthetic_test):
    ids = list(range(24))
    with ResultStore(tmp_path / "r.sqlite") as store:
        row = evaluate(store, undefended_model, synthetic_test, ids, deterministic_threats(), union_only=False)
        table = list(csv.DictReader(io.StringIO(matrix_csv(store, SUITE))))
        rows = build_leaderboard(store, SUITE)
    assert len(table) == 24 and {"example_id", "nat", "l1", "l2", "linf", "union"} <= set(table[0])
    for column in ("nat", "l1", "l2", "linf", "union"):
        assert sum(int(r[column]) for r in table) / 24 == row.values[column]
    assert all(int(r["union"]) == min(int(r[c]) for c in ("nat", "l1", "l2", "linf")) for r in table)
    tex = RENDERERS["tex"](rows, SUITE)
    assert "\\toprule" in tex and "tiny" in tex
