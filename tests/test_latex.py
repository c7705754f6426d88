import math
import re

from rome_bench.evaluation.latex import latex_escape, render_latex
from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.table import Row, table_columns

SUITE = SUITES.get("seen")
COLUMNS = [column for column, _ in table_columns(SUITE)]


def measured(label: str, dataset: str, values: dict[str, float], n: int = 100) -> Row:
    """A measured row with a ±2-point interval around every value."""
    intervals = {c: (v - 0.02, v + 0.02) for c, v in values.items() if not math.isnan(v)}
    return Row(label=label, method="m", dataset=dataset, n=n, values=values, intervals=intervals)


def rows() -> list[Row]:
    return [
        measured("RoME_ViT & co", "cifar10", {"nat": 0.90, "l1": 0.40, "l2": 0.60, "linf": 0.45, "avg": 0.4833,
                                                 "union": 0.35}),
        measured("plain", "cifar10", {"nat": 0.95, "l1": 0.10, "l2": float("nan"), "linf": 0.05, "avg": 0.075,
                                      "union": 0.02}),
        Row(label="MAT [paper]", method="max", dataset="cifar10", n=None,
            values={"nat": 0.80, "l1": 0.50, "linf": 0.40, "avg": 0.45, "union": 0.30}, source="Paper et al."),
        measured("other", "svhn", {"nat": 0.93, "l1": 0.30, "l2": 0.50, "linf": 0.40, "avg": 0.40, "union": 0.25}),
    ]


def body_lines(tex: str) -> list[str]:
    """The lines of every tabular that end a row (header included)."""
    return [line for line in tex.splitlines() if line.endswith(r"\\")]


def unescaped_ampersands(line: str) -> int:
    return len(re.findall(r"(?<!\\)&", line))


def test_escaping_of_labels_and_titles() -> None:
    tex = render_latex(rows(), SUITE)
    assert r"RoME\_ViT \& co" in tex
    assert "RoME_ViT" not in tex
    assert latex_escape(r"a&b%c$d#e_f{g}h~i^j\k") == (
        r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k")
    assert latex_escape("ℓ1") == r"$\ell_1$"
    assert latex_escape("ℓ∞ PGD") == r"$\ell_\infty$ PGD"
    assert r"Method & Nat & $\ell_1$ & $\ell_2$ & $\ell_\infty$ & Avg & Union \\" in tex


def test_best_value_of_each_column_is_bold() -> None:
    tex = render_latex(rows(), SUITE)
    cifar = tex.split(r"\end{table}")[0]
    assert r"\textbf{95.0}" in cifar  # nat: plain
    assert r"\textbf{50.0}" in cifar  # l1: the reference row
    assert r"\textbf{35.0}" in cifar  # union: RoME
    assert r"\textbf{90.0}" not in cifar
    assert cifar.count(r"\textbf") == len(COLUMNS)


def test_missing_values_print_as_dashes_and_reference_rows_have_no_interval() -> None:
    tex = render_latex(rows(), SUITE)
    plain = next(line for line in body_lines(tex) if line.startswith("plain"))
    reference = next(line for line in body_lines(tex) if line.startswith("MAT"))
    assert plain.split(" & ")[3] == "--"  # l2 is NaN
    assert reference.split(" & ")[3] == "--"  # l2 is absent
    assert r"\pm" not in reference
    assert r"$^\dagger$" in reference
    assert r"{\scriptsize $\pm$2.0}" in plain
    assert "% intervals are 95% Wilson" in tex


def test_one_table_and_header_per_dataset_with_balanced_environments() -> None:
    tex = render_latex(rows(), SUITE)
    assert tex.count("Method & ") == 2
    assert tex.count(r"\begin{table}") == 2
    assert "suite on cifar10" in tex and "suite on svhn" in tex
    for environment in ("table", "tabular"):
        assert tex.count(rf"\begin{{{environment}}}") == tex.count(rf"\end{{{environment}}}")
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 2


def test_tabular_spec_matches_the_cells_of_every_row() -> None:
    tex = render_latex(rows(), SUITE)
    specs = re.findall(r"\\begin\{tabular\}\{([lcr]+)\}", tex)
    assert specs and all(len(spec) == len(COLUMNS) + 1 for spec in specs)
    lines = body_lines(tex)
    assert len(lines) == 2 + 4  # two headers, four rows
    assert all(unescaped_ampersands(line) + 1 == len(specs[0]) for line in lines)


def test_no_rows_gives_a_comment() -> None:
    assert render_latex([], SUITE).startswith("%")


def test_a_label_starting_with_a_bracket_is_not_read_as_an_optional_argument() -> None:
    row = measured("[AT] ViT", "cifar10", {"nat": 0.9, "avg": 0.5, "union": 0.4})
    assert "\n{}[AT] ViT & " in render_latex([row], SUITE)
