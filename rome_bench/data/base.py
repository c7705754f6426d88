"""What every dataset shares: its description, the in-memory dataset, the registry, subsets and the cache.

A source (``synthetic.py``, ``cifar10.py``, …) registers a loader in :data:`DATASETS`; :func:`load_dataset` calls it
and takes the seeded subset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import platformdirs
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from rome_bench.errors import ConfigError, DataNotFoundError
from rome_bench.registry import Registry

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset: classes, image size and normalisation statistics."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]


class ImageTensorDataset(Dataset):
    """In-memory images as uint8 N×3×H×W + int64 labels; items are (float32 image in [0,1], int label)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N×3×H×W, got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            shape = tuple(labels.shape)
            raise ValueError(f"labels must be int64 of shape ({len(images)},), got {labels.dtype} {shape}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        index = int(index)
        return self.images[index].float().div_(255), int(self.labels[index])

    def batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Images (float32 in [0,1], N×3×H×W) and int64 labels of ``indices``, without per-item overhead."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index].float().div_(255), self.labels[index]

    def select(self, indices: Sequence[int] | None) -> ImageTensorDataset:
        """The examples at ``indices`` (all when None) as a new dataset."""
        if indices is None:
            return self
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageTensorDataset(self.images[index], self.labels[index])


class SizedDataset(Protocol):
    """What rome-bench needs of a dataset: a length and items (a torch ``Dataset`` promises no ``__len__``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset split ready to use, with what identifies it."""

    dataset: SizedDataset  # items (float image in [0,1], int label); no normalisation ever
    info: DatasetInfo
    fingerprint: str  # sha256 hex of source + split + selected indices
    source: str  # where the data came from, for people


DATASETS: Registry[Callable[..., LoadedDataset]] = Registry("datasets")
"""Dataset loaders by name.

A loader is a function ``loader(split: str, data_dir: Path | None) -> LoadedDataset`` that returns the *whole*
split (``split`` is ``"train"`` or ``"test"``; ``data_dir`` is the ``--data-dir`` flag or ``ROME_BENCH_DATA``,
None when neither is set). Its ``fingerprint`` must identify the data of that split (use :func:`digest`);
:func:`load_dataset` then takes the ``size`` subset and derives the final fingerprint. If the dataset has a
method ``select(indices: list[int] | None) -> Dataset``, ``load_dataset`` calls it with the kept indices (None
for the whole split) so that expensive work such as decoding can be limited to them; otherwise it wraps the
dataset in ``torch.utils.data.Subset``. Register with::

    @DATASETS.register("my-data", num_classes=10, image_size=32)
    def load_my_data(split: str, data_dir: Path | None) -> LoadedDataset: ...
"""


def fetch_batch(dataset: SizedDataset, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
    """Images (float in [0,1]) and int64 labels of ``indices``; in-memory datasets use their fast ``batch``."""
    batch = getattr(dataset, "batch", None)
    if callable(batch):
        return batch(indices)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items], dtype=torch.long)


def digest(*parts: Any) -> str:
    """Sha256 hex of the JSON form of ``parts`` (non-JSON values are converted with ``str``)."""
    text = json.dumps(parts, default=str, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_dir() -> Path:
    """The cache root, ``$ROME_BENCH_CACHE`` or the user cache directory; created on demand."""
    root = Path(os.environ.get("ROME_BENCH_CACHE") or platformdirs.user_cache_dir("rome-bench")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def evaluation_indices(num_examples_in_split: int, n_examples: int | None, seed: int = 0) -> list[int]:
    """The fixed evaluation subset: the first ``n_examples`` (None: all) of a ``seed``-seeded permutation."""
    return _permutation_prefix(num_examples_in_split, n_examples, seed, "n_examples")


def load_dataset(
    name: str, split: str, data_dir: str | Path | None = None, size: int | None = None, seed: int = 0
) -> LoadedDataset:
    """Load ``split`` of dataset ``name``, keeping a seeded random subset of ``size`` examples if given."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    loader = DATASETS.get(name)
    full = loader(split, _data_dir(data_dir))
    indices = None if size is None else _permutation_prefix(len(full.dataset), size, seed, "size")
    select = getattr(full.dataset, "select", None)
    if callable(select):
        dataset = select(indices)
    else:
        dataset = full.dataset if indices is None else Subset(full.dataset, indices)  # type: ignore[arg-type]
    fingerprint = digest("dataset", name, split, full.fingerprint, indices)
    return LoadedDataset(dataset, full.info, fingerprint, full.source)


def _permutation_prefix(total: int, n: int | None, seed: int, what: str) -> list[int]:
    """First ``n`` entries (all when None) of ``torch.randperm(total)`` seeded with ``seed``."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= total):
        raise ConfigError(f"{what}={n} is invalid: the split has {total} examples; use 1..{total} or leave it unset")
    permutation = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return permutation[:n].tolist()


def _data_dir(data_dir: str | Path | None) -> Path | None:
    """The explicit data directory, else ``$ROME_BENCH_DATA``, else None."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("ROME_BENCH_DATA") or None
    return None if chosen is None else Path(chosen).expanduser()


def one_line(text: object) -> str:
    """``text`` with its whitespace runs collapsed to single spaces."""
    return " ".join(str(text).split())


def cached_or_downloaded(root: Path, download: Callable[[Path], None], name: str, help_text: str) -> Path:
    """``root`` in the cache, downloaded into its parent first when it is missing (one-line error if that fails)."""
    if not root.is_dir():
        try:
            download(root.parent)
        except Exception as error:
            raise DataNotFoundError(
                f"{name} not found and could not be downloaded ({one_line(error)}): {help_text}") from error
    return root
