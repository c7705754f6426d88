"""``imagecorruptions`` (v1.1.2, Michaelis et al. 2019), patched to run on numpy 2, scikit-image ≥ 0.26 and SciPy.

Import this module instead of ``imagecorruptions``: it imports the library and fixes it in place, so afterwards
``imagecorruptions.corrupt(image, corruption_name=name, severity=s)`` works for all 19 corruptions at every severity
(checked on 32×32 and 224×224 uint8 images). What breaks in the unpatched library, and the fix applied here:

* **The import itself** — ``imagecorruptions.corruptions`` does ``from pkg_resources import resource_filename``
  (to locate its frost textures); setuptools ≥ 81 no longer ships ``pkg_resources``. When it is missing, a stand-in
  module providing ``resource_filename`` (the file next to the named module) is put in ``sys.modules`` only for the
  duration of the import and removed afterwards, so no other code sees a fake ``pkg_resources``.
* **The import, later** — it does ``from scipy.ndimage.interpolation import map_coordinates``; SciPy deprecates that
  namespace (a DeprecationWarning, silenced here) and removes it in SciPy 2.0, where a stand-in pointing at
  ``scipy.ndimage`` is provided for the import in the same way.
* **fog** — ``plasma_fractal`` allocates ``np.empty(..., dtype=np.float_)``; numpy 2 removed ``np.float_``
  (AttributeError). Replaced by :func:`plasma_fractal` below: the same diamond-square algorithm, in float64, with
  the same sequence of random draws, and an optional ``rng`` (a ``numpy.random.Generator``) so callers need not use
  numpy's global RNG.
* **gaussian_blur, glass_blur** — they call ``skimage.filters.gaussian(..., multichannel=True)``; scikit-image 0.19
  deprecated and 0.21 removed ``multichannel`` (TypeError). The module's ``gaussian`` is replaced by a wrapper that
  maps ``multichannel=True/False`` to ``channel_axis=-1/None`` (the documented equivalent) and passes everything else
  through (spatter and elastic_transform call it without ``multichannel``).

The corruption functions look these helpers up in their module's globals at call time, so patching the helpers
fixes ``corruption_dict``, ``corruption_tuple`` and ``corrupt`` without replacing them.

One more fix, for a bug that does not depend on versions: **spatter** at severities 1–3 divides its liquid mask by
its maximum, which is 0 when no liquid survives the threshold (common on small images such as 32×32); the whole
image becomes NaN, ``np.uint8(NaN)`` follows (a RuntimeWarning and, on x86, a black image). The wrapped spatter
returns the image unchanged in that case (no liquid, nothing to add), which is what the formula means, and is
swapped into ``corruption_dict`` and ``corruption_tuple``. The other 15 corruptions run unchanged.

The size-agnostic building blocks are re-exported for :mod:`rome_bench.threats.corruptions`.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


@contextmanager
def _stand_in_module(name: str, **attributes: Any) -> Iterator[None]:
    """Provide ``name`` in ``sys.modules`` during the block if it cannot be imported; remove it afterwards."""
    try:
        importlib.import_module(name)
    except ImportError:
        stand_in = types.ModuleType(name)
        stand_in.__dict__.update(attributes)
        sys.modules[name] = stand_in
        try:
            yield
        finally:
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    else:
        yield


def resource_filename(module_name: str, relative_path: str) -> str:
    """The path of ``relative_path`` next to the (imported) module ``module_name``, as pkg_resources returns it."""
    return os.path.join(os.path.dirname(sys.modules[module_name].__file__ or ""), os.path.normpath(relative_path))


def _import_imagecorruptions() -> types.ModuleType:
    import scipy.ndimage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # a real pkg_resources (setuptools < 81) warns that it is deprecated when imported
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            with (
                _stand_in_module("pkg_resources", resource_filename=resource_filename),
                _stand_in_module("scipy.ndimage.interpolation", map_coordinates=scipy.ndimage.map_coordinates),
            ):
                return importlib.import_module("imagecorruptions")
    except ImportError as error:
        hint = "pip install imagecorruptions opencv-python-headless scikit-image scipy"
        raise ImportError(f"common corruptions need imagecorruptions, OpenCV, scikit-image and SciPy ({hint}): "
                          f"{error}") from error


imagecorruptions = _import_imagecorruptions()
_library = sys.modules["imagecorruptions.corruptions"]


def plasma_fractal(mapsize: int = 256, wibbledecay: float = 3, rng: np.random.Generator | None = None) -> np.ndarray:
    """A (mapsize, mapsize) diamond-square height map scaled to [0, 1]; ``mapsize`` must be a power of two.

    Each level sets square centres, then edge midpoints, to the mean of their four neighbours (wrapping around)
    plus uniform noise of half-width ``wibble²``; ``wibble`` starts at 100 and is divided by ``wibbledecay`` per
    level. Draws come from ``rng``, or from numpy's global RNG when it is None (the library's behaviour).
    """
    if mapsize < 1 or mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize must be a power of two, got {mapsize}")
    uniform = rng.uniform if rng is not None else np.random.uniform
    grid = np.zeros((mapsize, mapsize), dtype=np.float64)
    step, wibble = mapsize, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        around = corners + np.roll(corners, -1, axis=0)
        grid[half::step, half::step] = noisy_mean(around + np.roll(around, -1, axis=1))
        centres = grid[half::step, half::step]
        grid[0::step, half::step] = noisy_mean(centres + np.roll(centres, 1, axis=0)
                                               + corners + np.roll(corners, -1, axis=1))
        grid[half::step, 0::step] = noisy_mean(centres + np.roll(centres, 1, axis=1)
                                               + corners + np.roll(corners, -1, axis=0))
        step = half
        wibble /= wibbledecay
    grid -= grid.min()
    return grid / grid.max()


def gaussian(image: np.ndarray, sigma: Any = 1.0, multichannel: bool | None = None, **kwargs: Any) -> np.ndarray:
    """``skimage.filters.gaussian`` that also accepts the removed ``multichannel`` flag (→ ``channel_axis``)."""
    from skimage.filters import gaussian as skimage_gaussian

    if multichannel is not None:
        kwargs.setdefault("channel_axis", -1 if multichannel else None)
    return skimage_gaussian(image, sigma=sigma, **kwargs)


_original_spatter = _library.spatter


@functools.wraps(_original_spatter)
def spatter(x: Any, severity: int = 1) -> np.ndarray:
    """imagecorruptions' spatter, returning the image itself where the liquid mask is empty (0/0 → NaN)."""
    with np.errstate(invalid="ignore"):
        out = np.asarray(_original_spatter(x, severity), dtype=np.float64)
    if np.isnan(out).any():
        out = np.where(np.isnan(out), np.asarray(x, dtype=np.float64).reshape(out.shape), out)
    return out


for _namespace in (_library, imagecorruptions):
    _namespace.plasma_fractal = plasma_fractal
    _namespace.gaussian = gaussian
    _namespace.spatter = spatter
_library.resource_filename = resource_filename
imagecorruptions.corruption_tuple = tuple(spatter if f is _original_spatter else f
                                          for f in imagecorruptions.corruption_tuple)
imagecorruptions.corruption_dict = {f.__name__: f for f in imagecorruptions.corruption_tuple}

# Size-agnostic building blocks (deterministic; the random ones above take an rng).
disk: Callable[..., np.ndarray] = _library.disk
"""disk(radius, alias_blur) -> anti-aliased normalised disk kernel (defocus blur)."""
clipped_zoom: Callable[[np.ndarray, float], np.ndarray] = _library.clipped_zoom
"""clipped_zoom(image HWC, factor) -> the central 1/factor crop zoomed back (bilinear); may exceed the input size."""
motion_blur: Callable[..., np.ndarray] = _library._motion_blur
"""motion_blur(image, radius, sigma, angle) -> numpy stand-in for ImageMagick's MotionBlurImage (float32)."""
corrupt = imagecorruptions.corrupt
get_corruption_names = imagecorruptions.get_corruption_names


def frost_texture_path(index: int) -> str:
    """Path of the frost texture ``index`` (0–5: frost1.png … frost6.jpg) shipped with imagecorruptions."""
    names = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
    return resource_filename(_library.__name__, os.path.join("frost", names[index]))
