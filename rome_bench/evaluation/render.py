"""The leaderboard's output formats, one renderer each: ``RENDERERS[format](rows, suite, costs=...)``.

Imports point one way: leaderboard.py builds rows (and renders md, csv, json), latex.py renders tex from them, and
this module gathers the formats for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from rome_bench.evaluation.latex import render_latex
from rome_bench.evaluation.leaderboard import Row, render_csv, render_json, render_markdown
from rome_bench.evaluation.suites import Suite


def _render_tex(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    """LaTeX (paper style); costs are not part of the paper's tables."""
    return render_latex(rows, suite)


RENDERERS: dict[str, Callable[..., str]] = {"md": render_markdown, "csv": render_csv, "json": render_json,
                                            "tex": _render_tex}
