"""The Python API: the README's example runs; results as DataFrames agree with the store and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import rome_bench
from rome_bench.errors import ConfigError
from rome_bench.models import MODELS, ImageClassifier

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.DOTALL)
    assert match, "README lost its api-example block"
    return match.group(1)


def test_the_readme_example_runs(capsys):
    exec(compile(readme_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "union" in printed and "pgd-linf" in printed


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    torch.manual_seed(0)
    net = ImageClassifier(MODELS.get("vit_micro")(num_classes=10, image_size=32, patch_size=8), (0.5,) * 3,
                          (0.25,) * 3)
    store = tmp_path_factory.mktemp("api") / "results.sqlite"
    return rome_bench.benchmark(net, suite="seen-pgd", n_examples=12, preset="smoke", store=store, progress=False,
                                label="micro")


def test_long_frame_has_one_row_per_threat_and_example(results):
    frame = results.to_pandas()
    assert list(frame.columns) == ["model", "model_hash", "dataset", "threat", "threat_key", "column", "example_id",
                                   "correct"]
    assert sorted(frame["threat"].unique()) == ["clean", "pgd-l1", "pgd-l2", "pgd-linf"]
    assert frame.groupby("threat").size().eq(12).all()
    assert frame["correct"].dtype == bool


def test_union_is_per_example_and_never_above_its_members(results):
    frame = results.to_pandas()
    accuracy = frame.groupby("threat")["correct"].mean()
    for threat in ("pgd-l1", "pgd-l2", "pgd-linf"):
        assert results.union([threat])["micro"] == pytest.approx(accuracy[threat])
    pair, three = results.union(["pgd-l2", "pgd-linf"])["micro"], results.union(["l1", "l2", "linf"])["micro"]
    assert three <= pair <= min(accuracy["pgd-l2"], accuracy["pgd-linf"])
    wide = results.matrix()
    assert three == pytest.approx(wide[["l1", "l2", "linf"]].min(axis=1).mean())
    with pytest.raises(ConfigError, match="has no results"):
        results.union(["fog"])


def test_leaderboard_frame_matches_the_cli(results, cli_main):
    board = results.leaderboard()
    printed = json.loads(cli_main("leaderboard", "--suite", "seen-pgd", "--store", str(results.store_path),
                                  "--format", "json").stdout)
    row = printed["rows"][0]
    for column in ("nat", "l1", "l2", "linf", "union"):
        assert board.loc[0, column] == pytest.approx(100 * row["accuracy"][column])
    assert results.union(["clean", "l1", "l2", "linf"])["micro"] == pytest.approx(board.loc[0, "union"] / 100)


def test_results_reopened_from_the_store_are_the_same(results):
    again = rome_bench.Results.from_store(results.store_path, "seen-pgd")
    assert again.to_pandas().equals(results.to_pandas())


def test_export_writes_the_same_matrix_through_pandas(results, cli_main, tmp_path):
    import pandas as pd

    out = tmp_path / "m.csv"
    assert cli_main("export", "--suite", "seen-pgd", "--store", str(results.store_path), "--out",
                    str(out)).returncode == 0
    exported = pd.read_csv(out)
    assert len(exported) == 12 and list(exported.columns[:4]) == ["label", "model_hash", "dataset", "example_id"]
    assert exported["union"].tolist() == results.matrix()["union"].tolist()


def test_parquet_export_round_trips_or_asks_for_pyarrow(results, cli_main, tmp_path):
    import importlib.util

    import pandas as pd

    out = tmp_path / "m.parquet"
    result = cli_main("export", "--suite", "seen-pgd", "--store", str(results.store_path), "--out", str(out))
    if importlib.util.find_spec("pyarrow") is None:
        assert result.returncode != 0 and "needs pyarrow" in result.stderr and not out.exists()
    else:
        assert result.returncode == 0 and pd.read_parquet(out)["union"].tolist() == results.matrix()["union"].tolist()
