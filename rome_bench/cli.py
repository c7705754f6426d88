"""The ``rome-bench`` command: train, eval, leaderboard, list.

Every error a user can cause is a RomeBenchError: printed as one line ``error: …`` on stderr, exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rome_bench.config import RunConfig, apply_override, preset, validate
from rome_bench.errors import ConfigError, RomeBenchError

if TYPE_CHECKING:  # the heavy modules are imported by the commands that need them
    from rome_bench.evaluation.store import ResultStore
    from rome_bench.threats import Threat

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  no_args_is_help=True, help="Train and evaluate models against multiple adversarial threats.")


def _flag_overrides(**flags: object) -> list[str]:
    """Turn the named flags that were given into config overrides."""
    paths = {
        "method": "train.method", "dataset": "data.dataset", "data_dir": "data.data_dir",
        "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
        "train_size": "data.train_size", "backbone": "model.backbone", "num_experts": "model.rome.num_experts",
        "rank": "model.rome.rank", "lambda_div": "model.rome.lambda_div", "seed": "train.seed",
        "device": "train.device", "checkpoint_every": "train.checkpoint_every", "eps_l1": "threats.eps.l1",
        "eps_l2": "threats.eps.l2", "eps_linf": "threats.eps.linf", "pretrained": "model.pretrained",
    }
    return [f"{paths[name]}={value}" for name, value in flags.items() if value is not None]


def resolve_config(base: RunConfig, assignments: list[str]) -> RunConfig:
    config = base
    for assignment in assignments:
        config = apply_override(config, assignment)
    validate(config)
    return config


@app.command()
def train(
    method: Annotated[str | None, typer.Option(help="Training recipe, e.g. rome+max, max, random, avg.")] = None,
    preset_name: Annotated[str | None, typer.Option(
        "--preset", help="smoke | cifar10 | imagenet100 | imagenet1k (default cifar10; on --resume the run's)",
    )] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<method>-<preset>).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (smoke uses synthetic).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Local data: folder or .tar.gz (see README).")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    train_size: Annotated[int | None, typer.Option(help="Train on a seeded subset of this size.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Model registry name, e.g. vit_base.")] = None,
    num_experts: Annotated[int | None, typer.Option("--experts", help="Number of LoRA experts K.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank r of each expert.")] = None,
    lambda_div: Annotated[float | None, typer.Option(help="Weight λ of the diversification loss.")] = None,
    eps_l1: Annotated[float | None, typer.Option()] = None,
    eps_l2: Annotated[float | None, typer.Option()] = None,
    eps_linf: Annotated[float | None, typer.Option()] = None,
    pretrained: Annotated[str | None, typer.Option(help="Local backbone weights to start from.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config field: section.field=value.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a model with a multi-perturbation adversarial training recipe."""
    from rome_bench.training.methods import METHODS
    from rome_bench.training.trainer import Trainer, read_run_config

    overrides = _flag_overrides(method=method, dataset=dataset, data_dir=data_dir, epochs=epochs,
                                batch_size=batch_size, lr=lr, train_size=train_size, backbone=backbone,
                                num_experts=num_experts, rank=rank, lambda_div=lambda_div, eps_l1=eps_l1,
                                eps_l2=eps_l2, eps_linf=eps_linf, pretrained=pretrained, seed=seed, device=device,
                                checkpoint_every=checkpoint_every)
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: resume a run or overwrite it, not both")
    if resume and out is None:
        raise ConfigError("--resume needs --out DIR, the run directory to continue")
    base = preset(preset_name or "cifar10")
    if resume and preset_name is None:
        base = read_run_config(out)  # type: ignore[arg-type]
    config = resolve_config(base, overrides + list(set_ or []))
    METHODS.get(config.train.method)  # an unknown method fails here, before anything is written
    run_dir = out or Path("runs") / f"{config.train.method}-{config.preset}"
    final = Trainer(config, run_dir, progress=progress).fit(resume=resume, force=force)
    typer.echo(f"trained {config.train.method} ({config.preset}) -> {final.parent}")


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Option(help="Run directory written by rome-bench train.")],
    suite: Annotated[str, typer.Option(help="Threat suite, e.g. seen.")] = "seen",
    threat: Annotated[list[str] | None, typer.Option(
        help="Only this threat of the suite (repeatable); clean always runs. The leaderboard needs them all.")] = None,
    n_examples: Annotated[int | None, typer.Option(help="Size of the fixed, seeded test subset.")] = None,
    store: Annotated[Path | None, typer.Option(help="SQLite results store (default: in the cache dir).")] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    data_dir: Annotated[str | None, typer.Option(help="Where the test data is, if not where training read it.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    label: Annotated[str | None, typer.Option(help="Row label in leaderboards (default: method + run name).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Evaluate a trained run on every threat of a suite; results go to the store per example."""
    from rome_bench.data import evaluation_indices, load_dataset
    from rome_bench.evaluation.runner import evaluate_run, load_run
    from rome_bench.evaluation.store import ResultStore
    from rome_bench.evaluation.suites import SUITES
    from rome_bench.training.trainer import read_run_config, resolve_device

    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if n_examples is not None and n_examples < 1:
        raise ConfigError("--n-examples must be >= 1")
    chosen_suite = SUITES.get(suite)
    torch_device = resolve_device(device)
    config = read_run_config(run)
    data = load_dataset(config.data.dataset, "test", data_dir or config.data.data_dir)
    loaded = load_run(run, data.info, torch_device)
    ids = evaluation_indices(len(data.dataset), n_examples or loaded.config.data.eval_examples)
    threats = select_threats(chosen_suite.build(loaded.config.threats), threat or [], suite)
    row_label = label or f"{loaded.config.train.method} ({run.name})"
    with ResultStore(store or default_store()) as results:
        evaluate_run(loaded, chosen_suite.name, threats, data, ids, results, batch_size, torch_device, row_label,
                     progress, complete=not threat)
        typer.echo(f"evaluated {row_label} on suite '{suite}' ({len(ids)} examples) -> {results.path}")
        if threat:
            typer.echo("only some threats were run: the suite's leaderboard row appears once all have been")
            return
        _print_leaderboard(results, chosen_suite.name, data.info.name, "md", [])


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


@app.command()
def leaderboard(
    suite: Annotated[str, typer.Option(help="Threat suite, e.g. seen.")] = "seen",
    format_: Annotated[str, typer.Option("--format", help="md | csv | json")] = "md",
    dataset: Annotated[str | None, typer.Option(help="Only this dataset (e.g. cifar10, synthetic).")] = None,
    reference: Annotated[list[str] | None, typer.Option(
        help="Add rows reported by a paper, e.g. rome-paper-table1 (a name in leaderboards/ or a path).")] = None,
    store: Annotated[Path | None, typer.Option(help="SQLite results store (default: in the cache dir).")] = None,
) -> None:
    """Print the leaderboard of a suite: per-threat, Avg and per-example Union accuracy, sorted by Union."""
    from rome_bench.evaluation.store import ResultStore
    from rome_bench.evaluation.suites import SUITES

    chosen = SUITES.get(suite)
    path = store or default_store()
    if store is not None and not store.exists():
        raise RomeBenchError(f"results store {store} does not exist; run rome-bench eval --store {store} first")
    with ResultStore(path) as results:
        _print_leaderboard(results, chosen.name, dataset, format_, list(reference or []))


def _print_leaderboard(results: ResultStore, suite: str, dataset: str | None, format_: str,
                       references: list[str]) -> None:
    from rome_bench.evaluation.leaderboard import RENDERERS, build_leaderboard
    from rome_bench.evaluation.reference import load_reference
    from rome_bench.evaluation.suites import SUITES

    if format_ not in RENDERERS:
        raise ConfigError(f"unknown format '{format_}'; choose one of: {', '.join(RENDERERS)}")
    chosen = SUITES.get(suite)
    reference_rows = [row for name in references for row in load_reference(name)]
    rows = build_leaderboard(results, chosen, dataset, reference_rows)
    typer.echo(RENDERERS[format_](rows, chosen))


@app.command("list")
def list_entries(
    kind: Annotated[str, typer.Argument(help="threats | models | methods | datasets | suites | presets")],
) -> None:
    """List registered entries with their metadata."""
    from rome_bench.config import PRESETS
    from rome_bench.data import DATASETS
    from rome_bench.evaluation.suites import SUITES
    from rome_bench.models import MODELS
    from rome_bench.threats import THREATS
    from rome_bench.training.methods import METHODS

    if kind == "presets":
        for name in PRESETS:
            typer.echo(name)
        return
    registries = {"threats": THREATS, "models": MODELS, "methods": METHODS, "datasets": DATASETS, "suites": SUITES}
    if kind not in registries:
        raise ConfigError(f"unknown kind '{kind}'; choose one of: {', '.join([*registries, 'presets'])}")
    for entry in registries[kind].entries():
        details = ", ".join(f"{k}={v}" for k, v in entry.metadata.items())
        typer.echo(f"{entry.name:16s} {details}")


def default_store() -> Path:
    from rome_bench.data import cache_dir

    return cache_dir() / "results.sqlite"


def _click_error_classes() -> tuple[type[Exception], type[Exception]]:
    """(UsageError, ClickException) of the click that typer runs on (typer ≥ 0.2x vendors its own copy)."""
    bases = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    return bases["UsageError"], bases["ClickException"]


def main() -> None:
    usage_error, click_exception = _click_error_classes()
    try:
        code = app(standalone_mode=False)
    except usage_error as error:  # a bad flag or value: one line that names it
        if type(error).__name__ == "NoArgsIsHelpError":
            print(error.format_message())  # type: ignore[attr-defined]
            sys.exit(0)
        context = error.ctx  # type: ignore[attr-defined]
        hint = f" (see rome-bench {context.info_name} --help)" if context is not None and context.parent else ""
        print(f"error: {error.format_message()}{hint}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(2)
    except click_exception as error:
        print(f"error: {error.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(error.exit_code)  # type: ignore[attr-defined]
    except RomeBenchError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted: checkpoints and stored results written so far are intact", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
