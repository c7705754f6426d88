"""Datasets: images in [0, 1] (never normalised here), their metadata, fixed subsets and fingerprints.

``load_dataset(name, split, data_dir, size, seed)`` returns a :class:`LoadedDataset`. Built-in datasets:

``synthetic``
    Procedurally generated 10-class 32×32 RGB shapes and textures (train 10,000 images, generator seed 0;
    test 2,000, seed 1). Generated in well under a second, bit-identical on every call, needs no files.
``cifar10``
    Found in this order:

    1. ``data_dir`` (the ``--data-dir`` flag), else the environment variable ``ROME_BENCH_DATA``, naming

       a. torchvision's ``cifar-10-batches-py`` folder or its parent (read directly, in the format
          ``torchvision.datasets.CIFAR10`` uses, without its checksum test);
       b. an ImageFolder with ``train/`` and ``test/`` (``val/`` is accepted for ``test/``) holding one folder
          per class, or a folder whose only subfolder is such an ImageFolder (e.g. ``cifar10-jpeg/``);
       c. a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of either, extracted once into
          ``cache_dir()/extracted/<key>/`` (key: archive path, size and mtime) and reused afterwards.

       A path that does not exist or matches none of these is an error; nothing else is tried.
    2. ``cache_dir()/cifar10/cifar-10-batches-py``, downloaded there by torchvision when it is missing.
    3. Otherwise (offline) :class:`DataNotFoundError` lists the options.

    ImageFolder images are decoded to uint8 tensors; a whole decoded split is cached under
    ``cache_dir()/decoded/`` (safetensors), while a ``size`` subset decodes only the images it keeps.
``cifar100``
    CIFAR-100 (fine labels, 100 classes), found like ``cifar10``: torchvision's ``cifar-100-python`` folder (files
    ``train`` and ``test``) or its parent, an ImageFolder with ``train/`` and ``test/`` holding the 100 class folders
    (CIFAR-100's fine label names, or 0..99), a ``.tar.gz`` of either, else ``cache_dir()/cifar100/`` downloaded by
    torchvision.
``imagenet100`` / ``imagenet1k``
    An ImageFolder with ``train/`` and ``val/`` (or ``test/``) at ``data_dir`` / ``ROME_BENCH_DATA``, read
    lazily; train images get RandomResizedCrop(224) + horizontal flip, test images Resize(256) +
    CenterCrop(224). ImageNet is never downloaded.

The cache root is ``$ROME_BENCH_CACHE``, else the user cache directory of ``rome-bench``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from rome_bench.errors import ConfigError, DataNotFoundError, RomeBenchError
from rome_bench.registry import Registry

SPLITS: tuple[str, ...] = ("train", "test")
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "disc", "square", "triangle", "ring", "cross",
    "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "dots",
)  # fmt: skip
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_BATCHES = ("test_batch",)
_DATA_HELP = (
    "pass --data-dir or set ROME_BENCH_DATA to torchvision's cifar-10-batches-py folder, an ImageFolder "
    "with train/ and test/, or a .tar.gz of either; or allow internet access so torchvision can download it"
)


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


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset split ready to use, with what identifies it."""

    dataset: Dataset  # items (float image in [0,1], int label); no normalisation ever
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


def fetch_batch(dataset: Dataset, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
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
        dataset = full.dataset if indices is None else Subset(full.dataset, indices)
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


def _one_line(text: object) -> str:
    """``text`` with its whitespace runs collapsed to single spaces."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_VERSION = 1
SYNTHETIC_SPLITS: dict[str, tuple[int, int]] = {"train": (10_000, 0), "test": (2_000, 1)}  # (size, seed)
SYNTHETIC_INFO = DatasetInfo(
    name="synthetic",
    num_classes=10,
    image_size=32,
    mean=(0.5741, 0.5742, 0.5726),
    std=(0.1699, 0.1697, 0.1704),
    class_names=SYNTHETIC_CLASSES,
)
_SIZE = 32
_TEXTURE_STRENGTH = 0.7  # textures carry more evidence than shapes; weaker contrast keeps them attackable


def generate_synthetic(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` synthetic images (uint8 N×3×32×32) with balanced labels, determined by ``seed`` alone.

    Each image is a shape (disc, square, triangle, ring, cross) or a texture patch (horizontal, vertical or
    diagonal stripes, checkerboard, dots) with random position, size, period and colours (foreground lighter
    than the background by 0.25–0.45, textures by 70% of that) and Gaussian noise (σ 0.02–0.05). Tuned so
    that a tiny ViT learns it in a minute on a CPU while an undefended model falls to the standard ℓp
    budgets. Only exactly rounded operations are used, so the result does not depend on the CPU's vector
    width or thread count.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return torch.rand(n, *shape, generator=g) * (high - low) + low

    labels = torch.randperm(n, generator=g) % 10
    centre_x, centre_y = uniform(11, 21, 1, 1), uniform(11, 21, 1, 1)
    radius, period, phase = uniform(9, 13, 1, 1), uniform(4, 7, 1, 1), uniform(0, 1, 1, 1)
    background = uniform(0.3, 0.7, 3, 1, 1)
    contrast = uniform(0.25, 0.45, 1, 1, 1) + uniform(-0.15, 0.15, 3, 1, 1)  # luminance + colour tint
    foreground = (background + contrast).clamp(0, 1)
    noise = torch.randn(n, 3, _SIZE, _SIZE, generator=g) * uniform(0.02, 0.05, 1, 1, 1)

    coords = torch.arange(_SIZE, dtype=torch.float32) + 0.5
    ys, xs = coords.view(1, _SIZE, 1), coords.view(1, 1, _SIZE)
    mask = torch.empty(n, _SIZE, _SIZE)
    for label in range(10):
        i = (labels == label).nonzero().squeeze(1)
        field = _synthetic_field(label, xs, ys, centre_x[i], centre_y[i], radius[i], period[i], phase[i])
        strength = 1.0 if label < 5 else _TEXTURE_STRENGTH
        mask[i] = (0.5 - field / 1.5).clamp(0, 1) * strength  # with a 1.5-pixel anti-aliased edge
    images = background + (foreground - background) * mask.unsqueeze(1) + noise
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _triangle_wave(t: Tensor) -> Tensor:
    """Periodic wave with period 1 and range [-1, 1], for t >= 0."""
    return (torch.frac(t) - 0.5).abs() * 4 - 1


def _synthetic_field(
    label: int, xs: Tensor, ys: Tensor, cx: Tensor, cy: Tensor, r: Tensor, period: Tensor, phase: Tensor
) -> Tensor:
    """Approximate signed distance in pixels to the foreground of class ``label`` (negative inside)."""
    dx, dy = xs - cx, ys - cy
    if label < 5:
        distance = torch.sqrt(dx * dx + dy * dy)
        if label == 0:  # disc
            return distance - r
        if label == 1:  # square
            return torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
        if label == 2:  # triangle
            half = math.sqrt(3) / 2
            edges = (-dy - 0.5 * r, half * dx + 0.5 * dy - 0.5 * r, -half * dx + 0.5 * dy - 0.5 * r)
            return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2])
        if label == 3:  # ring
            return (distance - 0.75 * r).abs() - 0.25 * r
        arm = 0.25 * r  # cross
        horizontal = torch.maximum(dx.abs() - 1.2 * r, dy.abs() - arm)
        vertical = torch.maximum(dx.abs() - arm, dy.abs() - 1.2 * r)
        return torch.minimum(horizontal, vertical)
    window = torch.maximum(dx.abs(), dy.abs()) - r  # textures fill a square patch
    u, v = xs / period + phase, ys / period + phase
    if label == 5:
        wave = _triangle_wave(v)
    elif label == 6:
        wave = _triangle_wave(u)
    elif label == 7:
        wave = _triangle_wave((u + v) * (1 / math.sqrt(2)))
    elif label == 8:
        wave = _triangle_wave(u) * _triangle_wave(v)
    else:  # dots of radius 0.3 period on a square grid
        px, py = torch.frac(u) - 0.5, torch.frac(v) - 0.5
        return torch.maximum(window, (torch.sqrt(px * px + py * py) - 0.3) * period)
    return torch.maximum(window, -wave * period / 4)


@DATASETS.register("synthetic", num_classes=10, image_size=32, description="generated shapes and textures")
def load_synthetic(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """The generated synthetic split (``data_dir`` is ignored)."""
    n, seed = SYNTHETIC_SPLITS[split]
    images, labels = generate_synthetic(n, seed)
    fingerprint = digest("synthetic", SYNTHETIC_VERSION, split, n, seed)
    source = f"generated (synthetic v{SYNTHETIC_VERSION}, {n} images, seed {seed})"
    return LoadedDataset(ImageTensorDataset(images, labels), SYNTHETIC_INFO, fingerprint, source)


# --------------------------------------------------------------------------------------------- cifar10

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
        layout, root = _locate_cifar(data_dir)
    else:
        layout, root = "batches", _cached_or_downloaded(cache_dir() / "cifar10" / "cifar-10-batches-py",
                                                        _download_cifar10, "CIFAR-10", _DATA_HELP)
    loaded = _cifar10_from_batches(root, split) if layout == "batches" else _cifar10_from_folder(root, split)
    if data_dir is not None and data_dir.is_file():
        loaded = replace(loaded, source=f"{data_dir}, extracted to {loaded.source}")
    return loaded


def _cached_or_downloaded(root: Path, download: Callable[[Path], None], name: str, help_text: str) -> Path:
    """``root`` in the cache, downloaded into its parent first when it is missing (one-line error if that fails)."""
    if not root.is_dir():
        try:
            download(root.parent)
        except Exception as error:
            raise DataNotFoundError(
                f"{name} not found and could not be downloaded ({_one_line(error)}): {help_text}") from error
    return root


def _download_cifar10(root: Path) -> None:
    """Download CIFAR-10 into ``root/cifar-10-batches-py`` with torchvision."""
    import torchvision

    torchvision.datasets.CIFAR10(str(root), train=True, download=True)


def _locate_cifar(path: Path, batch_files: tuple[str, ...] = _CIFAR10_TRAIN_BATCHES + _CIFAR10_TEST_BATCHES,
                    batch_folder: str = "cifar-10-batches-py", name: str = "CIFAR-10",
                    help_text: str = _DATA_HELP) -> tuple[str, Path]:
    """("batches", folder of the pickled batches) or ("folder", ImageFolder root) found at ``path`` (CIFAR-10 by
    default; CIFAR-100 passes its own files, folder name and help)."""
    if not path.exists():
        raise DataNotFoundError(f"{name} data path {path} does not exist: {help_text}")
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataNotFoundError(f"{path} is a file but not a .tar.gz/.tgz/.tar archive: {help_text}")
        path = _extract_once(path)
    candidates = [path]
    subfolders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subfolders) == 1:
        candidates.append(subfolders[0])
    for candidate in candidates:
        for folder in (candidate, candidate / batch_folder):
            if all((folder / file).is_file() for file in batch_files):
                return "batches", folder
        if _is_image_folder(candidate):
            return "folder", candidate
    raise DataNotFoundError(
        f"{path} holds no {name} data (expected {batch_folder} or its parent, an ImageFolder with "
        f"train/ and test/, or a .tar.gz of either)"
    )


def _is_image_folder(root: Path) -> bool:
    """Whether ``root`` has a ``train/`` and a ``test/`` (or ``val/``) folder."""
    return (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir())


def _split_folder(root: Path, split: str) -> Path:
    """``root/train`` or ``root/test`` (``root/val`` if there is no ``test``), which must exist."""
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataNotFoundError(f"{root} has no {' or '.join(n + '/' for n in names)} folder for the {split} split")


def _extract_once(archive: Path) -> Path:
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
        raise DataNotFoundError(f"cannot extract {archive} ({_one_line(error)}); is it complete? copy or download "
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
            raise DataNotFoundError(f"{path} is not a CIFAR-10 batch ({_one_line(error)})") from error
    dataset = ImageTensorDataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long))
    sizes = [(name, (folder / name).stat().st_size) for name in names]
    fingerprint = digest("cifar10-python", split, sizes, len(dataset))
    return LoadedDataset(dataset, CIFAR10_INFO, fingerprint, f"{folder} (torchvision format)")


def _cifar10_from_folder(root: Path, split: str, info: DatasetInfo = CIFAR10_INFO) -> LoadedDataset:
    """CIFAR-10 (or ``info``'s) split from the ImageFolder at ``root``, decoded when ``load_dataset`` selects
    examples."""
    folder = _split_folder(root, split)
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
    dataset = ImageFolderTensors(files, torch.tensor(labels, dtype=torch.long), image_size=32, cache_key=cache_key)
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
            raise RomeBenchError(f"cannot decode image {path} ({_one_line(error)})") from error
        if pixels.shape != out.shape[1:]:
            raise ConfigError(
                f"{path} is {pixels.shape[1]}×{pixels.shape[0]} pixels; expected {image_size}×{image_size}"
            )
        out[i] = pixels
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------- cifar100

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
        layout, root = _locate_cifar(data_dir, _CIFAR100_FILES, "cifar-100-python", "CIFAR-100", _CIFAR100_HELP)
    else:
        layout, root = "batches", _cached_or_downloaded(cache_dir() / "cifar100" / "cifar-100-python",
                                                        _download_cifar100, "CIFAR-100", _CIFAR100_HELP)
    if layout == "batches":
        loaded = _cifar100_from_python(root, split)
    else:
        loaded = _cifar10_from_folder(root, split, CIFAR100_INFO)
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
        raise DataNotFoundError(f"{path} is not a CIFAR-100 {split} file ({_one_line(error)})") from error
    dataset = ImageTensorDataset(torch.from_numpy(images.copy()), torch.tensor(labels, dtype=torch.long))
    fingerprint = digest("cifar100-python", split, path.stat().st_size, len(dataset))
    return LoadedDataset(dataset, CIFAR100_INFO, fingerprint, f"{folder} (torchvision format)")


# --------------------------------------------------------------------------------------------- imagenet


def _load_imagenet(name: str, num_classes: int, split: str, data_dir: Path | None) -> LoadedDataset:
    """An ImageNet-style ImageFolder split, read lazily with the standard crops."""
    from torchvision import datasets, transforms

    if data_dir is None:
        raise DataNotFoundError(
            f"{name} needs a local ImageFolder with train/ and val/: pass --data-dir or set ROME_BENCH_DATA "
            "(ImageNet is never downloaded automatically)"
        )
    if not data_dir.is_dir():
        raise DataNotFoundError(f"{name} folder {data_dir} does not exist (ImageNet is never downloaded)")
    root = data_dir
    if not _is_image_folder(root):
        subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subfolders) != 1 or not _is_image_folder(subfolders[0]):
            raise DataNotFoundError(f"{data_dir} is not an ImageFolder with train/ and val/ for {name}")
        root = subfolders[0]
    folder = _split_folder(root, split)
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
    info = DatasetInfo(name, num_classes, 224, IMAGENET_MEAN, IMAGENET_STD, tuple(dataset.classes))
    fingerprint = digest(name, split, len(dataset), listing.hexdigest())
    return LoadedDataset(dataset, info, fingerprint, f"{folder} (image folder)")


@DATASETS.register("imagenet100", num_classes=100, image_size=224, description="ImageNet-100 (local folder)")
def load_imagenet100(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """ImageNet-100 from a local ImageFolder."""
    return _load_imagenet("imagenet100", 100, split, data_dir)


@DATASETS.register("imagenet1k", num_classes=1000, image_size=224, description="ImageNet-1k (local folder)")
def load_imagenet1k(split: str, data_dir: Path | None = None) -> LoadedDataset:
    """ImageNet-1k from a local ImageFolder."""
    return _load_imagenet("imagenet1k", 1000, split, data_dir)
