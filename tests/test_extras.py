"""The [unseen] extra is optional: rome_bench imports, lists and runs the seen threats without OpenCV, scikit-image,
SciPy, kornia, lpips and imagecorruptions, and the first use of an unseen threat's library is one line naming the
extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rome_bench.errors import MissingExtraError
from rome_bench.optional import optional_module, require

UNSEEN_MODULES = ("cv2", "skimage", "scipy", "kornia", "lpips", "imagecorruptions")

WITHOUT_UNSEEN = textwrap.dedent(f"""
    import sys
    for name in {UNSEEN_MODULES!r}:
        sys.modules[name] = None  # as if the [unseen] extra were not installed
    from rome_bench.threats import THREATS, corruptions, functional, uar_geometric
    print("registered", len(THREATS))
    for proxy in (corruptions.cv2, corruptions.compat, functional.kornia_color, uar_geometric.kornia_filters):
        try:
            proxy.anything
        except Exception as error:
            print(type(error).__name__, "|", error)
""")


def test_rome_bench_imports_without_the_unseen_extra_and_names_it_on_first_use() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_UNSEEN], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("registered ") and int(lines[0].split()[1]) > 20
    assert len(lines) == 5, done.stdout
    for line in lines[1:]:
        assert line.startswith("MissingExtraError | ") and "pip install 'rome-bench[unseen]'" in line, line


def test_optional_module_imports_on_first_use_and_reports_a_missing_one(monkeypatch) -> None:
    assert optional_module("json", "unseen", "json things").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(MissingExtraError, match=r"common corruptions needs the \[unseen\] extra.*cannot import cv2"):
        _ = optional_module("cv2", "unseen", "common corruptions").resize
    with pytest.raises(MissingExtraError) as caught:
        require("cv2", "unseen", "x")
    assert "\n" not in str(caught.value)
