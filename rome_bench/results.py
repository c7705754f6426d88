"""Benchmark results as a Python object: :class:`Results`, a view on a results store read on demand.

``rome_bench.benchmark`` returns one; ``Results.from_store`` reopens any store. Tables come as pandas DataFrames
(``to_pandas``, ``matrix``, ``leaderboard``), unions over any threat subset are computed per example (``union``), and
in a notebook the object displays as the leaderboard with 95% Wilson intervals and each table's threat
specification (``_repr_html_``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rome_bench.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from rome_bench.evaluation.store import ResultStore, SuiteRun
    from rome_bench.evaluation.suites import Suite
    from rome_bench.evaluation.table import Row

LONG_COLUMNS = ["model", "model_hash", "dataset", "threat", "threat_key", "column", "example_id", "correct"]


def threat_name(threat_key: str) -> str:
    """The registry name in a threat key (``pgd-linf:1a2b…`` -> ``pgd-linf``)."""
    return threat_key.rsplit(":", 1)[0]


@dataclass
class Results:
    """Stored results of one or more models on one suite: a view on the SQLite store, read on demand.

    Parameters
    ----------
    store_path : Path
        The SQLite results store.
    suite : str
        The suite the results belong to (``rome-bench list suites``).
    dataset : str
        The dataset's name, e.g. ``cifar10``.
    model_hashes : list of str
        The models (content hashes) this view shows.
    partial : list of SuiteRun, optional
        Runs of only some of the suite's threats (``benchmark(threat_model=…)`` or ``threats=…``), which the store
        does not keep as suite runs: their threats are read as they are, and their rows have no Avg or Union.

    Examples
    --------
    >>> results = rome_bench.Results.from_store("results.sqlite", "seen-pgd")  # doctest: +SKIP
    >>> results.leaderboard()         # accuracy in %, one row per model    # doctest: +SKIP
    >>> results.union(["pgd-l2", "pgd-linf"])                              # doctest: +SKIP
    >>> results                       # in a notebook: the table, with 95% Wilson intervals  # doctest: +SKIP
    """

    store_path: Path
    suite: str
    dataset: str  # the dataset's name (e.g. cifar10)
    model_hashes: list[str]
    _owner: Any = None  # keeps a temporary store alive
    partial: list[SuiteRun] = field(default_factory=list)

    @classmethod
    def from_store(cls, store: str | Path, suite: str, dataset: str | None = None) -> Results:
        """Every model with a completed run of ``suite`` in an existing store (as ``rome-bench leaderboard``)."""
        from rome_bench.evaluation.store import ResultStore

        with ResultStore(store) as results:
            runs = results.suite_runs(suite, dataset)
        if not runs:
            raise ConfigError(f"no completed '{suite}' run in {store}; run rome-bench eval --suite {suite} first")
        return cls(Path(store), suite, dataset or runs[0].dataset_name, [run.model_hash for run in runs])

    def _runs(self, results: ResultStore) -> list[SuiteRun]:
        wanted = set(self.model_hashes)
        stored = [run for run in results.suite_runs(self.suite, self.dataset) if run.model_hash in wanted]
        complete = {run.model_hash for run in stored}
        return stored + [run for run in self.partial if run.model_hash not in complete]

    def to_pandas(self) -> pd.DataFrame:
        """Long format, one row per (model, threat, example): model, model_hash, dataset, threat, threat_key, column,
        example_id, correct. Threats that do not apply to a model, and examples a union-only cascade skipped, have
        no rows."""
        import pandas as pd

        from rome_bench.evaluation.store import ResultStore

        records: list[tuple[Any, ...]] = []
        with ResultStore(self.store_path) as results:
            for run in self._runs(results):
                for key in run.threat_keys:
                    if results.not_applicable(run.model_hash, key, run.dataset):
                        continue
                    correct = results.correctness(run.model_hash, key, run.dataset)
                    name, column = threat_name(key), results.threat_column(key)
                    records.extend((run.label, run.model_hash, run.dataset_name, name, key, column, i, correct[i])
                                   for i in run.example_ids if i in correct)
        frame = pd.DataFrame.from_records(records, columns=LONG_COLUMNS)
        return frame.astype({"correct": bool, "example_id": int})

    def matrix(self) -> pd.DataFrame:
        """Wide format: one row per (model, example), one column per threat (1 robust, 0 not, missing = not attacked
        or not applicable), and ``union`` (robust under every stored threat of the suite)."""
        from rome_bench.evaluation.export import matrix_frame
        from rome_bench.evaluation.store import ResultStore

        with ResultStore(self.store_path) as results:
            frame = matrix_frame(results, self._suite(), self.dataset)
        frame = frame[frame["model_hash"].isin(self.model_hashes)]
        return frame.rename(columns={"label": "model"}).set_index(["model", "example_id"])

    def leaderboard(self, references: Sequence[str] = ()) -> pd.DataFrame:
        """The leaderboard rows (accuracy in %, union per example), as ``rome-bench leaderboard`` prints them;
        ``group`` numbers the comparison groups of a dataset (rows measured under other threat specifications, e.g.
        another ε, are in another group: never rank rows of different groups together)."""
        import pandas as pd

        rows = self.rows(references)
        suite = self._suite()
        from rome_bench.evaluation.table import table_columns

        columns = [column for column, _ in table_columns(suite, rows)]
        records = [{"model": row.label, "source": row.source, "n": row.n, "group": row.group,
                    **{column: 100 * row.values[column] if column in row.values else None for column in columns}}
                   for row in rows]
        return pd.DataFrame.from_records(records, columns=["model", "source", "n", "group", *columns])

    def _repr_html_(self) -> str:
        """The leaderboard as an HTML table for notebooks: accuracy % with 95% Wilson intervals, one table per
        comparison group, each under its threats' specification."""
        from rome_bench.evaluation.notebook import results_html

        return results_html(self.rows(), self._suite())

    def __repr__(self) -> str:
        return (f"Results(suite={self.suite!r}, dataset={self.dataset!r}, models={len(self.model_hashes)}, "
                f"store={str(self.store_path)!r})")

    def rows(self, references: Sequence[str] = ()) -> list[Row]:
        """The leaderboard's :class:`~rome_bench.evaluation.table.Row` objects (with intervals, flags, costs)."""
        from rome_bench.evaluation.comparability import assign_groups
        from rome_bench.evaluation.leaderboard import build_leaderboard, partial_row
        from rome_bench.evaluation.reference import load_reference
        from rome_bench.evaluation.store import ResultStore

        reference_rows = [row for name in references for row in load_reference(name)]
        with ResultStore(self.store_path) as results:
            rows = build_leaderboard(results, self._suite(), self.dataset, reference_rows)
            shown = {row.model_hash for row in rows}
            partial = [row for run in self.partial if run.model_hash not in shown
                       and (row := partial_row(results, run, self._suite())) is not None]
        wanted = set(self.model_hashes)
        rows = [row for row in rows if row.model_hash is None or row.model_hash in wanted]
        return assign_groups(rows + partial, self._suite()) if partial else rows

    def union(self, threats: Sequence[str]) -> pd.Series:
        """Per model, the fraction of examples robust to every threat named (threat names or columns), computed per
        example; an example a threat did not attack because it was already misclassified clean counts as broken."""
        long = self.to_pandas()
        if long.empty:
            raise ConfigError(f"no stored results for suite '{self.suite}'")
        chosen = long[long["threat"].isin(threats) | long["column"].isin(threats)]
        unknown = [name for name in threats if name not in set(long["threat"]) | set(long["column"])]
        if unknown:
            known = ", ".join(sorted(set(long["threat"])))
            raise ConfigError(f"threat '{unknown[0]}' has no results in suite '{self.suite}'; stored: {known}")
        robust = chosen.groupby(["model", "example_id"])["correct"].all()
        return robust.groupby(level="model").mean().rename("union")

    def _suite(self) -> Suite:
        from rome_bench.evaluation.suites import SUITES

        return SUITES.get(self.suite)
