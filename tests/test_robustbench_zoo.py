"""RobustBench's zoo offline: a zoo architecture with saved weights in RobustBench's layout loads, evaluates through
``eval --model robustbench:<name>`` with its own normalisation, and initialises a rome-bench model (``--init``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rome_bench.errors import CheckpointError, ConfigError

if importlib.util.find_spec("robustbench") is None:  # installed by tests/reference-requirements.txt (--no-deps)
    pytest.skip("robustbench is not installed", allow_module_level=True)

from rome_bench.models.robustbench_zoo import (
    build_zoo_architecture,
    checkpoint_path,
    import_robustbench,
    load_zoo_model,
    parse_zoo_source,
)

SMALL = "Rebuffi2021Fixing_R18_ddpm"  # DeepMind pre-act ResNet-18 (12.5 M parameters), CIFAR-10 mean/std inside


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A RobustBench model folder holding one zoo model with seeded random weights."""
    folder = tmp_path_factory.mktemp("robustbench")
    torch.manual_seed(0)
    net = build_zoo_architecture(SMALL)
    path = checkpoint_path(SMALL, "cifar10", "Linf", folder)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return folder


def test_the_package_imports_through_the_autoattack_bridge():
    utils = import_robustbench()
    import autoattack
    import pyautoattack

    assert autoattack is pyautoattack and callable(utils.load_model)


def test_load_model_finds_the_checkpoint_offline_and_keeps_its_normalisation(model_dir):
    model = load_zoo_model(SMALL, "cifar10", "Linf", model_dir)
    reference = build_zoo_architecture(SMALL)
    reference.load_state_dict(torch.load(checkpoint_path(SMALL, "cifar10", "Linf", model_dir)))
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(images), reference.eval()(images))
    assert hasattr(model, "mean") and torch.allclose(model.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]),
                                                     atol=1e-3)  # RobustBench's CIFAR-10 statistics, in the model


def test_missing_names_and_files_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="did you mean Rebuffi2021Fixing_R18_ddpm"):
        build_zoo_architecture("Rebufi2021Fixing_R18_ddpm")
    with pytest.raises(ConfigError, match="unknown RobustBench threat model 'Linfinity'"):
        parse_zoo_source("robustbench:Linfinity/Standard")
    assert parse_zoo_source("robustbench:L2/Standard") == ("Standard", "L2")
    assert parse_zoo_source("robustbench:Standard") == ("Standard", "Linf")


def test_eval_model_robustbench_evaluates_the_zoo_model(cli_main, model_dir, tmp_path):
    store = tmp_path / "s.sqlite"
    result = cli_main("eval", "--model", f"robustbench:{SMALL}", "--model-dir", str(model_dir), "--preset", "smoke",
                      "--suite", "seen-pgd", "--n-examples", "4", "--store", str(store), "--no-progress",
                      "--batch-size", "4")
    assert result.returncode == 0, result.stderr
    assert f"robustbench ({SMALL}, Linf)" in result.stdout


def test_init_from_robustbench_loads_the_zoo_weights_into_the_matching_backbone(tmp_path, monkeypatch):
    """``--init robustbench:Standard`` (RobustBench's WRN-28-10) fills rome-bench's ``wrn_28_10`` tensor for tensor."""
    from rome_bench.config import ModelConfig
    from rome_bench.data import load_dataset
    from rome_bench.models import create_model
    from rome_bench.training.finetune import load_initial_weights

    torch.manual_seed(1)
    zoo = build_zoo_architecture("Standard")
    path = checkpoint_path("Standard", "cifar10", "Linf", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(zoo.state_dict(), path)
    monkeypatch.setenv("ROME_BENCH_ROBUSTBENCH_DIR", str(tmp_path))
    info = load_dataset("synthetic", "test").info
    config = ModelConfig(family="plain", backbone="wrn_28_10", init_from="robustbench:Standard",
                         normalisation="none")
    model = create_model(config, info)
    load_initial_weights(model, config, info)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in zoo.state_dict().items())
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # Standard normalises nothing: the fine-tuned model starts from its exact function
        assert torch.allclose(model.eval()(images), zoo.eval()(images), atol=1e-5)
    dataset_normalised = ModelConfig(family="plain", backbone="wrn_28_10", init_from="robustbench:Standard")
    with pytest.raises(CheckpointError, match=r"add --set model\.normalisation=none"):
        load_initial_weights(create_model(dataset_normalised, info), dataset_normalised, info)


def test_a_pickled_checkpoint_is_one_line_with_no_library_warning_before_it(tmp_path, monkeypatch):
    """torch.load warns about a pickled file before refusing it: the warning is held back, the line stands alone;
    a load that works still shows its library's warnings, after it."""
    import pickle
    import warnings

    path = checkpoint_path("Standard", "cifar10", "Linf", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"a checkpoint")  # the file is there: the message is about loading it, not downloading it
    utils = import_robustbench()

    def refusing(**_: object) -> None:
        warnings.warn("You are using torch.load with weights_only=False", UserWarning, stacklevel=2)
        raise pickle.UnpicklingError("Weights only load failed.\n\x1b[1mdo those steps only if you trust\x1b[0m")

    monkeypatch.setattr(utils, "load_model", refusing)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match="holds pickled objects, which are never unpickled") as refused:
            load_zoo_model("Standard", model_dir=tmp_path)
    assert not shown and "\n" not in str(refused.value) and "\x1b" not in str(refused.value)

    def warning_then_model(**_: object) -> torch.nn.Module:
        warnings.warn("a library's deprecation", FutureWarning, stacklevel=2)
        return torch.nn.Identity()

    monkeypatch.setattr(utils, "load_model", warning_then_model)
    with pytest.warns(FutureWarning, match="a library's deprecation"):
        assert isinstance(load_zoo_model("Standard", model_dir=tmp_path), torch.nn.Identity)
