import json

import pytest
import torch
from safetensors.torch import load_file

from rome_bench.config import apply_override
from rome_bench.errors import CheckpointError
from rome_bench.presets import preset
from rome_bench.training.optim import learning_rate
from rome_bench.training.overrides import resolve_config
from rome_bench.training.trainer import Trainer, augment_batch


def tiny_config(method: str = "rome+max"):
    return resolve_config(preset("smoke"), [
        "model.backbone=vit_micro", "data.train_size=96", "train.batch_size=16", "train.epochs=2",
        "train.checkpoint_every=4", f"train.method={method}", "threats.train_steps.l1=2",
        "threats.train_steps.l2=2", "threats.train_steps.linf=1"])


class Killed(Exception):
    pass


def kill_at(step_to_die: int):
    def on_step(step: int) -> None:
        if step == step_to_die:
            raise Killed

    return on_step


@pytest.mark.parametrize("method", ["rome+max", "rome+random"])
def test_resumed_run_ends_with_the_same_weights_as_an_unbroken_run(tmp_path, method):
    unbroken = Trainer(tiny_config(method), tmp_path / "unbroken", progress=False).fit()
    broken_dir = tmp_path / "broken"
    with pytest.raises(Killed):  # dies mid-epoch 2, one step after the checkpoint at step 8
        Trainer(tiny_config(method), broken_dir, progress=False).fit(on_step=kill_at(9))
    assert not (broken_dir / "model.json").exists()
    resumed = Trainer(tiny_config(method), broken_dir, progress=False).fit(resume=True)
    expected = load_file(unbroken.with_suffix(".safetensors"))
    actual = load_file(resumed.with_suffix(".safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    sidecar = json.loads(resumed.read_text())
    assert sidecar["method"] == method and sidecar["config"]["train"]["recipe"] == method.removeprefix("rome+")
    assert len(sidecar["data_fingerprint"]) == 64


def test_training_changes_weights_and_the_experts(tmp_path):
    final = Trainer(tiny_config(), tmp_path / "run", progress=False).fit()
    weights = load_file(final.with_suffix(".safetensors"))
    lora_B = [v for k, v in weights.items() if k.endswith("lora_B")]
    assert lora_B and all(v.abs().sum() > 0 for v in lora_B)


def test_existing_run_is_never_overwritten_without_resume_or_force(tmp_path):
    config = tiny_config()
    config = apply_override(config, "train.epochs=1")
    Trainer(config, tmp_path / "run", progress=False).fit()
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(config, tmp_path / "run", progress=False).fit()
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    with pytest.raises(CheckpointError, match="differ"):
        Trainer(apply_override(config, "train.lr=0.5"), tmp_path / "run", progress=False).fit(resume=True)


def test_corrupt_checkpoint_is_reported_not_loaded(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Killed):
        Trainer(tiny_config(), run, progress=False).fit(on_step=kill_at(5))
    checkpoint = sorted((run / "checkpoints").glob("*.safetensors"))[-1]
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="sha256"):
        Trainer(tiny_config(), run, progress=False).fit(resume=True)


def test_learning_rate_follows_the_papers_schedule():
    train = preset("cifar10").train  # 20 epochs: 4 warm-up, 12 decay to 0.05, 4 decay to 0.001
    assert learning_rate(train, 0.0) == 0.0
    assert learning_rate(train, 2.0) == pytest.approx(0.5e-3)
    assert learning_rate(train, 4.0) == pytest.approx(1e-3)
    assert learning_rate(train, 16.0) == pytest.approx(0.05e-3)
    assert learning_rate(train, 20.0) == pytest.approx(0.001e-3)
    assert learning_rate(train, 18.0) == pytest.approx((0.05 + 0.001) / 2 * 1e-3)


def test_augmentation_is_deterministic_and_keeps_the_range():
    images = torch.rand(8, 3, 32, 32)
    first, second = augment_batch(images, seed=0, step=3), augment_batch(images, seed=0, step=3)
    assert torch.equal(first, second)
    assert not torch.equal(first, augment_batch(images, seed=0, step=4))
    assert first.min() >= 0 and first.max() <= 1 and first.shape == images.shape


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    from rome_bench.checkpoint import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "page.html", "x")
        (tmp_path / "plain.html").write_text("x")
    finally:
        os.umask(previous)
    mode = (tmp_path / "page.html").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.html").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html", "plain.html"]
