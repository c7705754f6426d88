"""The skip guard (tests/skip_guard.py): in CI, a skip that its allowlist does not name fails the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.skip_guard import ALLOWLIST_VARIABLE, DEFAULT_ALLOWLIST, allowlist_path, read_allowlist

TESTS = """
import pytest

def test_passes():
    pass

def test_needs_avx512():
    pytest.skip("this CPU has no AVX512")

@pytest.mark.parametrize("kind", ["a", "b"])
def test_needs_a_browser(kind):
    pytest.skip("chromium is not installed")
"""


@pytest.fixture
def guarded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project whose conftest loads the guard, with the tests above and an allowlist file named by the variable."""
    pytester.makeconftest('pytest_plugins = ["tests.skip_guard"]')
    pytester.makepyfile(test_machine=TESTS)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(ALLOWLIST_VARIABLE, str(pytester.path / "allowlist.txt"))
    return pytester


def run_with_allowlist(guarded: pytest.Pytester, allowlist: str) -> pytest.RunResult:
    """Run the guarded session with this allowlist text: one test passes, three skip."""
    (guarded.path / "allowlist.txt").write_text(allowlist)
    result = guarded.runpytest()
    result.assert_outcomes(passed=1, skipped=3)
    return result


def test_a_skip_not_on_the_allowlist_fails_the_run_and_is_named(guarded: pytest.Pytester) -> None:
    result = run_with_allowlist(guarded, "# no AVX512 on this machine kind\n"
                                         "test_machine.py::test_needs_avx512  # AVX2 only\n")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*unexpected skips*", "test_machine.py::test_needs_a_browser[[]a[]]: chromium is not "
                                 "installed", "test_machine.py::test_needs_a_browser[[]b[]]: chromium is not installed",
                                 "2 test(s) skipped that *allowlist.txt does not allow*"])
    result.stdout.no_fnmatch_line("test_machine.py::test_needs_avx512:*")


def test_skips_on_the_allowlist_pass(guarded: pytest.Pytester) -> None:
    result = run_with_allowlist(guarded, "test_machine.py::test_needs_avx512\n"
                                         "test_machine.py::test_needs_a_browser[*]  # no chromium here\n")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.no_fnmatch_line("*unexpected skips*")


def test_a_module_skipped_at_collection_is_guarded_too(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_reference='import pytest\n\npytest.importorskip("no_such_reference_library")\n\n\n'
                                      'def test_against_it():\n    pass\n')
    (guarded.path / "allowlist.txt").write_text("test_machine.py::*\n")
    result = guarded.runpytest()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_reference.py: could not import 'no_such_reference_library'*"])


def test_the_guard_is_off_outside_ci_and_on_with_ci_true(guarded: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWLIST_VARIABLE)
    assert allowlist_path() is None
    result = guarded.runpytest()
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == pytest.ExitCode.OK
    monkeypatch.setenv("CI", "true")
    assert allowlist_path() == DEFAULT_ALLOWLIST


def test_a_missing_allowlist_is_a_usage_error(guarded: pytest.Pytester) -> None:
    result = guarded.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*skip allowlist *allowlist.txt does not exist; create it or unset "
                                 f"${ALLOWLIST_VARIABLE}*"])


def test_the_allowlist_patterns_match_whole_node_ids_with_only_star_special(tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text("# comment\n\ntests/test_x.py::test_y[a]  # reason\ntests/test_x.py::test_z*\n")
    first, second = read_allowlist(allowlist)
    assert first.fullmatch("tests/test_x.py::test_y[a]") and not first.fullmatch("tests/test_x.py::test_ya")
    assert not first.fullmatch("tests/test_x.py::test_y[a]-more")
    assert second.fullmatch("tests/test_x.py::test_z[anything]") and not second.fullmatch("tests/test_x.py::test_y")


def test_every_entry_of_the_repository_allowlist_names_an_existing_test() -> None:
    """A stale entry (a renamed test) would allow a skip nobody checks any more."""
    root = DEFAULT_ALLOWLIST.parent.parent
    for line in DEFAULT_ALLOWLIST.read_text().splitlines():
        if entry := line.split("#", 1)[0].strip():
            path, _, test = entry.partition("::")
            name = re.split(r"[\[*]", test)[0]
            assert (root / path).is_file() and f"def {name}" in (root / path).read_text(), entry
