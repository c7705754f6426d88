"""The wheel in a fresh venv, end to end: build it, install it with --no-deps, and run from outside the checkout
``rome-bench check --reference synthetic-micro`` (the committed model re-evaluated on 100 examples, about 75 s of CPU)
and ``rome-bench leaderboard --reference rome-paper-table1``. tests/test_wheel.py runs the fast part in CI; this is
the whole of it, for a release:

    python bench/wheel_install.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_wheel import build_wheel, fresh_venv, run_installed


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rome-bench-wheel-") as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        wheel = build_wheel(folder)
        bin_dir = fresh_venv(folder / "venv", wheel)
        work = folder / "elsewhere"
        work.mkdir()
        print(f"built and installed {wheel.name} in {time.perf_counter() - started:.0f} s")
        failed = 0
        for args in (["--version"], ["leaderboard", "--reference", "rome-paper-table1"],
                     ["check", "--reference", "synthetic-micro", "--device", "cpu", "--no-progress"]):
            started = time.perf_counter()
            result = run_installed(bin_dir, work, *args)
            last = (result.stdout.strip().splitlines() or [""])[-1]
            print(f"rome-bench {' '.join(args)}: exit {result.returncode} in {time.perf_counter() - started:.0f} s"
                  f" ({last or result.stderr.strip()})")
            failed += result.returncode != 0
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
