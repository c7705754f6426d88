"""Optional dependencies, installed by an extra (``pip install 'rome-bench[unseen]'``): imported on first use, and
their absence reported as one line that names the extra, not as a traceback at ``import rome_bench``."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from rome_bench.errors import MissingExtraError


def require(name: str, extra: str, what: str) -> ModuleType:
    """Import module ``name`` now; if it (or something it imports) is missing, one line naming ``extra``."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing = getattr(error, "name", None) or name
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MissingExtraError(f"{what} needs the [{extra}] extra: pip install 'rome-bench[{extra}]' "
                                f"(cannot import {missing}: {first})") from error


class OptionalModule:
    """A stand-in for module ``name`` that imports it (through :func:`require`) when an attribute is first read."""

    def __init__(self, name: str, extra: str, what: str) -> None:
        self._spec = (name, extra, what)
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # copy, pickle and introspection probe dunders: not a use of the module
            raise AttributeError(attribute)
        if self._module is None:
            self._module = require(*self._spec)
        return getattr(self._module, attribute)


def optional_module(name: str, extra: str, what: str) -> Any:
    """Module ``name``, imported when first used (see :class:`OptionalModule`)."""
    return OptionalModule(name, extra, what)
