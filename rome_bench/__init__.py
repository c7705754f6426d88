"""rome-bench: robustness against multiple adversarial perturbations.

The Python API (``rome_bench.load_model``, ``rome_bench.benchmark``, ``rome_bench.Results``) lives in
:mod:`rome_bench.api`; it is imported on first use so that ``import rome_bench`` and the CLI stay light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Results", "benchmark", "load_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rome_bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'rome_bench' has no attribute '{name}'")
