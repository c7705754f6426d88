"""The wheel carries what an installed rome-bench needs: the reference files (papers' tables, the regression checks
and their committed models) and the LICENSE. Built here, installed with --no-deps into a fresh venv whose
dependencies come from this interpreter's site-packages (never its rome_bench), and run from outside the checkout.

The full ``rome-bench check --reference synthetic-micro`` from the wheel re-evaluates 100 examples (about 75 s of
CPU): it runs in ``bench/wheel_install.py``; here the installed ``check`` resolves the names and loads the committed
model, and ``leaderboard --reference rome-paper-table1`` runs whole (about 30 s in all).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ROOT / "rome_bench" / "references"
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "rome_bench")


def build_wheel(folder: Path) -> Path:
    """The wheel of this checkout, built from a copy of its sources (nothing is written into the checkout)."""
    source = folder / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, source / name)
    # with this interpreter's setuptools when it has one (offline), else pip fetches the build requirements
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(folder / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)
    return next((folder / "dist").glob("rome_bench-*.whl"))


def fresh_venv(folder: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed; its dependencies are this interpreter's (a path entry, whose .pth
    files, among them an editable rome_bench, are not processed). Returns the venv's bin folder."""
    venv.EnvBuilder(with_pip=False).create(folder)
    bin_dir = folder / ("Scripts" if os.name == "nt" else "bin")
    purelib = Path(subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                   "['purelib'])"], check=True, capture_output=True, text=True,
                                  env=clean_env()).stdout.strip())
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q", "--no-deps",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True, timeout=300)
    return bin_dir


def clean_env() -> dict[str, str]:
    """This environment without what would point the venv at the checkout (PYTHONPATH) or at a store."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "ROME_BENCH_STORE")}
    return {**env, "OMP_NUM_THREADS": "1"}


def run_installed(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "rome-bench"), *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(folder)
    work = folder / "elsewhere"
    work.mkdir()
    return wheel, fresh_venv(folder / "venv", wheel), work


@pytest.mark.slow
def test_the_wheel_carries_every_reference_file_and_the_license(installed) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"rome_bench/references/{path.relative_to(PACKAGE_DATA).as_posix()}"
                for path in PACKAGE_DATA.rglob("*") if path.is_file()}
    assert expected and expected <= names, sorted(expected - names)
    assert any(name.endswith("licenses/LICENSE") or name.endswith("/LICENSE") for name in names), sorted(names)[-5:]


@pytest.mark.slow
def test_the_installed_command_finds_its_references_outside_the_checkout(installed) -> None:
    _, bin_dir, work = installed
    where = subprocess.run([str(bin_dir / "python"), "-c", "import rome_bench; print(rome_bench.__file__)"],
                           cwd=work, env=clean_env(), capture_output=True, text=True, check=True).stdout
    assert str(bin_dir.parent) in where and str(ROOT) not in where, where
    assert run_installed(bin_dir, work, "--version").stdout.startswith("rome-bench ")
    board = run_installed(bin_dir, work, "leaderboard", "--reference", "rome-paper-table1")
    assert board.returncode == 0 and "| RoME" in board.stdout, board.stderr
    unknown = run_installed(bin_dir, work, "check", "--reference", "no-such-reference")
    assert unknown.returncode == 2 and "cifar10-cpu, synthetic-micro" in unknown.stderr, unknown.stderr
    model = subprocess.run([str(bin_dir / "python"), "-c", (
        "from rome_bench.evaluation.regression import REFERENCE_DIR, read_reference\n"
        "import rome_bench\n"
        "check = read_reference(REFERENCE_DIR / 'synthetic-micro.json')['checks'][0]\n"
        "print(rome_bench.load_run(str(REFERENCE_DIR / check['run']), device='cpu').model_hash)\n")],
        cwd=work, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert model.returncode == 0 and len(model.stdout.strip()) == 64, model.stderr
    assert sorted(path.name for path in work.iterdir()) == [], "a reading command wrote into the directory"
