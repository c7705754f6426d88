"""The ``rome-bench`` command: its flags, parsed and handed to ``api.py`` or to the module that does the work.

Every error a user can cause is a RomeBenchError: printed as one line ``error: …`` on stderr, exit code 2.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Annotated

import typer

from rome_bench.cli_support import auto_progress, plain_metavars, show_version
from rome_bench.errors import ConfigError, RomeBenchError
from rome_bench.presets import PRESETS

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  no_args_is_help=True, context_settings=HELP_OPTIONS,
                  help="Train and evaluate models against multiple adversarial threats.")


def _show_version(value: bool) -> None:
    from rome_bench import __version__

    show_version(value, __version__)


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_show_version, help="Print rome-bench's version and exit.")] = False
          ) -> None:
    """Train and evaluate models against multiple adversarial threats."""


# Flags that several commands share, each declared once (typer copies an option's settings into every command).
Store = Annotated[Path | None, typer.Option(help="SQLite results store (default: ./rome-bench.sqlite, one per "
                                                "directory, or $ROME_BENCH_STORE).")]
Progress = Annotated[bool | None, typer.Option(
    callback=auto_progress, help="Show progress bars (default: when stderr is a terminal).")]
DEVICE = typer.Option(help="auto | cpu | cuda | cuda:N")
N_EXAMPLES = typer.Option(help="Size of the fixed, seeded test subset.")
BatchSize = Annotated[int, typer.Option()]
TestDataDir = Annotated[str | None, typer.Option(help="Where the test data is, if not where training read it.")]
Suite = Annotated[str, typer.Option(help="Threat suite, e.g. seen.")]
DatasetFilter = Annotated[str | None, typer.Option(help="Only this dataset (e.g. cifar10, synthetic).")]


@app.command()
def train(
    method: Annotated[str | None, typer.Option(
        help="Training recipe, optionally on a family: max, msd, ramp, … or rome+max (see rome-bench list methods)."
    )] = None,
    family: Annotated[str | None, typer.Option(
        help="Model family: plain | rome | … (see rome-bench list families); overrides the --method prefix.")] = None,
    train_attack: Annotated[str | None, typer.Option(
        help="ℓp training attack: pgd (the preset's steps) | apgd (threats.apgd_steps, best-loss iterate).")] = None,
    init: Annotated[str | None, typer.Option(
        help="Fine-tune: start from a run directory or weights file (experts added to it start at B = 0).")] = None,
    preset_name: Annotated[str | None, typer.Option(
        "--preset", help=f"{' | '.join(PRESETS)}, or a family's (rome-bench list presets); default cifar10, "
                         f"on --resume the run's")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<method>-<preset>).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (smoke uses synthetic).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Local data: folder or .tar.gz (docs/presets.md, Data).")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    train_size: Annotated[int | None, typer.Option(help="Train on a seeded subset of this size.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Model registry name, e.g. vit_base.")] = None,
    experts: Annotated[str | None, typer.Option(
        help="Expert architecture: lora (RoME) | ffn (K FFNs replacing the MLP) | adapter (Houlsby).")] = None,
    num_experts: Annotated[int | None, typer.Option(help="Number of experts K.")] = None,
    top_k: Annotated[int | None, typer.Option(
        help="ffn experts: route each token to its k largest-gated experts only (sparse dispatch); 0 = dense.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank r of each expert (adapter: bottleneck width).")] = None,
    expert_layers: Annotated[str | None, typer.Option(
        help="Where experts go: comma-separated subset of qkv,proj,fc1,fc2 (WRN: conv1,conv2); default qkv,proj.")
    ] = None,
    gating: Annotated[str | None, typer.Option(
        help="none | local | global | dual | dual-inverted | dual-learned | dual-cls (default dual).")] = None,
    beta_s: Annotated[float | None, typer.Option(help="s of β(l) = σ(s(1 − l/L) − b).")] = None,
    beta_b: Annotated[float | None, typer.Option(help="b of β(l).")] = None,
    routing_loss: Annotated[str | None, typer.Option(
        help="A routing loss (rome-bench list routing-losses) or none (default diversification).")] = None,
    routing_weight: Annotated[float | None, typer.Option(
        "--routing-weight", "--lambda", help="λ of the routing loss (default: the loss's own; rome-bench list "
                                             "routing-losses).")
    ] = None,
    div_distance: Annotated[str | None, typer.Option(
        help="Distance of the diversification loss: l2 | cosine | sym-kl | wasserstein1.")] = None,
    div_projection: Annotated[str | None, typer.Option(
        help="K -> K' projection of the global gates in L_div (Eq. 7): trainable (one per gated layer, default) | "
             "fixed (one seeded random matrix, older runs) | none.")] = None,
    eps_l1: Annotated[float | None, typer.Option()] = None,
    eps_l2: Annotated[float | None, typer.Option()] = None,
    eps_linf: Annotated[float | None, typer.Option()] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Backbone start: FILE, a timm tag, imagenet1k (the paper presets' default) or none.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, DEVICE] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    eval_every: Annotated[int | None, typer.Option(
        help="Every N steps, union robustness of train.eval_examples test images under the ℓp PGD, for "
             "rome-bench plot training (0: never).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config field: section.field=value.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run in --out.")] = False,
    progress: Progress = None,
    nproc: Annotated[int | None, typer.Option(
        help="Train data-parallel over N processes on this machine (one per GPU, or CPU processes with gloo): "
             "runs torchrun --standalone --nproc-per-node N; --batch-size stays the global batch.")] = None,
) -> None:
    """Train a model with a multi-perturbation adversarial training recipe."""
    from rome_bench.models.family import with_stored_options
    from rome_bench.training.distributed import check_world_batch, launch_processes
    from rome_bench.training.overrides import (
        check_family_option_flags,
        family_option_assignments,
        flag_assignments,
        train_config,
    )
    from rome_bench.training.trainer import Trainer, check_run_dir

    switches = {"experts": experts, "num_experts": num_experts, "rank": rank, "expert_layers": expert_layers,
                "gating": gating, "beta_s": beta_s, "beta_b": beta_b, "routing_loss": routing_loss,
                "routing_weight": routing_weight, "div_distance": div_distance, "div_projection": div_projection,
                "top_k": top_k}
    overrides = flag_assignments(method=method, family=family, train_attack=train_attack, init=init, dataset=dataset,
                                 data_dir=data_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                                 train_size=train_size, backbone=backbone, eps_l1=eps_l1, eps_l2=eps_l2,
                                 eps_linf=eps_linf, pretrained=pretrained, seed=seed, device=device,
                                 checkpoint_every=checkpoint_every, eval_every=eval_every)
    overrides += family_option_assignments(switches)
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: resume a run or overwrite it, not both")
    if resume and out is None:
        raise ConfigError("--resume needs --out DIR, the run directory to continue")
    config = train_config(preset_name, overrides + list(set_ or []), out if resume else None)
    check_family_option_flags(switches, config.model.family, config.train.recipe)
    config = with_stored_options(config)  # an unknown family or option fails here, before anything is written
    run_dir = out or Path("runs") / f"{config.method}-{config.preset}"
    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        check_run_dir(run_dir, config, resume, force)  # the common mistakes fail here, once, before the launch
        check_world_batch(config.train.batch_size, nproc)
        # the ranks' stderr is a pipe (see launch_processes): progress as decided here, on this terminal
        raise typer.Exit(launch_processes(nproc, [*sys.argv[1:], "--progress" if progress else "--no-progress"]))
    trainer = Trainer(config, run_dir, progress=progress)
    final = trainer.fit(resume=resume, force=force)
    if trainer.rank == 0:
        typer.echo(f"trained {config.method} ({config.preset}) -> {final.parent}")


@app.command("eval")
def evaluate(
    run: Annotated[Path | None, typer.Option(help="Run directory written by rome-bench train.")] = None,
    suite: Annotated[str, typer.Option(help="Threat suite: seen (AutoAttack), seen-apgd, seen-pgd, ...")] = "seen",
    threat: Annotated[list[str] | None, typer.Option(
        help="Only this threat of the suite (repeatable); clean always runs. The leaderboard needs them all.")] = None,
    n_examples: Annotated[int | None, N_EXAMPLES] = None,
    union_only: Annotated[bool, typer.Option(
        help="Only the Union column: each threat attacks only the examples still robust to the earlier ones.")] = False,
    draws: Annotated[int | None, typer.Option(
        help="Classify each clean and attacked image M times; an example is correct only if correct in all M "
             "(the worst case over draws of a random model). Default: the suite's (adaptive 5, others 1).")] = None,
    eps_scale: Annotated[str | None, typer.Option(
        help="ε sweep: comma-separated multiples of each threat's ε, e.g. 0.25,0.5,1,1.5,2.")] = None,
    eps: Annotated[list[str] | None, typer.Option(
        "--eps", metavar="NORM=VALUE",
        help="The ε of one norm instead of the run's or preset's (repeatable): --eps linf=4/255 --eps l2=0.25. "
             "It is in the threats' store keys; leaderboards never rank rows of different ε together.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Where to write the ε-sweep PNG (default: in the run dir).")] = None,
    model_file: Annotated[str | None, typer.Option(
        help="Evaluate any nn.Module taking [0,1] images: FILE.py:Name or package.module:Name.")] = None,
    model: Annotated[str | None, typer.Option(
        help="A model by source: hf:ORG/NAME (a model shared with rome-bench export-model, from the Hugging Face "
             "Hub or its cache; hf:PATH a local copy), robustbench:<name> or robustbench:<threat_model>/<name> "
             "(RobustBench's zoo, threat model Linf | L2 | corruptions, default Linf), or FILE.py:Name like "
             "--model-file.")] = None,
    model_dir: Annotated[Path | None, typer.Option(
        help="RobustBench checkpoints, laid out <dir>/<dataset>/<threat_model>/<name>.pt (default "
             "$ROME_BENCH_ROBUSTBENCH_DIR or ./models); a missing file is downloaded when the network allows.")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights for --model-file (.safetensors or .pt).")] = None,
    preset_name: Annotated[str, typer.Option(
        "--preset", help="With --model-file / --model: the preset whose dataset and ε to use.")] = "cifar10",
    store: Store = None,
    batch_size: BatchSize = 128,
    data_dir: TestDataDir = None,
    device: Annotated[str, DEVICE] = "auto",
    label: Annotated[str | None, typer.Option(help="Row label in leaderboards (default: method + run name).")] = None,
    progress: Progress = None,
    corruptions_dir: Annotated[Path | None, typer.Option(
        help="Folder with the CIFAR-10-C .npy files: the corruption threats load them instead of generating.")] = None,
    gating_variant: Annotated[str | None, typer.Option(
        help="Evaluate a model with experts under an inference-time gating variant (Table 5), stored as its own "
             "row: random (gates drawn uniformly from the simplex) | inverse ((1 − g)/(K − 1)) | removed.")] = None,
    route_to_expert: Annotated[str | None, typer.Option(
        help="Fixed-expert evaluation: every example goes to expert K (0-based) of every gate, stored as its own "
             "row; 'all' evaluates each expert in turn (one row per expert).")] = None,
    shards: Annotated[int | None, typer.Option(
        help="Cut the examples into N batch-aligned shards, each evaluated on its own, then merged into the store "
             "(default: unsharded; under torchrun, the world size).")] = None,
    executor: Annotated[str | None, typer.Option(
        help="Who evaluates the shards: local (this process, one after another) | torchrun (the ranks of "
             "'torchrun --nproc-per-node N -m rome_bench eval ...'; rank r takes shards i = r mod N; rank 0 merges) "
             "| slurm (a job array through submitit; merge with --merge). Default: torchrun under torchrun, "
             "else local.")] = None,
    shard_index: Annotated[int | None, typer.Option(
        help="Evaluate only shard I (0-based) of --shards N into its unit file, as each Slurm task does.")] = None,
    merge: Annotated[bool, typer.Option(
        help="Merge the finished shards of --shards N into the store (after --executor slurm); fails naming the "
             "unfinished ones.")] = False,
    wait: Annotated[bool, typer.Option(help="With --executor slurm: wait for the jobs, then merge.")] = False,
    slurm: Annotated[list[str] | None, typer.Option(
        help="A submitit parameter of the Slurm jobs, KEY=VALUE (repeatable): slurm_partition=gpu, timeout_min=240, "
             "gpus_per_node=1, cpus_per_task=8, slurm_array_parallelism=16, ...")] = None,
    cluster: Annotated[str, typer.Option(
        help="submitit's cluster for --executor slurm: slurm, or local (the jobs run as processes on this machine, "
             "for testing).")] = "slurm",
    precision: Annotated[str, typer.Option(
        help="Attack arithmetic: fp32 | bf16 (the model's forward and backward passes inside attacks under bf16 "
             "autocast; the attacks' own steps, projections and renderers, the budget checks and the classification "
             "of clean and adversarial images stay fp32). Recorded in each result's provenance.")] = "fp32",
    compile_backend: Annotated[str | None, typer.Option(
        "--compile", help="torch.compile the model with this backend (inductor on a GPU) for --batch-size rows; "
                          "smaller attack batches are zero-padded, so it never recompiles. Recorded in provenance."
    )] = None,
) -> None:
    """Evaluate a trained run (or --model-file) on every threat of a suite; results go to the store per example."""
    from rome_bench.api import evaluate_rows, load_module_with_data, load_run_with_data, plan, variant_rows
    from rome_bench.device import resolve_device
    from rome_bench.evaluation.budgets import parse_eps_overrides, with_eps
    from rome_bench.evaluation.runner import attack_precision, compiled_run
    from rome_bench.evaluation.sharding import ShardingRequest
    from rome_bench.evaluation.store import store_or_default
    from rome_bench.evaluation.suites import SUITES
    from rome_bench.evaluation.sweep import default_plot_path, parse_scales

    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if n_examples is not None and n_examples < 1:
        raise ConfigError("--n-examples must be >= 1")
    if sum(source is not None for source in (run, model_file, model)) != 1:
        raise ConfigError("give exactly one of --run DIR (a rome-bench run), --model-file FILE.py:Name or "
                          "--model hf:ORG/NAME | robustbench:<name>")
    model_file = model_file or model
    if union_only and eps_scale:
        raise ConfigError("--union-only and --eps-scale exclude each other: a sweep needs every threat's column")
    scales = parse_scales(eps_scale) if eps_scale else None
    budgets = parse_eps_overrides(eps or [])
    chosen_suite = SUITES.get(suite)
    sharding = ShardingRequest.from_flags(shards, executor, shard_index, merge, wait, slurm or [], cluster,
                                          unsharded_only=union_only or scales is not None)
    if draws is not None and (draws < 1 or sharding is not None):
        raise ConfigError("--draws takes a number >= 1, and a sharded evaluation classifies once (drop --shards)")
    torch_device = resolve_device(device) if sharding is None else sharding.device(resolve_device(device))
    arithmetic = attack_precision(precision, torch_device)  # an unknown precision fails before the model loads
    if gating_variant is not None and route_to_expert is not None:
        raise ConfigError("--gating-variant and --route-to-expert exclude each other: give one")
    loaded, data = (load_run_with_data(run, torch_device, data_dir) if run is not None else
                    load_module_with_data(str(model_file), weights, preset_name, torch_device, model_dir, data_dir))
    loaded = with_eps(loaded, budgets)
    if compile_backend is not None:
        loaded = compiled_run(loaded, compile_backend, batch_size)
    rows = variant_rows(loaded, label, gating_variant, route_to_expert)
    threats, ids = plan(loaded, chosen_suite, data, n_examples, threat or [], corruptions_dir)
    with arithmetic:
        evaluate_rows(rows, chosen_suite, threats, data, ids, store_or_default(store), batch_size, torch_device,
                      progress, not threat, union_only, scales, plot or default_plot_path(run, suite, data.info.name),
                      typer.echo, sharding, run_shard_job, sys.argv[1:], draws)


def run_shard_job(cwd: str, argv: list[str]) -> None:
    """One Slurm array task: the eval command restricted to one shard (submitit pickles this function by name)."""
    os.chdir(cwd)
    app(argv, standalone_mode=False)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's runs and results store.")] = Path("runs/demo"),
    suite: Annotated[str, typer.Option(help="Suite to evaluate on: seen-pgd (fast), seen (AutoAttack), ...")
                     ] = "seen-pgd",
    n_examples: Annotated[int, N_EXAMPLES] = 200,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Change the smoke preset for both runs: section.field=value (e.g. train.epochs=1).")] = None,
    progress: Progress = None,
) -> None:
    """The main job end to end on the embedded synthetic data: train MAX and RoME+MAX (smoke preset), evaluate
    both, print the leaderboard. Re-running continues where an interrupted demo stopped."""
    from rome_bench.demo import demo as run_demo

    run_demo(out, suite, n_examples, list(set_ or []), progress, typer.echo)


@app.command()
def leaderboard(
    suite: Suite = "seen",
    format_: Annotated[str | None, typer.Option("--format", help="md | csv | json | tex | html (a self-contained "
                                                                 "page: give --out DIR, it writes DIR/index.html); "
                                                                 "default md, drawn as tables on a terminal")] = None,
    dataset: DatasetFilter = None,
    reference: Annotated[list[str] | None, typer.Option(
        help="Add rows reported by a paper, e.g. rome-paper-table1 (a name in rome_bench/references/ or a path), or "
             "RobustBench's numbers for a model: robustbench:[<dataset>/][Linf|L2|corruptions/]<name>.")] = None,
    store: Store = None,
    costs: Annotated[bool, typer.Option(
        help="Add each threat's wall time and forward/backward passes (md, csv, json, html).")] = False,
    out: Annotated[Path | None, typer.Option(
        help="Write to this file (atomically) instead of printing; for html a directory (or a .html file).")] = None,
    detail: Annotated[bool, typer.Option(
        help="Expand pooled columns into their threats (e.g. Com. Corr. into 15 corruptions, Percep. ℓp into 5).")
    ] = False,
) -> None:
    """Print the leaderboard of a suite: per-threat, Avg and per-example Union accuracy, sorted by Union."""
    from rome_bench.evaluation.render import publish_leaderboard

    text = publish_leaderboard(store, suite, dataset, format_ or "md", list(reference or []), costs, out, detail)
    if format_ is None and out is None and stdout_is_terminal():
        from rome_bench.evaluation.terminal import print_markdown_tables

        print_markdown_tables(text)
    else:
        typer.echo(text)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


@app.command()
def compare(
    a: Annotated[list[Path], typer.Option(help="Run directory of side a (repeat for its seeds).")],
    b: Annotated[list[Path], typer.Option(help="Run directory of side b (repeat for its seeds, same order).")],
    suite: Annotated[str, typer.Option(help="Suite both sides were evaluated with, e.g. seen.")] = "seen",
    column: Annotated[str, typer.Option(help="union (per example, every threat) or one of the suite's columns.")
                      ] = "union",
    store: Store = None,
    data_dir: Annotated[str | None, typer.Option(help="Where the runs' test data is.")] = None,
) -> None:
    """Paired difference a − b on the same examples: paired bootstrap 95% interval and McNemar per seed pair."""
    from rome_bench.evaluation.paired import compare_runs

    typer.echo(compare_runs(a, b, suite, column, store, data_dir))


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="File to write, .csv (or .parquet, with pyarrow): one row per (model, "
                                           "example), one column per threat.")],
    suite: Suite = "seen",
    dataset: DatasetFilter = None,
    store: Store = None,
) -> None:
    """Export the per-example matrix (examples × threats, plus union) of every completed run, for pandas."""
    from rome_bench.evaluation.export import export_matrix

    typer.echo(export_matrix(out, suite, dataset, store))


@app.command("export-model")
def export_model(
    run: Annotated[Path, typer.Argument(help="Run directory written by rome-bench train.")],
    out: Annotated[Path, typer.Option(help="Folder to write (model.safetensors, model.json, config.json, "
                                           "README.md); upload it to the Hugging Face Hub as it is.")],
    store: Annotated[Path | None, typer.Option(
        help="Results store whose rows for these weights go into the model card (default: the default store, "
             "when it exists).")] = None,
    repo_id: Annotated[str | None, typer.Option(help="ORG/NAME the card's examples load it as.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing, non-empty --out.")] = False,
) -> None:
    """Write a run as a Hugging Face Hub model folder, with a model card of its measured rows; load it back with
    --model hf:ORG/NAME (or hf:PATH)."""
    from rome_bench.evaluation.model_card import export_model as write_folder

    exported = write_folder(run, out, store, repo_id, force)
    read = f"{len(exported.suites)} measured suite row(s) from {exported.store}" if exported.store else \
        "no results store: the card has no measured rows (give --store)"
    typer.echo(f"exported {run} -> {exported.folder} ({read})")


@app.command()
def check(
    reference: Annotated[Path, typer.Option(
        help="Reference file, a name (synthetic-micro, cifar10-cpu) or a path.")],
    store: Annotated[Path | None, typer.Option(help="Reuse this store (default: a fresh temporary one).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Where the checks' data is.")] = None,
    device: Annotated[str, DEVICE] = "auto",
    update: Annotated[bool, typer.Option(help="Write the re-measured counts into the reference file.")] = False,
    progress: Progress = None,
) -> None:
    """Re-evaluate the referenced models and fail (exit 1) when a count moves beyond re-measurement noise
    (±max(2 examples, 0.5%))."""
    from rome_bench.evaluation.regression import render_results, run_checks

    checks, outcomes = run_checks(reference, store, device, data_dir, update, progress)
    if update:
        typer.echo(f"updated {checks} check(s) in {reference}")
        return
    typer.echo(render_results(outcomes))
    failed = [outcome for outcome in outcomes if not outcome.passed]
    if failed:
        typer.echo(f"{len(failed)} of {len(outcomes)} numbers left their tolerance", err=True)
        raise typer.Exit(1)
    typer.echo(f"all {len(outcomes)} numbers within tolerance")


@app.command()
def describe(
    method: Annotated[str, typer.Option(help="A method as train takes it: rome+max, max, …")] = "rome+max",
    preset_name: Annotated[str | None, typer.Option("--preset", help="Preset (default cifar10).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Model registry name, e.g. vit_base.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset whose image size and classes to build for.")] = None,
    experts: Annotated[str | None, typer.Option(help="lora | ffn | adapter.")] = None,
    num_experts: Annotated[int | None, typer.Option(help="Number of experts K.")] = None,
    top_k: Annotated[int | None, typer.Option(help="ffn experts: top-k dispatch (0 = dense).")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank r.")] = None,
    expert_layers: Annotated[str | None, typer.Option(help="Subset of qkv,proj,fc1,fc2 (WRN: conv1,conv2).")] = None,
    gating: Annotated[str | None, typer.Option(help="Gating variant (default dual).")] = None,
    routing_loss: Annotated[str | None, typer.Option(help="A routing loss or none.")] = None,
    div_projection: Annotated[str | None, typer.Option(help="per-layer | trainable | fixed | none.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config field: section.field=value.")] = None,
) -> None:
    """Print a model's parameters (total, backbone, experts, gates, L_div projections) and GFLOPs per image."""
    from rome_bench.api import describe as describe_model
    from rome_bench.training.overrides import family_option_assignments, flag_assignments

    switches = {"experts": experts, "num_experts": num_experts, "top_k": top_k, "rank": rank,
                "expert_layers": expert_layers, "gating": gating, "routing_loss": routing_loss,
                "div_projection": div_projection}
    assignments = [*flag_assignments(backbone=backbone, dataset=dataset), *family_option_assignments(switches)]
    for line in describe_model(method, preset_name, [*assignments, *(set_ or [])]).lines():
        typer.echo(line)


@app.command("list")
def list_command(
    kind: Annotated[str, typer.Argument(
        help="threats | models | methods (= recipes) | families | routing-losses | datasets | suites | presets")],
) -> None:
    """List registered entries with their metadata."""
    from rome_bench.api import list_entries

    typer.echo("\n".join(list_entries(kind)))


plot_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS,
                       help="Figures from trained runs.")
app.add_typer(plot_app, name="plot")


@plot_app.command("training")
def plot_training(
    run: Annotated[list[Path], typer.Option(help="Run directory trained with --eval-every (repeatable).")],
    out: Annotated[Path, typer.Option(help="Figure file (.png, .pdf or .svg).")] = Path("training-curves.png"),
) -> None:
    """Union robustness against training wall-clock time for several runs (paper Fig. 8)."""
    from rome_bench.api import plot_training

    written, lines = plot_training(run, out)
    typer.echo("\n".join([*lines, f"training curves -> {written}"]))


analyze_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS,
                          help="Analyse trained runs: how their gates route the threats.")
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("gating")
def analyze_gating(
    run: Annotated[Path, typer.Option(help="Run directory of a model with experts (a rome+ method).")],
    suite: Annotated[str, typer.Option(help="Threat suite whose threats are compared: seen, seen-pgd, ...")] = "seen",
    n_examples: Annotated[int, typer.Option(help="Size of the fixed, seeded test subset (half trains the "
                                                 "threat classifier, half tests it).")] = 200,
    batch_size: BatchSize = 128,
    store: Store = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the figures (default: RUN/figures).")] = None,
    data_dir: TestDataDir = None,
    device: Annotated[str, DEVICE] = "auto",
    map_images: Annotated[int, typer.Option(help="Images in the per-patch activation map figure (0: none).")] = 4,
    seed: Annotated[int, typer.Option(help="Seeds the subset, the attacks and the classifier's split.")] = 0,
    progress: Progress = None,
) -> None:
    """Routing divergence and held-out threat classifier of a run's gates, stored for the leaderboard, plus the
    KDE (paper Fig. 3) and per-patch activation (Fig. 7) figures."""
    from rome_bench.api import analyse_gating
    from rome_bench.evaluation.gating_analysis import render_report

    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if n_examples < 2:
        raise ConfigError("--n-examples must be >= 2: half the examples train the threat classifier, half test it")
    if map_images < 0:
        raise ConfigError("--map-images must be >= 0")
    report, stored = analyse_gating(run, suite, n_examples, batch_size, store, out, data_dir, device, map_images, seed,
                                    progress)
    typer.echo(render_report(report))
    typer.echo(f"score stored in {stored}: the leaderboard's Routing div. and Gate clf. columns")


def main() -> None:
    bases = {cls.__name__: cls for cls in typer.BadParameter.__mro__}  # the click that typer runs on (or vendors)
    usage_error, click_exception = bases["UsageError"], bases["ClickException"]
    command = typer.main.get_command(app)
    plain_metavars(command)
    try:
        code = command(standalone_mode=False, prog_name="rome-bench")
    except usage_error as error:  # type: ignore[misc]  # a bad flag or value: one line that names it
        if type(error).__name__ == "NoArgsIsHelpError":
            print(error.format_message())  # type: ignore[attr-defined]
            sys.exit(0)
        context = error.ctx  # type: ignore[attr-defined]
        hint = f" (see rome-bench {context.info_name} --help)" if context is not None and context.parent else ""
        print(f"error: {error.format_message()}{hint}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(2)
    except click_exception as error:  # type: ignore[misc]
        print(f"error: {error.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(error.exit_code)  # type: ignore[attr-defined]
    except RomeBenchError as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank raises it; rank 0 says it
            print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except sqlite3.Error as error:  # the results store: not a database, read-only, locked, disk full
        print(f"error: results store: {str(error).splitlines()[0]}; give --store a writable SQLite file with free "
              f"space (stored results are never half-written)", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # an output path that is a folder, read-only, in /proc, or a full disk
        path = error.filename2 or error.filename  # os.replace(temporary, target) names the target second
        where = f" {path}" if path else ""
        print(f"error: cannot use{where}: {error.strerror or error}; choose another path or free space "
              f"(files written before are intact)", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted: checkpoints and stored results written so far are intact", file=sys.stderr)
        sys.exit(130)
    from rome_bench.evaluation.store import default_store_used

    if (used := default_store_used()) is not None:
        print(f"results store: {used} (the default, one per directory; --store FILE for another)", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
