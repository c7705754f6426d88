"""The built-in recipes: importing this package registers every one (one file each)."""

from rome_bench.training.recipes import mat as _mat  # noqa: F401  (max, avg, random)
