"""Terminal conventions: --version and -h, click-style metavars, progress bars only on a terminal, the leaderboard
as tables on a terminal (Markdown for pipes), stores that reading never creates, and one line for the mistakes
behind the distributed entry points."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rome_bench import cli
from rome_bench.cli_support import auto_progress
from rome_bench.errors import ConfigError
from rome_bench.evaluation.regression import REFERENCE_DIR
from rome_bench.evaluation.store import DEFAULT_STORE_NAME, STORE_VARIABLE, store_or_default
from rome_bench.evaluation.terminal import print_markdown_tables

RUN = REFERENCE_DIR / "models" / "synthetic-micro-max"
COMMANDS = ["train", "eval", "demo", "leaderboard", "compare", "export", "check", "export-model", "list",
            "plot training", "analyze gating"]


def test_version_and_short_help(cli_main) -> None:
    from rome_bench import __version__

    version = cli_main("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"rome-bench {__version__}"
    for command in ["", *COMMANDS]:
        shown = cli_main(*command.split(), "-h")
        assert shown.returncode == 0 and shown.stdout.startswith("Usage:"), command


def test_metavars_read_like_click_types(cli_main) -> None:
    for command in COMMANDS:
        text = cli_main(*command.split(), "--help").stdout
        assert "<str>" not in text and "<int>" not in text and "list[" not in text.lower(), command
    assert "--threat TEXT" in cli_main("eval", "--help").stdout
    assert "--n-examples INT" in cli_main("eval", "--help").stdout
    assert "--run PATH" in cli_main("plot", "training", "--help").stdout


def test_progress_bars_follow_stderr_unless_told(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert auto_progress(None) is False and auto_progress(True) is True
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", terminal)
    assert auto_progress(None) is True and auto_progress(False) is False


def test_the_leaderboard_is_tables_on_a_terminal_and_markdown_otherwise(cli_main, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_VARIABLE)
    piped = cli_main("leaderboard", "--reference", "rome-paper-table1")
    assert piped.returncode == 0, piped.stderr
    assert "|---|" in piped.stdout
    monkeypatch.setattr(cli, "stdout_is_terminal", lambda: True)
    drawn = cli_main("leaderboard", "--reference", "rome-paper-table1")
    assert drawn.returncode == 0 and "|---|" not in drawn.stdout and "┃" in drawn.stdout
    first_label = next(line for line in piped.stdout.splitlines() if line.startswith("| ") and "Method" not in line)
    assert first_label.split("|")[1].strip().split()[0] in drawn.stdout
    markdown = cli_main("leaderboard", "--reference", "rome-paper-table1", "--format", "md")
    assert markdown.stdout == piped.stdout
    assert not list(tmp_path.iterdir()), "a reading command created a file"


def test_rich_tables_keep_brackets_as_text() -> None:
    out = io.StringIO()
    print_markdown_tables("### t\n\n| Method | n |\n|---|---:|\n| max [pgd-trained] | 4 |\n\nlegend line", out, 100)
    assert "max [pgd-trained]" in out.getvalue() and "legend line" in out.getvalue()


def test_reading_commands_never_create_a_store(cli_main, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_VARIABLE)
    for args in (["leaderboard"], ["export", "--out", "m.csv"], ["leaderboard", "--store", "other.sqlite"]):
        result = cli_main(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    assert "no results store here: rome-bench.sqlite does not exist" in cli_main("leaderboard").stderr
    assert not list(tmp_path.iterdir())


def test_the_default_store_is_per_directory_and_said_when_used(cli_main, monkeypatch, tmp_path) -> None:
    from rome_bench.evaluation import store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_VARIABLE)
    monkeypatch.setattr(store, "_DEFAULT_USED", [])
    assert store_or_default(tmp_path / "given.sqlite") == tmp_path / "given.sqlite"
    assert store.default_store_used() is None
    assert store_or_default(None) == Path(DEFAULT_STORE_NAME)
    assert store.default_store_used() == tmp_path / DEFAULT_STORE_NAME
    assert store.default_store_used() is None, "said once"
    monkeypatch.setenv(STORE_VARIABLE, str(tmp_path / "env.sqlite"))
    assert store_or_default(None) == tmp_path / "env.sqlite"
    store.default_store_used()
    with store.ResultStore(tmp_path / "env.sqlite"):  # an empty store, where the default points
        pass
    shown = cli_main("leaderboard", "--reference", "rome-paper-table1")
    assert shown.returncode == 0 and shown.stderr == f"results store: {tmp_path / 'env.sqlite'} (the default, one " \
                                                     f"per directory; --store FILE for another)\n"
    failed = cli_main("leaderboard", "--format", "nope")
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr


def _one_line(result: subprocess.CompletedProcess | object, *needles: str) -> None:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_slurm_where_there_is_none_is_one_line(cli_main, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    result = cli_main("eval", "--run", str(RUN), "--shards", "2", "--executor", "slurm", "--store",
                      str(tmp_path / "s.sqlite"))
    _one_line(result, "Slurm is not available here", "--executor local", "--cluster local")
    assert not (tmp_path / "s.sqlite").exists()


def test_plot_training_of_a_missing_run_says_it_is_not_a_run_directory(cli_main, tmp_path) -> None:
    _one_line(cli_main("plot", "training", "--run", str(tmp_path / "nonexistent")), "is not a run directory")


def test_a_global_batch_smaller_than_the_processes_is_one_line_before_the_launch(cli_main, tmp_path) -> None:
    result = cli_main("train", "--preset", "smoke", "--batch-size", "1", "--nproc", "2", "--out", str(tmp_path / "r"))
    _one_line(result, "a global batch of 1 examples", "--nproc")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_an_error_inside_the_torchrun_ranks_is_one_line_without_torchrun_traceback(tmp_path) -> None:
    """The last batch of 1 example over 2 processes is found only once the data loads, inside the ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "rome_bench", "train", "--preset", "smoke", "--set",
                             "model.backbone=vit_micro", "--train-size", "129", "--batch-size", "128", "--epochs",
                             "1", "--nproc", "2", "--no-progress", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, env=env, timeout=600)
    _one_line(result, "cannot be split over 2 processes")
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_check_world_batch_accepts_enough_examples() -> None:
    from rome_bench.training.distributed import check_world_batch

    check_world_batch(2, 2)
    with pytest.raises(ConfigError):
        check_world_batch(1, 2)
