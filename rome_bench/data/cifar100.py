"""CIFAR-100 (fine labels, 100 classes), found like CIFAR-10.

torchvision's ``cifar-100-python`` folder (files ``train`` and ``test``) or its parent, an ImageFolder with ``train/``
and ``test/`` holding the 100 class folders (CIFAR-100's fine label names, or 0..99), a ``.tar.gz`` of either, else
``cache_dir()/cifar100/`` downloaded by torchvision.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

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
from rome_bench.data.cifar10 import load_cifar10_batch, locate_cifar
from rome_bench.data.folders import image_folder_split
from rome_bench.errors import DataNotFoundError

CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_INFO = DatasetInfo(
    name="cifar100",
    num_classes=100,
    image_size=32,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    class_names=CIFAR100_CLASSES,
)
_CIFAR100_FILES = ("train", "test")
_CIFAR100_HELP = (
    "pass --data-dir or set ROME_BENCH_DATA to torchvision's cifar-100-python folder, an ImageFolder with train/ "
    "and test/ (100 class folders), or a .tar.gz of either; or allow internet access so torchvision can download it"
)


@DATASETS.register("cifar100", num_classes=100, image_size=32, description="CIFAR-100 (local copy or download)")
def load_cifar100(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """CIFAR-100 (fine labels) from ``data_dir``, else from the cache, else downloaded by torchvision."""
    if data_dir is not None:
        layout, root = locate_cifar(data_dir, _CIFAR100_FILES, "cifar-100-python", "CIFAR-100", _CIFAR100_HELP)
    else:
        layout, root = "batches", cached_or_downloaded(cache_dir() / "cifar100" / "cifar-100-python",
                                                       _download_cifar100, "CIFAR-100", _CIFAR100_HELP)
    if layout == "batches":
        loaded = _cifar100_from_python(root, split)
    else:
        loaded = image_folder_split(root, split, CIFAR100_INFO)
    if data_dir is not None and data_dir.is_file():
        loaded = replace(loaded, source=f"{data_dir}, extracted to {loaded.source}")
    return loaded


def _download_cifar100(root: Path) -> None:
    """Download CIFAR-100 into ``root/cifar-100-python`` with torchvision."""
    import torchvision

    torchvision.datasets.CIFAR100(str(root), train=True, download=True)


def _cifar100_from_python(folder: Path, split: str) -> LoadedDataset:
    """CIFAR-100 split from torchvision's ``cifar-100-python`` pickle (``data`` N×3072 uint8, ``fine_labels``)."""
    path = folder / split
    try:
        entry = load_cifar10_batch(path)  # the same restricted unpickler: arrays, lists, strings only
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(label) for label in entry["fine_labels"]]
        if len(labels) != len(images) or not all(0 <= label < 100 for label in labels):
            raise ValueError(f"{len(images)} images but {len(labels)} fine labels in 0..99")
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as error:
        raise DataNotFoundError(f"{path} is not a CIFAR-100 {split} file ({one_line(error)})") from error
    dataset = ImageTensorDataset(torch.from_numpy(images.copy()), torch.tensor(labels, dtype=torch.long))
    fingerprint = digest("cifar100-python", split, path.stat().st_size, len(dataset))
    return LoadedDataset(dataset, CIFAR100_INFO, fingerprint, f"{folder} (torchvision format)")

