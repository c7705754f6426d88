"""Skip guard (a pytest plugin): in CI, a test that skips without being on the allowlist fails the run.

A missing reference library, browser or data file makes its tests skip; locally that is a convenience, in CI it
would silently shrink the suite. The guard is on when ``$ROME_BENCH_SKIP_ALLOWLIST`` names an allowlist file, or
when ``$CI`` is ``true`` or ``1`` (then it reads ``tests/skip-allowlist.txt``). The file holds one test node id
pattern per line (``*`` matches anything, nothing else is special); ``#`` starts a comment, which says what makes
the entry skip. After the run, every skip (at collection or in a test) that matches no pattern is listed and the
session's exit status becomes 1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ALLOWLIST_VARIABLE = "ROME_BENCH_SKIP_ALLOWLIST"
DEFAULT_ALLOWLIST = Path(__file__).with_name("skip-allowlist.txt")


def allowlist_path() -> Path | None:
    """The allowlist the guard reads, or None when the guard is off."""
    if named := os.environ.get(ALLOWLIST_VARIABLE):
        return Path(named)
    if os.environ.get("CI", "").lower() in ("true", "1"):
        return DEFAULT_ALLOWLIST
    return None


def read_allowlist(path: Path) -> list[re.Pattern[str]]:
    """The node id patterns of an allowlist file, each as a regular expression matching a whole node id."""
    if not path.is_file():
        raise pytest.UsageError(f"skip allowlist {path} does not exist; create it or unset ${ALLOWLIST_VARIABLE}")
    patterns = []
    for line in path.read_text().splitlines():
        if entry := line.split("#", 1)[0].strip():
            patterns.append(re.compile(".*".join(re.escape(part) for part in entry.split("*"))))
    return patterns


class SkipGuard:
    """Records the skips of one session and fails it when one is not on the allowlist."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.patterns = read_allowlist(path)
        self.unexpected: list[tuple[str, str]] = []  # (node id, skip reason)

    def record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        if any(pattern.fullmatch(report.nodeid) for pattern in self.patterns):
            return
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        self.unexpected.append((report.nodeid, reason.removeprefix("Skipped: ")))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.record(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.section("unexpected skips", sep="=", red=True, bold=True)
        for nodeid, reason in self.unexpected:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line(f"{len(self.unexpected)} test(s) skipped that {self.path} does not allow: install what "
                              f"they need, or add them there with the machine condition that makes them skip",
                              red=True)


def pytest_configure(config: pytest.Config) -> None:
    if (path := allowlist_path()) is not None:
        config.pluginmanager.register(SkipGuard(path), "rome-bench-skip-guard")
