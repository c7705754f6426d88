"""The HTML leaderboard: its rows, intervals, figures and offline self-containment, then the page in headless Chromium.

The browser test needs ``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium chromium-driver``,
which ``.ci/run`` does when they are missing); it skips only where they are not installed.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from rome_bench.checkpoint import append_training_curve
from rome_bench.evaluation.html import pareto_front, render_html
from rome_bench.evaluation.leaderboard import build_leaderboard
from rome_bench.evaluation.reference import load_reference
from rome_bench.evaluation.store import ResultStore, SweepPointRecord
from rome_bench.evaluation.suites import SUITES
from rome_bench.evaluation.table import Row

SUITE = SUITES.get("seen")
ACCURACIES = {"strong": 0.9, "middling": 0.65, "weak": 0.4}  # per-threat probability of being correct
N = 120


def _fill(store: ResultStore, model_hash: str, label: str, p: float, rng: random.Random, run_dir: Path | None) -> None:
    ids = list(range(N))
    keys = []
    store.use_provenance({"device": "cpu", "world_size": 2, "executor": "torchrun", "git_commit": "def5678",
                          "versions": {"torch": "2.14.1"}})
    for column in SUITE.columns:
        key = f"{column}-key"
        store.record_threat(key, f"t-{column}", column, "seen", {"eps": 1.0})
        store.add_results(model_hash, key, "fp-data", ids, [rng.random() < p for _ in ids])
        keys.append(key)
    store.record_model(model_hash, label, "max", str(run_dir) if run_dir else None,
                       {"git_commit": "abc1234", "train_cost": {"device": "cpu", "wall_seconds": 60.0,
                                                               "forward_images": 1, "backward_images": 1}})
    store.record_suite_run(model_hash, "seen", "fp-data", "synthetic", keys, ids, "2026-01-01T00:00:00")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Row]]:
    """A page over three measured models (one with an ε sweep and a training curve) and four reported rows."""
    root = tmp_path_factory.mktemp("site")
    rng = random.Random(0)
    run_dir = root / "run-strong"
    run_dir.mkdir()
    for step, union in ((10, 0.2), (20, 0.35), (30, 0.5)):
        append_training_curve(run_dir, {"step": step, "wall_seconds": 6.0 * step, "n": 50,
                                        "accuracy": {"union": union}})
    with ResultStore(root / "results.sqlite") as store:
        for label, p in ACCURACIES.items():
            _fill(store, f"hash-{label}", label, p, rng, run_dir if label == "strong" else None)
        for scale, p in ((0.5, 0.95), (2.0, 0.3)):  # the strong model's ℓ∞ at two more budgets
            key = f"linf-{scale}"
            store.record_threat(key, "t-linf", "linf", "seen", {"eps": scale})
            store.add_results("hash-strong", key, "fp-data", list(range(N)), [rng.random() < p for _ in range(N)])
            store.record_sweep_point("hash-strong", "seen", "fp-data", SweepPointRecord("t-linf", scale, scale, key,
                                                                                       list(range(N))))
        store.record_sweep_point("hash-strong", "seen", "fp-data", SweepPointRecord("t-linf", 1.0, 1.0, "linf-key",
                                                                                   list(range(N))))
        references = [row for row in load_reference("rome-paper-table1") if row.dataset == "cifar10"][:4]
        rows = build_leaderboard(store, SUITE, references=references)
        page = render_html(rows, SUITE, store=store)
    path = root / "out" / "index.html"
    path.parent.mkdir()
    path.write_text(page)
    return path, rows


def test_pareto_front_keeps_exactly_the_undominated_points() -> None:
    points = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (0.5, 0.2), (0.9, 0.1)]
    assert pareto_front(points) == [0, 1, 3, 5]  # (0.4,0.4) and (0.5,0.2) are dominated; ties stay on the front
    assert pareto_front([(0.3, 0.3)]) == [0]


def test_page_has_every_row_reported_rows_apart_and_provenance(site: tuple[Path, list[Row]]) -> None:
    path, rows = site
    page = path.read_text()
    for row in rows:
        assert f'data-label="{row.label}"' in page
    assert page.count('class="reported"') == 4 and page.count('class="measured"') == 3
    assert "train commit: abc1234" in page and "data fingerprint: fp-data" in page and "n: 120" in page
    assert "train device: cpu" in page and "validity flags: –" in page
    assert "eval commit: def5678" in page and "eval device: cpu" in page and "world size: 2" in page
    assert "torch: 2.14.1" in page


def test_every_measured_cell_draws_its_wilson_interval(site: tuple[Path, list[Row]]) -> None:
    path, rows = site
    page = path.read_text()
    strong = next(row for row in rows if row.label == "strong")
    for column in ("nat", "l1", "union"):
        low, high = strong.intervals[column]
        assert f'class="range" x1="{100 * low:.2f}" y1="5" x2="{100 * high:.2f}"' in page
        assert f'cx="{100 * strong.values[column]:.2f}"' in page
    ranges = len(re.findall(r'class="range"', page))
    assert ranges == 3 * 6  # 3 measured rows × (Nat, ℓ1, ℓ2, ℓ∞, Avg, Union)
    assert "(reported)" in page  # reported rows draw a point only


def test_page_is_self_contained(site: tuple[Path, list[Row]]) -> None:
    page = site[0].read_text()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "<link" not in page and "<script src" not in page and "@import" not in page


def test_page_has_the_four_kinds_of_figures(site: tuple[Path, list[Row]]) -> None:
    page = site[0].read_text()
    for name in ("union-vs-clean-synthetic", "union-vs-clean-cifar10", "per-threat-synthetic", "per-threat-cifar10",
                 "sweep-0", "training-curves"):
        assert f'<figure id="{name}"' in page
    assert page.count("<svg xmlns") == 6  # both datasets: union vs clean, per threat; then sweep, curves


def test_leaderboard_cli_writes_the_page_and_needs_out(tmp_path: Path, cli_main) -> None:
    store = tmp_path / "r.sqlite"
    with ResultStore(store) as results:
        _fill(results, "h", "only model", 0.5, random.Random(1), None)
    result = cli_main("leaderboard", "--suite", "seen", "--store", str(store), "--format", "html",
                      "--out", str(tmp_path / "site"), "--reference", "rome-paper-table1")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "site" / "index.html").read_text()
    assert 'data-label="only model"' in page and "RoME+MAX" in page
    assert list((tmp_path / "site").iterdir()) == [tmp_path / "site" / "index.html"]  # nothing half-written
    missing = cli_main("leaderboard", "--suite", "seen", "--store", str(store), "--format", "html")
    assert missing.returncode != 0 and "--out DIR" in missing.stderr


def test_leaderboard_help_names_every_format(cli_main) -> None:
    from rome_bench.evaluation.render import RENDERERS

    text = cli_main("leaderboard", "--help").stdout
    assert all(name in text for name in RENDERERS)


def _browser_paths() -> tuple[str, str] | None:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    paths = _browser_paths()
    if paths is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
    yield driver
    driver.quit()


def _labels(browser, dataset: str) -> list[str]:
    from selenium.webdriver.common.by import By

    table = browser.find_element(By.CSS_SELECTOR, f'table[data-dataset="{dataset}"]')
    return [row.get_attribute("data-label") for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


def _click_header(browser, dataset: str, title: str) -> None:
    from selenium.webdriver.common.by import By

    table = browser.find_element(By.CSS_SELECTOR, f'table[data-dataset="{dataset}"]')
    next(th for th in table.find_elements(By.TAG_NAME, "th") if th.text.rstrip(" ▲▼") == title).click()


def test_page_in_headless_chromium(site: tuple[Path, list[Row]], browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    path, rows = site
    browser.get(path.as_uri())
    measured = {row.label: row for row in rows if row.dataset == "synthetic"}
    initial = _labels(browser, "synthetic")
    assert initial == sorted(measured, key=lambda label: -measured[label].values["union"])  # the terminal's order

    _click_header(browser, "synthetic", "ℓ2")  # numbers: highest first
    by_l2 = sorted(measured, key=lambda label: -measured[label].values["l2"])
    assert _labels(browser, "synthetic") == by_l2
    _click_header(browser, "synthetic", "ℓ2")  # again: reversed
    assert _labels(browser, "synthetic") == by_l2[::-1]
    _click_header(browser, "synthetic", "Method")  # text: A→Z
    assert _labels(browser, "synthetic") == sorted(measured)
    assert _labels(browser, "synthetic") != initial

    figures = browser.find_elements(By.CSS_SELECTOR, "figure.plot svg")
    assert len(figures) == 6
    for figure in figures:
        assert figure.size["width"] > 200 and figure.size["height"] > 150
        assert len(figure.find_elements(By.CSS_SELECTOR, "path")) > 20  # axes, ticks, glyphs and data drawn
    intervals = browser.find_elements(By.CSS_SELECTOR, "svg.ci line.range")
    assert intervals and all(line.size["width"] > 0 for line in intervals)

    reported = browser.find_element(By.CSS_SELECTOR, "tr.reported td")
    measured_cell = browser.find_element(By.CSS_SELECTOR, "tr.measured td")
    assert reported.value_of_css_property("background-color") != measured_cell.value_of_css_property(
        "background-color")
    method = browser.find_element(By.CSS_SELECTOR, 'tr[data-label="strong"] td.method')
    assert "train commit: abc1234" in method.get_attribute("title")
    assert "eval device: cpu" in method.get_attribute("title")
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0  # nothing fetched

    screenshot = tmp_path / "leaderboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
