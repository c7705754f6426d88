"""External models: evaluate any ``nn.Module`` that takes [0,1] images, named as ``file.py:Name`` or ``module:Name``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pickle
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from rome_bench.errors import CheckpointError, ConfigError
from rome_bench.models.classifier import ImageClassifier, content_hash

SPEC_FORM = "'path/to/file.py:Name' or 'package.module:Name'"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PARALLEL_PREFIX = "module."


@dataclass(frozen=True)
class ExternalModelSpec:
    """An external model: where its builder lives (``file.py:Name`` or ``module:Name``) and optional weights."""

    source: str
    weights: Path | None = None


def parse_model_spec(text: str) -> tuple[str, str]:
    """Split ``file.py:Name`` or ``package.module:Name`` into (file-or-module, attribute name)."""
    location, colon, name = text.strip().rpartition(":")
    location, name = location.strip(), name.strip()
    if not colon or not location or not name:
        raise ConfigError(f"model source '{text}' is not of the form {SPEC_FORM}")
    return location, name


def build_external_model(source: str) -> nn.Module:
    """Import ``source``'s file or module, call the named class or zero-argument callable, return the module."""
    location, name = parse_model_spec(source)
    module = _import_file(Path(location)) if _is_file(location) else _import_module(location)
    builder = _get_attribute(module, name, source)
    if isinstance(builder, nn.Module):
        raise ConfigError(f"'{source}' is an nn.Module instance; point at its class or a function that builds it")
    if not callable(builder):
        raise ConfigError(f"'{source}' is a {type(builder).__name__}, not a class or a zero-argument callable")
    try:
        model = builder()
    except Exception as error:
        raise ConfigError(f"building '{source}' failed ({_one_line(error)}); Name must be a class or "
                          "callable that needs no arguments: wrap it in a function if it needs some") from error
    if not isinstance(model, nn.Module):
        raise ConfigError(f"'{source}' returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_external_weights(model: nn.Module, path: Path) -> None:
    """Strictly load a .safetensors or torch-saved state dict (plain, wrapped, or DataParallel-prefixed) into model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights '{path}' not found; give a local .safetensors, .pt or .pth file")
    state = _strip_parallel_prefix(_unwrap_state_dict(read_weights_file(path), path), model)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"weights '{path}' do not fit {type(model).__name__}: {problem}; "
                              "check that the weights belong to this model source")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as error:
        raise CheckpointError(f"cannot load weights '{path}' into {type(model).__name__}: "
                              f"{_one_line(error)}") from error


def load_external_model(source: str, weights: Path | None, mean: tuple[float, ...] | None = None,
                        std: tuple[float, ...] | None = None) -> tuple[ImageClassifier, str]:
    """Build, load weights, wrap with normalisation (identity by default); return the frozen eval model and hash."""
    mean, std = _normalisation(mean, std)
    backbone = build_external_model(source)
    if weights is not None:
        load_external_weights(backbone, Path(weights))
    model = ImageClassifier(backbone, mean, std).eval().requires_grad_(False)
    return model, external_model_hash(model, source, mean, std)


def external_model_hash(model: nn.Module, source: str, mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """sha256 over the weights' content hash, the source string and the normalisation."""
    digest = hashlib.sha256()
    for part in (content_hash(model), source, repr(tuple(map(float, mean))), repr(tuple(map(float, std)))):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _normalisation(mean: tuple[float, ...] | None,
                   std: tuple[float, ...] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Check mean/std; both None means identity (a single value broadcasts over any number of channels)."""
    if mean is None and std is None:
        return (0.0,), (1.0,)
    if mean is None or std is None:
        raise ConfigError("give both mean and std for an external model, or neither (it normalises itself)")
    if len(mean) != len(std) or not mean:
        raise ConfigError(f"mean {tuple(mean)} and std {tuple(std)} must have the same, non-zero length")
    if any(value <= 0 for value in std):
        raise ConfigError(f"std {tuple(std)} must be positive")
    return tuple(map(float, mean)), tuple(map(float, std))


def _is_file(location: str) -> bool:
    """A location is a file path when it ends in .py or contains a path separator."""
    return location.endswith(".py") or "/" in location or "\\" in location


def _import_file(path: Path) -> ModuleType:
    """Import a .py file under a name unique to its path, with its directory on sys.path during the import."""
    if not path.is_file():
        raise ConfigError(f"model file '{path}' not found; give an existing .py file as 'path/to/file.py:Name'")
    path = path.resolve()
    if path.suffix != ".py":
        raise ConfigError(f"model file '{path}' must be a .py file")
    stem = re.sub(r"\W", "_", path.stem)
    unique = f"rome_bench_external_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}_{stem}"
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import model file '{path}'; give a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    directory = str(path.parent)
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(unique, None)
        raise ConfigError(f"importing model file '{path}' failed: {_one_line(error)}") from error
    finally:
        sys.path.remove(directory)
    return module


def _import_module(name: str) -> ModuleType:
    """Import a dotted module, telling a missing module apart from a failing one."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and (name == error.name or name.startswith(error.name + ".")):
            raise ConfigError(f"module '{name}' not found; install it, add its folder to PYTHONPATH, "
                              "or give a file as 'path/to/file.py:Name'") from error
        raise ConfigError(f"importing module '{name}' failed: {_one_line(error)}") from error
    except Exception as error:
        raise ConfigError(f"importing module '{name}' failed: {_one_line(error)}") from error


def _get_attribute(module: ModuleType, name: str, source: str) -> object:
    """Look up a (possibly dotted) attribute, naming the module's nn.Module classes when it is missing."""
    value: object = module
    for part in name.split("."):
        if not hasattr(value, part):
            candidates = _builder_names(module)
            hint = f"; it defines {', '.join(candidates)}" if candidates else ""
            raise ConfigError(f"'{source}': no attribute '{name}' in the module{hint}")
        value = getattr(value, part)
    return value


def _builder_names(module: ModuleType, limit: int = 12) -> list[str]:
    """Public nn.Module classes and functions defined in the module itself (not imported), at most ``limit``."""
    names = sorted(key for key, item in vars(module).items()
                   if not key.startswith("_") and getattr(item, "__module__", None) == module.__name__
                   and ((isinstance(item, type) and issubclass(item, nn.Module)) or inspect.isfunction(item)))
    return [*names[:limit], "..."] if len(names) > limit else names


def read_weights_file(path: Path) -> object:
    """Read a .safetensors file, or a torch-saved file without unpickling arbitrary objects.

    torch's own warnings about the file (e.g. its pickle protocol) are silenced: a refused file gets one line.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's own message is paragraphs long, with terminal escapes
        raise CheckpointError(f"cannot read weights '{path}': not a torch file of plain tensors (objects that would "
                              f"need unpickling are never loaded); save a state dict with "
                              f"torch.save(model.state_dict(), path) or safetensors") from error
    except Exception as error:
        raise CheckpointError(f"cannot read weights '{path}' ({_one_line(error)}); save a state dict with "
                              "torch.save(model.state_dict(), path) or safetensors") from error


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict or one under a 'state_dict' / 'model' / 'model_state_dict' key."""
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()):
        raise CheckpointError(f"weights '{path}' hold no state dict (name -> tensor), nor one under the keys "
                              f"{', '.join(_WRAPPER_KEYS)}")
    return dict(loaded)


def _strip_parallel_prefix(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Drop DataParallel's leading 'module.' when every key has it and the model's own keys do not."""
    own = model.state_dict()
    if state and all(key.startswith(_PARALLEL_PREFIX) for key in state) and not all(
            key.startswith(_PARALLEL_PREFIX) for key in own):
        return {key[len(_PARALLEL_PREFIX):]: value for key, value in state.items()}
    return state


def state_dict_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """Describe missing, unexpected and wrong-shaped tensors in one line; empty when the state dict fits."""
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [f"{key} (file {tuple(state[key].shape)}, model {tuple(own[key].shape)})"
              for key in own if key in state and state[key].shape != own[key].shape]
    parts = [f"{len(items)} {label} (e.g. {items[0]})"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shaped", shapes))
             if items]
    return ", ".join(parts)


def _one_line(error: BaseException) -> str:
    """The error's type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
