"""External models: build from a file or module, load .pt/.safetensors weights, hash, and fail with one clear line."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rome_bench.errors import CheckpointError, ConfigError
from rome_bench.models.external import (
    ExternalModelSpec,
    build_external_model,
    load_external_model,
    load_external_weights,
    parse_model_spec,
)

TINY_CNN = """
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def make_five() -> TinyCNN:
    return TinyCNN(num_classes=5)


def needs_argument(width):
    return TinyCNN(width)


def broken():
    raise RuntimeError("no GPU here\\nsecond line")


not_a_model = 42


def returns_tensor():
    return torch.zeros(1)


instance = TinyCNN()
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A .py file defining TinyCNN and a few bad builders."""
    path = tmp_path / "tiny.py"
    path.write_text(TINY_CNN)
    return path


@pytest.fixture
def trained(model_file: Path) -> nn.Module:
    """A TinyCNN from the file with non-default weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(1)
    model = build_external_model(f"{model_file}:TinyCNN")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.1)
    return model.eval()


def _images(count: int = 3) -> torch.Tensor:
    return torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _single_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_parse_model_spec() -> None:
    assert parse_model_spec("models/net.py:Net") == ("models/net.py", "Net")
    assert parse_model_spec("torchvision.models:resnet18") == ("torchvision.models", "resnet18")
    assert parse_model_spec(r"C:\models\net.py:Net") == (r"C:\models\net.py", "Net")
    for bad in ("models/net.py", "net.py:", ":Net", "", "  :  "):
        with pytest.raises(ConfigError, match=r"not of the form 'path/to/file\.py:Name'") as error:
            parse_model_spec(bad)
        _single_line(error)


def test_spec_is_frozen() -> None:
    spec = ExternalModelSpec("net.py:Net", Path("w.pt"))
    with pytest.raises(AttributeError):
        spec.source = "other.py:Net"  # type: ignore[misc]
    assert ExternalModelSpec("net.py:Net").weights is None


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_round_trip(model_file: Path, trained: nn.Module, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(trained.state_dict(), path)
    else:
        save_file(trained.state_dict(), str(path))
    model, _ = load_external_model(f"{model_file}:TinyCNN", path)
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(images), trained(images), rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["module_prefix", "state_dict_key", "model_key"])
def test_wrapped_weights_load(model_file: Path, trained: nn.Module, tmp_path: Path, wrap: str) -> None:
    state = trained.state_dict()
    saved: object = {
        "module_prefix": {f"module.{key}": value for key, value in state.items()},
        "state_dict_key": {"state_dict": state, "epoch": 3, "best_acc": 0.9},
        "model_key": {"model": {f"module.{key}": value for key, value in state.items()}},
    }[wrap]
    path = tmp_path / "wrapped.pth"
    torch.save(saved, path)
    model = build_external_model(f"{model_file}:TinyCNN").eval()
    load_external_weights(model, path)
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(images), trained(images), rtol=0, atol=0)


def test_dotted_module_and_zero_argument_callable(model_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    package = tmp_path / "extpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(TINY_CNN)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_external_model("extpkg.nets:make_five")
    assert type(model).__name__ == "TinyCNN"
    assert model(_images(2)).shape == (2, 5)


def test_sibling_import_and_same_named_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, classes in ((first, 3), (second, 7)):
        folder.mkdir()
        (folder / "rome_ext_layers_sibling.py").write_text(f"CLASSES = {classes}\n")
        (folder / "net.py").write_text(textwrap.dedent("""
            from torch import nn
            import rome_ext_layers_sibling

            def Net():
                return nn.Linear(2, rome_ext_layers_sibling.CLASSES)
        """))
    model_a = build_external_model(f"{first / 'net.py'}:Net")
    assert model_a.out_features == 3
    assert str(first) not in sys.path
    sys.modules.pop("rome_ext_layers_sibling", None)  # the sibling is cached under its bare name
    model_b = build_external_model(f"{second / 'net.py'}:Net")
    assert model_b.out_features == 7
    assert str(second) not in sys.path
    sys.modules.pop("rome_ext_layers_sibling", None)


@pytest.mark.parametrize(("source", "message"), [
    ("{dir}/missing.py:TinyCNN", "not found"),
    ("{file}", "not of the form"),
    ("{file}:Missing", "no attribute 'Missing'.*defines TinyCNN, broken, make_five"),
    ("{file}:not_a_model", "not a class or a zero-argument callable"),
    ("{file}:returns_tensor", "returned a Tensor, not a torch.nn.Module"),
    ("{file}:needs_argument", "building .* failed .*TypeError"),
    ("{file}:broken", "RuntimeError: no GPU here"),
    ("{file}:instance", "nn.Module instance"),
    ("no_such_rome_bench_module.sub:Net", "module 'no_such_rome_bench_module.sub' not found"),
])
def test_bad_sources_raise_config_error(model_file: Path, source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        build_external_model(source.format(dir=model_file.parent, file=model_file))
    _single_line(error)


def test_file_with_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("def broken(:\n")
    with pytest.raises(ConfigError, match=r"importing model file .* failed: SyntaxError") as error:
        build_external_model(f"{path}:Net")
    _single_line(error)


def test_bad_weights_raise_checkpoint_error(model_file: Path, trained: nn.Module, tmp_path: Path) -> None:
    model = build_external_model(f"{model_file}:TinyCNN")
    wrong = tmp_path / "wrong.pt"
    torch.save(build_external_model(f"{model_file}:make_five").state_dict(), wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": nn.Linear(4, 10)}, pickled)  # a whole pickled module: refused by weights_only
    partial = tmp_path / "partial.safetensors"
    save_file({"conv.weight": trained.state_dict()["conv.weight"]}, str(partial))
    cases = [
        (tmp_path / "missing.pt", "not found"),
        (wrong, "do not fit TinyCNN: 2 wrong-shaped \\(e.g. head.weight \\(file \\(5, 4\\), model \\(10, 4\\)\\)"),
        (garbage, "cannot read weights"),
        (pickled, "cannot read weights"),
        (partial, "missing"),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message) as error:
            load_external_weights(model, path)
        _single_line(error)


def test_hash_follows_weights_and_normalisation(model_file: Path, trained: nn.Module, tmp_path: Path) -> None:
    source = f"{model_file}:TinyCNN"
    first, second = tmp_path / "first.pt", tmp_path / "second.safetensors"
    torch.save(trained.state_dict(), first)
    save_file(trained.state_dict(), str(second))
    _, hash_a = load_external_model(source, first)
    _, hash_b = load_external_model(source, second)
    assert hash_a == hash_b and len(hash_a) == 64
    torch.manual_seed(2)
    _, hash_random = load_external_model(source, None)
    assert hash_random != hash_a
    model, hash_normalised = load_external_model(source, first, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert hash_normalised != hash_a
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(images), trained((images - 0.5) / 0.25))


def test_bad_normalisation(model_file: Path) -> None:
    source = f"{model_file}:TinyCNN"
    for mean, std in (((0.5,) * 3, None), ((0.5,) * 3, (0.2,) * 2), ((0.5,) * 3, (0.0,) * 3)):
        with pytest.raises(ConfigError):
            load_external_model(source, None, mean=mean, std=std)


def test_identity_wrapper_keeps_grayscale_input(tmp_path: Path) -> None:
    path = tmp_path / "gray.py"
    path.write_text("from torch import nn\n\ndef Net():\n    return nn.Conv2d(1, 2, 1)\n")
    model, _ = load_external_model(f"{path}:Net", None)
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 2, 4, 4)


@pytest.mark.skipif(importlib.util.find_spec("pyautoattack") is None, reason="pyautoattack is not installed")
def test_pyautoattack_resnet18() -> None:
    spec = importlib.util.find_spec("pyautoattack")
    assert spec is not None and spec.origin is not None
    examples = Path(spec.origin).parent / "examples"
    weights = examples / "model_test.pt"
    if not (examples / "resnet.py").is_file() or not weights.is_file():
        pytest.skip("pyautoattack's examples (resnet.py, model_test.pt) are not shipped in this install")
    model, model_hash = load_external_model(f"{examples / 'resnet.py'}:ResNet18", weights)
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    assert len(model_hash) == 64
