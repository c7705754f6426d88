"""Leaderboards as paper-ready LaTeX tables: one booktabs ``table`` float per dataset.

* Columns follow ``render_markdown``: Method, the suite's columns, Avg, Union (``table.table_columns``); the
  caption states each threat column's specification (attack, norm, ε, steps, restarts). Rows measured under
  another specification (``comparability.py``) get a table float of their own, so bold never ranks across budgets.
* Cells are accuracies in percent with one decimal; the best value of each column on a dataset is bold
  (compared as printed, so printed ties are all bold); missing values print as ``--``.
* A measured cell carries ``±h``, the half-width (high − low) / 2 of its 95% Wilson interval (the interval itself
  is slightly asymmetric); reference rows have no interval, print none and are marked with a dagger.
* The output compiles with ``\\usepackage{booktabs}`` alone: no siunitx, multirow or unicode input is needed.
* When some row of a dataset has a gating score (``rome-bench analyze gating``), two more columns follow: the
  routing divergence (4 decimals) and the held-out gate classifier's accuracy (\\%, chance in the caption), never
  bold; rows without a score print ``--``.
"""

from __future__ import annotations

import math
import re

from rome_bench.evaluation.comparability import group_note, spec_line, tables
from rome_bench.evaluation.suites import Suite
from rome_bench.evaluation.table import Row, gating_texts, has_gating, metric_rule, reported_attack, table_columns

_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_SYMBOLS = {"ℓ": r"$\ell$", "∞": r"$\infty$", "ε": r"$\varepsilon$", "±": r"$\pm$", "×": r"$\times$", "–": "--",
            "—": "---", "·": r"$\cdot$", "∪": r"$\cup$", "≠": r"$\neq$"}
_NORM = re.compile(r"ℓ(∞|\d+|p)")
_MEASURED = "measured"
_INTERVAL_NOTE = "% intervals are 95% Wilson score intervals, shown as +/- half-width; rows without one have none"


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped and ℓp / ∞ / ε written as math."""
    parts: list[str] = []
    position = 0
    for match in _NORM.finditer(text):
        parts += [_escape_plain(text[position:match.start()]), _norm(match.group(1))]
        position = match.end()
    parts.append(_escape_plain(text[position:]))
    return "".join(parts)


def _norm(subscript: str) -> str:
    """ℓ with the given subscript as inline math: $\\ell_1$, $\\ell_\\infty$, $\\ell_{12}$."""
    if subscript == "∞":
        return r"$\ell_\infty$"
    return f"$\\ell_{subscript}$" if len(subscript) == 1 else f"$\\ell_{{{subscript}}}$"


def _escape_plain(text: str) -> str:
    """Text without ℓ-norms, escaped character by character."""
    return "".join(_ESCAPES.get(char, _SYMBOLS.get(char, char)) for char in text)


def _value(row: Row, column: str) -> float | None:
    """The row's value in the column, or None when it is missing or NaN."""
    value = row.values.get(column)
    return None if value is None or math.isnan(value) else value


def _best(rows: list[Row], column: str) -> str | None:
    """The best value of the column among the rows, as printed; None when every row misses it."""
    values = [value for row in rows if (value := _value(row, column)) is not None]
    return f"{100 * max(values):.1f}" if values else None


def _cell(row: Row, column: str, best: str | None) -> str:
    """One cell: percent with one decimal, bold when best, with the Wilson half-width when there is one."""
    value = _value(row, column)
    if value is None:
        return "--"
    text = f"{100 * value:.1f}"
    if text == best:
        text = f"\\textbf{{{text}}}"
    if column in row.intervals:
        low, high = row.intervals[column]
        text += f" {{\\scriptsize $\\pm${100 * (high - low) / 2:.1f}}}"
    return text


def _label(row: Row) -> str:
    """The row's method label, escaped, with a dagger on reference rows."""
    label = latex_escape(row.label)
    if label.startswith(("[", "*")):  # else read as an argument of the preceding \\ or \midrule
        label = "{}" + label
    return label if row.source == _MEASURED else label + r"$^\dagger$"


def _caption(rows: list[Row], suite: Suite, dataset: str, group: int) -> str:
    """The caption: suite, dataset, the threats' specification, the measured rows' n, the dagger's meaning (with
    the attack the source used) when used, why a table after the dataset's first stands apart, what a cell counts."""
    caption = f"{latex_escape(suite.name)} suite on {latex_escape(dataset)}: accuracy (\\%)"
    if note := group_note(group, rows):
        caption += f" ({latex_escape(note)})"
    caption += f"; threats: {latex_escape(spec_line(rows, suite))}"
    sizes = sorted({row.n for row in rows if row.n is not None})
    if sizes:
        caption += f", $n = {', '.join(str(size) for size in sizes)}$ test examples"
    caption += "; $\\pm$: half-width of the 95\\% Wilson interval"
    if any(row.source != _MEASURED for row in rows):
        attacks = sorted({attack for row in rows if (attack := reported_attack(row))})
        used = f" with {latex_escape(', '.join(attacks))}" if attacks else ""
        caption += f"; $^\\dagger$: reported by its source{used}, not measured here"
    if has_gating(rows):
        chances = sorted({f"{100 * row.gating.chance:.1f}" for row in rows if row.gating is not None})
        caption += ("; Routing div.: mean distance between the threats' mean gate vectors (0: threat-agnostic "
                    f"routing); Gate clf.: held-out threat classifier on the gates (chance {'/'.join(chances)}\\%)")
    return f"{caption}. {latex_escape(metric_rule(suite))}"


def _gating_cells(row: Row) -> list[str]:
    """The row's routing divergence and gate-classifier accuracy, or ``--`` for each without a score."""
    return [text.replace("–", "--") for text in gating_texts(row)]


def _table(rows: list[Row], suite: Suite, dataset: str, group: int = 0) -> list[str]:
    """The lines of one table float: a dataset's rows of one comparison group (bold: the best of these only)."""
    columns = table_columns(suite)
    gating = has_gating(rows)
    extra_titles = ["Routing div.", r"Gate clf. (\%)"] if gating else []
    best = {column: _best(rows, column) for column, _ in columns}
    key = re.sub(r"[^A-Za-z0-9-]+", "-", f"{suite.name}-{dataset}").strip("-") + (f"-{group}" if group else "")
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_caption(rows, suite, dataset, group)}}}",
             f"\\label{{tab:{key}}}", _INTERVAL_NOTE,
             f"\\begin{{tabular}}{{l{'r' * (len(columns) + len(extra_titles))}}}", r"\toprule",
             " & ".join(["Method", *(latex_escape(title) for _, title in columns), *extra_titles]) + r" \\",
             r"\midrule"]
    lines += [" & ".join([_label(row), *(_cell(row, c, best[c]) for c, _ in columns),
                          *(_gating_cells(row) if gating else [])]) + r" \\" for row in rows]
    return [*lines, r"\bottomrule", r"\end{tabular}", r"\end{table}"]


def render_latex(rows: list[Row], suite: Suite) -> str:
    """Booktabs tables (one ``table`` float per dataset and comparison group, rows in the given order); needs only
    ``booktabs``."""
    if not rows:
        return f"% no results for suite '{suite.name}' yet; run rome-bench eval first\n"
    blocks = ["\n".join(_table(table, suite, dataset, group)) for dataset, group, table in tables(rows)]
    return "\n\n".join(blocks) + "\n"
