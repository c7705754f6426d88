"""A run config from a preset and ``section.field=value`` assignments, as the train command and the demo resolve it.

``train.method=rome+max`` is a shorthand for two assignments: recipe ``max`` on family ``rome`` (a name without a
family prefix is the plain backbone). The recipe name is checked against the recipe registry here, with a "did you
mean", before anything is written. This lives in ``training/`` because it reads the recipe and family registries;
``config.py`` stays free of them (and of torch).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from rome_bench.config import RunConfig, apply_override, split_method, validate
from rome_bench.errors import ConfigError, UnknownEntryError


def resolve_config(base: RunConfig, assignments: list[str]) -> RunConfig:
    """``base`` with the overrides applied in order; ``train.method=rome+max`` sets recipe and family at once.

    ``model.options`` belong to ``model.family``: when the overrides change the family, the base's options are
    dropped and only the options the overrides name are kept (another family starts from its own defaults).
    """
    config = base
    for assignment in assignments:
        for part in expand_method(assignment):
            config = apply_override(config, part, check=False)
    if config.model.family != base.model.family:
        given = {assignment.split("=", 1)[0].strip().removeprefix("model.options.") for assignment in assignments}
        kept = {name: value for name, value in config.model.options.items() if name in given}
        config = apply_override(config, f"model.options={json.dumps(kept)}", check=False)
    from rome_bench.models.pretrained import resolve_start

    config = dataclasses.replace(config, model=resolve_start(config.model))  # config.json keeps the concrete start
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


# `rome-bench train` flags that set a config field: flag -> field
TRAIN_FLAGS: dict[str, str] = {
    "method": "train.method", "family": "model.family", "train_attack": "train.attack", "init": "model.init_from",
    "dataset": "data.dataset", "data_dir": "data.data_dir", "epochs": "train.epochs", "batch_size": "train.batch_size",
    "lr": "train.lr", "train_size": "data.train_size", "backbone": "model.backbone", "seed": "train.seed",
    "device": "train.device", "checkpoint_every": "train.checkpoint_every", "eval_every": "train.eval_every",
    "eps_l1": "threats.eps.l1", "eps_l2": "threats.eps.l2", "eps_linf": "threats.eps.linf",
    "pretrained": "model.pretrained",
}


def flag_assignments(**flags: object) -> list[str]:
    """``section.field=VALUE`` for each flag of :data:`TRAIN_FLAGS` given (None: not given), in the flags' order."""
    return [f"{TRAIN_FLAGS[flag]}={value}" for flag, value in flags.items() if value is not None]


# `rome-bench train` flags that set the family's options (RoME's, the default family: models/rome.py RomeOptions)
FAMILY_OPTION_FLAGS: dict[str, str] = {
    "experts": "expert_type", "num_experts": "num_experts", "top_k": "top_k", "rank": "rank",
    "expert_layers": "targets", "gating": "gating", "beta_s": "beta_s", "beta_b": "beta_b",
    "routing_loss": "routing_loss", "routing_weight": "routing_weight", "div_distance": "div_distance",
    "div_projection": "div_projection",
}


def family_option_assignments(flags: Mapping[str, object]) -> list[str]:
    """``model.options.NAME=VALUE`` for each family-option flag given (None: not given); ``--experts ffn`` puts the
    experts on the MLP unless ``--expert-layers`` says otherwise."""
    flags = dict(flags)
    if flags.get("experts") == "ffn" and flags.get("expert_layers") is None:
        flags["expert_layers"] = "mlp"
    return [f"model.options.{FAMILY_OPTION_FLAGS[flag]}={value}" for flag, value in flags.items() if value is not None]


def check_family_option_flags(flags: Mapping[str, object], family: str, recipe: str) -> None:
    """A family-option flag that the chosen family has no option for is one line naming the flag and the way out."""
    import dataclasses

    from rome_bench.models import FAMILIES

    known = {field.name for field in dataclasses.fields(FAMILIES.get(family).Options)}
    for flag, value in flags.items():
        option = FAMILY_OPTION_FLAGS[flag]
        if value is not None and option not in known:
            raise ConfigError(f"--{flag.replace('_', '-')} sets model.options.{option}, which family '{family}' does "
                              f"not have: use --method rome+{recipe} for RoME's experts, or set the family's own "
                              f"options with --set model.options.NAME=VALUE")


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
