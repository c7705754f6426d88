"""The leaderboard's output formats: ``RENDERERS[format](rows, suite, costs=..., store=...)``.

Imports point one way: ``table.py`` holds the rows and the cell texts, ``leaderboard.py`` builds the rows, and
this module renders them: md, csv and json here, tex through ``latex.py``, the static page through ``html.py``.
Only the page reads the store (``store``: ε sweeps, training curves and provenance); the text formats ignore it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rome_bench.errors import ConfigError
from rome_bench.evaluation.comparability import (
    NOT_RECORDED,
    column_specs,
    group_note,
    spec_line,
    tables,
    threat_columns,
)
from rome_bench.evaluation.latex import render_latex
from rome_bench.evaluation.leaderboard import build_leaderboard
from rome_bench.evaluation.store import GatingScore, ResultStore
from rome_bench.evaluation.suites import Suite
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

TRAIN_COST_FIELDS = ("wall_seconds", "device", "device_name", "forward_images", "backward_images")
GATING_CSV_COLUMNS = ["routing_divergence", "gate_classifier_accuracy", "gate_classifier_chance", "gating_suite",
                      "gating_n"]


def render_markdown(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    """One Markdown table per dataset and comparison group, each under a line stating its threats' specification
    (attack, norm, ε, steps, restarts); with ``costs``, a training-cost and an evaluation-cost column."""
    lines: list[str] = []
    for dataset, group, table in tables(rows):
        columns = table_columns(suite, table)
        gating = has_gating(table)
        titles = [title for _, title in columns] + (list(gating_titles(table)) if gating else [])
        note = group_note(group, table)
        lines += [f"### {suite.name} suite on {dataset} — accuracy % (95% Wilson interval)"
                  + (f" — {note}" if note else ""), "", f"Threats: {spec_line(table, suite)}", "",
                  metric_rule(suite), ""]
        extra = " Train cost | Eval cost |" if costs else ""
        lines.append("| Method | n | " + " | ".join(titles) + f" | Flags | Source |{extra}")
        lines.append("|---|---:|" + "---:|" * len(titles) + "---|---|" + ("---|---|" if costs else ""))
        for row in table:
            cells = " | ".join([cell_text(row, c) for c, _ in columns] + (list(gating_texts(row)) if gating else []))
            cost = f" {train_cost_text(row)} | {costs_text(row, suite)} |" if costs else ""
            lines.append(f"| {row.label} | {row.n if row.n is not None else '–'} | {cells} | "
                         f"{flags_text(row, suite)} | {source_text(row)} |{cost}")
        lines.append("")
    return "\n".join(lines) if lines else f"no results for suite '{suite.name}' yet; run rome-bench eval first"


def row_specs(row: Row, suite: Suite) -> dict[str, str]:
    """Per threat column, what produced the row's number ('not recorded' where unknown)."""
    return {column: row.specs[column].text() if column in row.specs else NOT_RECORDED
            for column in threat_columns(suite)}


def render_csv(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    """One record per row: accuracy and Wilson bounds per column (empty where missing), raw costs and gating, then
    its comparison ``group`` (rows of different groups on a dataset were measured differently: never rank them
    together) and per threat column ``<column>_threat``, what produced the number (attack, norm, ε, steps)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = [c for c, _ in table_columns(suite, rows)]
    gating = has_gating(rows)
    writer.writerow(_csv_header(columns, suite, costs, gating))
    for row in rows:
        flags = "" if flags_text(row, suite) == "–" else flags_text(row, suite)
        record: list[Any] = [row.method, row.label, row.dataset, row.n, row.source, row.mode, flags]
        for column in columns:
            low, high = row.intervals.get(column, (None, None))
            record += [row.values.get(column), low, high]
        if costs:
            record += _cost_record(row, suite)
        if gating:
            record += _gating_record(row.gating)
        writer.writerow([*record, row.group, *row_specs(row, suite).values()])
    return buffer.getvalue()


def _csv_header(columns: list[str], suite: Suite, costs: bool, gating: bool) -> list[str]:
    header = ["method", "label", "dataset", "n", "source", "mode", "flags"]
    for column in columns:
        header += [column, f"{column}_low", f"{column}_high"]
    if costs:
        header += [f"train_{name}" for name in TRAIN_COST_FIELDS]
        for column in suite.columns:
            header += [f"{column}_seconds", f"{column}_forward_images", f"{column}_backward_images"]
    if gating:
        header += GATING_CSV_COLUMNS
    return [*header, "group", *(f"{column}_threat" for column in threat_columns(suite))]


def _cost_record(row: Row, suite: Suite) -> list[Any]:
    """The training cost's fields, then per threat column its seconds and forward and backward images."""
    record: list[Any] = [(row.train_cost or {}).get(name) for name in TRAIN_COST_FIELDS]
    for column in suite.columns:
        cost = row.costs.get(column)
        record += [cost.seconds, cost.forward_images, cost.backward_images] if cost else [None] * 3
    return record


def _gating_record(score: GatingScore | None) -> list[Any]:
    if score is None:
        return [None] * len(GATING_CSV_COLUMNS)
    return [score.divergence, score.classifier_accuracy, score.chance, score.suite, score.n_examples]


def _gating_json(score: GatingScore | None) -> dict[str, Any] | None:
    if score is None:
        return None
    return {"suite": score.suite, "n": score.n_examples, "routing_divergence": score.divergence,
            "per_layer": score.per_layer, "classifier_accuracy": score.classifier_accuracy, "chance": score.chance,
            "threats": score.threats}


def render_json(rows: list[Row], suite: Suite, costs: bool = False) -> str:
    """The suite, its columns, its tables (one per dataset and comparison group, with each threat column's
    specification) and every row's accuracies, intervals, flags, group and threat specifications (costs and gating
    when asked/known)."""
    gating = has_gating(rows)
    payload = {"suite": suite.name, "columns": [c for c, _ in table_columns(suite, rows)], "tables": [
        {"dataset": dataset, "group": group, "note": group_note(group, table) or None,
         "threats": {c: spec.text() if spec else None for c, spec in column_specs(table, suite).items()}}
        for dataset, group, table in tables(rows)], "rows": [
        {"label": row.label, "method": row.method, "dataset": row.dataset, "n": row.n, "source": row.source,
         "mode": row.mode, "accuracy": row.values, "wilson95": {c: list(v) for c, v in row.intervals.items()},
         "flags": row.flags, "group": row.group, "threats": row_specs(row, suite),
         "attack_differs_from_suite": row.attack_differs,
         **({"costs": {c: dataclasses.asdict(v) for c, v in row.costs.items()}, "train_cost": row.train_cost}
            if costs else {}),
         **({"gating": _gating_json(row.gating)} if gating else {})}
        for row in rows]}
    return json.dumps(payload, indent=2, ensure_ascii=False)


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


def render_leaderboard(store: ResultStore, suite: Suite, dataset: str | None = None, format_: str = "md",
                       references: Sequence[str] = (), costs: bool = False) -> str:
    """The leaderboard of ``suite`` in ``format_``: the rows measured in ``store`` (of ``dataset``, or every dataset)
    and the rows of the ``references`` (paper tables, RobustBench's numbers), sorted by Union."""
    from rome_bench.evaluation.reference import load_reference  # loads the model zoo's names: only when asked

    if format_ not in RENDERERS:
        raise ConfigError(f"unknown format '{format_}'; choose one of: {', '.join(RENDERERS)}")
    reference_rows = [row for name in references for row in load_reference(name)]
    rows = build_leaderboard(store, suite, dataset, reference_rows)
    return RENDERERS[format_](rows, suite, costs=costs, store=store)


def output_path(format_: str, out: Path) -> Path:
    """Where ``--out`` puts a format's output: a page goes into a directory unless ``out`` names an .html file."""
    if format_ in PAGE_FORMATS and out.suffix != ".html":
        return out / "index.html"
    return out


EMPTY_STORE = Path(":memory:")  # sqlite's in-memory database: an empty store that leaves no file


def publish_leaderboard(store: Path | None, suite: str, dataset: str | None = None, format_: str = "md",
                        references: Sequence[str] = (), costs: bool = False, out: Path | None = None,
                        detail: bool = False) -> str:
    """``rome-bench leaderboard``: the suite's table (``detail``: pooled columns expanded into their threats) from
    ``store`` (which must exist; None: the default store, which may be missing when ``references`` are given), to
    print, or written atomically to ``out`` (a page
    format: into that directory), in which case where it went, in one line."""
    from rome_bench.checkpoint import atomic_write_text
    from rome_bench.evaluation.store import existing_store
    from rome_bench.evaluation.suites import SUITES

    chosen = SUITES.get(suite)
    path = existing_store(store, optional=bool(references))  # references alone need no store
    with ResultStore(path if path is not None else EMPTY_STORE) as results:
        if format_ not in RENDERERS:
            raise ConfigError(f"unknown format '{format_}'; choose one of: {', '.join(RENDERERS)}")
        if costs and format_ not in COST_FORMATS:
            raise ConfigError(f"--format {format_} has no cost columns (it follows the paper's tables); drop "
                              f"--costs, or use --format {' | '.join(COST_FORMATS)} for them")
        if format_ in PAGE_FORMATS and out is None:
            raise ConfigError(f"--format {format_} writes a web page; give --out DIR (it writes DIR/index.html)")
        text = render_leaderboard(results, chosen.detailed() if detail else chosen, dataset, format_, references,
                                  costs)
        if out is None:
            return text
        path = output_path(format_, out)
        atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return f"leaderboard ({format_}) -> {path}"
