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
``imagenette``
    fast.ai's 10-class ImageNet subset (ReMoE's mid-size dataset): ``data_dir`` (an ImageFolder with ``train/`` and
    ``val/``, its parent, or its .tgz), else the cache, else torchvision's download of the 320-pixel version; read
    with ImageNet's crops.

The cache root is ``$ROME_BENCH_CACHE``, else the user cache directory of ``rome-bench``.

The package keeps one file per source (``synthetic.py``, ``cifar10.py``, ``cifar100.py``, ``imagenet.py``,
``imagenette.py``); what
they share lives in ``base.py`` (descriptions, registry, subsets, cache) and ``folders.py`` (archives, ImageFolders,
decoding). Importing the package registers every built-in source.
"""

from rome_bench.data import (  # noqa: F401  (register the built-in sources)
    cifar10,
    cifar100,
    imagenet,
    imagenette,
    synthetic,
)
from rome_bench.data.base import (
    DATASETS,
    SPLITS,
    DatasetInfo,
    ImageTensorDataset,
    LoadedDataset,
    cache_dir,
    digest,
    evaluation_indices,
    fetch_batch,
    load_dataset,
)
from rome_bench.data.cifar10 import CIFAR10_CLASSES, CIFAR10_INFO
from rome_bench.data.cifar100 import CIFAR100_CLASSES, CIFAR100_INFO
from rome_bench.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_INFO

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_INFO",
    "CIFAR100_CLASSES",
    "CIFAR100_INFO",
    "DATASETS",
    "SPLITS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_INFO",
    "DatasetInfo",
    "ImageTensorDataset",
    "LoadedDataset",
    "cache_dir",
    "digest",
    "evaluation_indices",
    "fetch_batch",
    "load_dataset",
]
