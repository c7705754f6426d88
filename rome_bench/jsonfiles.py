"""Every JSON file rome-bench reads, checked at one place against the shape its kind must have.

A schema is a type (or tuple of types), a ``dict`` of field name -> schema (a name ending in ``?`` is optional;
other fields are allowed, for files written by newer versions), a one-entry dict ``{"*": schema}`` for a mapping
whose every value has that schema, or a one-item list ``[schema]`` for a list of such items. A file that is not
UTF-8 JSON of its kind's shape is one :class:`JSONFileError` line naming the file, the field and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rome_bench.errors import RomeBenchError

Number = (int, float)

SCHEMAS: dict[str, Any] = {
    "run config": {"preset?": str, "model": dict, "data": dict, "threats": dict, "train": dict},
    "checkpoint sidecar": {"tensors_file": str, "tensors_sha256": str, "step?": int, "method?": str,
                           "config?": dict, "param_groups?": [dict]},
    "paper reference": {"name": str, "source": str, "columns": [str],
                        "rows": [{"method": str, "dataset": str, "training_attack?": str}]},
    "training curve": [{"step": int, "wall_seconds": Number, "n": int, "accuracy": {"*": Number}}],
    "regression reference": {"name?": str, "description?": str, "checks": [{
        "name": str, "run": str, "suite": str, "dataset": str, "n_examples": int, "split?": str, "batch_size?": int,
        "data_fingerprint?": str, "correct?": {"*": int}, "totals?": {"*": int}, "accuracy?": {"*": Number},
    }]},
}

FIXES: dict[str, str] = {
    "run config": "restore the run's config.json or retrain",
    "checkpoint sidecar": "delete the checkpoint (the run resumes from an older one) or retrain",
    "paper reference": "fix the file or restore it from the repository",
    "training curve": "delete it (it only holds the --eval-every records of this run)",
    "regression reference": "fix the file, restore it from the repository, or rewrite it with check --update",
}


class JSONFileError(RomeBenchError):
    """A JSON file the project reads is unreadable or has the wrong shape."""


def read_json(path: Path, kind: str) -> Any:
    """The JSON object in ``path``, checked against ``SCHEMAS[kind]``."""
    fix = FIXES[kind]
    try:
        document = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise JSONFileError(f"{path} ({kind}) is not text (byte {error.start} is not UTF-8); {fix}") from error
    except json.JSONDecodeError as error:
        raise JSONFileError(f"{path} ({kind}) is not valid JSON ({error}); {fix}") from error
    if problem := shape_problem(document, SCHEMAS[kind], "the file"):
        raise JSONFileError(f"{path} ({kind}): {problem}; {fix}")
    return document


def shape_problem(value: Any, schema: Any, where: str) -> str | None:
    """The first place where ``value`` does not have ``schema``'s shape, in words; None when it fits."""
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} must be a list, got {_kind_of(value)}"
        return next((problem for index, item in enumerate(value)
                     if (problem := shape_problem(item, schema[0], f"{where}[{index}]"))), None)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where} must be an object, got {_kind_of(value)}"
        if "*" in schema:
            return next((problem for key, item in value.items()
                         if (problem := shape_problem(item, schema["*"], f"{where}.{key}"))), None)
        for key, item_schema in schema.items():
            name = key.rstrip("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                return f"{where} lacks the field '{name}'"
            if problem := shape_problem(value[name], item_schema, name if where == "the file" else f"{where}.{name}"):
                return problem
        return None
    types = schema if isinstance(schema, tuple) else (schema,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        return f"{where} must be {' or '.join(_TYPE_WORDS[t] for t in types)}, got {_kind_of(value)}"
    return None


_TYPE_WORDS: dict[type, str] = {str: "text", int: "an integer", float: "a number", bool: "true or false",
                                dict: "an object", list: "a list"}


def _kind_of(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{type(value).__name__} {text[:37]}…"
