"""One generic registry for threats, models, training methods, datasets and suites.

Entries are added with a decorator::

    THREATS = Registry[type]("threats")

    @THREATS.register("pgd-linf", norm="linf", tag="seen")
    class LinfPGD(PGD): ...

Third-party packages add entries through the entry-point group ``rome_bench.<kind>`` (for example
``rome_bench.threats``); each entry point names a module or object, which is imported the first time
the registry is read, so that its decorators run. The groups: ``rome_bench.threats``, ``rome_bench.models``,
``rome_bench.recipes`` (training methods; ``rome_bench.methods``, the CLI's word for them, is read too),
``rome_bench.datasets``, ``rome_bench.suites``, ``rome_bench.families`` and ``rome_bench.routing_losses``.

Tests that register a throwaway entry do it inside ``with REGISTRY.scoped():``, which leaves the registry as it was.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from rome_bench.errors import RomeBenchError, UnknownEntryError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its name and free-form metadata."""

    name: str
    obj: T
    metadata: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A named collection of objects, filled by decorator and by entry points."""

    def __init__(self, kind: str, *aliases: str) -> None:
        """``kind`` names the entry-point group ``rome_bench.<kind>``; each of ``aliases`` adds one more group."""
        self.kind = kind
        self.entry_point_group = f"rome_bench.{kind}"
        self.entry_point_groups = (self.entry_point_group, *(f"rome_bench.{alias}" for alias in aliases))
        self._entries: dict[str, Entry[T]] = {}
        self._plugins_loaded = False

    def register(self, name: str, **metadata: Any) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` with ``metadata``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, **metadata)
            return obj

        return decorator

    def add(self, name: str, obj: T, **metadata: Any) -> None:
        """Register ``obj`` under ``name``; a second, different object under the same name is refused."""
        if name in self._entries and self._entries[name].obj is not obj:
            raise RomeBenchError(f"{self.kind} '{name}' is registered twice; choose another name")
        self._entries[name] = Entry(name, obj, dict(metadata))

    def get(self, name: str) -> T:
        """The object registered under ``name`` (one-line error naming the closest known name otherwise)."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` (object and metadata) registered under ``name``."""
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownEntryError(self._unknown_message(name)) from None

    def names(self) -> list[str]:
        """Every registered name, sorted (plugins included)."""
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """Every :class:`Entry`, sorted by name."""
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    @contextlib.contextmanager
    def scoped(self, reload_plugins: bool = False) -> Iterator[Registry[T]]:
        """A block whose registrations are undone when it ends, however it ends (for tests).

        The entry points are read first, so that they stay loaded afterwards. With ``reload_plugins`` they are read
        again at the block's first lookup, which finds a plugin the block has just installed.
        """
        self._load_plugins()
        saved = dict(self._entries)
        self._plugins_loaded = not reload_plugins
        try:
            yield self
        finally:
            self._entries = saved
            self._plugins_loaded = True

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown {self.kind} '{name}': {hint}choose one of: {', '.join(known)}"

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry_point in (point for group in self.entry_point_groups for point in entry_points(group=group)):
            try:
                entry_point.load()
            except Exception as error:  # a broken plugin must not hide the built-in entries
                raise RomeBenchError(
                    f"plugin '{entry_point.name}' in entry-point group {entry_point.group} "
                    f"failed to load ({error}); fix or uninstall the package that provides it"
                ) from error
