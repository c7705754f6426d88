"""Shared fixtures: an isolated cache, and a tiny undefended ViT trained once per session on synthetic data; the
skip guard (``tests/skip_guard.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# pytester tests the skip guard; the skip guard fails a CI run in which a test skips that its allowlist does not name.
pytest_plugins = ["pytester", "tests.skip_guard"]

# One intra-op thread unless told otherwise, inherited by the CLI tests' subprocesses: the tiny models gain nothing
# from threading on a 2-core machine (CI-like clone runs: 317-393 s at 1 thread, 369 s at 2; runs are noisy).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The seed of the shared undefended model. Another value trains a slightly different model, as another CPU's float
# kernels do: a test that fails under ROME_BENCH_TEST_SEED=1 or 2 asserts something at the edge of one model.
MODEL_SEED = int(os.environ.get("ROME_BENCH_TEST_SEED", "0"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``numerics`` every test that judges a trained model's decisions (it uses the shared undefended model).

    Those are the tests whose outcome can follow the CPU's float kernels; ``.ci/run`` runs them a second time
    under another ATEN_CPU_CAPABILITY (``pytest -m numerics``).
    """
    for item in items:
        if "undefended_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.numerics)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing a test does may write to the user's real cache."""
    cache = tmp_path_factory.getbasetemp() / "rome-bench-cache"
    monkeypatch.setenv("ROME_BENCH_CACHE", str(cache))
    monkeypatch.setenv("ROME_BENCH_STORE", str(cache / "results.sqlite"))  # nor leave a store in the checkout
    return cache


@pytest.fixture(scope="session")
def synthetic_test():
    from rome_bench.data import load_dataset

    return load_dataset("synthetic", "test")


@pytest.fixture(scope="session")
def undefended_model():
    """A 2-block, width-32 ViT trained normally (no adversarial training) on 3,000 synthetic images."""
    from rome_bench.data import load_dataset
    from rome_bench.models import MODELS, ImageClassifier

    data = load_dataset("synthetic", "train", size=3000, seed=0)
    torch.manual_seed(MODEL_SEED)
    backbone = MODELS.get("vit_smoke")(num_classes=10, image_size=32, patch_size=4, embed_dim=32, depth=2,
                                       num_heads=2)
    model = ImageClassifier(backbone, data.info.mean, data.info.std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images, labels = data.dataset.batch(list(range(len(data.dataset))))
    generator = torch.Generator().manual_seed(MODEL_SEED)
    for _ in range(6):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), 100):
            index = order[start:start + 100]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def correct_batch(undefended_model, synthetic_test):
    """64 test images the undefended model classifies correctly."""
    images, labels = synthetic_test.dataset.batch(list(range(400)))
    with torch.no_grad():
        right = undefended_model(images).argmax(1) == labels
    assert right.float().mean() > 0.7, "the tiny undefended model should learn the synthetic task"
    return images[right][:64], labels[right][:64]


class CliResult:
    """Exit code and output of one in-process CLI call."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def write_fake_alexnet(hub: Path) -> dict[str, torch.Tensor]:
    """A stand-in for torchvision's ImageNet AlexNet file in torch.hub dir ``hub``: random weights of its shapes."""
    from rome_bench.threats.lpips_distance import ALEXNET_CHECKPOINT

    generator = torch.Generator().manual_seed(0)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for index, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"features.{index}.weight"] = torch.randn(shape, generator=generator) / fan_in**0.5
        state[f"features.{index}.bias"] = torch.zeros(shape[0])
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(state, hub / "checkpoints" / ALEXNET_CHECKPOINT)
    return state


@pytest.fixture
def fake_alexnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, torch.Tensor]]:
    """TORCH_HOME with a random-weights AlexNet file, so the AlexNet-LPIPS threats run offline (no download ever)."""
    from rome_bench.threats.lpips_distance import _alexnet_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = write_fake_alexnet(tmp_path / "torch" / "hub")
    yield state
    _alexnet_lpips.cache_clear()


@pytest.fixture
def cli_main(monkeypatch, capsys):
    """The CLI's main() in this process (no interpreter start-up per call): returns a CliResult."""
    import sys

    from rome_bench import cli

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["rome-bench", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        captured = capsys.readouterr()
        return CliResult(int(exit_info.value.code or 0), captured.out, captured.err)

    return run
