"""The leaderboard on a terminal: its Markdown (titles, pipe tables, legend lines) drawn as rich tables.

Built from the Markdown text itself, so whatever the Markdown says (column titles, intervals, legends, flags) the
terminal shows too; ``--format md`` and pipes get the Markdown unchanged.
"""

from __future__ import annotations

from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text


def print_markdown_tables(markdown: str, file: IO[str] | None = None, width: int | None = None) -> None:
    """Print ``markdown`` to ``file`` (default stdout): '### ' titles as table titles, pipe tables as rich tables,
    every other line as it is."""
    console = Console(file=file, width=width, highlight=False, soft_wrap=False)
    lines, index, title = markdown.splitlines(), 0, None
    while index < len(lines):
        line = lines[index]
        if line.startswith("|"):
            block = []
            while index < len(lines) and lines[index].startswith("|"):
                block.append(_cells(lines[index]))
                index += 1
            console.print(_table(block, title))
            title = None
            continue
        if line.startswith("### "):
            if title is not None:
                console.print(Text(title, style="bold"))
            title = line.removeprefix("### ")
        elif line.strip() or title is None:
            console.print(Text(line))
        index += 1
    if title is not None:
        console.print(Text(title, style="bold"))


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(block: list[list[str]], title: str | None) -> Table:
    """A rich table from pipe-table rows: the header, the alignment row (``---:`` right), then the body."""
    header, body = block[0], block[1:]
    alignments = ["left"] * len(header)
    if body and all(set(cell) <= set("-:") and cell for cell in body[0]):
        alignments = ["right" if cell.endswith(":") else "left" for cell in body[0]]
        body = body[1:]
    table = Table(title=Text(title) if title else None, title_justify="left", title_style="bold")
    for name, alignment in zip(header, alignments, strict=False):
        table.add_column(Text(name), justify=alignment)  # type: ignore[arg-type]
    for row in body:
        table.add_row(*(Text(cell) for cell in row[:len(header)]))  # Text: a '[tag]' is not rich markup
    return table
