"""Leaderboard mechanics the unseen suite needs: pooled columns, threats that do not apply, Union (all)."""

import random

from rome_bench.evaluation.export import matrix_csv
from rome_bench.evaluation.leaderboard import build_leaderboard
from rome_bench.evaluation.render import render_markdown
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import Suite

POOLED = Suite(name="pooled", build=lambda threats: [], columns=("nat", "corr", "gma"),
               titles={"nat": "Nat", "corr": "Corr", "gma": "GMA"}, description="test suite",
               aggregates={"corr": ("corr/a", "corr/b")}, show_avg=False, union_with=("seen",))


def add_threat(store, model, key, column, ids, correct, params=None):
    store.record_threat(key, key.split(":")[0], column, "unseen", params or {})
    store.add_results(model, key, "data", ids, correct)
    return key


def fill(store, model, rng, n=60, gma_applies=True):
    ids = list(range(n))
    nat = [rng.random() < 0.9 for _ in ids]
    keys = [add_threat(store, model, "clean:0", "nat", ids, nat)]
    for column in ("corr/a", "corr/b"):
        for severity in (1, 2):
            correct = [c and rng.random() < 0.8 for c in nat]
            params = {"corruption": column, "severity": severity}
            keys.append(add_threat(store, model, f"corruption:{column}{severity}", column, ids, correct, params))
    store.record_threat("gma:0", "gma", "gma", "unseen", {})
    if gma_applies:
        store.add_results(model, "gma:0", "data", ids, [c and rng.random() < 0.5 for c in nat])
    else:
        store.mark_not_applicable(model, "gma:0", "data", "no gates")
    keys.append("gma:0")
    store.record_model(model, model, "max", None, {})
    store.record_suite_run(model, "pooled", "data", "synthetic", keys, ids, "2026-01-01T00:00:00")
    return ids, nat


def test_pooled_column_is_the_mean_over_its_threats_and_union_covers_each(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        fill(store, "m", random.Random(0))
        (row,) = build_leaderboard(store, POOLED)
        corruption_keys = [k for k, *_ in store.threats_of_model("m", "data") if k.startswith("corruption")]
        accuracies = [sum(store.correctness("m", k, "data").values()) / 60 for k in corruption_keys]
        assert len(accuracies) == 4
        assert abs(row.values["corr"] - sum(accuracies) / 4) < 1e-12
        every = [store.correctness("m", k, "data") for k, *_ in store.threats_of_model("m", "data")]
        assert row.values["union"] == sum(all(r[i] for r in every) for i in range(60)) / 60
        assert row.values["union"] <= min(accuracies)
        assert "avg" not in row.values
        detailed = build_leaderboard(store, POOLED.detailed())[0]
        assert {"corr/a", "corr/b"} <= set(detailed.values)
        assert abs((detailed.values["corr/a"] + detailed.values["corr/b"]) / 2 - row.values["corr"]) < 1e-12


def test_a_threat_that_does_not_apply_shows_na_and_stays_out_of_the_union(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        fill(store, "plain", random.Random(1), gma_applies=False)
        (row,) = build_leaderboard(store, POOLED)
        assert row.not_applicable == {"gma"} and "gma" not in row.values
        assert row.values["union"] > 0
        text = render_markdown([row], POOLED)
        assert "| n/a |" in text
        header = matrix_csv(store, POOLED).splitlines()[0].split(",")
        assert "corr/a/1" in header and "corr/b/2" in header and "gma" in header


def test_union_all_joins_the_seen_run_of_the_same_model_and_examples(tmp_path):
    rng = random.Random(2)
    with ResultStore(tmp_path / "r.sqlite") as store:
        ids, nat = fill(store, "m", rng)
        assert "union-all" not in build_leaderboard(store, POOLED)[0].values  # no seen run yet: "–"
        seen_keys = ["clean:0"] + [add_threat(store, "m", f"aa-{c}:0", c, ids, [x and rng.random() < 0.6 for x in nat])
                                   for c in ("l1", "l2", "linf")]
        store.record_suite_run("m", "seen", "data", "synthetic", seen_keys, ids, "2026-01-02T00:00:00")
        (row,) = build_leaderboard(store, POOLED)
        seen = [store.correctness("m", k, "data") for k in seen_keys]
        unseen = [store.correctness("m", k, "data") for k, *_ in store.threats_of_model("m", "data")
                  if not k.startswith("aa-")]
        expected = sum(all(r[i] for r in seen + unseen) for i in ids) / len(ids)
        assert row.values["union-all"] == expected
        assert row.values["union-all"] <= row.values["union"]
        assert all(row.values["union-all"] <= sum(r.values()) / len(ids) for r in seen)


def test_ppgd_stored_under_its_old_name_shows_in_the_column_of_its_network(tmp_path):
    """Before the network joined the name, 'ppgd' silently used self-LPIPS without the AlexNet file: such results
    read as PPGD (self), never under the AlexNet column."""
    suite = Suite(name="perceptual", build=lambda threats: [], columns=("nat", "ppgd", "ppgd-self"),
                  titles={"nat": "Nat", "ppgd": "PPGD (AlexNet)", "ppgd-self": "PPGD (self)"}, description="test",
                  show_avg=False)
    with ResultStore(tmp_path / "r.sqlite") as store:
        ids = [0, 1, 2, 3]
        keys = [add_threat(store, "m", "clean:0", "nat", ids, [True] * 4),
                add_threat(store, "m", "ppgd:old", "ppgd", ids, [True, False, False, False], {"lpips": "self"})]
        store.record_model("m", "m", "max", None, {})
        store.record_suite_run("m", "perceptual", "data", "synthetic", keys, ids, "2026-01-01T00:00:00")
        (row,) = build_leaderboard(store, suite)
    assert "ppgd" not in row.values and row.values["ppgd-self"] == 0.25 and row.values["union"] == 0.25
