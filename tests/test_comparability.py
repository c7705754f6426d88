"""Issue 27, item 1: a store mixing budgets never ranks them together, in any format, and every format states
each column's threat specification (attack, norm, ε, steps); reported rows name their attack."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from pathlib import Path

import pytest

from rome_bench.config import ThreatsConfig
from rome_bench.evaluation.leaderboard import build_leaderboard
from rome_bench.evaluation.reference import load_reference
from rome_bench.evaluation.render import RENDERERS, render_leaderboard
from rome_bench.evaluation.specs import ThreatSpec, format_eps, parse_eps
from rome_bench.evaluation.store import ResultStore
from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.table import Row

N = 50
DEFAULT_EPS = {"l1": 12.0, "l2": 0.5, "linf": 8 / 255}
TINY_EPS = {"l1": 0.05, "l2": 0.001, "linf": 0.001}
# (label, ε, per-threat probability correct): the tiny-ε model looks far more robust than it is
MODELS = [("tiny-eps", TINY_EPS, 0.95), ("strong", DEFAULT_EPS, 0.6), ("weak", DEFAULT_EPS, 0.3)]


def fill(store: ResultStore, suite: str, label: str, eps: dict[str, float], p: float, rng: random.Random) -> None:
    """A completed run of ``suite`` with real threat keys and parameters, and random per-example results."""
    threats = SUITES.get(suite).build(ThreatsConfig(eps=dict(eps)))
    ids = list(range(N))
    for threat in threats:
        store.record_threat(threat.key, threat.name, threat.column, threat.tag, threat.params())
        store.add_results(f"hash-{label}", threat.key, "fp", ids, [rng.random() < p for _ in ids])
    store.record_model(f"hash-{label}", label, "max", None, {})
    store.record_suite_run(f"hash-{label}", suite, "fp", "cifar10", [t.key for t in threats], ids,
                           "2026-01-01T00:00:00")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mixed") / "results.sqlite"
    rng = random.Random(0)
    with ResultStore(path) as store:
        for suite in ("seen-pgd", "seen"):
            for label, eps, p in MODELS:
                fill(store, suite, label, eps, p, rng)
    return path


def render(store_path: Path, format_: str, suite: str = "seen-pgd", references: tuple[str, ...] = ()) -> str:
    with ResultStore(store_path) as store:
        return render_leaderboard(store, SUITES.get(suite), "cifar10", format_, references)


def rows_of(store_path: Path, suite: str = "seen-pgd", references: tuple[str, ...] = ()) -> list[Row]:
    reference_rows = [row for name in references for row in load_reference(name)]
    with ResultStore(store_path) as store:
        return build_leaderboard(store, SUITES.get(suite), "cifar10", reference_rows)


def test_rows_of_another_budget_form_their_own_group(store_path: Path) -> None:
    rows = rows_of(store_path)
    groups = {row.label: row.group for row in rows}
    assert groups == {"strong": 0, "weak": 0, "tiny-eps": 1}
    assert [row.label for row in rows] == ["strong", "weak", "tiny-eps"]  # tiny-ε never ranked first
    tiny = next(row for row in rows if row.label == "tiny-eps")
    assert tiny.values["union"] > max(row.values["union"] for row in rows if row.label != "tiny-eps")
    assert tiny.specs["linf"].text() == "PGD ℓ∞ ε=0.001, 50 steps, 1 restart"
    assert rows[0].specs["linf"].text() == "PGD ℓ∞ ε=8/255, 50 steps, 1 restart"


def test_markdown_states_each_tables_threats_and_splits_budgets(store_path: Path) -> None:
    text = render(store_path, "md")
    first, second = text.split("### ")[1:]
    assert "Threats: ℓ1: PGD ℓ1 ε=12, 50 steps, 1 restart · ℓ2: PGD ℓ2 ε=0.5" in first
    assert "ℓ∞: PGD ℓ∞ ε=8/255, 50 steps" in first and "tiny-eps" not in first
    assert "not ranked" in second.splitlines()[0] and "ℓ∞: PGD ℓ∞ ε=0.001" in second
    assert "| tiny-eps |" in second and "| strong |" not in second


def test_csv_and_json_carry_the_group_and_each_columns_specification(store_path: Path) -> None:
    records = list(csv.DictReader(io.StringIO(render(store_path, "csv"))))
    by_label = {record["label"]: record for record in records}
    assert by_label["tiny-eps"]["group"] == "1" and by_label["strong"]["group"] == "0"
    assert by_label["tiny-eps"]["linf_threat"] == "PGD ℓ∞ ε=0.001, 50 steps, 1 restart"
    assert by_label["weak"]["l1_threat"] == "PGD ℓ1 ε=12, 50 steps, 1 restart"
    payload = json.loads(render(store_path, "json"))
    assert [(t["group"], t["threats"]["linf"]) for t in payload["tables"]] == [
        (0, "PGD ℓ∞ ε=8/255, 50 steps, 1 restart"), (1, "PGD ℓ∞ ε=0.001, 50 steps, 1 restart")]
    assert payload["tables"][1]["note"] and payload["tables"][0]["note"] is None
    assert {row["label"]: row["group"] for row in payload["rows"]} == {"strong": 0, "weak": 0, "tiny-eps": 1}


def test_latex_bolds_within_one_budget_only(store_path: Path) -> None:
    tex = render(store_path, "tex")
    floats = tex.split(r"\end{table}")[:-1]
    assert len(floats) == 2
    main, apart = floats
    assert r"$\varepsilon$=8/255, 50 steps" in main and "tiny-eps" not in main
    assert r"$\varepsilon$=0.001" in apart and "not ranked" in apart
    strong = next(line for line in main.splitlines() if line.startswith("strong"))
    assert strong.split(" & ")[-1].startswith(r"\textbf")  # the best union among the 8/255 rows


def test_html_states_threats_in_the_legend_the_headers_and_the_hover_text(store_path: Path) -> None:
    page = render(store_path, "html")
    assert page.count('data-dataset="cifar10"') == 2
    assert 'data-group="1"' in page
    legends = re.findall(r'<p class="threats">Threats: (.*?)</p>', page)
    assert "ε=8/255" in legends[0] and "ε=0.001" in legends[1]
    assert 'title="sort by ℓ∞; PGD ℓ∞ ε=8/255, 50 steps, 1 restart"' in page
    assert re.search(r'title="[^"]*correct\); PGD ℓ∞ ε=0.001', page)  # a cell's hover text


def test_reported_autoattack_rows_are_marked_and_apart_from_the_pgd_suite(store_path: Path) -> None:
    rows = rows_of(store_path, "seen-pgd", ("rome-paper-table1",))
    reported = [row for row in rows if row.source != "measured"]
    assert reported and all(row.attack_differs and row.group == 2 for row in reported)
    text = render(store_path, "md", "seen-pgd", ("rome-paper-table1",))
    table = text.split("### ")[3]
    assert "reported under other attacks than the suite's" in table.splitlines()[0]
    assert "AutoAttack-standard ℓ∞ ε=8/255 (reported)" in table
    assert "; AutoAttack-standard ≠ suite |" in table
    payload = json.loads(render(store_path, "json", "seen-pgd", ("rome-paper-table1",)))
    assert all(row["attack_differs_from_suite"] for row in payload["rows"] if row["source"] != "measured")


def test_reported_rows_of_the_suites_own_attack_and_budget_rank_with_it(store_path: Path) -> None:
    rows = rows_of(store_path, "seen", ("rome-paper-table1",))
    reported = [row for row in rows if row.source != "measured"]
    assert reported and all(row.group == 0 and not row.attack_differs for row in reported)
    assert {row.group for row in rows if row.label == "tiny-eps"} == {1}
    text = render(store_path, "md", "seen", ("rome-paper-table1",))
    assert "; AutoAttack-standard |" in text and "≠ suite" not in text
    assert "ℓ∞: AutoAttack-standard ℓ∞ ε=8/255" in text


@pytest.mark.parametrize("format_", sorted(RENDERERS))
def test_no_format_ranks_the_tiny_budget_above_the_others(store_path: Path, format_: str) -> None:
    text = render(store_path, format_)
    assert text.index("strong") < text.index("tiny-eps")


def test_eps_texts() -> None:
    assert format_eps(8 / 255) == "8/255" and format_eps(0.001) == "0.001" and format_eps(12.0) == "12"
    assert format_eps(0.5) == "0.5"
    assert parse_eps("4/255") == pytest.approx(4 / 255) and parse_eps("0.25") == 0.25 and parse_eps(3) == 3.0
    with pytest.raises(ValueError):
        parse_eps("eight")
    reported = ThreatSpec("AutoAttack-standard", "l1", 12.0, reported=True)
    assert reported.text() == "AutoAttack-standard ℓ1 ε=12 (reported)"


def test_the_api_frame_and_notebook_view_keep_budgets_apart(store_path: Path) -> None:
    from rome_bench.results import Results

    results = Results.from_store(store_path, "seen-pgd")
    board = results.leaderboard()
    assert dict(zip(board["model"], board["group"], strict=True)) == {"strong": 0, "weak": 0, "tiny-eps": 1}
    page = results._repr_html_()
    assert page.count("<table>") == 2 and page.index("strong") < page.index("not ranked") < page.index("tiny-eps")
