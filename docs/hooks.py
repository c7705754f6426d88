"""mkdocs hook: a documented object without a docstring fails ``mkdocs build --strict``.

mkdocstrings hides members without a docstring (``show_if_no_docstring: false``), so a public function, class or
method that lost its docstring would silently vanish from the API reference. For every ``::: identifier`` in a page,
this hook checks (statically, with griffe, as mkdocstrings reads the code) that the object and each of its public
functions and classes (methods included; attributes are not required) has a docstring, and logs a warning otherwise:
``--strict`` turns the warning into a failed build.
"""

from __future__ import annotations

import logging
import re

import griffe

log = logging.getLogger("mkdocs.plugins.rome_bench_docstrings")
_DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)
_package: griffe.Object | None = None


def _load(identifier: str) -> griffe.Object:
    global _package
    if _package is None:
        _package = griffe.load("rome_bench", search_paths=["."], docstring_parser="google")
    obj = _package
    for part in identifier.split(".")[1:]:
        obj = obj.members[part]
    return obj.final_target if obj.is_alias else obj


def _undocumented(obj: griffe.Object) -> list[str]:
    missing = [] if obj.docstring else [obj.path]
    if obj.is_class:
        for name, member in obj.members.items():
            if name.startswith("_") or member.is_alias or not (member.is_function or member.is_class):
                continue
            if not member.docstring:
                missing.append(member.path)
    return missing


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    for identifier in _DIRECTIVE.findall(markdown):
        for path in _undocumented(_load(identifier)):
            log.warning("%s: %s has no docstring, so the API reference would leave it out", page.file.src_path, path)
    return markdown
