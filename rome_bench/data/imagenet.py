"""ImageNet-100 and ImageNet-1k: a local ImageFolder, read lazily with the standard crops; never downloaded.

An ImageFolder with ``train/`` and ``val/`` (or ``test/``) at ``data_dir`` / ``ROME_BENCH_DATA``; train images get
RandomResizedCrop(224) + horizontal flip, test images Resize(256) + CenterCrop(224).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rome_bench.data.base import DATASETS, DatasetInfo, LoadedDataset, digest
from rome_bench.data.folders import is_image_folder, split_folder
from rome_bench.errors import ConfigError, DataNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_imagenet_folder(name: str, num_classes: int, split: str, data_dir: Path | None,
                         class_names: dict[str, str] | None = None) -> LoadedDataset:
    """An ImageNet-style ImageFolder split, read lazily with the standard crops (also Imagenette's); ``class_names``
    maps class folder names (WordNet ids) to readable names."""
    from torchvision import datasets, transforms

    if data_dir is None:
        raise DataNotFoundError(
            f"{name} needs a local ImageFolder with train/ and val/: pass --data-dir or set ROME_BENCH_DATA "
            "(ImageNet is never downloaded automatically)"
        )
    if not data_dir.is_dir():
        raise DataNotFoundError(f"{name} folder {data_dir} does not exist (ImageNet is never downloaded)")
    root = data_dir
    if not is_image_folder(root):
        subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subfolders) != 1 or not is_image_folder(subfolders[0]):
            raise DataNotFoundError(f"{data_dir} is not an ImageFolder with train/ and val/ for {name}")
        root = subfolders[0]
    folder = split_folder(root, split)
    if split == "train":
        transform = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
        )
    else:
        transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != num_classes:
        raise ConfigError(f"{folder} has {len(classes)} class folders; {name} needs {num_classes}")
    dataset = datasets.ImageFolder(str(folder), transform=transform, allow_empty=True)
    if len(dataset) == 0:
        raise DataNotFoundError(f"{folder} has no images for {name}")
    listing = hashlib.sha256()
    for path, label in dataset.samples:
        listing.update(f"{os.path.relpath(path, folder)}:{label}\n".encode())
    names = tuple((class_names or {}).get(folder_name, folder_name) for folder_name in dataset.classes)
    info = DatasetInfo(name, num_classes, 224, IMAGENET_MEAN, IMAGENET_STD, names)
    fingerprint = digest(name, split, len(dataset), listing.hexdigest())
    return LoadedDataset(dataset, info, fingerprint, f"{folder} (image folder)")


@DATASETS.register("imagenet100", num_classes=100, image_size=224, description="ImageNet-100 (local folder)")
def load_imagenet100(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """ImageNet-100 from a local ImageFolder."""
    return load_imagenet_folder("imagenet100", 100, split, data_dir)


@DATASETS.register("imagenet1k", num_classes=1000, image_size=224, description="ImageNet-1k (local folder)")
def load_imagenet1k(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """ImageNet-1k from a local ImageFolder."""
    return load_imagenet_folder("imagenet1k", 1000, split, data_dir)
