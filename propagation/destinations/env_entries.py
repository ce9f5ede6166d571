"""The ``destinations`` variable read entry by entry: one unreadable entry fails only the
lookups of its own name, never every destination (issue 20: with ``strict=False`` the app starts,
and the other destinations keep working); the start-up check reports every bad entry by name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from ..errors import ConfigurationError
from .env import from_entry, raw_entries
from .model import Destination, Properties

if TYPE_CHECKING:
    from ..bindings import Bindings

__all__ = ["EnvEntries", "read_entries", "destinations_from_env"]


@dataclass(frozen=True)
class EnvEntries:
    """The readable entries by name, and each unreadable entry's error with its name (``None``
    when the entry has no readable name: then it may be any name, and fails every lookup that
    no readable entry answers)."""

    destinations: dict[str, Destination]
    errors: tuple[tuple[str | None, ConfigurationError], ...] = ()

    def error_for(self, name: str) -> ConfigurationError | None:
        """The error of the entry that would have been ``name`` (call when ``name`` is not
        among :attr:`destinations`)."""
        for entry_name, error in self.errors:
            if entry_name is None or entry_name == name:
                return error
        return None


def read_entries(
    environ: Mapping[str, str], bindings: "Bindings", cwd: str | os.PathLike[str] | None = None
) -> EnvEntries:
    """Every entry of ``environ['destinations']`` (else ``default-env.json``). A list that cannot
    be read at all (bad JSON, not a list) raises its :class:`ConfigurationError`."""
    raw = raw_entries(environ, cwd)
    if raw is None:
        return EnvEntries({})
    data, where, source = raw
    readable: dict[str, Destination] = {}
    first_index: dict[str, int] = {}
    duplicated: set[str] = set()
    errors: list[tuple[str | None, ConfigurationError]] = []
    for index, entry in enumerate(data):
        try:
            destination = from_entry(entry, index, where, source, bindings)
        except ConfigurationError as exc:
            errors.append((_entry_name(entry), exc))
            continue
        if destination.name in first_index:
            duplicated.add(destination.name)  # ambiguous: neither entry is used
            errors.append((destination.name, ConfigurationError(
                f"destinations[{index}] ('{destination.name}') in {where}: duplicate name "
                f"(also destinations[{first_index[destination.name]}])")))
            continue
        readable[destination.name] = destination
        first_index[destination.name] = index
    for name in duplicated:
        del readable[name]
    return EnvEntries(readable, tuple(errors))


def destinations_from_env(
    environ: Mapping[str, str], bindings: "Bindings", *, cwd: str | os.PathLike[str] | None = None
) -> dict[str, Destination]:
    """The destinations of ``environ['destinations']``, else of ``default-env.json``, all or
    nothing: the first unreadable entry raises its :class:`ConfigurationError` (the listing and
    tools that must not show a partial list). An unset or blank variable falls back to the
    file; no file (or none with ``destinations``) yields ``{}``."""
    entries = read_entries(environ, bindings, cwd)
    if entries.errors:
        raise entries.errors[0][1]
    return entries.destinations


def _entry_name(entry: object) -> str | None:
    if not isinstance(entry, Mapping):
        return None
    name = Properties(entry).get("name")
    return name.strip() if isinstance(name, str) and name.strip() else None
