"""rome-bench: robustness against multiple adversarial perturbations.

The Python API, shaped like RobustBench's and torchattacks':

* :func:`load_model` — a model (a run directory, ``robustbench:<name>``, ``FILE.py:Class``) as a callable
  ``nn.Module`` on [0, 1] images, its run as ``model.rome_bench``; :func:`load_run` returns that run itself;
* :func:`benchmark` — any ``nn.Module`` on a suite's threats (``threat_model``, ``eps``, ``dataset``,
  ``n_examples``, ``device``), results in a SQLite store;
* :class:`Results` — the stored results as pandas DataFrames, per-example unions, a notebook display.

They live in :mod:`rome_bench.api` and :mod:`rome_bench.results` and are imported on first use, so that
``import rome_bench`` and the CLI stay light.

Examples
--------
>>> import rome_bench
>>> model = rome_bench.load_model("runs/rome+max-smoke")                          # doctest: +SKIP
>>> results = rome_bench.benchmark(model, threat_model="Linf", eps=8 / 255, n_examples=100)  # doctest: +SKIP
>>> results.leaderboard()                                                        # doctest: +SKIP
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Results", "benchmark", "load_model", "load_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rome_bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'rome_bench' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
