"""Issue 27, item 3: an API like RobustBench's and torchattacks' — load_model gives a callable nn.Module, benchmark
takes threat_model/eps/dataset/device, ε overrides (API and ``eval --eps``) are in the threat keys, and Results
shows itself in a notebook with Wilson intervals."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import rome_bench
from rome_bench.errors import ConfigError
from rome_bench.evaluation.budgets import parse_eps_overrides
from rome_bench.evaluation.runner import LoadedRun
from rome_bench.evaluation.suites import SUITES
from rome_bench.models import MODELS, ImageClassifier
from rome_bench.presets import preset
from rome_bench.threats import LinfPGD

NET = '''
from torch import nn
from rome_bench.models import MODELS, ImageClassifier


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = ImageClassifier(MODELS.get("vit_micro")(num_classes=10, image_size=32, patch_size=8),
                                   (0.5,) * 3, (0.25,) * 3)

    def forward(self, x):
        return self.net(x)
'''
N = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A module file and its weights: a source load_model and ``eval --model-file`` both accept."""
    folder = tmp_path_factory.mktemp("api-models")
    (folder / "net.py").write_text(NET)
    torch.manual_seed(0)
    net = ImageClassifier(MODELS.get("vit_micro")(num_classes=10, image_size=32, patch_size=8), (0.5,) * 3,
                          (0.25,) * 3)
    weights = folder / "net.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    return f"{folder / 'net.py'}:Net", weights


def stored_params(store: Path, name: str) -> list[str]:
    with sqlite3.connect(store) as connection:
        return [params for (params,) in connection.execute("SELECT params FROM threats WHERE name=?", (name,))]


def test_load_model_is_a_callable_module_that_carries_its_run(source: tuple[str, Path]) -> None:
    model = rome_bench.load_model(*source, preset="smoke", device="cpu")
    assert isinstance(model, nn.Module) and not model.training
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    run = rome_bench.load_run(*source, preset="smoke", device="cpu")
    assert isinstance(model.rome_bench, LoadedRun) and model.rome_bench.model is model
    assert model.rome_bench.model_hash == run.model_hash
    assert "rome_bench" not in "".join(model.state_dict())


def test_benchmark_takes_threat_model_and_eps_and_keys_them(source: tuple[str, Path], tmp_path: Path) -> None:
    model = rome_bench.load_model(*source, preset="smoke", device="cpu")
    store = tmp_path / "results.sqlite"
    results = rome_bench.benchmark(model, suite="seen-pgd", threat_model="Linf", eps=0.001, n_examples=N,
                                   store=store, device=torch.device("cpu"), progress=False)
    assert isinstance(results, rome_bench.Results)
    assert results.model_hashes == [model.rome_bench.model_hash]  # the run the module carries, not a re-wrap
    frame = results.to_pandas()
    assert sorted(frame["threat"].unique()) == ["clean", "pgd-linf"]
    steps = preset("smoke").threats.eval_steps["linf"]
    key = LinfPGD(0.001, steps, keep_adversarial=True).key
    assert set(frame.loc[frame["threat"] == "pgd-linf", "threat_key"]) == {key}
    default = SUITES.get("seen-pgd").build(preset("smoke").threats)
    assert key not in {threat.key for threat in default}  # another budget, another key
    assert [(p["eps"], p["steps"]) for p in map(json.loads, stored_params(store, "pgd-linf"))] == [(0.001, steps)]
    board = results.leaderboard()  # ℓ∞ only: no Union, which would stand for the whole suite
    assert board.loc[0, "linf"] >= 0 and board.loc[0, "union"] is None and board.loc[0, "l1"] is None
    assert board.loc[0, "group"] == 0
    assert "ε=0.001" in results._repr_html_() and "(some threats only)" in results._repr_html_()


def test_benchmark_refuses_unclear_budgets(source: tuple[str, Path]) -> None:
    model = rome_bench.load_model(*source, preset="smoke", device="cpu")
    with pytest.raises(ConfigError, match="eps as one number needs threat_model"):
        rome_bench.benchmark(model, eps=0.1, n_examples=2, progress=False)
    with pytest.raises(ConfigError, match="threat_model 'corruptions' is not one of Linf, L2, L1"):
        rome_bench.benchmark(model, threat_model="corruptions", n_examples=2, progress=False)
    with pytest.raises(ConfigError, match="eps for 'linf' must be a number > 0"):
        rome_bench.benchmark(model, eps={"linf": -1.0}, n_examples=2, progress=False)
    with pytest.raises(ConfigError, match="suite 'dwf' has no l1 threat"):
        rome_bench.benchmark(model, suite="dwf", threat_model="L1", n_examples=2, progress=False)


def test_eval_eps_overrides_are_stored_in_the_threat_keys(source: tuple[str, Path], tmp_path: Path, cli_main) -> None:
    store = tmp_path / "s.sqlite"
    result = cli_main("eval", "--model-file", source[0], "--weights", str(source[1]), "--preset", "smoke",
                      "--suite", "seen-pgd", "--threat", "pgd-linf", "--threat", "pgd-l2", "--eps", "linf=4/255",
                      "--eps", "L2=0.25", "--n-examples", str(N), "--store", str(store), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert [json.loads(p)["eps"] for p in stored_params(store, "pgd-linf")] == [pytest.approx(4 / 255)]
    assert [json.loads(p)["eps"] for p in stored_params(store, "pgd-l2")] == [0.25]


@pytest.mark.parametrize("flag", ["linf", "linf=0", "l3=0.1", "linf=x/255"])
def test_eval_bad_eps_is_one_line(flag: str, source: tuple[str, Path], tmp_path: Path, cli_main) -> None:
    result = cli_main("eval", "--model-file", source[0], "--preset", "smoke", "--eps", flag, "--store",
                      str(tmp_path / "s.sqlite"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"--eps '{flag}'" in lines[0], result.stderr
    assert not (tmp_path / "s.sqlite").exists()


def test_eps_overrides_parse() -> None:
    assert parse_eps_overrides(["linf=8/255", "l1=12"]) == {"linf": pytest.approx(8 / 255), "l1": 12.0}
    with pytest.raises(ConfigError, match="names linf twice"):
        parse_eps_overrides(["linf=0.1", "LINF=0.2"])


def test_results_display_in_a_notebook_with_intervals_and_threats(source: tuple[str, Path]) -> None:
    results = rome_bench.benchmark(rome_bench.load_model(*source, preset="smoke", device="cpu"), suite="seen-pgd",
                                   n_examples=N, progress=False, label="micro")
    page = results._repr_html_()
    assert page.count("<table>") == 1 and "<td>micro</td>" in page
    assert re.search(r"<td>\d+\.\d \(\d+\.\d–\d+\.\d\)</td>", page)  # accuracy (Wilson interval)
    assert "Threats: ℓ1: PGD ℓ1 ε=" in page and "restart" in page
    assert "seen-pgd" in repr(results)


def test_the_api_is_listed_and_documented() -> None:
    names = dir(rome_bench)
    assert {"benchmark", "load_model", "load_run", "Results", "__version__"} <= set(names)
    for function in (rome_bench.benchmark, rome_bench.load_model, rome_bench.load_run):
        for section in ("Parameters\n    ----------", "Returns\n    -------", "Examples\n    --------"):
            assert section in function.__doc__, (function.__name__, section)
    assert "Examples\n    --------" in rome_bench.Results.__doc__
    for suite in SUITES.names():
        assert f"``{suite}``" in rome_bench.benchmark.__doc__, suite


def test_the_package_says_it_is_typed() -> None:
    root = Path(rome_bench.__file__).parent
    assert (root / "py.typed").is_file()
    assert '"rome_bench" = ["py.typed", ' in (root.parent / "pyproject.toml").read_text()
