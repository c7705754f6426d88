"""A run config from a preset and ``section.field=value`` assignments, as the train command and the demo resolve it.

``train.method=rome+max`` is a shorthand for two assignments: recipe ``max`` on family ``rome`` (a name without a
family prefix is the plain backbone). The recipe name is checked against the recipe registry here, with a "did you
mean", before anything is written. This lives in ``training/`` because it reads the recipe and family registries;
``config.py`` stays free of them (and of torch).
"""

from __future__ import annotations

from pathlib import Path

from rome_bench.config import RunConfig, apply_override, split_method, validate
from rome_bench.errors import ConfigError, UnknownEntryError


def resolve_config(base: RunConfig, assignments: list[str]) -> RunConfig:
    """``base`` with the overrides applied in order; ``train.method=rome+max`` sets recipe and family at once."""
    config = base
    for assignment in assignments:
        for part in expand_method(assignment):
            config = apply_override(config, part, check=False)
    validate(config)
    return config


def expand_method(assignment: str) -> list[str]:
    """``train.method=rome+max`` -> recipe ``max`` on family ``rome`` (a name without a family is the plain one)."""
    path, _, value = assignment.partition("=")
    if path.strip() != "train.method":
        return [assignment]
    from rome_bench.models import FAMILIES
    from rome_bench.training import recipes as _recipes  # noqa: F401  (registers the built-in recipes)
    from rome_bench.training.recipe import RECIPES

    recipe, family = split_method(value.strip(), FAMILIES.names())
    if recipe not in RECIPES:  # fails here with 'did you mean', before anything is written
        import difflib

        known = [*RECIPES.names(), *(f"{f}+{r}" for f in FAMILIES.names() if f != "plain" for r in RECIPES.names())]
        close = difflib.get_close_matches(value.strip(), known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UnknownEntryError(f"unknown method '{value.strip()}': {hint}choose a recipe "
                                f"({', '.join(RECIPES.names())}), optionally on a family with experts (rome+max; "
                                f"rome-bench list families)")
    return [f"train.recipe={recipe}", f"model.family={family}"]


def train_config(preset_name: str | None, assignments: list[str], resume_dir: Path | None = None) -> RunConfig:
    """The config a ``rome-bench train`` command line asks for: the preset (default cifar10; when resuming the run in
    ``resume_dir`` without one, the run's saved config) with ``assignments`` applied by :func:`resolve_config`."""
    import rome_bench.models  # noqa: F401  (registers the families' presets)
    from rome_bench.checkpoint import read_run_config
    from rome_bench.presets import preset

    base = preset(preset_name or "cifar10")
    if resume_dir is not None and preset_name is None:
        base = read_run_config(resume_dir)
    config = resolve_config(base, assignments)
    if config.preset.startswith("finetune") and not config.model.init_from:
        raise ConfigError(f"preset {config.preset} fine-tunes trained weights: give --init RUN_DIR or a weights file")
    return config
