"""Typed run configuration: the schema, its parser, flag overrides and the range checks of every setting.

A run is described by one :class:`RunConfig`. Presets (``presets.py``) give complete configs; every field can be
overridden from the command line (``--set section.field=value`` or the named flags), and the resolved config is saved
with the run as JSON.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from rome_bench.device import DEVICE_NAMES, is_device_name
from rome_bench.errors import ConfigError

NORMS: tuple[str, ...] = ("l1", "l2", "linf")
# Upper ends of the numeric settings: far above any real run, low enough that a typo fails at once.
MAX_EPOCHS = 10_000
MAX_BATCH = 1_000_000
MAX_LR = 10.0
MAX_STEPS = 100_000
MAX_EXPERTS = 1024


@dataclass
class ThreatsConfig:
    """Budgets and PGD steps of the seen ℓp threats (keys: l1, l2, linf)."""

    eps: dict[str, float] = field(default_factory=lambda: {"l1": 12.0, "l2": 0.5, "linf": 8 / 255})
    train_steps: dict[str, int] = field(default_factory=lambda: {"l1": 20, "l2": 20, "linf": 10})
    eval_steps: dict[str, int] = field(default_factory=lambda: {"l1": 50, "l2": 50, "linf": 50})
    # iterations of the training APGD (--train-attack apgd): 15 in the paper's Sec. 5.1
    apgd_steps: dict[str, int] = field(default_factory=lambda: {"l1": 15, "l2": 15, "linf": 15})
    l1_sparsity: float = 0.01  # fraction of coordinates one sparse ℓ1 (SLIDE) step moves; measured in threats/pgd.py
    # training PGD step sizes by norm (e.g. {"linf": 2/255}); a norm not listed steps 2.5·ε/steps
    train_step_size: dict[str, float] = field(default_factory=dict)
    # training PGD (--train-attack pgd) from a random point of the ball; false: from the clean image (deterministic
    # attacks, so a torchrun run matches a one-process run bit for bit up to float rounding)
    train_random_start: bool = True


@dataclass
class ModelConfig:
    family: str = "rome"  # plain (the backbone alone) | rome (LoRA experts + dual-scale gates) | …: `list families`
    backbone: str = "vit_base"
    patch_size: int = 4
    # the backbone's start: a local .safetensors/.pth file, a timm tag, imagenet1k (the backbone's ImageNet-1K tag,
    # the paper presets' default) or none; loaded and resampled by timm (models/pretrained.py)
    pretrained: str | None = None
    init_from: str | None = None  # robust fine-tuning: a run directory or weights file the whole model starts from
    options: dict[str, Any] = field(default_factory=dict)  # the family's own settings, checked by the family
    normalisation: str = "dataset"  # dataset: the model normalises with the dataset's mean/std | none: identity
    # fields of an older config layout that a stored run's model hash still covers (checkpoint.py upgrades them
    # into here); empty for every run trained since
    legacy_identity: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    train_size: int | None = None  # seeded subset of the train split; None = all
    eval_examples: int = 1000  # size of the fixed, seeded evaluation subset of the test split
    augment: bool = True  # random crop (pad 4) + horizontal flip, for 32x32 data


PRECISIONS: tuple[str, ...] = ("fp32", "bf16")  # bf16: the model under autocast in attacks; decisions stay fp32
NORMALISATIONS: tuple[str, ...] = ("dataset", "none")  # none: for sources that take [0, 1] as is (RobustBench's)
TRAIN_ATTACKS: tuple[str, ...] = ("pgd", "apgd")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd-nesterov")  # sgd-nesterov: momentum 0.9, Nesterov, L2 weight decay
SCHEDULES: tuple[str, ...] = ("warmup-linear", "poly")  # poly: lr·(1 − epoch/epochs)^0.9, stepped per epoch


@dataclass
class TrainConfig:
    recipe: str = "max"  # the training recipe (see `rome-bench list methods`); the model family is model.family
    options: dict[str, Any] = field(default_factory=dict)  # the recipe's own settings, checked by the recipe
    attack: str = "pgd"  # the ℓp training attack: pgd (the preset's steps) | apgd (best-loss APGD)
    epochs: int = 20
    optimizer: str = "adamw"  # adamw (the paper's) | sgd-nesterov (momentum 0.9; the sparse-MoE paper's)
    schedule: str = "warmup-linear"  # warmup-linear (the three phases below) | poly (power 0.9, per epoch)
    warmup_epochs: float = 4.0
    decay_epochs: float = 12.0  # linear decay to decay_floor·lr
    final_epochs: float = 4.0  # then linear decay to final_floor·lr
    decay_floor: float = 0.05
    final_floor: float = 0.001
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    checkpoint_every: int = 200  # optimizer steps between checkpoints (and one at every epoch end)
    eval_every: int = 0  # every N steps: union robustness of a fixed test subset under the ℓp PGD (0 = never)
    eval_examples: int = 64  # size of that subset (the first of the seeded test permutation)
    device: str = "auto"
    precision: str = "fp32"  # bf16: autocast around the model's forward passes (in the training attacks too)


@dataclass
class RunConfig:
    preset: str = "cifar10"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    threats: ThreatsConfig = field(default_factory=ThreatsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def method(self) -> str:
        """The run's name for recipe and family: ``max`` on the plain backbone, ``rome+max`` with RoME experts."""
        return method_name(self.train.recipe, self.model.family)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, upgrade_legacy(data), "")


def method_name(recipe: str, family: str) -> str:
    return recipe if family == "plain" else f"{family}+{recipe}"


def split_method(method: str, families: list[str]) -> tuple[str, str]:
    """``rome+max`` -> (recipe ``max``, family ``rome``); a name without a family prefix is the plain backbone."""
    prefix, plus, rest = method.partition("+")
    if plus and prefix in families and rest:
        return rest, prefix
    return method, "plain"


def upgrade_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before recipes and families were separate hold ``train.method = "rome+max"``: split it."""
    train = data.get("train")
    if not isinstance(train, dict) or "method" not in train:
        return data
    train = dict(train)
    method = train.pop("method")
    if not isinstance(method, str):
        raise ConfigError(f"config field 'train.method' must be a text value, got {method!r}")
    recipe, family = split_method(method, ["rome"])  # the only family a legacy run could have
    model = dict(data.get("model") or {})
    model.setdefault("family", family)
    return {**data, "train": {**train, "recipe": recipe}, "model": model}


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown config field '{prefix}{sorted(unknown)[0]}'; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config field '{prefix}{name}' is a section: set its fields, e.g. "
                                  f"{prefix}{name}.{dataclasses.fields(hint)[0].name}=…, not '{value}'")
            kwargs[name] = _from_dict(hint, value, f"{prefix}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _typed_value(f"{prefix}{name}", hint, value)
    return cls(**kwargs)


def _typed_value(path: str, hint: Any, value: Any) -> Any:
    """``value`` checked against the field's type hint (str, int, float, bool, optional, tuple, dict of numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin in (typing.Union, types.UnionType):
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args[0] is int:  # whole numbers: [6, 10], "6,10" (a --set value) or one number
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list | tuple) else [value]
        try:
            return tuple(int(item) if isinstance(item, str) else _typed_value(path, int, item) for item in items)
        except ValueError:
            raise ConfigError(f"config field '{path}' must be whole numbers, e.g. 6,10; got {value!r}") from None
    if origin is tuple:
        if isinstance(value, str):  # names as a --set value: "qkv,proj"
            value = [item for item in value.split(",") if item]
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"config field '{path}' must be a list of names, got {value!r}")
        return tuple(value)
    if origin is dict and args[1] is Any:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ConfigError(f"config field '{path}' must be a table of named settings, got {value!r}")
        return dict(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{path}' must be a table of {', '.join(NORMS)} values, got {value!r}")
        return {key: _typed_value(f"{path}.{key}", args[1], item) for key, item in value.items()}
    expected = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[hint]
    if not isinstance(value, expected) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"config field '{path}' must be {_TYPE_NAMES[hint]}, got {value!r}")
    return float(value) if hint is float else value  # type: ignore[arg-type]


_TYPE_NAMES: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a text value"}


def parse_options(owner: str, options_cls: type, values: dict[str, Any], path: str) -> Any:
    """A free options table (``train.options``, ``model.options``) checked against its owner's frozen dataclass:
    known names, right types, then the dataclass's own ``check()``; every problem is one ConfigError line."""
    known = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        names = ", ".join(known) or "none"
        raise ConfigError(f"{owner} has no option '{unknown[0]}'; its options: {names}")
    hints = typing.get_type_hints(options_cls)
    typed = {name: _typed_value(f"{path}.{name}", hints[name], value) for name, value in values.items()}
    options = options_cls(**typed)
    check = getattr(options, "check", None)
    if callable(check):
        check()
    return options


def apply_override(config: RunConfig, assignment: str, check: bool = True) -> RunConfig:
    """Return a copy of ``config`` with ``section.field[.key]=value`` applied (value parsed as JSON if it can).

    ``check=False`` defers :func:`validate`, for a series of overrides that is only valid as a whole.
    """
    if "=" not in assignment:
        raise ConfigError(f"override '{assignment}' must look like section.field=value, e.g. train.epochs=5")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    data = copy.deepcopy(config.to_dict())
    node: Any = data
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"unknown config field '{path}'; see the resolved config.json of a run for names")
        node = node[key]
    last = keys[-1]
    # tables whose keys are checked elsewhere: by their recipe / family, or by validate()
    free_table = keys[:-1] in (["train", "options"], ["model", "options"], ["threats", "train_step_size"])
    if not isinstance(node, dict) or (last not in node and not _is_norm_table(node) and not free_table):
        raise ConfigError(f"unknown config field '{path}'; see the resolved config.json of a run for names")
    node[last] = _coerce(path, raw, node.get(last))
    resolved = RunConfig.from_dict(data)
    if check:
        validate(resolved)
    return resolved


def _is_norm_table(node: dict[str, Any]) -> bool:
    return set(node) <= set(NORMS) and bool(node)


def _coerce(path: str, raw: str, current: Any) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if value is None or (value in ("none", "null") and not isinstance(current, str)):
        return None  # (a text field keeps "none": it is a choice, e.g. gating=none)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "1", "0", "yes", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise ConfigError(f"{path} must be true or false, got '{raw}'")
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be an integer, got '{raw}'")
    if isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path} must be a number, got '{raw}'")
    if isinstance(current, tuple | list):
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v]
        return tuple(items)
    return value


def non_finite_fields(node: Any, prefix: str = "") -> list[str]:
    """Paths of the number fields of a config dict that are NaN or infinite (JSON accepts NaN and Infinity)."""
    if isinstance(node, dict):
        return [path for key, value in node.items() for path in non_finite_fields(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if isinstance(node, float) and not math.isfinite(node) else []


def validate(config: RunConfig) -> None:
    """Raise ConfigError (one line) for values no run can use: every number finite and in a sensible range."""
    if bad := non_finite_fields(config.to_dict()):
        raise ConfigError(f"{bad[0]} must be a finite number (NaN and Infinity train nothing)")
    train = config.train
    checks: list[tuple[bool, str]] = [
        (1 <= train.epochs <= MAX_EPOCHS, f"train.epochs must be between 1 and {MAX_EPOCHS}"),
        (1 <= train.batch_size <= MAX_BATCH, f"train.batch_size must be between 1 and {MAX_BATCH}"),
        (0 < train.lr <= MAX_LR, f"train.lr must be > 0 and <= {MAX_LR}"),
        (0 <= train.weight_decay <= MAX_LR, f"train.weight_decay must be between 0 and {MAX_LR}"),
        (min(train.warmup_epochs, train.decay_epochs, train.final_epochs) >= 0,
         "train.warmup_epochs, decay_epochs and final_epochs must be >= 0"),
        (0 <= train.final_floor <= train.decay_floor <= 1, "train.final_floor <= train.decay_floor must lie in [0, 1]"),
        (0 <= train.seed < 2**31, "train.seed must be between 0 and 2147483647"),
        (train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
        (train.eval_every >= 0, "train.eval_every must be >= 0 (0: no training curve)"),
        (1 <= train.eval_examples <= MAX_BATCH, f"train.eval_examples must be between 1 and {MAX_BATCH}"),
        (config.model.patch_size >= 1, "model.patch_size must be >= 1"),
        (train.precision in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)} "
                                        f"(got '{train.precision}')"),
        (config.model.normalisation in NORMALISATIONS,
         f"model.normalisation must be one of {', '.join(NORMALISATIONS)} (got '{config.model.normalisation}')"),
        (is_device_name(config.train.device), f"train.device must be {DEVICE_NAMES}"),
        (train.attack in TRAIN_ATTACKS, f"train.attack must be one of {', '.join(TRAIN_ATTACKS)} "
                                        f"(got '{train.attack}')"),
        (train.optimizer in OPTIMIZERS, f"train.optimizer must be one of {', '.join(OPTIMIZERS)} "
                                        f"(got '{train.optimizer}')"),
        (train.schedule in SCHEDULES, f"train.schedule must be one of {', '.join(SCHEDULES)} (got '{train.schedule}')"),
        (config.data.eval_examples >= 1, "data.eval_examples must be >= 1"),
        (config.data.train_size is None or config.data.train_size >= 1, "data.train_size must be >= 1"),
        (0 < config.threats.l1_sparsity <= 1, "threats.l1_sparsity must be in (0, 1]"),
    ]
    step_sizes = config.threats.train_step_size
    checks.append((set(step_sizes) <= set(NORMS) and all(v > 0 for v in step_sizes.values()),
                   "threats.train_step_size takes positive step sizes keyed by l1, l2 or linf (or none)"))
    for table in ("eps", "train_steps", "eval_steps", "apgd_steps"):
        values = getattr(config.threats, table)
        checks.append((set(values) == set(NORMS), f"threats.{table} needs exactly the keys l1, l2, linf"))
        checks.append((all(v > 0 for v in values.values()), f"threats.{table} values must be > 0"))
    for table in ("train_steps", "eval_steps", "apgd_steps"):
        checks.append((all(isinstance(v, int) and v <= MAX_STEPS for v in getattr(config.threats, table).values()),
                       f"threats.{table} values must be whole numbers <= {MAX_STEPS}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
