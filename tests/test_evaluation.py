import random

import pytest
import torch

from rome_bench.evaluation.leaderboard import build_leaderboard, measured_row, union_cell
from rome_bench.evaluation.reference import load_reference
from rome_bench.evaluation.render import RENDERERS
from rome_bench.evaluation.runner import evaluate_threats
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.table import wilson_interval
from rome_bench.threats import L2PGD, Clean, LinfPGD, Threat


def fill_store(store: ResultStore, model_hash: str, columns: dict[str, list[bool]], label: str) -> None:
    ids = list(range(len(next(iter(columns.values())))))
    keys = []
    for column, correct in columns.items():
        key = f"t-{column}:0"
        store.record_threat(key, f"t-{column}", column, "seen", {})
        store.add_results(model_hash, key, "data", ids, correct)
        keys.append(key)
    store.record_model(model_hash, label, "max", None, {})
    store.record_suite_run(model_hash, "seen", "data", "synthetic", keys, ids, "2026-01-01T00:00:00")


def test_union_is_per_example_and_never_above_any_threat(tmp_path):
    rng = random.Random(0)
    with ResultStore(tmp_path / "r.sqlite") as store:
        for model in range(5):
            columns = {c: [rng.random() < 0.6 for _ in range(200)] for c in ("nat", "l1", "l2", "linf")}
            fill_store(store, f"m{model}", columns, f"model {model}")
        rows = build_leaderboard(store, SUITES.get("seen"))
    assert len(rows) == 5
    for row in rows:
        assert all(row.values["union"] <= row.values[c] for c in ("l1", "l2", "linf"))
    assert [r.values["union"] for r in rows] == sorted((r.values["union"] for r in rows), reverse=True)


def test_union_differs_from_the_minimum_of_columns():
    per_threat = [{0: True, 1: False}, {0: False, 1: True}]
    assert union_cell(per_threat, [0, 1]).correct == 0  # min of columns would say 50%


def test_wilson_interval_known_values():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)


class CountingThreat(Threat):
    name = "counting"
    column = "linf"
    tag = "seen"

    def __init__(self) -> None:
        self.calls = 0
        self.inner = LinfPGD(8 / 255, steps=2)

    def params(self):
        return {}

    def budget(self):
        return self.inner.budget()

    def __call__(self, model, images, labels):
        self.calls += len(images)
        return self.inner(model, images, labels)


def test_store_skips_stored_work_and_rerun_is_identical(tmp_path, undefended_model, synthetic_test):
    threat = CountingThreat()
    ids = list(range(40))
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate_threats(undefended_model, "hash", [Clean(), threat], synthetic_test, ids[:20], store, 8,
                         torch.device("cpu"), progress=False)
        first_calls = threat.calls
        assert 0 < first_calls <= 20  # only clean-correct examples are attacked
        evaluate_threats(undefended_model, "hash", [Clean(), threat], synthetic_test, ids, store, 8,
                         torch.device("cpu"), progress=False)
        assert threat.calls - first_calls <= 20  # the first 20 were skipped
        before = store.correctness("hash", threat.key, synthetic_test.fingerprint)
        calls = threat.calls
        evaluate_threats(undefended_model, "hash", [Clean(), threat], synthetic_test, ids, store, 8,
                         torch.device("cpu"), progress=False)
        assert threat.calls == calls
        assert store.correctness("hash", threat.key, synthetic_test.fingerprint) == before


def test_progress_is_what_the_runner_needs_of_one_threat(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_results("m", "clean:0", "d", [0, 1, 2], [True, False, True])
        store.add_results("m", "pgd:0", "d", [0], [False])
        store.add_results("other", "pgd:0", "d", [2], [True])
        store.mark_not_applicable("m", "gma:0", "d", "no gates")
        pgd = store.progress("m", "pgd:0", "d", "clean:0")
        assert pgd.done == {0: False} and pgd.clean_correct == {0: True, 1: False, 2: True}
        assert pgd.not_applicable is None
        gma = store.progress("m", "gma:0", "d", "clean:0")
        assert gma.done == {} and gma.not_applicable == "no gates"


def test_robust_implies_clean_correct(tmp_path, undefended_model, synthetic_test):
    ids = list(range(64))
    threats = [Clean(), L2PGD(0.1, steps=3)]
    with ResultStore(tmp_path / "r.sqlite") as store:
        evaluate_threats(undefended_model, "h", threats, synthetic_test, ids, store, 32, torch.device("cpu"),
                         progress=False)
        clean = store.correctness("h", threats[0].key, synthetic_test.fingerprint)
        robust = store.correctness("h", threats[1].key, synthetic_test.fingerprint)
    assert all(clean[i] for i in ids if robust[i])


def test_reference_table_loads_with_all_rows():
    rows = load_reference("rome-paper-table1")
    assert len(rows) == 26  # 13 methods x (CIFAR-10, ImageNet-100)
    rome_max = next(r for r in rows if r.label == "RoME+MAX [PGD-trained]" and r.dataset == "cifar10")
    assert rome_max.values["union"] == pytest.approx(0.423)
    assert rome_max.source.startswith("reported by the paper")


def test_renderers_include_every_row(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        fill_store(store, "m", {c: [True, False, True] for c in ("nat", "l1", "l2", "linf")}, "my model")
        suite = SUITES.get("seen")
        rows = build_leaderboard(store, suite, references=load_reference("rome-paper-table1"))
        run = store.suite_runs("seen")[0]
        assert measured_row(store, run, suite).n == 3
    for fmt, render in RENDERERS.items():
        text = render(rows, suite)
        assert "my model" in text and "RoME+MAX" in text, fmt
    assert "| my model | 3 | 66.7 (" in RENDERERS["md"](rows, suite)
