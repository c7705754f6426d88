"""Pretrained starts (models/pretrained.py): timm's loading and resampling, no silent skip, paper presets' default,
and runs that stay evaluable once their --pretrained file is gone."""

import dataclasses
import re
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from rome_bench.errors import CheckpointError
from rome_bench.models import create_model, model_identity
from rome_bench.models.describe import dataset_geometry
from rome_bench.models.pretrained import IMAGENET1K_TAGS, load_pretrained
from rome_bench.models.registry import MODELS
from rome_bench.presets import preset
from rome_bench.training.overrides import train_config

TINY = ["--preset", "smoke", "--set", "model.backbone=vit_micro", "--train-size", "32", "--epochs", "1",
        "--batch-size", "16", "--set", "threats.train_steps.l1=1", "--set", "threats.train_steps.l2=1", "--set",
        "threats.train_steps.linf=1", "--no-progress"]


def timm_checkpoint(path: Path, name: str = "vit_tiny_patch16_224", **kwargs) -> dict[str, torch.Tensor]:
    """A seeded, randomly initialised timm model's weights (1000 classes, patch 16, 224 px) saved to ``path``."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False, **kwargs).state_dict().items()}
    save_file(state, str(path))
    return state


def test_patch16_224_checkpoint_resampled_into_patch4_32_as_timm_does(tmp_path):
    source = timm_checkpoint(tmp_path / "vit_tiny.safetensors")
    torch.manual_seed(1)
    backbone = MODELS.get("vit_tiny")(num_classes=10, image_size=32, patch_size=4)
    fresh = {k: v.clone() for k, v in backbone.state_dict().items()}
    report = load_pretrained(backbone, str(tmp_path / "vit_tiny.safetensors"), "vit_tiny", 10)
    # timm's own resampling, called directly: pos_embed to the 8x8 grid, the patch embedding FlexiViT-style to 4x4
    expected_pos = resample_abs_pos_embed(source["pos_embed"], new_size=(8, 8), num_prefix_tokens=1)
    expected_patch = resample_patch_embed(source["patch_embed.proj.weight"], (4, 4))
    assert torch.equal(backbone.pos_embed.detach(), expected_pos)
    assert torch.equal(backbone.patch_embed.proj.weight.detach(), expected_patch)
    assert not torch.equal(backbone.pos_embed.detach(), fresh["pos_embed"])  # not left at the random init
    assert torch.equal(backbone.blocks[3].attn.qkv.weight.detach(), source["blocks.3.attn.qkv.weight"])
    assert sorted(report.resampled) == ["patch_embed.proj.weight", "pos_embed"]
    assert sorted(report.reinitialised) == ["head.bias", "head.weight"]  # only the head, 1000 -> 10 classes
    assert torch.equal(backbone.head.weight.detach(), fresh["head.weight"])
    assert "re-initialised" in report.line() and "\n" not in report.line()


def test_a_tensor_that_cannot_be_mapped_is_an_error_naming_it(tmp_path):
    timm_checkpoint(tmp_path / "small.safetensors", "vit_small_patch16_224")  # d 384 into a d 192 model
    backbone = MODELS.get("vit_tiny")(num_classes=10, image_size=32, patch_size=4)
    with pytest.raises(CheckpointError, match=r"pretrained tensor '\S+' .* cannot be mapped"):
        load_pretrained(backbone, str(tmp_path / "small.safetensors"), "vit_tiny", 10)


def test_a_tensor_missing_from_the_checkpoint_is_an_error(tmp_path):
    state = timm_checkpoint(tmp_path / "full.safetensors")
    save_file({k: v for k, v in state.items() if k != "blocks.0.norm1.weight"}, str(tmp_path / "cut.safetensors"))
    backbone = MODELS.get("vit_tiny")(num_classes=10, image_size=32, patch_size=4)
    with pytest.raises(CheckpointError, match=re.escape("no tensor 'blocks.0.norm1.weight'")):
        load_pretrained(backbone, str(tmp_path / "cut.safetensors"), "vit_tiny", 10)


def test_paper_presets_start_from_the_imagenet1k_backbone_and_none_opts_out():
    import rome_bench.models  # noqa: F401  (the families' presets)

    tag = IMAGENET1K_TAGS["vit_base"]
    assert tag == "vit_base_patch16_224.augreg_in1k"
    assert train_config(None, ["train.method=rome+max"]).model.pretrained == tag  # preset cifar10
    assert train_config("imagenet1k", []).model.pretrained == tag
    assert train_config(None, ["model.backbone=deit_base"]).model.pretrained == IMAGENET1K_TAGS["deit_base"]
    assert train_config(None, ["model.pretrained=none"]).model.pretrained is None
    assert train_config(None, ["model.backbone=vit_micro"]).model.pretrained is None  # no ImageNet-1K checkpoint
    for name in ("smoke", "cifar10-cpu"):
        assert preset(name).model.pretrained is None


def test_preset_cifar10_loads_the_tag_resampled_to_patch4(monkeypatch):
    """``train --method rome+max`` (preset cifar10): ViT-B from timm's hub weights (a seeded stand-in here: no
    download in tests), resampled to patch 4 on 32x32."""
    torch.manual_seed(0)
    hub = timm.create_model("vit_base_patch16_224", pretrained=False).state_dict()
    asked = []
    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf",
                        lambda hub_id, **kwargs: asked.append(hub_id) or dict(hub))
    config = train_config(None, ["train.method=rome+max"])
    plain = dataclasses.replace(config.model, family="plain", options={})  # the same backbone, built faster
    model = create_model(plain, dataset_geometry("cifar10"))
    assert asked == ["timm/vit_base_patch16_224.augreg_in1k"]
    pos_embed = dict(model.named_parameters())["backbone.pos_embed"]
    assert torch.equal(pos_embed.detach(), resample_abs_pos_embed(hub["pos_embed"], new_size=(8, 8)))


def test_a_tag_not_in_the_cache_offline_fails_in_one_line(monkeypatch, cli_main, tmp_path):
    def offline(hub_id, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr("timm.models._builder.load_state_dict_from_hf", offline)
    result = cli_main("train", "--method", "max", *TINY, "--set", "model.backbone=vit_small", "--pretrained",
                      "vit_small_patch16_224.augreg_in1k", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "vit_small_patch16_224.augreg_in1k" in lines[0] and "--pretrained none" in lines[0]


def test_a_run_trained_from_a_file_is_evaluable_once_the_file_is_gone(cli_main, tmp_path):
    from rome_bench.evaluation.runner import load_run

    weights = tmp_path / "start.safetensors"
    torch.manual_seed(0)
    start = MODELS.get("vit_micro")(num_classes=10, image_size=224, patch_size=16)  # patch-16/224 micro ViT
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(weights))
    run = tmp_path / "run"
    trained = cli_main("train", "--method", "max", *TINY, "--pretrained", str(weights), "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    assert "pretrained start" in trained.stderr and "resampled" in trained.stderr
    before = load_run(run, dataset_geometry("synthetic"), torch.device("cpu")).model_hash
    weights.unlink()
    after = load_run(run, dataset_geometry("synthetic"), torch.device("cpu"))
    assert after.model_hash == before
    moved = dataclasses.replace(after.config.model, pretrained="/elsewhere/start.safetensors")
    assert model_identity(moved) == model_identity(after.config.model)  # the weights are hashed, not the path
    result = cli_main("eval", "--run", str(run), "--suite", "seen", "--n-examples", "4", "--store",
                      str(tmp_path / "store.sqlite"), "--no-progress")
    assert result.returncode == 0, result.stderr
