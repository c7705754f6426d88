import subprocess
import sys
import textwrap

import pytest

from rome_bench.errors import RomeBenchError, UnknownEntryError
from rome_bench.registry import Registry


def test_register_get_and_metadata():
    registry: Registry[object] = Registry("widgets")

    @registry.register("round-widget", sides=0)
    class Round:
        pass

    assert registry.get("round-widget") is Round
    assert registry.entry("round-widget").metadata == {"sides": 0}
    assert registry.names() == ["round-widget"]
    assert "round-widget" in registry


def test_scoped_undoes_its_registrations_even_on_error():
    registry: Registry[int] = Registry("widgets")
    registry.add("kept", 1)
    with registry.scoped():
        registry.add("temporary", 2)
        assert registry.names() == ["kept", "temporary"]
    assert registry.names() == ["kept"]
    with pytest.raises(RuntimeError), registry.scoped():
        registry.add("temporary", 3)  # another object under the same name: not "registered twice"
        raise RuntimeError("the test failed")
    assert registry.names() == ["kept"]


def test_unknown_name_suggests_the_closest():
    registry: Registry[int] = Registry("widgets")
    registry.add("pgd-linf", 1)
    registry.add("pgd-l2", 2)
    with pytest.raises(UnknownEntryError, match="did you mean 'pgd-linf'"):
        registry.get("pgd-lnf")


def test_duplicate_name_is_an_error():
    registry: Registry[int] = Registry("widgets")
    registry.add("a", 1)
    with pytest.raises(RomeBenchError, match="registered twice"):
        registry.add("a", 2)


def test_entry_points_add_entries(tmp_path, monkeypatch):
    """A third-party package adds a threat through the entry-point group, with no rome_bench edit."""
    (tmp_path / "my_threats.py").write_text(textwrap.dedent("""
        from rome_bench.threats import Threat, register_threat, LpBudget

        @register_threat("plugin-noise", tag="unseen")
        class PluginNoise(Threat):
            def params(self): return {}
            def budget(self): return LpBudget("linf", 0.0)
            def __call__(self, model, images, labels): return images
    """))
    info = tmp_path / "my_threats-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-threats\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rome_bench.threats]\nplugin-noise = my_threats\n")
    from rome_bench.threats import THREATS

    try:
        with THREATS.scoped(reload_plugins=True):  # reads the installed plugins, then those installed in the block
            monkeypatch.syspath_prepend(str(tmp_path))
            assert "plugin-noise" in THREATS.names()
            assert THREATS.entry("plugin-noise").metadata["tag"] == "unseen"
        assert "plugin-noise" not in THREATS.names()
    finally:
        sys.modules.pop("my_threats", None)


@pytest.mark.parametrize("group", ["rome_bench.recipes", "rome_bench.methods"])
def test_a_training_method_plugin_loads_from_either_group(tmp_path, monkeypatch, group):
    """Training methods are recipes in code and methods on the command line: both entry-point groups are read."""
    (tmp_path / "my_method.py").write_text(textwrap.dedent("""
        from rome_bench.training.recipe import RECIPES

        RECIPES.add("plugin-method", object)
    """))
    info = tmp_path / "my_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nplugin-method = my_method\n")
    from rome_bench.training.recipe import RECIPES

    try:
        with RECIPES.scoped(reload_plugins=True):
            monkeypatch.syspath_prepend(str(tmp_path))
            assert "plugin-method" in RECIPES.names()
        assert "plugin-method" not in RECIPES.names()
    finally:
        sys.modules.pop("my_method", None)


def test_readme_threat_example_registers(tmp_path):
    """The "add a threat" example of docs/extending.md runs as written."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    start = readme.index("```python\n# my_threat.py")
    code = readme[start + len("```python\n"):readme.index("```", start + 10)]
    namespace: dict = {}
    from rome_bench.threats import THREATS

    with THREATS.scoped():
        exec(compile(code, "my_threat.py", "exec"), namespace)
        threat_class = THREATS.get("gaussian-noise")
        import torch

        threat = threat_class(sigma=0.1)
        images = torch.rand(2, 3, 8, 8)
        out = threat(torch.nn.Identity(), images, torch.zeros(2, dtype=torch.long))
        assert out.min() >= 0 and out.max() <= 1
        assert threat.budget().check(images, out).measured.max() <= 0.1 * 4 + 1e-6
    assert "gaussian-noise" not in THREATS


def test_a_threat_module_dropped_into_the_package_registers_itself(tmp_path):
    """A new module among the threat modules is imported, and its threat registered and buildable by name for a
    suite, by importing rome_bench.threats alone: no __init__, suite or other edit. So that the test writes nothing
    into the source tree, the module lies in a second directory of the package's search path, added before the
    package's body runs, in a fresh interpreter."""
    (tmp_path / "dropped_in.py").write_text(textwrap.dedent("""
        from rome_bench.threats.base import LpBudget, Threat, register_threat

        @register_threat("dropped-in", tag="unseen")
        class DroppedIn(Threat):
            def params(self): return {}
            def budget(self): return LpBudget("linf", 0.0)
            def __call__(self, model, images, labels): return images
    """))
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.find_spec("rome_bench.threats")
        spec.submodule_search_locations.append({str(tmp_path)!r})
        package = importlib.util.module_from_spec(spec)
        sys.modules["rome_bench.threats"] = package
        spec.loader.exec_module(package)
        from rome_bench.evaluation.suites import threat
        print(type(threat("dropped-in")).__module__, package.THREATS.entry("dropped-in").metadata["tag"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["rome_bench.threats.dropped_in", "unseen"]


def test_every_threat_module_is_imported_by_the_package():
    import pkgutil

    import rome_bench.threats as threats

    for module in pkgutil.iter_modules(threats.__path__):
        if module.name not in threats.LAZY_MODULES:  # registers nothing; imported when corruptions first run
            assert f"rome_bench.threats.{module.name}" in sys.modules
