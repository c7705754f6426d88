"""The leaderboard as an HTML fragment for notebooks (``Results._repr_html_``): no page, no script, no figures.

One table per dataset and comparison group (``comparability.py``), under a line stating its threats' specification;
every measured cell is its accuracy in percent with the 95% Wilson interval, e.g. ``61.0 (47.2–73.3)``.
"""

from __future__ import annotations

from html import escape

from rome_bench.evaluation.comparability import group_note, spec_line, tables
from rome_bench.evaluation.suites import Suite
from rome_bench.evaluation.table import Row, cell_text, flags_text, source_text, table_columns


def _table(rows: list[Row], suite: Suite, dataset: str, group: int) -> list[str]:
    """The caption, threat line and table of one dataset's comparison group."""
    columns = table_columns(suite, rows)
    note = group_note(group, rows)
    heading = f"{suite.name} suite on {dataset}: accuracy % (95% Wilson interval)" + (f" — {note}" if note else "")
    lines = [f"<p><b>{escape(heading)}</b><br><small>Threats: {escape(spec_line(rows, suite))}</small></p>",
             "<table>", "<thead><tr>" + "".join(f"<th>{escape(title)}</th>" for title in
                                                ["Method", "n", *(t for _, t in columns), "Flags", "Source"])
             + "</tr></thead>", "<tbody>"]
    for row in rows:
        cells = [row.label, "–" if row.n is None else str(row.n), *(cell_text(row, c) for c, _ in columns),
                 flags_text(row, suite), source_text(row)]
        lines.append("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>")
    return [*lines, "</tbody>", "</table>"]


def results_html(rows: list[Row], suite: Suite) -> str:
    """The rows as HTML tables (one per dataset and comparison group); a line saying so when there are none.

    Parameters
    ----------
    rows : list of Row
        Leaderboard rows, as ``build_leaderboard`` returns them (grouped, sorted by Union).
    suite : Suite
        The suite whose columns and titles the tables use.

    Returns
    -------
    str
        An HTML fragment.
    """
    if not rows:
        return f"<p>No results for suite <code>{escape(suite.name)}</code> yet.</p>"
    return "\n".join(line for dataset, group, table in tables(rows) for line in _table(table, suite, dataset, group))
