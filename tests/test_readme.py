"""The README and docs/ stay true: the quick starts run, the generated table is current, every `rome-bench` command
and flag they name exists, the entry-point groups are the registries', and the line limits hold.

The CLI quick start runs line by line in a temporary directory on the synthetic data, with the substitutions of
``SMALLER`` (each must apply, so the table cannot go stale): the README says which sizes the test shrinks.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))

# What the test changes in the README's CLI quick start, and why.
SMALLER = {
    "--epochs 1": "--epochs 1 --train-size 128",  # 2 steps instead of 63: seconds, not minutes
    "--n-examples 100": "--n-examples 16",  # 16 test examples instead of 100
}
SKIPPED = {"source .venv/bin/activate"}  # the test runs this checkout's rome_bench with this interpreter


def block(text: str, marker: str, language: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```{language}\n(.*?)```\n<!-- /{marker} -->", text, re.DOTALL)
    assert match, f"README lost its {marker} block"
    return match.group(1)


def quickstart_commands() -> list[str]:
    lines = []
    for line in block(README.read_text(), "cli-quickstart", "bash").splitlines():
        command = line.split(" #", 1)[0].strip()
        if command and command not in SKIPPED:
            lines.append(command)
    return lines


def smaller(command: str, used: set[str]) -> str:
    for original, replacement in SMALLER.items():
        if original in command:
            command = command.replace(original, replacement)
            used.add(original)
    return command


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``rome-bench ARGS`` through the console script's own entry point, in this process (a fresh interpreter per line
    would spend most of the test importing torch): its exit status, stdout and stderr."""
    from rome_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["rome-bench", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_readme_fits_and_docs_lines_are_short():
    assert len(README.read_text().splitlines()) <= 250
    for path in [README, *DOCS]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert len(line) <= 120, f"{path.relative_to(ROOT)}:{number} has {len(line)} characters"


@pytest.mark.slow
def test_the_cli_quick_start_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path / "cache"))
    commands, used = quickstart_commands(), set()
    assert len(commands) <= 10, "the CLI quick start is 10 lines"
    for command in commands:
        words = shlex.split(smaller(command, used))
        assert words[0] == "rome-bench", f"a quick-start line that is not a rome-bench command: {command}"
        code, out, err = run_cli(words[1:], monkeypatch, capsys)
        assert code == 0, f"{command}\n{out[-2000:]}\n{err[-2000:]}"
        if words[1:2] == ["leaderboard"] and "--format" not in words:
            assert "Union" in out and "rome+max" in out
        if words[1:2] == ["compare"]:
            assert "union:" in out
    assert used == set(SMALLER), f"substitutions that no longer apply: {set(SMALLER) - used}"
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "matrix.csv").is_file()


@pytest.mark.parametrize("page", ["README.md", "docs/api.md"])
def test_the_api_quick_start_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path / "cache"))
    exec(compile(block((ROOT / page).read_text(), "api-example", "python"), page, "exec"), {})
    printed = capsys.readouterr().out
    assert "union" in printed and "pgd-linf" in printed


def test_the_supported_list_is_generated_from_the_registries():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import supported_table
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert supported_table.readme_block(README.read_text()) == supported_table.block(), (
        "README's supported list is stale: run python docs/supported_table.py --write")


def cli_commands() -> dict[str, object]:
    """Each command path ('eval', 'plot training') with the click command behind it."""
    import typer

    from rome_bench.cli import app

    commands, group = {}, typer.main.get_command(app)
    for name, command in group.commands.items():
        commands[name] = command
        for sub_name, sub in getattr(command, "commands", {}).items():
            commands[f"{name} {sub_name}"] = sub
    return commands


def documented_invocations() -> list[tuple[str, str]]:
    """(where, words after 'rome-bench') of every rome-bench command in the README's and docs' code."""
    found = []
    for path in [README, *DOCS]:
        text = path.read_text()
        fenced = re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL)
        prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.DOTALL)
        spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]  # inline code, even wrapped
        spans += [line for line in prose.splitlines() if line.startswith("    ")]  # indented code blocks
        spans += [line for chunk in fenced for line in chunk.splitlines()]
        for span in spans:
            for match in re.finditer(r"(?:rome-bench|-m rome_bench)\s+([a-z][^#|;`]*)", span):
                found.append((str(path.relative_to(ROOT)), match.group(1).split(" # ")[0].strip()))
    return found


def test_every_documented_command_and_flag_exists():
    commands = cli_commands()
    checked = 0
    for where, invocation in documented_invocations():
        words = invocation.replace("\\", " ").split()
        name = " ".join(words[:2]) if " ".join(words[:2]) in commands else words[0]
        if name in ("list", "plot", "analyze") and name == words[0] and len(words) == 1:
            continue
        assert name in commands, f"{where}: `rome-bench {invocation}` names no command (rome-bench --help)"
        options = {opt for param in commands[name].params for opt in (*param.opts, *param.secondary_opts)}
        for word in words:
            flag = word.split("=", 1)[0].lstrip("[(").rstrip(",.;:)]")
            if re.fullmatch(r"--[a-z][a-z0-9-]*", flag):
                assert flag in options, f"{where}: `rome-bench {name}` has no option {flag} ({invocation})"
                checked += 1
    assert checked > 50  # the docs do name flags: this test must not pass by finding none


def test_the_entry_point_groups_in_the_docs_are_the_registries():
    from rome_bench.data import DATASETS
    from rome_bench.evaluation.suites import SUITES
    from rome_bench.models import FAMILIES, MODELS
    from rome_bench.threats import THREATS
    from rome_bench.training.recipe import RECIPES
    from rome_bench.training.routing import ROUTING_LOSSES

    groups = {r.entry_point_group for r in (THREATS, MODELS, RECIPES, FAMILIES, ROUTING_LOSSES, DATASETS, SUITES)}
    text = (ROOT / "docs" / "extending.md").read_text()
    documented = set(re.findall(r"^\| [a-z ]+ \| `(rome_bench\.[a-z_]+)` \|", text, re.MULTILINE))
    assert documented == groups
    for path in [README, *DOCS]:
        for group in re.findall(r'entry-points\."(rome_bench\.[a-z_]+)"', path.read_text()):
            assert group in groups, f"{path.relative_to(ROOT)} names entry-point group {group}, which no registry reads"
