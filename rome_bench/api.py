"""The Python API: rome-bench's protocol from a notebook, results as pandas DataFrames.

    import rome_bench

    model = rome_bench.load_model("runs/rome+max-smoke")          # a run directory, or "file.py:Class"
    results = rome_bench.benchmark(model, suite="seen-pgd", n_examples=100, store="results.sqlite")
    results.leaderboard()                                           # the rows `rome-bench leaderboard` prints
    results.to_pandas()                                             # long: model, threat, column, example_id, correct
    results.matrix()                                                # wide: one row per (model, example)
    results.union(["pgd-l1", "pgd-linf"])                          # per-example worst case over any threat subset

``benchmark`` runs exactly what ``rome-bench eval`` runs (the same suites, seeds, per-example store and resume:
results already in the store are not recomputed), and ``rome-bench eval`` is built on the same functions: it loads
its model and test data with ``load_run_with_data`` (``--run``) or ``load_module_with_data`` (``--model``,
``--model-file``). A bare
``nn.Module`` taking [0, 1] images is accepted too; its ε and dataset come from ``preset``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rome_bench.device import resolve_device
from rome_bench.errors import ConfigError
from rome_bench.presets import preset as preset_config

if TYPE_CHECKING:
    import pandas as pd

    from rome_bench.data import LoadedDataset
    from rome_bench.evaluation.gating_analysis import GatingReport
    from rome_bench.evaluation.runner import LoadedRun
    from rome_bench.evaluation.sharding import Row, ShardingRequest, ShardJob
    from rome_bench.evaluation.store import ResultStore, SuiteRun
    from rome_bench.evaluation.suites import Suite
    from rome_bench.threats import Threat

LONG_COLUMNS = ["model", "model_hash", "dataset", "threat", "threat_key", "column", "example_id", "correct"]


def load_model(source: str | Path, weights: str | Path | None = None, preset: str = "cifar10",
               device: str | torch.device = "auto", model_dir: str | Path | None = None) -> LoadedRun:
    """A model to benchmark: a run directory written by ``rome-bench train``; ``hf:ORG/NAME`` (a folder written
    by ``rome-bench export-model``, from the Hugging Face Hub or its cache; ``hf:PATH``: a local one);
    ``robustbench:<name>`` or ``robustbench:<threat_model>/<name>`` (RobustBench's zoo, checkpoints in
    ``model_dir``, RobustBench's layout); or ``FILE.py:Class`` / ``module:Class`` (an nn.Module taking [0, 1]
    images, with optional ``weights``). Zoo and module models are evaluated under ``preset``'s dataset and ε."""
    from rome_bench.models.robustbench_zoo import is_zoo_source

    torch_device = _device(device)
    if (folder := shared_model_folder(source)) is not None:
        return load_run_with_data(folder, torch_device)[0]
    if not is_zoo_source(source) and Path(source).is_dir():
        return load_run_with_data(source, torch_device)[0]
    if not is_zoo_source(source) and ":" not in str(source):
        raise ConfigError(f"model source '{source}' is neither a run directory nor FILE.py:Class / module:Class")
    return load_module(source, weights, preset, torch_device, model_dir)


def load_run_with_data(run_dir: str | Path, device: str | torch.device = "auto",
                       data_dir: str | None = None) -> tuple[LoadedRun, LoadedDataset]:
    """A run directory written by ``rome-bench train`` and the test split it is evaluated on: its config's dataset,
    read from ``data_dir`` if given, else from where training read it (``rome-bench eval --run``)."""
    from rome_bench.checkpoint import read_run_config
    from rome_bench.data import load_dataset
    from rome_bench.evaluation.runner import load_run

    torch_device = _device(device)
    config = read_run_config(Path(run_dir))
    data = load_dataset(config.data.dataset, "test", data_dir or config.data.data_dir)
    return load_run(Path(run_dir), data.info, torch_device), data


def load_module(source: str | Path, weights: str | Path | None = None, preset: str = "cifar10",
                device: str | torch.device = "auto", model_dir: str | Path | None = None) -> LoadedRun:
    """A RobustBench zoo model (``robustbench:…``, checkpoints in ``model_dir``) or ``FILE.py:Class`` /
    ``module:Class`` (with optional ``weights``), as a benchmarkable model under ``preset``'s dataset and ε."""
    from rome_bench.evaluation.runner import load_external_run
    from rome_bench.models.robustbench_zoo import is_zoo_source

    torch_device = _device(device)
    if is_zoo_source(source):
        return load_zoo_run(str(source), preset, torch_device, model_dir)
    return load_external_run(str(source), Path(weights) if weights else None, preset_config(preset), torch_device)


def load_module_with_data(source: str | Path, weights: str | Path | None = None, preset: str = "cifar10",
                          device: str | torch.device = "auto", model_dir: str | Path | None = None,
                          data_dir: str | None = None) -> tuple[LoadedRun, LoadedDataset]:
    """:func:`load_module` and the test split of ``preset``'s dataset, read from ``data_dir`` if given, else from the
    preset's data dir (``rome-bench eval --model``, ``--model-file``). The data loads first: a missing dataset fails
    before a zoo checkpoint is downloaded."""
    from rome_bench.data import load_dataset

    torch_device = _device(device)
    if (folder := shared_model_folder(source)) is not None:  # a shared run carries its own dataset and ε
        return load_run_with_data(folder, torch_device, data_dir)
    config = preset_config(preset)
    data = load_dataset(config.data.dataset, "test", data_dir or config.data.data_dir)
    return load_module(source, weights, preset, torch_device, model_dir), data


def shared_model_folder(source: str | Path) -> Path | None:
    """The local run folder of a shared model source ``hf:…`` (``models/hub.py``); None for any other source."""
    from rome_bench.models.hub import is_hub_source, resolve_hub_source

    return resolve_hub_source(source) if is_hub_source(source) else None  # type: ignore[arg-type]


def _device(device: str | torch.device) -> torch.device:
    """A device name resolved (``auto``: CUDA when available), or a torch device as it is (a torchrun rank's)."""
    return device if isinstance(device, torch.device) else resolve_device(device)


def load_zoo_run(source: str, preset: str, device: torch.device, model_dir: str | Path | None = None) -> LoadedRun:
    """A RobustBench zoo model (its own normalisation inside) as a benchmarkable model under ``preset``'s ε."""
    import hashlib

    from rome_bench.evaluation.runner import LoadedRun
    from rome_bench.models import content_hash
    from rome_bench.models.robustbench_zoo import PREFIX, load_zoo_model, parse_zoo_source

    config = preset_config(preset)
    name, threat_model = parse_zoo_source(source)
    model = load_zoo_model(name, config.data.dataset, threat_model, model_dir).to(device).requires_grad_(False)
    identity = f"{content_hash(model)}/robustbench/{name}/{threat_model}"
    source = f"{PREFIX}{threat_model}/{name}"
    metadata = {"external": {"source": source, "weights": None}}
    return LoadedRun(model, config, metadata, hashlib.sha256(identity.encode()).hexdigest(), source, None)


def wrap_module(model: nn.Module, preset: str = "cifar10", label: str | None = None) -> LoadedRun:
    """A bare nn.Module (images in [0, 1]) as a benchmarkable model under ``preset``'s dataset and ε."""
    from rome_bench.evaluation.runner import LoadedRun
    from rome_bench.models import content_hash

    name = label or type(model).__name__
    metadata = {"external": {"source": f"python object {type(model).__module__}.{type(model).__qualname__}"}}
    return LoadedRun(model, preset_config(preset), metadata, f"{content_hash(model)}/{name}", name, None)


def benchmark(model: LoadedRun | nn.Module | str | Path, suite: str = "seen", n_examples: int | None = None,
              dataset: str | None = None, data_dir: str | None = None, store: str | Path | None = None,
              device: str = "auto", batch_size: int = 128, threats: Sequence[str] = (), label: str | None = None,
              preset: str = "cifar10", progress: bool = True, precision: str = "fp32",
              compile_backend: str | None = None) -> Results:
    """Evaluate ``model`` on every threat of ``suite`` over a fixed seeded test subset; per-example results go to
    ``store`` (a SQLite file; None = a temporary one that lives as long as the returned :class:`Results`).
    ``precision="bf16"`` runs the attacks under bf16 autocast (classification stays fp32); ``compile_backend``
    (e.g. ``"inductor"``) evaluates a ``torch.compile``d model at ``batch_size`` rows (``models/compiled.py``)."""
    from rome_bench.evaluation.suites import SUITES

    loaded = model if _is_loaded(model) else (
        wrap_module(model, preset, label) if isinstance(model, nn.Module) else load_model(model, preset=preset))
    chosen = SUITES.get(suite)
    torch_device = resolve_device(device)
    loaded.model.to(torch_device).eval()
    if compile_backend is not None:
        from rome_bench.evaluation.runner import compiled_run

        loaded = compiled_run(loaded, compile_backend, batch_size)
    data = test_data(loaded, dataset, data_dir)
    owner = None if store is not None else tempfile.TemporaryDirectory(prefix="rome-bench-")
    store_path = Path(store) if store is not None else Path(owner.name) / "results.sqlite"  # type: ignore[union-attr]
    planned, ids = plan(loaded, chosen, data, n_examples, threats)
    from rome_bench.evaluation.runner import attack_precision
    from rome_bench.evaluation.store import ResultStore

    with ResultStore(store_path) as results, attack_precision(precision, torch_device):
        evaluate_into(results, loaded, chosen.name, planned, data, ids, label or default_label(loaded), batch_size,
                      torch_device, progress, complete=not threats)
    return Results(store_path, chosen.name, data.info.name, [loaded.model_hash], owner)


def _is_loaded(model: object) -> bool:
    from rome_bench.evaluation.runner import LoadedRun

    return isinstance(model, LoadedRun)


def default_label(loaded: LoadedRun) -> str:
    """``method (run name)`` for a run, ``robustbench (name, threat model)`` for a zoo model, ``external
    (FILE:Class)`` for a module."""
    from rome_bench.models.robustbench_zoo import PREFIX, is_zoo_source

    if loaded.method is not None:
        folder = Path(str(loaded.source))
        if folder.parent.name == "snapshots" and folder.parents[1].name.startswith("models--"):  # the HF cache's
            return f"{loaded.method} (hf:{folder.parents[1].name.removeprefix('models--').replace('--', '/')})"
        return f"{loaded.method} ({folder.name})"
    if is_zoo_source(str(loaded.source)):
        threat_model, _, name = str(loaded.source).removeprefix(PREFIX).rpartition("/")
        return f"robustbench ({name}, {threat_model})"
    location, _, name = str(loaded.source).rpartition(":")
    return f"external ({Path(location).stem}:{name})" if name and location else f"external ({loaded.source})"


def test_data(loaded: LoadedRun, dataset: str | None = None, data_dir: str | None = None) -> LoadedDataset:
    """The test split the model is evaluated on: its config's dataset unless ``dataset`` names another."""
    from rome_bench.data import load_dataset

    config = loaded.config
    return load_dataset(dataset or config.data.dataset, "test", data_dir or config.data.data_dir)


def plan(loaded: LoadedRun, suite: Suite, data: LoadedDataset, n_examples: int | None = None,
         only: Sequence[str] = (), corruptions_dir: str | Path | None = None) -> tuple[list[Threat], list[int]]:
    """The threats (the suite's, or ``only`` some of them, clean always first) and the fixed seeded example ids;
    with ``corruptions_dir``, the corruption threats read CIFAR-10-C's .npy files from there instead of generating."""
    from rome_bench.data import evaluation_indices
    from rome_bench.evaluation.suites import with_corruptions_dir

    if n_examples is not None and n_examples < 1:
        raise ConfigError("n_examples must be >= 1")
    ids = evaluation_indices(len(data.dataset), n_examples or loaded.config.data.eval_examples)
    threats = select_threats(suite.build(loaded.config.threats), list(only), suite.name)
    return (threats if corruptions_dir is None else with_corruptions_dir(threats, Path(corruptions_dir))), ids


def evaluate_into(store: ResultStore, loaded: LoadedRun, suite: str, threats: list[Threat], data: LoadedDataset,
                  ids: list[int], label: str, batch_size: int = 128, device: torch.device | None = None,
                  progress: bool = True, complete: bool = True, union_only: bool = False) -> None:
    """Evaluate one model on planned threats and examples into an open store (skipping stored results)."""
    from rome_bench.evaluation.runner import evaluate_run

    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    evaluate_run(loaded, suite, threats, data, ids, store, batch_size, device or torch.device("cpu"), label,
                 progress, complete=complete, union_only=union_only)


def variant_rows(loaded: LoadedRun, label: str | None = None, gating_variant: str | None = None,
                 route_to_expert: str | None = None) -> list[Row]:
    """The leaderboard rows to evaluate: the model as trained, or under an inference-time ``gating_variant``
    (random, inverse, removed), or routed to one fixed expert (``route_to_expert`` K, or ``all``: one row each).
    Each row is its model, made when the row's turn comes (a variant is set on the shared model), and its label
    (``label`` or :func:`default_label`, plus the variant's suffix, e.g. `` [expert 2]``)."""
    from rome_bench.evaluation.runner import route_variants, variant_suffix, with_gating_variant

    variants = route_variants(loaded.model, route_to_expert) if route_to_expert is not None else [gating_variant]
    base = label or default_label(loaded)
    return [(partial(with_gating_variant, loaded, variant) if variant is not None else (lambda: loaded),
             base + variant_suffix(variant)) for variant in variants]


def evaluate_rows(rows: Sequence[Row], suite: Suite, threats: list[Threat], data: LoadedDataset, ids: list[int],
                  store: Path, batch_size: int = 128, device: torch.device | None = None, progress: bool = True,
                  complete: bool = True, union_only: bool = False, scales: list[float] | None = None,
                  plot: Path | None = None, echo: Callable[[str], None] = print,
                  sharding: ShardingRequest | None = None, job: ShardJob | None = None, argv: Sequence[str] = ()
                  ) -> None:
    """What ``rome-bench eval`` does: each row evaluated into ``store`` on the planned threats and examples, then
    the suite's leaderboard (Markdown) through ``echo`` once ``complete``; with ``scales``, an ε sweep of each row
    instead (its table, and its figure at ``plot``, by default in ./figures). With ``sharding``, the examples are
    cut into shards that its executor evaluates (Slurm tasks run ``job(cwd, argv …)``), merged by one writer."""
    from rome_bench.evaluation.render import render_leaderboard
    from rome_bench.evaluation.store import ResultStore
    from rome_bench.evaluation.sweep import default_plot_path, sweep_and_report

    device = device or torch.device("cpu")
    if sharding is not None:  # a gating variant is set on the shared model when its row's turn comes
        sharding.evaluate(list(rows), suite.name, threats, data, ids, store, batch_size, device, progress, complete,
                          echo=echo, job=job, argv=argv)
        return
    with ResultStore(store) as results:
        for make, label in rows:
            if scales is not None:
                sweep_and_report(make(), suite.name, threats, scales, data, ids, results, batch_size, device, label,
                                 progress, plot or default_plot_path(None, suite.name, data.info.name), echo)
                continue
            evaluate_into(results, make(), suite.name, threats, data, ids, label, batch_size, device, progress,
                          complete=complete, union_only=union_only)
            echo(f"evaluated {label} on suite '{suite.name}' ({len(ids)} examples) -> {results.path}")
        if scales is None and not complete:
            echo("only some threats were run: the suite's leaderboard row appears once all have been")
        elif scales is None:
            echo(render_leaderboard(results, suite, data.info.name))


def select_threats(threats: list[Threat], names: list[str], suite: str) -> list[Threat]:
    """The suite's threats restricted to ``names`` (plus clean); unknown or foreign names are errors."""
    from rome_bench.threats import THREATS

    if not names:
        return threats
    in_suite = [threat.name for threat in threats]
    for name in names:
        THREATS.get(name)  # an unregistered name fails with "did you mean"
        if name not in in_suite:
            raise ConfigError(f"threat '{name}' is not in suite '{suite}'; it has: {', '.join(in_suite)}")
    return [threat for threat in threats if threat.name == "clean" or threat.name in names]


def threat_name(threat_key: str) -> str:
    """The registry name in a threat key (``pgd-linf:1a2b…`` -> ``pgd-linf``)."""
    return threat_key.rsplit(":", 1)[0]


def analyse_gating(run: str | Path, suite: str = "seen", n_examples: int = 200, batch_size: int = 128,
                   store: str | Path | None = None, out: str | Path | None = None, data_dir: str | None = None,
                   device: str = "auto", map_images: int = 4, seed: int = 0, progress: bool = True
                   ) -> tuple[GatingReport, Path]:
    """``rome-bench analyze gating``: how a run's gates route the threats of ``suite`` on a seeded test subset
    (routing divergence and held-out threat classifier, stored in ``store`` for the leaderboard; KDE and activation
    map figures in ``out``, default RUN/figures). The report and the store's path."""
    from rome_bench.data import evaluation_indices
    from rome_bench.evaluation.gating_analysis import analyse_run
    from rome_bench.evaluation.store import ResultStore, store_or_default
    from rome_bench.evaluation.suites import SUITES

    chosen = SUITES.get(suite)
    torch_device = resolve_device(device)
    loaded, data = load_run_with_data(run, torch_device, data_dir)
    ids = evaluation_indices(len(data.dataset), n_examples, seed)
    threats = chosen.build(loaded.config.threats)
    with ResultStore(store_or_default(store)) as results:
        report = analyse_run(loaded, chosen.name, threats, data, ids, results, batch_size, torch_device,
                             Path(out or Path(run) / "figures"), progress, seed, map_images)
    return report, results.path


def plot_training(runs: Sequence[str | Path], out: str | Path = "training-curves.png") -> tuple[Path, list[str]]:
    """``rome-bench plot training``: union robustness against training wall-clock time of runs trained with
    ``train.eval_every`` (paper Fig. 8), drawn to ``out``; the figure's path and one summary line per run."""
    from rome_bench.checkpoint import read_run_config, read_training_curve
    from rome_bench.evaluation.plots import plot_training_curves

    curves = {}
    for run_dir in map(Path, runs):
        read_run_config(run_dir)  # not a run directory: one line that says so, before its curve is looked for
        records = read_training_curve(run_dir)
        if not records:
            raise ConfigError(f"{run_dir} has no training curve; train it with --eval-every N (e.g. 50)")
        curves[f"{read_run_config(run_dir).method} ({run_dir.name})"] = records
    written = plot_training_curves(curves, Path(out), "union robustness vs training time")
    lasts = {label: records[-1] for label, records in curves.items()}
    return written, [f"{label}: step {last['step']}, {last['wall_seconds'] / 60:.1f} min, union "
                     f"{100 * last['accuracy']['union']:.1f}% (n={last['n']})" for label, last in lasts.items()]


def list_entries(kind: str) -> list[str]:
    """The lines ``rome-bench list KIND`` prints: each registered entry of a kind (threats, models, methods or
    recipes, families, routing-losses, datasets, suites, presets) with its metadata; a routing loss's default λ; a
    suite's threats with their exact parameters at the cifar10 preset's ε."""
    from rome_bench.data import DATASETS
    from rome_bench.evaluation.suites import SUITES
    from rome_bench.models import FAMILIES, MODELS
    from rome_bench.presets import PRESETS
    from rome_bench.threats import THREATS
    from rome_bench.training import recipes as _recipes  # noqa: F401  (registers the built-in recipes)
    from rome_bench.training.recipe import RECIPES
    from rome_bench.training.routing import ROUTING_LOSSES

    if kind == "presets":
        return list(PRESETS)
    registries = {"threats": THREATS, "models": MODELS, "methods": RECIPES, "recipes": RECIPES, "families": FAMILIES,
                  "routing-losses": ROUTING_LOSSES, "datasets": DATASETS, "suites": SUITES}
    if kind not in registries:
        raise ConfigError(f"unknown kind '{kind}'; choose one of: {', '.join([*registries, 'presets'])}")
    lines = []
    for entry in registries[kind].entries():
        extra = {"default_weight": entry.obj.default_weight} if kind == "routing-losses" else {}
        metadata = {**entry.metadata, **extra}
        details = ", ".join(f"{k}={v}" for k, v in metadata.items())
        lines.append(f"{entry.name:16s} {details}")
        if kind == "suites":  # the exact parameters, at the cifar10 preset's ε
            lines += [f"{'':16s}   {threat!r}" for threat in entry.obj.build(PRESETS["cifar10"]().threats)]
    return lines


@dataclass
class Results:
    """Stored results of one or more models on one suite: a view on the SQLite store, read on demand."""

    store_path: Path
    suite: str
    dataset: str  # the dataset's name (e.g. cifar10)
    model_hashes: list[str]
    _owner: Any = None  # keeps a temporary store alive

    @classmethod
    def from_store(cls, store: str | Path, suite: str, dataset: str | None = None) -> Results:
        """Every model with a completed run of ``suite`` in an existing store (as ``rome-bench leaderboard``)."""
        from rome_bench.evaluation.store import ResultStore

        with ResultStore(store) as results:
            runs = results.suite_runs(suite, dataset)
        if not runs:
            raise ConfigError(f"no completed '{suite}' run in {store}; run rome-bench eval --suite {suite} first")
        return cls(Path(store), suite, dataset or runs[0].dataset_name, [run.model_hash for run in runs])

    def _runs(self, results: ResultStore) -> list[SuiteRun]:
        wanted = set(self.model_hashes)
        return [run for run in results.suite_runs(self.suite, self.dataset) if run.model_hash in wanted]

    def to_pandas(self) -> pd.DataFrame:
        """Long format, one row per (model, threat, example): model, model_hash, dataset, threat, threat_key, column,
        example_id, correct. Threats that do not apply to a model, and examples a union-only cascade skipped, have
        no rows."""
        import pandas as pd

        from rome_bench.evaluation.store import ResultStore

        records = []
        with ResultStore(self.store_path) as results:
            for run in self._runs(results):
                for key in run.threat_keys:
                    if results.not_applicable(run.model_hash, key, run.dataset):
                        continue
                    correct = results.correctness(run.model_hash, key, run.dataset)
                    name, column = threat_name(key), results.threat_column(key)
                    records.extend((run.label, run.model_hash, run.dataset_name, name, key, column, i, correct[i])
                                   for i in run.example_ids if i in correct)
        frame = pd.DataFrame.from_records(records, columns=LONG_COLUMNS)
        return frame.astype({"correct": bool, "example_id": int})

    def matrix(self) -> pd.DataFrame:
        """Wide format: one row per (model, example), one column per threat (1 robust, 0 not, missing = not attacked
        or not applicable), and ``union`` (robust under every stored threat of the suite)."""
        from rome_bench.evaluation.export import matrix_frame
        from rome_bench.evaluation.store import ResultStore

        with ResultStore(self.store_path) as results:
            frame = matrix_frame(results, self._suite(), self.dataset)
        frame = frame[frame["model_hash"].isin(self.model_hashes)]
        return frame.rename(columns={"label": "model"}).set_index(["model", "example_id"])

    def leaderboard(self, references: Sequence[str] = ()) -> pd.DataFrame:
        """The leaderboard rows (accuracy in %, union per example), as ``rome-bench leaderboard`` prints them."""
        import pandas as pd

        rows = self.rows(references)
        suite = self._suite()
        from rome_bench.evaluation.table import table_columns

        columns = [column for column, _ in table_columns(suite, rows)]
        records = [{"model": row.label, "source": row.source, "n": row.n,
                    **{column: 100 * row.values[column] if column in row.values else None for column in columns}}
                   for row in rows]
        return pd.DataFrame.from_records(records, columns=["model", "source", "n", *columns])

    def rows(self, references: Sequence[str] = ()) -> list[Any]:
        """The leaderboard's :class:`~rome_bench.evaluation.table.Row` objects (with intervals, flags, costs)."""
        from rome_bench.evaluation.leaderboard import build_leaderboard
        from rome_bench.evaluation.reference import load_reference
        from rome_bench.evaluation.store import ResultStore

        reference_rows = [row for name in references for row in load_reference(name)]
        with ResultStore(self.store_path) as results:
            rows = build_leaderboard(results, self._suite(), self.dataset, reference_rows)
        wanted = set(self.model_hashes)
        return [row for row in rows if row.model_hash is None or row.model_hash in wanted]

    def union(self, threats: Sequence[str]) -> pd.Series:
        """Per model, the fraction of examples robust to every threat named (threat names or columns), computed per
        example; an example a threat did not attack because it was already misclassified clean counts as broken."""
        long = self.to_pandas()
        if long.empty:
            raise ConfigError(f"no stored results for suite '{self.suite}'")
        chosen = long[long["threat"].isin(threats) | long["column"].isin(threats)]
        unknown = [name for name in threats if name not in set(long["threat"]) | set(long["column"])]
        if unknown:
            known = ", ".join(sorted(set(long["threat"])))
            raise ConfigError(f"threat '{unknown[0]}' has no results in suite '{self.suite}'; stored: {known}")
        robust = chosen.groupby(["model", "example_id"])["correct"].all()
        return robust.groupby(level="model").mean().rename("union")

    def _suite(self) -> Suite:
        from rome_bench.evaluation.suites import SUITES

        return SUITES.get(self.suite)
