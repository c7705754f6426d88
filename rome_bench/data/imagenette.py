"""Imagenette (fast.ai): 10 easy ImageNet classes, the ReMoE paper's mid-size dataset; local folder or download.

Found in this order: ``data_dir`` / ``ROME_BENCH_DATA`` (an ImageFolder with ``train/`` and ``val/``, the folder that
holds one such as ``imagenette2-320/``, or fast.ai's ``.tgz`` of it, extracted once into the cache), else
``cache_dir()/imagenette/imagenette2-320``, downloaded there by torchvision's ``Imagenette`` (the 320-pixel version,
1.5 GB less than the full one and enough for 224-pixel crops) when it is missing and the network allows. Images are
read lazily with ImageNet's crops (``imagenet.load_imagenet_folder``: RandomResizedCrop(224) + flip for train,
Resize(256) + CenterCrop(224) for test) and normalised with ImageNet's mean and std; the classes are named from
their WordNet ids.
"""

from __future__ import annotations

from pathlib import Path

from rome_bench.data.base import DATASETS, LoadedDataset, cache_dir, cached_or_downloaded
from rome_bench.data.folders import ARCHIVE_SUFFIXES, extract_once
from rome_bench.data.imagenet import load_imagenet_folder
from rome_bench.errors import DataNotFoundError

IMAGENETTE_SIZE = "320px"  # torchvision's archive name: imagenette2-320
IMAGENETTE_FOLDER = "imagenette2-320"
IMAGENETTE_CLASSES: dict[str, str] = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888605": "parachute",
}  # fmt: skip
IMAGENETTE_HELP = ("pass --data-dir or set ROME_BENCH_DATA to an Imagenette ImageFolder (train/ and val/, e.g. "
                   "imagenette2-320/) or its .tgz; or allow internet access so torchvision can download it")


@DATASETS.register("imagenette", num_classes=10, image_size=224,
                   description="Imagenette, 10 ImageNet classes (local folder or download)")
def load_imagenette(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """Imagenette from ``data_dir`` (folder or archive), else from the cache, else downloaded (see module docs)."""
    root = locate_imagenette(data_dir) if data_dir is not None else cached_or_downloaded(
        cache_dir() / "imagenette" / IMAGENETTE_FOLDER, _download_imagenette, "Imagenette", IMAGENETTE_HELP)
    return load_imagenet_folder("imagenette", 10, split, root, IMAGENETTE_CLASSES)


def locate_imagenette(path: Path) -> Path:
    """The folder at ``path``, or where its archive is extracted (once, into the cache)."""
    if not path.exists():
        raise DataNotFoundError(f"Imagenette data path {path} does not exist: {IMAGENETTE_HELP}")
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataNotFoundError(f"{path} is neither a folder nor a .tgz/.tar archive: {IMAGENETTE_HELP}")
        return extract_once(path)
    return path


def _download_imagenette(root: Path) -> None:
    """Download and extract Imagenette (320 px) into ``root/imagenette2-320`` with torchvision."""
    from torchvision import datasets

    datasets.Imagenette(str(root), split="train", size=IMAGENETTE_SIZE, download=True)
