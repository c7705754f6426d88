"""Local image files: archives extracted once into the cache, ImageFolder layouts, images decoded into tensors.

An ImageFolder holds ``train/`` and ``test/`` (``val/`` is accepted for ``test/``) with one folder per class. A whole
decoded split is cached under ``cache_dir()/decoded/`` (safetensors); a subset decodes only the images it keeps.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from rome_bench.data.base import DatasetInfo, ImageTensorDataset, LoadedDataset, cache_dir, digest, one_line
from rome_bench.errors import ConfigError, DataNotFoundError, RomeBenchError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar")


def is_image_folder(root: Path) -> bool:
    """Whether ``root`` has a ``train/`` and a ``test/`` (or ``val/``) folder."""
    return (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir())


def split_folder(root: Path, split: str) -> Path:
    """``root/train`` or ``root/test`` (``root/val`` if there is no ``test``), which must exist."""
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataNotFoundError(f"{root} has no {' or '.join(n + '/' for n in names)} folder for the {split} split")


def extract_once(archive: Path) -> Path:
    """Extract ``archive`` into the cache once (atomically) and return the extracted folder."""
    stat = archive.stat()
    key = digest(str(archive.resolve()), stat.st_size, stat.st_mtime_ns)[:16]
    target = cache_dir() / "extracted" / key
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        _extract_archive(archive, temporary)
        try:
            os.replace(temporary, target)
        except OSError:
            if not target.is_dir():  # otherwise another process finished first: use its copy
                raise
    except (OSError, tarfile.TarError, EOFError, zlib.error) as error:  # EOFError: a truncated .gz
        raise DataNotFoundError(f"cannot extract {archive} ({one_line(error)}); is it complete? copy or download "
                                f"it again") from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def _extract_archive(archive: Path, destination: Path) -> None:
    """Extract the tar archive ``archive`` into ``destination``, refusing members that would escape it."""
    with tarfile.open(archive, "r:*") as tar:
        members = tqdm(tar, desc=f"extracting {archive.name}", unit=" files", disable=None, leave=False)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, members=members, filter="data")
            return
        for member in tar.getmembers():  # Python without extraction filters
            inside = (destination / member.name).resolve().is_relative_to(destination.resolve())
            if not inside or member.issym() or member.islnk() or member.isdev():
                raise DataNotFoundError(f"{archive} has an unsafe member {member.name!r}; extract it yourself")
        tar.extractall(destination, members=members)


def image_folder_split(root: Path, split: str, info: DatasetInfo) -> LoadedDataset:
    """The split of ``info``'s dataset (small images, e.g. CIFAR-10's) from the ImageFolder at ``root``, decoded
    when ``load_dataset`` selects examples."""
    folder = split_folder(root, split)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    names, count = info.class_names, info.num_classes
    if sorted(classes) == sorted(names):
        class_labels = [names.index(name) for name in classes]
    elif classes == sorted(str(i) for i in range(count)):
        class_labels = [int(name) for name in classes]
    else:
        shown = " ".join(classes[:12]) + (" …" if len(classes) > 12 else "")
        raise ConfigError(
            f"{folder} has {len(classes)} class folders [{shown}]; {info.name} needs the {count} folders "
            f"{' '.join(names) if count <= 10 else 'named by its class names'} (or 0..{count - 1})"
        )
    files: list[Path] = []
    labels: list[int] = []
    listing = hashlib.sha256()
    for name, label in zip(classes, class_labels, strict=True):
        with os.scandir(folder / name) as entries:
            found = sorted(e.name for e in entries if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
        for file_name in found:
            path = folder / name / file_name
            files.append(path)
            labels.append(label)
            listing.update(f"{name}/{file_name}:{path.stat().st_size}\n".encode())
    if not files:
        raise DataNotFoundError(f"{folder} has no images (.jpg, .jpeg, .png, .gif, .webp)")
    cache_key = digest(str(folder.resolve()), split, len(files), listing.hexdigest())[:32]
    labels_tensor = torch.tensor(labels, dtype=torch.long)
    dataset = ImageFolderTensors(files, labels_tensor, image_size=info.image_size, cache_key=cache_key)
    fingerprint = digest("image-folder", split, len(files), listing.hexdigest())
    return LoadedDataset(dataset, info, fingerprint, f"{folder} (image folder)")


class ImageFolderTensors(Dataset):
    """Image files of one size with labels, decoded on demand; ``select`` decodes a subset into memory."""

    def __init__(self, files: Sequence[Path], labels: Tensor, image_size: int, cache_key: str) -> None:
        self.files = list(files)
        self.labels = labels
        self.image_size = image_size
        self.cache_key = cache_key

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        index = int(index)
        return self._decode([self.files[index]])[0].float().div_(255), int(self.labels[index])

    @property
    def cache_path(self) -> Path:
        """Where the whole decoded split is cached."""
        return cache_dir() / "decoded" / f"{self.cache_key}.safetensors"

    def select(self, indices: Sequence[int] | None) -> ImageTensorDataset:
        """The examples at ``indices`` (all when None) decoded into memory; the whole split is cached."""
        cached = self._load_cache()
        if cached is not None:
            return cached.select(indices)
        if indices is not None:
            index = torch.as_tensor(indices, dtype=torch.long)
            return ImageTensorDataset(self._decode([self.files[i] for i in index.tolist()]), self.labels[index])
        dataset = ImageTensorDataset(self._decode(self.files), self.labels.clone())
        self._save_cache(dataset)
        return dataset

    def _decode(self, files: Sequence[Path]) -> Tensor:
        return _decode_images(files, self.image_size)

    def _load_cache(self) -> ImageTensorDataset | None:
        """The cached decoded split, or None if absent or unreadable."""
        path = self.cache_path
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            dataset = ImageTensorDataset(tensors["images"], tensors["labels"])
        except Exception:  # a corrupt cache file is rebuilt
            return None
        return dataset if torch.equal(dataset.labels, self.labels) else None

    def _save_cache(self, dataset: ImageTensorDataset) -> None:
        """Write ``dataset`` to the cache atomically (temporary file, then rename)."""
        path = self.cache_path
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file({"images": dataset.images.contiguous(), "labels": dataset.labels.contiguous()}, temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def _decode_images(files: Sequence[Path], image_size: int) -> Tensor:
    """Decode image files of ``image_size``² pixels (any format Pillow reads) to a uint8 N×3×H×W tensor."""
    out = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    progress = tqdm(files, desc="decoding images", unit=" img", disable=None if len(files) > 2000 else True)
    for i, path in enumerate(progress):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise RomeBenchError(f"cannot decode image {path} ({one_line(error)})") from error
        if pixels.shape != out.shape[1:]:
            raise ConfigError(
                f"{path} is {pixels.shape[1]}×{pixels.shape[0]} pixels; expected {image_size}×{image_size}"
            )
        out[i] = pixels
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
