"""Sharing models as the field does: ``export-model`` writes a Hub-ready folder with a model card of the measured
rows, and ``hf:`` loads it back, from a local folder or from a Hugging Face cache offline, with identical logits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rome_bench
from rome_bench.errors import ConfigError, RomeBenchError
from rome_bench.evaluation.regression import REFERENCE_DIR

RUN = REFERENCE_DIR / "models" / "synthetic-micro-max"  # a tiny trained run (2-block ViT, synthetic data)
REPO = "test-org/micro-max"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _module(loaded: object) -> nn.Module:
    """The nn.Module of what load_model returns."""
    assert isinstance(loaded, nn.Module)
    return loaded


def _images() -> torch.Tensor:
    return torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, object]:
    """The tiny run evaluated on seen-pgd (8 examples) into a store, then exported with that store."""
    from rome_bench import cli

    root = tmp_path_factory.mktemp("hub")
    store = root / "results.sqlite"
    results = rome_bench.benchmark(str(RUN), suite="seen-pgd", n_examples=8, store=store, device="cpu",
                                   progress=False)
    cli.app(["export-model", str(RUN), "--out", str(root / "export"), "--store", str(store), "--repo-id", REPO],
            standalone_mode=False)
    return root / "export", store, results


def test_export_writes_a_hub_folder_whose_card_carries_the_measured_row_and_its_threats(exported) -> None:
    folder, _, results = exported
    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md", "config.json", "model.json", "model.safetensors"]
    assert (folder / "config.json").read_bytes() == (RUN / "config.json").read_bytes()
    assert (folder / "model.safetensors").read_bytes() == (RUN / "model.safetensors").read_bytes()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: rome-bench\n")
    row = results.rows()[0]
    low, high = row.intervals["union"]
    assert f"{100 * row.values['union']:.1f} ({100 * low:.1f}–{100 * high:.1f})" in card
    assert f"n = {row.n}" in card and row.model_hash in card
    assert "| linf | pgd-linf | linf | 0.0313725 (8/255) | pgd (steps 20) |" in card
    assert "| l1 | pgd-l1 | l1 | 12 | pgd (steps 20) |" in card
    assert f'load_model("hf:{REPO}")' in card and '"git_commit"' in card


def test_export_refuses_a_non_empty_folder_and_a_missing_store(exported, cli_main, tmp_path) -> None:
    folder, _, _ = exported
    again = cli_main("export-model", str(RUN), "--out", str(folder))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    missing = cli_main("export-model", str(RUN), "--out", str(tmp_path / "x"), "--store", str(tmp_path / "no.db"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "no.db").exists()


def test_hf_local_folder_loads_the_same_model(exported) -> None:
    folder, _, _ = exported
    original, shared = rome_bench.load_model(str(RUN), device="cpu"), rome_bench.load_model(f"hf:{folder}",
                                                                                            device="cpu")
    assert torch.equal(_module(original)(_images()), _module(shared)(_images()))
    assert original.rome_bench.model_hash == shared.rome_bench.model_hash


def test_hf_repo_loads_offline_from_the_hugging_face_cache(exported, tmp_path) -> None:
    """The folder laid out as huggingface_hub caches a download; HF_HUB_OFFLINE=1 so nothing is fetched."""
    folder, _, _ = exported
    cache = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, cache / "snapshots" / COMMIT)
    logits = tmp_path / "logits.pt"
    script = ("import sys, torch, rome_bench\n"
              "loaded = rome_bench.load_model(sys.argv[1], device='cpu')\n"
              "module = loaded if isinstance(loaded, torch.nn.Module) else loaded.model\n"
              "images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))\n"
              "torch.save(module(images), sys.argv[2])\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", script, f"hf:{REPO}", str(logits)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(logits), _module(rome_bench.load_model(str(RUN), device="cpu"))(_images()))
    missing = subprocess.run([sys.executable, "-m", "rome_bench", "eval", "--model", "hf:test-org/absent",
                              "--preset", "smoke"], env=env, capture_output=True, text=True, timeout=300)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "not in the Hugging Face cache" in lines[0], missing.stderr


def test_hf_folder_without_model_files_is_one_line(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(RomeBenchError, match="lacks model"):
        rome_bench.load_model(f"hf:{tmp_path}")
    with pytest.raises(ConfigError, match="of the form hf:ORG"):
        rome_bench.load_model("hf:not a repo")
