"""Robust fine-tuning (``--init RUN_DIR|WEIGHTS_FILE``): strict loading, and the source's logits at step 0.

The source is a 2-step plain ``max`` run on ``vit_micro``; "step 0" is the model the trainer hands to the first
training step (captured there, before any update).
"""

import copy
import functools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rome_bench.checkpoint import load_final_weights, read_run_config
from rome_bench.data import load_dataset
from rome_bench.errors import CheckpointError
from rome_bench.models import create_model
from rome_bench.models.rome import LoRAExpertMixture
from rome_bench.presets import preset
from rome_bench.training import trainer as trainer_module
from rome_bench.training.finetune import backbone_keys
from rome_bench.training.overrides import resolve_config
from rome_bench.training.trainer import Trainer

TINY = ["model.backbone=vit_micro", "data.train_size=32", "train.batch_size=16", "train.epochs=1",
        "train.checkpoint_every=1", "threats.train_steps.l1=1", "threats.train_steps.l2=1",
        "threats.train_steps.linf=1"]


def tiny_config(method: str = "max", *extra: str):
    return resolve_config(preset("smoke"), [*TINY, f"train.method={method}", *extra])


synthetic_test = functools.cache(lambda: load_dataset("synthetic", "test"))


@pytest.fixture(scope="module", autouse=True)
def synthetic_data_generated_once():
    """Every run here reads the same synthetic subset; generating it takes seconds, so it is generated once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "load_dataset", functools.cache(trainer_module.load_dataset))
        yield


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A finished plain ``max`` run (2 steps)."""
    run_dir = tmp_path_factory.mktemp("finetune") / "source"
    Trainer(tiny_config(), run_dir, progress=False).fit()
    return run_dir


@pytest.fixture(scope="module")
def images():
    return synthetic_test().dataset.batch(list(range(8)))[0]


def source_logits(run_dir, images) -> torch.Tensor:
    config = read_run_config(run_dir)
    model = create_model(config.model, synthetic_test().info)
    model.load_state_dict(load_final_weights(run_dir)[0])
    with torch.no_grad():
        return model.eval()(images)


class Captured(Exception):
    pass


def model_at_step_zero(monkeypatch, config, run_dir) -> torch.nn.Module:
    """The model the trainer passes to its first training step (a copy, in eval mode); nothing is trained."""
    captured = {}

    def first_step(recipe, ctx, optimizer, batch):
        assert batch.step == 0
        captured["model"] = copy.deepcopy(ctx.model).eval()
        raise Captured

    monkeypatch.setattr(trainer_module, "train_step", first_step)
    with pytest.raises(Captured):
        Trainer(config, run_dir, progress=False).fit()
    return captured["model"]


def logits_of(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def test_plain_to_plain_starts_with_the_source_logits_and_then_trains(source_run, images, tmp_path, monkeypatch):
    config = tiny_config("max", f"model.init_from={source_run}")
    start = model_at_step_zero(monkeypatch, config, tmp_path / "captured")
    assert torch.equal(logits_of(start, images), source_logits(source_run, images))
    monkeypatch.undo()
    final = Trainer(config, tmp_path / "finetuned", progress=False).fit()
    sidecar = json.loads(final.read_text())
    assert sidecar["config"]["model"]["init_from"] == str(source_run)
    tuned, source = load_file(final.with_suffix(".safetensors")), load_final_weights(source_run)[0]
    assert tuned.keys() == source.keys()
    assert any(not torch.equal(tuned[key], source[key]) for key in source)  # it trained from there


def test_plain_to_rome_starts_with_the_source_logits_with_zero_B(source_run, images, tmp_path, monkeypatch):
    config = tiny_config("rome+max", f"model.init_from={source_run}")
    start = model_at_step_zero(monkeypatch, config, tmp_path / "captured")
    experts = [module for module in start.modules() if isinstance(module, LoRAExpertMixture)]
    assert experts and all(torch.count_nonzero(module.lora_B) == 0 for module in experts)
    assert all(torch.count_nonzero(module.lora_A) > 0 for module in experts)  # A drawn as the family draws it
    assert torch.equal(logits_of(start, images), source_logits(source_run, images))


def test_plain_to_ffn_experts_start_as_copies_of_the_source_mlp(source_run, images, tmp_path, monkeypatch):
    config = tiny_config("rome+max", f"model.init_from={source_run}", "model.options.expert_type=ffn",
                         "model.options.targets=mlp")
    start = model_at_step_zero(monkeypatch, config, tmp_path / "captured")
    # Σ_k g_k FFN(h) with Σ_k g_k = 1 in float: equal up to rounding, not bit for bit
    assert torch.allclose(logits_of(start, images), source_logits(source_run, images), atol=1e-5)


@pytest.mark.parametrize("form", ["run-safetensors", "backbone-safetensors", "pt", "backbone-with-normalisation"])
def test_init_from_weights_files(source_run, images, tmp_path, monkeypatch, form):
    weights = load_final_weights(source_run)[0]
    backbone = {key.removeprefix("backbone."): value for key, value in weights.items()}
    info = synthetic_test().info
    path = tmp_path / ("weights.pt" if form == "pt" else "weights.safetensors")
    if form == "run-safetensors":
        path = source_run / "model.safetensors"
    elif form == "backbone-safetensors":
        save_file(backbone, str(path))
    elif form == "pt":
        torch.save(weights, path)
    else:  # a RobustBench-style backbone that normalises itself with this dataset's statistics
        save_file({**backbone, "mean": torch.tensor(info.mean).view(3, 1, 1),
                   "std": torch.tensor(info.std).view(3, 1, 1)}, str(path))
    start = model_at_step_zero(monkeypatch, tiny_config("rome+max", f"model.init_from={path}"), tmp_path / "run")
    assert torch.equal(logits_of(start, images), source_logits(source_run, images))


def test_a_backbone_normalising_with_other_statistics_is_refused(source_run, tmp_path):
    weights = {key.removeprefix("backbone."): value for key, value in load_final_weights(source_run)[0].items()}
    path = tmp_path / "other-normalisation.safetensors"
    save_file({**weights, "mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)}, str(path))
    with pytest.raises(CheckpointError, match="normalise with mean"):
        Trainer(tiny_config("max", f"model.init_from={path}"), tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()


def test_source_of_another_architecture_fails_in_one_line_and_writes_nothing(source_run, tmp_path, cli_main):
    out = tmp_path / "resnet"
    result = cli_main("train", "--preset", "smoke", "--method", "max", "--backbone", "resnet_micro",
                      "--init", str(source_run), "--out", str(out), "--no-progress",
                      *[arg for setting in TINY[1:] for arg in ("--set", setting)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "missing (e.g. backbone.conv1.weight)" in lines[0] and "unexpected (e.g. backbone." in lines[0]
    assert not out.exists()


def test_a_missing_init_path_fails_in_one_line_and_writes_nothing(tmp_path, cli_main):
    out = tmp_path / "run"
    result = cli_main("train", "--preset", "smoke", "--method", "max", "--init", str(tmp_path / "nowhere"),
                      "--out", str(out), "--no-progress", *[arg for s in TINY for arg in ("--set", s)])
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in result.stderr
    assert not out.exists()


def test_a_run_directory_without_a_final_model_is_refused(source_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((source_run / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no final model"):
        Trainer(tiny_config("max", f"model.init_from={unfinished}"), tmp_path / "run", progress=False).fit()


def test_a_resumed_fine_tuning_run_ends_bit_identical(source_run, tmp_path):
    config = tiny_config("rome+max", f"model.init_from={source_run}")
    unbroken = load_file(Trainer(config, tmp_path / "unbroken", progress=False).fit().with_suffix(".safetensors"))

    def die_after_first_step(step: int) -> None:
        if step == 1:
            raise Captured

    with pytest.raises(Captured):
        Trainer(config, tmp_path / "broken", progress=False).fit(on_step=die_after_first_step)
    resumed = Trainer(config, tmp_path / "broken", progress=False).fit(resume=True)
    weights = load_file(resumed.with_suffix(".safetensors"))
    assert weights.keys() == unbroken.keys()
    assert all(torch.equal(weights[key], unbroken[key]) for key in unbroken)


def test_listing_the_backbone_keys_draws_no_random_numbers():
    config = tiny_config("rome+max")
    state = torch.get_rng_state()
    keys = backbone_keys(config.model, synthetic_test().info)
    assert torch.equal(state, torch.get_rng_state())
    assert "backbone.blocks.0.attn.qkv.weight" in keys and not any("lora" in key for key in keys)


def test_finetune_preset_holds_the_papers_schedule():
    config = preset("finetune-cifar10")
    assert config.train.epochs == 3 and config.train.attack == "apgd"
    assert config.threats.apgd_steps == {"l1": 10, "l2": 10, "linf": 10}
    assert config.train.lr == 1e-3 and config.data.dataset == "cifar10"
    phases = (config.train.warmup_epochs, config.train.decay_epochs, config.train.final_epochs)
    assert phases == pytest.approx((0.6, 1.8, 0.6))  # Sec. A1's 4 / 12 / 4 of 20 epochs, scaled to 3


def test_normalisation_none_feeds_the_backbone_unchanged_images_and_changes_the_model_hash(images):
    from rome_bench.config import validate
    from rome_bench.errors import ConfigError
    from rome_bench.models import model_identity

    normalised = tiny_config("max")
    raw = tiny_config("max", "model.normalisation=none")
    torch.manual_seed(0)
    model = create_model(raw.model, synthetic_test().info).eval()
    with torch.no_grad():
        assert torch.equal(model(images), model.backbone(images))
        assert not torch.equal(model(images), model.backbone((images - 0.5) / 0.25))
    assert model_identity(raw.model) != model_identity(normalised.model)
    assert "normalisation" not in model_identity(normalised.model)  # old runs keep their hashes
    with pytest.raises(ConfigError, match=r"model\.normalisation must be one of dataset, none"):
        validate(tiny_config("max", "model.normalisation=imagenet"))


def test_imagenet_finetune_preset_holds_table3s_protocol():
    """Sec. 5.1: 1 epoch on ImageNet-1K, APGD 5 steps (ℓ∞, ℓ2) and 15 (ℓ1), XCiT-S at ImageNet's ε; sources named."""
    from rome_bench.api import list_entries
    from rome_bench.config import validate

    config = preset("finetune-imagenet1k")
    validate(config)
    assert config.train.epochs == 1 and config.train.attack == "apgd"
    assert config.threats.apgd_steps == {"l1": 15, "l2": 5, "linf": 5}
    assert config.threats.eps == pytest.approx({"l1": 255.0, "l2": 2.0, "linf": 4 / 255})
    assert (config.data.dataset, config.model.backbone, config.model.patch_size) == ("imagenet1k", "xcit_s", 16)
    assert preset("finetune-cifar10").threats.apgd_steps == {"l1": 10, "l2": 10, "linf": 10}
    listed = "\n".join(list_entries("presets"))
    for source in ("robustbench:Linf/Gowal2020Uncovering_28_10_extra",
                   "robustbench:Linf/Bartoldson2024Adversarial_WRN-94-16",
                   "robustbench:Linf/Debenedetti2022Light_XCiT-S12"):
        assert source in listed
