"""The leaderboard's output formats, one renderer each: ``RENDERERS[format](rows, suite, costs=..., store=...)``.

Imports point one way: leaderboard.py builds rows (and renders md, csv, json), latex.py renders tex from them,
html.py renders the static page, and this module gathers the formats for the CLI. Only the page reads the store
(``store``: ε sweeps, training curves and provenance); the text formats ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rome_bench.evaluation.latex import render_latex
from rome_bench.evaluation.leaderboard import Row, render_csv, render_json, render_markdown
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import Suite


def _text(render: Callable[..., str]) -> Callable[..., str]:
    """A text renderer that takes (and ignores) the store."""
    def rendered(rows: list[Row], suite: Suite, costs: bool = False, store: ResultStore | None = None) -> str:
        return render(rows, suite, costs=costs)
    rendered.__doc__ = render.__doc__
    return rendered


def _render_tex(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    """LaTeX (paper style); costs are not part of the paper's tables (the CLI refuses --costs with tex)."""
    return render_latex(rows, suite)


def _render_html(rows: list[Row], suite: Suite, costs: bool = False, store: ResultStore | None = None) -> str:
    """A static, self-contained web page (jinja2 and matplotlib load only for this format)."""
    from rome_bench.evaluation.html import render_html

    return render_html(rows, suite, costs=costs, store=store)


RENDERERS: dict[str, Callable[..., str]] = {"md": _text(render_markdown), "csv": _text(render_csv),
                                            "json": _text(render_json), "tex": _text(_render_tex),
                                            "html": _render_html}
PAGE_FORMATS = frozenset({"html"})  # written as <out>/index.html (or <out> when it ends in .html); never printed
COST_FORMATS = ("md", "csv", "json", "html")  # the formats that render --costs (tex follows the paper's tables)


def output_path(format_: str, out: Path) -> Path:
    """Where ``--out`` puts a format's output: a page goes into a directory unless ``out`` names an .html file."""
    if format_ in PAGE_FORMATS and out.suffix != ".html":
        return out / "index.html"
    return out
