from pathlib import Path

import pytest

from rome_bench.evaluation.plots import SweepPoint, plot_accuracy_vs_eps
from rome_bench.evaluation.sweep import monotonicity_violations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sweep(epsilons: list[float], accuracies: list[float], flagged: frozenset[int] = frozenset()) -> list[SweepPoint]:
    return [SweepPoint(eps, acc, max(0.0, acc - 0.05), min(1.0, acc + 0.05), i in flagged)
            for i, (eps, acc) in enumerate(zip(epsilons, accuracies, strict=True))]


SERIES = {
    "ℓ1": sweep([3.0, 6.0, 12.0], [0.6, 0.4, 0.45], flagged=frozenset({2})),
    "ℓ∞": sweep([2 / 255, 4 / 255, 8 / 255], [0.7, 0.5, 0.3]),
}


def test_plot_writes_a_png_into_new_directories(tmp_path: Path) -> None:
    path = tmp_path / "figures" / "deep" / "sweep.png"
    assert plot_accuracy_vs_eps(SERIES, path, "seen suite") == path
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_SIGNATURE)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_replot_replaces_the_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "sweep.png"
    path.write_bytes(b"stale")
    plot_accuracy_vs_eps({"ℓ2": sweep([0.5, 1.0], [0.5, 0.4])}, path, "first")
    first = path.read_bytes()
    plot_accuracy_vs_eps(SERIES, path, "second")
    second = path.read_bytes()
    assert first.startswith(PNG_SIGNATURE) and second.startswith(PNG_SIGNATURE)
    assert first != second
    assert list(tmp_path.iterdir()) == [path]


def test_plot_rejects_an_empty_series(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_accuracy_vs_eps({}, tmp_path / "x.png", "empty")
    with pytest.raises(ValueError):
        plot_accuracy_vs_eps({"ℓ1": []}, tmp_path / "x.png", "empty")


def test_monotonicity_violations_finds_a_rise() -> None:
    assert monotonicity_violations([(0.0, 90), (1.0, 40), (2.0, 45), (3.0, 42)]) == [2]
    assert monotonicity_violations([(0.0, 10), (1.0, 11), (2.0, 12)]) == [1, 2]


def test_monotonicity_violations_uses_eps_order_and_input_indices() -> None:
    assert monotonicity_violations([(2.0, 45), (0.0, 90), (1.0, 40)]) == [0]


def test_monotonicity_violations_is_empty_for_non_increasing_series() -> None:
    assert monotonicity_violations([(0.0, 50), (1.0, 50), (2.0, 30), (3.0, 30), (4.0, 0)]) == []
    assert monotonicity_violations([]) == []
    assert monotonicity_violations([(1.0, 5)]) == []


def test_monotonicity_violations_rejects_repeated_eps() -> None:
    with pytest.raises(ValueError):
        monotonicity_violations([(1.0, 5), (1.0, 6)])


def test_plot_works_with_pyplot_already_imported(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    path = plot_accuracy_vs_eps(SERIES, tmp_path / "sweep.pdf", "pdf too")
    assert path.read_bytes().startswith(b"%PDF")
    assert plt.get_fignums() == before


def test_whiskers_are_never_negative_at_the_edges() -> None:
    from rome_bench.evaluation.plots import whiskers
    from rome_bench.evaluation.table import wilson_interval

    for correct, n in ((0, 100), (100, 100), (0, 7), (3, 7)):
        below, above = whiskers([correct / n], [wilson_interval(correct, n)])
        assert below[0] >= 0 and above[0] >= 0
