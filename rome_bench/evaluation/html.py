"""The leaderboard as one static, self-contained web page: ``rome-bench leaderboard --format html --out site/``.

The page opens offline (from disk, no network): its style sheet, its sorting script and every figure (inline SVG,
text drawn as paths) are inside the one ``index.html``; nothing is fetched from a CDN. It shows the rows of the
terminal table (``build_leaderboard``): every column sorts on a click, every measured cell draws its 95% Wilson
interval, rows reported by a paper are styled apart, and hovering a row's method shows its validity flags and
provenance (model hash, commit, dataset fingerprint, n, device). Below the table, figures: union against clean
accuracy with the Pareto front, per-threat accuracy per model, and, where the store holds them, ε-sweep curves
(``rome-bench eval --eps-scale``) and training-efficiency curves (``rome-bench train --eval-every N``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from rome_bench.checkpoint import read_training_curve
from rome_bench.evaluation.comparability import column_specs, group_note, spec_line, tables
from rome_bench.evaluation.plots import (
    Bar,
    ModelPoint,
    accuracy_vs_eps_figure,
    per_threat_figure,
    svg_markup,
    training_curves_figure,
    union_vs_clean_figure,
)
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import Suite
from rome_bench.evaluation.sweep import sweep_series
from rome_bench.evaluation.table import (
    Row,
    cell_text,
    costs_text,
    flags_text,
    gating_texts,
    gating_titles,
    has_gating,
    metric_rule,
    source_text,
    table_columns,
    train_cost_text,
)


@dataclass(frozen=True)
class PageCell:
    """One table cell: its text, the value it sorts by (None sorts last) and, for accuracies, what to draw."""

    text: str
    sort: float | str | None
    value: float | None = None  # accuracy in [0, 1]
    interval: tuple[float, float] | None = None
    tooltip: str = ""


@dataclass(frozen=True)
class PageRow:
    label: str
    reported: bool
    cells: list[PageCell]
    tooltip: str


@dataclass(frozen=True)
class PageTable:
    dataset: str
    headers: list[tuple[str, str]]  # (title, 'number' | 'text')
    rows: list[PageRow]
    hints: list[str]  # per header, its hover text (a threat column's: its specification)
    threats: str = ""  # the table's threat specification, per column
    note: str = ""  # why a dataset's second or later table stands apart (never ranked with another)
    group: int = 0


@dataclass(frozen=True)
class PageFigure:
    name: str  # a stable id, e.g. 'union-vs-clean'
    title: str
    caption: str
    svg: Markup


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (at least as good on both axes, better on one)."""
    return [i for i, (x, y) in enumerate(points)
            if not any(a >= x and b >= y and (a > x or b > y) for a, b in points)]


def _accuracy_cell(row: Row, column: str) -> PageCell:
    """An accuracy with its interval; its hover text says what produced it (attack, norm, ε, steps)."""
    value = row.values.get(column)
    text = cell_text(row, column)
    if column in row.not_applicable or value is None or math.isnan(value):
        return PageCell(text, None)
    interval = row.intervals.get(column)
    count = row.counts.get(column)
    tooltip = f"{100 * value:.1f}%"
    if interval is not None:
        tooltip += f", 95% Wilson interval {100 * interval[0]:.1f}–{100 * interval[1]:.1f}"
    if count is not None:
        tooltip += f" ({count.correct}/{count.total} correct)"
    if column in row.specs:
        tooltip += f"; {row.specs[column].text()}"
    return PageCell(f"{100 * value:.1f}", value, value, interval, tooltip)


def _provenance(row: Row, store: ResultStore | None) -> dict[str, str]:
    """What a reader needs to trust the row: where it came from, on which data, with what."""
    if row.source != "measured":
        return {"reported by": row.source, "dataset": row.dataset}
    facts: dict[str, Any] = {"n": row.n, "dataset": row.dataset, "data fingerprint": row.fingerprint,
                             "model hash": row.model_hash, "mode": row.mode}
    metadata = store.model_metadata(row.model_hash) if store is not None and row.model_hash else {}
    facts["train commit"] = metadata.get("git_commit")
    facts["preset"] = metadata.get("preset")
    if external := metadata.get("external"):
        facts["source"] = external.get("source")
    train_cost = row.train_cost or metadata.get("train_cost") or {}
    facts["train device"] = train_cost.get("device_name") or train_cost.get("device")
    if store is not None and row.model_hash and row.fingerprint:
        facts.update(_evaluation_provenance(store, row.model_hash, row.fingerprint))
    return {key: str(value) for key, value in facts.items() if value not in (None, "")}


def _evaluation_provenance(store: ResultStore, model_hash: str, fingerprint: str) -> dict[str, str]:
    """What computed the row's stored results (each distinct value once, joined by ' | '), per provenance field."""
    records = [record for key, *_ in store.threats_of_model(model_hash, fingerprint)
               for record in store.provenance(model_hash, key, fingerprint) if record]
    fields = {"eval commit": lambda r: r.get("git_commit"), "eval device": lambda r: r.get("device"),
              "eval dtype": lambda r: r.get("dtype"), "autocast": lambda r: r.get("amp"),
              "world size": lambda r: r.get("world_size"), "executor": lambda r: r.get("executor"),
              "torch": lambda r: (r.get("versions") or {}).get("torch"),
              "pyautoattack": lambda r: (r.get("versions") or {}).get("pyautoattack")}
    summary = {}
    for name, read in fields.items():
        values = sorted({str(value) for record in records if (value := read(record)) is not None})
        if values:
            summary[name] = " | ".join(values)
    if not records:
        summary["eval provenance"] = "not recorded (stored before rome-bench recorded it)"
    return summary


def _tooltip(row: Row, suite: Suite, store: ResultStore | None) -> str:
    lines = [f"{key}: {value}" for key, value in _provenance(row, store).items()]
    lines += [f"{suite.titles.get(column, column)}: {spec.text()}" for column, spec in row.specs.items()]
    if row.attack_differs:
        lines.append("attack: not the suite's (not ranked with rows measured by it)")
    if row.source == "measured":
        lines.append(f"validity flags: {flags_text(row, suite)}")
    return "\n".join(lines)


def _hints(rows: list[Row], suite: Suite, titles: list[str]) -> list[str]:
    """Each header's hover text: 'sort by …', with a threat column's specification."""
    specs = {suite.titles.get(column, column): spec for column, spec in column_specs(rows, suite).items() if spec}
    return [f"sort by {title}" + (f"; {specs[title].text()}" if title in specs else "") for title in titles]


def page_table(rows: list[Row], suite: Suite, dataset: str, store: ResultStore | None = None,
               costs: bool = False, group: int = 0) -> PageTable:
    """The terminal table's rows for one dataset and comparison group, as cells with sort values and drawable
    intervals, with the threats' specification (``threats``) and why it stands apart (``note``, group > 0)."""
    columns = table_columns(suite, rows)
    gating = has_gating(rows)
    headers = [("Method", "text"), ("n", "number")] + [(title, "number") for _, title in columns]
    if gating:
        headers += [(title, "number") for title in gating_titles(rows)]
    headers += [("Flags", "text"), ("Source", "text")]
    if costs:
        headers += [("Train cost", "text"), ("Eval cost", "text")]
    page_rows = []
    for row in rows:
        cells = [PageCell(row.label, row.label.lower()), PageCell("–" if row.n is None else str(row.n), row.n)]
        cells += [_accuracy_cell(row, column) for column, _ in columns]
        if gating:
            cells += [PageCell(text, None if text == "–" else float(text)) for text in gating_texts(row)]
        source = source_text(row)
        cells += [PageCell(flags_text(row, suite), flags_text(row, suite)), PageCell(source, source)]
        if costs:
            cells += [PageCell(text, text) for text in (train_cost_text(row), costs_text(row, suite))]
        page_rows.append(PageRow(row.label, row.source != "measured", cells, _tooltip(row, suite, store)))
    return PageTable(dataset, headers, page_rows, _hints(rows, suite, [title for title, _ in headers]),
                     spec_line(rows, suite), group_note(group, rows), group)


def _figure(name: str, title: str, caption: str, figure: Any) -> PageFigure:
    return PageFigure(name, title, caption, Markup(svg_markup(figure)))


def union_vs_clean(rows: list[Row], dataset: str) -> PageFigure | None:
    """Union against clean accuracy for rows that report both, with the Pareto front marked."""
    usable = [row for row in rows if {"nat", "union"} <= row.values.keys()
              and not any(math.isnan(row.values[c]) for c in ("nat", "union"))]
    if not usable:
        return None
    front = set(pareto_front([(row.values["nat"], row.values["union"]) for row in usable]))
    points = [ModelPoint(row.label, row.values["nat"], row.values["union"], row.source != "measured", i in front,
                         row.intervals.get("nat"), row.intervals.get("union")) for i, row in enumerate(usable)]
    caption = (f"Pareto front: {', '.join(p.label for p in points if p.on_front)} "
               "(no other model is at least as accurate both clean and under the union).")
    return _figure(f"union-vs-clean-{dataset}", f"Union vs clean accuracy ({dataset})", caption,
                   union_vs_clean_figure(points, f"union vs clean accuracy — {dataset}"))


def per_threat(rows: list[Row], suite: Suite, dataset: str) -> PageFigure | None:
    """Accuracy per threat column (and Union) per model, with Wilson intervals."""
    columns = [c for c in suite.columns if c != "nat"] + ["union"]
    bars: dict[str, dict[str, Bar]] = {}
    for row in rows:
        shown = {suite.titles.get(c, c) if c != "union" else "Union": Bar(row.values[c], row.intervals.get(c))
                 for c in columns if c in row.values and not math.isnan(row.values[c])
                 and c not in row.not_applicable}
        if shown:
            bars[row.label] = shown
    titles = [suite.titles.get(c, c) if c != "union" else "Union" for c in columns]
    titles = [t for t in titles if any(t in shown for shown in bars.values())]
    if not bars or not titles:
        return None
    return _figure(f"per-threat-{dataset}", f"Accuracy per threat ({dataset})",
                   "Bars: accuracy under each threat; whiskers: 95% Wilson interval (none for reported rows).",
                   per_threat_figure(bars, titles, f"accuracy per threat — {dataset}"))


def eps_sweeps(rows: list[Row], suite: Suite, store: ResultStore) -> list[PageFigure]:
    """One figure per measured model with a stored ε sweep of this suite."""
    figures: list[PageFigure] = []
    for row in rows:
        if row.source != "measured" or not row.model_hash or not row.fingerprint:
            continue
        series = sweep_series(store, row.model_hash, suite.name, row.fingerprint)
        if series:
            figures.append(_figure(f"sweep-{len(figures)}", f"ε sweep: {row.label}",
                                   "Accuracy against ε per threat (band: 95% Wilson interval; ✕: rose with ε).",
                                   accuracy_vs_eps_figure(series, f"{row.label} — {suite.name} suite")))
    return figures


def training_curves(rows: list[Row], store: ResultStore) -> PageFigure | None:
    """Union accuracy against training time, for the measured models whose run directory holds a curve."""
    curves: dict[str, list[dict]] = {}
    for row in rows:
        run_dir = store.model_run_dir(row.model_hash) if row.model_hash else None
        records = read_training_curve(Path(run_dir)) if row.source == "measured" and run_dir else []
        if records:
            curves[row.label] = records
    if not curves:
        return None
    return _figure("training-curves", "Training efficiency",
                   "Union robust accuracy on held-out examples against training wall time (--eval-every).",
                   training_curves_figure(curves, "union robustness vs training time"))


def page_figures(rows: list[Row], suite: Suite, store: ResultStore | None) -> list[PageFigure]:
    """Per dataset and comparison group (never one Pareto front across budgets), union vs clean and per-threat
    accuracy; with ``store``, the stored ε sweeps and training curves."""
    figures: list[PageFigure] = []
    for dataset, group, table in tables(rows):
        name = dataset if group == 0 else f"{dataset}-{group}"
        figures += [f for f in (union_vs_clean(table, name), per_threat(table, suite, name)) if f]
    if store is not None:
        figures += eps_sweeps(rows, suite, store)
        figures += [f for f in (training_curves(rows, store),) if f]
    return figures


def _environment() -> Environment:
    return Environment(loader=PackageLoader("rome_bench.evaluation", "templates"),
                       autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)


def render_html(rows: list[Row], suite: Suite, costs: bool = False, store: ResultStore | None = None) -> str:
    """The whole page; with ``store``, figures of stored ε sweeps and training curves and rows' provenance too."""
    pages = [page_table(table, suite, dataset, store, costs, group) for dataset, group, table in tables(rows)]
    template = _environment().get_template("leaderboard.html.j2")
    return template.render(suite=suite.name, rule=metric_rule(suite), tables=pages,
                           figures=page_figures(rows, suite, store),
                           created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
