"""Tests of the rome_bench.data package: synthetic data, subsets, CIFAR-10 layouts, caches and errors."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rome_bench import data
from rome_bench.data import (
    CIFAR10_CLASSES,
    DATASETS,
    ImageTensorDataset,
    LoadedDataset,
    cache_dir,
    cifar10,
    evaluation_indices,
    folders,
    load_dataset,
)
from rome_bench.errors import ConfigError, DataNotFoundError, RomeBenchError, UnknownEntryError

REAL_DATA = os.environ.get("ROME_BENCH_DATA")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache and no ROME_BENCH_DATA, so nothing touches the real cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROME_BENCH_CACHE", str(cache))
    monkeypatch.delenv("ROME_BENCH_DATA", raising=False)
    return cache


@pytest.fixture(scope="module")
def synthetic_train() -> LoadedDataset:
    return load_dataset("synthetic", "train")


def _pixel(label: int, index: int, split: str) -> tuple[int, int, int]:
    """The solid colour of fixture image ``index`` of class ``label``: it encodes the label."""
    return 20 * label + 5, 40 * index + (0 if split == "train" else 20), 7


def _write_image_folder(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """A tiny CIFAR-10 ImageFolder of solid-colour 32×32 PNGs under ``root``."""
    per_class = per_class or {"train": 2, "test": 1}
    for split, count in per_class.items():
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (32, 32), _pixel(label, index, split)).save(folder / f"{index:04d}.png")
    return root


def _check_folder_dataset(loaded: LoadedDataset, split: str, count: int) -> None:
    assert len(loaded.dataset) == count * 10
    assert loaded.info.class_names == CIFAR10_CLASSES
    for i in range(len(loaded.dataset)):
        image, label = loaded.dataset[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        red, green = round(float(image[0, 0, 0]) * 255), round(float(image[1, 0, 0]) * 255)
        assert (red - 5) // 20 == label
        assert green % 40 == (0 if split == "train" else 20)


def _write_batches(folder: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Tiny torchvision-format cifar-10-batches-py batches; returns what each file holds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 3)]:
        images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        names = [f"{i}.png" for i in range(n)]
        entry = {"batch_label": name, "labels": labels, "data": images, "filenames": names}
        with (folder / name).open("wb") as file:
            pickle.dump(entry, file, protocol=2)
        written[name] = (images, labels)
    with (folder / "batches.meta").open("wb") as file:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 4, "num_vis": 3072}, file)
    return written


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_and_well_formed(synthetic_train: LoadedDataset) -> None:
    again = load_dataset("synthetic", "train")
    first, second = synthetic_train.dataset, again.dataset
    assert isinstance(first, ImageTensorDataset) and isinstance(second, ImageTensorDataset)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert synthetic_train.fingerprint == again.fingerprint
    assert first.images.shape == (10_000, 3, 32, 32) and first.images.dtype == torch.uint8
    counts = torch.bincount(first.labels, minlength=10)
    assert counts.numel() == 10 and counts.min() >= 900 and counts.max() <= 1100
    image, label = first[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    info = synthetic_train.info
    assert info.num_classes == 10 and len(info.class_names) == 10 and info.image_size == 32


def test_synthetic_images_are_not_degenerate(synthetic_train: LoadedDataset) -> None:
    images = synthetic_train.dataset.images.float() / 255
    per_image_std = images.flatten(1).std(1)
    assert float(per_image_std.min()) > 0.02  # every image has a visible pattern
    class_means = [images[synthetic_train.dataset.labels == c].mean(0) for c in range(10)]
    assert len({tuple(m.flatten()[:8].tolist()) for m in class_means}) == 10


def test_synthetic_info_statistics_match_the_train_split(synthetic_train: LoadedDataset) -> None:
    images = synthetic_train.dataset.images.double() / 255
    mean, std = images.mean((0, 2, 3)), images.std((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(synthetic_train.info.mean, dtype=torch.double), atol=1e-3)
    assert torch.allclose(std, torch.tensor(synthetic_train.info.std, dtype=torch.double), atol=1e-3)


def test_synthetic_train_and_test_differ(synthetic_train: LoadedDataset) -> None:
    test = load_dataset("synthetic", "test")
    assert len(test.dataset) == 2_000
    assert not torch.equal(test.dataset.images, synthetic_train.dataset.images[:2_000])
    assert test.fingerprint != synthetic_train.fingerprint


def test_image_tensor_dataset_batch_matches_items(synthetic_train: LoadedDataset) -> None:
    dataset = synthetic_train.dataset
    images, labels = dataset.batch([5, 0, 7])
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    for row, index in enumerate([5, 0, 7]):
        image, label = dataset[index]
        assert torch.equal(images[row], image) and int(labels[row]) == label
    with pytest.raises(ValueError):
        ImageTensorDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------ subsets


def test_size_keeps_a_seeded_subset(synthetic_train: LoadedDataset) -> None:
    a = load_dataset("synthetic", "train", size=100, seed=0)
    b = load_dataset("synthetic", "train", size=100, seed=0)
    c = load_dataset("synthetic", "train", size=100, seed=1)
    assert len(a.dataset) == len(c.dataset) == 100
    assert torch.equal(a.dataset.images, b.dataset.images) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.dataset.images, c.dataset.images) and a.fingerprint != c.fingerprint
    assert a.fingerprint != synthetic_train.fingerprint
    expected = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:100]
    assert torch.equal(a.dataset.images, synthetic_train.dataset.images[expected])
    assert torch.equal(a.dataset.labels, synthetic_train.dataset.labels[expected])


@pytest.mark.parametrize("size", [0, -1, 2_001])
def test_invalid_size_is_a_config_error(size: int) -> None:
    with pytest.raises(ConfigError, match="size"):
        load_dataset("synthetic", "test", size=size)


def test_unknown_split_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        load_dataset("synthetic", "val")
    assert "train" in str(raised.value) and "\n" not in str(raised.value)


def test_evaluation_indices_are_fixed_distinct_and_in_range() -> None:
    first = evaluation_indices(1_000, 100, seed=0)
    assert first == evaluation_indices(1_000, 100, seed=0)
    assert len(first) == len(set(first)) == 100 and all(0 <= i < 1_000 for i in first)
    assert first != evaluation_indices(1_000, 100, seed=1)
    assert first == torch.randperm(1_000, generator=torch.Generator().manual_seed(0))[:100].tolist()
    everything = evaluation_indices(50, None)
    assert sorted(everything) == list(range(50)) and everything != list(range(50))
    assert evaluation_indices(50, 10) == everything[:10]
    with pytest.raises(ConfigError):
        evaluation_indices(50, 51)


def test_third_party_dataset_registers_with_one_function() -> None:
    info = data.DatasetInfo("tiny", 2, 4, (0.5,) * 3, (0.25,) * 3, ("a", "b"))
    items = [(torch.full((3, 4, 4), i / 10), i % 2) for i in range(10)]
    with DATASETS.scoped():

        @DATASETS.register("tiny-plugin")
        def load_tiny(split: str, data_dir: Path | None) -> LoadedDataset:
            return LoadedDataset(items, info, data.digest("tiny", split), "a list")

        loaded = load_dataset("tiny-plugin", "test", size=3, seed=2)
    assert "tiny-plugin" not in DATASETS
    assert len(loaded.dataset) == 3 and loaded.info is info
    expected = evaluation_indices(10, 3, seed=2)
    assert [float(loaded.dataset[i][0][0, 0, 0]) for i in range(3)] == pytest.approx([i / 10 for i in expected])


# ------------------------------------------------------------------------------------------ registry/cache


def test_unknown_dataset_suggests_a_name() -> None:
    with pytest.raises(UnknownEntryError) as raised:
        load_dataset("cifar-10", "test")
    assert "did you mean" in str(raised.value) and "cifar10" in str(raised.value)


def test_cache_dir_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "somewhere" / "cache"
    monkeypatch.setenv("ROME_BENCH_CACHE", str(target))
    assert cache_dir() == target and target.is_dir()


# ------------------------------------------------------------------------------------------ cifar10


def test_cifar10_image_folder_via_data_dir(tmp_path: Path) -> None:
    root = _write_image_folder(tmp_path / "cifar")
    train = load_dataset("cifar10", "train", root)
    _check_folder_dataset(train, "train", 2)
    _check_folder_dataset(load_dataset("cifar10", "test", str(root)), "test", 1)
    assert str(root) in train.source
    assert train.info.mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_image_folder_via_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outer = tmp_path / "outer"
    _write_image_folder(outer / "cifar10-jpeg")  # a folder whose only subfolder is the ImageFolder
    monkeypatch.setenv("ROME_BENCH_DATA", str(outer))
    _check_folder_dataset(load_dataset("cifar10", "test"), "test", 1)


def test_cifar10_archive_is_extracted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write_image_folder(tmp_path / "cifar10-jpeg")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="cifar10-jpeg")
    calls = []
    original = folders._extract_archive
    monkeypatch.setattr(folders, "_extract_archive", lambda *args: (calls.append(args), original(*args)))
    first = load_dataset("cifar10", "train", archive)
    second = load_dataset("cifar10", "train", archive, size=5)
    _check_folder_dataset(first, "train", 2)
    assert len(calls) == 1 and len(second.dataset) == 5
    extracted = list((cache_dir() / "extracted").iterdir())
    assert len(extracted) == 1 and not extracted[0].name.startswith(".")
    direct = load_dataset("cifar10", "train", root)
    assert direct.fingerprint == first.fingerprint  # same files, same fingerprint


def test_cifar10_decoded_split_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _write_image_folder(tmp_path / "cifar", {"train": 3, "test": 1})
    decoded: list[int] = []
    original = folders._decode_images

    def counting_decode(files: list[Path], image_size: int) -> torch.Tensor:
        decoded.append(len(files))
        return original(files, image_size)

    monkeypatch.setattr(folders, "_decode_images", counting_decode)
    subset = load_dataset("cifar10", "train", root, size=4, seed=3)
    assert decoded == [4] and not (cache_dir() / "decoded").exists()  # subsets decode only what they keep
    full = load_dataset("cifar10", "train", root)
    assert decoded == [4, 30] and len(list((cache_dir() / "decoded").glob("*.safetensors"))) == 1
    again = load_dataset("cifar10", "train", root)
    assert decoded == [4, 30]  # read from the cache
    assert torch.equal(full.dataset.images, again.dataset.images)
    assert torch.equal(full.dataset.labels, again.dataset.labels)
    kept = evaluation_indices(30, 4, seed=3)
    assert torch.equal(subset.dataset.images, full.dataset.images[kept])
    assert subset.fingerprint != full.fingerprint


def test_cifar10_image_folder_with_wrong_classes(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name in ("cats", "dogs"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / split / name / "0.png")
    with pytest.raises(ConfigError, match="airplane"):
        load_dataset("cifar10", "train", tmp_path)


def test_cifar10_image_of_wrong_size_or_corrupt(tmp_path: Path) -> None:
    root = _write_image_folder(tmp_path / "cifar", {"train": 1, "test": 1})
    Image.new("RGB", (33, 32)).save(root / "test" / "cat" / "0000.png")
    with pytest.raises(ConfigError, match="33×32"):
        load_dataset("cifar10", "test", root)
    (root / "test" / "cat" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(RomeBenchError, match="cannot decode"):
        load_dataset("cifar10", "test", root)


@pytest.mark.parametrize("parent", [False, True])
def test_cifar10_torchvision_batches(tmp_path: Path, parent: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = _write_batches(folder)
    train = load_dataset("cifar10", "train", tmp_path if parent else folder)
    test = load_dataset("cifar10", "test", tmp_path if parent else folder)
    assert len(train.dataset) == 20 and len(test.dataset) == 3
    images, labels = written["data_batch_2"]
    image, label = train.dataset[4]
    assert torch.equal(image, torch.from_numpy(images[0].reshape(3, 32, 32)).float() / 255)
    assert label == labels[0]
    assert test.dataset.labels.tolist() == written["test_batch"][1]
    assert train.fingerprint != test.fingerprint


class _OpensAFileWhenUnpickled:
    """What a crafted batch carries: unpickling it with plain pickle.load calls open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("packed", [False, True])
def test_a_crafted_cifar10_batch_runs_no_code(tmp_path: Path, packed: bool) -> None:
    folder = tmp_path / "evil" / "cifar-10-batches-py"
    _write_batches(folder)
    marker = tmp_path / "marker"
    entry = {"batch_label": "test", "labels": [0], "data": _OpensAFileWhenUnpickled(marker), "filenames": ["0.png"]}
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    source = folder
    if packed:
        source = tmp_path / "evil.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(DataNotFoundError, match=r"test_batch is not a CIFAR-10 batch \(it asks to import io.open"):
        load_dataset("cifar10", "test", source)
    assert not marker.exists(), "the crafted batch ran code"
    assert len(load_dataset("cifar10", "train", source).dataset) == 20, "the untouched batches still load"
    pickle.loads((folder / "test_batch").read_bytes())  # plain pickle runs it: the batch is a real attack
    assert marker.exists()


@pytest.mark.parametrize(("entry", "needle"), [
    ([1, 2, 3], "holds a list, not a dict"),
    ({"labels": [0, 1], "data": np.zeros((3, 3072), np.uint8)}, "3 images but 2 labels"),
    ({"labels": [0, 10, 1], "data": np.zeros((3, 3072), np.uint8)}, "labels in 0..9"),
    ({"labels": ["cat"] * 3, "data": np.zeros((3, 3072), np.uint8)}, "invalid literal"),
    ({"data": np.zeros((3, 3072), np.uint8)}, "labels"),
])
def test_a_malformed_cifar10_batch_is_one_clear_error(tmp_path: Path, entry: object, needle: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=4))
    with pytest.raises(DataNotFoundError, match="test_batch is not a CIFAR-10 batch") as error:
        load_dataset("cifar10", "test", folder)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_cifar10_from_cache_without_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    _write_batches(cache_dir() / "cifar10" / "cifar-10-batches-py")
    monkeypatch.setattr(cifar10, "_download_cifar10", lambda root: pytest.fail("must not download"))
    assert len(load_dataset("cifar10", "test").dataset) == 3


def test_cifar10_offline_lists_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: Path) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(cifar10, "_download_cifar10", offline)
    with pytest.raises(DataNotFoundError) as raised:
        load_dataset("cifar10", "test")
    message = str(raised.value)
    assert "\n" not in message
    for option in ("--data-dir", "ROME_BENCH_DATA", "cifar-10-batches-py", "train/", ".tar.gz", "internet"):
        assert option in message


def test_cifar10_missing_or_unrecognised_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match="nowhere") as raised:
        load_dataset("cifar10", "test", missing)
    assert "\n" not in str(raised.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="empty"):
        load_dataset("cifar10", "test", tmp_path / "empty")


# ------------------------------------------------------------------------------------------ imagenet


def test_imagenet_needs_a_local_folder(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="never downloaded"):
        load_dataset("imagenet100", "test")
    with pytest.raises(DataNotFoundError, match="missing"):
        load_dataset("imagenet1k", "train", tmp_path / "missing")


def test_imagenet100_folder_loads_lazily_and_checks_class_count(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for c in range(100):
            (tmp_path / split / f"n{c:08d}").mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / split / "n00000003" / "a.jpg")
    test = load_dataset("imagenet100", "test", tmp_path)
    image, label = test.dataset[0]
    assert image.shape == (3, 224, 224) and label == 3
    assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert test.info.num_classes == 100 and test.info.class_names[3] == "n00000003"
    train_image, _ = load_dataset("imagenet100", "train", tmp_path).dataset[0]
    assert train_image.shape == (3, 224, 224)
    with pytest.raises(ConfigError, match="1000"):
        load_dataset("imagenet1k", "test", tmp_path)


# ------------------------------------------------------------------------------------------ imagenette

IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888605")


def _write_imagenette(root: Path) -> Path:
    """fast.ai's layout: ``imagenette2-320/{train,val}/<wnid>/*.JPEG``, one 40×30 image in class 8 (golf ball)."""
    folder = root / "imagenette2-320"
    for split in ("train", "val"):
        for wnid in IMAGENETTE_WNIDS:
            (folder / split / wnid).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10, 200, 10)).save(folder / split / "n03445777" / "a.JPEG")
    return folder


def test_imagenette_loads_from_a_local_folder_its_parent_or_its_archive(tmp_path: Path) -> None:
    folder = _write_imagenette(tmp_path / "data")
    archive = tmp_path / "imagenette2-320.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    for source in (folder, folder.parent, archive):
        test = load_dataset("imagenette", "test", source)
        image, label = test.dataset[0]
        assert image.shape == (3, 224, 224) and label == 8 and len(test.dataset) == 1
        assert test.info.num_classes == 10 and test.info.class_names[8] == "golf ball"
    assert load_dataset("imagenette", "train", folder).dataset[0][0].shape == (3, 224, 224)
    with pytest.raises(DataNotFoundError, match="missing") as raised:
        load_dataset("imagenette", "test", tmp_path / "missing")
    assert "\n" not in str(raised.value)


def test_imagenette_without_a_folder_downloads_the_320px_version_into_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data_dir: torchvision's Imagenette(size='320px', download=True) fills the cache (faked here: no network);
    when the download fails, one line names the ways to provide the data."""
    import torchvision

    monkeypatch.delenv("ROME_BENCH_DATA", raising=False)
    calls = []

    def fake_imagenette(root: str, split: str, size: str, download: bool) -> None:
        calls.append((split, size, download))
        _write_imagenette(Path(root))

    monkeypatch.setattr(torchvision.datasets, "Imagenette", fake_imagenette)
    loaded = load_dataset("imagenette", "test")
    assert calls == [("train", "320px", True)] and loaded.dataset[0][1] == 8
    load_dataset("imagenette", "test")  # now cached: no second download
    assert len(calls) == 1

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "Imagenette", offline)
    monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataNotFoundError, match="network unreachable") as raised:
        load_dataset("imagenette", "test")
    assert "\n" not in str(raised.value) and "--data-dir" in str(raised.value)


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA, reason="set ROME_BENCH_DATA to a CIFAR-10 copy to run")
def test_real_cifar10_subset(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # a cache shared by the session (still temporary), so that an archive is extracted once per test run
    monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "rome-bench-cache"))
    monkeypatch.setenv("ROME_BENCH_DATA", str(REAL_DATA))
    loaded = load_dataset("cifar10", "test", size=500)
    images, labels = loaded.dataset.batch(range(500))
    assert images.shape == (500, 3, 32, 32) and labels.min() >= 0 and labels.max() <= 9
    assert len(labels.unique()) == 10
    mean, std = images.mean((0, 2, 3)), images.std((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(loaded.info.mean), atol=0.05)
    assert torch.allclose(std, torch.tensor(loaded.info.std), atol=0.05)
