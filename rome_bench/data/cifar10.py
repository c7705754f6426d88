"""CIFAR-10, and the CIFAR formats CIFAR-100 shares: torchvision's pickled batches, read without running code.

Found in this order: ``data_dir`` (torchvision's ``cifar-10-batches-py`` folder or its parent, an ImageFolder, or a
``.tar.gz`` of either, extracted once into the cache), else ``cache_dir()/cifar10/cifar-10-batches-py``, downloaded
there by torchvision when it is missing (see ``rome_bench.data``).
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rome_bench.data.base import (
    DATASETS,
    DatasetInfo,
    ImageTensorDataset,
    LoadedDataset,
    cache_dir,
    cached_or_downloaded,
    digest,
    one_line,
)
from rome_bench.data.folders import ARCHIVE_SUFFIXES, extract_once, image_folder_split, is_image_folder
from rome_bench.errors import DataNotFoundError

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_BATCHES = ("test_batch",)
CIFAR10_HELP = (
    "pass --data-dir or set ROME_BENCH_DATA to torchvision's cifar-10-batches-py folder, an ImageFolder "
    "with train/ and test/, or a .tar.gz of either; or allow internet access so torchvision can download it"
)
CIFAR10_INFO = DatasetInfo(
    name="cifar10",
    num_classes=10,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2471, 0.2435, 0.2616),
    class_names=CIFAR10_CLASSES,
)


@DATASETS.register("cifar10", num_classes=10, image_size=32, description="CIFAR-10 (local copy or download)")
def load_cifar10(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """CIFAR-10 from ``data_dir``, else from the cache, else downloaded by torchvision (see module docs)."""
    if data_dir is not None:
        layout, root = locate_cifar(data_dir)
    else:
        layout, root = "batches", cached_or_downloaded(cache_dir() / "cifar10" / "cifar-10-batches-py",
                                                       _download_cifar10, "CIFAR-10", CIFAR10_HELP)
    if layout == "batches":
        loaded = _cifar10_from_batches(root, split)
    else:
        loaded = image_folder_split(root, split, CIFAR10_INFO)
    if data_dir is not None and data_dir.is_file():
        loaded = replace(loaded, source=f"{data_dir}, extracted to {loaded.source}")
    return loaded


def _download_cifar10(root: Path) -> None:
    """Download CIFAR-10 into ``root/cifar-10-batches-py`` with torchvision."""
    import torchvision

    torchvision.datasets.CIFAR10(str(root), train=True, download=True)


def locate_cifar(path: Path, batch_files: tuple[str, ...] = _CIFAR10_TRAIN_BATCHES + _CIFAR10_TEST_BATCHES,
                 batch_folder: str = "cifar-10-batches-py", name: str = "CIFAR-10",
                 help_text: str = CIFAR10_HELP) -> tuple[str, Path]:
    """("batches", folder of the pickled batches) or ("folder", ImageFolder root) found at ``path`` (CIFAR-10 by
    default; CIFAR-100 passes its own files, folder name and help)."""
    if not path.exists():
        raise DataNotFoundError(f"{name} data path {path} does not exist: {help_text}")
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataNotFoundError(f"{path} is a file but not a .tar.gz/.tgz/.tar archive: {help_text}")
        path = extract_once(path)
    candidates = [path]
    subfolders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subfolders) == 1:
        candidates.append(subfolders[0])
    for candidate in candidates:
        for folder in (candidate, candidate / batch_folder):
            if all((folder / file).is_file() for file in batch_files):
                return "batches", folder
        if is_image_folder(candidate):
            return "folder", candidate
    raise DataNotFoundError(
        f"{path} holds no {name} data (expected {batch_folder} or its parent, an ImageFolder with "
        f"train/ and test/, or a .tar.gz of either)"
    )


# What torchvision's CIFAR-10 batches hold besides dicts, lists, strings and numbers: numpy arrays, as pickled by
# numpy 1 and 2, and bytes as Python 3 pickles them at protocol 2. Nothing else is ever imported from a batch file.
_CIFAR10_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays: a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR10_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it asks to import {module}.{name}, which a CIFAR-10 batch never holds; "
                                         f"refused, since unpickling it could run code")
        return super().find_class(module, name)


def load_cifar10_batch(path: Path) -> dict[str, Any]:
    """One torchvision-format CIFAR-10 batch file, read without running any code a crafted file may carry."""
    with path.open("rb") as file:
        entry = _RestrictedUnpickler(file, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"it holds a {type(entry).__name__}, not a dict")
    return entry


def _cifar10_from_batches(folder: Path, split: str) -> LoadedDataset:
    """CIFAR-10 split from torchvision's pickled batches in ``folder``."""
    names = _CIFAR10_TRAIN_BATCHES if split == "train" else _CIFAR10_TEST_BATCHES
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"{path} is missing: the cifar-10-batches-py folder is incomplete")
        try:
            entry = load_cifar10_batch(path)
            batch_images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = [int(label) for label in entry["labels"]]
            if len(batch_labels) != len(batch_images) or not all(0 <= label < 10 for label in batch_labels):
                raise ValueError(f"{len(batch_images)} images but {len(batch_labels)} labels in 0..9")
            images.append(batch_images)
            labels.extend(batch_labels)
        except (OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as error:
            raise DataNotFoundError(f"{path} is not a CIFAR-10 batch ({one_line(error)})") from error
    dataset = ImageTensorDataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long))
    sizes = [(name, (folder / name).stat().st_size) for name in names]
    fingerprint = digest("cifar10-python", split, sizes, len(dataset))
    return LoadedDataset(dataset, CIFAR10_INFO, fingerprint, f"{folder} (torchvision format)")


