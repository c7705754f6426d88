"""What makes the ``rome-bench`` command read like other command-line tools: ``--version``, click-style metavars
(TEXT, INT, PATH) and progress bars only on a terminal. Used by ``cli.py``; no rome-bench logic here."""

from __future__ import annotations

import sys
from typing import Any

import typer

# Metavars as click prints them (TEXT, INT, PATH), not typer's Python types (<str>, <list[str]>); cli.main() sets them.
METAVARS = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH", "bool": "BOOL"}


def show_version(value: bool, version: str) -> None:
    """--version: print ``version`` and stop."""
    if value:
        typer.echo(f"rome-bench {version}")
        raise typer.Exit()


def auto_progress(value: bool | None) -> bool:
    """--progress / --no-progress as given, else on exactly when stderr (where the bars go) is a terminal."""
    return sys.stderr.isatty() if value is None else value


def plain_metavars(command: Any) -> None:
    """Give every option of ``command`` and its subcommands click's metavar for its type (TEXT, INT, PATH, …)."""
    for param in command.params:
        if getattr(param, "is_flag", False) or param.metavar is not None:
            continue
        bare = param.bare_type()  # typer's name of the type: str, int, path, list[str], …
        element = bare.removeprefix("list[").removesuffix("]").lower()
        metavar = METAVARS.get(element, element.upper())
        if param.param_type_name == "option":
            param.metavar = metavar
        else:  # an argument keeps its name (KIND, RUN) in the usage line; its help row shows the type after it
            param.display_type_rich = lambda ctx=None, shown=metavar: shown
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)
