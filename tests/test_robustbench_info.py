"""RobustBench's reported numbers as reference rows, read offline from a model_info folder in RobustBench's layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rome_bench.errors import RomeBenchError
from rome_bench.evaluation import robustbench_info
from rome_bench.evaluation.reference import load_reference
from rome_bench.evaluation.store import ResultStore

# A file as RobustBench writes it (strings in percent); the numbers are this test's, not RobustBench's.
INFO = {"link": "https://arxiv.org/abs/0000.00000", "name": "A Paper", "authors": "A. Author",
        "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10", "venue": "arXiv",
        "architecture": "PreActResNet-18", "eps": "8/255", "clean_acc": "83.50", "reported": "56.70",
        "autoattack_acc": "56.60", "unreliable": False}


@pytest.fixture
def info_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "model_info"
    (folder / "cifar10" / "Linf").mkdir(parents=True)
    (folder / "cifar10" / "Linf" / "Some2021Model.json").write_text(json.dumps(INFO))
    (folder / "cifar10" / "L2").mkdir(parents=True)
    (folder / "cifar10" / "L2" / "Some2021Model.json").write_text(json.dumps({**INFO, "eps": "0.5",
                                                                              "external": "70.25"}))
    monkeypatch.setenv(robustbench_info.INFO_DIR_VARIABLE, str(folder))
    monkeypatch.setattr(robustbench_info, "INFO_URL", "http://127.0.0.1:9/model_info")  # no network: refused
    return folder


def test_reference_row_reads_clean_and_autoattack_accuracy(info_folder: Path) -> None:
    (row,) = load_reference("robustbench:Some2021Model")
    assert row.label == "Some2021Model (RobustBench)" and row.dataset == "cifar10"
    assert row.values == {"nat": pytest.approx(0.835), "robustbench-linf": pytest.approx(0.566)}
    assert row.titles == {"robustbench-linf": "RobustBench AA ℓ∞ ε=8/255"}
    assert row.source.startswith("reported by RobustBench")


def test_external_evaluation_takes_precedence_as_in_robustbench(info_folder: Path) -> None:
    (row,) = load_reference("robustbench:cifar10/L2/Some2021Model")
    assert row.values["robustbench-l2"] == pytest.approx(0.7025)


def test_missing_file_without_network_is_one_clear_error(info_folder: Path) -> None:
    with pytest.raises(RomeBenchError, match=r"not in .*could not be downloaded.*ROME_BENCH_ROBUSTBENCH_INFO"):
        load_reference("robustbench:Absent2020Model")
    assert not (info_folder / "cifar10" / "Linf" / "Absent2020Model.json").exists()


@pytest.mark.parametrize("source", ["robustbench:", "robustbench:Linf/", "robustbench:a/b/c/d",
                                    "robustbench:Linfinity/X", "robustbench:mnist/Linf/X"])
def test_malformed_sources_are_refused(info_folder: Path, source: str) -> None:
    with pytest.raises(RomeBenchError):
        load_reference(source)


def test_leaderboard_shows_the_row_in_its_own_column(info_folder: Path, tmp_path: Path, cli_main) -> None:
    from tests.test_html_leaderboard import _fill

    store = tmp_path / "r.sqlite"
    with ResultStore(store) as results:
        _fill(results, "h", "mine", 0.5, random.Random(0), None)
    result = cli_main("leaderboard", "--suite", "seen", "--store", str(store), "--dataset", "cifar10",
                      "--reference", "robustbench:Some2021Model")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("| Method"))
    assert "RobustBench AA ℓ∞ ε=8/255" in header
    row = next(line for line in result.stdout.splitlines() if line.startswith("| Some2021Model (RobustBench)"))
    assert "83.5" in row and "56.6" in row
