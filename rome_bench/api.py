"""The Python API, shaped like RobustBench's and torchattacks': load a model, benchmark it, read the results.

    import rome_bench

    model = rome_bench.load_model("runs/rome+max-smoke")   # an nn.Module on [0, 1] images; model.rome_bench: its run
    logits = model(images)                                  # callable like any classifier
    results = rome_bench.benchmark(model, threat_model="Linf", eps=8 / 255, n_examples=100, store="results.sqlite")
    results                                                 # in a notebook: the leaderboard, 95% Wilson intervals
    results.leaderboard()                                   # the rows `rome-bench leaderboard` prints
    results.to_pandas()                                     # long: model, threat, column, example_id, correct
    results.union(["pgd-l1", "pgd-linf"])                   # per-example worst case over any threat subset

``benchmark`` runs exactly what ``rome-bench eval`` runs (the same suites, seeds, per-example store and resume:
results already in the store are not recomputed), and ``rome-bench eval`` is built on the same functions: it loads
its model and test data with ``load_run_with_data`` (``--run``) or ``load_module_with_data`` (``--model``,
``--model-file``). Any ``nn.Module`` taking [0, 1] images is accepted; its ε and dataset come from ``preset``
unless ``eps`` and ``dataset`` say otherwise. ε overrides change the threats' parameters, hence their store keys:
results at different budgets never mix, and leaderboards never rank them together.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
from torch import nn

from rome_bench.device import resolve_device
from rome_bench.errors import ConfigError
from rome_bench.presets import preset as preset_config
from rome_bench.results import Results

if TYPE_CHECKING:
    from rome_bench.data import LoadedDataset
    from rome_bench.evaluation.gating_analysis import GatingReport
    from rome_bench.evaluation.runner import LoadedRun
    from rome_bench.evaluation.sharding import Row, ShardingRequest, ShardJob
    from rome_bench.evaluation.store import ResultStore
    from rome_bench.evaluation.suites import Suite
    from rome_bench.models.describe import ModelDescription
    from rome_bench.registry import Registry
    from rome_bench.threats import Threat

def load_model(source: str | Path, weights: str | Path | None = None, preset: str = "cifar10",
               device: str | torch.device = "auto", model_dir: str | Path | None = None) -> nn.Module:
    """A classifier to benchmark or to attack: an ``nn.Module`` taking images in [0, 1] and returning logits.

    Its normalisation is inside it, as in RobustBench's and torchattacks' models. What rome-bench knows about it
    (run config, content hash, method, source) stays reachable as ``model.rome_bench`` (a ``LoadedRun``, which
    :func:`load_run` returns directly), and :func:`benchmark` uses it.

    Parameters
    ----------
    source : str or Path
        A run directory written by ``rome-bench train``; ``hf:ORG/NAME`` (a folder written by
        ``rome-bench export-model``, from the Hugging Face Hub or its cache; ``hf:PATH``: a local one);
        ``robustbench:<name>`` or ``robustbench:<threat_model>/<name>`` (RobustBench's zoo, checkpoints in
        ``model_dir``); or ``FILE.py:Class``
        / ``module:Class`` (an ``nn.Module`` taking [0, 1] images).
    weights : str or Path, optional
        Weights (.safetensors or .pt) for a ``FILE.py:Class`` source.
    preset : str, default "cifar10"
        For zoo and module sources: the preset whose dataset and ε they are evaluated under.
    device : str or torch.device, default "auto"
        Where the model goes (``auto``: CUDA when available).
    model_dir : str or Path, optional
        RobustBench checkpoints, laid out ``<dir>/<dataset>/<threat_model>/<name>.pt``.

    Returns
    -------
    torch.nn.Module
        The model in eval mode, with the run's metadata as ``model.rome_bench``.

    Raises
    ------
    ConfigError
        When ``source`` is neither a run directory nor a module or zoo source.

    Examples
    --------
    >>> model = rome_bench.load_model("runs/rome+max-smoke")  # doctest: +SKIP
    >>> logits = model(torch.rand(8, 3, 32, 32))              # doctest: +SKIP
    >>> model.rome_bench.config.threats.eps                   # doctest: +SKIP
    {'l1': 12.0, 'l2': 0.5, 'linf': 0.03137254901960784}
    """
    return as_module(load_run(source, weights, preset, device, model_dir))


def as_module(loaded: LoadedRun) -> nn.Module:
    """The loaded run's model, in eval mode, carrying the run as ``model.rome_bench``."""
    model = loaded.model.eval()
    model.__dict__["rome_bench"] = loaded  # a plain attribute: not a submodule, not in the state dict
    return model


def load_run(source: str | Path, weights: str | Path | None = None, preset: str = "cifar10",
             device: str | torch.device = "auto", model_dir: str | Path | None = None) -> LoadedRun:
    """What :func:`load_model` loads, as rome-bench holds it: the model with its config, hash, method and source.

    Parameters
    ----------
    source, weights, preset, device, model_dir
        As for :func:`load_model`.

    Returns
    -------
    LoadedRun
        ``.model`` (the ``nn.Module``), ``.config`` (its ``RunConfig``: dataset, ε, steps), ``.model_hash``,
        ``.source`` and ``.method`` (None for a model not trained by rome-bench).

    Examples
    --------
    >>> run = rome_bench.load_run("runs/rome+max-smoke")  # doctest: +SKIP
    >>> run.method, run.model_hash[:8]                      # doctest: +SKIP
    ('rome+max', '1a2b3c4d')
    """
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
              device: str | torch.device = "auto", batch_size: int = 128, threats: Sequence[str] = (),
              label: str | None = None, preset: str = "cifar10", progress: bool = True, precision: str = "fp32",
              compile_backend: str | None = None, threat_model: str | None = None,
              eps: float | Mapping[str, float] | None = None) -> Results:
    """Evaluate a model on a suite's threats over a fixed seeded test subset, as ``rome-bench eval`` does.

    Any ``nn.Module`` taking images in [0, 1] works, as with RobustBench's ``benchmark``; a model from
    :func:`load_model` brings its run's dataset, ε and steps. Per-example results go to ``store``; results already
    there are not recomputed.

    Suites (``rome-bench list suites`` gives their exact threats): ``seen`` (AutoAttack-standard ℓ1/ℓ2/ℓ∞, the
    paper's protocol), ``seen-plus``, ``seen-rand``, ``seen-apgd`` (APGD-CE then APGD-T), ``seen-pgd`` (PGD with
    the run's eval steps), ``seen-pgd10``, ``unseen`` (corruptions, perceptual and other unseen threats; PPGD and
    LPA with AlexNet-LPIPS, the paper's), ``unseen-self`` (the same with the model's own LPIPS), ``adaptive``
    (AutoAttack vs AutoAttack plus router-aware APGD and GMA), ``gma-pgd`` (PGD, GMA and their union), ``dwf``,
    ``remoe`` (ReMoE's PGD-20 and C&W-20), ``pgd20``, ``apgd20``.

    Parameters
    ----------
    model : nn.Module or str or Path or LoadedRun
        The classifier (normalisation inside; logits out), or a source :func:`load_model` accepts.
    suite : str, default "seen"
        The threat suite, one of those listed above.
    n_examples : int, optional
        Test examples (a fixed seeded subset); default: the config's ``data.eval_examples``.
    dataset : str, optional
        The test set (``rome-bench list datasets``); default: the model's (the preset's for a bare module).
    data_dir : str, optional
        Where the dataset is read from.
    store : str or Path, optional
        The SQLite results store; default: a temporary one that lives as long as the returned :class:`Results`.
    device : str or torch.device, default "auto"
        Where to evaluate (``auto``: CUDA when available).
    batch_size : int, default 128
        Examples per attack batch.
    threats : sequence of str, optional
        Only these threats of the suite (registry names, e.g. ``pgd-linf``); clean always runs.
    label : str, optional
        The model's row label in leaderboards.
    preset : str, default "cifar10"
        For a bare module: the preset whose dataset, ε and steps to use.
    progress : bool, default True
        Show progress bars.
    precision : {"fp32", "bf16"}, default "fp32"
        ``bf16`` runs the model's passes inside attacks under bf16 autocast (classification stays fp32).
    compile_backend : str, optional
        ``torch.compile`` the model with this backend (e.g. ``inductor``) for ``batch_size`` rows.
    threat_model : {"Linf", "L2", "L1"}, optional
        RobustBench's name (or ``linf``, ``l2``, ``l1``): only the suite's threats of this norm (and clean).
    eps : float or dict of str to float, optional
        The budget: one number for ``threat_model``'s norm, or ε per norm (``{"linf": 4/255, "l2": 0.25}``).
        It is part of each threat's parameters and store key: leaderboards never rank it with other budgets.

    Returns
    -------
    Results
        The stored results of this model on the suite; in a notebook it displays as its leaderboard.

    Raises
    ------
    ConfigError
        On an unknown suite, threat, threat model or dataset, or an ε that is not a positive number.

    Examples
    --------
    >>> net = ImageClassifier(MODELS.get("vit_micro")(num_classes=10, image_size=32, patch_size=8),
    ...                       mean=(0.5,) * 3, std=(0.25,) * 3)                            # doctest: +SKIP
    >>> results = rome_bench.benchmark(net, suite="seen-pgd", threat_model="Linf", eps=8 / 255, n_examples=16,
    ...                                preset="smoke", progress=False)                    # doctest: +SKIP
    >>> results.leaderboard()                                                            # doctest: +SKIP
    """
    from rome_bench.evaluation.budgets import budgets, norm_threats, with_eps
    from rome_bench.evaluation.suites import SUITES

    norm, eps_by_norm = budgets(threat_model, eps)
    loaded = with_eps(_loaded(model, preset, label), eps_by_norm)
    chosen = SUITES.get(suite)
    torch_device = _device(device)
    loaded.model.to(torch_device).eval()
    if compile_backend is not None:
        from rome_bench.evaluation.runner import compiled_run

        loaded = compiled_run(loaded, compile_backend, batch_size)
    data = test_data(loaded, dataset, data_dir)
    only = [*threats, *norm_threats(loaded, chosen, norm)]
    owner = None if store is not None else tempfile.TemporaryDirectory(prefix="rome-bench-")
    store_path = Path(store) if store is not None else Path(owner.name) / "results.sqlite"  # type: ignore[union-attr]
    planned, ids = plan(loaded, chosen, data, n_examples, only)
    from rome_bench.evaluation.runner import attack_precision
    from rome_bench.evaluation.store import ResultStore, SuiteRun

    with ResultStore(store_path) as results, attack_precision(precision, torch_device):
        evaluate_into(results, loaded, chosen.name, planned, data, ids, label or default_label(loaded), batch_size,
                      torch_device, progress, complete=not only)
    partial = [SuiteRun(loaded.model_hash, chosen.name, data.fingerprint, data.info.name,
                        [threat.key for threat in planned], ids, label or default_label(loaded), loaded.method)]
    return Results(store_path, chosen.name, data.info.name, [loaded.model_hash], owner, partial if only else [])


def _loaded(model: LoadedRun | nn.Module | str | Path, preset: str, label: str | None) -> LoadedRun:
    """The model as a LoadedRun: as given, the run a :func:`load_model` module carries, a bare module wrapped
    under ``preset``, or a source loaded."""
    if _is_loaded(model):
        return model
    if isinstance(model, nn.Module):
        attached = getattr(model, "rome_bench", None)
        if _is_loaded(attached) and attached.model is model:
            return attached
        return wrap_module(model, preset, label)
    return load_run(cast("str | Path", model), preset=preset)


def _is_loaded(model: object) -> TypeGuard[LoadedRun]:
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
    for threat in threats:  # a missing file (AlexNet-LPIPS's weights) fails before a store is opened
        threat.require()
    return (threats if corruptions_dir is None else with_corruptions_dir(threats, Path(corruptions_dir))), ids


def evaluate_into(store: ResultStore, loaded: LoadedRun, suite: str, threats: list[Threat], data: LoadedDataset,
                  ids: list[int], label: str, batch_size: int = 128, device: torch.device | None = None,
                  progress: bool = True, complete: bool = True, union_only: bool = False,
                  draws: int | None = None) -> None:
    """Evaluate one model on planned threats and examples into an open store (skipping stored results);
    ``draws``: classifications per image, each example's worst case (default: the suite's)."""
    from rome_bench.evaluation.runner import evaluate_run

    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    evaluate_run(loaded, suite, threats, data, ids, store, batch_size, device or torch.device("cpu"), label,
                 progress, complete=complete, union_only=union_only, draws=draws)


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
                  sharding: ShardingRequest | None = None, job: ShardJob | None = None, argv: Sequence[str] = (),
                  draws: int | None = None) -> None:
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
                          complete=complete, union_only=union_only, draws=draws)
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


def describe(method: str = "rome+max", preset: str | None = None,
             assignments: Sequence[str] = ()) -> ModelDescription:
    """Parameters by part (total, backbone, experts, gates, L_div projections) and forward multiply-adds per image of
    the model ``rome-bench train --method METHOD --preset PRESET`` with ``assignments`` would train; built on the CPU,
    no data read (paper Table 6, Table A4: :mod:`rome_bench.models.describe`)."""
    from rome_bench.models.describe import describe_model
    from rome_bench.models.family import with_stored_options
    from rome_bench.training.overrides import resolve_config

    config = with_stored_options(resolve_config(preset_config(preset or "cifar10"),
                                                [f"train.method={method}", *assignments]))
    return describe_model(config.model, config.data.dataset)


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
        from rome_bench.presets import preset_lines

        return [line for name in PRESETS for line in preset_lines(name)]
    registries: dict[str, Registry[Any]] = {
        "threats": THREATS, "models": MODELS, "methods": RECIPES, "recipes": RECIPES, "families": FAMILIES,
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
