"""Every reference file in rome_bench/references/ loads and renders without a store, and a few transcribed numbers
equal the paper's (copied here by hand from /work/shared/papers/rome-paper.txt), so a typo in a file is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from rome_bench.evaluation.reference import available_references, load_reference
from rome_bench.evaluation.render import render_leaderboard
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES

PAPER_TABLES = ("rome-paper-table1", "rome-paper-table2", "rome-paper-table3", "rome-paper-table4",
                "rome-paper-table5", "rome-paper-tableA1", "rome-paper-tableA2", "rome-paper-tableA5")

# (reference, row label, dataset, column, percent as printed in the paper)
TRANSCRIBED = [
    ("rome-paper-table3", "RoME+RAMP · WRN-94-16", "cifar10", "union", 58.7),
    ("rome-paper-table3", "E-AT · XCiT-S", "imagenet1k", "nat", 65.0),
    ("rome-paper-table3", "RoME+MAX · ViT-B", "cifar10", "union", 44.4),
    ("rome-paper-table4", "Gating classification [‡] [PGD-trained]", "cifar10", "l1", 42.9),
    ("rome-paper-table4", "Adapter-based experts [PGD-trained]", "cifar10", "union", 38.6),
    ("rome-paper-table5", "w/o experts [PGD-trained]", "cifar10", "linf", 39.9),
    ("rome-paper-tableA1", "MSD · Swin-B [PGD-trained]", "cifar10", "l2", 60.0),
    ("rome-paper-tableA1", "RoME+MAX · DeiT-B [APGD-trained]", "cifar10", "union", 43.3),
    ("rome-paper-tableA2", "RoME+RANDOM [PGD-trained]", "imagenet1k", "avg", 28.2),
    ("rome-paper-tableA2", "MAX [APGD-trained]", "imagenet1k", "l1", 20.0),
    ("rome-paper-tableA5", "KL divergence [PGD-trained]", "cifar10", "l2", 70.5),
    ("rome-paper-tableA5", "Wasserstein distance [PGD-trained]", "cifar10", "union", 40.0),
]


def test_every_paper_table_is_a_reference():
    assert set(PAPER_TABLES) <= set(available_references())


@pytest.mark.parametrize("name", available_references())
def test_every_reference_renders_without_a_store(name):
    rows = load_reference(name)
    assert rows and all(row.values for row in rows)
    suite = SUITES.get(rows[0].protocol if rows[0].protocol in SUITES else "seen")
    with ResultStore(Path(":memory:")) as store:
        text = render_leaderboard(store, suite, None, "md", [name])
    assert all(row.label in text for row in rows)


@pytest.mark.parametrize(("name", "label", "dataset", "column", "percent"), TRANSCRIBED)
def test_transcribed_numbers_match_the_paper(name, label, dataset, column, percent):
    (row,) = [row for row in load_reference(name) if row.label == label and row.dataset == dataset]
    assert row.values[column] == pytest.approx(percent / 100)


def test_table3_names_its_models_and_budgets():
    rows = load_reference("rome-paper-table3")
    assert {row.label.split(" · ")[1] for row in rows} == {"ViT-B", "WRN-28-10", "WRN-94-16", "XCiT-S"}
    assert {row.dataset for row in rows if "XCiT-S" in row.label} == {"imagenet1k"}
    xcit = next(row for row in rows if "XCiT-S" in row.label)
    assert set(xcit.values) == {"nat", "union"} and xcit.protocol == "seen"
